"""Glue to pipeline.yaml: step parameters and Ploomber's File client over fsspec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolkit import pipeline, storage


def test_each_step_gets_only_its_section():
    cfg = pipeline.step_config("optimize", country="DE")
    assert set(cfg) == {"weights", "constraints"}
    assert cfg["constraints"]["min_margin"] == 0.2  # markets/DE.yaml
    assert set(pipeline.step_config("forecast")) == {"horizon", "backtest_weeks", "season_length"}
    assert pipeline.step_config("a_new_step") == {}


def test_run_identity_and_patches_from_ploomber_env_strings(local_root):
    run = pipeline.run_identity(country="NO", patches="optimize.weights.margin=0.7;category=toys")
    assert run == {"market": "NO", "period": "2026-11", "category": "toys", "root": local_root}
    cfg = pipeline.step_config(
        "optimize", country="NO", patches=json.dumps(["optimize.weights.margin=0.7"])
    )
    assert cfg["weights"]["margin"] == 0.7


def test_format_output_names_a_build_after_its_config():
    a = pipeline.step_config("format_output", country="US")["run_id"]
    b = pipeline.step_config("format_output", country="DE")["run_id"]
    assert a.startswith("build-") and a != b
    assert pipeline.step_config("format_output", run_id="20261129-x")["run_id"] == "20261129-x"


@pytest.mark.parametrize("root_fixture", ["local_root", "s3_root"])
def test_client_uploads_data_before_its_metadata(root_fixture, request, tmp_path):
    root = request.getfixturevalue(root_fixture)
    folder = tmp_path / "build" / "market=US" / "period=2026-11" / "category=all" / "forecast"
    folder.mkdir(parents=True)
    data, meta = folder / "forecasts.parquet", folder / ".forecasts.parquet.metadata"
    data.write_bytes(b"data")
    meta.write_text("{}")
    client = pipeline.StorageClient()
    uploaded = []
    original = storage.upload_file

    def spy(local, url):
        uploaded.append(Path(local).name)
        original(local, url)

    request.getfixturevalue("monkeypatch").setattr(storage, "upload_file", spy)
    client.upload(str(meta))  # Ploomber's order: sidecar first...
    assert uploaded == []  # ...held back until the data is up
    client.upload(str(data))
    assert uploaded == ["forecasts.parquet", ".forecasts.parquet.metadata"]
    remote = storage.join(
        root,
        "builds",
        "market=US",
        "period=2026-11",
        "category=all",
        "forecast",
        "forecasts.parquet",
    )
    assert storage.read_bytes(remote) == b"data"


def test_client_sets_a_failed_notebook_aside(local_root, tmp_path):
    folder = tmp_path / "market=US" / "period=2026-11" / "category=all" / "optimize"
    folder.mkdir(parents=True)
    nb = folder / "optimize.ipynb"
    nb.write_text("{}")
    pipeline.StorageClient().upload(str(nb))  # no metadata: Ploomber's failure path
    base = storage.join(
        local_root, "builds", "market=US", "period=2026-11", "category=all", "optimize"
    )
    assert not storage.exists(storage.join(base, "optimize.ipynb"))
    assert storage.exists(storage.join(base, "optimize.failed.ipynb"))
