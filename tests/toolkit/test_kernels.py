"""The reused-kernel papermill engine: a run's kernel survives between its notebooks, and
each notebook still starts as if its kernel were fresh. Real kernels, real papermill."""

from __future__ import annotations

import json
import os

import nbformat
import papermill
import psutil
import pytest

from toolkit import kernels


@pytest.fixture(autouse=True)
def _no_kernels_left():
    yield
    kernels.shutdown()


def _notebook(path, *cells: str) -> str:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    nbformat.write(nb, str(path))
    return str(path)


def _run(tmp_path, name, *cells, key="run-1", timeout=60):
    source = _notebook(tmp_path / f"{name}.in.ipynb", *cells)
    output = str(tmp_path / f"{name}.ipynb")
    nb = papermill.execute_notebook(
        source,
        output,
        engine_name=kernels.register_engine(),
        kernel_key=key,
        execution_timeout=timeout,
        progress_bar=False,
    )
    return nb


def _text(nb, cell=-1) -> str:
    return "".join(out.get("text", "") for out in nb.cells[cell].outputs)


PID = "import os; print(os.getpid())"


def test_a_run_reuses_its_kernel_and_each_notebook_starts_empty(tmp_path):
    first = _run(tmp_path, "a", "x = 41\nimport json", PID)
    second = _run(tmp_path, "b", "print(sorted(k for k in ('x', 'json') if k in globals()))", PID)
    assert _text(first) == _text(second), "the second notebook ran in a new kernel"
    assert _text(second, 0).strip() == "[]", "names from the first notebook leaked"
    assert [c.execution_count for c in second.cells] == [1, 2]
    assert kernels.idle_kernels() == [("run-1", 2)]


def test_env_and_cwd_follow_the_launcher_as_a_fresh_kernel_would(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_GONE_LATER", "1")
    monkeypatch.setenv("TOOLKIT_CHANGED_LATER", "before")
    _run(tmp_path, "a", "x = 1")
    monkeypatch.delenv("TOOLKIT_GONE_LATER")
    monkeypatch.setenv("TOOLKIT_CHANGED_LATER", "after")
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    nb = _run(
        tmp_path,
        "b",
        "import json, os\n"
        "print(json.dumps([os.getcwd(), os.environ.get('TOOLKIT_GONE_LATER'),"
        " os.environ['TOOLKIT_CHANGED_LATER']]))",
    )
    cwd, gone, changed = json.loads(_text(nb))
    assert (os.path.realpath(cwd), gone, changed) == (os.path.realpath(workdir), None, "after")


def test_a_failed_notebook_kills_its_kernel(tmp_path):
    first = _run(tmp_path, "a", PID)
    with pytest.raises(papermill.PapermillExecutionError, match="boom"):
        _run(tmp_path, "b", "import builtins; builtins.poisoned = True", "raise ValueError('boom')")
    pid = int(_text(first))
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert kernels.idle_kernels() == []
    after = _run(tmp_path, "c", PID, "import builtins; print(hasattr(builtins, 'poisoned'))")
    assert int(_text(after, 0)) != pid
    assert _text(after).strip() == "False", "state of the failed notebook reached the next one"


def test_a_timed_out_cell_kills_its_kernel_and_the_next_notebook_runs(tmp_path):
    first = _run(tmp_path, "a", PID)
    with pytest.raises(Exception, match="(?i)timeout|timed out"):
        _run(tmp_path, "b", "import time; time.sleep(60)", timeout=2)
    assert not psutil.pid_exists(int(_text(first))) or (
        psutil.Process(int(_text(first))).status() == psutil.STATUS_ZOMBIE
    )
    assert _run(tmp_path, "c", "print(1 + 1)").cells[0].outputs[0]["text"].strip() == "2"


def test_a_dead_kernel_fails_the_notebook_and_is_replaced(tmp_path):
    _run(tmp_path, "a", "x = 1")
    with pytest.raises(Exception, match="(?i)dead|died|kernel"):
        _run(tmp_path, "b", "import os; os._exit(1)")
    assert kernels.idle_kernels() == []
    assert _text(_run(tmp_path, "c", "print('alive')")).strip() == "alive"


def test_runs_never_share_a_kernel_and_shutdown_kills_a_runs_kernel(tmp_path):
    one = int(_text(_run(tmp_path, "a", PID, key="run-1")))
    two = int(_text(_run(tmp_path, "b", PID, key="run-2")))
    assert one != two
    kernels.shutdown("run-1")
    assert kernels.idle_kernels() == [("run-2", 1)]
    assert not psutil.pid_exists(one) or psutil.Process(one).status() == psutil.STATUS_ZOMBIE
    assert psutil.pid_exists(two)


def test_at_most_max_idle_kernels_are_kept(tmp_path):
    for index in range(kernels.MAX_IDLE + 1):
        _run(tmp_path, f"nb{index}", "x = 1", key=f"run-{index}")
    kept = [key for key, _ in kernels.idle_kernels()]
    assert kept == [f"run-{index}" for index in range(1, kernels.MAX_IDLE + 1)]


def test_a_prestarted_kernel_has_the_notebooks_imports_loaded_and_binds_no_names(tmp_path):
    source = tmp_path / "step.py"
    source.write_text("# %%\nimport tomllib\nfrom email import mime, parser as p\n")
    kernels.prestart("run-1", source)
    assert kernels.idle_kernels() == [("run-1", 0)]
    nb = _run(
        tmp_path,
        "a",
        "import sys\nprint(['tomllib' in sys.modules, 'email.mime' in sys.modules,"
        " sorted(n for n in ('tomllib', 'mime', '_toolkit_module') if n in globals())])",
    )
    assert _text(nb).strip() == "[True, True, []]"
    assert kernels.idle_kernels() == [("run-1", 1)], "the prestarted kernel was not used"


def test_a_prestart_whose_import_fails_leaves_the_error_to_the_notebook(tmp_path):
    source = tmp_path / "step.py"
    source.write_text("import no_such_module_here\n")
    kernels.prestart("run-1", source)
    with pytest.raises(papermill.PapermillExecutionError, match="no_such_module_here"):
        _run(tmp_path, "a", "import no_such_module_here")


def test_imported_modules_reads_import_lines_only():
    source = (
        "# %%\nimport a, b as c  # note\nfrom .relative import x\n"
        "from d.e import (f,\n    g)\ntext = 'import z'  # import y\n    import h.i\n"
    )
    assert kernels.imported_modules(source) == ["a", "b", "d.e", "d.e.f", "h.i"]


def test_a_prestart_that_cannot_start_leaves_the_kernel_to_the_engine(tmp_path):
    kernels.prestart("run-1", tmp_path / "no-such-notebook.py")
    assert kernels.idle_kernels() == []
    assert _text(_run(tmp_path, "a", "print(6 * 7)")).strip() == "42"


def test_the_runs_client_is_kept_between_notebooks_and_no_output_is_lost(tmp_path):
    source = tmp_path / "step.py"
    source.write_text("import json\n")
    kernels.prestart("run-1", source)
    lines = "for i in range(300):\n    print(i)"
    first = _run(tmp_path, "a", lines, "display({'text/plain': 'shown'}, raw=True)", "6 * 7")
    client = kernels._POOL._idle[0].client
    assert client is not None, "the prestart's client was not kept"
    second = _run(tmp_path, "b", lines, "6 * 7")
    assert kernels._POOL._idle[0].client is client, "a new client was made"
    expected = "".join(f"{i}\n" for i in range(300))
    assert _text(first, 0) == _text(second, 0) == expected
    assert first.cells[1].outputs[0]["data"]["text/plain"] == "shown"
    assert second.cells[1].outputs[0]["data"]["text/plain"] == "42"
    assert [c.execution_count for c in second.cells] == [1, 2]
