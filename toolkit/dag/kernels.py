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
  to race other kernels for, no "running over TCP without encryption" warning.

``execution.kernel: fresh`` (``reuse(False)``) gives each notebook a kernel of its own,
still over IPC.
"""

from __future__ import annotations

import ast
import atexit
import logging
import os
import shutil
import tempfile
import threading
import time

from jupyter_client import AsyncKernelClient, AsyncKernelManager
from jupyter_core.utils import run_sync

from toolkit import tempdirs

__all__ = [
    "MAX_IDLE",
    "KeptClient",
    "ReusedKernelManager",
    "THREAD_VARIABLES",
    "close_idle",
    "kernel_environment",
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

_lock = threading.Lock()
_idle: list[_Kernel] = []
_busy: set[_Kernel] = set()
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

    @classmethod
    async def start(cls, kernel_name: str, **start_args) -> _Kernel:
        # Sockets and connection file in one private folder named after this process, so
        # the next process can tell what a killed one left behind.
        folder = str(tempdirs.make("kernel", _kernels_folder()))
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
            expressions = {"env": "dict(__import__('os').environ)"}
            reply = await kernel._request("", STARTUP_SECONDS, expressions)
            if reply is None:
                raise RuntimeError(f"kernel {kernel_name!r} did not answer once started")
            found = reply["content"]["user_expressions"]["env"]["data"]["text/plain"]
            kernel.own_env = {
                k: v for k, v in ast.literal_eval(found).items() if k not in launched_with
            }
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

    def terminate(self) -> None:
        """Kill the process from any thread; its client stays for its own thread to close."""
        try:
            run_sync(self.manager.shutdown_kernel)(now=True)
        except Exception as exc:  # already gone
            _log.debug("kernel terminate: %s", exc)


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
        kernel = _take_idle(self.kernel_name)
        if kernel is not None and not (await kernel.alive() and await kernel.reset(cwd)):
            _log.info("kept kernel did not reset: starting a new one")
            await kernel.close()
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
        with _lock:
            _busy.discard(kernel)
        keep = _reuse and not self.interrupted and kernel.client is not None
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
            with _lock:
                _busy.discard(kernel)
            await kernel.close()


def _kernels_folder() -> str | None:
    # A Unix socket path must fit in about 100 bytes: a deep TMPDIR leaves no room.
    return None if len(tempfile.gettempdir()) <= 60 else "/tmp"  # noqa: S108


def _take_idle(kernel_name: str) -> _Kernel | None:
    if not _reuse:
        return None
    thread = threading.get_ident()
    with _lock:
        for kernel in _idle:
            if kernel.thread == thread and kernel.manager.kernel_name == kernel_name:
                _idle.remove(kernel)
                return kernel
    return None


def _release(kernel: _Kernel) -> list[_Kernel]:
    """Keep ``kernel`` idle; the oldest idle kernels beyond ``MAX_IDLE``, to close."""
    with _lock:
        _idle.append(kernel)
        surplus = _idle[:-MAX_IDLE] if len(_idle) > MAX_IDLE else []
        del _idle[: len(surplus)]
    return surplus
