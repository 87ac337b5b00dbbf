"""A warmed-up kernel that one ``toolkit run`` leaves for the next.

A run's first notebook waits for a kernel to boot and import the steps' libraries (about
two seconds): most of a business user's "change a weight, see the plan" loop, which
re-executes two short steps. So ``toolkit run`` (serial executor) leaves one spare
kernel behind. The spare boots with the run's interpreter, working directory and
environment, imports every step's libraries, and waits. The next run started the same
way adopts it (``toolkit.kernels``) instead of starting a kernel of its own.

Rules that keep a spare from changing a result:

* it only serves a process with the same fingerprint: interpreter, kernel name, project,
  working directory and environment (shell bookkeeping such as ``$_`` aside);
* it runs no notebook code before adoption, only imports; the adopting run then resets
  it like any reused kernel (namespace, working directory, environment variables);
* a spare with a module whose file changed since it imported it (someone edited
  ``toolkit/`` or upgraded a package) is killed, not adopted;
* one process claims a spare by renaming its registry entry, which only one can do, and
  the spare then exits with that process (a SIGKILLed run leaves no kernel behind);
* an unclaimed spare exits by itself after ``TOOLKIT_SPARE_KERNEL_MINUTES`` (default
  10; ``0`` leaves no spare), removing its files;
* the registry is a folder of the user's own (mode 0700) in the temp folder; it holds
  no secret: a fingerprint is a hash, and the kernel's key stays in its private folder.

Spares need Unix sockets (``toolkit.kernels`` uses them on POSIX); elsewhere there are none.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

__all__ = [
    "DEFAULT_MINUTES",
    "ForeignProcess",
    "claim",
    "claim_next",
    "discard",
    "draw_a_figure",
    "enable",
    "fingerprint",
    "minutes",
    "note_imported_files",
    "registry_folder",
    "spawn",
    "will_spawn",
]

_log = logging.getLogger(__name__)

DEFAULT_MINUTES = 10.0
MINUTES_VARIABLE = "TOOLKIT_SPARE_KERNEL_MINUTES"
# Set by shells per command, directory change or terminal resize; no library reads them
# at import.
_VOLATILE = frozenset({"_", "OLDPWD", "SHLVL", "COLUMNS", "LINES"})
_FOLDER_PREFIX = "toolkit-spare-"

_enabled = False
_spawned = False


def minutes() -> float:
    """How long an unclaimed spare waits, from ``TOOLKIT_SPARE_KERNEL_MINUTES``."""
    text = os.environ.get(MINUTES_VARIABLE, "").strip()
    if not text:
        return DEFAULT_MINUTES
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also refuses nan
        raise ValueError(
            f"{MINUTES_VARIABLE} must be a number of minutes >= 0 (0: no spare kernel), "
            f"got {text!r}"
        )
    return value


def _wanted() -> bool:
    try:
        return minutes() > 0
    except ValueError:  # reported by `toolkit run`; here it only means no spare
        return False


def enable() -> None:
    """Let this process leave a spare when its first kernel is ready (``toolkit run``).

    Raises:
        ValueError: ``TOOLKIT_SPARE_KERNEL_MINUTES`` is not a number >= 0.
    """
    global _enabled
    _enabled = minutes() > 0 and os.name == "posix"


def will_spawn() -> bool:
    """Whether this process is still to leave a spare (enabled, none left yet)."""
    return _enabled and not _spawned


def fingerprint(kernel_name: str) -> str:
    """What a kernel started by this process now would inherit, as a short hash."""
    from toolkit.config import PROJECT_DIR

    env = sorted((k, v) for k, v in os.environ.items() if k not in _VOLATILE)
    text = json.dumps([sys.executable, kernel_name, str(PROJECT_DIR), os.getcwd(), env])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def spawn(kernel_name: str, modules: list[str], socket_dir: str | None) -> None:
    """Leave one spare for the next run, once per process, if enabled and none waits.

    Args:
        kernel_name: The kernel spec the steps use.
        modules: What the spare imports (every step's imports).
        socket_dir: Where its private folder goes (Unix socket paths must stay short).
    """
    global _spawned
    if not will_spawn():
        return
    _spawned = True
    registry = _registry()
    if registry is None:
        return
    mark = fingerprint(kernel_name)
    if any(_alive(_read(entry)) for entry in registry.glob(f"{mark}.*.json")):
        return
    from jupyter_client import KernelManager

    from toolkit import kernels

    folder = Path(tempfile.mkdtemp(prefix=_FOLDER_PREFIX, dir=socket_dir))
    warm_up = folder / "warm_up.py"
    this = "__import__('toolkit.spare_kernels').spare_kernels"
    warm_up.write_text(
        "\n".join(
            [
                _expiry_code(minutes() * 60, folder, registry),
                kernels.warm_up_code(modules),
                f"{this}.draw_a_figure()",
                f"{this}.note_imported_files()",
            ]
        ),
        encoding="utf-8",
    )
    manager = KernelManager(
        kernel_name=kernel_name,
        transport="ipc",
        ip=str(folder / "kernel"),
        connection_file=str(folder / "kernel.json"),
    )
    try:
        manager.start_kernel(
            # Not tied to this process's life (no parent poller) ...
            independent=True,
            extra_arguments=[f"--IPKernelApp.exec_files={warm_up}"],
            # ... nor to its output: a reader of this process's pipes must see them close.
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except Exception as exc:  # noqa: BLE001 - only a head start for the next run
        _log.warning("could not leave a spare kernel: %s", exc)
        shutil.rmtree(folder, ignore_errors=True)
        return
    # The spare outlives this manager, whose finalizer would remove its connection file.
    manager._connection_file_written = False
    pid = manager.provisioner.pid
    info = {"pid": pid, "folder": str(folder), "kernel_name": kernel_name}
    staged = registry / f".{mark}.{pid}.tmp"
    try:
        staged.write_text(json.dumps(info), encoding="utf-8")
        os.replace(staged, registry / f"{mark}.{pid}.json")
    except OSError as exc:  # a full disk, say: a spare nobody can find must not wait
        _log.warning("could not leave a spare kernel: %s", exc)
        staged.unlink(missing_ok=True)
        discard(info, kill=True)


def claim_next(kernel_name: str) -> dict | None:
    """Claim a waiting spare that matches this process: its entry, or None.

    The entry is this process's alone once claimed (renamed away from the registry).
    Entries of kernels that are gone are removed on the way.
    """
    registry = _registry() if _wanted() else None
    if registry is None:
        return None
    mark = fingerprint(kernel_name)
    entries = sorted(registry.glob(f"{mark}.*.json"), key=_mtime, reverse=True)
    for entry in entries:
        claimed = entry.with_name(f".{entry.name}.claimed-{os.getpid()}")
        try:
            os.rename(entry, claimed)
        except OSError:  # another run claimed it first, or it expired
            continue
        info = _read(claimed)
        claimed.unlink(missing_ok=True)
        if info.get("kernel_name") == kernel_name and _alive(info):
            return info
        discard(info, kill=False)
    return None


def discard(info: dict, kill: bool) -> None:
    """Remove a claimed spare's files; ``kill`` once it proved to be our kernel."""
    if kill and _alive(info):
        process = ForeignProcess(int(info["pid"]))
        process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
    folder = Path(str(info.get("folder", "")))
    if folder.name.startswith(_FOLDER_PREFIX) and _owned(folder):
        shutil.rmtree(folder, ignore_errors=True)


class ForeignProcess:
    """Enough of ``subprocess.Popen`` for jupyter_client to manage a kernel that another
    process started: poll, wait, signal and kill it by pid."""

    stdin = stdout = stderr = None

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:  # our own child (spawned by this process): reap it, or it stays a zombie
                done, status = os.waitpid(self.pid, os.WNOHANG)
                if done:
                    self.returncode = os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                if not _running(self.pid):
                    self.returncode = -1
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
            time.sleep(0.02)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def kill(self) -> None:
        import signal

        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        import signal

        self.send_signal(signal.SIGTERM)


def _running(pid: int) -> bool:
    """Another process's child runs (a killed one stays a zombie until its parent reaps it,
    which a container's init may take seconds to do)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or the pid is someone else's now
        return False
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return sys.platform != "linux"
    return stat_line.rpartition(")")[2].split()[:1] != ["Z"]


def _started(pid: int) -> str | None:
    """When process ``pid`` started (its identity, as pids are reused); None if gone."""
    if not _running(pid):
        return None
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return "unknown"  # no /proc: the pid alone


def _exit_with(pid: int, started: str | None) -> None:
    while started is not None and _started(pid) == started:
        time.sleep(1)
    os._exit(0)


# -- In the spare kernel ---------------------------------------------------------------

EXPIRY_THREAD = "toolkit-spare-expiry"
_imported_files: dict[str, tuple[int, int]] = {}


def _expiry_code(seconds: float, folder: Path, registry: Path) -> str:
    """The spare's first warm-up lines: exit after ``seconds`` unless claimed, removing
    its folder and registry entry. Standard library only, so that it expires even if
    nothing else of the warm-up works."""
    return "\n".join(
        [
            "def _toolkit_expire():",
            "    import glob, os, shutil",
            f"    pattern = os.path.join({str(registry)!r}, f'*.{{os.getpid()}}.json')",
            "    for entry in glob.glob(pattern):",
            "        try:",
            "            os.unlink(entry)",
            "        except OSError:",
            "            pass",
            f"    shutil.rmtree({str(folder)!r}, ignore_errors=True)",
            "    os._exit(0)",
            f"_toolkit_timer = __import__('threading').Timer({seconds!r}, _toolkit_expire)",
            f"_toolkit_timer.name, _toolkit_timer.daemon = {EXPIRY_THREAD!r}, True",
            "_toolkit_timer.start()",
            "del _toolkit_timer, _toolkit_expire",
        ]
    )


def draw_a_figure() -> None:
    """Draw one figure off-screen, if matplotlib is installed: a kernel's first figure loads
    fonts and the notebook backend, 0.4 s that a step's first plot would wait for. No
    pyplot figure is made (the notebook's figure numbers still start at 1)."""
    try:
        import io

        import matplotlib.pyplot  # noqa: F401 - sets up the notebook's backend
        from matplotlib.figure import Figure
    except Exception:  # noqa: BLE001 - not installed or broken: the notebook will say
        return
    figure = Figure(figsize=(1, 1))
    axes = figure.add_subplot()
    axes.plot([0, 1])
    axes.bar([0], [1])
    axes.set_title("warm-up")
    figure.savefig(io.BytesIO(), format="png", bbox_inches="tight")


def note_imported_files() -> None:
    """The spare's last warm-up line: what it imported, as found on disk now."""
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path:
            with contextlib.suppress(OSError):
                found = os.stat(path)
                _imported_files[path] = (found.st_mtime_ns, found.st_size)


def claim(adopter: int) -> bool:
    """The adopting process's first request: stop the expiry and exit with the adopter
    instead (a spare has no parent to watch, as a kernel started by its run does); False
    if any module imported during the warm-up changed on disk since (old code)."""
    for thread in threading.enumerate():
        if thread.name == EXPIRY_THREAD:
            thread.cancel()  # a threading.Timer
    threading.Thread(
        target=_exit_with, args=(adopter, _started(adopter)), daemon=True, name="toolkit-adopter"
    ).start()
    if not _imported_files:  # the warm-up did not get to its end
        return False
    for path, (mtime, size) in _imported_files.items():
        try:
            found = os.stat(path)
        except OSError:
            return False
        if (found.st_mtime_ns, found.st_size) != (mtime, size):
            return False
    return True


# -- Registry --------------------------------------------------------------------------


def registry_folder() -> Path:
    """Where waiting spares are listed: one folder per user in the temp folder."""
    return Path(tempfile.gettempdir()) / f"toolkit-spares-{os.getuid()}"


def _registry() -> Path | None:
    """The user's registry folder, or None where it is not safely ours."""
    if os.name != "posix":
        return None
    path = registry_folder()
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        found = os.lstat(path)
    except OSError as exc:
        _log.warning("spare kernels off: %s", exc)
        return None
    if not stat.S_ISDIR(found.st_mode) or not _owned(path) or found.st_mode & 0o077:
        _log.warning("spare kernels off: %s is not a private folder of this user", path)
        return None
    return path


def _owned(path: Path) -> bool:
    try:
        return os.lstat(path).st_uid == os.getuid()
    except OSError:
        return False


def _read(entry: Path) -> dict:
    try:
        info = json.loads(entry.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _mtime(entry: Path) -> float:
    try:
        return entry.stat().st_mtime
    except OSError:
        return 0.0


def _alive(info: dict) -> bool:
    """The entry's kernel still runs, and that pid is still that kernel (not a reuse)."""
    try:
        pid = int(info["pid"])
        folder = str(info["folder"])
    except (KeyError, TypeError, ValueError):
        return False
    if ForeignProcess(pid).poll() is not None:
        return False
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return sys.platform != "linux"  # no /proc to check against: trust the pid
    return folder.encode() in command
