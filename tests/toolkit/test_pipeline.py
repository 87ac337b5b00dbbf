"""Glue to pipeline.yaml: step parameters, the light planner, Ploomber's File client."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from toolkit import cache, notebooks, pipeline, ploomber_storage, runner, storage
from toolkit import config as config_mod

PROJECT_DIR = Path(__file__).resolve().parents[2]


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


def test_storage_client_is_still_reachable_through_the_pipeline_module():
    assert pipeline.StorageClient is ploomber_storage.StorageClient
    assert isinstance(pipeline.storage_client(), ploomber_storage.StorageClient)
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        _ = pipeline.NoSuchThing


# ---------------------------------------------------------------------------
# The light planner against Ploomber's DAG (the code path `toolkit run` had before)
# ---------------------------------------------------------------------------


def ploomber_key_inputs(env: dict, project_dir: Path = PROJECT_DIR) -> list[tuple]:
    """What `toolkit run` fed `cache.step_key` when it planned with Ploomber's DAG."""
    dag = pipeline.load_dag(env, project_dir=project_dir)
    names, order = list(dag), []
    while len(order) < len(names):
        order.append(
            next(n for n in names if n not in order and all(u in order for u in dag[n].upstream))
        )
    inputs = []
    for name in order:
        task = dag[name]
        params = task.params.to_json_serializable(params_only=True)
        params = json.loads(json.dumps(params, default=str))
        params.get("run", {}).pop("root", None)
        params.get("config", {}).pop("run_id", None)
        inputs.append((name, Path(str(task.source.loc)), sorted(task.upstream), params))
    return inputs


def planned_key_inputs(env: dict, project_dir: Path = PROJECT_DIR) -> list[tuple]:
    """What `toolkit run` feeds `cache.step_key` now."""
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


def assert_plans_agree(env: dict, project_dir: Path = PROJECT_DIR) -> list[tuple]:
    """The same steps with the same key inputs and keys (the order is checked apart: the
    old path took networkx's order, which only matches pipeline.yaml order in a chain)."""
    old, new = ploomber_key_inputs(env, project_dir), planned_key_inputs(env, project_dir)
    old_by_name, new_by_name = {row[0]: row for row in old}, {row[0]: row for row in new}
    assert new_by_name.keys() == old_by_name.keys()
    for name, (_, source, upstream, params) in new_by_name.items():
        assert (source, upstream) == old_by_name[name][1:3], name
        # Byte for byte, key order included: the keys of cached outputs must not change.
        assert json.dumps(params) == json.dumps(old_by_name[name][3]), name
    assert step_keys(new) == step_keys(old)
    return new


@pytest.fixture
def spy_fallback(monkeypatch):
    """Records each time the planner hands pipeline.yaml to Ploomber."""
    calls = []
    original = pipeline._ploomber_steps

    def spy(env, project_dir):
        calls.append(project_dir)
        return original(env, project_dir)

    monkeypatch.setattr(pipeline, "_ploomber_steps", spy)
    return calls


def run_env(tmp_path, patches=(), run_id="20261129-000000-US-2026-11-abcdef") -> dict:
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


@pytest.mark.parametrize(
    "make_env",
    [
        pytest.param(lambda tmp: {}, id="env.yaml"),
        pytest.param(lambda tmp: run_env(tmp), id="run-default"),
        pytest.param(
            lambda tmp: run_env(tmp, ["optimize.weights.margin=0.5"]), id="run-margin-patch"
        ),
        pytest.param(lambda tmp: run_env(tmp, ["country=NO"]), id="run-NO"),
        pytest.param(
            lambda tmp: runner.ploomber_env(
                config_mod.resolve(patches=["country=DE", "forecast.horizon=6"]),
                patches=["country=DE", "forecast.horizon=6"],
                run_id="r-1",
            ),
            id="patches-DE",
        ),
    ],
)
def test_light_plan_keys_steps_exactly_as_ploombers_dag(
    make_env, tmp_path, local_root, spy_fallback
):
    planned = assert_plans_agree(make_env(tmp_path))
    assert not spy_fallback  # read without Ploomber
    assert [row[0] for row in planned] == list(pipeline.STEPS)
    assert [row[0] for row in planned] == [
        row[0] for row in ploomber_key_inputs(make_env(tmp_path))
    ]
    assert dict((row[0], row[2]) for row in planned)["forecast"] == [
        "identify_underperformers",
        "load_transform",
    ]


def test_a_config_patch_changes_the_keys_of_exactly_the_steps_that_read_it(tmp_path, local_root):
    base = step_keys(planned_key_inputs(run_env(tmp_path)))
    patched = step_keys(planned_key_inputs(run_env(tmp_path, ["optimize.weights.margin=0.5"])))
    changed = {name for name in base if base[name] != patched[name]}
    assert changed == {"optimize", "format_output"}


def test_importing_and_planning_never_import_ploomber(local_root):
    script = (
        "import sys\n"
        "from toolkit import pipeline, runner\n"
        "assert 'ploomber' not in sys.modules, 'import'\n"
        "steps = pipeline.plan({})\n"
        "assert [s.name for s in steps] == list(pipeline.STEPS)\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'ploomber'], 'plan'\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout == "ok\n", result.stderr[-2000:]


# ---------------------------------------------------------------------------
# Project copies: what the planner reads itself, and what it hands to Ploomber
# ---------------------------------------------------------------------------


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert text.count(old) >= count, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, count))


def explicit_upstream(project: Path) -> None:
    """meta.extract_upstream off and each task's upstream written in pipeline.yaml."""
    spec = project / "pipeline.yaml"
    edit(spec, "extract_upstream: true", "extract_upstream: false")
    for step, upstream in {
        "identify_underperformers": "load_transform",
        "forecast": "[identify_underperformers, load_transform]",
        "optimize": "[forecast]",
        "format_output": "[optimize, load_transform]",
    }.items():
        edit(
            spec,
            f"- source: notebooks/{step}.py\n",
            f"- source: notebooks/{step}.py\n    upstream: {upstream}\n",
        )


HANDLED = {
    "explicit-upstream": explicit_upstream,
    "task-name": lambda project: edit(
        project / "pipeline.yaml",
        "- source: notebooks/format_output.py\n",
        "- source: notebooks/format_output.py\n    name: deliver\n",
    ),
    # Ploomber casts every value it reads: "0.5" is a float and "true" a bool to it.
    "plain-params": lambda project: edit(
        project / "pipeline.yaml",
        "        step: optimize\n",
        "        step: optimize\n"
        '      label: "{{country}}-{{ period }}"\n'
        '      threshold: "0.5"\n'
        '      strict: "true"\n'
        '      picks: ["1", "a", "None"]\n'
        "      nothing: null\n",
    ),
}

FALLBACK = {
    "task-key": (
        lambda project: edit(
            project / "pipeline.yaml",
            "    static_analysis: strict\n",
            "    static_analysis: strict\n    executor_params:\n      log_output: true\n",
        ),
        "task 'notebooks/load_transform.py' key\\(s\\) executor_params",
    ),
    "jinja-filter": (
        lambda project: edit(
            project / "pipeline.yaml", "market={{country}}", "market={{ country | upper }}", 3
        ),
        "is a Jinja template beyond",
    ),
    "computed-upstream": (
        lambda project: edit(
            project / "notebooks" / "forecast.py",
            'upstream = ["load_transform", "identify_underperformers"]',
            'upstream = ["load_transform"] + ["identify_underperformers"]',
        ),
        "forecast.py: upstream is not a literal",
    ),
    "env-placeholder": (
        lambda project: edit(project / "env.yaml", 'run_id: ""', 'run_id: "{{user}}-build"'),
        "env value run_id is itself a template",
    ),
}


@pytest.mark.parametrize("variant", sorted(HANDLED))
def test_handled_features_plan_without_ploomber(variant, project_copy, local_root, spy_fallback):
    HANDLED[variant](project_copy)
    planned = assert_plans_agree({}, project_copy)
    assert not spy_fallback
    assert all(row[1].parent == project_copy.resolve() / "notebooks" for row in planned)


def test_plain_params_are_cast_as_ploomber_casts_them(project_copy, local_root):
    HANDLED["plain-params"](project_copy)
    optimize = next(s for s in pipeline.plan({}, project_copy) if s.name == "optimize")
    assert optimize.params["config"] == pipeline.step_config("optimize")
    assert {k: v for k, v in optimize.params.items() if k not in ("run", "config")} == {
        "label": "US-2026-11",
        "threshold": 0.5,
        "strict": True,
        "picks": [1, "a", None],
        "nothing": None,
    }


@pytest.mark.parametrize("variant", sorted(FALLBACK))
def test_unhandled_features_plan_through_ploomber(variant, project_copy, local_root, spy_fallback):
    change, reason = FALLBACK[variant]
    change(project_copy)
    with pytest.raises(pipeline.NeedsPloomber, match=reason):
        pipeline._light_steps({}, project_copy)
    assert_plans_agree({}, project_copy)
    assert spy_fallback  # planned by Ploomber, with the same results


def test_a_project_grown_by_new_step_plans_the_same_both_ways(
    project_copy, local_root, spy_fallback
):
    shutil.copytree(PROJECT_DIR / "toolkit", project_copy / "toolkit")
    notebooks.new_step("price_elasticity", "forecast", project_dir=project_copy)
    notebooks.new_step("elasticity_report", "price_elasticity", project_dir=project_copy)
    planned = assert_plans_agree({}, project_copy)
    assert not spy_fallback
    upstream = {name: up for name, _, up, _ in planned}
    assert upstream["price_elasticity"] == ["forecast"]
    assert upstream["elasticity_report"] == ["price_elasticity"]
    # pipeline.yaml order, each step after its upstream: the new steps right after forecast.
    assert [row[0] for row in planned] == [
        "load_transform",
        "identify_underperformers",
        "forecast",
        "price_elasticity",
        "elasticity_report",
        "optimize",
        "format_output",
    ]


def test_unknown_upstream_and_cycles_are_named(project_copy, local_root):
    forecast = project_copy / "notebooks" / "forecast.py"
    identify = project_copy / "notebooks" / "identify_underperformers.py"
    edit(forecast, '"identify_underperformers"]', '"identify_underperformers", "nowhere"]')
    with pytest.raises(ValueError, match="step 'forecast' names upstream step\\(s\\) 'nowhere'"):
        pipeline.plan({}, project_copy)
    edit(forecast, ', "nowhere"]', "]")
    edit(identify, 'upstream = ["load_transform"]', 'upstream = ["forecast"]')
    with pytest.raises(
        ValueError, match="cycle: steps identify_underperformers, forecast each wait"
    ):
        pipeline.plan({}, project_copy)
