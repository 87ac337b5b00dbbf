"""New steps build end to end; injected cells work, are caught before commit, and go away."""

from __future__ import annotations

import difflib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml
from helpers import PROJECT_DIR

from toolkit.data import storage
from toolkit.dev import notebooks
from toolkit.pricing import demo_data

pytestmark = pytest.mark.slow  # whole pipelines: `make test-fast` leaves these out

BIN = Path(sys.executable).parent
N_PRODUCTS = 40
NOT_COPIED = (".venv", ".git", "store", ".toolkit", "*_cache", "__pycache__", "*.egg-info")
PREFIX = "market=US/period=2026-11/category=all"


def copy_project(target: Path) -> Path:
    shutil.copytree(PROJECT_DIR, target, ignore=shutil.ignore_patterns(*NOT_COPIED))
    return target


def run(args, env, cwd, check=True):
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def environment(project: Path, root: Path, build_dir: Path) -> dict:
    env = dict(os.environ, TOOLKIT_ROOT=str(root), TOOLKIT_BUILD_DIR=str(build_dir))
    env["PLOOMBER_STATS_ENABLED"] = "false"
    # The editable install maps `toolkit` to the original checkout; the copy must import
    # its own package, whose schemas.py holds the new contracts.
    env["PYTHONPATH"] = str(project)
    return env


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A copy of the project with two new steps (one after the other), built by Ploomber."""
    base = tmp_path_factory.mktemp("new_step")
    project = copy_project(base / "project")
    root, build_dir = base / "store", base / "build"
    original = {
        name: (project / name).read_text() for name in ["pipeline.yaml", "toolkit/data/schemas.py"]
    }
    first = notebooks.new_step("price_elasticity", "forecast", project_dir=project)
    second = notebooks.new_step("elasticity_report", "price_elasticity", project_dir=project)
    scaffold = (project / "notebooks" / "price_elasticity.py").read_text()
    demo_data.write(["US"], n_products=N_PRODUCTS, root=str(root))
    env = environment(project, root, build_dir)
    build = run([BIN / "ploomber", "build", "--env--build_dir", build_dir], env, cwd=project)
    return {
        "project": project,
        "root": root,
        "build_dir": build_dir,
        "env": env,
        "original": original,
        "steps": (first, second),
        "scaffold": scaffold,
        "build": build,
    }


def test_new_step_reports_what_it_wrote(built):
    project = built["project"]
    first, second = built["steps"]
    assert first.contract == "PriceElasticity" and second.contract == "ElasticityReport"
    assert first.created == [
        project / "notebooks" / "price_elasticity.py",
        project / "tests" / "notebooks" / "test_price_elasticity.py",
    ]
    assert first.modified == [
        project / "toolkit" / "data" / "schemas.py",
        project / "pipeline.yaml",
    ]
    assert all(path.exists() for path in first.created + second.created)


def test_pipeline_yaml_gains_the_tasks_and_keeps_every_line(built):
    project = built["project"]
    old = built["original"]["pipeline.yaml"].splitlines()
    new = (project / "pipeline.yaml").read_text().splitlines()
    ops = difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes()
    assert {op for op, *_ in ops} == {"equal", "insert"}, "existing lines must stay as they are"

    tasks = yaml.safe_load("\n".join(new))["tasks"]
    names = [Path(task["source"]).stem for task in tasks]
    assert names[names.index("forecast") + 1] == "price_elasticity"
    assert names[names.index("price_elasticity") + 1] == "elasticity_report"
    forecast, task = tasks[names.index("forecast")], tasks[names.index("price_elasticity")]
    # The exact pattern of the existing tasks, with the new name.
    assert {k: v for k, v in task.items() if k not in ("source", "product", "params")} == {
        k: v for k, v in forecast.items() if k not in ("source", "product", "params")
    }
    assert task["params"]["run"] == forecast["params"]["run"]
    assert task["params"]["config"] == {**forecast["params"]["config"], "step": "price_elasticity"}
    base = forecast["product"]["nb"].rsplit("/forecast/", 1)[0]
    assert task["product"] == {
        "nb": f"{base}/price_elasticity/price_elasticity.ipynb",
        "data": f"{base}/price_elasticity/price_elasticity.parquet",
    }
    text = (project / "pipeline.yaml").read_text()
    assert text.count("run: *run") == built["original"]["pipeline.yaml"].count("run: *run") + 2


def test_schemas_gain_the_contracts_at_the_end(built):
    project = built["project"]
    old, new = (
        built["original"]["toolkit/data/schemas.py"],
        (project / "toolkit/data/schemas.py").read_text(),
    )
    assert new.startswith(old.rstrip("\n"))
    assert "class PriceElasticity(_Contract):" in new
    assert "CONTRACTS[PriceElasticity.__name__] = PriceElasticity" in new
    assert "mean_forecast_units: Series[float] = pa.Field(" in new


def test_generated_files_are_lint_clean(built):
    project = built["project"]
    files = [
        "notebooks/price_elasticity.py",
        "notebooks/elasticity_report.py",
        "tests/notebooks/test_price_elasticity.py",
        "tests/notebooks/test_elasticity_report.py",
        "toolkit/data/schemas.py",
    ]
    run([BIN / "ruff", "check", *files], built["env"], cwd=project)
    run([BIN / "ruff", "format", "--check", *files], built["env"], cwd=project)


def test_the_build_runs_the_new_steps_on_real_data(built):
    root = built["root"]
    base = storage.join(str(root), "builds", PREFIX)
    forecasts = pd.read_parquet(storage.join(base, "forecast", "forecasts.parquet"))
    summary = pd.read_parquet(storage.join(base, "price_elasticity", "price_elasticity.parquet"))
    assert list(summary.columns) == ["product_id", "n_rows", "mean_forecast_units"]
    expected = forecasts.groupby("product_id")["forecast_units"].agg(["size", "mean"])
    summary = summary.set_index("product_id").sort_index()
    assert list(summary.index) == sorted(forecasts["product_id"].unique())
    assert (summary["n_rows"] == expected["size"]).all()
    assert summary["mean_forecast_units"].to_numpy() == pytest.approx(expected["mean"].to_numpy())

    report = pd.read_parquet(storage.join(base, "elasticity_report", "elasticity_report.parquet"))
    assert list(report.columns) == ["product_id", "n_rows"]
    assert set(report["product_id"]) == set(summary.index) and (report["n_rows"] == 1).all()


def test_the_generated_contract_tests_pass(built):
    result = run(
        [BIN / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/notebooks"],
        built["env"],
        cwd=built["project"],
    )
    assert "4 passed" in result.stdout


def test_inject_fetches_upstream_and_the_cell_runs(built, monkeypatch):
    project, root, build_dir = built["project"], built["root"], built["build_dir"]
    monkeypatch.setenv("TOOLKIT_ROOT", str(root))
    monkeypatch.setenv("TOOLKIT_BUILD_DIR", str(build_dir))
    notebook = project / "notebooks" / "price_elasticity.py"
    shutil.rmtree(build_dir / PREFIX / "forecast")  # as on a fresh machine

    done = notebooks.inject("price_elasticity", project_dir=project)
    assert done.notebook == notebook
    assert (done.market, done.period, done.category) == ("US", "2026-11", "all")
    # Nothing in the run cache (only `ploomber build` ran): fetched from its mirror.
    mirror = storage.join(str(root), "builds", PREFIX, "forecast")
    assert done.downloaded == {
        "forecast.data": storage.join(mirror, "forecasts.parquet"),
        "forecast.accuracy": storage.join(mirror, "accuracy.parquet"),
    }
    data = build_dir / PREFIX / "forecast" / "forecasts.parquet"
    assert done.upstream["forecast.data"] == str(data) and data.exists()
    assert done.product["data"] == str(
        build_dir / PREFIX / "price_elasticity" / "price_elasticity.parquet"
    )
    text = notebook.read_text()
    assert '# %% tags=["injected-parameters"]' in text
    assert f'"data": "{data}"' in text
    # Its own build record is gone: outputs written by hand never pass for a build.
    assert not (
        build_dir / PREFIX / "price_elasticity" / ".price_elasticity.parquet.metadata"
    ).exists()

    # A py:percent source with its cell is a script: it runs as it would in Jupyter.
    output = Path(done.product["data"])
    output.unlink()
    run([BIN / "python", notebook], built["env"], cwd=project)
    assert len(pd.read_parquet(output)) == len(pd.read_parquet(data)["product_id"].unique())

    problems = notebooks.check_clean([notebook])
    assert len(problems) == 1 and problems[0].startswith(f"{notebook}: injected parameters")
    assert "a cell tagged 'injected-parameters'" in problems[0]
    assert "toolkit dev price_elasticity --remove" in problems[0]

    assert notebooks.remove_injected("price_elasticity", project_dir=project) == [notebook]
    assert notebook.read_text() == built["scaffold"]  # byte for byte
    assert notebooks.check_clean([notebook]) == []
    assert notebooks.remove_injected(project_dir=project) == []  # nothing left anywhere


def test_inject_renders_the_config_of_the_patches(built, monkeypatch):
    project = built["project"]
    monkeypatch.setenv("TOOLKIT_ROOT", str(built["root"]))
    monkeypatch.setenv("TOOLKIT_BUILD_DIR", str(built["build_dir"]))
    notebook = project / "notebooks" / "forecast.py"
    before = notebook.read_text()
    done = notebooks.inject("forecast", patches=["forecast.horizon=5"], project_dir=project)
    assert done.downloaded == {}  # upstream products are local already
    assert '"horizon": 5' in notebook.read_text()
    assert notebooks.remove_injected(project_dir=project) == [notebook]
    assert notebook.read_text() == before


def test_inject_without_upstream_says_what_to_run(built, tmp_path, monkeypatch):
    empty_root, empty_build = tmp_path / "store", tmp_path / "build"
    monkeypatch.setenv("TOOLKIT_ROOT", str(empty_root))
    monkeypatch.setenv("TOOLKIT_BUILD_DIR", str(empty_build))
    project = built["project"]
    before = (project / "notebooks" / "forecast.py").read_text()
    with pytest.raises(notebooks.MissingUpstreamError) as err:
        notebooks.inject("forecast", patches=["country=NO"], project_dir=project)
    message = str(err.value)
    weekly = (
        empty_build / "market=NO/period=2026-11/category=all/load_transform/weekly_sales.parquet"
    )
    assert f"  - load_transform.data: {weekly}" in message
    assert "identify_underperformers.data" in message
    assert f"not under the storage root {empty_root}/builds" in message
    assert "not among the outputs of a `toolkit run` with this config" in message
    assert message.endswith("toolkit run --patch country=NO")
    assert (project / "notebooks" / "forecast.py").read_text() == before
    assert not weekly.exists()  # nothing half-downloaded


@pytest.fixture(scope="module")
def ran(built, tmp_path_factory):
    """`toolkit run` of the scaffolded copy, in a root of its own: outputs in the run cache."""
    base = tmp_path_factory.mktemp("toolkit_run")
    root = base / "store"
    demo_data.write(["US"], n_products=N_PRODUCTS, root=str(root))
    env = environment(built["project"], root, base / "unused-build")
    run([BIN / "toolkit", "run"], env, cwd=built["project"])
    return root


def test_inject_after_toolkit_run_fetches_from_the_run_cache(built, ran, tmp_path):
    from toolkit.runs import store as runs

    project, build_dir = built["project"], tmp_path / "build"
    (record,) = runs.list_runs(root=str(ran))
    published = record.steps["forecast"].outputs
    assert published["data"].startswith(storage.join(str(ran), "cache", PREFIX, "forecast"))

    # In the copy's own interpreter, as a data scientist would run it there.
    script = (
        "import json; from toolkit.dev import notebooks; "
        "done = [notebooks.inject('price_elasticity', refresh=r) for r in (False, False, True)]; "
        "print(json.dumps([[d.downloaded, d.upstream] for d in done])); "
        "notebooks.remove_injected('price_elasticity')"
    )
    env = environment(project, ran, build_dir)
    first, again, refreshed = json.loads(run([BIN / "python", "-c", script], env, project).stdout)
    fetched = {"forecast.data": published["data"], "forecast.accuracy": published["accuracy"]}
    assert first[0] == fetched
    local = Path(first[1]["forecast.data"])
    assert local == build_dir / PREFIX / "forecast" / "forecasts.parquet"
    assert local.read_bytes() == Path(published["data"]).read_bytes()
    assert again[0] == {}  # local copies are kept: they may be the user's own work
    assert refreshed[0] == fetched
    assert (project / "notebooks" / "price_elasticity.py").read_text() == built["scaffold"]


def test_dev_with_run_opens_the_step_as_that_run_had_it(built, ran, tmp_path):
    from toolkit.runs import store as runs

    project, build_dir = built["project"], tmp_path / "build"
    (record,) = runs.list_runs(root=str(ran))
    env = environment(project, ran, build_dir)
    out = run([BIN / "toolkit", "dev", "forecast", "--run", record.id], env, project).stdout
    for upstream in ("load_transform", "identify_underperformers"):
        assert record.steps[upstream].outputs["data"] in out
    cell = (project / "notebooks" / "forecast.py").read_text()
    assert "injected-parameters" in cell and '"horizon": 12' in cell
    run([BIN / "toolkit", "dev", "forecast", "--remove"], env, project)
    bad = run([BIN / "toolkit", "dev", "forecast", "--run", "nope"], env, project, check=False)
    assert bad.returncode == 2 and "no run 'nope'" in bad.stderr


def test_inject_unknown_step(built):
    with pytest.raises(notebooks.StepError, match="unknown step 'forecasts': pipeline.yaml has"):
        notebooks.inject("forecasts", project_dir=built["project"])


# ---------------------------------------------------------------------------
# new_step refusals and long names
# ---------------------------------------------------------------------------


@pytest.fixture
def project(tmp_path) -> Path:
    return copy_project(tmp_path / "project")


@pytest.mark.parametrize(
    ("name", "after", "message"),
    [
        ("Price", "forecast", "step name 'Price' is not a lowercase Python identifier"),
        ("price-elasticity", "forecast", "is not a lowercase Python identifier"),
        ("1st_step", "forecast", "is not a lowercase Python identifier"),
        ("class", "forecast", "no Python keyword"),
        ("a" * 33, "forecast", "is longer than 32 characters"),
        ("config", "forecast", "is a notebook parameter name"),
        ("forecast", "load_transform", "step 'forecast' already exists in pipeline.yaml"),
        ("plan", "forecast", "toolkit/data/schemas.py already defines Plan"),
        ("notebooks", "forecast", "tests/toolkit/dev/test_notebooks.py exists already"),
        ("elasticity", "nowhere", "--after 'nowhere' is not a step in pipeline.yaml; steps: "),
        ("elasticity", "format_output", "step 'format_output' has no parquet `data` product"),
    ],
)
def test_new_step_refuses_bad_input_and_writes_nothing(project, name, after, message):
    watched = ["pipeline.yaml", "toolkit/data/schemas.py"]
    before = {path: (project / path).read_text() for path in watched}
    files_before = sorted(p for p in project.rglob("*") if p.is_file())
    with pytest.raises(notebooks.StepError) as err:
        notebooks.new_step(name, after, project_dir=project)
    assert message in str(err.value)
    assert {path: (project / path).read_text() for path in watched} == before
    assert sorted(p for p in project.rglob("*") if p.is_file()) == files_before


def test_format_output_refusal_lists_the_steps_to_choose(project):
    with pytest.raises(notebooks.StepError) as err:
        notebooks.new_step("elasticity", "format_output", project_dir=project)
    assert "it writes nb, csv, json, delivery" in str(err.value)
    assert "choose --after one of: load_transform, identify_underperformers, forecast," in str(
        err.value
    )


def test_new_step_refuses_an_existing_notebook_file(project):
    (project / "notebooks" / "draft.py").write_text("# %%\n")
    with pytest.raises(notebooks.StepError, match=r"notebooks/draft.py exists already"):
        notebooks.new_step("draft", "forecast", project_dir=project)


@pytest.mark.parametrize("after", sorted(notebooks.STEP_DATA))
def test_longest_names_stay_lint_clean_after_every_builtin_step(project, after):
    name = "underperformer_elasticity_weekly"  # 32 characters, the most allowed
    notebooks.new_step(name, after, project_dir=project)
    files = [f"notebooks/{name}.py", f"tests/notebooks/test_{name}.py", "toolkit/data/schemas.py"]
    env = dict(os.environ)
    run([BIN / "ruff", "check", *files], env, cwd=project)
    run([BIN / "ruff", "format", "--check", *files], env, cwd=project)
    contract, column = notebooks.STEP_DATA[after]
    source = (project / "notebooks" / f"{name}.py").read_text()
    assert f"schemas.{contract}," in source and f'("{column}", "mean")' in source


# ---------------------------------------------------------------------------
# check_clean and `python -m toolkit.dev.notebooks check`
# ---------------------------------------------------------------------------

CLEAN = '# %% [markdown]\n# # Step\n\n# %% tags=["parameters"]\nupstream = None\n\n# %%\nx = 1\n'
DIRTY = CLEAN.replace(
    "\n# %%\nx = 1\n",
    '\n# %% tags=["injected-parameters"]\n# Parameters\nupstream = {}\n\n# %%\nx = 1\n',
)


def test_check_clean_finds_injected_cells_in_py_and_ipynb(tmp_path):
    clean, dirty = tmp_path / "clean.py", tmp_path / "dirty.py"
    clean.write_text(CLEAN)
    dirty.write_text(DIRTY)
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("upstream = None", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("upstream = {}", metadata={"tags": ["injected-parameters"]}),
    ]
    ipynb = tmp_path / "step.ipynb"
    nbformat.write(nb, ipynb)
    broken = tmp_path / "broken.ipynb"
    broken.write_text("{not json")

    problems = notebooks.check_clean([clean, dirty, ipynb, broken, tmp_path / "gone.py"])
    assert problems[0] == (
        f"{dirty}: injected parameters must not be committed (line 7: a cell tagged "
        "'injected-parameters'); remove them with `toolkit dev dirty --remove`"
    )
    assert problems[1].startswith(f"{ipynb}: injected parameters must not be committed (cell 2")
    assert problems[2].startswith(f"{broken}: cannot read it as a notebook")
    assert problems[3] == f"{tmp_path / 'gone.py'}: no such file"
    assert len(problems) == 4


def test_check_command_exit_codes(tmp_path):
    clean, dirty = tmp_path / "clean.py", tmp_path / "dirty.py"
    clean.write_text(CLEAN)
    dirty.write_text(DIRTY)
    env = dict(os.environ, PLOOMBER_STATS_ENABLED="false")
    command = [BIN / "python", "-m", "toolkit.dev.notebooks", "check"]
    failed = run([*command, clean, dirty], env, cwd=tmp_path, check=False)
    assert failed.returncode == 1
    assert str(dirty) in failed.stderr and str(clean) not in failed.stderr
    passed = run([*command, clean], env, cwd=tmp_path, check=False)
    assert passed.returncode == 0 and passed.stderr == ""


def test_committed_notebooks_are_clean():
    sources = sorted((PROJECT_DIR / "notebooks").glob("*.py"))
    assert sources and notebooks.check_clean(sources) == []


def test_step_data_matches_the_pipeline():
    """Every built-in step with a parquet `data` product has its contract listed."""
    from toolkit.data import schemas

    spec = yaml.safe_load((PROJECT_DIR / "pipeline.yaml").read_text())
    for task in spec["tasks"]:
        step, data = Path(task["source"]).stem, task["product"].get("data", "")
        if step in notebooks.STEP_DATA:
            contract, column = notebooks.STEP_DATA[step]
            assert data.endswith(".parquet")
            assert column in schemas.CONTRACTS[contract].to_schema().columns
    assert set(notebooks.STEP_DATA) == {
        "load_transform",
        "identify_underperformers",
        "forecast",
        "optimize",
    }
