"""Who may write a run: a lease in storage that one process holds at a time.

``runs/<id>/lease.json`` names its holder (a random token; host and pid for people), a
generation, and when the holder last renewed it. The process executing a run holds its
lease: it creates it for a new run, or takes it over with the next generation (``resume``,
``cancel``); it renews it every beat, checks it before every write of the run, and
releases it when it stops. Every change to the lease is a conditional write
(``storage.write_if``), so of two processes racing for it one wins and the other knows.

A holder that has not renewed for ``GIVE_UP_BEATS`` beats stops (storage does not answer,
or the process was paused); others see a lease not renewed for ``EXPIRE_BEATS`` beats plus
``SLACK_SECONDS`` as expired and may take it over. The holder gives up first, so one cut
off from storage stops before anyone takes its place. Clocks only decide when a takeover
may happen; who may write is decided by the conditional writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import secrets
import socket
import threading
from typing import Any

from toolkit.data import storage

__all__ = [
    "EXPIRE_BEATS",
    "GIVE_UP_BEATS",
    "Lease",
    "LeaseError",
    "LeaseLost",
    "RunBusy",
    "State",
    "confirm",
    "read",
    "url",
]

NAME = "lease.json"
EXPIRE_BEATS = 4  # others may take over a lease this many beats (plus slack) old
GIVE_UP_BEATS = 3  # the holder stops when it has not renewed for this many beats
SLACK_SECONDS = 2.0


class LeaseError(RuntimeError):
    """This process may not write the run (the message says why)."""


class RunBusy(LeaseError):
    """Another process holds the run's lease and renews it, or won the race for it."""


class LeaseLost(LeaseError):
    """This process no longer holds the run's lease: it stops and writes nothing more.

    ``taken_by`` is the lease as found (None when it could not renew or read it).
    """

    def __init__(self, run_id: str, why: str, taken_by: State | None = None):
        self.run_id, self.why, self.taken_by = run_id, why, taken_by
        super().__init__(
            f"run {run_id}: this process lost the run's lease ({why}); "
            "it stopped its work and wrote nothing more"
        )


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


@dataclasses.dataclass(frozen=True)
class State:
    """What ``lease.json`` holds."""

    owner: str  # the holder's random token
    generation: int  # 1 for a new run, one more at each takeover
    reason: str  # why the holder took it: run, resume or cancel
    holder: str  # host and pid, for people
    renewed_at: str  # ISO time of the holder's last renewal
    seconds: float  # the holder's beat
    released: bool = False  # the holder let it go: anyone may take it

    def live(self, at: dt.datetime | None = None) -> bool:
        """Whether its holder still counts: not released, renewed recently enough."""
        if self.released:
            return False
        age = (at or dt.datetime.now(dt.UTC)) - dt.datetime.fromisoformat(self.renewed_at)
        return age.total_seconds() <= EXPIRE_BEATS * self.seconds + SLACK_SECONDS

    def describe(self) -> str:
        return (
            f"{self.reason} on {self.holder}, generation {self.generation}, "
            f"renewed at {self.renewed_at}"
        )

    def to_bytes(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), indent=2).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> State | None:
        """The state in ``data``; None when it cannot be read (held by no one)."""
        try:
            raw = json.loads(data)
            state = cls(
                owner=str(raw["owner"]),
                generation=int(raw["generation"]),
                reason=str(raw["reason"]),
                holder=str(raw["holder"]),
                renewed_at=str(raw["renewed_at"]),
                seconds=float(raw["seconds"]),
                released=bool(raw.get("released", False)),
            )
            dt.datetime.fromisoformat(state.renewed_at)
        except (ValueError, KeyError, TypeError):
            return None
        return state


def url(run_id: str, root: str) -> str:
    """Where a run's lease is: beside its record, ``runs/<id>/lease.json``."""
    return storage.join(root, "runs", run_id, NAME)


def read(run_id: str, root: str) -> State | None:
    """The run's lease, or None when it has none (or one that cannot be read)."""
    try:
        return State.from_bytes(storage.read_bytes(url(run_id, root)))
    except FileNotFoundError:
        return None


class Lease:
    """This process's hold on one run (from ``create`` or ``take_over``).

    Thread-safe: the heartbeat renews it while the run loop checks it.
    """

    def __init__(self, run_id: str, root: str, state: State, version: str, fs):
        self.run_id, self.root, self.state, self.version = run_id, root, state, version
        self.url = url(run_id, root)
        self.fs = fs  # its own client: lease calls never wait behind the run's
        self.lost: LeaseLost | None = None
        self.released = False
        self._lock = threading.Lock()  # one write of the lease at a time
        self._lost_lock = threading.Lock()  # never held across a storage call

    @classmethod
    def create(cls, run_id: str, root: str, seconds: float) -> Lease:
        """Hold a new run's lease (generation 1).

        Raises:
            RunBusy: the run has a lease already: it ran, runs, or was cancelled.
        """
        fs = storage.own_filesystem(url(run_id, root))
        state = _state(1, "run", seconds)
        version = _write_or_find(url(run_id, root), state, None, fs)
        if version is None:
            current = read(run_id, root)
            held = current.describe() if current else "an unreadable lease"
            raise RunBusy(f"run {run_id} has already been started ({held}); a run starts once")
        return cls(run_id, root, state, version, fs)

    @classmethod
    def take_over(
        cls, run_id: str, root: str, reason: str, seconds: float, *, live_ok: bool = False
    ) -> Lease:
        """The run's lease, one generation on: its previous holder may write no more.

        Args:
            reason: ``resume`` or ``cancel``, recorded for the previous holder to tell.
            live_ok: take it even from a holder that still renews it (``cancel``).

        Raises:
            RunBusy: another process holds it and renews it (unless ``live_ok``), or took
                it over at the same moment.
        """
        fs = storage.own_filesystem(url(run_id, root))
        try:
            data, version = storage.read_versioned(url(run_id, root), fs)
            current = State.from_bytes(data)
        except FileNotFoundError:
            current, version = None, None
        if current is not None and current.live() and not live_ok:
            raise RunBusy(
                f"run {run_id} is still running ({current.describe()}); "
                "cancel it first or wait for it"
            )
        state = _state((current.generation if current else 0) + 1, reason, seconds)
        written = _write_or_find(url(run_id, root), state, version, fs)
        if written is None:
            raise RunBusy(f"run {run_id} was taken over by another process just now")
        return cls(run_id, root, state, written, fs)

    def renew(self) -> None:
        """Write a fresh ``renewed_at`` (the heartbeat, every beat).

        Raises:
            LeaseLost: another process took the lease over.
            StorageError: storage did not answer (the heartbeat tries again next beat).
        """
        with self._lock:
            if self.lost is not None:
                raise self.lost
            self._write(dataclasses.replace(self.state, renewed_at=_now()))

    def check(self) -> None:
        """Before each write of the run: this process still holds the lease.

        Raises:
            LeaseLost: it does not; nothing may be written.
        """
        if self.lost is not None:
            raise self.lost
        try:
            current = State.from_bytes(storage.read_bytes(self.url))
        except FileNotFoundError:
            current = None
        if not self._mine(current):
            raise self.lose(_taken(current), current)

    def release(self) -> None:
        """Let the run go (its process stopped), so a resume need not wait for it to
        expire. Best effort: a lease that cannot be released expires."""
        if self.lost is not None:
            return  # and a renewal stuck on storage is not waited for
        with self._lock:
            if self.lost is not None or self.released:
                return
            self.released = True
            with contextlib.suppress(LeaseLost, storage.StorageError):
                self._write(dataclasses.replace(self.state, released=True, renewed_at=_now()))

    def lose(self, why: str, taken_by: State | None = None) -> LeaseLost:
        """Mark the lease lost (the first reason stays); return the error to raise."""
        with self._lost_lock:
            if self.lost is None:
                self.lost = LeaseLost(self.run_id, why, taken_by)
            return self.lost

    def ticket(self) -> dict[str, Any]:
        """Who holds the run, as plain data: a step executed elsewhere ``confirm``s it."""
        return {
            "run_id": self.run_id,
            "root": self.root,
            "owner": self.state.owner,
            "generation": self.state.generation,
        }

    def _mine(self, current: State | None) -> bool:
        return current is not None and (current.owner, current.generation) == (
            self.state.owner,
            self.state.generation,
        )

    def _write(self, state: State) -> None:
        written = _write_or_find(self.url, state, self.version, self.fs)
        if written is None:
            try:
                data, _ = storage.read_versioned(self.url, self.fs)
                current = State.from_bytes(data)
            except FileNotFoundError:
                current = None
            raise self.lose(_taken(current), current)
        self.state, self.version = state, written


def confirm(ticket: dict[str, Any]) -> None:
    """Raise ``LeaseLost`` unless the run is still held as ``ticket`` (``Lease.ticket``)
    says: a step checks it before it writes anything."""
    current = read(ticket["run_id"], ticket["root"])
    held = (ticket["owner"], ticket["generation"])
    if current is None or (current.owner, current.generation) != held:
        raise LeaseLost(ticket["run_id"], _taken(current), current)


def _state(generation: int, reason: str, seconds: float) -> State:
    return State(
        owner=secrets.token_hex(16),
        generation=generation,
        reason=reason,
        holder=f"{socket.gethostname()} pid {os.getpid()}",
        renewed_at=_now(),
        seconds=seconds,
    )


def _write_or_find(target: str, state: State, version: str | None, fs) -> str | None:
    """Write ``state`` over ``version``; its new version, or None when someone else's
    state is there.

    A write whose answer was lost may have landed, and the storage client retries it: the
    retry then conflicts with our own state, which counts as written.
    """
    try:
        return storage.write_if(target, state.to_bytes(), version, fs)
    except storage.WriteConflict:
        try:
            data, found = storage.read_versioned(target, fs)
        except FileNotFoundError:
            return None
        current = State.from_bytes(data)
        if current is not None and (current.owner, current.generation) == (
            state.owner,
            state.generation,
        ):
            return found
        return None


def _taken(current: State | None) -> str:
    if current is None:
        return "its lease was removed or cannot be read"
    if current.reason == "cancel":
        return f"the run was cancelled ({current.describe()})"
    return f"taken over by {current.describe()}"
