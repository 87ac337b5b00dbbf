"""Markdown reference of every data contract, generated from ``toolkit.data.schemas``."""

from __future__ import annotations

import inspect
from pathlib import Path

from toolkit import project
from toolkit.config import Constraints
from toolkit.data import schemas

__all__ = ["DOC_NAME", "doc_path", "render", "write"]

DOC_NAME = "docs/contracts.md"


def doc_path() -> Path:
    """Where the contracts page lives in the working directory's project."""
    return project.root() / DOC_NAME


# Built-in checks, by pandera name, as a reader would write them.
_CHECK_FORMATS = {
    "greater_than": "> {min_value}",
    "greater_than_or_equal_to": ">= {min_value}",
    "less_than": "< {max_value}",
    "less_than_or_equal_to": "<= {max_value}",
    "equal_to": "== {value}",
    "not_equal_to": "!= {value}",
    "str_matches": "matches `{pattern}`",
    "str_contains": "contains `{pattern}`",
    "str_startswith": "starts with `{string}`",
    "str_endswith": "ends with `{string}`",
    "isin": "one of {allowed_values}",
    "notin": "none of {forbidden_values}",
}


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _type_name(dtype) -> str:
    # pandas names its string dtype after the storage backend; readers care about "string".
    name = str(dtype)
    if name.startswith(("string", "str")):
        return "string"
    if name.startswith("datetime64"):
        return "datetime"
    return name


def _describe_check(check) -> str:
    if check.description:
        return check.description
    stats = {k: v for k, v in (check.statistics or {}).items() if v is not None}
    if check.name == "str_length":
        bounds = []
        if "exact_value" in stats:
            return f"length {stats['exact_value']}"
        if "min_value" in stats:
            bounds.append(f"length >= {stats['min_value']}")
        if "max_value" in stats:
            bounds.append(f"length <= {stats['max_value']}")
        return ", ".join(bounds)
    if check.name == "in_range":
        low = "[" if stats.get("include_min", True) else "("
        high = "]" if stats.get("include_max", True) else ")"
        return f"in {low}{stats.get('min_value')}, {stats.get('max_value')}{high}"
    template = _CHECK_FORMATS.get(check.name)
    if template:
        try:
            return template.format(**stats)
        except KeyError:
            pass
    return check.error or check.name or "custom check"


def _column_rows(schema) -> list[str]:
    rows = [
        "| column | type | nullable | checks | description |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, column in schema.columns.items():
        checks = [_describe_check(check) for check in column.checks]
        if column.unique:
            checks.insert(0, "unique")
        rows.append(
            f"| `{_cell(name)}` | {_type_name(column.dtype)} | "
            f"{'yes' if column.nullable else 'no'} | {_cell('; '.join(checks)) or '-'} | "
            f"{_cell(column.description or '')} |"
        )
    return rows


def _frame_rules(schema) -> list[str]:
    rules = []
    if schema.strict:
        rules.append("No other columns are allowed.")
    if schema.ordered:
        rules.append("Columns appear in exactly this order.")
    if schema.coerce:
        rules.append('Values are coerced to the column type on read and write ("12" becomes 12).')
    unique = schema.unique
    if unique:
        columns = [unique] if isinstance(unique, str) else list(unique)
        rules.append(
            "Each combination of " + ", ".join(f"`{c}`" for c in columns) + " appears once."
        )
    for check in schema.checks:
        described = check.description or check.error or check.name
        rules.append(f"`{check.name}`: {described}.")
    return rules


def _plan_constraints() -> str:
    """The checks ``plan_contract`` adds, shown with the config model's defaults."""
    defaults = Constraints().model_dump()
    base = {check.name for check in schemas.Plan.to_schema().checks}
    added = [
        check.name for check in schemas.plan_contract(defaults).checks if check.name not in base
    ]
    return (
        "The optimize step writes the plan through `schemas.plan_contract(constraints)`, "
        "which adds the run's business constraints from `optimize.constraints` to this "
        "contract; with the default constraints these checks are: "
        + "; ".join(added)
        + ". `toolkit validate --schema Plan` checks the static contract above only."
    )


def render() -> str:
    """Markdown documenting every contract in ``toolkit.data.schemas.CONTRACTS``.

    Returns:
        The text of ``docs/contracts.md``: per contract its docstring, a table of columns
        (type, nullable, checks, description) and its dataframe-level rules and checks.
    """
    lines = [
        "<!-- Generated from toolkit/data/schemas.py by `toolkit schemas docs`; do not edit. -->",
        "",
        "# Data contracts",
        "",
        "Every dataset a step reads or writes has a contract in `toolkit/data/schemas.py`.",
        "`toolkit.data.io.read` and `toolkit.data.io.write` check it at the boundary and stop",
        "with a report naming each failing column and check. Check any stored file with",
        "`toolkit validate URL --schema NAME`.",
        "",
    ]
    lines += [f"- [{name}](#{name.lower()})" for name in schemas.CONTRACTS]
    for name, model in schemas.CONTRACTS.items():
        schema = model.to_schema()
        lines += ["", f"## {name}", "", inspect.cleandoc(model.__doc__ or "(no docstring)"), ""]
        lines += _column_rows(schema)
        rules = _frame_rules(schema)
        if rules:
            lines += ["", "Rules for the whole table:", ""]
            lines += [f"- {rule}" for rule in rules]
        if model is schemas.Plan:
            lines += ["", _plan_constraints()]
    return "\n".join(lines) + "\n"


def write(path: str | Path | None = None) -> Path:
    """Write ``render()`` to ``path`` (default ``docs/contracts.md``).

    Returns:
        The path written.
    """
    path = Path(path) if path is not None else doc_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render())
    return path
