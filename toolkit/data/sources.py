"""The raw tables a run reads, from wherever the team keeps them.

A source is config (``load_transform.sources.<table>``): a URL or glob on any fsspec
filesystem, with ``{root}``, ``{country}`` and ``{period}`` filled in from the run, a
format (csv or parquet, guessed from the suffix), the file's columns with the contract's
name for each, and CSV options. Every file is checked against its raw contract on its
own, so a problem names the file, the row (counted from 1 as a spreadsheet does: a CSV's
header is row 1) and the column as the file calls it.

The run loop asks only for the files (their content keys ``load_transform``): pandas and
the contracts are imported where tables are read, so a fully cached run imports neither.
"""

from __future__ import annotations

import gzip
import io as _io
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from toolkit.data import storage

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "TABLES",
    "SourceError",
    "SourceSummary",
    "expand",
    "input_urls",
    "read",
    "summarise",
    "urls",
]

# Each raw table: its contract and the columns that identify a row.
TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "sales": ("RawSales", ("date", "product_id")),
    "catalog": ("Catalog", ("product_id",)),
}
_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_SHOWN = 5  # examples in a message


class SourceError(ValueError):
    """A source cannot be read as its table: the message names the key or file and why."""


def _key(name: str, leaf: str = "") -> str:
    return f"load_transform.sources.{name}" + (f".{leaf}" if leaf else "")


def expand(template: str, run: Mapping) -> str:
    """The URL of ``template`` for a run (``run``: market, period, root)."""
    return template.format_map(
        {"root": run["root"].rstrip("/"), "country": run["market"], "period": run["period"]}
    )


def urls(name: str, source: Mapping, run: Mapping) -> list[str]:
    """The files ``source`` names for the run, sorted; a glob matching nothing is an error."""
    url = expand(source["url"], run)
    if not any(char in url for char in "*?["):
        return [url]
    matches = storage.glob(url)  # within the storage deadline, spelled as the URL is
    if not matches:
        raise SourceError(f"{_key(name, 'url')}: no file matches {url}")
    return matches


def input_urls(sources: Mapping, run: Mapping) -> list[str]:
    """Every file the run reads, for its cache key; a glob matching nothing adds none
    (the step then fails and says so)."""
    found = []
    for name in TABLES:
        try:
            found += urls(name, sources[name], run)
        except SourceError:
            continue
    return found


def read(name: str, sources: Mapping, run: Mapping, report_dir: str | None = None) -> pd.DataFrame:
    """Read one raw table (``sales`` or ``catalog``) from its source, checked file by file.

    Raises:
        SourceError: a bad mapping, a glob matching nothing, an unreadable file, or the same
            row in two files.
        io.ContractError: a file breaks the contract (the report names file, rows, columns).
        FileNotFoundError: a file named without a glob does not exist.
    """
    import pandas as pd

    from toolkit.data import schemas

    source = sources[name]
    contract_name, keys = TABLES[name]
    contract = schemas.CONTRACTS[contract_name]
    columns = _checked_mapping(name, source, contract)
    files = urls(name, source, run)
    frames = [_read_file(name, url, source, columns, contract, report_dir) for url in files]
    if len(frames) == 1:
        return frames[0].reset_index(drop=True)
    _check_no_row_twice(name, files, frames, keys)
    return pd.concat(frames, ignore_index=True)


def _checked_mapping(name: str, source: Mapping, contract) -> dict[str, str]:
    columns = dict(source.get("columns") or {})
    known = list(contract.to_schema().columns)
    for theirs, ours in columns.items():
        if ours not in known:
            raise SourceError(
                f"{_key(name, 'columns')}: {theirs!r} maps to {ours!r}, which is not a "
                f"{contract.__name__} column ({', '.join(known)})"
            )
    twice = sorted({ours for ours in columns.values() if list(columns.values()).count(ours) > 1})
    if twice:
        raise SourceError(f"{_key(name, 'columns')}: several columns map to {twice[0]!r}")
    return columns


def _format(name: str, url: str, source: Mapping) -> str:
    if source.get("format"):
        return source["format"]
    suffix = posixpath.splitext(url.removesuffix(".gz"))[1].lower()
    if suffix not in _SUFFIXES:
        raise SourceError(
            f"cannot tell the format of {url} from its suffix: set {_key(name, 'format')} "
            "to csv or parquet"
        )
    return _SUFFIXES[suffix]


def _read_file(name, url, source, columns, contract, report_dir) -> pd.DataFrame:
    import pandas as pd

    from toolkit.data import io

    if _format(name, url, source) == "csv":
        frame, first_row = _read_csv(url, source), 2  # row 1 is the header
    else:
        frame, first_row = io.read_unchecked(url), 1
    if columns:
        missing = [theirs for theirs in columns if theirs not in frame.columns]
        if missing:
            raise SourceError(
                f"{url} has no column {missing[0]!r} ({_key(name, 'columns')}); its columns: "
                f"{', '.join(map(str, frame.columns))}"
            )
        frame = frame[list(columns)].rename(columns=columns)
    frame.index = pd.RangeIndex(first_row, first_row + len(frame))
    if source.get("date_format") and "date" in frame.columns:
        frame["date"] = _parse_dates(url, frame["date"], source["date_format"], columns)
    try:
        return io.validate(frame, contract, url=url, stage="read")
    except io.ContractError as exc:
        raise _in_their_words(exc, columns, report_dir) from None


def _read_csv(url: str, source: Mapping) -> pd.DataFrame:
    import pandas as pd

    try:
        data = storage.read_bytes(url)
    except FileNotFoundError:
        raise FileNotFoundError(f"no table at {url}") from None
    if url.endswith(".gz"):
        data = gzip.decompress(data)
    try:
        # Codes stay text ("007" is not 7); numbers and booleans are left to the contract.
        return pd.read_csv(
            _io.BytesIO(data),
            sep=source.get("delimiter", ","),
            decimal=source.get("decimal", "."),
            encoding=source.get("encoding", "utf-8"),
            dtype={"product_id": str},
            float_precision="round_trip",  # 9.95 reads as the float that wrote it
        )
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise SourceError(f"cannot read {url} as CSV: {exc}") from None


def _parse_dates(url: str, text: pd.Series, date_format: str, columns: Mapping) -> pd.Series:
    import pandas as pd

    dates = pd.to_datetime(text, format=date_format, errors="coerce")
    bad = text[dates.isna() & text.notna()]
    if not bad.empty:
        theirs = next((k for k, v in columns.items() if v == "date"), "date")
        shown = ", ".join(f"{value!r} (row {row})" for row, value in bad.head(_SHOWN).items())
        raise SourceError(
            f"{url}: column {theirs!r}: {len(bad)} values do not match date format "
            f"{date_format!r}, e.g. {shown}"
        )
    return dates


def _in_their_words(exc, columns: Mapping, report_dir):
    """The contract's report (``io.ContractError``), each column named as the file names it."""
    from toolkit.data import io

    theirs = {ours: name for name, ours in columns.items() if name != ours}
    report = exc.report
    for failure in report.failures:
        if failure["column"] in theirs:
            failure["column"] = f"{theirs[failure['column']]} ({failure['column']})"
    report_url = None
    if report_dir:
        stem = posixpath.basename(report.url).split(".", 1)[0] or report.dataset
        report_url = storage.join(report_dir, f"{stem}.validation.json")
        io.write_json(report.as_dict(), report_url)
    return io.ContractError(report, report_url)


def _check_no_row_twice(name, files, frames, keys) -> None:
    """A row in two files (overlapping exports) would be counted twice."""
    import pandas as pd

    located = pd.concat(
        [
            frame[list(keys)].assign(_file=url, _row=frame.index)
            for url, frame in zip(files, frames, strict=True)
        ],
        ignore_index=True,
    )
    twice = located[located.duplicated(list(keys), keep=False)]
    if twice.empty:
        return
    examples = []
    for key, group in twice.groupby(list(keys), sort=False):
        values = key if isinstance(key, tuple) else (key,)
        what = ", ".join(f"{k} {_plain(v)}" for k, v in zip(keys, values, strict=True))
        places = zip(group["_file"], group["_row"], strict=True)
        where = " and ".join(f"{file} row {row}" for file, row in places)
        examples.append(f"{what}: {where}")
        if len(examples) == _SHOWN:
            break
    count = twice[list(keys)].drop_duplicates().shape[0]
    raise SourceError(
        f"{_key(name, 'url')}: {count} rows appear in more than one file, e.g. "
        + "; ".join(examples)
    )


def _plain(value: Any) -> str:
    return f"{value:%Y-%m-%d}" if hasattr(value, "strftime") else str(value)


@dataclass
class SourceSummary:
    """What one source holds, for ``toolkit sources check``."""

    name: str
    url: str
    files: list[str] = field(default_factory=list)
    rows: int = 0
    products: int = 0
    first_day: pd.Timestamp | None = None
    last_day: pd.Timestamp | None = None
    problems: list[str] = field(default_factory=list)
    frame: pd.DataFrame | None = None

    def lines(self) -> list[str]:
        shown = [f"{self.name}: {self.url} ({len(self.files)} file{'s' * (len(self.files) != 1)})"]
        if self.frame is not None:
            days = (
                f", {self.first_day:%Y-%m-%d} to {self.last_day:%Y-%m-%d}"
                if self.first_day is not None
                else ""
            )
            shown.append(f"  {self.rows:,} rows, {self.products:,} products{days}")
        shown += [f"  problem: {line}" for p in self.problems for line in p.splitlines()[:1]]
        shown += [f"    {line}" for p in self.problems for line in p.splitlines()[1:]]
        return shown


def summarise(name: str, sources: Mapping, run: Mapping) -> SourceSummary:
    """Read one source as a run would and say what it holds, or what is wrong with it."""
    from toolkit.data import io

    summary = SourceSummary(name, expand(sources[name]["url"], run))
    try:
        summary.files = urls(name, sources[name], run)
        frame = read(name, sources, run)
    except (SourceError, io.ContractError, io.UnreadableTable, OSError) as exc:
        summary.problems.append(str(exc))  # OSError: a missing file, StorageError
        return summary
    summary.frame, summary.rows = frame, len(frame)
    summary.products = frame["product_id"].nunique()
    if "date" in frame.columns:
        summary.first_day, summary.last_day = frame["date"].min(), frame["date"].max()
    return summary
