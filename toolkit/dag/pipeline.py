"""Glue between ``pipeline.yaml`` and toolkit: step parameters, planning, DAG loading.

``pipeline.yaml`` asks this module, through Ploomber's ``dotted_path`` params, for each
step's config section. The values therefore come from the same layered config whichever
entry point builds the DAG, and Ploomber sees a config edit as a changed parameter and
re-runs exactly the steps it affects.

``toolkit run`` needs each step's name, source, upstream steps and params to look its
outputs up in the cache. ``plan`` takes them from the DAG Ploomber builds from
``pipeline.yaml``, and keeps them in ``.toolkit/plans/`` under a key of everything that
decides them (pipeline.yaml, env.yaml, the notebooks, the configs, toolkit's code, the env
values): a fully cached run then need not import Ploomber (seconds) at all. Nothing here
imports Ploomber at module level: the File client lives in ``toolkit.dag.client``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit import config as config_mod
from toolkit import project
from toolkit.data import storage

__all__ = [
    "STEPS",
    "Step",
    "load_dag",
    "plan",
    "resolve_from_env",
    "run_identity",
    "set_aside_failed_notebook",
    "step_config",
]

_log = logging.getLogger(__name__)

STEPS = (
    "load_transform",
    "identify_underperformers",
    "forecast",
    "optimize",
    "check_forecast",
    "format_output",
)

# Which config sections each step depends on: a change elsewhere does not re-run it.
STEP_SECTIONS = {
    "load_transform": ("load_transform",),
    "identify_underperformers": ("underperformers",),
    "forecast": ("forecast",),
    "optimize": ("optimize",),
    "format_output": ("output",),
    "check_forecast": (),  # forecast against actual: no settings
}


def _split(value, sep: str) -> list[str]:
    if value in (None, "", "None"):
        return []
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    if str(value).lstrip().startswith("["):  # toolkit run passes JSON lists
        return [str(v) for v in json.loads(value)]
    return [part.strip() for part in str(value).split(sep) if part.strip()]


def resolve_from_env(country=None, period=None, category=None, configs="", patches=""):
    """Resolve the layered config from Ploomber env values (strings, lists or None)."""
    return config_mod.resolve(
        country=country,
        period=period,
        category=category,
        configs=_split(configs, ","),
        patches=_split(patches, ";"),
    )


def run_identity(country=None, period=None, category=None, configs="", patches=""):
    """The ``run`` parameter of every step: market, period, category and storage root."""
    cfg = resolve_from_env(country, period, category, configs, patches).config
    return {
        "market": cfg.country,
        "period": cfg.period,
        "category": cfg.category,
        "root": storage.root(),
    }


def step_config(
    step, country=None, period=None, category=None, configs="", patches="", run_id=None
):
    """The ``config`` parameter of ``step``: only the config section it reads.

    A step added with ``toolkit new-step`` reads no section until one is added to the
    config model, so it gets ``{}``.
    """
    resolved = resolve_from_env(country, period, category, configs, patches)
    sections = STEP_SECTIONS.get(step, ())
    values = resolved.section(sections[0]) if sections else {}
    if step == "format_output":
        # A Ploomber build has no run record: name it after its config. The notebook
        # writes no run id into its files, which later runs may reuse from the cache.
        values["run_id"] = run_id or f"build-{resolved.digest()[:12]}"
    return values


def load_dag(env: dict | None = None, project_dir: Path | None = None):
    """Build the Ploomber DAG from ``pipeline.yaml``, overriding env values like ``--env--``."""
    project_dir = project.resolve(project_dir)
    # No telemetry from Ploomber, whatever runs it: every toolkit path to Ploomber comes
    # here (a bare `ploomber build` gets the same from the venv's .pth file).
    os.environ["PLOOMBER_STATS_ENABLED"] = "false"
    os.environ["PLOOMBER_VERSION_CHECK_DISABLED"] = "1"
    from ploomber.spec import DAGSpec  # seconds to import: only where a DAG is needed

    spec = DAGSpec(str(Path(project_dir) / "pipeline.yaml"), env=_env_with(env, project_dir))
    return spec.to_dag()


def _env_with(overrides: dict | None, project_dir: Path) -> dict:
    data = config_mod.load_yaml_text((Path(project_dir) / "env.yaml").read_text(), "env.yaml") or {}
    if os.environ.get("TOOLKIT_BUILD_DIR"):
        data["build_dir"] = os.environ["TOOLKIT_BUILD_DIR"]
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    data["build_dir"] = str(data.get("build_dir", "")).replace("{{here}}", str(project_dir))
    return data


def set_aside_failed_notebook(task) -> None:
    """Task ``on_failure`` hook: rename the partial notebook so no product of a failed step
    exists. It stays beside the outputs, as ``<step>.failed.ipynb``, for debugging."""
    set_aside(Path(str(task.product["nb"])))


def set_aside(notebook: Path) -> None:
    """Rename a failed step's partial notebook to ``<step>.failed.ipynb``, if it exists."""
    if notebook.exists():
        notebook.replace(notebook.with_name(f"{notebook.stem}.failed.ipynb"))


# ---------------------------------------------------------------------------
# Planning: each step's name, source, upstream and params, as Ploomber renders them
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """What ``toolkit run`` needs of a step to key, look up and schedule it.

    ``upstream`` is in ``pipeline.yaml`` order; ``params`` are the task's params as
    Ploomber passes them (``dotted_path`` params already called), without ``upstream``
    and ``product``.
    """

    name: str
    source: Path
    upstream: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict, hash=False)


PLAN_FOLDER = ".toolkit/plans"
# The files whose content decides a plan, relative to the project.
PLAN_INPUTS = ("pipeline.yaml", "env.yaml", "notebooks/**/*", "configs/**/*.yaml")
# The toolkit code that computes the params (dotted_path params, the config they read).
PLAN_CODE = ("project.py", "dag/*.py", "config/*.py", "data/storage.py")


def plan(env: dict | None = None, project_dir: Path | str | None = None) -> list[Step]:
    """The pipeline's steps in run order, each after its upstream steps.

    Ploomber builds the DAG; its steps are kept under a key of the files and values that
    decide them, and read back from there while none of them changes.

    Args:
        env: Env values overriding ``env.yaml``, as for ``load_dag``.
        project_dir: The folder holding ``pipeline.yaml`` (default: the working
            directory's project).
    """
    project_dir = project.resolve(project_dir).resolve()
    kept = project_dir / PLAN_FOLDER / f"{_plan_key(env, project_dir)}.json"
    try:
        data = json.loads(kept.read_text())
    except (OSError, ValueError):
        data = None
    if data is None:
        _log.info("planning with Ploomber; the plan is kept as %s", kept)
        dag = load_dag(env, project_dir)
        names = list(dag)  # Ploomber's topological order: each step after its upstream
        data = [
            {
                "name": name,
                "source": str(dag[name].source.loc),
                "upstream": [u for u in names if u in dag[name].upstream],
                "params": dag[name].params.to_json_serializable(params_only=True),
            }
            for name in names
        ]
        storage.write_bytes(str(kept), json.dumps(data, default=str).encode())
    return [Step(s["name"], Path(s["source"]), tuple(s["upstream"]), s["params"]) for s in data]


def _plan_key(env: dict | None, project_dir: Path) -> str:
    """Hash of what decides the plan: project files, the code computing params, env values."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent.parent
    folders = [(project_dir, PLAN_INPUTS), (package, PLAN_CODE)]
    for folder, patterns in folders:
        for pattern in patterns:
            for path in sorted(folder.glob(pattern)):
                if path.is_file() and "__pycache__" not in path.parts:
                    digest.update(str(path.relative_to(folder)).encode() + b"\0")
                    digest.update(path.read_bytes() + b"\0")
    values = _env_with(env, project_dir)
    named = {k: v for k, v in values.items() if k != "configs"}  # URLs: their content below
    digest.update(json.dumps(named, sort_keys=True, default=str).encode())
    for name in ("TOOLKIT_ROOT", "TOOLKIT_PROJECT"):
        digest.update(f"{name}={os.environ.get(name, '')}\0".encode())
    for url in _split(values.get("configs"), ","):  # overlays named by URL: their content
        digest.update(storage.read_bytes(url))
    return digest.hexdigest()[:32]
