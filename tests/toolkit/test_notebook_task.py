"""Executing a step without Ploomber: the same notebook Ploomber renders, the same checks."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import nbformat
import pytest

from toolkit import config as config_mod
from toolkit import notebook_task, pipeline, runner


def envs(tmp_path) -> dict[str, dict]:
    build = str(tmp_path / "build")
    patches = ["country=DE", "optimize.weights.margin=0.5"]
    return {
        "env.yaml": {"build_dir": build},
        "run-DE": {
            **runner.ploomber_env(
                config_mod.resolve(patches=patches), patches=patches, run_id="r-1"
            ),
            "build_dir": build,
        },
    }


@pytest.mark.parametrize("which", ["env.yaml", "run-DE"])
def test_every_step_renders_exactly_as_ploomber_renders_it(which, tmp_path, local_root):
    env = envs(tmp_path)[which]
    dag = pipeline.load_dag(env)
    dag.render(force=True, show_progress=False)
    for step in pipeline.STEPS:
        task = pipeline.notebook_task(step, env)
        theirs = dag[step]
        assert task.products == theirs.product.to_json_serializable()
        assert task.upstream_products == {
            name: upstream.product.to_json_serializable()
            for name, upstream in theirs.upstream.items()
        }
        assert without_ids(notebook_task.render(task)) == without_ids(
            theirs.source.nb_str_rendered
        ), step


def without_ids(notebook: str) -> dict:
    """The notebook without its cell ids, which nbformat draws at random for every read,
    and with the injected values as values: Ploomber orders ``upstream`` by a set, so its
    order changes from process to process; it is notebook order here."""
    data = json.loads(notebook)
    for cell in data["cells"]:
        assert cell.pop("id")
        if "injected-parameters" in cell["metadata"].get("tags", []):
            module = ast.parse("".join(cell["source"]))
            cell["source"] = [
                (node.targets[0].id, ast.literal_eval(node.value)) for node in module.body
            ]
    return data


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1))


def test_an_undefined_name_stops_the_step_before_it_runs_as_in_ploomber(
    project_copy, tmp_path, local_root
):
    edit(project_copy / "notebooks" / "optimize.py", "kpis = optimizer", "kpis = optimiser")
    env = {"build_dir": str(tmp_path / "build")}
    task = pipeline.notebook_task("optimize", env, project_copy)
    with pytest.raises(notebook_task.StaticAnalysisError, match="undefined name 'optimiser'") as e:
        notebook_task.execute(task)
    assert "optimize.py" in str(e.value)
    assert not Path(task.products["nb"]).exists()  # nothing ran
    dag = pipeline.load_dag(env, project_copy)
    with pytest.raises(Exception, match="undefined name 'optimiser'"):
        dag.render(force=True, show_progress=False)


def test_strict_steps_must_declare_exactly_their_params(project_copy, tmp_path, local_root):
    spec = project_copy / "pipeline.yaml"
    edit(spec, "        step: optimize\n", "        step: optimize\n      extra: 1\n")
    task = pipeline.notebook_task("optimize", {"build_dir": str(tmp_path / "b")}, project_copy)
    with pytest.raises(notebook_task.StaticAnalysisError, match="passed but not declared: extra"):
        notebook_task.render(task)


def test_a_parameters_cell_left_last_is_named(project_copy, tmp_path, local_root):
    source = project_copy / "notebooks" / "format_output.py"
    text = source.read_text()
    source.write_text(text[: text.index("# %%\nimport json")])
    task = pipeline.notebook_task("format_output", {"build_dir": str(tmp_path)}, project_copy)
    with pytest.raises(notebook_task.StaticAnalysisError, match="parameters cell is the last"):
        notebook_task.render(task)


@pytest.mark.parametrize(
    "change, reason",
    [
        (
            (
                "    on_failure: toolkit.pipeline.set_aside_failed_notebook\n",
                "    on_finish: toolkit.pipeline.set_aside_failed_notebook\n",
            ),
            "a hook other than",
        ),
        (("optimize/optimize.ipynb", "optimize/optimize.html"), "not an .ipynb file"),
        (
            ("    static_analysis: strict\n", "    static_analysis: loud\n"),
            "static_analysis 'loud'",
        ),
    ],
)
def test_what_only_ploomber_executes_is_handed_to_it(change, reason, project_copy, local_root):
    edit(project_copy / "pipeline.yaml", *change)
    with pytest.raises(pipeline.NeedsPloomber, match=reason):
        # Hooks and statuses differ per task: optimize is the one edited for the product.
        for step in ("load_transform", "optimize"):
            pipeline.notebook_task(step, {"build_dir": "/tmp/x"}, project_copy)


TINY_PIPELINE = """\
meta:
  extract_upstream: true
  extract_product: false
tasks:
  - source: notebooks/tiny.py
    static_analysis: strict
    on_failure: toolkit.pipeline.set_aside_failed_notebook
    product:
      nb: "{{build_dir}}/tiny/tiny.ipynb"
      data: "{{build_dir}}/tiny/out.json"
    params:
      value: "{{value}}"
"""

TINY_NOTEBOOK = """\
# %% tags=["parameters"]
upstream = None
product = None
value = None

# %%
import json
from pathlib import Path

assert value != 13, "unlucky value"
if value != 7:
    Path(product["data"]).write_text(json.dumps({"doubled": value * 2}))
print("value", value)
"""


@pytest.fixture
def tiny_project(tmp_path) -> Path:
    project = tmp_path / "tiny"
    (project / "notebooks").mkdir(parents=True)
    (project / "pipeline.yaml").write_text(TINY_PIPELINE)
    (project / "env.yaml").write_text("value: 1\nbuild_dir: build\n")
    (project / "notebooks" / "tiny.py").write_text(TINY_NOTEBOOK)
    return project


def tiny_task(project: Path, value: int) -> pipeline.NotebookTask:
    env = {"build_dir": str(project / "build"), "value": value}
    return pipeline.notebook_task("tiny", env, project)


def test_execute_writes_the_executed_notebook_and_the_products(tiny_project):
    task = tiny_task(tiny_project, 21)
    notebook_task.execute(task, execution_timeout=120)
    assert json.loads(Path(task.products["data"]).read_text()) == {"doubled": 42}
    nb = nbformat.read(task.products["nb"], as_version=4)
    injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert "value = 21" in injected.source
    assert any("value 21" in out.get("text", "") for c in nb.cells for out in c.get("outputs", []))


def test_a_failing_notebook_is_set_aside_and_its_error_raised(tiny_project):
    from papermill.exceptions import PapermillExecutionError

    task = tiny_task(tiny_project, 13)
    with pytest.raises(PapermillExecutionError, match="unlucky value"):
        notebook_task.execute(task, execution_timeout=120)
    nb = Path(task.products["nb"])
    assert not nb.exists() and nb.with_name("tiny.failed.ipynb").exists()


def test_a_notebook_that_skips_a_product_fails_naming_it(tiny_project):
    task = tiny_task(tiny_project, 7)
    with pytest.raises(notebook_task.MissingProductsError, match="product\\(s\\) data"):
        notebook_task.execute(task, execution_timeout=120)
    assert not Path(task.products["nb"]).exists()  # no product of a failed step
