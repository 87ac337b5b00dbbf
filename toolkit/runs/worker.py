"""A worker: drains the run queue (``runs.queue``) with a bounded number of warm processes.

``toolkit worker --slots N`` keeps N processes of its own ("slots"). Each has imported the
run loop, Ploomber and the libraries a run uses before it is given a run, runs one run at
a time, and is replaced after ``runs_per_process`` runs. A slot claims its run itself (the
run's lease is created in the process that renews it), so the worker never runs more than
N runs, whatever other workers on the same root do.

Slots live and die with the worker: each is in a session of its own (a terminal's Ctrl-C
reaches only the worker, which decides), and stops its run when the worker is gone.
``SIGTERM`` (or Ctrl-C) stops taking work and lets running runs finish for
``grace_seconds``; then they are interrupted, which records them interrupted and releases
their leases: handed back, any worker on the root resumes them (``queue.abandoned``). A
second signal hands back at once. The worker exits when its slots have.

Every ``recover_seconds`` a worker with a free slot resumes runs nobody holds: handed back,
or whose worker died (after their lease expired), up to ``retries`` takeovers per run. With
``schedules`` it also fires the schedules that are due (``runs.schedules``).

With ``executor="dask"`` a run's steps execute on the operator's Dask cluster (the
scheduler address from the command line, configs/ or ``DASK_SCHEDULER_ADDRESS``; a
worker never starts a cluster of its own). Each slot then holds one client, connected
when it warms up, that its runs share; the slot only keys and records its run. The
worker checks the scheduler answers before it takes any work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from toolkit.data import storage
from toolkit.runs import queue
from toolkit.runs import store as runs

__all__ = ["Options", "Worker", "check_cluster", "default_slots"]

RUN_MEMORY_BYTES = 2 * 1024**3  # a run at the benchmark's largest size peaks near 2 GiB
KILL_AFTER_SECONDS = 30.0  # an interrupted run that has not stopped by then is killed
Progress = Callable[[str], None]


def default_slots() -> int:
    """One run per core, as long as each can have ``RUN_MEMORY_BYTES`` of memory."""
    cores = os.cpu_count() or 1
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # no such sysconf name here: cores decide
        return cores
    return max(1, min(cores, memory // RUN_MEMORY_BYTES))


@dataclasses.dataclass
class Options:
    """How a worker runs: the operator's choice (command line or configs/), never a
    submission's."""

    slots: int = dataclasses.field(default_factory=default_slots)
    executor: str = "serial"
    executor_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    grace_seconds: float = 60.0
    poll_seconds: float = 2.0  # how often an idle worker looks at the queue
    # How often it looks for runs nobody holds: twice a beat, so a run whose worker died
    # waits little longer than its lease.
    recover_seconds: float = dataclasses.field(default_factory=lambda: 2 * runs.heartbeat_seconds())
    retries: int = 2  # takeovers of a run whose worker died, before it is failed
    runs_per_process: int = 20
    schedules: bool = True  # fire the schedules that are due
    tick_seconds: float = 30.0


# ---------------------------------------------------------------------------
# A slot: one warm process
# ---------------------------------------------------------------------------


_cluster = None  # on Dask: this slot's client, shared by its runs (``_executor_options``)


def _warm_up(options: Options) -> None:
    """Import what a run uses, so a run given to this process starts at once."""
    import nbclient  # noqa: F401
    import papermill  # noqa: F401
    import ploomber  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    from toolkit.dag import kernels, pipeline  # noqa: F401
    from toolkit.runs import runner  # noqa: F401

    if options.executor == "dask":
        from toolkit.scale.dask_executor import DaskUnavailable

        with contextlib.suppress(DaskUnavailable):  # gone since the worker checked: the run retries
            _executor_options(options)


def _executor_options(options: Options) -> dict[str, Any]:
    """A run's executor options: on Dask, the slot's client (connected once); else the
    worker's."""
    global _cluster
    if options.executor != "dask":
        return options.executor_options
    if _cluster is None:
        from toolkit.scale.dask_executor import DaskExecutor

        _cluster = DaskExecutor(**options.executor_options)
    return {"shared": _cluster}


def check_cluster(options: Options) -> None:
    """On Dask, that the operator named a scheduler and it answers.

    Raises:
        DaskUnavailable: no scheduler address, or the scheduler cannot be reached.
    """
    if options.executor != "dask":
        return
    from toolkit.scale.dask_executor import DaskExecutor, DaskUnavailable

    address = options.executor_options.get("scheduler") or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if not address:
        raise DaskUnavailable(
            "a worker on Dask needs a scheduler address (--scheduler, execution.scheduler "
            "in configs/ or DASK_SCHEDULER_ADDRESS); start one with `dask scheduler` and "
            "`dask worker`"
        )
    DaskExecutor(**{**options.executor_options, "scheduler": address}).close()


def _watch_worker(worker_pid: int) -> None:
    """Stop this process's run once the worker is gone (a slot never outlives it)."""
    while os.getppid() == worker_pid:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGINT)  # the run records itself interrupted
    time.sleep(KILL_AFTER_SECONDS)
    os._exit(1)


def _serve(conn: Connection, worker_pid: int, options: Options) -> None:
    """A slot's process: warm up, then run what the worker sends, one run at a time."""
    os.setsid()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        _warm_up(options)
        threading.Thread(target=_watch_worker, args=(worker_pid,), daemon=True).start()
        conn.send(("ready", None))
        for _ in range(options.runs_per_process):
            job = conn.recv()
            if job is None:
                return
            conn.send(("done", _execute(job, options)))
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        return  # the worker is gone, or stops
    finally:
        if _cluster is not None:
            with contextlib.suppress(Exception):  # a scheduler already gone
                _cluster.close()


def _execute(job: dict[str, Any], options: Options) -> dict[str, Any]:
    """Claim and run a new run, or resume one nobody holds; how it ended."""
    from toolkit.runs import runner

    run_id, root = job["run_id"], job["root"]

    def progress(message: str) -> None:
        print(f"{run_id}: {message}", flush=True)

    outcome, error = "succeeded", None
    try:
        executor_options = _executor_options(options)  # before a claim: a run waits for it
        if job["kind"] == "new":
            lease = queue.claim(queue.Entry.parse(job["entry"]), root, runs.heartbeat_seconds())
            if lease is None:
                return {**job, "outcome": "taken"}
            try:
                record = runs.load(run_id, root)
            except BaseException:
                lease.release()
                raise
            runner.execute(
                record,
                lease=lease,
                executor=options.executor,
                executor_options=executor_options,
                progress=progress,
            )
        else:
            runner.resume(
                run_id,
                progress=progress,
                executor=options.executor,
                executor_options=executor_options,
            )
    except runner.RunFailed as exc:
        outcome, error = exc.record.status, str(exc)
    except runner.RunBusy:
        return {**job, "outcome": "taken"}
    except runner.LeaseLost as exc:
        outcome, error = "lost", str(exc)
    except KeyboardInterrupt:
        outcome = "interrupted"  # handed back: released, resumed by a worker later
    except Exception as exc:  # noqa: BLE001 - reported; the slot goes on with the next run
        outcome, error = "error", f"{type(exc).__name__}: {exc}"
    if outcome in queue.FINAL:
        with contextlib.suppress(storage.StorageError):
            queue.finished(run_id, root)
    return {**job, "outcome": outcome, "error": error}


@dataclasses.dataclass
class _Slot:
    process: Any  # multiprocessing's SpawnProcess
    conn: Connection
    warm: bool = False
    job: dict[str, Any] | None = None


# ---------------------------------------------------------------------------
# The worker
# ---------------------------------------------------------------------------


class Worker:
    """Drains the queue of ``root`` until ``stop`` (or SIGTERM/Ctrl-C in ``run``)."""

    def __init__(self, root: str, options: Options, progress: Progress = print):
        self.root, self.options, self.progress = root, options, progress
        self.context = multiprocessing.get_context("spawn")  # no threads or locks inherited
        self.slots: list[_Slot] = []
        self.stopping = threading.Event()
        self.deadline = float("inf")  # when running runs are handed back
        self.kill_at = float("inf")  # when runs not stopped by then are killed
        self.handed_back = False
        self.recently_taken: dict[str, float] = {}  # run id -> when another worker had it
        self.next_recover = 0.0
        self.next_tick = 0.0

    # -- control ---------------------------------------------------------------------

    def stop(self, *_: Any) -> None:
        """Take no more work; hand running runs back after the grace period (at once
        when already stopping)."""
        if self.stopping.is_set():
            self.deadline = 0.0
            return
        self.stopping.set()
        self.deadline = time.monotonic() + self.options.grace_seconds
        self.progress(
            f"worker: stopping; running runs have {self.options.grace_seconds:.0f} s to "
            "finish (again to hand them back now)"
        )

    def run(self) -> None:
        """Work until stopped; then leave nothing behind."""
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                handlers[sig] = signal.signal(sig, self.stop)
        try:
            check_cluster(self.options)
            self.slots = [self._start_slot() for _ in range(self.options.slots)]
            self.progress(
                f"worker: {self.options.slots} slots, executor {self.options.executor}, "
                f"queue {storage.join(self.root, 'queue')}"
            )
            while not (self.stopping.is_set() and not self._busy()):
                self._step()
        finally:
            self._close()
            for sig, handler in handlers.items():
                # Stopped by a signal, this process is on its way out: a late one (the
                # second of Ctrl-C and SIGTERM) must not turn a clean exit into an error.
                signal.signal(sig, signal.SIG_IGN if self.stopping.is_set() else handler)
        self.progress("worker: stopped")

    # -- the loop --------------------------------------------------------------------

    def _step(self) -> None:
        self._collect(self.options.poll_seconds)
        now = time.monotonic()
        if self.stopping.is_set():
            if not self.handed_back and now >= self.deadline:
                self._hand_back()
            elif self.handed_back and now >= self.kill_at:
                for slot in self._busy():
                    slot.process.kill()
            return
        try:
            if self.options.schedules and now >= self.next_tick:
                self.next_tick = now + self.options.tick_seconds
                self._fire_schedules()
            if self._idle() and now >= self.next_recover:
                self.next_recover = now + self.options.recover_seconds
                self._recover()
            if self._idle():
                self._claim()
        except storage.StorageError as exc:  # storage away for a while: try again
            self.progress(f"worker: {exc}")

    def _claim(self) -> None:
        now = time.monotonic()
        self.recently_taken = {r: t for r, t in self.recently_taken.items() if t > now - 10}
        mine = {slot.job["run_id"] for slot in self._busy()}
        idle = self._idle()
        for entry in queue.pending(self.root):
            if not idle:
                return
            if entry.run_id in mine or entry.run_id in self.recently_taken:
                continue
            self._dispatch(idle.pop(0), {"kind": "new", "entry": entry.name}, entry.run_id)

    def _recover(self) -> None:
        found = queue.abandoned(
            self.root, self.options.retries, runs.heartbeat_seconds(), len(self._idle())
        )
        mine = {slot.job["run_id"] for slot in self._busy()}
        for run in found:
            idle = self._idle()
            if run.run_id in mine or not idle:
                continue
            why = "handed back" if run.handed_back else f"takeover {run.takeovers}"
            self.progress(f"worker: resuming {run.run_id} ({why})")
            self._dispatch(idle[0], {"kind": "resume"}, run.run_id)

    def _fire_schedules(self) -> None:
        from toolkit.runs import schedules

        try:
            for fired in schedules.tick(root=self.root):
                self.progress(f"worker: {fired}")
        except schedules.ScheduleError as exc:
            self.progress(f"worker: schedules not fired: {exc}")

    def _dispatch(self, slot: _Slot, job: dict[str, Any], run_id: str) -> None:
        slot.job = {**job, "run_id": run_id, "root": self.root}
        slot.conn.send(slot.job)

    def _collect(self, timeout: float) -> None:
        """Wait up to ``timeout`` for a slot to say something or exit; handle it."""
        waiting = [s.conn for s in self.slots] + [s.process.sentinel for s in self.slots]
        ready = set(wait(waiting, timeout))
        for slot in list(self.slots):
            if slot.conn in ready:
                try:
                    kind, result = slot.conn.recv()
                except (EOFError, OSError):
                    kind, result = "gone", None
                if kind == "ready":
                    slot.warm = True
                elif kind == "done":
                    slot.job = None
                    self._report(result)
            if slot.process.sentinel in ready or not slot.process.is_alive():
                self._replace(slot)

    def _report(self, result: dict[str, Any]) -> None:
        run_id, outcome = result["run_id"], result["outcome"]
        if outcome == "taken":
            self.recently_taken[run_id] = time.monotonic()
            return
        text = {"interrupted": "interrupted, handed back to the queue"}.get(outcome, outcome)
        self.progress(f"worker: run {run_id} {text}")

    def _replace(self, slot: _Slot) -> None:
        slot.process.join(timeout=5)
        slot.conn.close()
        self.slots.remove(slot)
        if slot.job is not None:
            self.progress(
                f"worker: the process of run {slot.job['run_id']} died (exit code "
                f"{slot.process.exitcode}); a worker takes the run over once its lease expires"
            )
        if not self.stopping.is_set():
            self.slots.append(self._start_slot())

    def _hand_back(self) -> None:
        self.handed_back = True
        self.kill_at = time.monotonic() + KILL_AFTER_SECONDS
        for slot in self._busy():
            self.progress(f"worker: handing run {slot.job['run_id']} back to the queue")
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.process.pid, signal.SIGINT)

    def _start_slot(self) -> _Slot:
        ours, theirs = self.context.Pipe()
        process = self.context.Process(
            target=_serve,
            args=(theirs, os.getpid(), self.options),
            name="toolkit-worker-slot",
        )
        # Started with Ctrl-C ignored (inherited through exec): until it has a session of
        # its own, a terminal's Ctrl-C would reach it while it imports. It takes SIGINT
        # back once it has (the worker's way to hand its run back).
        on_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if on_main else None
        try:
            process.start()
        finally:
            if on_main:
                signal.signal(signal.SIGINT, previous)
        theirs.close()
        return _Slot(process, ours)

    def _busy(self) -> list[_Slot]:
        return [s for s in self.slots if s.job is not None]

    def _idle(self) -> list[_Slot]:
        return [s for s in self.slots if s.job is None and s.warm]

    def _close(self) -> None:
        """Every slot gone: idle ones told to stop, the rest interrupted, then killed."""
        for slot in self.slots:
            if not slot.warm:  # still importing: it holds nothing yet
                slot.process.kill()
            with contextlib.suppress(OSError):
                slot.conn.send(None)
            if slot.job is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.process.pid, signal.SIGINT)
        deadline = time.monotonic() + KILL_AFTER_SECONDS
        for slot in self.slots:
            slot.process.join(timeout=max(0.1, deadline - time.monotonic()))
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join(timeout=5)
            slot.conn.close()
        self.slots = []
