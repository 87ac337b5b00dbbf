"""Read and write tables through their contracts: validate at the boundary, lazily.

A violation raises ``ContractError`` with a short report (each failing column and check,
a few failing values, never the whole frame) and writes that report as JSON next to the
step's outputs. Invalid data is never written.
"""

from __future__ import annotations

import io as _io
import json
import posixpath
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow
import pyarrow.parquet as pq

from toolkit.data import storage

if TYPE_CHECKING:
    import pandera.pandas as pa

__all__ = [
    "ContractError",
    "UnreadableTable",
    "ValidationReport",
    "read",
    "read_unchecked",
    "validate",
    "write",
    "write_json",
]

MAX_EXAMPLES = 5


@dataclass
class ValidationReport:
    """What failed, per column and check, with a few example values."""

    dataset: str
    url: str
    stage: str  # "read" or "write"
    n_rows: int
    failures: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "dataset": self.dataset,
            "url": self.url,
            "stage": self.stage,
            "n_rows": self.n_rows,
            "failures": self.failures,
        }

    def __str__(self) -> str:
        lines = [
            f"{self.dataset} contract failed on {self.stage} of {self.url} ({self.n_rows} rows):"
        ]
        for f in self.failures:
            rows = f.get("rows") or [None] * len(f["examples"])
            examples = ", ".join(
                repr(v) if row is None else f"{v!r} (row {row})"
                for v, row in zip(f["examples"], rows, strict=True)
            )
            about = f" ({f['description']})" if f.get("description") else ""
            where = "rows" if f["column"] == "<rows>" else f"column {f['column']!r}"
            lines.append(
                f"  - {where}, check {f['check']}{about}: {f['count']} failing, e.g. {examples}"
            )
        return "\n".join(lines)


class ContractError(ValueError):
    """A frame broke its contract; ``report`` says where and how."""

    def __init__(self, report: ValidationReport, report_url: str | None = None):
        self.report = report
        self.report_url = report_url
        suffix = f"\nreport: {report_url}" if report_url else ""
        super().__init__(f"{report}{suffix}")


def _schema_of(contract) -> tuple[str, pa.DataFrameSchema]:
    import pandera.pandas as pa  # a second: only once a frame is checked

    if isinstance(contract, pa.DataFrameSchema):
        return contract.name or "Plan", contract
    return contract.__name__, contract.to_schema()


def _summarise(exc, schema: pa.DataFrameSchema, name: str, url: str, stage: str, n_rows: int):
    cases = exc.failure_cases.copy()
    descriptions = {**_STRUCTURE_CHECKS, **_check_descriptions(schema)}
    checks = cases["check"].astype(str)
    structural = checks.isin(list(_STRUCTURE_CHECKS))
    frame_wide = (cases["schema_context"].astype(str) == "DataFrameSchema") & ~structural
    # A missing or extra column is named by the failure case itself.
    cases.loc[structural, "column"] = cases.loc[structural, "failure_case"].astype(str)
    # A row-wise frame check fails once per column of each bad row: report the rows once.
    cases.loc[frame_wide, "column"] = None
    failures = []
    for (column, check), group in cases.groupby(
        [cases["column"].fillna("<rows>").astype(str), cases["check"].astype(str)], sort=False
    ):
        if column == "<rows>":
            bad_rows = group["index"].dropna().drop_duplicates()
            count = int(len(bad_rows)) or 1
            examples = [f"row {_plain(i)}" for i in bad_rows.head(MAX_EXAMPLES)] or [
                _plain(v) for v in group["failure_case"].head(MAX_EXAMPLES)
            ]
            failure = {"column": column, "check": check, "count": count, "examples": examples}
        else:
            shown = group.head(MAX_EXAMPLES)
            examples = [_plain(v) for v in shown["failure_case"]]
            failure = {"column": column, "check": check, "count": len(group), "examples": examples}
            rows = [_plain(i) for i in shown["index"]]  # None for a column-wide failure
            if any(row is not None for row in rows):
                failure["rows"] = rows  # where each example is, so it can be found and fixed
        if descriptions.get(check):
            failure["description"] = descriptions[check]
        failures.append(failure)
    return ValidationReport(name, url, stage, n_rows, failures)


_STRUCTURE_CHECKS = {
    "column_in_schema": "column not in the contract",
    "column_in_dataframe": "column required by the contract is missing",
    "column_ordered": "columns out of the contract's order",
}


def _check_descriptions(schema: pa.DataFrameSchema) -> dict[str, str]:
    checks = list(schema.checks)
    for column in schema.columns.values():
        checks += list(column.checks)
    return {c.name: c.description for c in checks if c.name and c.description}


def _plain(value: Any) -> Any:
    """A JSON-friendly, length-bounded version of one failing value."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if isinstance(value, bool | int | float):
        return value
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def validate(
    df: pd.DataFrame,
    contract,
    *,
    url: str = "<memory>",
    stage: str = "check",
    report_dir: str | None = None,
) -> pd.DataFrame:
    """Validate ``df`` lazily and return the coerced frame.

    Raises:
        ContractError: every failing column and check, with examples; the report is also
            written to ``report_dir`` when given.
    """
    name, schema = _schema_of(contract)
    if not df.index.is_unique:  # contracts are about rows, never about the index
        df = df.reset_index(drop=True)
    from pandera.errors import SchemaErrors

    try:
        return schema.validate(df, lazy=True)
    except SchemaErrors as exc:
        report = _summarise(exc, schema, name, url, stage, len(df))
    report_url = None
    if report_dir:
        stem = posixpath.basename(url).rsplit(".", 1)[0] or name
        report_url = storage.join(report_dir, f"{stem}.validation.json")
        write_json(report.as_dict(), report_url)
    raise ContractError(report, report_url)


class UnreadableTable(ValueError):
    """A file that should hold a table cannot be read as one (the message names it)."""


def read(url: str, contract, *, report_dir: str | None = None) -> pd.DataFrame:
    """Read a Parquet table and check it against its contract."""
    df = read_unchecked(url)
    return validate(df, contract, url=str(url), stage="read", report_dir=report_dir)


def read_unchecked(url: str) -> pd.DataFrame:
    """Read a Parquet table without checking it: only to show a step's published output,
    which passed its contract when ``write`` wrote it. Steps read with ``read``."""
    try:
        # Whole bytes through storage (its deadlines, its errors naming the endpoint), so
        # whatever fails below is the content, never the network.
        data = storage.read_bytes(str(url))
    except FileNotFoundError:
        raise FileNotFoundError(f"no table at {url}") from None
    if not data:
        raise UnreadableTable(f"{url} is empty (0 bytes), not a Parquet table")
    try:
        return pq.read_table(pyarrow.BufferReader(data)).to_pandas()
    except (pyarrow.ArrowException, OSError) as exc:  # truncated, corrupt, not Parquet at all
        # Arrow names its input '<Buffer>'; the URL says which file it is.
        reason = str(exc).replace("Could not open Parquet input source '<Buffer>': ", "")
        raise UnreadableTable(f"{url} is not a readable Parquet table: {reason}") from None


def write(df: pd.DataFrame, url: str, contract) -> pd.DataFrame:
    """Check ``df`` against its contract, then write it as Parquet in one atomic put.

    On failure nothing is written at ``url``; the report goes next to it.
    """
    url = str(url)
    checked = validate(df, contract, url=url, stage="write", report_dir=posixpath.dirname(url))
    buffer = _io.BytesIO()
    checked.to_parquet(buffer, index=False)
    storage.write_bytes(url, buffer.getvalue())
    return checked


def write_json(data: Any, url: str) -> None:
    storage.write_bytes(str(url), json.dumps(data, indent=2, default=str).encode())
