"""Run records: one JSON object per run in storage, rewritten whole as the run progresses.

A record is the single source of truth about a run for the CLI, the app and other
machines: identity, launcher, effective config with provenance, per-step status, timing,
cache keys and outputs, versions, final status. ``runs/<id>/`` holds only that run's keys.
A record "running" whose lease (``runs.lease``) is no longer renewed reads as
"interrupted". The process holding the run's lease writes its record through
``RecordWriter``; the record names its files relative to the storage root
(``record.py``), and a record read from a root resolves them against it.
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
from toolkit.runs import lease as leases
from toolkit.runs.record import RecordInvalid, RunRecord, parse

__all__ = [
    "ACTIVE",
    "heartbeat_seconds",
    "RecordUnreadable",
    "RecordWriter",
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


def _encode(record: RunRecord, root: str) -> bytes:
    record.updated_at = now()
    return json.dumps(record.to_json(root), indent=2, allow_nan=False).encode()


def save(record: RunRecord, root: str | None = None) -> None:
    """Write the whole record in one atomic put (``updated_at`` set to now), whoever holds
    the run: for a record no run process owns yet (the app's ``queued`` record). The run's
    process writes through ``RecordWriter``."""
    root = root or storage.root()
    storage.write_bytes(record_url(record.id, root), _encode(record, root))


class RecordWriter:
    """Writes one run's record as the holder of its lease.

    Before every write the lease is checked (``LeaseLost`` when another process took the
    run over: nothing is written), and the write replaces only the version this writer
    last wrote (``storage.write_if``). A conflict means a process that had lost the lease
    wrote after its last check: the holder's record replaces it.
    """

    MAX_TRIES = 5

    def __init__(self, lease: leases.Lease, root: str):
        self.lease, self.root = lease, root
        self.version: str | None = None
        self.known = False  # the version is read before the first write

    def save(self, record: RunRecord) -> None:
        data = _encode(record, self.root)
        url = record_url(record.id, self.root)
        for _ in range(self.MAX_TRIES):
            self.lease.check()
            if not self.known:
                self.version, self.known = storage.version_of(url), True
            try:
                self.version = storage.write_if(url, data, self.version)
                return
            except storage.WriteConflict:
                self.known = False
        raise storage.StorageError(
            f"cannot write {storage.describe(url)}: it changed at each of {self.MAX_TRIES} tries"
        )


def _decode(raw: bytes | None, run_id: str, root: str) -> RunRecord:
    """The record in ``raw`` (status as stored, also in ``stored_status``), its URLs
    resolved against ``root``; ``RecordUnreadable`` naming the run."""
    url = record_url(run_id, root)
    try:
        record = parse(json.loads(raw or b""), url, root)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RecordUnreadable(f"run record {url} is corrupt ({exc})") from None
    except RecordInvalid as exc:
        raise RecordUnreadable(str(exc)) from None
    record.stored_status = record.status
    return record


def _make_effective(record: RunRecord, lease: leases.State | None) -> RunRecord:
    """Status made effective; ``heartbeat_at`` the lease's last renewal when later."""
    record.status = effective_status(record, lease=lease)
    beat = parse_time(record.heartbeat_at)
    if lease is not None and (beat is None or parse_time(lease.renewed_at) > beat):
        record.heartbeat_at = lease.renewed_at
    return record


def load(run_id: str, root: str | None = None) -> RunRecord:
    """The record of ``run_id`` read under ``root`` (default: the storage root), its URLs
    resolved against it, with ``status`` made effective (see ``effective_status``) and the
    stored one in ``stored_status``.

    Raises:
        RunNotFound: no such run.
        RecordUnreadable: its record is corrupt or invalid (the message says what).
    """
    root = root or storage.root()
    url = record_url(run_id, root)
    try:
        raw = storage.read_bytes(url)
    except FileNotFoundError:
        raise RunNotFound(f"no run {run_id!r} under {runs_url(root)}") from None
    try:
        record = _decode(raw, run_id, root)
    except RecordUnreadable as exc:
        raise RecordUnreadable(f"{exc}; the run cannot be shown") from None
    lease = leases.read(run_id, root) if record.status in ACTIVE else None
    return _make_effective(record, lease)


def effective_status(
    record: RunRecord, at: dt.datetime | None = None, lease: leases.State | None = None
) -> str:
    """``interrupted`` for an active record whose process is gone, else the stored status.

    With the run's ``lease``, gone means the lease is released or expired; a record
    without one (queued by the app, or written before leases) goes by its heartbeat.
    """
    status = record.status
    if status not in ACTIVE:
        return status
    if lease is not None:
        return status if lease.live(at) else "interrupted"
    if status == "queued" and record.queue_entry:
        return status  # waits in the queue (runs.queue) for a worker, however long
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
    root = root or storage.root()
    base = runs_url(root)
    ids = storage.listdir(base)
    records = []
    for run_id, blob in _read_all([record_url(i, root) for i in ids], ids).items():
        try:
            if isinstance(blob, Exception):
                raise RecordUnreadable(f"run record {record_url(run_id, root)}: {blob}")
            records.append(_decode(blob, run_id, root))
        except RecordUnreadable as exc:
            records.append(RunRecord.unreadable(run_id, str(exc)))
    # The leases of the active runs only: they decide whether those still run.
    active = [r.id for r in records if r.status in ACTIVE]
    found = _read_all([leases.url(i, root) for i in active], active)
    for record in records:
        blob = found.get(record.id)
        lease = leases.State.from_bytes(blob) if isinstance(blob, bytes) else None
        if record.status in ACTIVE:
            _make_effective(record, lease)
    return sorted(records, key=lambda r: r.created_at or "", reverse=True)


def _read_all(urls: list[str], keys: list[str]) -> dict[str, bytes | Exception]:
    """Each URL's bytes (or ``FileNotFoundError``) by key, in one batched read within one
    call's deadline (s3fs fetches them concurrently)."""
    blobs = storage.read_many(urls)
    return {key: blobs[url] for url, key in zip(urls, keys, strict=True)}


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
        "name": record.name,
        "launcher": record.launcher,
        "started_at": record.started_at,
        "duration_s": duration_seconds(record),
        "steps": {
            name: {"status": step.status, "reused": step.reused}
            for name, step in record.steps.items()
        },
    }
