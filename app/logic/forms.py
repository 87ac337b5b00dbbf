"""The Launch form, generated from the config model: fields, bounds, help, patches, checks.

Nothing here knows about Streamlit. The app asks for the form's fields (``form_groups``),
shows them, hands the values back to ``check``, and launches only when ``check`` found no
problem. Every value reaches a run as a ``key.path=value`` patch whose key comes from the
model and whose value is written as a YAML literal that reads back as exactly that value,
so a value is always data, never syntax.
"""

from __future__ import annotations

import contextlib
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
    "differences_of",
    "display_value",
    "field_spec",
    "form_fields",
    "form_groups",
    "format_value",
    "from_widget",
    "identity_patches",
    "market_options",
    "patches_from",
    "record_leaves",
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
# Fractions the form shows as percentages (the config keeps fractions), and amounts of money
# the form labels with the market's currency.
PERCENT_KEYS = frozenset(
    {
        "optimize.constraints.max_discount",
        "optimize.constraints.min_margin",
        "optimize.constraints.price_levels",
        "underperformers.decline_threshold",
    }
)
MONEY_KEYS = frozenset({"optimize.constraints.markdown_budget"})
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
    def percent(self) -> bool:
        """A fraction the form shows (and the person types) as a percentage."""
        return self.key in PERCENT_KEYS

    @property
    def money(self) -> bool:
        return self.key in MONEY_KEYS

    def shown(self, value: float) -> str:
        """A number as the form shows it: ``30%``, ``60,000``, ``0.85``."""
        if self.percent:
            return f"{_num(round(value * 100, 6))}%"
        return _num(value) if abs(value) < 1e4 else f"{value:,.0f}"

    @property
    def bounds_text(self) -> str:
        """The allowed range in words, e.g. ``0 to 1``, ``above 0, at most 2``, ``0% to 99%``."""
        low = self.minimum is not None
        high = self.maximum is not None
        if low and high and not self.min_exclusive and not self.max_exclusive:
            return f"{self.shown(self.minimum)} to {self.shown(self.maximum)}"
        parts = []
        if low:
            word = "above" if self.min_exclusive else "at least"
            parts.append(f"{word} {self.shown(self.minimum)}")
        if high:
            word = "below" if self.max_exclusive else "at most"
            parts.append(f"{word} {self.shown(self.maximum)}")
        return ", ".join(parts)

    def out_of_bounds(self, value: float) -> str | None:
        """What is wrong with ``value`` in business words, or None when it is allowed."""
        low, high = self.minimum, self.maximum
        too_low = low is not None and (value <= low if self.min_exclusive else value < low)
        too_high = high is not None and (value >= high if self.max_exclusive else value > high)
        if not (too_low or too_high):
            return None
        return f"must be {self.bounds_text}; it is {self.shown(value)}"


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
    """The value as its widget holds it (``None`` text is an empty box, fractions shown as
    percentages are percentages)."""
    if spec.kind == "text":
        return "" if value is None else str(value)
    if spec.kind == "float_list":
        return [float(v) for v in (value or [])]
    if spec.kind == "int":
        return int(value)
    if spec.kind in ("float", "slider"):
        return round(float(value) * 100, 6) if spec.percent else float(value)
    return value


def from_widget(spec: FieldSpec, raw: Any) -> Any:
    """The config value of what a widget holds."""
    if spec.kind == "text":
        text = "" if raw is None else str(raw).strip()
        return None if (text == "" and spec.optional) else text
    if spec.kind == "float_list":
        return sorted(float(v) for v in (raw or []))
    if spec.kind in ("float", "slider") and spec.percent and isinstance(raw, int | float):
        return round(float(raw) / 100, 8)
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


# Pydantic's messages, reworded for people who set prices (a bound is shown in the form's
# units by ``plain_message``).
_PLAIN = (
    (r"Input should be greater than or equal to (\S+)", "must be at least {}"),
    (r"Input should be greater than (\S+)", "must be above {}"),
    (r"Input should be less than or equal to (\S+)", "must be at most {}"),
    (r"Input should be less than (\S+)", "must be below {}"),
    (r"List should have at least (\d+) items?.*", "choose at least {}"),
    (r"List should have at most (\d+) items?.*", "choose at most {}"),
    (r"Input should be a valid integer.*", "must be a whole number"),
    (r"Input should be a (valid number|finite number).*", "must be a number"),
    (r"Input should be a valid (string|list|boolean).*", "is not the right kind of value"),
    (r"Input should be (.+)", "must be one of {}"),
    (r"Extra inputs are not permitted", "is not a setting this form knows"),
)


def plain_message(message: str, spec: FieldSpec | None = None) -> str:
    """A validator's message in business words: no types, patterns or ``(got ...)``."""
    text = re.sub(r" \(got .*\)$", "", str(message).strip(), flags=re.S)
    text = text.removeprefix("Value error, ")
    if text.startswith("String should match pattern"):
        return f"is not valid: {spec.help}" if spec and spec.help else "is not in the expected form"
    for pattern, words in _PLAIN:
        match = re.fullmatch(pattern, text, flags=re.S)
        if match:
            value = match.group(1) if match.groups() else ""
            if spec is not None and "{}" in words and "item" not in pattern:
                with contextlib.suppress(ValueError):
                    value = spec.shown(float(value))
            return words.format(value.replace("'", ""))
    return text


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
    """Types and bounds, checked here to say what is wrong in the form's own words and
    units (the config model checks them again)."""
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
        message = _value_problem(spec, value)
        if message:
            problems.append(_problem(key, message))
    return problems


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _value_problem(spec: FieldSpec, value: Any) -> str | None:
    """What is wrong with one field's value, in the form's words, or None."""
    if spec.kind in ("float", "slider", "int"):
        if not _is_number(value):
            return "must be a number"
        if spec.kind == "int" and float(value) != int(value):
            return "must be a whole number"
        return spec.out_of_bounds(float(value))
    if spec.kind == "float_list":
        if not (isinstance(value, list | tuple) and all(_is_number(v) for v in value)):
            return "must be a list of price changes"
        if spec.min_items and len(value) < spec.min_items:
            return f"choose at least {spec.min_items}"
        if spec.max_items and len(value) > spec.max_items:
            return f"choose at most {spec.max_items}"
        bad = [v for v in value if not -1 < v <= 1]
        if bad:
            shown = ", ".join(f"{v * 100:+g}%" for v in bad)
            return f"each change must be above -100% and at most +100%; {shown} is not"
    if spec.kind == "text" and value and spec.pattern and not re.fullmatch(spec.pattern, value):
        return f"is not valid: {spec.help}" if spec.help else "is not in the expected form"
    return None


def business_rules(cfg: config_mod.ToolkitConfig) -> list[FieldProblem]:
    """Settings that are each allowed but contradict each other: caught here, in business
    words, instead of failing a step later."""
    problems = []
    history = cfg.load_transform.history_weeks
    history_name = f"History weeks ({history})"
    if cfg.load_transform.min_weeks_with_sales > history:
        problems.append(
            _problem(
                "load_transform.min_weeks_with_sales",
                f"is {cfg.load_transform.min_weeks_with_sales} weeks, more than the "
                f"{history_name}: no product could qualify. Lower it or look further back.",
            )
        )
    under = cfg.underperformers
    if under.recent_weeks + under.baseline_weeks > history:
        problems.append(
            _problem(
                "underperformers.baseline_weeks",
                f"Recent weeks ({under.recent_weeks}) plus baseline weeks "
                f"({under.baseline_weeks}) need more history than the {history_name}.",
            )
        )
    fc = cfg.forecast
    needed = math.ceil(1.5 * fc.season_length) + fc.backtest_weeks
    if needed > history:
        problems.append(
            _problem(
                "forecast.season_length",
                f"a forecast needs one and a half seasons ({math.ceil(1.5 * fc.season_length)} "
                f"weeks) plus the {fc.backtest_weeks} backtest weeks, more than the "
                f"{history_name}.",
            )
        )
    rules = cfg.optimize.constraints
    if rules.max_changes == 0:
        problems.append(
            _problem("optimize.constraints.max_changes", "is 0, so no price could change.")
        )
    usable = [level for level in rules.price_levels if level != 0 and -level <= rules.max_discount]
    if not usable:
        problems.append(
            _problem(
                "optimize.constraints.price_levels",
                "no price change is allowed: every cut is deeper than the max discount "
                f"({rules.max_discount * 100:g}%) and there is no increase. Add a level.",
            )
        )
    elif rules.markdown_budget == 0 and all(level < 0 for level in usable):
        problems.append(
            _problem(
                "optimize.constraints.markdown_budget",
                "is 0, which allows no price cut, and every price level is a cut: no price "
                "could change. Raise the budget or add a price increase.",
            )
        )
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
        result.problems = [_problem(p.key, _plain_for(p.key, p.message)) for p in exc.problems]
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
        resolved = config_mod.resolve(patches=result.patches, project_dir=project_dir)
    except config_mod.ConfigError as exc:
        result.problems = [_problem(p.key, _plain_for(p.key, p.message)) for p in exc.problems]
        return result
    result.problems = business_rules(resolved.config)
    if not result.problems:
        result.resolved = resolved
    return result


def _plain_for(key: str, message: str) -> str:
    try:
        spec = field_spec(key)
    except KeyError:
        spec = None
    return plain_message(message, spec)


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


def display_setting(key: str, value: Any, currency: str = "") -> str:
    """A setting's value as the form shows it: percentages as percentages, money with its
    currency when known."""
    try:
        spec = field_spec(key)
    except KeyError:
        return display_value(value)
    if spec.percent and isinstance(value, list | tuple):
        return ", ".join(f"{v * 100:+g}%" if v else "0%" for v in value)
    if spec.percent and _is_number(value):
        return spec.shown(float(value))
    if spec.money and _is_number(value):
        return f"{value:,.0f} {currency}".strip()
    return display_value(value)


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


def differences(resolved: config_mod.ResolvedConfig, currency: str = "") -> list[dict[str, str]]:
    """Settings that differ from the defaults or come from an overlay, with their layer."""
    return differences_of(resolved.leaves(), currency)


def record_leaves(
    config: Mapping[str, Any], origins: Mapping[str, str]
) -> list[tuple[str, Any, str]]:
    """(key, value, origin) of a run record's config, as ``ResolvedConfig.leaves`` gives."""
    out = []
    for key, origin in origins.items():
        try:
            out.append((key, _lookup(config, key), origin))
        except (KeyError, TypeError):
            continue
    return out


def differences_of(
    leaves: Iterable[tuple[str, Any, str]], currency: str = ""
) -> list[dict[str, str]]:
    """``differences`` of any (key, value, origin) leaves: a resolved config's or a run's."""
    defaults = values_of(config_mod.ToolkitConfig().model_dump(mode="json"))
    rows = []
    specs = {spec.key: spec for spec in form_fields()}
    for key, value, origin in leaves:
        spec = specs.get(key)
        if spec is None:
            continue
        from_defaults = origin in ("configs/defaults.yaml", "model default")
        if from_defaults and _same(value, defaults.get(key)):
            continue
        rows.append(
            {
                "Setting": setting_label(key),
                "Value": display_setting(key, value, currency),
                "Default": display_setting(key, defaults.get(key), currency),
                "Set by": describe_origin(origin, FORM_CHANGE),
                "Key": key,
                "Short": short_label(spec),
            }
        )
    return rows


def short_label(spec: FieldSpec) -> str:
    """A setting's name where space is short: ``Max discount``, ``Revenue weight``."""
    return f"{spec.label} weight" if spec.group == "weights" else spec.label


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
    plannable: Sequence[str] = (),
) -> list[str]:
    """The months to offer, newest first: those the market's sales can plan (at most
    ``2 * months``), or without them recent months and months with their own overlay;
    plus ``extra``."""
    out = set(extra)
    if plannable:
        return sorted(out | set(sorted(plannable, reverse=True)[: 2 * months]), reverse=True)
    project_dir = project.resolve(project_dir)
    today = today or dt.date.today()
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
