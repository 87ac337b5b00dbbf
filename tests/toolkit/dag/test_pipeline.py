"""Glue to pipeline.yaml: step parameters, the light planner, Ploomber's File client."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import PROJECT_DIR
from ploomber.products import File

from toolkit import config as config_mod
from toolkit.dag import client as ploomber_storage
from toolkit.dag import pipeline
from toolkit.data import storage
from toolkit.dev import notebooks
from toolkit.runs import cache, runner


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
    client = ploomber_storage.StorageClient()
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


@pytest.mark.parametrize("root_fixture", ["local_root", "s3_root"])
def test_client_downloads_a_folder_product_and_tells_files_from_folders(
    root_fixture, request, tmp_path
):
    root = request.getfixturevalue(root_fixture)
    remote = storage.join(root, "builds", "market=US", "period=2026-11", "category=all", "plots")
    storage.write_bytes(storage.join(remote, "a.png"), b"a")
    storage.write_bytes(storage.join(remote, "b.png"), b"b")
    local = tmp_path / "build" / "market=US" / "period=2026-11" / "category=all" / "plots"
    client = ploomber_storage.StorageClient()
    assert client._is_dir(remote) and not client._is_file(remote)
    assert client._is_file(storage.join(remote, "a.png"))
    assert not client._is_dir(storage.join(remote, "none"))
    client.download(str(local))
    assert sorted(p.name for p in local.iterdir()) == ["a.png", "b.png"]
    assert (local / "b.png").read_bytes() == b"b"


def test_client_sets_a_failed_notebook_aside(local_root, tmp_path):
    folder = tmp_path / "market=US" / "period=2026-11" / "category=all" / "optimize"
    folder.mkdir(parents=True)
    nb = folder / "optimize.ipynb"
    nb.write_text("{}")
    ploomber_storage.StorageClient().upload(str(nb))  # no metadata: Ploomber's failure path
    base = storage.join(
        local_root, "builds", "market=US", "period=2026-11", "category=all", "optimize"
    )
    assert not storage.exists(storage.join(base, "optimize.ipynb"))
    assert storage.exists(storage.join(base, "optimize.failed.ipynb"))


def test_pipeline_yaml_names_the_storage_client(local_root):
    dag = pipeline.load_dag({})
    assert isinstance(dag.clients[File], ploomber_storage.StorageClient)


def ploomber_key_inputs(env: dict, project_dir: Path = PROJECT_DIR) -> list[tuple]:
    """What `cache.step_key` gets for each step of the DAG Ploomber builds."""
    dag = pipeline.load_dag(env, project_dir=project_dir)
    inputs = []
    for name in dag:
        task = dag[name]
        params = json.loads(json.dumps(task.params.to_json_serializable(params_only=True)))
        params.get("run", {}).pop("root", None)
        params.get("config", {}).pop("run_id", None)
        inputs.append((name, Path(str(task.source.loc)), sorted(task.upstream), params))
    return inputs


def planned_key_inputs(env: dict, project_dir: Path = PROJECT_DIR) -> list[tuple]:
    """What `toolkit run` feeds `cache.step_key`."""
    return [
        (step.name, step.source, sorted(step.upstream), runner._key_params(step))
        for step in pipeline.plan(env, project_dir=project_dir)
    ]


def step_keys(inputs: list[tuple]) -> dict[str, str]:
    keys: dict[str, str] = {}
    for name, source, upstream, params in inputs:
        keys[name] = cache.step_key(
            name, source.read_text(), params, {u: keys[u] for u in upstream}, {}
        )
    return keys


def run_env(tmp_path, patches=(), run_id="") -> dict:
    """The env `toolkit run` plans with: the run's frozen config as its only layer."""
    resolved = config_mod.resolve(patches=patches)
    frozen = tmp_path / "config.yaml"
    frozen.write_text(yaml.safe_dump(resolved.as_dict(), sort_keys=False))
    cfg = resolved.config
    return {
        "country": cfg.country,
        "period": cfg.period,
        "category": cfg.category or "all",
        "configs": json.dumps([str(frozen)]),
        "patches": "[]",
        "run_id": run_id,
        "build_dir": str(tmp_path / "build"),
    }


def test_the_plan_is_ploombers_dag_in_run_order(tmp_path, local_root):
    env = run_env(tmp_path, ["optimize.weights.margin=0.5"])
    planned = planned_key_inputs(env)
    assert [row[0] for row in planned] == list(pipeline.STEPS)
    assert sorted(planned) == sorted(ploomber_key_inputs(env))
    assert dict((row[0], row[2]) for row in planned)["forecast"] == [
        "identify_underperformers",
        "load_transform",
    ]


def test_a_config_patch_changes_the_keys_of_exactly_the_steps_that_read_it(tmp_path, local_root):
    base = step_keys(planned_key_inputs(run_env(tmp_path)))
    patched = step_keys(planned_key_inputs(run_env(tmp_path, ["optimize.weights.margin=0.5"])))
    changed = {name for name in base if base[name] != patched[name]}
    assert changed == {"optimize", "format_output"}


PLAN_WITHOUT_PLOOMBER = (
    "import json, sys\n"
    "from toolkit.dag import pipeline\n"
    "steps = pipeline.plan(json.loads(sys.argv[1]))\n"
    "print(json.dumps([s.name for s in steps]))\n"
    "print('ploomber' in sys.modules)\n"
)


def plan_in_a_process(env: dict, cwd: Path) -> tuple[list[str], bool]:
    result = subprocess.run(
        [sys.executable, "-c", PLAN_WITHOUT_PLOOMBER, json.dumps(env)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    names, imported = result.stdout.splitlines()
    return json.loads(names), imported == "True"


def test_a_kept_plan_is_reused_without_ploomber_until_a_file_that_decides_it_changes(
    project_copy, tmp_path, local_root
):
    shutil.copytree(PROJECT_DIR / "configs", project_copy / "configs")
    env = {"build_dir": str(tmp_path / "build")}
    assert plan_in_a_process(env, project_copy) == (list(pipeline.STEPS), True)
    assert plan_in_a_process(env, project_copy) == (list(pipeline.STEPS), False)
    assert len(list((project_copy / pipeline.PLAN_FOLDER).glob("*.json"))) == 1
    for changed in ("notebooks/forecast.py", "configs/defaults.yaml", "pipeline.yaml"):
        path = project_copy / changed
        path.write_text(path.read_text() + "\n# edited\n")
        assert plan_in_a_process(env, project_copy) == (list(pipeline.STEPS), True), changed
    assert plan_in_a_process({**env, "country": "DE"}, project_copy)[1] is True


def test_a_plan_for_a_project_grown_by_new_step_has_the_new_step(project_copy, local_root):
    shutil.copytree(PROJECT_DIR / "configs", project_copy / "configs")
    (project_copy / "toolkit" / "data").mkdir(parents=True)
    shutil.copy(PROJECT_DIR / "toolkit" / "data" / "schemas.py", project_copy / "toolkit" / "data")
    before = [s.name for s in pipeline.plan({}, project_copy)]
    notebooks.new_step("price_check", after="optimize", project_dir=project_copy)
    after = pipeline.plan({}, project_copy)
    names = [s.name for s in after]
    assert sorted(names) == sorted([*before, "price_check"])
    assert names.index("price_check") > names.index("optimize")
    assert next(s for s in after if s.name == "price_check").upstream == ("optimize",)


def test_a_cycle_is_named_by_ploomber(project_copy, local_root):
    shutil.copytree(PROJECT_DIR / "configs", project_copy / "configs")
    notebook = project_copy / "notebooks" / "load_transform.py"
    notebook.write_text(notebook.read_text().replace("upstream = None", 'upstream = ["optimize"]'))
    with pytest.raises(Exception, match="(?i)cycle"):
        pipeline.plan({}, project_copy)
