"""Glue between ``pipeline.yaml`` and toolkit: step parameters, planning, DAG loading.

``pipeline.yaml`` asks this module, through Ploomber's ``dotted_path`` params, for each
step's config section. The values therefore come from the same layered config whichever
entry point builds the DAG, and Ploomber sees a config edit as a changed parameter and
re-runs exactly the steps it affects.

``toolkit run`` needs only each step's name, source, upstream steps and params to look its
outputs up in the cache, and importing Ploomber costs seconds. ``plan`` reads them from
``pipeline.yaml`` the way Ploomber would, without importing it, and hands any feature it
does not read to Ploomber. Nothing here imports Ploomber at module level: the File client
lives in ``toolkit.ploomber_storage``, loaded only by ``ploomber build``.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import datetime as dt
import importlib
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from toolkit import config as config_mod
from toolkit import storage

if TYPE_CHECKING:
    from toolkit.ploomber_storage import StorageClient

__all__ = [
    "STEPS",
    "NeedsPloomber",
    "NotebookTask",
    "Step",
    "StorageClient",
    "load_dag",
    "notebook_task",
    "plan",
    "resolve_from_env",
    "run_identity",
    "step_config",
    "storage_client",
]

_log = logging.getLogger(__name__)

PROJECT_DIR = config_mod.PROJECT_DIR
STEPS = ("load_transform", "identify_underperformers", "forecast", "optimize", "format_output")

# Which config sections each step depends on: a change elsewhere does not re-run it.
STEP_SECTIONS = {
    "load_transform": ("load_transform",),
    "identify_underperformers": ("underperformers",),
    "forecast": ("forecast",),
    "optimize": ("optimize",),
    "format_output": ("output",),
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
        # A Ploomber build has no run record: name it after its config, so a rebuild with
        # the same config delivers with the same idempotency key.
        values["run_id"] = run_id or f"build-{resolved.digest()[:12]}"
    return values


def storage_client() -> StorageClient:
    """Factory named in ``pipeline.yaml`` (``clients: File:``)."""
    from toolkit.ploomber_storage import StorageClient

    return StorageClient()


def __getattr__(name: str):
    # ``toolkit.pipeline.StorageClient`` still works, importing Ploomber only when used.
    if name == "StorageClient":
        from toolkit.ploomber_storage import StorageClient

        return StorageClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_dag(env: dict | None = None, project_dir: Path = PROJECT_DIR):
    """Build the Ploomber DAG from ``pipeline.yaml``, overriding env values like ``--env--``."""
    os.environ.setdefault("PLOOMBER_STATS_ENABLED", "false")
    from ploomber.spec import DAGSpec

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
# Planning: each step's name, source, upstream and params, without Ploomber
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


class NeedsPloomber(Exception):
    """``pipeline.yaml`` uses a feature the light planner does not read: Ploomber plans it.

    The message names the feature. ``plan`` falls back rather than guess, so a spec the
    planner reads always gives what Ploomber would give, and any other spec still works
    (or fails with Ploomber's own error).
    """


# What the light planner reads; anything else in pipeline.yaml goes to Ploomber.
_SPEC_KEYS = frozenset({"meta", "clients", "tasks", "on_finish", "on_render", "on_failure"})
_META_KEYS = frozenset({"extract_upstream", "extract_product", "jupyter_hot_reload"})
_TASK_KEYS = frozenset(
    {"source", "name", "product", "params", "upstream", "static_analysis"}
    | {"on_finish", "on_render", "on_failure"}
)
_HOOKS = ("on_finish", "on_render", "on_failure")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}")
_TEMPLATE_MARKERS = ("{{", "{%", "{#")
_JINJA_LITERALS = frozenset({"true", "false", "none", "True", "False", "None"})
_SCALARS = (str, int, float, bool, type(None), dt.date)  # what YAML and env values hold
_CELL_MARKER = re.compile(r"^#( %%|%%)(?P<header>(\s.*)?)$")


def plan(env: dict | None = None, project_dir: Path | str = PROJECT_DIR) -> list[Step]:
    """The pipeline's steps in run order: ``pipeline.yaml`` order, each after its upstream.

    Reads ``pipeline.yaml`` and each notebook's ``parameters`` cell the way Ploomber's
    ``DAGSpec`` does (same env values, same ``{{placeholder}}`` rendering and casting, same
    ``dotted_path`` calls), so ``toolkit run`` keys a fully cached run without importing
    Ploomber. A feature it does not read makes it build the DAG with Ploomber instead.

    Args:
        env: Env values overriding ``env.yaml``, as for ``load_dag``.
        project_dir: The folder holding ``pipeline.yaml`` and ``env.yaml``.

    Raises:
        ValueError: a step names an upstream step that does not exist, or steps wait for
            each other in a cycle; the message names them.
    """
    project_dir = Path(project_dir).resolve()
    try:
        steps = _light_steps(env, project_dir)
    except NeedsPloomber as reason:
        _log.info("planning with Ploomber: %s", reason)
        steps = _ploomber_steps(env, project_dir)
    return _topological(steps)


@dataclass(frozen=True)
class NotebookTask:
    """One step rendered for execution, as Ploomber's ``NotebookRunner`` would have it.

    ``products`` and ``upstream_products`` are absolute file paths (the step's workspace);
    ``params`` are the task's params, ``dotted_path`` params called. ``toolkit.notebook_task``
    executes it without importing Ploomber.
    """

    name: str
    source: Path
    params: dict[str, Any]
    products: dict[str, str]
    upstream_products: dict[str, dict[str, str]]
    static_analysis: str  # "strict", "regular" or "disable", as in pipeline.yaml
    set_aside_failed: bool  # on_failure is set_aside_failed_notebook


# The only task hook the light executor runs itself; any other hook needs Ploomber's task.
_SET_ASIDE_HOOK = "toolkit.pipeline.set_aside_failed_notebook"


def notebook_task(
    name: str, env: dict | None = None, project_dir: Path | str = PROJECT_DIR
) -> NotebookTask:
    """Step ``name`` ready to execute without Ploomber, read from ``pipeline.yaml``.

    Raises:
        NeedsPloomber: the task uses a feature only Ploomber's own task runs (another
            hook, a notebook product that is not an ``.ipynb`` file, relative product
            paths, ...): execute it with Ploomber. The message names the feature.
        KeyError: no step is called ``name``.
    """
    project_dir = Path(project_dir).resolve()
    with _in_project(project_dir):
        drafts = {draft["name"]: draft for draft in _light_drafts(env, project_dir)}
        draft = drafts[name]
        hooks = draft["hooks"]
        if (
            set(hooks) - {"on_failure"}
            or hooks.get("on_failure", _SET_ASIDE_HOOK).replace("::", ".") != _SET_ASIDE_HOOK
        ):
            raise NeedsPloomber(f"task {name!r}: a hook other than {_SET_ASIDE_HOOK}")
        if draft["static_analysis"] not in ("strict", "regular", "disable"):
            raise NeedsPloomber(f"task {name!r}: static_analysis {draft['static_analysis']!r}")
        if Path(draft["products"]["nb"]).suffix != ".ipynb":
            raise NeedsPloomber(f"task {name!r}: its nb product is not an .ipynb file")
        upstream = {u: drafts[u]["products"] for u in draft["upstream"] if u in drafts}
        for products in (draft["products"], *upstream.values()):
            if not all(Path(path).is_absolute() for path in products.values()):
                raise NeedsPloomber(f"task {name!r}: relative product paths")
        return NotebookTask(
            name=name,
            source=draft["source"],
            params=_called_params(draft["params"]),
            products=dict(draft["products"]),
            upstream_products={u: dict(products) for u, products in upstream.items()},
            static_analysis=draft["static_analysis"],
            set_aside_failed="on_failure" in hooks,
        )


def _ploomber_steps(env: dict | None, project_dir: Path) -> list[Step]:
    """The steps of the DAG Ploomber builds, in pipeline.yaml order."""
    dag = load_dag(env, project_dir)
    # The order tasks were added in: iterating the DAG itself gives networkx's order.
    names = list(dag._iter())
    return [
        Step(
            name=name,
            source=Path(str(dag[name].source.loc)),
            upstream=tuple(u for u in names if u in dag[name].upstream),
            params=dag[name].params.to_json_serializable(params_only=True),
        )
        for name in names
    ]


def _topological(steps: list[Step]) -> list[Step]:
    """Steps in pipeline.yaml order, each after its upstream steps."""
    names = [step.name for step in steps]
    for step in steps:
        unknown = [u for u in step.upstream if u not in names]
        if unknown:
            raise ValueError(
                f"step {step.name!r} names upstream step(s) {', '.join(map(repr, unknown))} "
                f"that pipeline.yaml does not have; its steps: {', '.join(names)}"
            )
    done: list[Step] = []
    finished: set[str] = set()
    while len(done) < len(steps):
        ready = next(
            (
                step
                for step in steps
                if step.name not in finished and all(u in finished for u in step.upstream)
            ),
            None,
        )
        if ready is None:
            waiting = {step.name: step.upstream for step in steps if step.name not in finished}
            looped = [name for name in waiting if _reaches(name, name, waiting)]
            raise ValueError(
                f"pipeline.yaml has a cycle: steps {', '.join(looped)} each wait, through "
                "their upstream, for themselves"
            )
        done.append(ready)
        finished.add(ready.name)
    return done


def _reaches(start: str, target: str, upstream_of: dict[str, tuple[str, ...]]) -> bool:
    """Whether following upstream links from ``start`` leads to ``target``."""
    seen: set[str] = set()
    todo = list(upstream_of.get(start, ()))
    while todo:
        name = todo.pop()
        if name == target:
            return True
        if name not in seen:
            seen.add(name)
            todo += upstream_of.get(name, ())
    return False


def _light_steps(env: dict | None, project_dir: Path) -> list[Step]:
    """The steps as Ploomber would build them, read without Ploomber.

    Raises ``NeedsPloomber`` for anything this does not read exactly as Ploomber does.
    """
    with _in_project(project_dir):  # where Ploomber imports and calls dotted paths
        drafts = _light_drafts(env, project_dir)
        position = {draft["name"]: index for index, draft in enumerate(drafts)}
        return [
            Step(
                name=draft["name"],
                source=draft["source"],
                upstream=tuple(
                    sorted(draft["upstream"], key=lambda u: (position.get(u, len(drafts)), u))
                ),
                params=_called_params(draft["params"]),
            )
            for draft in drafts
        ]


def _light_drafts(env: dict | None, project_dir: Path) -> list[dict]:
    """Each task of ``pipeline.yaml`` as ``_task_draft`` reads it, dotted paths not called.

    Call it in ``_in_project``. Raises ``NeedsPloomber`` as ``_light_steps`` does.
    """
    if project_dir.parent.name == "src":
        # Ploomber may then take a setup.py folder above as the project root.
        raise NeedsPloomber("a src/<package>/pipeline.yaml layout")
    try:
        spec = yaml.safe_load((project_dir / "pipeline.yaml").read_text())
    except yaml.YAMLError as exc:
        raise NeedsPloomber(f"pipeline.yaml does not parse ({exc})") from None
    if not isinstance(spec, dict):
        raise NeedsPloomber("pipeline.yaml is not a mapping")
    _only_keys(spec, _SPEC_KEYS, "pipeline.yaml")
    values = _env_values(_env_with(env, project_dir))
    spec = _expanded(spec, values)
    meta = spec.get("meta") or {}
    if not isinstance(meta, dict):
        raise NeedsPloomber("meta is not a mapping")
    _only_keys(meta, _META_KEYS, "meta")
    if meta.get("extract_product", False) is not False:
        raise NeedsPloomber("meta.extract_product")
    extract_upstream = meta.get("extract_upstream", True)
    if not isinstance(extract_upstream, bool):
        raise NeedsPloomber("meta.extract_upstream is not true or false")
    tasks = spec.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise NeedsPloomber("tasks is not a list of tasks")

    for hook in _HOOKS:
        if hook in spec:
            _callable(spec[hook], hook)
    clients = spec.get("clients") or {}
    if not isinstance(clients, dict):
        raise NeedsPloomber("clients is not a mapping")
    for product_class, factory in clients.items():
        if factory is not None:  # checked, not called: the File client imports Ploomber
            _callable(factory, f"clients.{product_class}")
    drafts = [_task_draft(task, extract_upstream, project_dir) for task in tasks]
    names = [draft["name"] for draft in drafts]
    if len(set(names)) != len(names):
        raise NeedsPloomber("two tasks have the same name")
    return drafts


def _only_keys(mapping: dict, known: frozenset[str], where: str) -> None:
    unknown = sorted(str(key) for key in set(mapping) - known)
    if unknown:
        raise NeedsPloomber(f"{where} key(s) {', '.join(unknown)}")


def _cast(value: Any) -> Any:
    """Ploomber's cast of an env or spec value (``cast_if_possible``): "true", "None",
    "[1, 2]" and "0.5" become Python values; everything else stays as it is."""
    if isinstance(value, str):
        lowered = value.lower()
        if lowered == "false":
            return False
        if lowered == "true":
            return True
        if lowered in ("none", "null"):
            return None
        try:
            return ast.literal_eval(value)
        except Exception:  # noqa: BLE001 - exactly Ploomber's rule: not a literal, keep it
            pass
    return value


def _leaves(data: Any, path: tuple = ()) -> Iterator[tuple[Any, Any, Any, tuple]]:
    """Each scalar in nested dicts and lists as (holder, key, value, path).

    Visits in Ploomber's order (``iterate_nested_dict``), including a YAML alias's shared
    mapping once per reference, while the caller replaces values in place, so values
    come out exactly as Ploomber's expansion leaves them.
    """
    items = data.items() if isinstance(data, dict) else enumerate(data)
    for key, value in items:
        if isinstance(value, dict | list):
            yield from _leaves(value, (*path, key))
        elif isinstance(value, _SCALARS):
            yield data, key, value, (*path, key)
        else:
            raise NeedsPloomber(f"a {type(value).__name__} value at {_where(path, key)}")


def _where(path: tuple, key: Any = None) -> str:
    """A value's place in nested data, for messages: ``tasks.0.params.config``."""
    return ".".join(str(part) for part in (*path, *(() if key is None else (key,))))


def _env_values(env: dict) -> dict:
    """The env as Ploomber's ``EnvDict`` holds it: every value cast."""
    for key in env:
        if not isinstance(key, str) or key.startswith("_") or key in ("meta", "path"):
            raise NeedsPloomber(f"env key {key!r} has a meaning of its own to Ploomber")
    values = copy.deepcopy(env)
    for holder, key, value, path in _leaves(values):
        if "__" in str(key):
            raise NeedsPloomber(f"env key {_where(path)!r} (Ploomber rejects '__')")
        if isinstance(value, str) and any(m in value for m in (*_TEMPLATE_MARKERS, "[[")):
            raise NeedsPloomber(f"env value {_where(path)} is itself a template")
        holder[key] = _cast(value)
    return values


def _expanded(spec: dict, values: dict) -> dict:
    """The spec with every ``{{name}}`` rendered from the env and every value cast, as
    Ploomber's ``DAGSpec`` expands it (Jinja renders a value with ``str``)."""
    spec = copy.deepcopy(spec)  # keeps YAML aliases shared, as Ploomber's deepcopy does
    for holder, key, value, path in _leaves(spec):
        if isinstance(value, str) and any(m in value for m in _TEMPLATE_MARKERS):
            holder[key] = _cast(_rendered(value, values, _where(path)))
        else:
            holder[key] = _cast(value)
    return spec


def _rendered(template: str, values: dict, where: str) -> str:
    """A value with simple ``{{name}}`` placeholders filled in; anything more is Jinja's."""
    rest = _PLACEHOLDER.sub("", template)
    if any(m in rest for m in _TEMPLATE_MARKERS) or "\n" in template or "\r" in template:
        raise NeedsPloomber(f"{where} is a Jinja template beyond {{{{name}}}}")

    def value_of(match: re.Match) -> str:
        name = match[1]
        if name in _JINJA_LITERALS or name not in values:
            raise NeedsPloomber(f"{where} uses {{{{{name}}}}}, which is not an env value")
        return str(values[name])

    return _PLACEHOLDER.sub(value_of, template)


# The working directory is the process's: run loops planning in threads (a backfill) take
# turns, so each puts back the directory it found.
_PROJECT_LOCK = threading.RLock()


@contextlib.contextmanager
def _in_project(project_dir: Path) -> Iterator[None]:
    """Import and call dotted paths as Ploomber's ``to_dag`` does: the project folder first
    on ``sys.path`` and as the working directory."""
    with _PROJECT_LOCK:
        before = os.getcwd()
        path = os.path.abspath(project_dir)
        sys.path.insert(0, path)
        os.chdir(path)
        try:
            yield
        finally:
            sys.path.remove(path)
            os.chdir(before)


def _callable(dotted: Any, where: str):
    """The function a dotted path names, or ``NeedsPloomber`` (Ploomber then says why)."""
    if not isinstance(dotted, str):
        raise NeedsPloomber(f"{where} is not a dotted path string")
    module_name, _, name = dotted.replace("::", ".").rpartition(".")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise NeedsPloomber(f"{where}: cannot load {dotted!r} ({exc})") from None
    if not callable(function):
        raise NeedsPloomber(f"{where}: {dotted!r} is not callable")
    return function


def _strict_dotted_path(text: str) -> bool:
    """Ploomber's test for a ``module::function`` param (``_validate_strict_dotted_path``)."""
    parts = text.split("::")
    return bool(re.match(r"[\w\.]+::\w+", text)) and len(parts) == 2 and "." not in parts[1]


def _task_draft(task: Any, extract_upstream: bool, project_dir: Path) -> dict:
    """One task's name, source, upstream names and params (dotted paths not called yet)."""
    if not isinstance(task, dict):
        raise NeedsPloomber(f"task {task!r} is not a mapping")
    source = task.get("source")
    _only_keys(task, _TASK_KEYS, f"task {source!r}")
    if not isinstance(source, str) or Path(source).suffix != ".py":
        raise NeedsPloomber(f"task source {source!r} is not a .py notebook")
    path = Path(project_dir, source)
    if not path.is_file():
        raise NeedsPloomber(f"task source {source!r} does not exist")
    name = task.get("name")
    if name is None:
        name = path.stem
    elif not isinstance(name, str) or not name:
        raise NeedsPloomber(f"task {source!r}: name {name!r} is not a string")
    product = task.get("product")
    if not (
        isinstance(product, dict)
        and "nb" in product
        and all(isinstance(file, str) for file in product.values())
    ):
        raise NeedsPloomber(f"task {name!r}: product is not a dict of file paths with nb")
    for hook in _HOOKS:
        if task.get(hook) is not None:
            _callable(task[hook], f"task {name!r} {hook}")
    if extract_upstream:
        if task.get("upstream"):
            raise NeedsPloomber(f"task {name!r}: upstream given with meta.extract_upstream")
        upstream = _notebook_upstream(path)
    else:
        upstream = task.get("upstream")
        upstream = [] if upstream is None else [upstream] if isinstance(upstream, str) else upstream
        if not isinstance(upstream, list) or not all(isinstance(u, str) for u in upstream):
            raise NeedsPloomber(f"task {name!r}: upstream is not a name or a list of names")
    if any("*" in u for u in upstream):
        raise NeedsPloomber(f"task {name!r}: a wildcard in upstream")
    params = task.get("params", {})
    if not isinstance(params, dict):
        raise NeedsPloomber(f"task {name!r}: params is not a mapping")
    for key, value in params.items():
        if key in ("upstream", "product", "resources_"):
            raise NeedsPloomber(f"task {name!r}: a param named {key!r}")
        if isinstance(value, str) and _strict_dotted_path(value):
            raise NeedsPloomber(f"task {name!r}: param {key!r} is a dotted path string")
        if isinstance(value, dict) and "dotted_path" in value:
            dotted = value["dotted_path"]
            if not (isinstance(dotted, str) and re.fullmatch(r"[\w.]+::\w+", dotted)):
                raise NeedsPloomber(f"task {name!r}: param {key!r} dotted_path {dotted!r}")
            kwargs = [k for k in value if k != "dotted_path"]
            if not all(isinstance(k, str) and not k.startswith("_") for k in kwargs):
                raise NeedsPloomber(f"task {name!r}: param {key!r} has odd argument names")
            _callable(dotted, f"task {name!r} param {key!r}")
    return {
        "name": name,
        "source": path,
        "upstream": list(dict.fromkeys(upstream)),
        "params": params,
        "products": product,
        "static_analysis": task.get("static_analysis", "regular"),
        "hooks": {hook: task[hook] for hook in _HOOKS if task.get(hook) is not None},
    }


def _called_params(params: dict) -> dict:
    """Params as Ploomber passes them: each ``{dotted_path: module::function, **kwargs}``
    replaced by ``function(**kwargs)``; everything else as it is."""
    out = {}
    for key, value in params.items():
        if isinstance(value, dict) and "dotted_path" in value:
            kwargs = {k: copy.deepcopy(v) for k, v in value.items() if k != "dotted_path"}
            result = _callable(value["dotted_path"], f"param {key!r}")(**kwargs)
            if result is None:
                raise NeedsPloomber(f"param {key!r}: {value['dotted_path']} returned None")
            out[key] = result
        else:
            out[key] = value
    return copy.deepcopy(out)


def _notebook_upstream(path: Path) -> list[str]:
    """The names in ``upstream = [...]`` (or none for ``upstream = None``) in a py:percent
    notebook's cell tagged ``parameters``, read with ``ast``, never executed."""
    code = _parameters_cell(path)
    try:
        module = ast.parse(code)
    except SyntaxError:
        raise NeedsPloomber(f"{path.name}: the parameters cell is not plain Python") from None
    bindings = [
        node
        for node in ast.walk(module)
        if isinstance(node, ast.Name)
        and node.id == "upstream"
        and isinstance(node.ctx, ast.Store)
        or isinstance(node, ast.FunctionDef | ast.ClassDef | ast.alias)
        and "upstream" in (getattr(node, "name", None), getattr(node, "asname", None))
    ]
    assignment = next(
        (
            node
            for node in module.body
            if isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "upstream"
        ),
        None,
    )
    shares_a_line = assignment is not None and any(
        other is not assignment
        and other.lineno <= assignment.end_lineno
        and other.end_lineno >= assignment.lineno
        for other in module.body
    )
    if assignment is None or len(bindings) != 1 or shares_a_line:
        raise NeedsPloomber(f"{path.name}: no single plain `upstream = ...` in its parameters")
    try:
        value = ast.literal_eval(assignment.value)
    except (ValueError, TypeError):
        raise NeedsPloomber(f"{path.name}: upstream is not a literal") from None
    if value is None:
        return []
    if isinstance(value, list | tuple | set | dict) and all(isinstance(u, str) for u in value):
        return list(value)
    raise NeedsPloomber(f"{path.name}: upstream is not None or a list of step names")


def _parameters_cell(path: Path) -> str:
    """The code of the cell tagged ``parameters`` in a py:percent notebook."""
    text = path.read_text()
    lines = text.splitlines()
    if "jupytext:" in text and not re.search(r"format_name:\s*percent\b", text):
        raise NeedsPloomber(f"{path.name}: its jupytext header names another format")
    if any(re.match(r"^(# <codecell>|# In\[)|^[%!]", line) for line in lines):
        raise NeedsPloomber(f"{path.name}: not a plain py:percent notebook")
    cells: list[tuple[str, list[str]]] = []
    for line in lines:
        marker = _CELL_MARKER.match(line)
        if marker:
            cells.append((marker["header"], []))
        elif cells:
            cells[-1][1].append(line)
    if not cells:
        raise NeedsPloomber(f"{path.name}: not a py:percent notebook")
    tagged = [(header, body) for header, body in cells if "parameters" in header]
    if len(tagged) != 1:
        raise NeedsPloomber(f"{path.name}: not exactly one cell header names parameters")
    header, body = tagged[0]
    match = re.fullmatch(r"\s*tags=(\[[^\]]*\])\s*", header)
    try:
        tags = json.loads(match[1]) if match else []
    except json.JSONDecodeError:
        tags = []
    if "parameters" not in tags:
        raise NeedsPloomber(f"{path.name}: cell header {header.strip()!r}")
    return "\n".join(body)
