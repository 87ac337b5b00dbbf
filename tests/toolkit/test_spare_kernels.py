"""Spare kernels: one run leaves a warmed-up kernel, the next adopts it, and nothing about
the notebook's result or the machine's state may show it. Real kernels and processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import pytest
from jupyter_client import BlockingKernelClient

from toolkit import demo_data, kernels, spare_kernels

PROJECT_DIR = Path(__file__).resolve().parents[2]


@pytest.fixture
def registry(tmp_path, monkeypatch) -> Path:
    """Spares enabled in this process, listed in a registry of the test's own."""
    folder = tmp_path / "registry"
    monkeypatch.setattr(spare_kernels, "registry_folder", lambda: folder)
    monkeypatch.setenv(spare_kernels.MINUTES_VARIABLE, "2")
    monkeypatch.setattr(spare_kernels, "_spawned", False)
    spare_kernels.enable()
    yield folder
    kernels.shutdown()
    for entry in folder.glob("*.json"):  # spares no test adopted
        spare_kernels.discard(json.loads(entry.read_text()), kill=True)
    monkeypatch.setattr(spare_kernels, "_enabled", False)


def _spawn(modules=("json",)) -> dict:
    spare_kernels.spawn("python3", list(modules), kernels._socket_dir())
    entries = list(spare_kernels.registry_folder().glob("*.json"))
    assert len(entries) == 1, entries
    return json.loads(entries[0].read_text())


def _wait_until_warm(info: dict) -> None:
    """Without claiming it: a kernel answers its first request once its warm-up is done."""
    client = BlockingKernelClient(connection_file=str(Path(info["folder"]) / "kernel.json"))
    client.load_connection_file()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=120)
    finally:
        client.stop_channels()


def _gone(pid: int, timeout: float = 30) -> bool:
    process = spare_kernels.ForeignProcess(pid)
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return process.poll() is not None


def _run(tmp_path, key, *cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    source = tmp_path / f"{key}.in.ipynb"
    nbformat.write(nb, str(source))
    return papermill.execute_notebook(
        str(source),
        str(tmp_path / f"{key}.ipynb"),
        engine_name=kernels.register_engine(),
        kernel_key=key,
        execution_timeout=60,
        progress_bar=False,
    )


def _text(nb, cell=-1) -> str:
    return "".join(out.get("text", "") for out in nb.cells[cell].outputs)


def test_a_notebook_runs_in_the_spare_and_starts_as_in_a_fresh_kernel(
    registry, tmp_path, monkeypatch
):
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("TOOLKIT_SPARE_PROBE", "spawned")
    info = _spawn(["json", "toolkit.plots"])
    # A process with another environment or working directory finds no spare.
    monkeypatch.setenv("TOOLKIT_SPARE_PROBE", "changed")
    assert spare_kernels.claim_next("python3") is None
    monkeypatch.setenv("TOOLKIT_SPARE_PROBE", "spawned")
    monkeypatch.chdir(tmp_path)
    assert spare_kernels.claim_next("python3") is None
    monkeypatch.chdir(workdir)

    cells = (
        "import os, sys; print(os.getpid())",
        "print(sorted(k for k in globals() if not k.startswith('_')))",
        "print(os.getcwd(), os.environ['TOOLKIT_SPARE_PROBE'], 'toolkit.plots' in sys.modules)",
        "import matplotlib.pyplot as plt; print(plt.get_fignums())",
    )
    nb = _run(tmp_path, "run-1", *cells)
    monkeypatch.setenv(spare_kernels.MINUTES_VARIABLE, "0")
    fresh = _run(tmp_path, "run-2", *cells)

    assert int(_text(nb, 0)) == info["pid"], "the notebook did not run in the spare"
    assert _text(nb, 1) == _text(fresh, 1), "the warm-up left names behind"
    assert _text(nb, 2).split() == [str(workdir), "spawned", "True"]
    assert _text(nb, 3).strip() == "[]", "the warm-up figure is not the notebook's"
    assert [c.execution_count for c in nb.cells] == [1, 2, 3, 4]
    assert list(registry.glob("*.json")) == [], "the claimed spare is still listed"
    kernels.shutdown("run-1")
    assert _gone(info["pid"])
    assert not Path(info["folder"]).exists()


def test_a_spare_whose_modules_changed_on_disk_is_killed_not_adopted(
    registry, tmp_path, monkeypatch
):
    modules = tmp_path / "modules"
    modules.mkdir()
    probe = modules / "spare_probe.py"
    probe.write_text("VALUE = 1\n")
    monkeypatch.setenv("PYTHONPATH", str(modules))
    info = _spawn(["spare_probe"])
    _wait_until_warm(info)
    probe.write_text("VALUE = 2  # edited by a data scientist\n")

    nb = _run(tmp_path, "run-1", "import os, spare_probe; print(os.getpid(), spare_probe.VALUE)")
    pid, value = _text(nb, 0).split()
    assert (int(pid), value) != (info["pid"], "1")
    assert value == "2", "the notebook ran the old code"
    assert _gone(info["pid"])
    assert not Path(info["folder"]).exists()


def test_an_adopted_spare_dies_with_the_process_that_adopted_it(tmp_path, monkeypatch):
    """A kernel a run starts watches the run (its parent); an adopted spare watches the
    process that claimed it: a SIGKILLed run leaves no kernel behind."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the registry of this test and its child
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setenv(spare_kernels.MINUTES_VARIABLE, "2")
    monkeypatch.setattr(spare_kernels, "_spawned", False)
    spare_kernels.enable()
    try:
        info = _spawn()
        adopter = (
            "import os, signal\n"
            "from toolkit import kernels\n"
            "kernel = kernels._adopt_spare('run-1', 'python3')\n"
            "assert kernel is not None, 'no spare'\n"
            "assert kernel.finish_warm_up(), 'refused'\n"
            "print(kernel.manager.provisioner.pid, flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", adopter],
            env=dict(os.environ),  # as seen here (a library may have set more in C's environ)
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == -9, result.stderr[-2000:]
        assert int(result.stdout) == info["pid"]
        assert _gone(info["pid"], timeout=30), "the spare outlived the run that adopted it"
    finally:
        monkeypatch.setattr(spare_kernels, "_enabled", False)
        for entry in spare_kernels.registry_folder().glob("*.json"):
            spare_kernels.discard(json.loads(entry.read_text()), kill=True)


def test_an_unclaimed_spare_exits_by_itself_and_removes_its_files(registry, monkeypatch):
    monkeypatch.setenv(spare_kernels.MINUTES_VARIABLE, "0.02")  # 1.2 s
    info = _spawn()
    assert _gone(info["pid"], timeout=60)
    deadline = time.monotonic() + 10
    while Path(info["folder"]).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(info["folder"]).exists()
    assert list(registry.glob("*.json")) == []


def test_only_one_of_many_claimers_gets_a_spare(registry):
    info = _spawn()
    claims: list[dict | None] = []
    threads = [
        threading.Thread(target=lambda: claims.append(spare_kernels.claim_next("python3")))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [c["pid"] for c in claims if c] == [info["pid"]]
    spare_kernels.discard(info, kill=True)
    assert _gone(info["pid"])


def test_a_dead_spares_entry_is_removed_and_no_kernel_is_killed(registry, tmp_path):
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folder = tmp_path / "not-a-spare"
        folder.mkdir()
        mark = spare_kernels.fingerprint("python3")
        entry = registry / f"{mark}.{bystander.pid}.json"
        registry.mkdir(mode=0o700, exist_ok=True)
        # A live pid that is not the kernel named: a reused pid, say.
        entry.write_text(json.dumps({"pid": bystander.pid, "folder": str(folder)}))
        assert spare_kernels.claim_next("python3") is None
        assert not entry.exists()
        assert bystander.poll() is None, "an unrelated process was killed"
        assert folder.exists(), "a folder that is not a spare's was removed"
    finally:
        bystander.kill()
        bystander.wait()


def test_a_registry_others_can_write_to_turns_spares_off(registry):
    registry.mkdir(mode=0o700)
    registry.chmod(0o777)
    spare_kernels.spawn("python3", ["json"], kernels._socket_dir())
    assert list(registry.iterdir()) == []
    assert spare_kernels.claim_next("python3") is None


def test_a_process_leaves_at_most_one_spare_and_none_when_off(registry, monkeypatch):
    info = _spawn()
    monkeypatch.setattr(spare_kernels, "_spawned", False)
    spare_kernels.spawn("python3", ["json"], kernels._socket_dir())  # one already waits
    assert len(list(registry.glob("*.json"))) == 1
    monkeypatch.setenv(spare_kernels.MINUTES_VARIABLE, "0")
    assert spare_kernels.claim_next("python3") is None, "0 minutes: no spare is adopted"
    spare_kernels.discard(info, kill=True)


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_bad_minutes_value_is_refused_by_name(value, monkeypatch):
    monkeypatch.setenv(spare_kernels.MINUTES_VARIABLE, value)
    with pytest.raises(ValueError, match=f"TOOLKIT_SPARE_KERNEL_MINUTES .* got '{value}'"):
        spare_kernels.enable()


def test_papermill_loads_other_engines_only_when_asked_for():
    code = (
        "import sys\n"
        "from toolkit import kernels\n"
        "kernels.register_engine()\n"
        "print('matplotlib.pyplot' in sys.modules)\n"
        "from papermill.engines import papermill_engines\n"
        "print(papermill_engines.get_engine('profiling').__name__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.split() == ["False", "ProfilingEngine"]


def test_a_toolkit_run_adopts_the_spare_the_run_before_left(tmp_path):
    """Two `toolkit run`s: the second executes its steps in the kernel the first left, and
    its plan equals the first's."""
    root = tmp_path / "store"
    demo_data.write(["US"], n_products=30, root=str(root))
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"spares-{os.getpid()}"
    scratch.mkdir(mode=0o700)
    env = dict(
        os.environ,
        TOOLKIT_ROOT=str(root),
        TMPDIR=str(scratch),  # the registry lives in the temp folder: this test's own
        TOOLKIT_SPARE_KERNEL_MINUTES="2",
    )
    registry = scratch / f"toolkit-spares-{os.getuid()}"

    def toolkit_run() -> list[dict]:
        subprocess.run(
            [sys.executable, "-m", "toolkit.cli", "run", "--patch", "country=US", "--force"],
            env=env,
            cwd=PROJECT_DIR,
            check=True,
            capture_output=True,
            timeout=600,
        )
        return [json.loads(e.read_text()) for e in registry.glob("*.json")]

    try:
        (left,) = toolkit_run()
        (left_again,) = toolkit_run()
        assert left_again["pid"] != left["pid"]
        assert _gone(left["pid"]), "the adopted spare outlived the run that adopted it"
        assert not Path(left["folder"]).exists()
        exports = [
            pd.read_csv(path).drop(columns="run_id")
            for path in root.glob("cache/**/format_output/**/recommendations.csv")
        ]
        assert len(exports) == 2
        pd.testing.assert_frame_equal(exports[0], exports[1])
    finally:
        for entry in registry.glob("*.json"):
            spare_kernels.discard(json.loads(entry.read_text()), kill=True)
        subprocess.run(["rm", "-rf", str(scratch)], check=False)
