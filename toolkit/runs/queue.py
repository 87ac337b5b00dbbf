"""The run queue: runs waiting for a worker, as small entries in storage.

``toolkit submit`` (and the app's Launch) writes the run's ``queued`` record, then an
entry ``queue/pending/<priority>-<time>-<run id>``: names sort in the order runs start
(higher priority first, then submission order), so a worker finds the next run with one
listing of the waiting entries, however many records the store holds. Nothing else is in
an entry; the record holds the run.

Claiming is the run's lease (``runs.lease``): the worker that creates the lease (a
conditional create) owns the run, any other finds it taken. The winner writes
``queue/claimed/<run id>.json`` and deletes the pending entry; the claimed entry stays
until the run ends, so a run whose worker died is found again (``abandoned``) and taken
over, at most ``retries`` times.

Storage requests per claim: one listing of ``queue/pending``, the lease's conditional
create, the claimed entry's write and the pending entry's delete (4), whatever the store's
size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
from typing import Any

from toolkit import config as config_mod
from toolkit.data import storage
from toolkit.runs import lease as leases
from toolkit.runs import runner
from toolkit.runs import store as runs
from toolkit.runs.record import RunEvent, RunRecord

__all__ = [
    "FINAL",
    "Abandoned",
    "Entry",
    "abandoned",
    "cancel",
    "claim",
    "finished",
    "give_up",
    "pending",
    "positions",
    "submit",
]

PRIORITIES = range(10)  # 0 (default) to 9; higher starts first
FINAL = ("succeeded", "failed", "cancelled")


@dataclasses.dataclass(frozen=True, order=True)
class Entry:
    """A waiting run, as its name under ``queue/pending`` (the sort order is the name's)."""

    name: str
    run_id: str = dataclasses.field(compare=False)
    priority: int = dataclasses.field(compare=False)

    @classmethod
    def new(cls, run_id: str, priority: int = 0) -> Entry:
        if priority not in PRIORITIES:
            raise ValueError(f"priority {priority!r}: expected a whole number from 0 to 9")
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        return cls(f"{9 - priority}-{stamp}-{run_id}", run_id, priority)

    @classmethod
    def parse(cls, name: str) -> Entry | None:
        """The entry a pending name stands for; None for a name that is not one."""
        rank, _, rest = name.partition("-")
        stamp, _, run_id = rest.partition("-")
        if not (rank.isdigit() and len(rank) == 1 and stamp.endswith("Z") and run_id):
            return None
        return cls(name, run_id, 9 - int(rank))


def _pending_url(root: str, name: str = "") -> str:
    return storage.join(root, "queue", "pending", *([name] if name else []))


def _claimed_url(root: str, run_id: str = "") -> str:
    return storage.join(root, "queue", "claimed", *([f"{run_id}.json"] if run_id else []))


# ---------------------------------------------------------------------------
# Submitting, listing, cancelling
# ---------------------------------------------------------------------------


def submit(
    resolved: config_mod.ResolvedConfig,
    configs=(),
    patches=(),
    *,
    priority: int = 0,
    run_id: str | None = None,
    **fields: Any,
) -> RunRecord:
    """Queue a run: its frozen config and ``queued`` record, then its pending entry.

    Returns at once; a worker runs it. ``fields`` set record fields (``launcher``,
    ``launched_from``, ``schedule``). The record comes first, so a worker that finds an
    entry always finds its record.
    """
    cfg = resolved.config
    run_id = run_id or runs.new_id(cfg.country, cfg.period)
    entry = Entry.new(run_id, priority)
    record = runner.create(
        resolved, configs, patches, run_id=run_id, queue_entry=entry.name, **fields
    )
    storage.write_bytes(_pending_url(record.root, entry.name), b"")
    return record


def pending(root: str | None = None) -> list[Entry]:
    """The waiting entries, in the order workers take them (one listing)."""
    names = storage.listdir(_pending_url(root or storage.root()))
    return sorted(e for e in map(Entry.parse, names) if e is not None)


def positions(root: str | None = None) -> dict[str, int]:
    """Each waiting run's place in the queue, 1 for the next to start."""
    return {entry.run_id: place for place, entry in enumerate(pending(root), start=1)}


def cancel(run_id: str, root: str | None = None) -> RunRecord:
    """Cancel a run, queued or running (``runner.cancel``), and take it off the queue."""
    root = root or storage.root()
    record = runner.cancel(run_id)
    if record.queue_entry:
        storage.remove(_pending_url(root, record.queue_entry))
    if record.status in FINAL:  # its lease is released: no process writes it any more
        finished(run_id, root)
    return record


# ---------------------------------------------------------------------------
# Claiming (in the process that will execute the run)
# ---------------------------------------------------------------------------


def claim(entry: Entry, root: str, seconds: float) -> leases.Lease | None:
    """Take the run of ``entry``: its lease, or None when another process has it.

    Exactly one caller gets a run's lease (a conditional create). A run whose lease
    exists but is not live (cancelled while queued, or its claimer died before it said
    so) leaves the pending queue for the claimed one, where ``abandoned`` finds it.
    """
    try:
        lease = leases.Lease.create(entry.run_id, root, seconds)
    except leases.RunBusy:
        state = leases.read(entry.run_id, root)
        if state is None or not state.live():
            _write_claimed(root, entry.run_id)
            storage.remove(_pending_url(root, entry.name))
        return None
    _write_claimed(root, entry.run_id)
    storage.remove(_pending_url(root, entry.name))
    return lease


def _write_claimed(root: str, run_id: str) -> None:
    body = {"run_id": run_id, "claimed_at": runs.now(), "takeovers": 0}
    with contextlib.suppress(storage.WriteConflict):  # claimed before: its count stays
        storage.write_if(_claimed_url(root, run_id), json.dumps(body).encode(), None)


def finished(run_id: str, root: str) -> None:
    """The run ended (succeeded, failed, cancelled): no worker need look at it again."""
    storage.remove(_claimed_url(root, run_id))


# ---------------------------------------------------------------------------
# Runs whose worker is gone
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Abandoned:
    """A claimed run nobody holds: ``handed_back`` by a worker that stopped (its lease
    released), else its worker died (its lease expired) and this is takeover
    ``takeovers``."""

    run_id: str
    handed_back: bool
    takeovers: int


def abandoned(root: str, retries: int, seconds: float, limit: int) -> list[Abandoned]:
    """Claimed runs that no live process holds (at most ``limit``), for this worker to
    resume.

    A run handed back is for any worker (``runner.resume``'s takeover decides which). A
    run whose worker died is counted first, with a conditional write of its claimed
    entry naming the lease generation, so only one worker takes it over (others skip a
    generation counted less than a lease's time ago); past ``retries`` takeovers it is
    recorded as failed instead (``give_up``). Finished runs leave the claimed entries.

    Requests: one listing, one lease read per claimed run, more only for those found.
    """
    found: list[Abandoned] = []
    for name in storage.listdir(_claimed_url(root)):
        if len(found) >= limit:
            break
        if name.startswith(".") or not name.endswith(".json"):
            continue  # a local store's lock files
        run_id = name.removesuffix(".json")
        state = leases.read(run_id, root)
        if state is not None and state.live():
            continue
        try:
            record = runs.load(run_id, root)
            data, version = storage.read_versioned(_claimed_url(root, run_id))
        except runs.RecordUnreadable:
            continue  # its record is broken: a person must look (`toolkit runs show`)
        except (runs.RunNotFound, FileNotFoundError):
            finished(run_id, root)
            continue
        if (record.stored_status or record.status) in FINAL:
            finished(run_id, root)
            continue
        if state is None or state.released:
            found.append(Abandoned(run_id, handed_back=True, takeovers=0))
            continue
        body = json.loads(data)
        if body.get("generation") == state.generation and not _expired(body, state):
            continue  # counted already: a worker is taking it over now
        takeovers = int(body.get("takeovers", 0))
        if takeovers >= retries:
            give_up(run_id, root, seconds, takeovers)
            continue
        body.update(takeovers=takeovers + 1, taken_at=runs.now(), generation=state.generation)
        try:
            storage.write_if(_claimed_url(root, run_id), json.dumps(body).encode(), version)
        except storage.WriteConflict:
            continue  # another worker counted it first: it takes it over
        found.append(Abandoned(run_id, handed_back=False, takeovers=takeovers + 1))
    return found


def _expired(body: dict[str, Any], state: leases.State) -> bool:
    """A count whose worker did not take the run over within a lease's time (it died)."""
    counted = dt.datetime.fromisoformat(body.get("taken_at") or "1970-01-01T00:00:00+00:00")
    window = leases.EXPIRE_BEATS * state.seconds + leases.SLACK_SECONDS
    return (dt.datetime.now(dt.UTC) - counted).total_seconds() > window


def give_up(run_id: str, root: str, seconds: float, takeovers: int) -> None:
    """Record a run whose workers kept dying as failed (its lease taken over first)."""
    try:
        lease = leases.Lease.take_over(run_id, root, "give up", seconds)
    except leases.RunBusy:
        return  # someone else is on it
    try:
        record = runs.load(run_id, root)
        at = runs.now()
        record.status, record.stored_status = "failed", None
        record.finished_at = at
        record.error = (
            f"its worker died {takeovers + 1} times; not taken over again "
            f"(the retry budget is {takeovers})"
        )
        record.events.append(RunEvent(at=at, message=record.error))
        runs.RecordWriter(lease, root).save(record)
        finished(run_id, root)
    finally:
        lease.release()
