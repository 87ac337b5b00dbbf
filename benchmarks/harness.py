"""Measuring whole processes: wall time, peak memory of the process tree, paired ratios.

Every timing is one whole process (interpreter start, imports, work, exit), started by
``measure``. Comparisons are ratios of two commands timed in the same session, alternated
round by round (A B A B ...), each side summarised by its median after a warm-up round.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "CommandFailed",
    "Row",
    "Sample",
    "measure",
    "median",
    "paired_ratios",
    "run_rounds",
]

POLL_SECONDS = 0.05


class CommandFailed(RuntimeError):
    """A benchmarked command exited non-zero; the message holds the tail of its log."""


@dataclass
class Sample:
    """One timed process."""

    name: str
    seconds: float
    tree_rss_peak: int  # bytes: peak of the summed RSS of the process and its descendants
    max_rss: int  # bytes: the largest single process of the tree (wait4 ru_maxrss)
    cpu: float = 0.0  # user + system seconds of the process and the descendants it waited for
    log: Path | None = None
    leftover: int = 0  # processes of its session still alive after it exited (then killed)


@dataclass
class Row:
    """One line of results.md."""

    id: str
    what: str
    value: str  # the headline figure, e.g. "1.42" or "0.8 s"
    target: str
    verdict: str  # met / missed / reported / pending
    detail: str = ""
    ratio: float | None = None  # for the plot
    target_value: float | None = None
    extra: dict = field(default_factory=dict)


def _tree_rss(root) -> int:
    import psutil

    total = 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


def _running(proc) -> bool:
    import psutil

    try:  # a killed process stays a zombie until its parent reaps it
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _leftovers(session: int) -> list:
    """Processes of the command's session (``start_new_session``) still alive after it."""
    import psutil

    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == session and _running(proc):
                found.append(proc)
        except (OSError, psutil.Error):  # gone meanwhile, or not ours to ask about
            continue
    return found


def measure(
    name: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str | Path,
    log: Path,
) -> Sample:
    """Run ``argv`` to completion; its output goes to ``log``. Raises ``CommandFailed``.

    What counts is the command's own process tree: its memory is the summed RSS of the
    process and its descendants (Jupyter kernels included), polled; its CPU time is its
    own and that of the descendants it waited for (``wait4``). A process of the command's
    session still alive once the command has exited (a kernel it did not stop) is killed,
    by pid, so that it cannot weigh on the next measurement, and counted in ``leftover``.
    """
    import psutil

    log.parent.mkdir(parents=True, exist_ok=True)
    polls: list[int] = []  # the tree's summed RSS, per poll
    done = threading.Event()
    with open(log, "wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen(  # noqa: S603 - our own argv, no shell
            list(argv),
            cwd=str(cwd),
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped whole if we are stopped
        )
        try:
            root = psutil.Process(process.pid)
        except psutil.Error:
            root = None

        def poll() -> None:
            while not done.is_set() and root is not None:
                polls.append(_tree_rss(root))
                done.wait(POLL_SECONDS)

        poller = threading.Thread(target=poll, daemon=True, name="bench-rss")
        poller.start()
        try:
            # wait4 (not waitpid) also gives the child's rusage: ru_maxrss covers the
            # largest process among it and the descendants it waited for (kernels).
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # the command and its kernels
            process.wait()
            raise
        finally:
            done.set()
        seconds = time.perf_counter() - started
        poller.join()
        process.returncode = os.waitstatus_to_exitcode(status)
    leftover = _leftovers(process.pid)
    for proc in leftover:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(leftover, timeout=10)
    if process.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise CommandFailed(f"{name}: {' '.join(argv)} exited {process.returncode}\n{tail}")
    cpu = usage.ru_utime + usage.ru_stime
    return Sample(
        name, seconds, max(polls, default=0), usage.ru_maxrss * 1024, cpu, log, len(leftover)
    )


def run_rounds(
    schedule: Callable[[int], Sequence[tuple[str, Callable[[], Sample]]]],
    rounds: int,
    warmup: Sequence[tuple[str, Callable[[], Sample]]] = (),
    progress: Callable[[str], None] = print,
) -> dict[str, list[Sample]]:
    """Run the warm-up steps (discarded), then ``rounds`` rounds of ``schedule(round)``.

    ``schedule`` returns the round's (name, thunk) pairs in the order to run them, so
    related commands alternate (A B A B ...) and may swap order between rounds.
    """
    for name, thunk in warmup:
        sample = thunk()
        progress(f"  warm-up {name}: {sample.seconds:.1f} s")
    samples: dict[str, list[Sample]] = {}
    for number in range(rounds):
        for name, thunk in schedule(number):
            sample = thunk()
            samples.setdefault(name, []).append(sample)
            progress(
                f"  round {number + 1}/{rounds} {name}: {sample.seconds:.1f} s, "
                f"peak {sample.tree_rss_peak / 2**20:,.0f} MiB"
            )
    return samples


def median(samples: Sequence[Sample], attr: str = "seconds") -> float:
    return statistics.median(getattr(s, attr) for s in samples)


def paired_ratios(
    numerator: Sequence[Sample], denominator: Sequence[Sample], attr: str = "seconds"
) -> list[float]:
    """Round-by-round ratios: each pair ran back to back, under the same machine load."""
    return [
        getattr(a, attr) / getattr(b, attr) for a, b in zip(numerator, denominator, strict=True)
    ]
