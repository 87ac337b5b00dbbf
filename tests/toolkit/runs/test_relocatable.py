"""Relocatable records: a record names its files relative to the storage root, so a store
copied to another folder or synced to S3 still browses and resumes."""

from __future__ import annotations

import json
import shutil
import signal

import pytest
from helpers import new_bucket, toolkit, toolkit_env, wait_for
from logic import browse, page_data

from toolkit.data import storage
from toolkit.pricing import demo_data
from toolkit.runs import store as runs
from toolkit.runs.record import RunRecord, StepRecord

RUN_ID = "20261204-101010-US-2026-11-abcdef"


def finished_record(root: str) -> RunRecord:
    folder = f"{root}/cache/market=US/period=2026-11/category=all/forecast/k/{RUN_ID}.1"
    return RunRecord(
        id=RUN_ID,
        status="failed",
        market="US",
        period="2026-11",
        root=root,
        created_at=runs.now(),
        config_url=f"{root}/runs/{RUN_ID}/config.yaml",
        steps={
            "forecast": StepRecord(
                status="succeeded",
                outputs={"data": f"{folder}/forecasts.parquet"},
                url=folder,
            ),
            "optimize": StepRecord(
                status="failed",
                debug={
                    "notebook": f"{root}/runs/{RUN_ID}/steps/optimize/1/optimize.ipynb",
                    "reports": [f"{root}/runs/{RUN_ID}/steps/optimize/1/plan.validation.json"],
                },
            ),
        },
    )


def urls_of(record: RunRecord) -> list[str]:
    forecast, optimize = record.steps["forecast"], record.steps["optimize"]
    return [
        record.config_url,
        forecast.url,
        *forecast.outputs.values(),
        optimize.debug["notebook"],
        *optimize.debug["reports"],
    ]


def test_a_record_stores_relative_urls_and_reads_them_against_its_new_root(tmp_path):
    first, copy = str(tmp_path / "first"), str(tmp_path / "copy")
    runs.save(finished_record(first), first)
    stored = json.loads(storage.read_bytes(runs.record_url(RUN_ID, first)))
    assert stored["schema_version"] == 3
    assert stored["config_url"] == f"runs/{RUN_ID}/config.yaml"
    assert stored["steps"]["forecast"]["url"].startswith("cache/market=US/")

    shutil.copytree(first, copy)
    shutil.rmtree(first)
    record = runs.load(RUN_ID, copy)
    assert record.root == copy
    assert urls_of(record) == urls_of(finished_record(copy))


def test_a_version_2_record_in_a_copied_store_reads_against_the_copy(tmp_path):
    old_root, copy = "/somewhere/else/store", str(tmp_path / "copy")
    stored = finished_record(old_root).model_dump(mode="json")
    stored["schema_version"] = 2  # absolute URLs, as version 2 wrote them
    stored["steps"]["forecast"]["outputs"]["outside"] = "/elsewhere/x.parquet"
    storage.write_bytes(runs.record_url(RUN_ID, copy), json.dumps(stored).encode())

    record = runs.load(RUN_ID, copy)
    assert record.schema_version == 2 and record.root == copy
    # A URL that was never under the run's root is left as it is (and not browsable).
    assert record.steps["forecast"].outputs.pop("outside") == "/elsewhere/x.parquet"
    assert urls_of(record) == urls_of(finished_record(copy))
    with pytest.raises(browse.OutsideRoot):
        browse.check_url(copy, "/elsewhere/x.parquet")

    runs.save(record, copy)  # rewritten as version 3
    again = json.loads(storage.read_bytes(runs.record_url(RUN_ID, copy)))
    assert again["schema_version"] == 3 and again["config_url"] == f"runs/{RUN_ID}/config.yaml"


def test_a_record_synced_to_s3_reads_against_the_bucket(s3_root, tmp_path):
    local = str(tmp_path / "store")
    runs.save(finished_record(local), local)
    storage.write_bytes(
        runs.record_url(RUN_ID, s3_root), storage.read_bytes(runs.record_url(RUN_ID, local))
    )
    record = runs.load(RUN_ID, s3_root)
    assert all(url.startswith(f"{s3_root}/") for url in urls_of(record))
    assert [r.id for r in runs.list_runs(s3_root)] == [RUN_ID]


@pytest.mark.slow
def test_a_copied_or_synced_store_browses_and_resumes(tmp_path, s3_env):
    first = str(tmp_path / "first")
    demo_data.write(["US"], n_products=30, root=first)
    crash = toolkit_env(first, TOOLKIT_CRASH_AT="optimize:after-publish")
    crashed = toolkit(["run"], crash, check=False)
    assert crashed.returncode == -signal.SIGKILL
    run_id = crashed.stdout.split()[1]

    copy = str(tmp_path / "copy")
    shutil.copytree(first, copy)
    bucket = new_bucket(s3_env, "relocated-store")
    fs, path = storage.filesystem(bucket)
    fs.put(first + "/", path + "/", recursive=True)
    shutil.rmtree(first)  # nothing may still point there

    for root in (copy, bucket):
        env = toolkit_env(root)
        shown = json.loads(toolkit(["runs", "show", run_id, "--json"], env).stdout)
        forecast = shown["steps"]["forecast"]["outputs"]
        assert forecast and all(url.startswith(f"{root}/cache/") for url in forecast.values())
        record = runs.load(run_id, root)
        files = page_data.output_files(record, root)
        assert {f["step"] for f in files} == {
            "load_transform",
            "identify_underperformers",
            "forecast",
        }
        table = record.steps["forecast"].outputs["accuracy"]
        assert browse.read_output(root, table)[:4] == b"PAR1"
        logs = toolkit(["runs", "logs", run_id, "--step", "forecast"], env).stdout
        assert "forecast notebook output" in logs

        # The crashed run's lease expires in the copy too; then it resumes there.
        wait_for(lambda at=root: runs.load(run_id, at).status == "interrupted", timeout=60)
        toolkit(["resume", run_id], env)
        resumed = runs.load(run_id, root)
        assert resumed.status == "succeeded"
        for name, step in resumed.steps.items():
            assert all(url.startswith(f"{root}/cache/") for url in step.outputs.values()), name
