"""The benchmark harness measures what it says and writes its results; never about speed.

(The suite itself takes minutes even in quick mode, so it is not run here.)
"""

from __future__ import annotations

import sys

import pytest

from benchmarks import report
from benchmarks.harness import CommandFailed, Row, measure, paired_ratios, run_rounds

# A parent that holds ~60 MB and a child that holds ~120 MB at the same time.
TREE = """
import subprocess, sys, time
held = bytearray(60 * 2**20)
child = subprocess.Popen([sys.executable, "-c",
    "import time; held = bytearray(120 * 2**20); time.sleep(0.6)"])
child.wait()
"""


def test_memory_covers_the_whole_process_tree(tmp_path):
    sample = measure("tree", [sys.executable, "-c", TREE], {}, tmp_path, tmp_path / "tree.log")
    assert sample.tree_rss_peak >= 170 * 2**20  # parent and child together
    # getrusage(RUSAGE_CHILDREN) is the largest child this test process ever waited for,
    # so in a full suite it may come from an earlier test: only a lower bound holds.
    assert sample.max_rss >= 120 * 2**20
    assert sample.cpu > 0


def test_a_failing_command_says_why(tmp_path):
    code = "import sys; print('the reason'); sys.exit(3)"
    with pytest.raises(CommandFailed, match="exited 3(.|\n)*the reason"):
        measure("fails", [sys.executable, "-c", code], {}, tmp_path, tmp_path / "fails.log")


def test_rounds_alternate_and_drop_the_warm_up(tmp_path):
    ran = []

    def command(name):
        def thunk():
            ran.append(name)
            return measure(name, [sys.executable, "-c", "pass"], {}, tmp_path, tmp_path / "x")

        return name, thunk

    samples = run_rounds(
        lambda n: [command("a"), command("b")][:: 1 if n % 2 == 0 else -1],
        rounds=2,
        warmup=[command("w")],
        progress=lambda _: None,
    )
    assert ran == ["w", "a", "b", "b", "a"]
    assert set(samples) == {"a", "b"} and len(samples["a"]) == 2
    assert len(paired_ratios(samples["a"], samples["b"])) == 2


def test_results_table_and_plot_are_written(tmp_path):
    rows = [
        Row("B1", "toolkit / plain", "1.500", "<= 1.3", "missed", "d", ratio=1.5, target_value=1.3),
        Row("B4", "s3 | local", "1.100", "reported", "reported", "", ratio=1.1),
        Row("B5", "app", "pending", "< 1 s", "pending", "the app is not there yet"),
    ]
    context = {
        "mode": "quick",
        "started": "now",
        "seconds": 60,
        "load_before": (0.1, 0, 0),
        "load_after": (0.2, 0, 0),
        "cpus": 2,
        "python": "3.11",
        "machine": "Linux",
        "sizes": (10, 100),
        "rounds": 1,
        "commit": "abc",
    }
    out = tmp_path / "results.md"
    report.write(out, rows, context, {})
    text = out.read_text()
    assert "| B1 | toolkit / plain | 1.500 | <= 1.3 | missed | d |" in text
    assert "s3 \\| local" in text  # a pipe in a cell does not break the table
    assert "pending" in text
    assert out.with_suffix(".png").stat().st_size > 0


# A stand-in for a spare kernel an earlier run left: it holds ~100 MB and has used CPU.
SPARE = """
import sys, time
held = bytearray(100 * 2**20)
end = time.process_time() + 0.3
while time.process_time() < end:
    pass
print("ready", flush=True)
time.sleep(120)
"""


def test_an_adopted_spare_kernel_counts_as_the_commands_own(tmp_path):
    import subprocess

    def spare():
        proc = subprocess.Popen(
            [sys.executable, "-c", SPARE, "/tmp/toolkit-spare-test/kernel.json"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout.readline().strip() == "ready"
        return proc

    adopted, bystander = spare(), spare()
    try:
        code = (
            "import os, signal, time; time.sleep(0.5); "
            f"os.kill({adopted.pid}, signal.SIGKILL); time.sleep(0.2)"
        )
        sample = measure("adopts", [sys.executable, "-c", code], {}, tmp_path, tmp_path / "a")
        adopted.wait()
    finally:
        for proc in (adopted, bystander):
            proc.kill()
            proc.wait()
    assert 100 * 2**20 <= sample.tree_rss_peak < 190 * 2**20  # the adopted one only
    assert sample.max_rss >= 100 * 2**20
    assert sample.cpu >= 0.3
