"""Schedules: runs on a calendar, declared in ``configs/schedules.yaml``.

Each schedule has a cron expression in a time zone, the markets, a period rule ("next
month"), categories, patches, and who its runs run as (``run_as``, which must be allowed to
launch: on ``launchers`` in configs/app.yaml, or, with no list there, the person whose
worker fires it). Firing submits one queued run per market x category (``runs.queue``),
each recording the schedule, the fire time and ``run_as`` as its launcher.

``tick(now)`` fires what is due at ``now``; the worker calls it every half minute,
``toolkit schedules tick`` once (from cron, or a test with its own clock). A fire time is
claimed with a conditional create of ``schedules/<name>/<fire time>.json``, so the same
tick twice, or two workers ticking at once, submit its runs once.

Catch-up policy: a tick fires each schedule's latest due time, once, when it is at most
``catch_up_hours`` old (default 24). Earlier times missed while no worker ran are skipped,
never fired in a burst; a schedule down longer than that waits for its next time.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import getpass
import json
import os
import re
import zoneinfo
from pathlib import Path
from typing import Any

from cronsim import CronSim, CronSimError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from toolkit import config as config_mod
from toolkit import project
from toolkit.data import storage

__all__ = [
    "Fired",
    "Schedule",
    "ScheduleError",
    "due",
    "last_fired",
    "load",
    "next_fire",
    "schedules_path",
    "tick",
]

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_PERIOD = re.compile(r"^(this month|next month|previous month|[0-9]{4}-(0[1-9]|1[0-2]))$")


class ScheduleError(ValueError):
    """configs/schedules.yaml is wrong; the message names the schedule, key and problem."""


class Schedule(BaseModel):
    """One entry of configs/schedules.yaml."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The key under schedules:, lowercase.")
    cron: str = Field(description="minute hour day-of-month month day-of-week, e.g. 0 6 1 * *.")
    timezone: str = Field("UTC", description="IANA time zone the cron times are in.")
    markets: list[str] = Field(min_length=1, description="Market codes, one run each.")
    period: str = Field(
        "this month",
        description="this month, next month, previous month (of the fire time, in the "
        "schedule's time zone) or a fixed YYYY-MM.",
    )
    categories: list[str] = Field(
        default_factory=lambda: ["all"], description="One run per category; all: no filter."
    )
    patches: list[str] = Field(default_factory=list, description="key.path=value, in order.")
    run_as: str = Field(description="Who the runs run as: recorded as their launcher.")
    priority: int = Field(0, ge=0, le=9, description="Queue priority; higher starts first.")
    catch_up_hours: float = Field(
        24, ge=0, le=24 * 366, description="A missed fire time this old still fires (once)."
    )
    enabled: bool = True

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        try:
            CronSim(value, dt.datetime(2000, 1, 1))
        except CronSimError as exc:
            raise ValueError(f"not a cron expression ({exc}); expected e.g. '0 6 1 * *'") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; expected e.g. Europe/Oslo") from None
        return value

    @field_validator("period")
    @classmethod
    def _period(cls, value: str) -> str:
        if not _PERIOD.match(value):
            raise ValueError("expected this month, next month, previous month or YYYY-MM")
        return value

    @field_validator("markets")
    @classmethod
    def _markets(cls, value: list[str]) -> list[str]:
        bad = [m for m in value if not re.fullmatch(r"[A-Z]{2}", str(m))]
        if bad:
            raise ValueError(f"not market codes: {bad}; expected two capital letters such as US")
        return value

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    def period_at(self, fire: dt.datetime) -> str:
        """The period a run fired at ``fire`` is for."""
        if self.period[0].isdigit():
            return self.period
        local = fire.astimezone(self.zone)
        shift = {"this month": 0, "next month": 1, "previous month": -1}[self.period]
        months = local.year * 12 + local.month - 1 + shift
        return f"{months // 12:04d}-{months % 12 + 1:02d}"


def schedules_path(project_dir: Path | None = None) -> Path:
    return Path(project_dir or project.root()) / "configs" / "schedules.yaml"


def load(path: Path | None = None) -> list[Schedule]:
    """The schedules declared in ``path`` (default configs/schedules.yaml); none when the
    file does not exist.

    Raises:
        ScheduleError: naming the file, the schedule, the key and the problem.
    """
    path = path or schedules_path()
    if not path.exists():
        return []
    try:
        data = config_mod.load_yaml_text(path.read_text(encoding="utf-8"), str(path)) or {}
    except config_mod.ConfigError as exc:
        raise ScheduleError(str(exc)) from None
    entries = data.get("schedules") if isinstance(data, dict) else None
    if entries is None:
        entries = {}
    if not isinstance(entries, dict):
        raise ScheduleError(f"{path}: schedules: expected a mapping of name -> schedule")
    found = []
    for name, body in entries.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise ScheduleError(
                f"{path}: schedule name {name!r}: expected lowercase letters, digits, - or _"
            )
        if not isinstance(body, dict):
            raise ScheduleError(f"{path}: schedules.{name}: expected a mapping of keys")
        try:
            found.append(Schedule.model_validate({**body, "name": name}))
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(p) for p in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            raise ScheduleError(f"{path}: schedules.{name}.{where}: {message}") from None
    return found


# ---------------------------------------------------------------------------
# Fire times
# ---------------------------------------------------------------------------


def _aware(at: dt.datetime) -> dt.datetime:
    return at if at.tzinfo else at.replace(tzinfo=dt.UTC)


def next_fire(schedule: Schedule, after: dt.datetime) -> dt.datetime:
    """The first fire time strictly after ``after`` (UTC)."""
    local = _aware(after).astimezone(schedule.zone)
    return next(CronSim(schedule.cron, local)).astimezone(dt.UTC)


def due(schedule: Schedule, now: dt.datetime) -> dt.datetime:
    """The latest fire time at or before ``now`` (UTC)."""
    # CronSim looks strictly before its start; cron has minutes, so the next minute's
    # start is the first instant after every fire time up to now.
    start = _aware(now).replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    return next(CronSim(schedule.cron, start.astimezone(schedule.zone), reverse=True)).astimezone(
        dt.UTC
    )


def _stamp(fire: dt.datetime) -> str:
    return fire.astimezone(dt.UTC).strftime("%Y%m%dT%H%MZ")


def _marker_url(root: str, name: str, fire: dt.datetime | None = None) -> str:
    return storage.join(root, "schedules", name, *([f"{_stamp(fire)}.json"] if fire else []))


def last_fired(schedule: Schedule, root: str) -> dict[str, Any] | None:
    """What the schedule's latest fire submitted (``fire_at``, ``runs``), if it fired."""
    names = [n for n in storage.listdir(_marker_url(root, schedule.name)) if n.endswith(".json")]
    if not names:
        return None
    return json.loads(storage.read_bytes(storage.join(_marker_url(root, schedule.name), names[-1])))


# ---------------------------------------------------------------------------
# Firing
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Fired:
    """What a tick did for one schedule: ``runs`` submitted for ``fire_at``, or skipped."""

    schedule: str
    fire_at: str
    runs: list[str]
    skipped: str | None = None

    def __str__(self) -> str:
        if self.skipped:
            return f"schedule {self.schedule}: {self.fire_at} skipped ({self.skipped})"
        return f"schedule {self.schedule}: fired {self.fire_at}: {', '.join(self.runs)}"


def tick(
    now: dt.datetime | None = None, root: str | None = None, path: Path | None = None
) -> list[Fired]:
    """Fire every enabled schedule whose latest fire time is due and not yet fired (see the
    catch-up policy above). Returns what was fired or skipped; nothing for a fire time
    fired before.

    A schedule whose ``run_as`` may not launch is skipped, and says so.

    Raises:
        ScheduleError: the file is wrong.
    """
    now = _aware(now or dt.datetime.now(dt.UTC))
    root = root or storage.root()
    done = []
    for schedule in load(path):
        if not schedule.enabled:
            continue
        fire = due(schedule, now)
        if now - fire > dt.timedelta(hours=schedule.catch_up_hours):
            continue  # missed long ago: skipped, by the catch-up policy
        refused = _run_as_refused(schedule)
        if refused:
            done.append(Fired(schedule.name, fire.isoformat(), [], refused))
            continue
        marker = {"schedule": schedule.name, "fire_at": fire.isoformat(), "runs": []}
        try:
            version = storage.write_if(
                _marker_url(root, schedule.name, fire), json.dumps(marker).encode(), None
            )
        except storage.WriteConflict:
            continue  # fired before (this tick again, or another worker)
        try:
            marker["runs"] = _submit(schedule, fire)
        except config_mod.ConfigError as exc:
            marker["error"] = str(exc)
            done.append(Fired(schedule.name, fire.isoformat(), [], f"config: {exc}"))
        else:
            done.append(Fired(schedule.name, fire.isoformat(), marker["runs"]))
        storage.write_if(
            _marker_url(root, schedule.name, fire), json.dumps(marker).encode(), version
        )
    return done


def _submit(schedule: Schedule, fire: dt.datetime) -> list[str]:
    from toolkit.runs import queue  # the run loop: only when a schedule fires

    period = schedule.period_at(fire)
    submitted = []
    for market in schedule.markets:
        for category in schedule.categories:
            identity = [f"country={market}", f"period={period}"]
            if category != "all":
                identity.append(f"category={category}")
            patches = [*identity, *schedule.patches]
            record = queue.submit(
                config_mod.resolve(patches=patches),
                patches=patches,
                priority=schedule.priority,
                launcher=schedule.run_as,
                launched_from="schedule",
                schedule={
                    "name": schedule.name,
                    "fire_at": fire.isoformat(),
                    "run_as": schedule.run_as,
                },
            )
            submitted.append(record.id)
    return submitted


def _run_as_refused(schedule: Schedule) -> str | None:
    """Why ``run_as`` may not launch, or None: it must be on ``launchers`` in
    configs/app.yaml; with no list there (no sign-in), be the person running this
    process."""
    launchers = _launchers()
    run_as = schedule.run_as.strip().lower()
    if launchers and run_as not in launchers:
        return f"run_as {schedule.run_as!r} is not on launchers in configs/app.yaml"
    if not launchers and run_as != getpass.getuser().lower():
        return (
            f"run_as {schedule.run_as!r} may not launch: configs/app.yaml lists no launchers, "
            f"so only {getpass.getuser()!r}, who runs this worker, may"
        )
    return None


def _launchers() -> list[str]:
    """``launchers`` of the app's settings (``TOOLKIT_APP_CONFIG`` or configs/app.yaml)."""
    override = os.environ.get("TOOLKIT_APP_CONFIG", "").strip()
    path = Path(override) if override else project.root() / "configs" / "app.yaml"
    if not path.exists():
        return []
    data = config_mod.load_yaml_text(path.read_text(encoding="utf-8"), str(path)) or {}
    found = data.get("launchers") if isinstance(data, dict) else None
    return [str(v).strip().lower() for v in found or []]
