"""Kernels kept from notebook to notebook through nbclient's kernel_manager_class: each
notebook still starts as in a fresh kernel. Real kernels, real papermill."""

from __future__ import annotations

import os
import subprocess
import sys

import nbformat
import papermill
import psutil
import pytest

from toolkit.dag import kernels

MANAGER = "toolkit.dag.kernels.ReusedKernelManager"


@pytest.fixture(autouse=True)
def no_kernel_left():
    yield
    kernels.reuse(True)
    kernels.shutdown_all()


def notebook(path, *cells: str) -> str:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    nbformat.write(nb, str(path))
    return str(path)


def execute(tmp_path, name: str, *cells: str, timeout: int = 120) -> list[str]:
    """Execute a notebook with the kept-kernel manager; each cell's printed text."""
    source = notebook(tmp_path / f"{name}.ipynb", *cells)
    out = str(tmp_path / f"{name}.out.ipynb")
    papermill.execute_notebook(
        source,
        out,
        kernel_name="python3",
        kernel_manager_class=MANAGER,
        progress_bar=False,
        execution_timeout=timeout,
    )
    cells_out = nbformat.read(out, as_version=4).cells
    return ["".join(o.get("text", "") for o in c.outputs).strip() for c in cells_out]


PID = "import os; print(os.getpid())"


def test_the_next_notebook_reuses_the_kernel_and_starts_with_an_empty_namespace(tmp_path):
    first = execute(tmp_path, "a", PID, "leftover = 1; print('set')")
    second = execute(tmp_path, "b", PID, "print('leftover' in globals())")
    assert first[0] == second[0]  # the same process
    assert first[1] == "set" and second[1] == "False"
    assert kernels.live_kernels() == 1


def test_env_and_cwd_follow_the_launcher_as_a_fresh_kernel_would(tmp_path, monkeypatch):
    probe = "import os; print(os.getcwd(), os.environ.get('TOOLKIT_PROBE'))"
    monkeypatch.setenv("TOOLKIT_PROBE", "one")
    execute(tmp_path, "a", "import os; os.environ['LEAK'] = 'x'; os.chdir('/')")
    monkeypatch.setenv("TOOLKIT_PROBE", "two")
    seen = execute(tmp_path, "b", probe, "import os; print(os.environ.get('LEAK'))")
    assert seen == [f"{os.getcwd()} two", "None"]


def test_kernels_get_one_library_thread_unless_the_operator_chose(tmp_path, monkeypatch):
    for name in kernels.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    probe = "import os; print(os.environ['OMP_NUM_THREADS'], os.environ['OPENBLAS_NUM_THREADS'])"
    assert execute(tmp_path, "a", probe) == ["3 1"]
    assert "OPENBLAS_NUM_THREADS" not in os.environ  # the launcher itself is left alone


def test_a_timed_out_cell_fails_and_its_kernel_is_not_kept(tmp_path):
    first = execute(tmp_path, "a", PID)[0]
    with pytest.raises(Exception, match="(?i)timeout|timed out"):
        execute(tmp_path, "b", "import time; time.sleep(60)", timeout=2)
    assert psutil.pid_exists(int(first)) is False or not _alive(int(first))
    assert execute(tmp_path, "c", PID)[0] != first


def test_a_dead_kernel_fails_the_notebook_and_the_next_gets_a_new_one(tmp_path):
    first = execute(tmp_path, "a", PID)[0]
    with pytest.raises(Exception):  # noqa: B017 - nbclient's DeadKernelError, wrapped
        execute(tmp_path, "b", "import os; os._exit(1)")
    assert execute(tmp_path, "c", PID)[0] != first


def test_fresh_kernels_when_reuse_is_off(tmp_path):
    kernels.reuse(False)
    assert execute(tmp_path, "a", PID) != execute(tmp_path, "b", PID)
    assert kernels.live_kernels() == 0


def test_shutdown_all_kills_the_kernels_and_removes_their_folders(tmp_path, monkeypatch):
    private = tmp_path.parent / "tmp"
    private.mkdir(exist_ok=True)
    monkeypatch.setenv("TMPDIR", str(private))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    pid = int(execute(tmp_path, "a", PID)[0])
    assert list(private.glob("toolkit-kernel-*"))
    kernels.shutdown_all()
    assert kernels.live_kernels() == 0 and not _alive(pid)
    assert not list(private.glob("toolkit-kernel-*"))


def test_no_output_is_lost_with_the_kept_client(tmp_path):
    cells = [f"print({i}); print('x' * 10000)" for i in range(5)]
    for name in ("a", "b", "c"):
        outputs = execute(tmp_path, name, *cells)
        assert [o.splitlines()[0] for o in outputs] == [str(i) for i in range(5)]


def test_a_process_that_exits_leaves_no_kernel(tmp_path):
    script = (
        "import papermill, sys\n"
        "for name in ('a', 'b'):\n"
        f"    papermill.execute_notebook(sys.argv[1], sys.argv[1] + name, kernel_name='python3',"
        f" kernel_manager_class={MANAGER!r}, progress_bar=False)\n"
        "import nbformat\n"
        "print(nbformat.read(sys.argv[1] + 'b', as_version=4).cells[0].outputs[0]['text'])\n"
    )
    source = notebook(tmp_path / "pid.ipynb", PID)
    result = subprocess.run(
        [sys.executable, "-c", script, source], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert not _alive(int(result.stdout.strip()))
    assert "running over TCP" not in result.stderr


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
