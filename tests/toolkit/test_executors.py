"""One step executed from plain data: by toolkit's notebook runner, or by Ploomber."""

from __future__ import annotations

import json
import os

import pandas as pd

from toolkit import config as config_mod
from toolkit import demo_data, executors, io, pipeline, runner, storage


def request_for(root: str, step: str, run_id: str, upstream: dict) -> dict:
    resolved = config_mod.resolve()
    return {
        "root": root,
        "run_id": run_id,
        "step": step,
        "env": runner.ploomber_env(resolved, run_id=run_id),
        "key": f"key-{run_id}",
        "attempt": f"{run_id}.1",
        "timeout": 600,
        "identity": {"market": "US", "period": "2026-11", "category": None},
        "upstream": upstream,
        "kernel": "fresh",
        "source": f"notebooks/{step}.py",
    }


def code_and_outputs(url: str) -> list:
    cells = json.loads(storage.read_bytes(url))["cells"]
    return [(c["source"], c.get("outputs")) for c in cells if "injected-parameters" not in str(c)]


def test_a_step_ploomber_executes_gives_what_the_light_runner_gives(local_root, monkeypatch):
    demo_data.write(["US"], n_products=12, root=local_root)
    light = executors.execute_step(request_for(local_root, "load_transform", "light", {}))
    assert light["status"] == "succeeded", light

    def ploomber_only(name, env=None, project_dir=None):
        raise pipeline.NeedsPloomber("this test")

    monkeypatch.setattr(pipeline, "notebook_task", ploomber_only)
    ploomber = executors.execute_step(request_for(local_root, "load_transform", "ploomber", {}))
    assert ploomber["status"] == "succeeded", ploomber
    assert set(light["outputs"]) == set(ploomber["outputs"]) == {"nb", "data", "catalog"}
    for name in ("data", "catalog"):
        pd.testing.assert_frame_equal(
            io.read_unchecked(light["outputs"][name]), io.read_unchecked(ploomber["outputs"][name])
        )
    assert code_and_outputs(light["outputs"]["nb"]) == code_and_outputs(ploomber["outputs"]["nb"])


def test_kernels_get_one_library_thread_unless_the_operator_chose(local_root, monkeypatch):
    for name in executors.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    demo_data.write(["US"], n_products=6, root=local_root)
    request = request_for(local_root, "load_transform", "threads", {})
    request["source"] = None  # no prestart: the engine starts the kernel
    assert executors.execute_step(request)["status"] == "succeeded"
    assert os.environ["OPENBLAS_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == "1"
    assert os.environ["OMP_NUM_THREADS"] == "3"


def test_a_step_whose_upstream_output_is_gone_fails_naming_it(local_root):
    missing = storage.join(local_root, "cache", "nowhere", "weekly_sales.parquet")
    upstream = {"load_transform": {"data": missing}}
    result = executors.execute_step(
        request_for(local_root, "identify_underperformers", "gone", upstream)
    )
    assert result["status"] == "failed"
    assert "weekly_sales.parquet" in result["error"]
