"""One Jupyter kernel per run, reused from step to step: a papermill engine.

papermill starts a fresh kernel for every notebook, and every kernel then imports pandas,
pyarrow, pandera and statsmodels again: seconds per step that running the same code by
hand never pays. This engine keeps a run's kernel alive between its steps and, before
each further notebook, resets what a fresh kernel would not have: the user namespace
(IPython's ``reset``, so execution counts restart at 1), the working directory and the
environment variables, which are made equal to the launcher's at that moment. Imported
modules stay imported; that is the saving. The connected client is kept as well (a new
client's readiness check waits for 0.2 s of silence on IOPub, per notebook). The
executed notebook is written as before and stays the record of the step.

Isolation rules, so that sharing a kernel cannot change a result:

* a kernel serves one run (its ``kernel_key``) and one thread; it is never shared between
  runs, so one run's module state cannot reach another run;
* after a notebook that did not finish cleanly (a cell error, a timeout, a dead kernel,
  an interrupt or cancel) the kernel is killed, not reused: whatever the failure left
  behind (a hung cell, a half-set global) dies with it;
* at most ``MAX_IDLE`` idle kernels are kept per process (oldest killed first), and
  ``shutdown(key)`` kills a run's kernels when the run ends;
* a run's first kernel may be a spare that an earlier run left (``toolkit.spare_kernels``):
  it has only imported modules, and is reset before the first notebook like any other.

``execution.kernel: fresh`` in the config turns reuse off: papermill's own engine, one
kernel per notebook.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import logging
import os
import queue
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jupyter_core.utils import run_sync

from toolkit import spare_kernels

_log = logging.getLogger(__name__)

__all__ = [
    "ENGINE_NAME",
    "MAX_IDLE",
    "idle_kernels",
    "imported_modules",
    "prestart",
    "register_engine",
    "shutdown",
]

ENGINE_NAME = "toolkit-reuse"
MAX_IDLE = 2
WARM_UP_TIMEOUT = 300  # seconds for a prestarted kernel to boot and import its modules
IOPUB_GRACE = 5  # seconds after the warm-up's reply for its "idle" status to arrive


@dataclass(eq=False)
class _Kernel:
    key: str
    kernel_name: str
    thread: int
    manager: object  # jupyter_client AsyncKernelManager, started by nbclient on first use
    env_at_start: dict[str, str] = field(default_factory=dict)
    notebooks: int = 0
    warm_up: tuple | None = None  # (client, msg id) of a prestart's imports, until done
    # A connected client known to receive the kernel's outputs, kept between notebooks:
    # nbclient's readiness check of a new client waits for 0.2 s of silence on IOPub.
    client: object | None = None
    # What the spare left for the next run imports, once this kernel is ready (a spare
    # booting beside this one would slow it down).
    spare_modules: list[str] = field(default_factory=list)

    def finish_warm_up(self) -> bool:
        """Wait for the prestart's imports (or a spare's answer to its claim); False if the
        kernel never answered, or a spare refused (a module it imported changed on disk).

        The prestart's client is kept for the notebooks when the kernel's "idle" status
        for the imports reached it too: its IOPub channel is then known to be connected.
        """
        if self.warm_up is None:
            return True
        client, msg_id = self.warm_up
        self.warm_up = None
        deadline = time.monotonic() + WARM_UP_TIMEOUT
        try:
            reply = _wait_for(client.get_shell_msg, _reply_to(msg_id), deadline, self.alive)
            if reply is None or not _claim_granted(reply):
                return False
            idle_seen = _wait_for(
                client.get_iopub_msg,
                _idle_after(msg_id),
                min(deadline, time.monotonic() + IOPUB_GRACE),
                self.alive,
            )
            if idle_seen is not None:
                self.client, client = client, None
            return True
        finally:
            if client is not None:
                client.stop_channels()

    def alive(self) -> bool:
        process = getattr(getattr(self.manager, "provisioner", None), "process", None)
        return process is not None and process.poll() is None

    def kill(self) -> None:
        """Kill the kernel process and remove its connection file, from any thread.

        No event loop is involved (the manager's async API is bound to the loop of the
        thread that started it), so this also works at interpreter exit.
        """
        if self.warm_up is not None:  # killed before it was used
            with contextlib.suppress(Exception):
                self.warm_up[0].stop_channels()
            self.warm_up = None
        self.drop_client()
        process = getattr(getattr(self.manager, "provisioner", None), "process", None)
        if process is not None and process.poll() is None:
            process.kill()
            with contextlib.suppress(Exception):  # a zombie is reaped at exit
                process.wait(timeout=10)
        with contextlib.suppress(Exception):  # best effort: the files are in temp folders
            self.manager.cleanup_connection_file()
        with contextlib.suppress(Exception):
            _remove_sockets(self.manager)

    def drop_client(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):  # the kernel may be gone already
                self.client.stop_channels()
            self.client = None


def _wait_for(receive, matches, deadline: float, alive) -> dict | None:
    """Read messages from one channel until one ``matches`` and return it; None at the
    deadline or when the kernel dies. Reads in short waits, so that a kernel dying is
    noticed at once."""
    while time.monotonic() < deadline and alive():
        try:
            message = run_sync(receive)(timeout=min(1.0, max(0.01, deadline - time.monotonic())))
        except queue.Empty:
            continue
        if matches(message):
            return message
    return None


def _reply_to(msg_id: str):
    return lambda message: message["parent_header"].get("msg_id") == msg_id


def _idle_after(msg_id: str):
    return lambda message: (
        message["parent_header"].get("msg_id") == msg_id
        and message["msg_type"] == "status"
        and message["content"].get("execution_state") == "idle"
    )


class _Pool:
    def __init__(self, max_idle: int = MAX_IDLE):
        self.max_idle = max_idle
        self._idle: list[_Kernel] = []
        self._lock = threading.Lock()

    def acquire(self, key: str, kernel_name: str, new_manager) -> _Kernel:
        thread = threading.get_ident()
        with self._lock:
            for kernel in self._idle:
                if (kernel.key, kernel.kernel_name, kernel.thread) == (key, kernel_name, thread):
                    self._idle.remove(kernel)
                    break
            else:
                kernel = None
        if kernel is None:
            kernel = _adopt_spare(key, kernel_name)
        if kernel is not None and kernel.finish_warm_up() and kernel.alive():
            if kernel.spare_modules:
                spare_kernels.spawn(kernel_name, kernel.spare_modules, _socket_dir())
                kernel.spare_modules = []
            return kernel
        if kernel is not None:
            kernel.kill()
        return _Kernel(key, kernel_name, thread, new_manager(), dict(os.environ))

    def has(self, key: str, kernel_name: str) -> bool:
        thread = threading.get_ident()
        with self._lock:
            return any(
                (k.key, k.kernel_name, k.thread) == (key, kernel_name, thread) for k in self._idle
            )

    def release(self, kernel: _Kernel, reusable: bool) -> None:
        if not (reusable and kernel.alive()):
            kernel.kill()
            return
        with self._lock:
            self._idle.append(kernel)
            surplus = self._idle[: max(0, len(self._idle) - self.max_idle)]
            del self._idle[: len(surplus)]
        for old in surplus:
            old.kill()

    def shutdown(self, key: str | None = None) -> None:
        with self._lock:
            doomed = [k for k in self._idle if key is None or k.key == key]
            self._idle = [k for k in self._idle if k not in doomed]
        for kernel in doomed:
            kernel.kill()

    def idle(self) -> list[tuple[str, int]]:
        with self._lock:
            return [(k.key, k.notebooks) for k in self._idle]


_POOL = _Pool()
atexit.register(_POOL.shutdown)


def shutdown(key: str | None = None) -> None:
    """Kill the idle kernels of run ``key`` (all runs if ``None``) in this process."""
    _POOL.shutdown(key)


def idle_kernels() -> list[tuple[str, int]]:
    """(run key, notebooks executed) of each idle kernel kept in this process."""
    return _POOL.idle()


def prestart(
    key: str,
    source: str | Path,
    kernel_name: str = "python3",
    spare_sources: Sequence[str | Path] = (),
) -> None:
    """Start run ``key``'s kernel now and have it import what notebook ``source`` imports.

    Returns at once, unless this thread keeps a kernel for ``key`` already (then it does
    nothing): the kernel boots and imports on another core while the launcher goes on
    (importing Ploomber, fetching upstream products, rendering the notebook). The imports
    bind no names, and the namespace is reset before the notebook runs anyway.

    A spare kernel left by an earlier run for this one (``toolkit.spare_kernels``) is
    adopted instead when there is one. Where spares are enabled, this process then leaves
    one for the next run, importing what the notebooks ``spare_sources`` import.
    """
    if _POOL.has(key, kernel_name):
        return
    # Read only where a spare is still to be left (not on Dask workers, say).
    spare_modules = _modules_of(spare_sources) if spare_kernels.will_spawn() else []
    adopted = _adopt_spare(key, kernel_name)
    if adopted is not None:
        _POOL.release(adopted, reusable=True)
        spare_kernels.spawn(kernel_name, spare_modules, _socket_dir())
        return
    manager = _new_manager(kernel_name)
    kernel = _Kernel(key, kernel_name, threading.get_ident(), manager, dict(os.environ))
    kernel.spare_modules = spare_modules
    try:
        modules = imported_modules(Path(source).read_text(encoding="utf-8"))
        run_sync(manager.start_kernel)()
        client = manager.client()
        client.allow_stdin = False  # as nbclient sets its own clients
        client.start_channels()
        # Sent now, queued by ZeroMQ until the kernel listens.
        msg_id = client.execute(
            warm_up_code(modules), silent=True, store_history=False, allow_stdin=False
        )
    except Exception:  # noqa: BLE001 - only a head start: the engine starts a kernel itself
        kernel.kill()  # and reports what is wrong (a missing kernel spec, say) in the step
        return
    kernel.warm_up = (client, msg_id)
    _POOL.release(kernel, reusable=True)


def _modules_of(sources: Sequence[str | Path]) -> list[str]:
    modules: list[str] = []
    for source in sources:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            text = Path(source).read_text(encoding="utf-8")
            modules += [m for m in imported_modules(text) if m not in modules]
    return modules


def _adopt_spare(key: str, kernel_name: str) -> _Kernel | None:
    """A spare kernel claimed for run ``key`` (checked by ``finish_warm_up``), or None."""
    while (info := spare_kernels.claim_next(kernel_name)) is not None:
        kernel = _connect_spare(key, kernel_name, info)
        if kernel is not None:
            return kernel
    return None


def _connect_spare(key: str, kernel_name: str, info: dict) -> _Kernel | None:
    """Connect to a claimed spare and send it the claim, whose answer ``finish_warm_up``
    reads: meanwhile this process goes on (a spare may still be importing)."""
    from jupyter_client import AsyncKernelManager
    from jupyter_client.provisioning import LocalProvisioner

    folder = Path(info["folder"])
    manager = AsyncKernelManager(
        kernel_name=kernel_name,
        transport="ipc",
        ip=str(folder / "kernel"),
        connection_file=str(folder / "kernel.json"),
    )
    kernel = _Kernel(key, kernel_name, threading.get_ident(), manager, dict(os.environ))
    try:
        manager.load_connection_file()
        process = spare_kernels.ForeignProcess(int(info["pid"]))
        manager.provisioner = LocalProvisioner(
            kernel_id=manager.kernel_id, kernel_spec=manager.kernel_spec, parent=manager
        )
        manager.provisioner.process, manager.provisioner.pid = process, process.pid
        client = manager.client()
        client.allow_stdin = False  # as nbclient sets its own clients
        client.start_channels()
        msg_id = client.execute(
            "",
            silent=True,
            store_history=False,
            allow_stdin=False,
            user_expressions={
                "fresh": f"__import__('toolkit.spare_kernels').spare_kernels.claim({os.getpid()})"
            },
        )
    except Exception as exc:  # noqa: BLE001 - only a head start: start a kernel instead
        _log.warning("could not adopt the spare kernel %s: %s", info.get("pid"), exc)
        spare_kernels.discard(info, kill=False)
        return None
    kernel.warm_up = (client, msg_id)
    return kernel


def _claim_granted(reply: dict) -> bool:
    """A spare's claim reply says "True" (a prestart's warm-up reply has no claim)."""
    answers = reply.get("content", {}).get("user_expressions") or {}
    return "fresh" not in answers or answers["fresh"].get("data", {}).get("text/plain") == "True"


def imported_modules(source: str) -> list[str]:
    """Modules a notebook's code may import: ``import a.b`` gives ``a.b``; ``from c import
    d, e`` gives ``c``, ``c.d`` and ``c.e`` (``d`` and ``e`` may be submodules)."""
    modules: list[str] = []
    for match in _IMPORT.finditer(source):
        package, names = match.group("package"), match.group("names")
        if package:
            candidates = [package] + [f"{package}.{n}" for n in _names(match.group("members"))]
        else:
            candidates = _names(names)
        for module in candidates:
            if not module.startswith(".") and module not in modules:
                modules.append(module)
    return modules


_IMPORT = re.compile(
    r"^[ \t]*(?:from[ \t]+(?P<package>[\w.]+)[ \t]+import[ \t]+\(?(?P<members>[\w, \t]+)"
    r"|import[ \t]+(?P<names>[\w., \t]+))",
    re.M,
)


def _names(text: str) -> list[str]:
    return [n.split(" as ")[0].strip() for n in text.split(",") if n.split(" as ")[0].strip()]


def warm_up_code(modules: list[str]) -> str:
    # A failing import is left for the notebook to report, in its own cell.
    return "\n".join(
        [
            f"for _toolkit_module in {modules!r}:",
            "    try:",
            "        __import__(_toolkit_module)",
            "    except Exception:",
            "        pass",
            "del _toolkit_module",
            # What is loaded now stays for the kernel's life: later collections (one
            # before each further notebook) need not walk it again.
            "__import__('gc').collect()",
            "__import__('gc').freeze()",
        ]
    )


def _new_manager(kernel_name: str):
    from jupyter_client import AsyncKernelManager

    if os.name != "posix":
        return AsyncKernelManager(kernel_name=kernel_name)
    # Unix sockets in a private folder, not TCP ports on localhost: no port to race other
    # kernels for, and ipykernel does not warn about unencrypted TCP in every run's output.
    folder = tempfile.mkdtemp(prefix="toolkit-kernel-", dir=_socket_dir())
    return AsyncKernelManager(
        kernel_name=kernel_name, transport="ipc", ip=os.path.join(folder, "kernel")
    )


def _socket_dir() -> str | None:
    # A Unix socket path must fit in about 100 bytes; a deep TMPDIR would not leave room.
    return None if len(tempfile.gettempdir()) <= 60 else "/tmp"  # noqa: S108


def _remove_sockets(manager) -> None:
    if getattr(manager, "transport", "tcp") == "ipc":
        manager.cleanup_ipc_files()
        # The kernel's private folder (a spare's also holds its connection file).
        shutil.rmtree(os.path.dirname(manager.ip), ignore_errors=True)


def _reset_code(env_at_start: dict[str, str]) -> str:
    """Code that makes a used kernel look like a fresh one started now."""
    env = dict(os.environ)
    gone = sorted(set(env_at_start) - set(env))
    return "\n".join(
        [
            "import os as _os",
            f"_os.chdir({os.getcwd()!r})",
            f"for _name in {gone!r}:",
            "    _os.environ.pop(_name, None)",
            f"_os.environ.update({json.dumps(env)})",
            "get_ipython().reset(new_session=True)",
            "__import__('gc').collect()",
        ]
    )


@contextlib.contextmanager
def _engines_loaded_on_use():
    """Import papermill without loading every installed engine at once.

    papermill loads all ``papermill.engine`` entry points when imported; ploomber-engine's
    pull in matplotlib.pyplot (0.4 s of every run's launcher, for engines it never uses).
    They stay registered, and each loads when papermill is first asked for it.
    """
    if "papermill.engines" in sys.modules:
        yield
        return
    import entrypoints

    find_all = entrypoints.get_group_all
    deferred: dict[str, object] = {}

    def defer_engines(group, path=None):
        found = find_all(group, path)
        if group != "papermill.engine":
            return found
        deferred.update((entry.name, entry) for entry in found)
        return []

    entrypoints.get_group_all = defer_engines
    try:
        yield
    finally:
        entrypoints.get_group_all = find_all
    engines = sys.modules.get("papermill.engines")
    if engines is not None and deferred:
        registry = engines.papermill_engines
        registry._engines = _EnginesLoadedOnUse(registry._engines, deferred)


class _EnginesLoadedOnUse(dict):
    """papermill's engine registry (``PapermillEngines._engines``, which papermill reads
    with ``get``), loading an entry point's engine the first time it is asked for."""

    def __init__(self, registered: dict, deferred: dict):
        super().__init__(registered)
        self._deferred = deferred

    def get(self, name, default=None):
        entry = self._deferred.pop(name, None)
        if entry is not None:  # as at import, an entry point overrides a built-in name
            self[name] = entry.load()
        return super().get(name, default)


@functools.cache
def register_engine() -> str:
    """Register the engine with papermill (importing papermill: a second) and name it.

    Kept out of import time so that ``prestart`` can launch the kernel first.
    """
    with _engines_loaded_on_use():
        from papermill.clientwrap import PapermillNotebookClient
        from papermill.engines import NBClientEngine, papermill_engines
    from papermill.log import logger
    from papermill.utils import merge_kwargs, remove_args

    class _ResettingClient(PapermillNotebookClient):
        """Runs the reset code, silently and outside the notebook, before the first cell."""

        def __init__(self, nb_man, reset_code: str | None = None, **kwargs):
            super().__init__(nb_man, **kwargs)
            self.reset_code = reset_code

        def papermill_execute_cells(self):
            if self.reset_code:
                msg_id = self.kc.execute(
                    self.reset_code, silent=True, store_history=False, allow_stdin=False
                )
                reply = self.wait_for_reply(msg_id)
                content = (reply or {}).get("content", {})
                if content.get("status") != "ok":
                    raise RuntimeError(
                        "could not reset the reused kernel before this notebook: "
                        f"{content.get('ename')}: {content.get('evalue')}"
                    )
            super().papermill_execute_cells()

    class ReusedKernelEngine(NBClientEngine):
        """papermill's nbclient engine, with the kernel kept per ``kernel_key`` (the run id)."""

        @classmethod
        def execute_managed_notebook(
            cls,
            nb_man,
            kernel_name,
            log_output=False,
            stdout_file=None,
            stderr_file=None,
            start_timeout=60,
            execution_timeout=None,
            kernel_key="",
            **kwargs,
        ):
            # The same argument handling as NBClientEngine.execute_managed_notebook.
            kwargs = remove_args(["input_path"], **kwargs)
            safe_kwargs = remove_args(["timeout", "startup_timeout"], **kwargs)
            final_kwargs = merge_kwargs(
                safe_kwargs,
                timeout=execution_timeout if execution_timeout else kwargs.get("timeout"),
                startup_timeout=start_timeout,
                kernel_name=kernel_name,
                log=logger,
                log_output=log_output,
                stdout_file=stdout_file,
                stderr_file=stderr_file,
            )
            kernel = _POOL.acquire(str(kernel_key), kernel_name, lambda: _new_manager(kernel_name))
            # A kernel started before this notebook (by an earlier one, or a prestart) is reset.
            reset_code = _reset_code(kernel.env_at_start) if kernel.manager.has_kernel else None
            client = _ResettingClient(
                nb_man, km=kernel.manager, reset_code=reset_code, **final_kwargs
            )
            # nbclient makes (and checks) a client of its own only when given none.
            client.kc, kernel.client = kernel.client, None
            clean = False
            try:
                nb = client.execute()
                clean = not nb.metadata.get("papermill", {}).get("exception")
                return nb
            finally:
                kernel.notebooks += 1
                # Kept for the next notebook; nbclient's checks made it ready if it is new.
                kernel.client, client.kc = client.kc, None
                if not clean:
                    kernel.drop_client()
                _POOL.release(kernel, reusable=clean)

    papermill_engines.register(ENGINE_NAME, ReusedKernelEngine)
    return ENGINE_NAME
