"""Run steps on Dask: a private local cluster on 127.0.0.1, or an existing scheduler."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

from toolkit import project
from toolkit.runs.executors import release_run

try:
    import dask
    from distributed import Client, LocalCluster, WorkerPlugin, wait
    from distributed.client import FuturesCancelledError
    from distributed.scheduler import KilledWorker
except ImportError:  # the "scale" extra is not installed; DaskExecutor says so
    dask = Client = LocalCluster = wait = None
    WorkerPlugin = object
    FuturesCancelledError = KilledWorker = RuntimeError

__all__ = [
    "DaskExecutor",
    "DaskUnavailable",
    "ProjectMismatch",
    "StepFuture",
    "StepLost",
    "project_fingerprint",
]

# How often a blocked submit or wait looks up: a stop request is honoured within this.
POLL_SECONDS = 1.0
PACKAGE_DIR = Path(__file__).resolve().parent.parent
# What decides a step's outputs besides its request: the toolkit package's code, and the
# project's notebooks, DAG and config layers.
PROJECT_FILES = ("notebooks/*.py", "pipeline.yaml", "env.yaml", "configs/**/*.yaml")
_fingerprint: str | None = None


class DaskUnavailable(RuntimeError):
    """No cluster to run on: the scheduler is unreachable or a local cluster did not start."""


class StepLost(RuntimeError):
    """A step never returned: the workers running it died, or the cluster dropped it."""


class ProjectMismatch(RuntimeError):
    """A worker has other code, notebooks or configs than the launcher that keyed the step."""


def project_fingerprint() -> str:
    """Hash of this process's project files (``PROJECT_FILES``), computed once per process."""
    global _fingerprint
    if _fingerprint is None:
        digest = hashlib.sha256()
        folders = [(PACKAGE_DIR, ("**/*.py",)), (project.root(), PROJECT_FILES)]
        for folder, patterns in folders:
            for pattern in patterns:
                for path in sorted(folder.glob(pattern)):
                    digest.update(str(path.relative_to(folder.parent)).encode() + b"\0")
                    digest.update(path.read_bytes() + b"\0")
        _fingerprint = digest.hexdigest()
    return _fingerprint


# The project this process was started on by its operator, if any (read at import, before
# ``_enter_project`` sets the variable for a task).
_OPERATOR_PROJECT = os.environ.get("TOOLKIT_PROJECT", "").strip() or None


def _enter_project(launcher_project: str) -> None:
    """Work on the launcher's project folder, unless this worker's operator named one.

    A ``dask worker`` may run in any working directory, which says nothing about the
    project: the launcher's folder comes with each task. As ``TOOLKIT_PROJECT`` it reaches
    the config resolution Ploomber runs here and the kernels this worker starts.
    """
    global _fingerprint
    if _OPERATOR_PROJECT or os.environ.get("TOOLKIT_PROJECT") == launcher_project:
        return
    if (Path(launcher_project) / project.MARKER).is_file():
        os.environ["TOOLKIT_PROJECT"] = launcher_project
        _fingerprint = None


def _run_checked(expected: str, launcher_project: str, fn, *args):
    """Run ``fn(*args)`` on a worker only if its project is the launcher's.

    The launcher keys each step by its own notebook and code; a worker with another
    version would publish other outputs under that key.
    """
    _enter_project(launcher_project)
    try:
        found = project_fingerprint()
    except project.NotInProject as exc:
        raise ProjectMismatch(
            f"worker on {socket.gethostname()} has no toolkit project: not at the launcher's "
            f"{launcher_project}, and {exc}; deploy the launcher's commit there, or start "
            "the worker with TOOLKIT_PROJECT"
        ) from None
    if found != expected:
        raise ProjectMismatch(
            f"worker on {socket.gethostname()} has another toolkit project at {project.root()} "
            f"(fingerprint {found[:12]}) than the launcher ({expected[:12]}); deploy the "
            "launcher's commit to the workers (toolkit/, notebooks/, pipeline.yaml, configs/)"
        )
    return fn(*args)


class _PrivateTemp(WorkerPlugin):
    """Worker plugin: the worker's temporary files go into its own local directory.

    ``execute_step`` makes its workspace with ``tempfile``; on a shared host this keeps
    each worker's files apart, and a killed worker's leftovers go with its directory.
    """

    name = "toolkit-private-temp"
    idempotent = True

    def setup(self, worker) -> None:
        """Point ``tempfile`` and ``TMPDIR`` at ``<worker local directory>/tmp``."""
        folder = os.path.join(worker.local_directory, "tmp")
        os.makedirs(folder, exist_ok=True)
        os.environ["TMPDIR"] = folder  # the notebook kernels this worker starts, too
        tempfile.tempdir = folder


class StepFuture:
    """A submitted step: a Dask future whose failures read as step failures."""

    def __init__(self, dask_future, label: str):
        self.dask_future = dask_future
        self.label = label

    @property
    def key(self) -> str:
        """The Dask task key: ``<step>-<12 hex digits>``, unique per submission."""
        return self.dask_future.key

    def done(self) -> bool:
        """True once the task finished, failed or was cancelled."""
        return self.dask_future.done()

    def cancel(self) -> None:
        """Ask the scheduler to drop the task (a task already running finishes first)."""
        self.dask_future.cancel()

    def result(self, timeout: float | None = None) -> Any:
        """The step's return value.

        Raises:
            StepLost: its workers died more often than the scheduler allows (Dask's
                ``KilledWorker``), or the cluster cancelled it.
        """
        try:
            return self.dask_future.result(timeout=timeout)
        except KilledWorker as exc:
            retries = exc.allowed_failures
            raise StepLost(
                f"worker lost while running step {self.label} (KilledWorker: {retries + 1} "
                f"worker process(es) died while running it, the last {exc.last_worker.address}),"
                f" retried {retries} time{'s' if retries != 1 else ''}; the Dask worker logs "
                "say why (out of memory, killed by the OS, a crash in native code)"
            ) from None
        except CancelledError as exc:
            raise StepLost(
                f"step {self.label} was cancelled on the Dask cluster ({exc}); the scheduler "
                "restarted or the connection to it was lost"
            ) from None

    def __repr__(self) -> str:
        return f"StepFuture({self.label!r}, {self.dask_future.status})"


class DaskExecutor:
    """Runs each step as a Dask task, on a private local cluster or an existing scheduler.

    A step's task reads and writes only the storage root, so it may run on any worker.
    A task whose worker dies is retried by Dask on another worker; once the scheduler's
    budget of worker deaths for it is spent, its future raises ``StepLost``, which the
    run records as a failed step.

    One executor may be shared by several runs in threads (``shared=``): each run gets a
    light executor over the same client, cancels only its own tasks on close, and all
    runs' steps interleave on the same workers.
    """

    name = "dask"

    def __init__(
        self,
        workers: int = 2,
        scheduler: str | None = None,
        retries: int = 2,
        *,
        shared: DaskExecutor | None = None,
        stop: threading.Event | None = None,
    ):
        """Connect to ``scheduler`` or start a local cluster of ``workers`` processes.

        Args:
            workers: worker processes of a local cluster (one thread each); unused with
                a scheduler.
            scheduler: address of an existing scheduler, e.g. ``tcp://host:8786``; when
                None, ``DASK_SCHEDULER_ADDRESS``; when neither, a local cluster. The
                address is the operator's alone (configs/, the environment, the CLI; never
                the app's launch form): a client runs what its scheduler sends back, so it
                must be a scheduler the operator controls.
            retries: times a step is retried after a worker dies running it (on a local
                cluster; an existing scheduler applies its own
                ``distributed.scheduler.allowed-failures``) or after it raises.
            shared: an executor to borrow the client, retries and slots from; it is not
                closed by this one. ``workers``, ``scheduler`` and ``retries`` are then
                ignored.
            stop: when set, a blocked ``submit``/``wait_any`` raises ``KeyboardInterrupt``
                so the run stops like on Ctrl-C (see ``interrupt``).

        Raises:
            DaskUnavailable: the scheduler cannot be reached or the cluster cannot start.
        """
        if WorkerPlugin is object:
            raise DaskUnavailable("Dask is not installed: pip install 'toolkit[scale]'")
        self.stop = stop or threading.Event()
        self._mine: list[StepFuture] = []
        self._lock = threading.Lock()
        self.cluster = None
        self._tmp: str | None = None
        self._fingerprint: str | None = None
        self._project: str | None = None  # sent with each task to an existing cluster
        self.home: str | None = None  # the worker that ran this run's last step
        if shared is not None:
            self.client, self.retries, self._slots = shared.client, shared.retries, shared._slots
            self.address, self._owner = shared.address, False
            self._fingerprint, self._project = shared._fingerprint, shared._project
            return
        if int(workers) < 1 or int(retries) < 0:
            raise ValueError(f"need workers >= 1 and retries >= 0, got {workers} and {retries}")
        self.retries, self._owner = int(retries), True
        address = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") or None
        if address:
            self.client = _connect(address)
            # The cluster may be shared and adaptive: it decides how many tasks run where.
            self._slots = None
            # Its workers have their own copy of the project: check it matches ours. (A
            # local cluster reads our very files, so it is not checked.)
            self._fingerprint = project_fingerprint()
            self._project = str(project.root())
        else:
            self.client = self._start_local(int(workers))
            # Hand a worker one task at a time: the scheduler counts a worker's death
            # against every task it holds, so a queued bystander would burn its retries.
            self._slots = threading.BoundedSemaphore(int(workers))
        self.address = self.client.scheduler.address

    def _start_local(self, workers: int):
        self._tmp = tempfile.mkdtemp(prefix="toolkit-dask-")
        settings = {
            # Worker deaths a task survives: ``retries`` is the one knob for both retries.
            "distributed.scheduler.allowed-failures": self.retries,
            # Workers, and the kernels they start, get our environment as it is, so a
            # step computes as in a serial run. Dask would pin OpenMP/BLAS threads
            # (``execute_step`` sets the same counts for every kernel, unless exported)
            # and set MALLOC_TRIM_THRESHOLD_, which turns off glibc's adaptive mmap
            # threshold: it is for long-lived workers holding data, and the data here
            # lives in kernels that die with their run.
            "distributed.nanny.pre-spawn-environ": {},
            # The statistical profiler samples the worker's threads every 10 ms; they only
            # wait on a kernel, so it would profile waiting, with the kernels' cores.
            "distributed.worker.profile.enabled": False,
            # Housekeeping timers, made 10 to 50 times rarer: by default the scheduler, nannies
            # and workers wake up every 20 to 500 ms to time their event loops, sample
            # their memory and system load and steal work. Their CPU (about 0.08 of a
            # core for two workers) comes out of the kernels' share.
            "distributed.admin.tick.interval": "1s",  # only times the loop for warnings
            "distributed.admin.system-monitor.interval": "5s",  # feeds dashboards: none
            # Sizes the worker process, not the kernel processes that hold the data.
            "distributed.worker.memory.monitor-interval": "1s",
            # One task per worker at a time (``_slots``): there is never work to steal.
            "distributed.scheduler.work-stealing": False,
        }
        try:
            with dask.config.set(settings):
                self.cluster = LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",  # scheduler, nannies and workers: loopback only
                    scheduler_port=0,
                    dashboard_address=None,  # no dashboard ...
                    # ... and the scheduler's HTTP server (health, metrics) on a random
                    # loopback port rather than the default :8787.
                    scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                    worker_dashboard_address=None,
                    local_directory=self._tmp,  # each worker makes its own folder in it
                    silence_logs=logging.ERROR,
                )
                client = Client(self.cluster)
            client.register_plugin(_PrivateTemp())
        except Exception as exc:
            self._close_cluster()
            raise DaskUnavailable(
                f"could not start a local Dask cluster of {workers} workers: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        return client

    def submit(self, fn, *args) -> StepFuture:
        """Run ``fn(*args)`` on the cluster; a unique task per call, retried ``retries`` times.

        Raises:
            KeyboardInterrupt: the executor was asked to stop (``interrupt``).
        """
        label = _label(fn, args)
        if self._slots is not None:
            while not self._slots.acquire(timeout=POLL_SECONDS):
                self._check_stop()
        self._check_stop_releasing()
        if self._fingerprint is not None:
            fn, args = _run_checked, (self._fingerprint, self._project, fn, *args)
        home = self._idle_home()
        try:
            future = self.client.submit(
                fn,
                *args,
                key=f"{label.replace(' ', '-')}-{uuid.uuid4().hex[:12]}",
                pure=False,
                retries=self.retries,
                workers=home,
                allow_other_workers=home is not None,
            )
        except BaseException:
            if self._slots is not None:
                self._slots.release()
            raise
        if self._slots is not None:
            slots = self._slots
            future.add_done_callback(lambda _: slots.release())
        step = StepFuture(future, label)
        with self._lock:
            self._mine.append(step)
        return step

    def wait_any(self, futures) -> tuple[list[StepFuture], list[StepFuture]]:
        """Block until at least one of ``futures`` is done; return (done, not done).

        Raises:
            KeyboardInterrupt: the executor was asked to stop (``interrupt``).
        """
        futures = list(futures)
        if not futures:
            return [], []
        by_task = {f.dask_future: f for f in futures}
        while True:
            self._check_stop()
            try:
                # Wake up now and then so a stop request is seen while steps run.
                wait(list(by_task), timeout=POLL_SECONDS, return_when="FIRST_COMPLETED")
            except TimeoutError:
                continue
            except FuturesCancelledError:
                pass  # a cancelled task is done; its result() says why
            # One snapshot: a future finishing between two looks would be in neither list.
            finished = {f: f.done() for f in futures}
            done = [f for f in futures if finished[f]]
            self._note_home(done)
            return done, [f for f in futures if not finished[f]]

    def _idle_home(self) -> list[str] | None:
        """The worker that ran this run's last step, if it is idle now; else None (any).

        That worker keeps the run's Jupyter kernel, its libraries imported
        (``toolkit.dag.kernels``): a step sent there skips a kernel start. A busy home is not
        waited for: the task would queue there while another worker idles.
        """
        if self.home is None:
            return None
        try:
            tasks = self.client.processing(workers=[self.home])
        except Exception:  # noqa: BLE001 - a hint only: without it any worker will do
            return None
        if self.home not in tasks or tasks[self.home]:  # gone, or busy
            return None
        return [self.home]

    def _note_home(self, done: list[StepFuture]) -> None:
        finished = [f.dask_future for f in done if f.dask_future.status == "finished"]
        if not finished:
            return
        try:
            holders = self.client.who_has(finished[-1])
        except Exception:  # noqa: BLE001 - a hint only
            return
        where = holders.get(finished[-1].key) or ()
        self.home = next(iter(where), self.home)

    def interrupt(self) -> None:
        """Stop the run using this executor: its next submit or wait raises KeyboardInterrupt.

        Safe from any thread; lets a run loop that is not the main thread be cancelled.
        """
        self.stop.set()

    def release(self, run_id: str) -> None:
        """The run is over: kill the kernels its steps left idle on the workers."""
        # A lost scheduler or worker took its kernels with it.
        with contextlib.suppress(Exception):
            self.client.run(release_run, run_id, wait=True)

    def close(self) -> None:
        """Cancel this executor's unfinished tasks; close the client and cluster it started."""
        with self._lock:
            unfinished = [f.dask_future for f in self._mine if not f.done()]
            self._mine.clear()
        if unfinished:
            # A lost scheduler has nothing left to cancel.
            with contextlib.suppress(Exception):
                self.client.cancel(unfinished)
        if self._owner:
            try:
                self.client.close()
            finally:
                self._close_cluster()

    def _close_cluster(self) -> None:
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise KeyboardInterrupt("run stopped")

    def _check_stop_releasing(self) -> None:
        if self.stop.is_set():
            if self._slots is not None:
                self._slots.release()
            raise KeyboardInterrupt("run stopped")

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DaskExecutor({self.address!r}, retries={self.retries})"


def _connect(address: str):
    started = time.monotonic()
    try:
        # Gives up after distributed.comm.timeouts.connect (30 s unless configured).
        return Client(address)
    except (OSError, TimeoutError) as exc:
        raise DaskUnavailable(
            f"cannot reach the Dask scheduler at {address} "
            f"(after {time.monotonic() - started:.0f}s: {exc}); check the address "
            "(--scheduler, execution.scheduler or DASK_SCHEDULER_ADDRESS) and the network"
        ) from None


def _label(fn, args) -> str:
    """``forecast`` for a step request, else the function's name: names tasks and errors."""
    request = args[0] if args else None
    if isinstance(request, dict) and "step" in request:
        return str(request["step"])
    return getattr(fn, "__name__", "task")
