"""Helpers shared by the tests (fixtures live in conftest.py): the project, and the
`toolkit` command run as a user runs it, in a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TOOLKIT = [sys.executable, "-m", "toolkit.cli.commands"]


def toolkit_env(root, **extra) -> dict[str, str]:
    """The environment of a `toolkit` process on storage root ``root``: beats every second,
    no Dask scheduler unless the test names one."""
    env = dict(os.environ, TOOLKIT_ROOT=str(root), TOOLKIT_HEARTBEAT_SECONDS="1")
    env.update(extra)
    if "DASK_SCHEDULER_ADDRESS" not in extra:
        env.pop("DASK_SCHEDULER_ADDRESS", None)
    return env


def run(args, env, cwd=PROJECT_DIR, check=True, timeout=900) -> subprocess.CompletedProcess:
    """Run a command; with ``check``, a failure shows the end of its output."""
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def toolkit(args, env, check=True, cwd=PROJECT_DIR, timeout=1500) -> subprocess.CompletedProcess:
    """`toolkit ARGS` in a process of its own, from the project folder by default."""
    return run([*TOOLKIT, *args], env, cwd=cwd, check=check, timeout=timeout)
