"""Whole-step limits: a step's time limit bounds its whole notebook, its memory limit its
kernel, and whatever way a step ends (a limit, a kill -9 of its process) its temporary
folders and kernel files do not outlive the next run. A one-step project of its own (a
probe notebook told what to do by the environment), real kernels, real Ploomber."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import nbformat
import psutil
import pytest
from helpers import PROJECT_DIR, TOOLKIT, toolkit, toolkit_env

from toolkit import config as config_mod
from toolkit.dag import kernels
from toolkit.data import storage
from toolkit.pricing import demo_data
from toolkit.runs import executors, runner
from toolkit.runs import store as runs

pytestmark = pytest.mark.slow  # kernels, Ploomber and whole runs

PROBE = """\
# %% tags=["parameters"]
upstream = None
product = None

# %%
import os, time
import numpy as np
print(os.getpid())

# %%
time.sleep(float(os.environ.get("PROBE_SLEEP", "0")))

# %%
time.sleep(float(os.environ.get("PROBE_SLEEP", "0")))

# %%
time.sleep(float(os.environ.get("PROBE_SLEEP", "0")))

# %%
held = np.ones(int(os.environ.get("PROBE_MB", "0")) * 2**20, dtype=np.uint8)
time.sleep(float(os.environ.get("PROBE_HOLD", "0")))
"""

PIPELINE = """\
meta:
  extract_upstream: true
  extract_product: false
executor:
  dotted_path: ploomber.executors.Serial
  build_in_subprocess: false
tasks:
  - source: notebooks/probe.py
    static_analysis: strict
    executor_params:
      kernel_manager_class: toolkit.dag.kernels.ReusedKernelManager
      execution_timeout: "{{step_timeout}}"
      progress_bar: false
    on_failure: toolkit.dag.pipeline.set_aside_failed_notebook
    product:
      nb: "{{build_dir}}/probe/probe.ipynb"
"""


@pytest.fixture
def probe_project(tmp_path) -> Path:
    """A project whose only step is the probe notebook."""
    target = tmp_path / "project"
    (target / "notebooks").mkdir(parents=True)
    shutil.copytree(PROJECT_DIR / "configs", target / "configs")
    shutil.copy(PROJECT_DIR / "env.yaml", target / "env.yaml")
    (target / "pipeline.yaml").write_text(PIPELINE)
    (target / "notebooks" / "probe.py").write_text(PROBE)
    return target


@pytest.fixture
def private_tmp(monkeypatch):
    """A short private TMPDIR (kernel sockets need short paths), for this process too."""
    folder = tempfile.mkdtemp(prefix="tk-", dir="/tmp")  # noqa: S108
    monkeypatch.setenv("TMPDIR", folder)
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() caches its first answer
    try:
        yield Path(folder)
    finally:
        kernels.shutdown_all()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def in_probe_project(probe_project, private_tmp, local_root, monkeypatch):
    monkeypatch.setenv("TOOLKIT_PROJECT", str(probe_project))
    kernels.reuse(True)
    return local_root


def execute_probe(root: str, run_id: str, timeout: int, memory_mb: int = 0, end=True) -> dict:
    """The probe step of run ``run_id`` executed in this process; with ``end``, the run
    then ends (its workspace and idle kernels go)."""
    resolved = config_mod.resolve()
    request = {
        "root": root,
        "run_id": run_id,
        "step": "probe",
        "env": runner.ploomber_env(resolved, run_id=run_id),
        "key": f"key-{run_id}",
        "attempt": f"{run_id}.1",
        "timeout": timeout,
        "memory_mb": memory_mb,
        "identity": {"market": "US", "period": "2026-11", "category": None},
        "upstream": {},
        "kernel": "reuse",
    }
    try:
        return executors.execute_step(request)
    finally:
        if end:
            executors.release_run(run_id)


def notebook_at(url: str):
    return nbformat.reads(storage.read_bytes(url).decode(), as_version=4)


def cells_with(nb, text: str) -> list:
    return [cell for cell in nb.cells if cell.cell_type == "code" and text in cell.source]


def kernel_pid(nb) -> int:
    [cell] = cells_with(nb, "print(os.getpid())")
    return int("".join(out.get("text", "") for out in cell.outputs))


def toolkit_folders(folder: Path, pid: int | None = None) -> list[str]:
    """The toolkit's temporary folders in ``folder`` (of process ``pid``)."""
    return sorted(p.name for p in folder.glob("toolkit-*" if pid is None else f"toolkit-*-{pid}-*"))


def test_a_step_over_its_time_limit_fails_though_each_cell_is_within_it(
    in_probe_project, private_tmp, monkeypatch
):
    monkeypatch.setenv("PROBE_SLEEP", "3")  # three cells of 3 s, each within 5 s
    started = time.monotonic()
    result = execute_probe(in_probe_project, "slow", timeout=5, end=False)
    elapsed = time.monotonic() - started
    assert kernels.live_kernels() == 0, "a kernel stopped over its limit was kept"
    executors.release_run("slow")
    assert result["status"] == "failed", result
    assert result["error"] == (
        "step probe exceeded its time limit of 5 s (execution.step_timeout_seconds)"
    )
    assert elapsed < 5 + 25, elapsed  # the limit, plus building the DAG and slack
    partial = notebook_at(result["debug"]["notebook"])
    assert cells_with(partial, "PROBE_SLEEP")[-1].execution_count is None, "the last cell ran"
    stopped = [c for c in cells_with(partial, "") if "KeyboardInterrupt" in str(c.outputs)]
    assert len(stopped) == 1  # the cell where the time ran out, interrupted
    assert toolkit_folders(private_tmp) == []


def test_a_step_over_its_memory_limit_fails_and_its_kernel_is_not_reused(
    in_probe_project, private_tmp, monkeypatch
):
    monkeypatch.setenv("PROBE_MB", "400")
    monkeypatch.setenv("PROBE_HOLD", "30")  # would hold 400 MB for 30 s
    started = time.monotonic()
    result = execute_probe(in_probe_project, "big", timeout=60, memory_mb=200, end=False)
    assert time.monotonic() - started < 25
    assert result["status"] == "failed", result
    assert result["error"] == "step probe used more than 200 MB (execution.step_memory_mb)"
    killed = kernel_pid(notebook_at(result["debug"]["notebook"]))
    assert not psutil.pid_exists(killed) or psutil.Process(killed).status() == "zombie"
    assert kernels.live_kernels() == 0
    monkeypatch.setenv("PROBE_MB", "0")
    monkeypatch.setenv("PROBE_HOLD", "0")
    after = execute_probe(in_probe_project, "big", timeout=60, memory_mb=200)  # same run
    assert after["status"] == "succeeded", after
    assert kernel_pid(notebook_at(after["outputs"]["nb"])) != killed
    assert toolkit_folders(private_tmp) == []


def run_record(root, output: str):
    run_id = next(line.split()[1] for line in output.splitlines() if line.startswith("run "))
    return runs.load(run_id, root=str(root))


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "store"
    demo_data.write(["US"], n_products=12, root=str(root))
    return root


def test_the_memory_limit_comes_from_the_config(probe_project, store, private_tmp):
    env = toolkit_env(store, TMPDIR=str(private_tmp), PROBE_MB="400", PROBE_HOLD="30")
    result = toolkit(
        ["run", "--patch", "execution.step_memory_mb=200"], env, check=False, cwd=probe_project
    )
    assert result.returncode == 1, result.stderr[-3000:]
    probe = run_record(store, result.stdout).steps["probe"]
    assert (probe.status, probe.error) == (
        "failed",
        "step probe used more than 200 MB (execution.step_memory_mb)",
    )
    assert toolkit_folders(private_tmp) == []


def test_the_time_limit_bounds_a_whole_step_on_dask(probe_project, store, private_tmp):
    env = toolkit_env(store, TMPDIR=str(private_tmp), PROBE_SLEEP="4")  # 12 s in three cells
    patches = ["execution.executor=dask", "execution.workers=1"]
    patches += ["execution.step_timeout_seconds=10"]
    result = toolkit(
        ["run", *[x for p in patches for x in ("--patch", p)]], env, check=False, cwd=probe_project
    )
    assert result.returncode == 1, result.stderr[-3000:]
    probe = run_record(store, result.stdout).steps["probe"]
    assert (probe.status, probe.error) == (
        "failed",
        "step probe exceeded its time limit of 10 s (execution.step_timeout_seconds)",
    )
    assert probe.duration_s < 10 + 20, probe.duration_s
    assert toolkit_folders(private_tmp) == []


def run_probe(args, env, cwd) -> str:
    """A `toolkit run` of the probe project; its status. (Its exit code says little: the
    summary printed after a run reads steps this project does not have.)"""
    result = toolkit(["run", *args], env, check=False, cwd=cwd)
    return run_record(env["TOOLKIT_ROOT"], result.stdout).status


def test_after_a_kill_9_mid_step_a_later_run_leaves_nothing_of_the_dead_process(
    probe_project, store, private_tmp
):
    env = toolkit_env(store, TMPDIR=str(private_tmp), PROBE_SLEEP="0")
    assert run_probe([], env, probe_project) == "succeeded"  # published: later runs reuse it
    killed = subprocess.Popen(
        [*TOOLKIT, "run", "--force"],
        cwd=probe_project,
        env={**env, "PROBE_SLEEP": "120"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(private_tmp.glob(f"toolkit-run-{killed.pid}-*/**/probe.ipynb")):
            assert killed.poll() is None and time.monotonic() < deadline, "the step never ran"
            time.sleep(0.1)  # papermill writes the notebook once its first cell runs
        [kernel] = psutil.Process(killed.pid).children()
        killed.send_signal(signal.SIGKILL)
    finally:
        killed.kill()
        killed.wait()
    left = toolkit_folders(private_tmp, killed.pid)
    assert {name.split("-")[1] for name in left} == {"run", "kernel"}, left
    _, alive = psutil.wait_procs([kernel], timeout=30)
    assert alive == [], "the kernel outlived its killed process"

    # A run that executes nothing (its step is reused) still sweeps what the dead one left.
    assert run_probe([], env, probe_project) == "succeeded"
    assert toolkit_folders(private_tmp) == [], "the dead run's folders are left"
