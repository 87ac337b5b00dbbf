"""One step executed from plain data, by Ploomber, in a private workspace."""

from __future__ import annotations

import json
import os

from toolkit import config as config_mod
from toolkit.data import io, storage
from toolkit.pricing import demo_data
from toolkit.runs import executors, runner


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
    }


def code_and_outputs(url: str) -> list:
    cells = json.loads(storage.read_bytes(url))["cells"]
    return [(c["source"], c.get("outputs")) for c in cells if "injected-parameters" not in str(c)]


def test_a_step_executes_through_ploomber_and_publishes_its_outputs(local_root):
    demo_data.write(["US"], n_products=12, root=local_root)
    result = executors.execute_step(request_for(local_root, "load_transform", "step-1", {}))
    assert result["status"] == "succeeded", result
    assert set(result["outputs"]) == {"nb", "data", "catalog", "actuals"}
    assert len(io.read_unchecked(result["outputs"]["data"])) > 0
    cells = json.loads(storage.read_bytes(result["outputs"]["nb"]))["cells"]
    injected = [c for c in cells if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(injected) == 1 and "step-1" not in "".join(injected[0]["source"])
    assert '"market": "US"' in "".join(injected[0]["source"])


def test_a_step_whose_upstream_output_is_gone_fails_naming_it(local_root):
    missing = storage.join(local_root, "cache", "nowhere", "weekly_sales.parquet")
    upstream = {"load_transform": {"data": missing}}
    result = executors.execute_step(
        request_for(local_root, "identify_underperformers", "gone", upstream)
    )
    assert result["status"] == "failed"
    assert "weekly_sales.parquet" in result["error"]


def test_a_runs_steps_share_one_workspace_that_the_runs_end_removes(
    local_root, tmp_path, monkeypatch
):
    import tempfile

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() caches its first answer
    demo_data.write(["US"], n_products=12, root=local_root)
    first = executors.execute_step(request_for(local_root, "load_transform", "shared", {}))
    assert first["status"] == "succeeded", first
    upstream = {"load_transform": first["outputs"]}
    second = executors.execute_step(
        request_for(local_root, "identify_underperformers", "shared", upstream)
    )
    assert second["status"] == "succeeded", second
    [workspace] = tmp_path.glob(f"toolkit-run-{os.getpid()}-*")
    assert (workspace / "market=US").is_dir()
    executors.release_run("shared")
    assert not workspace.exists()
