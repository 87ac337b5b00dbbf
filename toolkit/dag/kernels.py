"""Kernels reused from notebook to notebook, through nbclient's ``kernel_manager_class``.

papermill starts a fresh kernel for every notebook, and every kernel then imports pandas,
pyarrow, pandera and statsmodels again: seconds per step that running the same code by hand
never pays. ``pipeline.yaml`` names ``ReusedKernelManager`` in each task's
``executor_params``; Ploomber hands those to papermill, papermill to nbclient, so
``ploomber build`` and ``toolkit run`` both execute every notebook of a process in a kernel
that is reset, not restarted:

* before each further notebook the user namespace is reset (IPython's ``reset``), and the
  working directory and environment variables are made those a fresh kernel would get;
  imported modules stay imported, which is the saving;
* a kernel serves one notebook at a time and one thread (its client's sockets belong to
  that thread's event loop); a kernel that does not answer at once when its notebook
  ends (a timed-out or interrupted cell still running) is killed, not kept;
* at most ``MAX_IDLE`` idle kernels per process; every kernel of the process is killed when
  it exits (``shutdown_all``, registered with ``atexit``) and, should the process be
  killed, by ipykernel's own parent polling;
* kernels run BLAS/OpenMP with one thread unless the operator exported a count;
* kernels talk over Unix sockets in a private folder (``transport = "ipc"``): no TCP port
  to race other kernels for, no "running over TCP without encryption" warning;
* within ``limited(seconds, memory_mb)`` (``toolkit run`` wraps each step in it), the
  notebooks a thread executes get that many seconds in all, not per cell, and that much
  resident memory: a watcher thread samples the kernel and stops it (interrupted then
  killed when out of time, killed when over memory); its notebook fails, and the kernel
  is never kept. ``ploomber build`` has only nbclient's per-cell ``execution_timeout``:
  nbclient gives a kernel manager nothing of the notebook's settings to find a limit by.

``execution.kernel: fresh`` (``reuse(False)``) gives each notebook a kernel of its own,
still over IPC.
"""

from __future__ import annotations

import ast
import atexit
import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator

import psutil
from jupyter_client import AsyncKernelClient, AsyncKernelManager
from jupyter_core.utils import run_sync

from toolkit import tempdirs

__all__ = [
    "MAX_IDLE",
    "KeptClient",
    "LimitExceeded",
    "Limits",
    "ReusedKernelManager",
    "THREAD_VARIABLES",
    "close_idle",
    "kernel_environment",
    "limited",
    "live_kernels",
    "reuse",
    "shutdown_all",
]

_log = logging.getLogger(__name__)

MAX_IDLE = 2
# Thread pools of the numeric libraries a kernel loads (OpenBLAS, MKL, OpenMP, ...).
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
STARTUP_SECONDS = 60.0
QUIET_SECONDS = 2.0  # how long a kernel may take to answer once its notebook ended
RESET_SECONDS = 30.0
SAMPLE_SECONDS = 0.25  # how often a limited notebook's kernel is checked
INTERRUPT_GRACE_SECONDS = 2.0  # how long an interrupted kernel has to stop before the kill

_lock = threading.Lock()
_idle: list[_Kernel] = []
_busy: set[_Kernel] = set()
_limits: dict[int, Limits] = {}  # thread -> the limits of the notebooks it executes
_watcher: threading.Thread | None = None
_reuse = True
_atexit_registered = False


def reuse(enabled: bool) -> None:
    """Reuse kernels between notebooks of this process (the default), or start one each."""
    global _reuse
    _reuse = enabled


def live_kernels() -> int:
    """How many kernels this process holds (idle or executing)."""
    with _lock:
        return len(_idle) + len(_busy)


def close_idle() -> None:
    """Close the kernels kept idle in this process (a run is over)."""
    with _lock:
        idle = list(_idle)
        _idle.clear()
    for kernel in idle:
        run_sync(kernel.close)()


def shutdown_all() -> None:
    """Kill every kernel this process started, idle or executing (exit, cancel).

    An executing kernel's process is killed; its notebook then fails with a dead kernel,
    and nbclient's clean-up, in the notebook's own thread, closes what is left.
    """
    with _lock:
        idle, busy = list(_idle), list(_busy)
        _idle.clear()
        _busy.clear()
    for kernel in idle:
        run_sync(kernel.close)()
    for kernel in busy:
        kernel.terminate()


def kernel_environment() -> dict[str, str]:
    """The launcher's environment, with one BLAS/OpenMP thread unless the operator chose.

    Steps run side by side (Dask workers, backfills), one kernel per core: library thread
    pools on top would oversubscribe the cores. The same setting for every kernel, of
    `ploomber build` and `toolkit run`, serial or Dask, also keeps their results equal:
    iterative fits give other floats with another thread count.
    """
    env = dict(os.environ)
    for name in THREAD_VARIABLES:
        env.setdefault(name, "1")
    return env


class LimitExceeded(RuntimeError):
    """A notebook was to start after its thread's time limit had passed."""


class Limits:
    """What the notebooks of one thread may use while ``limited`` applies; ``exceeded``
    says which limit stopped one ("time", "memory")."""

    def __init__(self, seconds: float | None, memory_mb: int | None):
        self.seconds = seconds
        self.memory_mb = memory_mb
        self.deadline = time.monotonic() + seconds if seconds else None
        self.exceeded: str | None = None
        self._kernel: _Kernel | None = None  # executing a notebook of this thread now
        self._kill_at: float | None = None  # when an interrupted kernel is killed

    def check_start(self) -> None:
        """``LimitExceeded`` when the time is up before a notebook even starts."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.exceeded = "time"
            raise LimitExceeded(f"the time limit of {self.seconds} s passed before a notebook")

    def attach(self, kernel: _Kernel) -> None:
        """``kernel`` starts executing a notebook of this thread."""
        self._kernel = kernel

    def detach(self, kernel: _Kernel) -> None:
        """``kernel``'s notebook ended: it is no longer this thread's to watch."""
        if self._kernel is kernel:
            self._kernel = None

    def check(self) -> None:
        """Stop the executing kernel if it is over a limit (the watcher, every sample)."""
        kernel = self._kernel
        if kernel is None:
            return
        if self.exceeded is None:
            if self.memory_mb and kernel.resident_bytes() > self.memory_mb * 2**20:
                self._stop(kernel, "memory")
            elif self.deadline is not None and time.monotonic() >= self.deadline:
                self._stop(kernel, "time")
        elif self._kill_at is not None and time.monotonic() >= self._kill_at:
            self._kill_at = None
            kernel.terminate()  # the interrupted cell goes on

    def _stop(self, kernel: _Kernel, reason: str) -> None:
        """Stop the kernel; its notebook fails with an interrupted cell or a dead kernel."""
        self.exceeded = reason
        kernel.condemned = True  # whatever it left, it is not kept for another notebook
        _log.warning("notebook over its %s limit: stopping its kernel", reason)
        if reason == "time":
            # An interrupted cell shows, in the partial notebook, where the time went;
            # nbclient's clean-up then closes the kernel, or the watcher kills it.
            kernel.interrupt()
            self._kill_at = time.monotonic() + INTERRUPT_GRACE_SECONDS
        else:
            kernel.terminate()


@contextlib.contextmanager
def limited(seconds: float | None = None, memory_mb: int | None = None) -> Iterator[Limits]:
    """Limit the notebooks this thread executes within the block: ``seconds`` in all from
    now (the whole notebook, not each cell) and ``memory_mb`` of resident memory (the kernel
    process and its children, the libraries it has loaded included).

    Over a limit the kernel is stopped (interrupted, then killed if it goes on, when out of
    time; killed when over memory), its notebook fails and the kernel is never kept; the
    yielded ``Limits.exceeded`` says which limit it was. One watcher thread per process
    checks every ``SAMPLE_SECONDS``. Resident memory is sampled, not capped: an
    address-space cap (``setrlimit``) would count the virtual memory that BLAS, Arrow and
    the Python allocators reserve but never touch.
    """
    global _watcher
    limits = Limits(seconds, memory_mb)
    thread = threading.get_ident()
    with _lock:
        _limits[thread] = limits
        if _watcher is None:
            _watcher = threading.Thread(target=_watch, name="toolkit-limits", daemon=True)
            _watcher.start()
    try:
        yield limits
    finally:
        with _lock:
            _limits.pop(thread, None)


def _watch() -> None:
    while True:
        time.sleep(SAMPLE_SECONDS)
        with _lock:
            watched = list(_limits.values())
        for limits in watched:
            try:
                limits.check()
            except Exception:  # the watcher must outlive any one kernel's trouble
                _log.exception("checking a notebook's limits")


def _limits_of_this_thread() -> Limits | None:
    with _lock:
        return _limits.get(threading.get_ident())


class KeptClient(AsyncKernelClient):
    """A kernel client that stays connected while its kernel is kept for the next notebook.

    nbclient connects a new client and waits for IOPub to fall silent for each notebook
    each time; a kept kernel's client is connected and known ready already.
    """

    kept = False

    def start_channels(self, *args, **kwargs) -> None:
        if not self.channels_running:
            super().start_channels(*args, **kwargs)

    def stop_channels(self) -> None:
        if not self.kept:
            super().stop_channels()

    async def wait_for_ready(self, timeout: float | None = None) -> None:
        if not self.kept:
            await super().wait_for_ready(timeout=timeout)


class _Kernel:
    """One kernel process with its manager and its (kept) client."""

    def __init__(self, manager: AsyncKernelManager, folder: str | None):
        self.manager = manager
        self.folder = folder
        self.client: KeptClient | None = None
        self.thread = threading.get_ident()
        self.own_env: dict[str, str] = {}  # what the kernel adds to its environment itself
        self.pid: int | None = None  # the process that runs the code, as it said itself
        self.condemned = False  # stopped over a limit: never kept

    @classmethod
    async def start(cls, kernel_name: str, **start_args) -> _Kernel:
        # Sockets and connection file in one private folder named after this process, so
        # the next process can tell what a killed one left behind.
        folder = str(tempdirs.make("kernel", short=True))
        options: dict = {
            "kernel_name": kernel_name,
            "client_class": f"{__name__}.KeptClient",
            "connection_file": os.path.join(folder, "kernel.json"),
        }
        if os.name == "posix":
            options.update(transport="ipc", ip=os.path.join(folder, "kernel"))
        kernel = cls(AsyncKernelManager(**options), folder)
        launched_with = kernel_environment()
        try:
            await kernel.manager.start_kernel(env=launched_with, **start_args)
            kernel.client = kernel.manager.client()
            kernel.client.start_channels()
            await kernel.client.wait_for_ready(timeout=STARTUP_SECONDS)
            kernel.client.kept = True  # ready: nbclient need not wait for it again
            expressions = {
                "env": "dict(__import__('os').environ)",
                "pid": "__import__('os').getpid()",
            }
            reply = await kernel._request("", STARTUP_SECONDS, expressions)
            if reply is None:
                raise RuntimeError(f"kernel {kernel_name!r} did not answer once started")
            found = {
                name: ast.literal_eval(value["data"]["text/plain"])
                for name, value in reply["content"]["user_expressions"].items()
            }
            kernel.own_env = {k: v for k, v in found["env"].items() if k not in launched_with}
            kernel.pid = found["pid"]
        except BaseException:
            await kernel.close()
            raise
        return kernel

    async def reset(self, cwd: str) -> bool:
        """Make the kernel look freshly started in ``cwd``; False if it did not answer."""
        env = {**self.own_env, **kernel_environment()}  # the launcher's values win
        code = "\n".join(
            [
                "import os as _os",
                f"_os.chdir({cwd!r})",
                f"_env = {env!r}",
                "for _name in [_n for _n in _os.environ if _n not in _env]:",
                "    del _os.environ[_name]",
                "_os.environ.update(_env)",
                "get_ipython().reset(new_session=True)",
                "__import__('gc').collect()",
            ]
        )
        reply = await self._request(code, RESET_SECONDS)
        return reply is not None and reply["content"].get("status") == "ok"

    async def quiet(self) -> bool:
        """Whether the kernel answers at once: nothing of the last notebook still runs."""
        return await self._request("", QUIET_SECONDS) is not None

    async def _request(
        self, code: str, timeout: float, expressions: dict | None = None
    ) -> dict | None:
        client = self.client
        msg_id = client.execute(
            code, silent=not expressions, store_history=False, user_expressions=expressions
        )
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                reply = await client.get_shell_msg(timeout=left)
            except Exception:  # queue.Empty on timeout, or the kernel went away
                return None
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply
        return None

    async def alive(self) -> bool:
        return await self.manager.is_alive()

    def resident_bytes(self) -> int:
        """Resident memory of the kernel process and its children (0 once it is gone)."""
        try:
            process = psutil.Process(self.pid)
            family = [process, *process.children(recursive=True)]
        except (psutil.Error, ValueError):  # gone, or no pid yet
            return 0
        total = 0
        for member in family:
            with contextlib.suppress(psutil.Error):  # a child that ended meanwhile
                total += member.memory_info().rss
        return total

    async def close(self) -> None:
        """Kill the process now, disconnect, remove its sockets and connection file."""
        if self.client is not None:
            self.client.kept = False
            self.client.stop_channels()
        try:
            if self.manager.has_kernel:
                await self.manager.shutdown_kernel(now=True)
        except Exception as exc:  # already gone: nothing left to stop
            _log.debug("kernel shutdown: %s", exc)
        finally:
            await self.manager.cleanup_resources()
            if self.folder:
                shutil.rmtree(self.folder, ignore_errors=True)

    def interrupt(self) -> None:
        """Interrupt the running cell, from any thread."""
        try:
            run_sync(self.manager.interrupt_kernel)()
        except Exception as exc:  # already gone
            _log.debug("kernel interrupt: %s", exc)

    def terminate(self) -> None:
        """Kill the process from any thread and remove its sockets and connection file; its
        client stays for its own thread to close (the process may end before it does)."""
        try:
            run_sync(self.manager.shutdown_kernel)(now=True)
        except Exception as exc:  # already gone
            _log.debug("kernel terminate: %s", exc)
        finally:
            if self.folder:
                shutil.rmtree(self.folder, ignore_errors=True)


class ReusedKernelManager(AsyncKernelManager):
    """nbclient's kernel manager for one notebook, backed by a kernel kept in this process.

    nbclient starts, connects to and shuts down "its" kernel through these methods; they
    hand it a reset idle kernel of this thread when there is one, and give the kernel back
    for the next notebook when the notebook ends and the kernel is quiet.
    """

    kernel: _Kernel | None = None
    interrupted = False

    @property
    def has_kernel(self) -> bool:
        return self.kernel is not None

    async def start_kernel(self, **kwargs) -> None:
        global _atexit_registered
        cwd = kwargs.get("cwd") or os.getcwd()
        limits = _limits_of_this_thread()
        if limits is not None:
            limits.check_start()  # before a kernel is taken: nbclient cleans up no failed start
        kernel = _take_idle(self.kernel_name)
        if kernel is not None and (
            kernel.condemned or not (await kernel.alive() and await kernel.reset(cwd))
        ):
            _log.info("kept kernel stopped or did not reset: starting a new one")
            await kernel.close()
            with _lock:
                _busy.discard(kernel)
            kernel = None
        if kernel is None:
            kernel = await _Kernel.start(self.kernel_name, **kwargs)
            _log.info("kernel %s started in %s", self.kernel_name, kernel.folder)
        else:
            _log.info("kept kernel %s reset for the next notebook", self.kernel_name)
        with _lock:
            _busy.add(kernel)
            if not _atexit_registered:
                atexit.register(shutdown_all)
                _atexit_registered = True
        self.kernel = kernel
        if limits is not None:
            limits.attach(kernel)

    def client(self, **kwargs) -> KeptClient:
        return self.kernel.client

    async def is_alive(self) -> bool:
        return self.kernel is not None and await self.kernel.alive()

    async def interrupt_kernel(self) -> None:
        self.interrupted = True  # a cell was cut short: whatever it left, the kernel goes
        if self.kernel is not None:
            await self.kernel.manager.interrupt_kernel()

    async def shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:
        kernel, self.kernel = self.kernel, None
        if kernel is None:
            return
        _end_notebook(kernel)
        keep = _reuse and not (self.interrupted or kernel.condemned) and kernel.client is not None
        if keep and await kernel.quiet():
            kernel.client.kept = True
            for old in _release(kernel):
                await old.close()
        else:
            _log.info("kernel closed: its notebook was interrupted or it did not answer")
            await kernel.close()

    async def cleanup_resources(self, restart: bool = False) -> None:
        # nbclient skips shutdown_kernel when the kernel died: drop what it left.
        if self.kernel is not None:
            kernel, self.kernel = self.kernel, None
            _end_notebook(kernel)
            await kernel.close()


def _end_notebook(kernel: _Kernel) -> None:
    """``kernel``'s notebook ended: it is no longer busy, nor watched."""
    with _lock:
        _busy.discard(kernel)
        limits = _limits.get(kernel.thread)
    if limits is not None:
        limits.detach(kernel)


def _take_idle(kernel_name: str) -> _Kernel | None:
    if not _reuse:
        return None
    thread = threading.get_ident()
    with _lock:
        for kernel in _idle:
            if kernel.thread == thread and kernel.manager.kernel_name == kernel_name:
                # Busy from the moment it leaves the idle list, so shutdown_all sees it.
                _idle.remove(kernel)
                _busy.add(kernel)
                return kernel
    return None


def _release(kernel: _Kernel) -> list[_Kernel]:
    """Keep ``kernel`` idle; the oldest idle kernels beyond ``MAX_IDLE``, to close."""
    with _lock:
        _idle.append(kernel)
        surplus = _idle[:-MAX_IDLE] if len(_idle) > MAX_IDLE else []
        del _idle[: len(surplus)]
    return surplus
