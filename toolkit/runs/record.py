"""The run record as a typed model: what ``runs/<id>/record.json`` holds, for every reader.

``RunRecord`` is read and written by ``runs.store`` (``save``, ``load``, ``list_runs``); the
run loop, backfills, reports, the CLI and the app read its attributes. The stored JSON
keeps the keys the untyped record had, plus ``schema_version``:

* version 1: records written before this model (no ``schema_version`` key); same shape.
* version 2: ``schema_version`` written; every field below.
* version 3: the URLs of the run's files (``config_url``; each step's ``outputs``, ``url``
  and ``debug`` notebook and reports) are stored relative to the storage root
  (``cache/market=US/...``), so a store copied or synced elsewhere still reads.

A stored record without ``schema_version`` is read as version 1. ``parse`` brings any
version to the current shape (``migrate``: versions 1 and 2 pinned absolute URLs; those
under the record's own ``root`` become relative, others stay as they are), then resolves
the relative URLs against the root the record was read from: in memory a record always
holds full URLs, and its ``root`` is where it was read. ``to_json`` makes them relative
again; ``save`` always writes the current version.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "SCHEMA_VERSION",
    "DeliveryRecord",
    "RecordInvalid",
    "RunEvent",
    "RunInputs",
    "RunRecord",
    "RunStatus",
    "StepRecord",
    "StepStatus",
    "LabelError",
    "NAME_MAX",
    "NOTE_MAX",
    "absolute_url",
    "check_name",
    "check_note",
    "describe_errors",
    "map_urls",
    "migrate",
    "parse",
    "relative_url",
]

SCHEMA_VERSION = 3

RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]
StepStatus = Literal["running", "succeeded", "reused", "failed", "cancelled", "interrupted"]


def _iso_time(value: str) -> str:
    dt.datetime.fromisoformat(value)  # raises ValueError with a readable message
    return value


# Kept as the ISO text the record has always stored (readers slice and parse it), but checked.
Timestamp = Annotated[str, AfterValidator(_iso_time)]


class _Model(BaseModel):
    # extra="allow": a record written by a newer toolkit loads, and its unknown fields
    # survive when this version rewrites the record (resume, a beat, the app's launcher)
    # instead of being dropped ("ignore" would lose them on the next save).
    # validate_assignment: the run loop updates a record field by field; a wrong value
    # fails where it is set, not in a reader later.
    model_config = ConfigDict(extra="allow", validate_assignment=True)


class RunEvent(_Model):
    """One line of a run's log."""

    at: Timestamp = Field(description="When (UTC, ISO 8601).")
    message: str = Field(description="What happened, as printed to the launcher.")


class RunInputs(_Model):
    """What the launcher passed: config layers by URL and patches, in order."""

    configs: list[str] = Field(default_factory=list, description="--config URLs.")
    patches: list[str] = Field(default_factory=list, description="--patch KEY=VALUE.")


class StepRecord(_Model):
    """One step of a run: its state, cache key and outputs, or its failure."""

    status: StepStatus = Field(description="The step's state; reused: outputs of another run.")
    cache_key: str | None = Field(None, description="Content key of the step's outputs.")
    reused: bool = Field(False, description="Outputs published by another run.")
    reused_from: str | None = Field(None, description="The run that published them.")
    outputs: dict[str, str] = Field(default_factory=dict, description="Product -> URL.")
    url: str | None = Field(None, description="The published attempt's folder.")
    error: str | None = Field(None, description="Why the step failed.")
    report: list[dict[str, Any]] = Field(
        default_factory=list, description="Contract reports of a failure (ValidationReport)."
    )
    debug: dict[str, Any] = Field(
        default_factory=dict, description="URLs kept of a failure: notebook, reports."
    )
    traceback: str | None = Field(None, description="The failure's traceback (shortened).")
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None
    duration_s: float | None = Field(None, description="Execution time; 0 when reused.")
    attempts: list[str] = Field(default_factory=list, description="Attempt ids, oldest first.")


class DeliveryRecord(_Model):
    """What became of a run's recommendations (``toolkit.runs.deliveries``)."""

    status: Literal["delivered", "already_delivered", "skipped", "failed"] = Field(
        description="delivered by this run; already_delivered by an earlier run (same "
        "plan, same endpoint), so not sent again; skipped: no endpoint; failed."
    )
    plan_id: str | None = Field(None, description="The plan's id, its delivery's key.")
    endpoint: str | None = Field(None, description="Where it was (or would be) sent.")
    delivered_by: str | None = Field(None, description="The run whose delivery it was.")
    delivered_at: Timestamp | None = None
    attempts: int | None = Field(None, description="Requests this run sent.")
    http_status: int | None = Field(None, description="The receiver's answer.")
    error: str | None = Field(None, description="Why it was not delivered.")


class RunRecord(_Model):
    """A run: identity, launcher, frozen config with origins, steps, timing, final status.

    ``status`` is as stored, except in a record from ``store.load``/``list_runs``: there it
    is effective (a late heartbeat reads ``interrupted``) and ``stored_status`` holds the
    stored one (never written back).
    """

    schema_version: int = Field(SCHEMA_VERSION, description="Shape of the record; 1: no key.")
    id: str = Field(description="Run id, also the folder under runs/.")
    status: RunStatus
    market: str
    period: str
    category: str | None = Field(None, description="None: all categories.")
    launcher: str | None = Field(None, description="Who launched (TOOLKIT_LAUNCHER or user).")
    host: str | None = Field(None, description="Machine of the run process.")
    launched_from: str | None = Field(None, description="'app' when the app queued it.")
    # Added without a new schema version: optional, absent in older records (read as None).
    name: str | None = Field(None, description="A short name the launcher gave the run.")
    note: str | None = Field(None, description="The launcher's note: why this run.")
    backfill: str | None = Field(None, description="The backfill that started the run.")
    queue_entry: str | None = Field(
        None, description="Its entry under queue/pending while it waits for a worker."
    )
    schedule: dict[str, str] | None = Field(
        None, description="The schedule that submitted it: name, fire time, run_as."
    )
    created_at: Timestamp
    updated_at: Timestamp | None = Field(None, description="Last save.")
    heartbeat_at: Timestamp | None = None
    heartbeat_seconds: float | None = Field(None, gt=0, description="Beat interval.")
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None
    resumed: list[Timestamp] = Field(default_factory=list, description="Each resume's time.")
    pid: int | None = Field(None, description="The run process.")
    root: str = Field(
        description="Storage root: as stored, where the record was written; as read, where "
        "it was read from (its relative URLs resolve against it)."
    )
    inputs: RunInputs = Field(default_factory=RunInputs)
    config: dict[str, Any] = Field(default_factory=dict, description="Effective config.")
    origins: dict[str, str] = Field(default_factory=dict, description="Config key -> layer.")
    config_url: str | None = Field(None, description="The frozen config.yaml.")
    executor: str = Field("serial", description="serial or dask.")
    force: bool = Field(False, description="Every step re-executed, cache ignored.")
    versions: dict[str, str] = Field(default_factory=dict, description="Package versions.")
    git_commit: str | None = Field(None, description="Project commit, '-dirty' if edited.")
    steps: dict[str, StepRecord] = Field(default_factory=dict, description="In run order.")
    events: list[RunEvent] = Field(default_factory=list)
    delivery: DeliveryRecord | None = Field(None, description="After the steps succeeded.")
    error: str | None = Field(None, description="Why the run did not succeed.")
    stored_status: RunStatus | None = Field(
        None, exclude=True, description="Status as stored, when status is effective."
    )

    @classmethod
    def unreadable(cls, run_id: str, error: str) -> RunRecord:
        """A listing's stand-in for a record that cannot be read: status ``unreadable``."""
        return cls.model_construct(
            id=run_id,
            status="unreadable",
            market="",
            period="",
            created_at="",
            root="",
            error=error,
        )

    def to_json(self, root: str | None = None) -> dict[str, Any]:
        """The record as stored: plain JSON types, the current ``schema_version``, and the
        URLs under ``root`` (default: its own) relative to it."""
        base = root or self.root
        data = {**self.model_dump(mode="json"), "schema_version": SCHEMA_VERSION, "root": base}
        return map_urls(data, lambda url: relative_url(base, url))


NAME_MAX = 80
NOTE_MAX = 500
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class LabelError(ValueError):
    """A run name or note that cannot be stored; the message says why, in plain words."""


def check_name(text: str | None) -> str | None:
    """A run's name as stored: one line, spaces collapsed, at most ``NAME_MAX`` characters;
    None when empty.

    Raises:
        LabelError: too long, or with control characters.
    """
    text = " ".join(str(text or "").split())
    if _CONTROL.search(text):
        raise LabelError("the run name may not contain control characters")
    if len(text) > NAME_MAX:
        raise LabelError(
            f"the run name is {len(text)} characters; keep it to {NAME_MAX} (say more in the note)"
        )
    return text or None


def check_note(text: str | None) -> str | None:
    """A run's note as stored: trimmed, at most ``NOTE_MAX`` characters; None when empty.

    Raises:
        LabelError: too long, or with control characters other than line breaks and tabs.
    """
    text = str(text or "").replace("\r\n", "\n").strip()
    if _CONTROL.search(text):
        raise LabelError("the note may not contain control characters")
    if len(text) > NOTE_MAX:
        raise LabelError(f"the note is {len(text)} characters; keep it to {NOTE_MAX}")
    return text or None


class RecordInvalid(ValueError):
    """A stored record that is not valid JSON or does not match ``RunRecord``."""


def describe_errors(exc: ValidationError, limit: int = 5) -> str:
    """Pydantic's errors as ``field: problem (got value)``, a few, on one line."""
    parts = []
    for error in exc.errors()[:limit]:
        where = ".".join(str(p) for p in error["loc"]) or "record"
        got = "" if error["type"] == "missing" else f" (got {error.get('input')!r:.60})"
        parts.append(f"{where}: {error['msg']}{got}")
    more = len(exc.errors()) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """A stored record brought to the current shape (its ``schema_version`` kept)."""
    if "schema_version" not in data:
        # Version 1, written before the model: the same keys as version 2.
        data = {**data, "schema_version": 1}
    version = data["schema_version"]
    if isinstance(version, int) and version < 3 and isinstance(data.get("root"), str):
        # Versions 1 and 2 pinned absolute URLs: those under the run's root become relative.
        data = map_urls(data, lambda url: relative_url(data["root"], url))
    return data


def parse(data: Any, where: str, root: str | None = None) -> RunRecord:
    """A ``RunRecord`` from a stored record's JSON, its relative URLs resolved against
    ``root`` (where it was read; default: the root it names); ``RecordInvalid`` naming
    ``where``."""
    if not isinstance(data, dict):
        raise RecordInvalid(f"run record {where} is not a JSON object")
    data = migrate(data)
    base = root or data.get("root")
    if isinstance(base, str) and base:
        data = map_urls({**data, "root": base}, lambda url: absolute_url(base, url))
    try:
        return RunRecord.model_validate(data)
    except ValidationError as exc:
        raise RecordInvalid(f"run record {where} is invalid: {describe_errors(exc)}") from None


# ---------------------------------------------------------------------------
# URLs relative to the storage root
# ---------------------------------------------------------------------------


def relative_url(root: str, url: str) -> str:
    """``url`` relative to ``root`` when it is under it, else ``url`` unchanged."""
    base = root.rstrip("/") + "/"
    return url[len(base) :] if root and url.startswith(base) else url


def absolute_url(root: str, url: str) -> str:
    """A relative ``url`` resolved against ``root``; a full URL or path unchanged."""
    if "://" in url or url.startswith("/") or not root:
        return url
    return f"{root.rstrip('/')}/{url}"


def map_urls(data: dict[str, Any], change: Callable[[str], str]) -> dict[str, Any]:
    """A record's JSON with ``change`` applied to every URL of the run's files.

    Values of the wrong type are left for validation to name.
    """
    data = dict(data)
    if isinstance(data.get("config_url"), str):
        data["config_url"] = change(data["config_url"])
    steps = data.get("steps")
    if isinstance(steps, dict):
        data["steps"] = {
            name: _map_step_urls(step, change) if isinstance(step, dict) else step
            for name, step in steps.items()
        }
    return data


def _map_step_urls(step: dict[str, Any], change: Callable[[str], str]) -> dict[str, Any]:
    step = dict(step)
    if isinstance(step.get("url"), str):
        step["url"] = change(step["url"])
    outputs = step.get("outputs")
    if isinstance(outputs, dict):
        step["outputs"] = {k: change(v) if isinstance(v, str) else v for k, v in outputs.items()}
    debug = step.get("debug")
    if isinstance(debug, dict):
        debug = dict(debug)
        if isinstance(debug.get("notebook"), str):
            debug["notebook"] = change(debug["notebook"])
        if isinstance(debug.get("reports"), list):
            debug["reports"] = [change(u) if isinstance(u, str) else u for u in debug["reports"]]
        step["debug"] = debug
    return step
