"""The benchmark harness measures what it says and writes its results; never about speed.

(The suite itself takes minutes even in quick mode, so it is not run here.)
"""

from __future__ import annotations

import contextlib
import sys

import pytest

from benchmarks import report
from benchmarks.harness import CommandFailed, Row, measure, paired_ratios, run_rounds

# A parent that holds ~60 MB and a child that holds ~120 MB at the same time; the child
# also burns 0.3 s of CPU.
TREE = """
import subprocess, sys, time
held = bytearray(60 * 2**20)
child = subprocess.Popen([sys.executable, "-c",
    "import time; held = bytearray(120 * 2**20); end = time.process_time() + 0.3\\n"
    "while time.process_time() < end: pass\\n"
    "time.sleep(0.3)"])
child.wait()
"""


def test_memory_covers_the_whole_process_tree(tmp_path):
    sample = measure("tree", [sys.executable, "-c", TREE], {}, tmp_path, tmp_path / "tree.log")
    assert sample.tree_rss_peak >= 170 * 2**20  # parent and child together
    # getrusage(RUSAGE_CHILDREN) is the largest child this test process ever waited for,
    # so in a full suite it may come from an earlier test: only a lower bound holds.
    assert sample.max_rss >= 120 * 2**20
    assert sample.cpu >= 0.3  # the child's, which the command waited for


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


# Holds ~100 MB and burns CPU until killed: a process the measured command did not start.
BYSTANDER = """
import time
held = bytearray(100 * 2**20)
print("ready", flush=True)
while True:
    pass
"""


def test_only_the_commands_own_tree_counts(tmp_path):
    import subprocess

    argv = [sys.executable, "-c", BYSTANDER]
    bystander = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert bystander.stdout.readline().strip() == "ready"
        code = "import time; time.sleep(0.6)"
        sample = measure("alone", [sys.executable, "-c", code], {}, tmp_path, tmp_path / "a")
    finally:
        bystander.kill()
        bystander.wait()
    assert 0 < sample.tree_rss_peak < 100 * 2**20
    assert sample.cpu < 0.3  # the bystander burned ~0.6 s of CPU meanwhile
    assert sample.leftover == 0


# Starts a child (in the command's session, as a kernel is), saves its pid and exits without
# waiting for it: the child outlives the command.
LEAVES_A_CHILD = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open(sys.argv[1], "w").write(str(child.pid))
"""


def test_a_process_left_running_is_stopped_and_counted(tmp_path):
    import psutil

    pid_file = tmp_path / "child.pid"
    argv = [sys.executable, "-c", LEAVES_A_CHILD, str(pid_file)]
    sample = measure("leaves", argv, {}, tmp_path, tmp_path / "l")
    child = int(pid_file.read_text())
    assert sample.leftover == 1
    with contextlib.suppress(psutil.NoSuchProcess):  # gone: killed and reaped
        assert psutil.Process(child).status() == psutil.STATUS_ZOMBIE  # killed, not reaped yet


def test_findings_describe_the_path_through_ploomber():
    imports = {
        label: {"installed": seconds}
        for label, seconds in [
            ("interpreter", 0.02),
            ("toolkit.cli.commands (any toolkit command)", 0.2),
            ("ploomber (papermill, ...)", 3.6),
            ("ploomber, gc.freeze() before exit", 2.7),
            ("a step's own imports (pandas, ...)", 1.1),
            ("statsmodels (forecast)", 1.4),
            ("a step's first contract check", 1.2),
        ]
    }
    engines = {
        "papermill": {"notebook": 0.6, "per_cell": 0.01},
        "reused-kernel": {"notebook": 0.04, "per_cell": 0.01},
        "ploomber-engine": {"notebook": 0.01, "per_cell": 0.0},
    }
    loaded = {
        "plan_kept": True,
        "steps_through_ploomber": True,
        "dag_per_step": False,
        "kernel_manager_in_yaml": True,
        "ploomber_build_in_process": True,
    }
    rows = [Row("Ploomber", "toolkit / ploomber", "1.100", "<= 1.0", "missed", ratio=1.1)]
    data = {"imports": imports, "engines": engines, "loaded": loaded}
    text = "\n".join(report.findings(rows, data))
    assert "build_partially" in text and "`.toolkit/plans/<key>.json`" in text
    assert "kernel_manager_class" in text and "`ploomber build`" in text
    assert "misses `ploomber build --force`" in text
    assert "0.9 s of its exit" in text  # 3.6 - 2.7
    assert "spare" not in text
