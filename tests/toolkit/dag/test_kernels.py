"""Kernels kept from notebook to notebook (nbclient's ``kernel_manager_class``): each
notebook still starts as if its kernel were fresh. Real kernels, real papermill."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import nbformat
import papermill
import psutil
import pytest

from toolkit.dag import kernels

MANAGER = "toolkit.dag.kernels.ReusedKernelManager"
PID = "import os; print(os.getpid())"
ENV_OF = "import os; print(os.environ.get({!r}))"


@pytest.fixture(autouse=True)
def kernel_tmp(tmp_path, monkeypatch):
    """A short private TMPDIR for the kernels' socket folders; every kernel killed after.

    Takes ``tmp_path`` first: pytest's own temporary root must not land in that folder.
    """
    folder = tempfile.mkdtemp(prefix="tk-", dir="/tmp")  # noqa: S108
    kernels.reuse(True)  # whatever an earlier test of this process chose
    monkeypatch.setenv("TMPDIR", folder)
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() caches its first answer
    try:
        yield folder
    finally:
        kernels.shutdown_all()
        kernels.reuse(True)
        shutil.rmtree(folder, ignore_errors=True)


def _notebook(path, *cells: str) -> str:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    nbformat.write(nb, str(path))
    return str(path)


def _run(tmp_path, name, *cells, timeout=60, **kwargs):
    source = _notebook(tmp_path / f"{name}.in.ipynb", *cells)
    return papermill.execute_notebook(
        source,
        str(tmp_path / f"{name}.ipynb"),
        kernel_name="python3",
        kernel_manager_class=MANAGER,
        progress_bar=False,
        execution_timeout=timeout,
        **kwargs,
    )


def _run_in_thread(*args, hold: threading.Event | None = None, **kwargs):
    """Run a notebook in a new thread; with ``hold``, the thread lives on until it is set
    (an ended thread's id is given to the next thread started)."""
    result = {"done": threading.Event()}

    def target():
        try:
            result["nb"] = _run(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result["error"] = exc
        finally:
            result["done"].set()
            if hold is not None:
                hold.wait()

    thread = threading.Thread(target=target)
    thread.start()
    return thread, result


def _text(nb, cell=-1) -> str:
    return "".join(out.get("text", "") for out in nb.cells[cell].outputs)


def _pid(nb, cell=-1) -> int:
    return int(_text(nb, cell))


def _output_pid(tmp_path, name) -> int:
    """The pid printed by the first code cell of a notebook that failed (its saved output)."""
    nb = nbformat.read(str(tmp_path / f"{name}.ipynb"), as_version=4)
    first = next(cell for cell in nb.cells if cell.cell_type == "code")
    return int("".join(out.get("text", "") for out in first.outputs))


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _kernel_files(folder) -> list[str]:
    """The kernels' socket folders and connection files (both land in TMPDIR)."""
    return sorted(
        n for n in os.listdir(folder) if n.startswith("toolkit-kernel-") or n.endswith(".json")
    )


def _wait_for(predicate, seconds=60.0) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_two_notebooks_share_a_kernel_and_the_second_starts_empty(tmp_path):
    first = _run(tmp_path, "a", "x = 41\nimport json", PID)
    second = _run(tmp_path, "b", "print(sorted(k for k in ('x', 'json') if k in globals()))", PID)
    assert _pid(first) == _pid(second), "the second notebook ran in a new kernel"
    assert _text(second, 0).strip() == "[]", "names from the first notebook leaked"
    assert [c.execution_count for c in second.cells] == [1, 2]
    assert kernels.live_kernels() == 1


def test_env_and_cwd_follow_the_launcher_as_a_fresh_kernel_would(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_GONE_LATER", "1")
    monkeypatch.setenv("TOOLKIT_CHANGED_LATER", "before")
    first = _run(tmp_path, "a", "import os; os.chdir('/')", PID)
    monkeypatch.delenv("TOOLKIT_GONE_LATER")
    monkeypatch.setenv("TOOLKIT_CHANGED_LATER", "after")
    monkeypatch.setenv("TOOLKIT_NEW_LATER", "new")
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    second = _run(
        tmp_path,
        "b",
        "import json, os\nprint(json.dumps([os.getcwd()] + [os.environ.get(name) for name in"
        " ('TOOLKIT_GONE_LATER', 'TOOLKIT_CHANGED_LATER', 'TOOLKIT_NEW_LATER')]))",
        PID,
    )
    cwd, *env = json.loads(_text(second, 0))
    assert _pid(first) == _pid(second)
    assert os.path.realpath(cwd) == os.path.realpath(workdir)
    assert env == [None, "after", "new"]


def test_a_variable_added_then_removed_by_the_launcher_leaves_the_kernel(tmp_path, monkeypatch):
    _run(tmp_path, "a", PID)
    monkeypatch.setenv("TOOLKIT_ADDED_LATER", "1")
    assert _text(_run(tmp_path, "b", ENV_OF.format("TOOLKIT_ADDED_LATER"))).strip() == "1"
    monkeypatch.delenv("TOOLKIT_ADDED_LATER")
    assert _text(_run(tmp_path, "c", ENV_OF.format("TOOLKIT_ADDED_LATER"))).strip() == "None"


def test_a_variable_set_by_a_notebook_does_not_reach_the_next(tmp_path):
    _run(tmp_path, "a", "import os; os.environ['TOOLKIT_SET_BY_NOTEBOOK'] = '1'")
    assert _text(_run(tmp_path, "b", ENV_OF.format("TOOLKIT_SET_BY_NOTEBOOK"))).strip() == "None"


def test_a_variable_with_a_non_bmp_character_reaches_a_reused_kernel(tmp_path, monkeypatch):
    first = _pid(_run(tmp_path, "a", PID))
    monkeypatch.setenv("TOOLKIT_EMOJI", "\U0001f600")
    probe = "import os; print(os.environ['TOOLKIT_EMOJI'] == '\U0001f600')"
    second = _run(tmp_path, "b", probe, PID)
    assert (_text(second, 0).strip(), _pid(second)) == ("True", first)


def test_a_launcher_variable_wins_over_the_kernels_own_default(tmp_path, monkeypatch):
    monkeypatch.delenv("MPLBACKEND", raising=False)
    _run(tmp_path, "a", PID)
    monkeypatch.setenv("MPLBACKEND", "agg")
    assert _text(_run(tmp_path, "b", ENV_OF.format("MPLBACKEND"))).strip() == "agg"


def test_kernels_get_one_blas_thread_unless_the_launcher_chose(tmp_path, monkeypatch):
    for name in kernels.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    cell = "import os; print(os.environ['OMP_NUM_THREADS'], os.environ['OPENBLAS_NUM_THREADS'])"
    assert _text(_run(tmp_path, "a", cell)).split() == ["1", "3"]
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert _text(_run(tmp_path, "b", cell)).split() == ["2", "3"]
    assert "MKL_NUM_THREADS" not in os.environ, "the launcher's own environment was changed"


def test_a_notebook_failing_in_a_quiet_kernel_keeps_it_and_the_next_starts_empty(tmp_path):
    with pytest.raises(papermill.PapermillExecutionError, match="boom"):
        _run(tmp_path, "a", PID, "x = 1", "raise ValueError('boom')")
    pid = _output_pid(tmp_path, "a")
    assert kernels.live_kernels() == 1
    after = _run(tmp_path, "b", "print('x' in globals())", PID)
    assert (_text(after, 0).strip(), _pid(after)) == ("False", pid)


def test_a_timed_out_cell_kills_its_kernel_and_the_next_notebook_runs(tmp_path, kernel_tmp):
    first = _pid(_run(tmp_path, "a", PID))
    with pytest.raises(Exception, match="(?i)timeout|timed out"):
        _run(tmp_path, "b", PID, "import time; time.sleep(60)", timeout=2)
    assert _output_pid(tmp_path, "b") == first
    assert _gone(first)
    assert kernels.live_kernels() == 0
    assert _kernel_files(kernel_tmp) == []
    after = _run(tmp_path, "c", "print(1 + 1)", PID)
    assert _text(after, 0).strip() == "2"
    assert _pid(after) != first


def test_an_interrupted_cell_kills_its_kernel_though_it_answers_again(tmp_path):
    with pytest.raises(papermill.PapermillExecutionError, match="KeyboardInterrupt"):
        cells = (PID, "import time; time.sleep(60)")
        _run(tmp_path, "a", *cells, timeout=2, interrupt_on_timeout=True)
    pid = _output_pid(tmp_path, "a")
    assert _gone(pid)
    assert kernels.live_kernels() == 0
    assert _pid(_run(tmp_path, "b", PID)) != pid


def test_a_dead_kernel_fails_the_notebook_and_is_replaced(tmp_path, kernel_tmp):
    first = _pid(_run(tmp_path, "a", PID))
    with pytest.raises(Exception, match="(?i)dead|died"):
        _run(tmp_path, "b", PID, "import os; os._exit(1)")
    assert _output_pid(tmp_path, "b") == first
    assert _gone(first)
    assert kernels.live_kernels() == 0
    assert _kernel_files(kernel_tmp) == []
    after = _run(tmp_path, "c", "print('alive')", PID)
    assert _text(after, 0).strip() == "alive"
    assert _pid(after) != first


def test_reuse_false_gives_each_notebook_a_new_kernel(tmp_path):
    kernels.reuse(False)
    first = _pid(_run(tmp_path, "a", PID))
    assert kernels.live_kernels() == 0
    second = _pid(_run(tmp_path, "b", PID))
    assert first != second
    assert _gone(first) and _gone(second)
    kernels.reuse(True)
    assert _pid(_run(tmp_path, "c", PID)) == _pid(_run(tmp_path, "d", PID))


def test_kernels_are_per_thread_and_at_most_max_idle_are_kept(tmp_path, kernel_tmp):
    pids = [_pid(_run(tmp_path, "main", PID))]
    hold, threads = threading.Event(), []
    try:
        for index in range(kernels.MAX_IDLE):
            thread, result = _run_in_thread(tmp_path, f"t{index}", PID, hold=hold)
            threads.append(thread)
            result["done"].wait()
            pids.append(_pid(result["nb"]))
    finally:
        hold.set()
        for thread in threads:
            thread.join()
    assert len(set(pids)) == len(pids), "a thread got another thread's kernel"
    assert kernels.live_kernels() == kernels.MAX_IDLE
    assert _gone(pids[0]), "the oldest idle kernel was not closed"
    assert not any(_gone(pid) for pid in pids[1:])
    assert len(_kernel_files(kernel_tmp)) == kernels.MAX_IDLE  # one folder each


def test_close_idle_kills_the_kept_kernel_and_the_next_notebook_starts_one(tmp_path, kernel_tmp):
    first = _pid(_run(tmp_path, "a", PID))
    kernels.close_idle()
    assert kernels.live_kernels() == 0
    assert _gone(first)
    assert _kernel_files(kernel_tmp) == []
    assert _pid(_run(tmp_path, "b", PID)) != first


def test_shutdown_all_kills_idle_kernels_of_every_thread_and_removes_their_folders(
    tmp_path, kernel_tmp
):
    pids = [_pid(_run(tmp_path, "main", PID))]
    thread, result = _run_in_thread(tmp_path, "other", PID)
    thread.join()
    pids.append(_pid(result["nb"]))
    assert kernels.live_kernels() == 2
    assert len(_kernel_files(kernel_tmp)) == 2  # one folder each
    kernels.shutdown_all()
    assert kernels.live_kernels() == 0
    assert all(_gone(pid) for pid in pids)
    assert _kernel_files(kernel_tmp) == []


def test_shutdown_all_kills_an_executing_kernel_and_its_notebook_fails(tmp_path, kernel_tmp):
    pid_file = tmp_path / "pid"
    cell = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid()))"
    thread, result = _run_in_thread(tmp_path, "a", cell, "time.sleep(60)", timeout=120)
    assert _wait_for(lambda: pid_file.exists() and pid_file.read_text())
    assert kernels.live_kernels() == 1
    kernels.shutdown_all()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert "error" in result
    assert _gone(int(pid_file.read_text()))
    assert kernels.live_kernels() == 0
    assert _kernel_files(kernel_tmp) == []


def test_the_kept_client_loses_no_output_between_notebooks(tmp_path):
    lines = "import sys\nfor i in range(300):\n    print(i)\n    print(-i, file=sys.stderr)"
    display = "display({'text/plain': 'shown'}, raw=True)"
    cells = (lines, display, "print('x' * 100_000)", "6 * 7")
    first = _run(tmp_path, "a", *cells)
    client = kernels._idle[0].client
    second = _run(tmp_path, "b", *cells)
    assert kernels._idle[0].client is client, "a new client was made"
    for nb in (first, second):
        streams = {out["name"]: out["text"] for out in nb.cells[0].outputs}
        assert streams == {
            "stdout": "".join(f"{i}\n" for i in range(300)),
            "stderr": "".join(f"{-i}\n" for i in range(300)),
        }
        assert nb.cells[1].outputs[0]["data"]["text/plain"] == "shown"
        assert _text(nb, 2) == "x" * 100_000 + "\n"
        assert nb.cells[3].outputs[0]["data"]["text/plain"] == "42"
        assert [c.execution_count for c in nb.cells] == [1, 2, 3, 4]


CHILD = """
import atexit, json, sys

import nbformat, papermill, psutil

pids = []


def check():  # registered before kernels.py's handler, so it runs after it
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    print(json.dumps({"alive_at_exit": alive}), flush=True)


atexit.register(check)
folder = sys.argv[1]
for name in ("a", "b"):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nb.cells = [nbformat.v4.new_code_cell("import os; print(os.getpid())")]
    nbformat.write(nb, f"{folder}/{name}.in.ipynb")
    out = papermill.execute_notebook(
        f"{folder}/{name}.in.ipynb", f"{folder}/{name}.ipynb", kernel_name="python3",
        kernel_manager_class="toolkit.dag.kernels.ReusedKernelManager", progress_bar=False,
        execution_timeout=60,
    )
    pids.append(int(out.cells[0].outputs[0]["text"]))
print(json.dumps({"pids": pids}), flush=True)
"""


def test_a_process_that_exits_normally_leaves_no_kernel_behind(tmp_path, kernel_tmp):
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    pids = reports[0]["pids"]
    assert len(pids) == 2 and pids[0] == pids[1], "the child did not reuse its kernel"
    assert reports[1] == {"alive_at_exit": []}, "atexit left the kernel running"
    assert _gone(pids[0])
    assert _kernel_files(kernel_tmp) == []
    assert "Traceback" not in done.stderr, done.stderr
    assert "running over TCP" not in done.stderr


def test_the_next_process_removes_what_a_killed_one_left(tmp_path, kernel_tmp):
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    orphan = os.path.join(kernel_tmp, f"toolkit-kernel-{gone}-left")
    alive = os.path.join(kernel_tmp, f"toolkit-kernel-{os.getppid()}-alive")
    for folder in (orphan, alive):
        os.mkdir(folder)
        open(os.path.join(folder, "kernel.json"), "w").close()
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert not os.path.exists(orphan)
    assert os.path.exists(alive)  # its process still runs: not ours to remove


def test_limited_bounds_the_whole_notebook_and_its_kernel_is_not_kept(tmp_path, kernel_tmp):
    first = _pid(_run(tmp_path, "a", PID))  # kept, for the next notebook
    sleeps = ["import time; time.sleep(1.5)"] * 3  # each cell well within the limit
    started = time.monotonic()
    interrupted = pytest.raises(papermill.PapermillExecutionError, match="KeyboardInterrupt")
    with kernels.limited(seconds=2.5) as limits, interrupted:
        _run(tmp_path, "b", PID, *sleeps, timeout=60)
    assert time.monotonic() - started < 2.5 + 10
    assert limits.exceeded == "time"
    assert _output_pid(tmp_path, "b") == first
    assert _gone(first), "a kernel stopped over its limit was kept"
    assert kernels.live_kernels() == 0
    assert _kernel_files(kernel_tmp) == []


def test_limited_kills_a_kernel_over_its_memory_and_the_next_notebook_gets_another(
    tmp_path, kernel_tmp
):
    grow = "import numpy as np; held = np.ones(300 * 2**20, dtype=np.uint8)"
    with kernels.limited(memory_mb=150) as limits:
        with pytest.raises(Exception, match="(?i)dead|died"):
            _run(tmp_path, "a", PID, grow, "import time; time.sleep(60)", timeout=120)
        assert limits.exceeded == "memory"
        killed = _output_pid(tmp_path, "a")
        assert _gone(killed)
        assert kernels.live_kernels() == 0
        assert _kernel_files(kernel_tmp) == []
        after = _run(tmp_path, "b", "print('alive')", PID)
    assert _text(after, 0).strip() == "alive"
    assert _pid(after) != killed


def test_notebooks_within_their_limits_share_a_kernel(tmp_path):
    with kernels.limited(seconds=120, memory_mb=4000) as limits:
        first = _pid(_run(tmp_path, "a", PID))
        second = _pid(_run(tmp_path, "b", PID))
    assert (limits.exceeded, first) == (None, second)


def test_no_notebook_starts_once_its_time_is_up(tmp_path):
    with kernels.limited(seconds=0.2) as limits:
        time.sleep(0.5)
        with pytest.raises(kernels.LimitExceeded):
            _run(tmp_path, "a", PID)
    assert limits.exceeded == "time"
    assert kernels.live_kernels() == 0


def test_a_kernel_that_ignores_the_interrupt_is_killed_at_its_time_limit(tmp_path, kernel_tmp):
    deaf = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(60)"
    started = time.monotonic()
    with kernels.limited(seconds=2) as limits, pytest.raises(Exception, match="(?i)dead|died"):
        _run(tmp_path, "a", PID, deaf, timeout=120)
    assert time.monotonic() - started < 2 + kernels.INTERRUPT_GRACE_SECONDS + 10
    assert limits.exceeded == "time"
    assert _gone(_output_pid(tmp_path, "a"))
    assert kernels.live_kernels() == 0
    assert _kernel_files(kernel_tmp) == []
