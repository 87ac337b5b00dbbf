"""Private temporary folders named after the process that owns them.

A command removes its folders when it ends; a process killed before it could leaves them,
and the next process that makes one of the same kind removes those whose owner is gone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["make", "owner_exists"]

_swept: set[tuple[str, str]] = set()


def make(kind: str, base: str | None = None) -> Path:
    """A new private folder ``toolkit-<kind>-<pid>-<random>`` in ``base`` (default TMPDIR)."""
    base = base or tempfile.gettempdir()
    if (kind, base) not in _swept:
        _swept.add((kind, base))
        for path in Path(base).glob(f"toolkit-{kind}-*-*"):
            owner = path.name[len(f"toolkit-{kind}-") :].split("-")[0]
            if owner.isdigit() and not owner_exists(int(owner)):
                shutil.rmtree(path, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"toolkit-{kind}-{os.getpid()}-", dir=base))


def owner_exists(pid: int) -> bool:
    """Whether process ``pid`` still runs (another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
