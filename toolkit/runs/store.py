"""Run records: one JSON object per run in storage, rewritten whole as the run progresses.

A record is the single source of truth about a run for the CLI, the app and other
machines: identity, launcher, effective config with provenance, per-step status, timing,
cache keys and outputs, versions, final status. ``runs/<id>/`` holds only that run's keys.
A record whose heartbeat stopped while "running" reads as "interrupted".
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import platform
import secrets
import subprocess
from importlib import metadata
from typing import Any

from toolkit import project, settings
from toolkit.data import storage
from toolkit.runs.record import RecordInvalid, RunRecord, parse

__all__ = [
    "ACTIVE",
    "heartbeat_seconds",
    "RecordUnreadable",
    "RunNotFound",
    "RunRecord",
    "effective_status",
    "list_runs",
    "load",
    "new_id",
    "record_url",
    "run_url",
    "save",
]


def heartbeat_seconds() -> float:
    """How often a running process beats (``TOOLKIT_HEARTBEAT_SECONDS``, default 5)."""
    return settings.seconds("TOOLKIT_HEARTBEAT_SECONDS", 5.0)


STALE_AFTER_BEATS = 4  # a record this many beats late belongs to a dead process
QUEUED_GRACE_SECONDS = 180
ACTIVE = ("queued", "running")
FINAL = ("succeeded", "failed", "cancelled", "interrupted")


class RunNotFound(LookupError):
    """No record for that run id under the storage root."""


class RecordUnreadable(RunNotFound):
    """The run's record.json is corrupt or does not match ``RunRecord`` (the message says
    which run and what is wrong)."""


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def parse_time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


def new_id(market: str, period: str) -> str:
    """Sortable, readable and unique: ``20261129-004512-US-2026-11-3f9a1c``."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{market}-{period}-{secrets.token_hex(3)}"


def _check_id(run_id: str) -> str:
    if not run_id or "/" in run_id or run_id.startswith(".") or len(run_id) > 120:
        raise RunNotFound(f"invalid run id {run_id!r}")
    return run_id


def runs_url(root: str | None = None) -> str:
    return storage.join(root or storage.root(), "runs")


def run_url(run_id: str, *parts: str, root: str | None = None) -> str:
    return storage.join(runs_url(root), _check_id(run_id), *parts)


def record_url(run_id: str, root: str | None = None) -> str:
    return run_url(run_id, "record.json", root=root)


def save(record: RunRecord, root: str | None = None) -> None:
    """Write the whole record in one atomic put (``updated_at`` set to now)."""
    record.updated_at = now()
    data = json.dumps(record.to_json(), indent=2, allow_nan=False).encode()
    storage.write_bytes(record_url(record.id, root), data)


def _decode(raw: bytes | None, run_id: str, root: str | None) -> RunRecord:
    """The record in ``raw``, status made effective; ``RecordUnreadable`` naming the run."""
    url = record_url(run_id, root)
    try:
        record = parse(json.loads(raw or b""), url)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RecordUnreadable(f"run record {url} is corrupt ({exc})") from None
    except RecordInvalid as exc:
        raise RecordUnreadable(str(exc)) from None
    record.stored_status = record.status
    record.status = effective_status(record)
    return record


def load(run_id: str, root: str | None = None) -> RunRecord:
    """The record of ``run_id``, with ``status`` made effective (see ``effective_status``)
    and the stored one in ``stored_status``.

    Raises:
        RunNotFound: no such run.
        RecordUnreadable: its record is corrupt or invalid (the message says what).
    """
    url = record_url(run_id, root)
    try:
        raw = storage.read_bytes(url)
    except FileNotFoundError:
        raise RunNotFound(f"no run {run_id!r} under {runs_url(root)}") from None
    try:
        return _decode(raw, run_id, root)
    except RecordUnreadable as exc:
        raise RecordUnreadable(f"{exc}; the run cannot be shown") from None


def effective_status(record: RunRecord, at: dt.datetime | None = None) -> str:
    """``interrupted`` for an active record whose heartbeat is late, else the stored status."""
    status = record.status
    if status not in ACTIVE:
        return status
    beat = parse_time(record.heartbeat_at or record.created_at)
    interval = float(record.heartbeat_seconds or heartbeat_seconds())
    at = at or dt.datetime.now(dt.UTC)
    grace = STALE_AFTER_BEATS * interval + 2
    if status == "queued":  # the launched process may take a while to import and take over
        grace = max(grace, QUEUED_GRACE_SECONDS)
    if beat is None or (at - beat).total_seconds() > grace:
        return "interrupted"
    return status


def list_runs(root: str | None = None) -> list[RunRecord]:
    """Every run record, newest first. Listings are never cached.

    A record that cannot be read is listed as ``RunRecord.unreadable`` (status
    ``unreadable``, the problem in ``error``), so one bad record never hides the others.
    """
    base = runs_url(root)
    ids = storage.listdir(base)
    # One batched read: s3fs fetches the records concurrently.
    fs, _ = storage.filesystem(base)
    paths = {storage.filesystem(record_url(i, root))[1]: i for i in ids}
    blobs = fs.cat(list(paths), on_error="return") if paths else {}
    records = []
    for path, run_id in paths.items():
        blob = blobs.get(path)
        try:
            if isinstance(blob, Exception):
                raise RecordUnreadable(f"run record {record_url(run_id, root)}: {blob}")
            records.append(_decode(blob, run_id, root))
        except RecordUnreadable as exc:
            records.append(RunRecord.unreadable(run_id, str(exc)))
    return sorted(records, key=lambda r: r.created_at or "", reverse=True)


def versions() -> dict[str, str]:
    """Versions of the packages that decide a run's results."""
    out = {"python": platform.python_version()}
    for name in ("toolkit", "ploomber", "pandas", "pandera", "numpy", "scipy", "statsmodels"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit() -> str | None:
    """The repo's commit, with ``-dirty`` when notebooks, configs or code have local edits."""
    try:
        project_dir = project.root()
    except project.NotInProject:
        return None
    if not (project_dir / ".git").exists():
        return None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=project_dir,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--",
                "notebooks",
                "configs",
                "toolkit",
                "pipeline.yaml",
            ],
            cwd=project_dir,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def launcher() -> str:
    """Who launched: ``TOOLKIT_LAUNCHER`` (the app sets the signed-in user), else the OS user."""
    return os.environ.get("TOOLKIT_LAUNCHER") or getpass.getuser()


def duration_seconds(record: RunRecord) -> float | None:
    start = parse_time(record.started_at)
    end = parse_time(record.finished_at) or parse_time(record.heartbeat_at)
    return round((end - start).total_seconds(), 1) if start and end else None


def summary_row(record: RunRecord) -> dict[str, Any]:
    """The fields ``runs list`` shows and ``--json`` returns for each run."""
    return {
        "id": record.id,
        "status": record.status,
        "market": record.market or None,
        "period": record.period or None,
        "category": record.category,
        "launcher": record.launcher,
        "started_at": record.started_at,
        "duration_s": duration_seconds(record),
        "steps": {
            name: {"status": step.status, "reused": step.reused}
            for name, step in record.steps.items()
        },
    }
