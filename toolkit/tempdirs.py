"""Private temporary folders named after the process that owns them.

A command removes its folders when it ends, whatever way it ends; a process killed before
it could (``kill -9``, the OOM killer) leaves them. The next process that makes a folder,
or starts a run (``sweep``), removes every toolkit folder whose owner is gone: run
workspaces and kernel folders (sockets and connection file) alike.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

__all__ = ["make", "owner_exists", "sweep"]

# A Unix socket path must fit in about 100 bytes: a deeper TMPDIR leaves a kernel's
# sockets no room, so their folders go to /tmp instead.
_SHORT_BASE_LIMIT = 60
_NAME = re.compile(r"^toolkit-[a-z]+-(\d+)-")

_swept: set[str] = set()


def make(kind: str, *, short: bool = False) -> Path:
    """A new private folder ``toolkit-<kind>-<pid>-<random>`` in TMPDIR.

    ``short``: for Unix sockets, in /tmp when TMPDIR's path is too long for them.
    """
    base = _short_base() if short else tempfile.gettempdir()
    if base not in _swept:
        _sweep(base)
    return Path(tempfile.mkdtemp(prefix=f"toolkit-{kind}-{os.getpid()}-", dir=base))


def sweep() -> list[Path]:
    """Remove the toolkit folders, of any kind, that processes now gone left behind;
    the folders removed."""
    bases = dict.fromkeys((tempfile.gettempdir(), _short_base()))  # once each, in order
    return [path for base in bases for path in _sweep(base)]


def owner_exists(pid: int) -> bool:
    """Whether process ``pid`` still runs (another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _short_base() -> str:
    base = tempfile.gettempdir()
    return base if len(base) <= _SHORT_BASE_LIMIT else "/tmp"  # noqa: S108


def _sweep(base: str) -> list[Path]:
    _swept.add(base)
    removed = []
    for path in Path(base).glob("toolkit-*-*-*"):
        owner = _NAME.match(path.name)
        if owner and int(owner.group(1)) != os.getpid() and not owner_exists(int(owner.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
