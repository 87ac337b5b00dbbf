"""The Launch form, generated from the config model: fields, bounds, help, patches, checks.

Nothing here knows about Streamlit. The app asks for the form's fields (``form_groups``),
shows them, hands the values back to ``check``, and launches only when ``check`` found no
problem. Every value reaches a run as a ``key.path=value`` patch whose key comes from the
model and whose value is written as a YAML literal that reads back as exactly that value,
so a value is always data, never syntax.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import BaseModel

from toolkit import config as config_mod
from toolkit import project

__all__ = [
    "FieldProblem",
    "FieldSpec",
    "FormCheck",
    "Group",
    "Identity",
    "baseline",
    "check",
    "describe_origin",
    "differences",
    "display_value",
    "field_spec",
    "form_fields",
    "form_groups",
    "format_value",
    "from_widget",
    "identity_patches",
    "market_options",
    "patches_from",
    "period_options",
    "to_widget",
    "values_of",
]

Kind = Literal["slider", "float", "int", "bool", "choice", "text", "float_list"]

# Where the business settings sit: these groups are shown first, everything else is
# "Advanced". Which widget a field gets follows from its type and bounds in the model.
PRIMARY_GROUPS: dict[str, tuple[str, str]] = {
    "optimize.weights": ("weights", "slider"),
    "optimize.constraints": ("constraints", "number"),
}
SECTION_TITLES = {
    "weights": "Objective weights",
    "constraints": "Business constraints",
}
FORM_CHANGE = "Changed in this form"
# Suggested price levels for list fields of fractions: -50% .. +50% in 5% steps.
FRACTION_GRID = tuple(round(x / 100, 2) for x in range(-50, 55, 5))
# Why a launch may not set config.OPERATOR_KEYS (endpoints, executors, schedulers, kernels).
OPERATOR_SETTING = (
    "an operator setting: it comes from configs/ or the environment, not the launch form"
)


# ---------------------------------------------------------------------------
# The fields
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldSpec:
    """One form field, read from the config model."""

    key: str  # dotted path in the config, e.g. "optimize.weights.revenue"
    label: str
    help: str  # the model field's description
    kind: Kind
    group: str
    default: Any  # the model default
    minimum: float | None = None
    maximum: float | None = None
    min_exclusive: bool = False
    max_exclusive: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    optional: bool = False
    pattern: str | None = None
    min_items: int | None = None
    max_items: int | None = None

    @property
    def bounds_text(self) -> str:
        """The allowed range in words, e.g. ``0 to 1`` or ``above 0, at most 2``."""
        low = self.minimum is not None
        high = self.maximum is not None
        if low and high and not self.min_exclusive and not self.max_exclusive:
            return f"{_num(self.minimum)} to {_num(self.maximum)}"
        parts = []
        if low:
            parts.append(f"{'above' if self.min_exclusive else 'at least'} {_num(self.minimum)}")
        if high:
            parts.append(f"{'below' if self.max_exclusive else 'at most'} {_num(self.maximum)}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Group:
    name: str
    title: str
    help: str
    advanced: bool
    fields: tuple[FieldSpec, ...]


def _num(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:g}" if abs(value) < 1e6 else f"{value:,.0f}"


def _label(name: str) -> str:
    return name.replace("_", " ").capitalize()


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _spec_for(key: str, name: str, info, group: str, widget: str | None) -> FieldSpec:
    annotation, optional = _unwrap_optional(info.annotation)
    bounds: dict[str, Any] = {}
    for meta in info.metadata:
        if isinstance(meta, Ge):
            bounds.update(minimum=float(meta.ge), min_exclusive=False)
        elif isinstance(meta, Gt):
            bounds.update(minimum=float(meta.gt), min_exclusive=True)
        elif isinstance(meta, Le):
            bounds.update(maximum=float(meta.le), max_exclusive=False)
        elif isinstance(meta, Lt):
            bounds.update(maximum=float(meta.lt), max_exclusive=True)
        elif isinstance(meta, MinLen):
            bounds["min_items"] = meta.min_length
        elif isinstance(meta, MaxLen):
            bounds["max_items"] = meta.max_length
        elif getattr(meta, "pattern", None):
            bounds["pattern"] = meta.pattern
    default = info.get_default(call_default_factory=True)
    common = dict(
        key=key,
        label=_label(name),
        help=info.description or "",
        group=group,
        default=default,
        optional=optional,
        **bounds,
    )
    if typing.get_origin(annotation) is Literal:
        return FieldSpec(kind="choice", choices=tuple(typing.get_args(annotation)), **common)
    if annotation is bool:
        return FieldSpec(kind="bool", **common)
    if annotation is int:
        return FieldSpec(kind="int", step=1, **common)
    if annotation is float:
        top = bounds.get("maximum")
        if widget == "slider" and top is not None and bounds.get("minimum") is not None:
            return FieldSpec(kind="slider", step=0.05, **common)
        step = 0.01 if top is not None and top <= 2 else (1000.0 if (top or 0) > 1e6 else 1.0)
        return FieldSpec(kind="float", step=step, **common)
    if typing.get_origin(annotation) is list and typing.get_args(annotation) == (float,):
        return FieldSpec(kind="float_list", choices=FRACTION_GRID, **common)
    if annotation is str:
        return FieldSpec(kind="text", **common)
    raise TypeError(f"config field {key} has a type the form cannot show: {info.annotation}")


def _walk(
    model: type[BaseModel], prefix: str, group: str | None, widget: str | None, out: list
) -> None:
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        if not prefix and name in config_mod.IDENTITY_KEYS:
            continue  # market, period and category have their own pickers
        if config_mod.operator_key(key):
            continue  # not the launcher's to set (see OPERATOR_SETTING)
        annotation, _ = _unwrap_optional(info.annotation)
        if _is_model(annotation):
            sub_group, sub_widget = PRIMARY_GROUPS.get(key, (group or name, widget))
            _walk(annotation, f"{key}.", sub_group, sub_widget, out)
        else:
            out.append(_spec_for(key, name, info, group or name, widget))


_FIELDS_CACHE: dict[type, tuple[FieldSpec, ...]] = {}


def form_fields(model: type[BaseModel] = config_mod.ToolkitConfig) -> tuple[FieldSpec, ...]:
    """Every leaf of the model a launcher may set, in model order: not the run identity
    (it has its own pickers), not ``config.OPERATOR_KEYS``."""
    if model not in _FIELDS_CACHE:
        out: list[FieldSpec] = []
        _walk(model, "", None, None, out)
        _FIELDS_CACHE[model] = tuple(out)
    return _FIELDS_CACHE[model]


def field_spec(key: str, model: type[BaseModel] = config_mod.ToolkitConfig) -> FieldSpec:
    for spec in form_fields(model):
        if spec.key == key:
            return spec
    raise KeyError(f"{key!r} is not a setting of the form")


def _group_help(model: type[BaseModel], group: str) -> str:
    for path in PRIMARY_GROUPS:
        if PRIMARY_GROUPS[path][0] == group:
            node: Any = model
            *parents, leaf = path.split(".")
            for part in parents:
                node = node.model_fields[part].annotation
            return node.model_fields[leaf].description or ""
    info = model.model_fields.get(group)
    annotation = _unwrap_optional(info.annotation)[0] if info else None
    if info and info.description:
        return info.description
    doc = getattr(annotation, "__doc__", None) or ""
    return "" if doc.startswith(annotation.__name__ + "(") else doc.strip()


def form_groups(model: type[BaseModel] = config_mod.ToolkitConfig) -> list[Group]:
    """The form's sections: objective weights and constraints first, the rest advanced."""
    groups: dict[str, list[FieldSpec]] = {}
    for spec in form_fields(model):
        groups.setdefault(spec.group, []).append(spec)
    primary = [g for g, _ in PRIMARY_GROUPS.values()]
    ordered = [g for g in primary if g in groups] + [g for g in groups if g not in primary]
    return [
        Group(
            name=name,
            title=SECTION_TITLES.get(name, _label(name)),
            help=_group_help(model, name),
            advanced=name not in primary,
            fields=tuple(groups[name]),
        )
        for name in ordered
    ]


# ---------------------------------------------------------------------------
# Values: widgets <-> config values <-> patches
# ---------------------------------------------------------------------------


def to_widget(spec: FieldSpec, value: Any) -> Any:
    """The value as its widget holds it (``None`` text is an empty box)."""
    if spec.kind == "text":
        return "" if value is None else str(value)
    if spec.kind == "float_list":
        return [float(v) for v in (value or [])]
    if spec.kind == "int":
        return int(value)
    if spec.kind in ("float", "slider"):
        return float(value)
    return value


def from_widget(spec: FieldSpec, raw: Any) -> Any:
    """The config value of what a widget holds."""
    if spec.kind == "text":
        text = "" if raw is None else str(raw).strip()
        return None if (text == "" and spec.optional) else text
    if spec.kind == "float_list":
        return sorted(float(v) for v in (raw or []))
    return raw


def format_value(value: Any) -> str:
    """A YAML literal that ``config.parse_patch`` reads back as exactly ``value``.

    Strings are always quoted (JSON escaping is valid YAML), so ``US; touch x``,
    ``$(id)``, ``--help``, ``NO`` or ``2026-11`` stay the text they are.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a finite number")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    raise TypeError(f"cannot use a {type(value).__name__} as a setting value")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def patches_from(values: Mapping[str, Any], base: Mapping[str, Any]) -> list[str]:
    """``key=value`` patches for the form values that differ from ``base``.

    Raises:
        KeyError: a key is not a setting of the form (keys come from the model only).
        ValueError, TypeError: a value cannot be written as a literal.
    """
    out = []
    for key, value in values.items():
        field_spec(key)  # only the model's keys may become patches
        if key in base and _same(value, base[key]):
            continue
        out.append(f"{key}={format_value(value)}")
    return out


@dataclass(frozen=True)
class Identity:
    """What a run is for: market, month and, optionally, one category."""

    country: str
    period: str
    category: str | None = None

    def label(self) -> str:
        return f"{self.country} {self.period} {self.category or 'all categories'}"


def identity_patches(identity: Identity) -> list[str]:
    """The run identity as patches (``category=all`` means no category)."""
    return [
        f"country={format_value(identity.country)}",
        f"period={format_value(identity.period)}",
        f"category={format_value(identity.category or 'all')}",
    ]


def baseline(
    identity: Identity, project_dir: Path | str | None = None
) -> config_mod.ResolvedConfig:
    """The config a run for ``identity`` gets without any change in the form.

    Raises:
        ConfigError: the identity is invalid (unknown market, malformed month, ...).
    """
    project_dir = project.resolve(project_dir)
    return config_mod.resolve(patches=identity_patches(identity), project_dir=project_dir)


def _lookup(data: Mapping[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        node = node[part]
    return node


def values_of(resolved: config_mod.ResolvedConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The form's values in a resolved config (or a record's ``config`` mapping)."""
    data = resolved.as_dict() if isinstance(resolved, config_mod.ResolvedConfig) else resolved
    out = {}
    for spec in form_fields():
        try:
            out[spec.key] = _lookup(data, spec.key)
        except (KeyError, TypeError):
            out[spec.key] = spec.default
    return out


# ---------------------------------------------------------------------------
# Checking a form before anything runs
# ---------------------------------------------------------------------------


@dataclass
class FieldProblem:
    """Why the form cannot launch, attached to a field (or a group, or the identity)."""

    key: str
    message: str
    label: str = ""
    group: str = ""

    def __str__(self) -> str:
        return f"{self.label or self.key}: {self.message}"


@dataclass
class FormCheck:
    identity: Identity
    changes: list[str] = field(default_factory=list)  # the form's patches
    resolved: config_mod.ResolvedConfig | None = None
    problems: list[FieldProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.resolved is not None and not self.problems

    @property
    def patches(self) -> list[str]:
        """Identity and form patches: what ``toolkit run --patch`` gets, in order."""
        return identity_patches(self.identity) + self.changes

    def problems_for(self, group: str) -> list[FieldProblem]:
        return [p for p in self.problems if p.group == group]


def _problem(key: str, message: str) -> FieldProblem:
    if key in config_mod.IDENTITY_KEYS:
        return FieldProblem(key, message, _label(key), "identity")
    try:
        spec = field_spec(key)
        return FieldProblem(key, message, spec.label, spec.group)
    except KeyError:
        pass
    # A model-level check on a section (e.g. the weights together): name the group.
    for spec in form_fields():
        if spec.key.startswith(f"{key}."):
            title = SECTION_TITLES.get(spec.group, _label(spec.group))
            return FieldProblem(key, message, title, spec.group)
    return FieldProblem(key, message, key, "")


def _identity_problems(identity: Identity, project_dir: Path | str) -> list[FieldProblem]:
    """Check market, month and category against the model before any file is looked up."""
    problems = []
    fields = config_mod.ToolkitConfig.model_fields
    for key in config_mod.IDENTITY_KEYS:
        value = getattr(identity, key)
        if value is None and key == "category":
            continue  # no category: the whole market
        pattern = next(
            (m.pattern for m in fields[key].metadata if getattr(m, "pattern", None)), None
        )
        if not isinstance(value, str) or (pattern and not re.fullmatch(pattern, value)):
            problems.append(_problem(key, f"{value!r} is not valid: {fields[key].description}"))
    known = market_options(project_dir)
    if not problems and identity.country not in known:
        problems.append(
            _problem("country", f"unknown market {identity.country!r} (known: {', '.join(known)})")
        )
    return problems


def _pre_check(values: Mapping[str, Any]) -> list[FieldProblem]:
    """Type checks the config model would report less clearly."""
    problems = []
    for key, value in values.items():
        if config_mod.operator_key(str(key)):
            problems.append(FieldProblem(key, OPERATOR_SETTING, key, ""))
            continue
        try:
            spec = field_spec(key)
        except KeyError:
            problems.append(FieldProblem(key, "not a setting of this form", key, ""))
            continue
        if spec.kind in ("float", "slider", "int") and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(float(value))
        ):
            problems.append(_problem(key, f"must be a number, got {value!r}"))
        elif spec.kind == "float_list" and not (
            isinstance(value, list | tuple)
            and all(isinstance(v, int | float) and math.isfinite(float(v)) for v in value)
        ):
            problems.append(_problem(key, f"must be a list of numbers, got {value!r}"))
    return problems


def check(
    identity: Identity,
    values: Mapping[str, Any],
    project_dir: Path | str | None = None,
) -> FormCheck:
    """Resolve the config the form describes, or say precisely what is wrong with it."""
    project_dir = project.resolve(project_dir)
    result = FormCheck(identity)
    result.problems = _identity_problems(identity, project_dir)
    if result.problems:
        return result
    try:
        base = baseline(identity, project_dir)
    except config_mod.ConfigError as exc:
        result.problems = [_problem(p.key, p.message) for p in exc.problems]
        return result
    result.problems = _pre_check(values)
    if result.problems:
        return result
    try:
        result.changes = patches_from(values, values_of(base))
    except (KeyError, ValueError, TypeError) as exc:
        result.problems = [FieldProblem("", str(exc))]
        return result
    try:
        result.resolved = config_mod.resolve(patches=result.patches, project_dir=project_dir)
    except config_mod.ConfigError as exc:
        result.problems = [_problem(p.key, p.message) for p in exc.problems]
    return result


# ---------------------------------------------------------------------------
# Presentation helpers
# ---------------------------------------------------------------------------


def display_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.6g}" if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, list | tuple):
        return ", ".join(display_value(v) for v in value)
    return str(value)


def describe_origin(origin: str, patch: str = "Set at launch") -> str:
    """Which layer set a value, in words a business user reads (``patch``: for --patch)."""
    if origin in ("configs/defaults.yaml", "model default"):
        return "Defaults"
    if origin.startswith("--patch "):
        return patch
    match = re.fullmatch(r"configs/(markets|periods|categories)/(.+)\.yaml", origin)
    if match:
        kind = {"markets": "Market", "periods": "Period", "categories": "Category"}
        return f"{kind[match.group(1)]} {match.group(2)} settings ({origin})"
    if origin in ("env.yaml",) or origin.startswith("env ("):
        return f"Project default ({origin})"
    return origin


def setting_label(key: str) -> str:
    """``Objective weights: Revenue`` for ``optimize.weights.revenue``; other keys as is."""
    try:
        spec = field_spec(key)
    except KeyError:
        return key
    return f"{SECTION_TITLES.get(spec.group, _label(spec.group))}: {spec.label}"


def differences(resolved: config_mod.ResolvedConfig) -> list[dict[str, str]]:
    """Settings that differ from the defaults or come from an overlay, with their layer."""
    defaults = values_of(config_mod.ToolkitConfig().model_dump(mode="json"))
    rows = []
    specs = {spec.key: spec for spec in form_fields()}
    for key, value, origin in resolved.leaves():
        spec = specs.get(key)
        if spec is None:
            continue
        from_defaults = origin in ("configs/defaults.yaml", "model default")
        if from_defaults and _same(value, defaults.get(key)):
            continue
        rows.append(
            {
                "Setting": setting_label(key),
                "Value": display_value(value),
                "Default": display_value(defaults.get(key)),
                "Set by": describe_origin(origin, FORM_CHANGE),
                "Key": key,
            }
        )
    return rows


# ---------------------------------------------------------------------------
# Identity choices
# ---------------------------------------------------------------------------


def market_options(project_dir: Path | str | None = None) -> list[str]:
    project_dir = project.resolve(project_dir)
    return config_mod.known_markets(Path(project_dir))


def period_options(
    today: dt.date | None = None,
    months: int = 12,
    project_dir: Path | str | None = None,
    extra: Iterable[str] = (),
) -> list[str]:
    """Recent months (newest first), plus months with their own overlay and ``extra``."""
    project_dir = project.resolve(project_dir)
    today = today or dt.date.today()
    out = set(extra)
    year, month = today.year, today.month
    for _ in range(months):
        out.add(f"{year:04d}-{month:02d}")
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    for path in (Path(project_dir) / "configs" / "periods").glob("*.yaml"):
        if re.fullmatch(r"[0-9]{4}-(0[1-9]|1[0-2])", path.stem):
            out.add(path.stem)
    return sorted(out, reverse=True)


def category_options(
    catalog_categories: Sequence[str] = (),
    project_dir: Path | str | None = None,
) -> list[str]:
    """Categories with an overlay in configs/categories plus those in the market's catalog."""
    project_dir = project.resolve(project_dir)
    names = {p.stem for p in (Path(project_dir) / "configs" / "categories").glob("*.yaml")}
    names |= {c for c in catalog_categories if re.fullmatch(r"[a-z][a-z0-9_]*", str(c))}
    return sorted(names)


def default_identity(project_dir: Path | str | None = None) -> Identity:
    """The identity ``env.yaml`` names (what ``toolkit run`` runs without patches)."""
    project_dir = project.resolve(project_dir)
    try:
        cfg = config_mod.resolve(project_dir=project_dir).config
        return Identity(cfg.country, cfg.period, cfg.category)
    except config_mod.ConfigError:
        return Identity("US", dt.date.today().strftime("%Y-%m"), None)
