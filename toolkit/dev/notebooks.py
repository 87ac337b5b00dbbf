"""Notebook sources: parameter injection for interactive work, a cleanliness check, new steps."""

from __future__ import annotations

import argparse
import json
import keyword
import re
import shlex
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from toolkit import project

__all__ = [
    "INJECTED_TAGS",
    "STEP_DATA",
    "Injection",
    "MissingUpstreamError",
    "NewStep",
    "StepError",
    "check_clean",
    "inject",
    "main",
    "new_step",
    "remove_injected",
]

# Cells Ploomber adds to a source (`ploomber nb --inject`, `toolkit dev`); never committed.
INJECTED_TAGS = ("injected-parameters", "debugging-settings")

# The `data` product of each built-in step: the contract a downstream step reads it with,
# and a numeric column that a scaffolded step summarises per product.
STEP_DATA: dict[str, tuple[str, str]] = {
    "load_transform": ("WeeklySales", "units"),
    "identify_underperformers": ("Underperformers", "recent_units"),
    "forecast": ("Forecasts", "forecast_units"),
    "optimize": ("Plan", "expected_units"),
}

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
MAX_NAME_LENGTH = 32  # keeps every generated line within ruff's 100 columns
RESERVED_NAMES = frozenset({"upstream", "product", "run", "config"})  # every notebook's params
DEFAULT_PRODUCT_PREFIX = "{{build_dir}}/market={{country}}/period={{period}}/category={{category}}"

_TASK_ITEM = re.compile(r"^(?P<indent>[ ]*)- source:\s*[\"']?(?P<source>[^\"'\s#]+)")
_DEFINITION = re.compile(r"^(?:class|def)\s+(\w+)|^(\w+)\s*[:=]", re.M)


class StepError(ValueError):
    """A step name or pipeline edit was refused; the message says what was expected."""


class MissingUpstreamError(RuntimeError):
    """A step's upstream products are neither in the build dir nor in storage; the message
    says which, and the ``toolkit run`` command that builds them."""


# ---------------------------------------------------------------------------
# Injection
# ---------------------------------------------------------------------------


@dataclass
class Injection:
    """What ``inject`` did: which notebook, for which run, reading which files."""

    step: str
    notebook: Path
    market: str
    period: str
    category: str
    upstream: dict[str, str] = field(default_factory=dict)  # "forecast.data" -> local path
    downloaded: dict[str, str] = field(default_factory=dict)  # "forecast.data" -> fetched URL
    product: dict[str, str] = field(default_factory=dict)  # this step's outputs, local


def _load_dag(patches: Sequence[str], configs: Sequence[str], project_dir: Path):
    """The rendered DAG for these layers, as ``toolkit run`` builds it."""
    from toolkit import config as config_mod
    from toolkit.dag import pipeline
    from toolkit.runs import runner

    resolved = config_mod.resolve(configs=configs, patches=patches, project_dir=project_dir)
    env = runner.ploomber_env(resolved, configs, patches)
    dag = pipeline.load_dag(env, project_dir=project_dir)
    # force: nothing is built here, so skip Ploomber's product status checks.
    dag.render(force=True, show_progress=False)
    return dag, resolved


def _notebook_task(dag, step: str):
    names = list(dag.keys())
    if step not in names:
        raise StepError(f"unknown step {step!r}: pipeline.yaml has {', '.join(names)}")
    task = dag[step]
    if not hasattr(task.source, "save_injected_cell"):
        raise StepError(f"step {step!r} is not a notebook task; only notebooks take a cell")
    return task


def _files(task) -> dict:
    """Each File of a task's product, by key (``nb``, ``data``, ...)."""
    paths = task.product.to_json_serializable()
    if isinstance(paths, dict):
        return {key: task.product[key] for key in paths}
    return {"data": task.product}


def _run_command(patches: Sequence[str], configs: Sequence[str]) -> str:
    args = ["toolkit", "run"]
    for url in configs:
        args += ["--config", shlex.quote(url)]
    for patch in patches:
        args += ["--patch", shlex.quote(patch)]
    return " ".join(args)


def _run_outputs(task, resolved, only=None) -> tuple[dict[str, dict[str, str]], list[str]]:
    """Outputs of ``task``'s upstream steps from the newest ``toolkit run`` records with
    exactly this effective config (a failed run still counts for its finished steps), or
    from the records in ``only``."""
    from toolkit.runs import store as runs

    wanted = resolved.as_dict()
    try:
        records = only if only is not None else runs.list_runs()  # newest first
    except OSError as exc:  # an unreachable store is a miss, explained if nothing else works
        return {}, [f"cannot list the runs: {exc}"]
    found: dict[str, dict[str, str]] = {}
    for record in records:
        if record.config != wanted:
            continue
        for name in task.upstream:
            step = record.steps.get(name)
            finished = step is not None and step.status in ("succeeded", "reused") and step.outputs
            if finished and name not in found:
                found[name] = dict(step.outputs)
    return found, []


def _ensure_upstream(task, resolved, patches, configs, refresh, only=None) -> tuple[dict, dict]:
    """Local paths of the upstream products: kept from the build dir (``refresh``: only when
    no run has them), else fetched from the newest ``toolkit run`` with this config, else
    through the File client (``ploomber build``'s mirror under ``<root>/builds``)."""
    from toolkit.data import storage

    published, problems = _run_outputs(task, resolved, only)
    found: dict[str, str] = {}
    fetched: dict[str, str] = {}
    missing: list[str] = []
    for upstream_name, upstream_task in task.upstream.items():
        for key, product in _files(upstream_task).items():
            if key == "nb":  # the executed notebook is a report, not an input
                continue
            label, local = f"{upstream_name}.{key}", Path(str(product))
            found[label] = str(local)
            url = published.get(upstream_name, {}).get(key)
            # A local copy may be the user's own work (an upstream notebook run by hand):
            # never overwrite it unless asked to.
            if local.exists() and not (refresh and url):
                continue
            if url:
                storage.download_file(url, local)
                fetched[label] = url
                continue
            try:
                product.download()  # the file, then Ploomber's metadata: its completion marker
            except (OSError, ValueError) as exc:
                # A file without its marker is an unfinished upload: do not work on it.
                local.unlink(missing_ok=True)
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                missing.append(f"  - {label}: {local} ({reason})")
                continue
            if local.exists():
                remote = getattr(product.client, "_remote_path", None)
                fetched[label] = remote(str(local)) if remote else "the File client"
            else:
                missing.append(f"  - {label}: {local} (no storage client to fetch it)")
    if missing:
        notes = "".join(f"\n  note: {problem}" for problem in problems)
        raise MissingUpstreamError(
            f"cannot open step {task.name!r}: these upstream products are not in the build "
            f"dir, not among the outputs of a `toolkit run` with this config, and not under "
            f"the storage root {storage.root()}/builds:\n"
            + "\n".join(missing)
            + notes
            + "\nBuild them first, with the same config:\n  "
            + _run_command(patches, configs)
        )
    return found, fetched


def inject(
    step: str,
    patches: Iterable[str] = (),
    configs: Iterable[str] = (),
    project_dir: Path | str | None = None,
    refresh: bool = False,
    run_id: str | None = None,
) -> Injection:
    """Write the rendered parameters cell into ``notebooks/<step>.py`` for interactive work.

    The cell holds what the step gets in a real run with these layers: its ``run`` identity,
    its ``config`` section and the local paths of its ``upstream`` and ``product`` files.
    Upstream outputs missing from the local build dir are fetched from the newest ``toolkit
    run`` with the same effective config, else from ``ploomber build``'s mirror under
    ``<root>/builds``. The step's own local build records are dropped, so outputs written
    by hand are never taken for built ones: ``ploomber build`` re-runs the step or restores
    them from storage (``toolkit run`` never reads the local build dir).

    Args:
        step: Task name in ``pipeline.yaml``.
        patches: ``key.path=value`` config patches, as for ``toolkit run --patch``.
        configs: Extra config layer URLs, as for ``toolkit run --config``.
        project_dir: The repository holding ``pipeline.yaml``.
        refresh: Replace local upstream copies with the newest run's outputs.
        run_id: Open the step as it ran in this run: its frozen config and exactly its
            upstream outputs (``patches`` and ``configs`` must then be empty).

    Returns:
        The notebook written and the files its cell points to.

    Raises:
        StepError: ``step`` is not a notebook task of the pipeline.
        MissingUpstreamError: an upstream product is in neither place; says what to run.
        toolkit.config.ConfigError: the layers do not resolve.
    """
    project_dir = project.resolve(project_dir)
    patches, configs = list(patches), list(configs)
    only = None
    if run_id is not None:
        from toolkit.runs import store as runs

        if patches or configs:
            raise StepError("--run takes the run's own config; drop --patch and --config")
        only = [runs.load(run_id)]
        configs, refresh = [only[0].config_url], True
    dag, resolved = _load_dag(patches, configs, Path(project_dir))
    task = _notebook_task(dag, step)
    upstream, downloaded = _ensure_upstream(task, resolved, patches, configs, refresh, only)
    task.source.save_injected_cell()
    # Running the notebook by hand overwrites this step's local outputs: drop their build
    # record so `ploomber build` re-runs the step or restores them from storage (Ploomber's
    # own Jupyter integration does the same on save).
    task.product.metadata.delete()
    cfg = resolved.config
    return Injection(
        step=step,
        notebook=Path(task.source.loc),
        market=cfg.country,
        period=cfg.period,
        category=cfg.category or "all",
        upstream=upstream,
        downloaded=downloaded,
        product={key: str(path) for key, path in _files(task).items()},
    )


def remove_injected(step: str | None = None, project_dir: Path | str | None = None) -> list[Path]:
    """Remove the injected cell from one step's notebook, or from every notebook.

    Uses Ploomber's ``remove_injected_cell``, then drops the notebook-level metadata Ploomber
    writes (sources carry none; see ``jupytext.toml``), so a clean source is left byte for
    byte as it was before injection. Notebooks without an injected cell are not touched.

    Args:
        step: Task name; ``None`` cleans every notebook of the pipeline.
        project_dir: The repository holding ``pipeline.yaml``.

    Returns:
        The notebooks that were cleaned.

    Raises:
        StepError: ``step`` is not a notebook task of the pipeline.
    """
    project_dir = project.resolve(project_dir)
    # Sources straight from pipeline.yaml, no DAG: cleaning up must work even when the
    # config or a dotted-path param does not resolve.
    from ploomber.sources.notebooksource import NotebookSource

    project_dir = Path(project_dir)
    pipeline_file = project_dir / "pipeline.yaml"
    tasks = _pipeline_tasks(pipeline_file.read_text(), str(pipeline_file))
    sources = {
        name: project_dir / str(task["source"])
        for name, task in tasks.items()
        if Path(str(task["source"])).suffix in (".py", ".ipynb")
    }
    if step is not None and step not in sources:
        raise StepError(f"unknown step {step!r}: pipeline.yaml has {', '.join(sources)}")
    cleaned = []
    for path in [sources[step]] if step else list(sources.values()):
        if not path.is_file() or not _injection_problems(path):
            continue
        NotebookSource(path).remove_injected_cell()
        _drop_notebook_metadata(path)
        cleaned.append(path)
    return cleaned


def _drop_notebook_metadata(path: Path) -> None:
    """Rewrite a text notebook without the header Ploomber's cell handling leaves in it."""
    import jupytext

    if path.suffix == ".ipynb":
        return
    text = path.read_text()
    format_name, _ = jupytext.guess_format(text, path.suffix)
    notebook = jupytext.reads(text, fmt=f"{path.suffix[1:]}:{format_name}")
    notebook.metadata = {"jupytext": {"notebook_metadata_filter": "-all"}}
    jupytext.write(notebook, path, fmt=f"{path.suffix[1:]}:{format_name}")


# ---------------------------------------------------------------------------
# Cleanliness check (pre-commit)
# ---------------------------------------------------------------------------


def _injection_problems(path: Path) -> list[str]:
    """What of an injection is left in one notebook source (empty when clean)."""
    import jupytext

    notebook = jupytext.read(path)
    problems = []
    lines = path.read_text().splitlines() if path.suffix != ".ipynb" else []
    for index, cell in enumerate(notebook.cells, 1):
        tags = [tag for tag in cell.metadata.get("tags", []) if tag in INJECTED_TAGS]
        if tags:
            line = next((n for n, text in enumerate(lines, 1) if tags[0] in text), None)
            where = f"line {line}" if line else f"cell {index}"
            problems.append(f"{where}: a cell tagged {tags[0]!r}")
    if (notebook.metadata.get("ploomber") or {}).get("injected_manually"):
        problems.append("header: metadata ploomber.injected_manually")
    return problems


def check_clean(paths: Iterable[str | Path]) -> list[str]:
    """Problems for notebook sources that still hold injected parameters.

    Args:
        paths: Notebook sources (``.py`` in any Jupytext format, or ``.ipynb``).

    Returns:
        One message per file with something of an injection left in it (or unreadable),
        naming the file, where, and the command that removes it. Empty when all are clean.
    """
    problems = []
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            problems.append(f"{path}: no such file")
            continue
        try:
            found = _injection_problems(path)
        except Exception as exc:  # jupytext/nbformat raise many types on unreadable input
            problems.append(f"{path}: cannot read it as a notebook: {exc}")
            continue
        if found:
            problems.append(
                f"{path}: injected parameters must not be committed ({'; '.join(found)}); "
                f"remove them with `toolkit dev {path.stem} --remove`"
            )
    return problems


# ---------------------------------------------------------------------------
# New steps
# ---------------------------------------------------------------------------


@dataclass
class NewStep:
    """What ``new_step`` wrote."""

    name: str
    after: str
    contract: str
    created: list[Path]
    modified: list[Path]


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _pipeline_tasks(text: str, source: str) -> dict[str, dict]:
    """Task name -> its spec (``source``, ``product``, ...), read from ``pipeline.yaml``."""
    import yaml

    try:
        spec = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise StepError(f"{source} is not valid YAML: {exc}") from None
    tasks = {}
    for task in spec.get("tasks") or []:
        if isinstance(task, dict) and task.get("source"):
            name = task.get("name") or Path(str(task["source"])).stem
            tasks[str(name)] = task
    return tasks


def _defined_names(schemas_text: str) -> set[str]:
    """Top-level names (classes, functions, assignments) defined in a module's text."""
    return {match[1] or match[2] for match in _DEFINITION.finditer(schemas_text)}


def _check_name(name: str, tasks: dict, project_dir: Path, schemas_text: str) -> None:
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or keyword.iskeyword(name):
        raise StepError(
            f"step name {name!r} is not a lowercase Python identifier: expected a letter, "
            "then letters, digits or _ (e.g. price_elasticity), and no Python keyword"
        )
    if len(name) > MAX_NAME_LENGTH:
        raise StepError(f"step name {name!r} is longer than {MAX_NAME_LENGTH} characters")
    if name in RESERVED_NAMES:
        raise StepError(
            f"step name {name!r} is a notebook parameter name "
            f"({', '.join(sorted(RESERVED_NAMES))}); choose another"
        )
    if name in tasks:
        raise StepError(f"step {name!r} already exists in pipeline.yaml")
    notebook = project_dir / "notebooks" / f"{name}.py"
    if notebook.exists():
        raise StepError(f"{notebook.relative_to(project_dir)} exists already; choose another name")
    if _camel(name) in _defined_names(schemas_text):
        raise StepError(
            f"toolkit/data/schemas.py already defines {_camel(name)}, the contract name step "
            f"{name!r} would get; choose another name"
        )
    # Test modules share one namespace (no __init__.py): basenames must stay unique.
    clash = sorted((project_dir / "tests").rglob(f"test_{name}.py"))
    if clash:
        raise StepError(
            f"{clash[0].relative_to(project_dir)} exists already; the step's test would clash"
        )


def _upstream_data(after: str, tasks: dict, schemas_text: str) -> tuple[str, str | None]:
    """The contract of ``after``'s ``data`` product, and a numeric column of it (or None)."""

    def parquet_data(product) -> bool:
        return isinstance(product, dict) and str(product.get("data", "")).endswith(".parquet")

    readable = [name for name, task in tasks.items() if parquet_data(task.get("product"))]
    if after not in tasks:
        raise StepError(
            f"--after {after!r} is not a step in pipeline.yaml; steps: {', '.join(tasks)}"
        )
    product = tasks[after].get("product")
    if not parquet_data(product):
        products = product if isinstance(product, dict) else {"product": product}
        raise StepError(
            f"step {after!r} has no parquet `data` product (it writes {', '.join(products)}), "
            f"so a new step cannot read its output through a contract; "
            f"choose --after one of: {', '.join(readable)}"
        )
    if after in STEP_DATA:
        return STEP_DATA[after]
    contract = _camel(after)
    if contract in _defined_names(schemas_text):  # a step scaffolded by new_step
        return contract, None
    raise StepError(
        f"no contract is known for the data of step {after!r}: expected class {contract} "
        "in toolkit/data/schemas.py or an entry in toolkit.dev.notebooks.STEP_DATA"
    )


def _task_block(name: str, prefix: str, indent: int) -> str:
    pad = " " * indent
    return (
        f"\n{pad}- source: notebooks/{name}.py\n"
        f"{pad}  static_analysis: strict\n"
        f"{pad}  executor_params: *execution\n"
        f"{pad}  on_failure: toolkit.dag.pipeline.set_aside_failed_notebook\n"
        f"{pad}  product:\n"
        f'{pad}    nb: "{prefix}/{name}/{name}.ipynb"\n'
        f'{pad}    data: "{prefix}/{name}/{name}.parquet"\n'
        f"{pad}  params:\n"
        f"{pad}    run: *run\n"
        f"{pad}    config:\n"
        f"{pad}      <<: *run\n"
        f"{pad}      dotted_path: toolkit.dag.pipeline::step_config\n"
        f"{pad}      step: {name}\n"
    )


def _insert_task(text: str, after: str, name: str) -> str:
    """``pipeline.yaml``'s text with the new task right after ``after``'s, all else kept."""
    lines = text.splitlines(keepends=True)
    start = indent = None
    for index, line in enumerate(lines):
        match = _TASK_ITEM.match(line)
        if match and Path(match["source"]).stem == after:
            start, indent = index, len(match["indent"])
            break
    if start is None:
        raise StepError(f"pipeline.yaml: no task line `- source: notebooks/{after}.py` found")
    end = start + 1
    while end < len(lines):  # the item ends at the next line indented no deeper than "-"
        line = lines[end]
        if line.strip() and len(line) - len(line.lstrip(" ")) <= indent:
            break
        end += 1
    last = end - 1
    while last > start and not lines[last].strip():
        last -= 1
    block_text = "".join(lines[start : last + 1])
    nb_path = re.search(
        r'^\s*nb:\s*"(?P<prefix>[^"]*)/' + re.escape(after) + r'/[^/"]+\.ipynb"', block_text, re.M
    )
    prefix = nb_path["prefix"] if nb_path else DEFAULT_PRODUCT_PREFIX
    if not lines[last].endswith("\n"):
        lines[last] += "\n"
    lines.insert(last + 1, _task_block(name, prefix, indent))
    return "".join(lines)


def _check_inserted(new_text: str, name: str, after: str) -> None:
    """The edited spec parses and has the new task, with its params, right after ``after``."""
    import yaml

    try:
        tasks = yaml.safe_load(new_text)["tasks"]
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        raise StepError(f"editing pipeline.yaml would break it ({exc}); left unchanged") from None
    stems = [Path(str(t.get("source", ""))).stem for t in tasks]
    index = stems.index(name) if name in stems else -1
    params = tasks[index].get("params", {}) if index >= 0 else {}
    if (
        index < 1
        or stems[index - 1] != after
        or params.get("config", {}).get("step") != name
        or params.get("config", {}).get("dotted_path") != "toolkit.dag.pipeline::step_config"
    ):
        raise StepError(
            f"could not insert step {name!r} after {after!r} in pipeline.yaml; left unchanged"
        )


def _notebook_code(name: str, after: str, contract: str, column: str | None, new: str) -> str:
    title = name.replace("_", " ").capitalize()
    aggregations = '    n_rows=("product_id", "size"),\n'
    if column:
        aggregations += f'    mean_{column}=("{column}", "mean"),\n'
    return (
        "# %% [markdown]\n"
        f"# # {title}\n"
        f"# Per product, a summary of the `{after}` step's data.\n"
        "#\n"
        "# Scaffolded by `toolkit new-step`: replace the summary with this step's logic, and the\n"
        f"# contract `schemas.{new}` with the columns the step really writes.\n"
        "\n"
        '# %% tags=["parameters"]\n'
        f'upstream = ["{after}"]\n'
        "product = None\n"
        "run = None  # market, period, category, root: the run identity\n"
        "config = None  # {} until toolkit.dag.pipeline.STEP_SECTIONS maps a config section\n"
        "\n"
        "# %%\n"
        "from pathlib import Path\n"
        "\n"
        "from toolkit.data import io, schemas\n"
        "\n"
        'reports = str(Path(product["nb"]).parent)\n'
        "data = io.read(\n"
        f'    upstream["{after}"]["data"],\n'
        f"    schemas.{contract},\n"
        "    report_dir=reports,\n"
        ")\n"
        "print(f\"{len(data)} rows, {data['product_id'].nunique()} products\")\n"
        "\n"
        "# %%\n"
        'summary = data.groupby("product_id", as_index=False).agg(\n'
        f"{aggregations}"
        ")\n"
        f'io.write(summary, product["data"], schemas.{new})\n'
        "summary.head(10)\n"
    )


def _contract_code(name: str, after: str, column: str | None, new: str) -> str:
    mean = ""
    if column:
        mean = (
            f"    mean_{column}: Series[float] = pa.Field(\n"
            "        ge=0,\n"
            f'        description="Mean {column} per product.",\n'
            "    )\n"
        )
    return (
        f"class {new}(_Contract):\n"
        f'    """Per-product summary of the {after} step\'s data.\n'
        "\n"
        f"    Written by notebooks/{name}.py (scaffolded by ``toolkit new-step``).\n"
        '    """\n'
        "\n"
        '    product_id: Series[str] = pa.Field(unique=True, description="Product key.")\n'
        "    n_rows: Series[int] = pa.Field(\n"
        "        ge=1,\n"
        f'        description="Rows for the product in {after}\'s data.",\n'
        "    )\n"
        f"{mean}"
        "\n"
        "\n"
        f'__all__ += ["{new}"]\n'
        f"CONTRACTS[{new}.__name__] = {new}\n"
    )


def _test_code(name: str, column: str | None, new: str) -> str:
    columns = ["product_id", "n_rows"]
    values = '            "product_id": ["P0001", "P0002"],\n            "n_rows": [12, 3],\n'
    if column:
        columns.append(f"mean_{column}")
        values += f'            "mean_{column}": [4.5, 0.0],\n'
    return (
        f'"""Contract {new} of step {name}."""\n'
        "\n"
        "from __future__ import annotations\n"
        "\n"
        "import pandas as pd\n"
        "import pytest\n"
        "\n"
        "from toolkit.data import io, schemas\n"
        "\n"
        "\n"
        "def valid_summary() -> pd.DataFrame:\n"
        "    return pd.DataFrame(\n"
        "        {\n"
        f"{values}"
        "        }\n"
        "    )\n"
        "\n"
        "\n"
        "def test_contract_accepts_a_valid_summary():\n"
        f"    checked = io.validate(valid_summary(), schemas.{new})\n"
        f"    assert list(checked.columns) == {json.dumps(columns)}\n"
        "    assert len(checked) == 2\n"
        "\n"
        "\n"
        "def test_contract_rejects_a_product_listed_twice():\n"
        "    summary = valid_summary()\n"
        '    summary.loc[1, "product_id"] = "P0001"\n'
        '    with pytest.raises(io.ContractError, match="product_id"):\n'
        f"        io.validate(summary, schemas.{new})\n"
    )


def new_step(name: str, after: str, project_dir: Path | str | None = None) -> NewStep:
    """Scaffold a pipeline step that reads ``after``'s ``data`` product.

    Creates ``notebooks/<name>.py`` (reads the upstream data through its contract and writes
    a per-product summary through a new one), appends that contract to
    ``toolkit/data/schemas.py``, adds ``tests/notebooks/test_<name>.py`` and inserts the task into
    ``pipeline.yaml`` right after ``after``'s, editing the text so comments and anchors stay.
    The step's ``config`` is ``{}`` until ``toolkit.dag.pipeline.STEP_SECTIONS`` maps a section.
    Nothing is written unless every check passes.

    Args:
        name: New step name: a lowercase Python identifier, not a task yet.
        after: Existing step with a parquet ``data`` product (not ``format_output``).
        project_dir: The repository to edit.

    Returns:
        The files created and modified.

    Raises:
        StepError: naming the bad value and what was expected.
    """
    project_dir = project.resolve(project_dir)
    project_dir = Path(project_dir)
    pipeline_file = project_dir / "pipeline.yaml"
    schemas_file = project_dir / "toolkit" / "data" / "schemas.py"
    pipeline_text = pipeline_file.read_text()
    schemas_text = schemas_file.read_text()
    tasks = _pipeline_tasks(pipeline_text, str(pipeline_file))
    _check_name(name, tasks, project_dir, schemas_text)
    contract, column = _upstream_data(after, tasks, schemas_text)
    new = _camel(name)

    new_pipeline = _insert_task(pipeline_text, after, name)
    _check_inserted(new_pipeline, name, after)
    new_schemas = schemas_text.rstrip("\n") + "\n\n\n" + _contract_code(name, after, column, new)
    compile(new_schemas, str(schemas_file), "exec")  # a syntax error must never land

    notebook = project_dir / "notebooks" / f"{name}.py"
    test_file = project_dir / "tests" / "notebooks" / f"test_{name}.py"
    # pipeline.yaml last: until it names the step, a half-written scaffold is inert.
    notebook.write_text(_notebook_code(name, after, contract, column, new))
    test_file.parent.mkdir(parents=True, exist_ok=True)
    test_file.write_text(_test_code(name, column, new))
    schemas_file.write_text(new_schemas)
    pipeline_file.write_text(new_pipeline)
    return NewStep(
        name=name,
        after=after,
        contract=new,
        created=[notebook, test_file],
        modified=[schemas_file, pipeline_file],
    )


# ---------------------------------------------------------------------------
# python -m toolkit.dev.notebooks check FILES...
# ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m toolkit.dev.notebooks check FILES...``: exit 1 when any holds injected cells."""
    parser = argparse.ArgumentParser(prog="python -m toolkit.dev.notebooks")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="fail when a notebook source holds injected cells")
    check.add_argument("files", nargs="*", help="notebook sources (.py or .ipynb)")
    args = parser.parse_args(argv)
    problems = check_clean(args.files)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
