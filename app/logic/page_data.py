"""What the app's pages show, computed from run records and outputs: no Streamlit here.

Pages are thin: they pick widgets, call these functions and render the result. Every
output is read through ``browse`` (only files under the storage root) and returned as
plain data (dicts, DataFrames), which the app shows as data, never as HTML.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import zoneinfo
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import yaml

from logic import browse, forms
from toolkit import project
from toolkit.data import storage
from toolkit.runs import accuracy, reports
from toolkit.runs import store as runs
from toolkit.runs.record import RunRecord

__all__ = [
    "STATUS_ICONS",
    "compare_kpis",
    "compare_params",
    "failures",
    "filter_rows",
    "history_and_forecast",
    "impact_by_category",
    "kpi_cards",
    "notebooks",
    "output_files",
    "default_period",
    "pipeline_steps",
    "plannable_months",
    "queue_positions",
    "read_json",
    "read_table",
    "recommendations",
    "rerun_seed",
    "run_label",
    "run_rows",
    "schedule_rows",
    "step_rows",
]

# Symbols every common font has (tables, pickers); badges use Streamlit's bundled icons.
STATUS_ICONS = {
    "queued": "◷",
    "running": "▶",
    "succeeded": "✓",
    "reused": "↻",
    "failed": "✗",
    "cancelled": "■",
    "interrupted": "⚠",
    "pending": "○",
    "skipped": "–",
    "unreadable": "?",
}
STATUS_TEXT = {
    "queued": "Queued",
    "running": "Running",
    "succeeded": "Succeeded",
    "reused": "Reused from cache",
    "failed": "Failed",
    "cancelled": "Cancelled",
    "cancelling": "Cancelling…",
    "interrupted": "Interrupted",
    "pending": "Waiting",
    "skipped": "Not run",
    "unreadable": "Unreadable",
}
# (badge colour, Material icon) per status, for st.badge.
STATUS_BADGES = {
    "queued": ("gray", ":material/schedule:"),
    "running": ("blue", ":material/autorenew:"),
    "succeeded": ("green", ":material/check_circle:"),
    "reused": ("violet", ":material/recycling:"),
    "failed": ("red", ":material/error:"),
    "cancelled": ("orange", ":material/cancel:"),
    "cancelling": ("orange", ":material/hourglass_top:"),
    "interrupted": ("orange", ":material/warning:"),
    "pending": ("gray", ":material/radio_button_unchecked:"),
    "skipped": ("gray", ":material/remove:"),
    "unreadable": ("gray", ":material/help:"),
}
# Text colour of the status cell in tables.
STATUS_COLORS = {
    "queued": "#5f6368",
    "running": "#1a66c2",
    "succeeded": "#1e7d32",
    "reused": "#6a3fb5",
    "failed": "#c62828",
    "cancelled": "#c25e00",
    "interrupted": "#c25e00",
    "unreadable": "#5f6368",
}
KPI_LABELS = {
    "revenue_change": "Revenue change",
    "revenue_change_pct": "Revenue change (%)",
    "margin_change": "Margin change",
    "margin_change_pct": "Margin change (%)",
    "volume_change": "Volume change (units)",
    "volume_change_pct": "Volume change (%)",
    "n_changes": "Price changes",
    "markdown_spent": "Markdown spent",
}


def status_text(status: str | None) -> str:
    status = status or "unreadable"
    return f"{STATUS_ICONS.get(status, '?')} {STATUS_TEXT.get(status, status.capitalize())}"


def is_active(record: RunRecord) -> bool:
    return record.status in runs.ACTIVE


# ---------------------------------------------------------------------------
# Times
# ---------------------------------------------------------------------------


def _zone(tz: str | None) -> dt.tzinfo:
    try:
        return zoneinfo.ZoneInfo(tz) if tz else dt.UTC
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return dt.UTC


def format_time(value: str | None, tz: str | None = None) -> str:
    when = runs.parse_time(value)
    if when is None:
        return ""
    zone = _zone(tz)
    text = when.astimezone(zone).strftime("%Y-%m-%d %H:%M")
    return f"{text} UTC" if zone is dt.UTC else text


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _elapsed(record: RunRecord) -> float | None:
    duration = runs.duration_seconds(record)
    if duration is not None and not is_active(record):
        return duration
    start = runs.parse_time(record.started_at)
    if start is None:
        return duration
    end = runs.parse_time(record.finished_at) or dt.datetime.now(dt.UTC)
    return round((end - start).total_seconds(), 1)


# ---------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------


def pipeline_steps(project_dir: Path | str | None = None) -> list[str]:
    """Step names in ``pipeline.yaml`` order (read as YAML; Ploomber is not needed)."""
    project_dir = project.resolve(project_dir)
    data = yaml.safe_load((Path(project_dir) / "pipeline.yaml").read_text()) or {}
    return [Path(str(task["source"])).stem for task in data.get("tasks", [])]


def run_label(record: RunRecord, tz: str | None = None) -> str:
    """One line naming a run, for pickers: identity, status, start and id."""
    category = record.category or "all"
    when = format_time(record.started_at or record.created_at, tz)
    named = f"{record.name} · " if record.name else ""
    return (
        f"{record.market or '?'} {record.period or '?'} · {category} · {named}"
        f"{status_text(record.status)} · {when} · {record.id}"
    )


def run_rows(
    records: Iterable[RunRecord],
    tz: str | None = None,
    currencies: Mapping[str, str] | None = None,
) -> list[dict]:
    """The Runs table: one row per run, newest first (``currencies``: per market)."""
    rows = []
    for record in records:
        row = runs.summary_row(record)
        steps = row.get("steps") or {}
        reused = sum(1 for s in steps.values() if s.get("reused"))
        rows.append(
            {
                "Status": status_text(row.get("status")),
                "Market": row.get("market") or "",
                "Period": row.get("period") or "",
                "Category": row.get("category") or "all",
                "Name": record.name or "",
                "What changed": what_changed(record, (currencies or {}).get(record.market, "")),
                "Run": row.get("id") or "",
                "Started": format_time(row.get("started_at") or record.created_at, tz),
                "Duration": format_duration(_elapsed(record)),
                "Launched by": str(row.get("launcher") or ""),
                "Steps reused": reused,
                "status": row.get("status") or "unreadable",
            }
        )
    return rows


def filter_rows(
    rows: Sequence[dict],
    statuses: Iterable[str] = (),
    markets: Iterable[str] = (),
    periods: Iterable[str] = (),
    launchers: Iterable[str] = (),
    text: str = "",
) -> list[dict]:
    statuses, markets, periods, launchers = (
        set(statuses),
        set(markets),
        set(periods),
        set(launchers),
    )
    needle = text.strip().lower()
    out = []
    for row in rows:
        if statuses and row["status"] not in statuses:
            continue
        if markets and row["Market"] not in markets:
            continue
        if periods and row["Period"] not in periods:
            continue
        if launchers and row["Launched by"] not in launchers:
            continue
        if needle and needle not in " ".join(str(v) for v in row.values()).lower():
            continue
        out.append(row)
    return out


def step_rows(record: RunRecord, steps: Sequence[str] | None = None) -> list[dict]:
    """Progress per step, pipeline order, including steps not started yet."""
    recorded = record.steps
    names = list(steps or pipeline_steps())
    names += [n for n in recorded if n not in names]
    active = is_active(record)
    rows = []
    for name in names:
        info = recorded.get(name)
        status: str = info.status if info else ("pending" if active else "skipped")
        if info and info.reused:
            status = "reused"
        detail = ""
        duration = info.duration_s if info else None
        if info and status == "reused":
            detail = f"reused from run {info.reused_from}"
        elif info and status == "running":
            start = runs.parse_time(info.started_at)
            if start is not None:
                duration = (dt.datetime.now(dt.UTC) - start).total_seconds()
            detail = "running now"
        elif info and status == "cancelled":
            detail = "cancelled"
        elif info and status in ("failed", "interrupted"):
            error = str(info.error or status).strip()
            detail = without_paths(error.splitlines()[-1])[:300] if error else status
        elif status == "succeeded":
            detail = "done"
        elif status == "skipped":
            detail = "not run"
        else:
            detail = "waiting"
        rows.append(
            {
                "": STATUS_ICONS.get(status, "?"),
                "Step": name.replace("_", " ").capitalize(),
                "Status": STATUS_TEXT.get(status, status.capitalize()),
                "Time": format_duration(duration) if status != "reused" else "0 s",
                "Detail": detail,
                "status": status,
            }
        )
    return rows


def progress_fraction(rows: Sequence[dict]) -> float:
    if not rows:
        return 0.0
    done = sum(1 for r in rows if r["status"] in ("succeeded", "reused"))
    return done / len(rows)


def rerun_seed(record: RunRecord) -> tuple[forms.Identity, dict[str, Any]]:
    """The identity and form values of a run, to launch it again."""
    identity = forms.Identity(record.market, record.period, record.category)
    return identity, forms.values_of(record.config)


# ---------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------


def output_url(record: RunRecord, step: str, product: str) -> str | None:
    info = record.steps.get(step)
    return info.outputs.get(product) if info else None


def read_table(root: str, url: str, contract: str) -> pd.DataFrame:
    """A Parquet output under ``root``, checked against its contract (by name)."""
    from toolkit.data import io, schemas  # pandera: only when a page reads a table

    url = browse.check_url(root, url)
    return io.read(url, schemas.CONTRACTS[contract])


def read_json(root: str, url: str) -> Any:
    return json.loads(browse.read_output(root, url))


def notebook_text(root: str, url: str) -> str:
    return reports.notebook_text(browse.check_url(root, url))


def notebook_parts(root: str, url: str) -> list[tuple[str, Any]]:
    """An executed notebook as ("code" | "text" | "image", content) in order: code cells,
    their printed and plain-text results, and their figures (PNG bytes). Never HTML."""
    import base64

    notebook = read_json(root, url)
    parts: list[tuple[str, Any]] = []
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        source = "".join(cell.get("source") or "")
        if source.strip():
            parts.append(("code", source))
        for output in cell.get("outputs") or []:
            data = output.get("data") or {}
            if output.get("output_type") == "stream":
                parts.append(("text", "".join(output.get("text") or "")))
            elif "image/png" in data:
                parts.append(("image", base64.b64decode("".join(data["image/png"]))))
            elif "text/plain" in data:
                parts.append(("text", "".join(data["text/plain"])))
            elif output.get("output_type") == "error":
                parts.append(("text", f"{output.get('ename')}: {output.get('evalue')}"))
    return parts


def raw_catalog_values(root: str, market: str, column: str) -> list[str]:
    """Distinct values of one column of a market's raw catalog (only that column is read),
    or none without data."""
    url = storage.raw_url(market, "catalog", root)
    try:
        with storage.open_url(url, "rb") as fh:
            table = pq.read_table(fh, columns=[column])
    except (FileNotFoundError, OSError, KeyError, ValueError):
        return []
    return sorted({str(c) for c in table.column(column).to_pylist() if c})


def sales_fingerprint(sources: Mapping[str, Any], run: Mapping[str, Any]) -> str:
    """What a market's raw files hold, by their content keys ("" when they cannot be
    found): a cache of what is read from them is never stale."""
    from toolkit.data import sources as sources_mod
    from toolkit.runs import cache

    try:
        return "|".join(
            f"{url}={cache.file_fingerprint(url)}" for url in sources_mod.input_urls(sources, run)
        )
    except (OSError, KeyError, ValueError):
        return ""


def plannable_months(
    sources: Mapping[str, Any], run: Mapping[str, Any], history_weeks: int, max_gap_weeks: int
) -> list[str]:
    """The months a run can plan with the market's sales as a run reads them (newest
    first; ``periods.plannable`` decides), or none without readable sales."""
    from toolkit.data import io
    from toolkit.data import sources as sources_mod
    from toolkit.pricing import periods

    try:
        sales = sources_mod.read("sales", sources, run)
    except (sources_mod.SourceError, io.ContractError, io.UnreadableTable, OSError, KeyError):
        return []
    if sales.empty:
        return []
    days = sales["date"]
    return periods.plannable(days.min(), days.max(), history_weeks, max_gap_weeks)


def default_period(months: Sequence[str], today: dt.date | None = None) -> str | None:
    """Next month when it can be planned, else the newest month that can; None without."""
    today = today or dt.date.today()
    following = f"{today.year + today.month // 12:04d}-{today.month % 12 + 1:02d}"
    if following in months:
        return following
    return max(months) if months else None


def markets_with_data(root: str) -> list[str]:
    names = storage.listdir(storage.join(root, "raw"))
    return sorted(n.split("=", 1)[1] for n in names if n.startswith("market="))


def kpi_cards(
    kpis: Mapping[str, Any] | None,
    currency: str = "",
    config: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The headline numbers of a plan, for ``st.metric``: money with its currency, and the
    two that have limits (price changes, markdown) against them: ``limit`` says it in
    words, ``used`` is the share of it used."""
    if not kpis:
        return []
    money = currency or "market currency"
    constraints = _lookup(config or {}, "optimize.constraints") or {}
    max_changes = constraints.get("max_changes")
    budget = constraints.get("markdown_budget")
    n_changes = int(kpis.get("n_changes", 0))
    spent = float(kpis.get("markdown_spent", 0.0))
    return [
        {
            "label": f"Revenue change ({money})",
            "value": f"{kpis.get('revenue_change', 0.0):+,.0f}",
            "delta": f"{kpis.get('revenue_change_pct', 0.0):+.1f}%",
            "help": "Expected revenue over the forecast horizon with the new prices, minus "
            "without them.",
            "limit": None,
            "used": None,
        },
        {
            "label": f"Margin change ({money})",
            "value": f"{kpis.get('margin_change', 0.0):+,.0f}",
            "delta": f"{kpis.get('margin_change_pct', 0.0):+.1f}%",
            "help": "Expected gross margin over the horizon with the new prices, minus "
            "without them.",
            "limit": None,
            "used": None,
        },
        {
            "label": "Volume change (units)",
            "value": f"{kpis.get('volume_change', 0.0):+,.0f}",
            "delta": f"{kpis.get('volume_change_pct', 0.0):+.1f}%",
            "help": "Expected units sold over the horizon with the new prices, minus without.",
            "limit": None,
            "used": None,
        },
        {
            "label": "Price changes",
            "value": f"{n_changes:,}",
            "delta": None,
            "help": "Products whose price the plan changes, of the most allowed (Max changes).",
            "limit": f"{n_changes:,} of {int(max_changes):,} allowed" if max_changes else "",
            "used": n_changes / max_changes if max_changes else 0.0,
        },
        {
            "label": f"Markdown spent ({money})",
            "value": f"{spent:,.0f}",
            "delta": None,
            "help": "Revenue given up to discounts over the horizon, of the markdown budget.",
            "limit": f"{spent / budget:.0%} of the {budget:,.0f} {money} budget" if budget else "",
            "used": spent / budget if budget else 0.0,
        },
    ]


def price_change_counts(plan: pd.DataFrame) -> pd.DataFrame:
    """How many products get each price change (percent), the changed ones only."""
    changed = plan[plan["changed"]]
    if changed.empty:
        return pd.DataFrame({"Change (%)": [], "Products": []})
    counts = (changed["price_change"] * 100).round(0).value_counts().sort_index()
    return pd.DataFrame({"Change (%)": counts.index.astype(float), "Products": counts.values})


def top_products(plan: pd.DataFrame, n: int = 3) -> list[str]:
    """The changed products with the largest margin effect."""
    changed = plan[plan["changed"]]
    effect = (changed["expected_margin"] - changed["baseline_margin"]).abs()
    return list(changed.assign(effect=effect).nlargest(n, "effect")["product_id"].astype(str))


def recommendations(
    plan: pd.DataFrame, catalog: pd.DataFrame | None = None, only_changes: bool = True
) -> pd.DataFrame:
    """The plan as business users read it, biggest margin effect first."""
    frame = plan.copy()
    if only_changes:
        frame = frame[frame["changed"]]
    names = (
        catalog.set_index("product_id")["product_name"]
        if catalog is not None and "product_name" in catalog
        else pd.Series(dtype=str)
    )
    out = pd.DataFrame(
        {
            "Product": frame["product_id"].astype(str),
            "Name": frame["product_id"].map(names).fillna("").astype(str),
            "Category": frame["category"].astype(str),
            "Current price": frame["current_price"].round(2),
            "Recommended price": frame["new_price"].round(2),
            "Change %": (frame["price_change"] * 100).round(1),
            "Expected units": frame["expected_units"].round(0),
            "Revenue change": (frame["expected_revenue"] - frame["baseline_revenue"]).round(0),
            "Margin change": (frame["expected_margin"] - frame["baseline_margin"]).round(0),
            "Markdown cost": frame["markdown_cost"].round(0),
            "Changed": frame["changed"].astype(bool),
        }
    )
    return out.sort_values("Margin change", ascending=False, key=abs).reset_index(drop=True)


def currency_of(catalog: pd.DataFrame | None) -> str:
    if catalog is None or catalog.empty or "currency" not in catalog:
        return ""
    values = catalog["currency"].dropna().unique()
    return str(values[0]) if len(values) == 1 else ""


def forecast_products(
    forecasts: pd.DataFrame, plan: pd.DataFrame | None = None, catalog: pd.DataFrame | None = None
) -> list[tuple[str, str]]:
    """(product id, label) of the forecast products, changed ones first."""
    ids = list(dict.fromkeys(forecasts["product_id"].astype(str)))
    changed = set()
    if plan is not None and not plan.empty:
        changed = set(plan.loc[plan["changed"], "product_id"].astype(str))
    names = {}
    if catalog is not None and not catalog.empty:
        names = dict(
            zip(
                catalog["product_id"].astype(str),
                catalog["product_name"].astype(str),
                strict=True,
            )
        )
    ids.sort(key=lambda pid: (pid not in changed, pid))
    out = []
    for pid in ids:
        label = f"{pid} · {names[pid]}" if pid in names else pid
        out.append((pid, f"{label} (price change)" if pid in changed else label))
    return out


FORECAST_SERIES = ("Actual", "Forecast at today's price", "Forecast at the recommended price")


def history_and_forecast(
    weekly: pd.DataFrame,
    forecasts: pd.DataFrame,
    product_id: str,
    history_weeks: int = 78,
    plan: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Long frame (week, units, series) of one product's recent actuals and its forecast at
    today's price and, when the plan changes it, at the recommended price (the forecast
    scaled by the price ratio to the power of the product's elasticity, as the plan does)."""
    actual, today, recommended = FORECAST_SERIES
    past = weekly[weekly["product_id"].astype(str) == product_id].sort_values("week")
    past = past.tail(history_weeks)
    future = forecasts[forecasts["product_id"].astype(str) == product_id].sort_values("week")
    frames = [
        pd.DataFrame({"week": past["week"], "units": past["units"], "series": actual}),
        pd.DataFrame({"week": future["week"], "units": future["forecast_units"], "series": today}),
    ]
    row = None
    if plan is not None and not future.empty:
        found = plan[(plan["product_id"].astype(str) == product_id) & plan["changed"]]
        row = found.iloc[0] if not found.empty else None
    if row is not None:
        ratio = float(row["new_price"]) / float(row["current_price"])
        frames.append(
            pd.DataFrame(
                {
                    "week": future["week"],
                    "units": future["forecast_units"] * ratio ** future["elasticity"],
                    "series": recommended,
                }
            )
        )
    out = pd.concat([f for f in frames if not f.empty], ignore_index=True)
    if out.empty:
        return pd.DataFrame({"week": [], "units": [], "series": []})
    out["week"] = pd.to_datetime(out["week"])
    out["units"] = out["units"].astype(float).round(1)
    return out


def impact_by_category(plan: pd.DataFrame) -> pd.DataFrame:
    """Long frame (category, measure, change) of the plan's expected effect."""
    deltas = (
        plan.assign(
            Revenue=plan["expected_revenue"] - plan["baseline_revenue"],
            Margin=plan["expected_margin"] - plan["baseline_margin"],
        )
        .groupby("category")[["Revenue", "Margin"]]
        .sum()
        .round(0)
        .reset_index()
    )
    return deltas.melt(id_vars="category", var_name="measure", value_name="change")


def notebooks(record: RunRecord, steps: Sequence[str] | None = None) -> list[dict]:
    """Each step's executed notebook: the published one, or the partial one of a failure."""
    out = []
    recorded = record.steps
    for name in list(steps or pipeline_steps()) + [n for n in recorded if n not in (steps or [])]:
        info = recorded.get(name)
        if not info or any(n["step"] == name for n in out):
            continue
        url = info.outputs.get("nb")
        partial = False
        if not url:
            url = info.debug.get("notebook")
            partial = bool(url)
        if url:
            out.append(
                {
                    "step": name,
                    "url": url,
                    "partial": partial,
                    "status": "reused" if info.reused else info.status,
                    "filename": url.rsplit("/", 1)[-1],
                }
            )
    return out


# A URL or an absolute path; ``1/5`` or ``market=US/x`` are not (no scheme, no leading /).
_PATH = re.compile(r"(?:\b[a-z][a-z0-9+.-]*://|(?<![\w./=-])/)[^\s'\"(),;]+")
# What to try when a step fails, per step, in the words of the form.
STEP_ADVICE = {
    "load_transform": "Check that the market's sales data covers the month, or lower "
    "History weeks or Min weeks with sales.",
    "identify_underperformers": "Lower Recent weeks or Baseline weeks, or raise History weeks.",
    "forecast": "Lower Backtest weeks or Season length, or raise History weeks.",
    "optimize": "Relax the business constraints (more price levels, a larger budget or discount).",
    "format_output": "Launch again; if it fails again, ask an operator.",
}


def without_paths(text: str) -> str:
    """``text`` with server paths and storage URLs cut to their last part (a file name)."""

    def last_part(match: re.Match) -> str:
        return match.group(0).rstrip("/").rsplit("/", 1)[-1] or "…"

    return _PATH.sub(last_part, str(text))


def _cancelled_by(record: RunRecord) -> str:
    for event in reversed(record.events):
        found = re.match(r"run cancelled by (\S+)", event.message)
        if found:
            return found.group(1)
    return ""


def outcome_sentence(record: RunRecord) -> str:
    """How a run that is not going any more ended, in one sentence a business user reads:
    which data or setting caused a failure and what to do. Empty for a success."""
    if record.status == "cancelled":
        who = _cancelled_by(record)
        return f"This run was cancelled{f' by {who}' if who else ''}; nothing was delivered."
    if record.status == "interrupted":
        return (
            "This run stopped without finishing: its process ended (a restart or a crash). "
            "Launch it again; steps already done are reused."
        )
    if record.status != "failed":
        return ""
    for name, info in record.steps.items():
        if info.status != "failed":
            continue
        title = name.replace("_", " ").capitalize()
        for report in info.report:
            broken = report.get("failures") or []
            if broken:
                first = broken[0]
                what = first.get("description") or first.get("check") or "a rule"
                return (
                    f"The {report.get('dataset', 'input')} data broke {len(broken)} rule(s) in "
                    f"step {title}, for example column {first.get('column', '?')}: {what} "
                    f"({first.get('count', '?')} values). Correct the data and launch again."
                )
        error = str(info.error or "").strip().splitlines()
        reason = without_paths(error[-1]) if error else "no reason was recorded"
        advice = STEP_ADVICE.get(name, "Ask an operator.")
        return f"Step {title} failed: {reason.rstrip('.')}. {advice}"
    return f"The run failed: {without_paths(record.error or 'no reason was recorded')}."


def failures(record: RunRecord) -> list[dict[str, Any]]:
    """Each step that did not succeed: its error and its contract report as a table."""
    out = []
    for name, info in record.steps.items():
        if info.status not in ("failed", "cancelled", "interrupted"):
            continue
        rows = []
        for report in info.report:
            for failure in report.get("failures") or []:
                rows.append(
                    {
                        "Dataset": str(report.get("dataset", "")),
                        "When": str(report.get("stage", "")),
                        "Column": str(failure.get("column", "")),
                        "Check": str(failure.get("check", "")),
                        "Meaning": str(failure.get("description", "")),
                        "Failing": int(failure.get("count", 0) or 0),
                        "Examples": ", ".join(str(v) for v in failure.get("examples") or []),
                        "Rows checked": int(report.get("n_rows", 0) or 0),
                    }
                )
        out.append(
            {
                "step": name,
                "status": info.status,
                "error": str(info.error or ""),
                "report": pd.DataFrame(rows),
                "traceback": str(info.traceback or ""),
            }
        )
    return out


def output_files(record: RunRecord, root: str) -> list[dict[str, str]]:
    """Every file a run's steps produced, relative to the storage root."""
    out = []
    for name, info in record.steps.items():
        urls = dict(info.outputs)
        debug = info.debug
        if debug.get("notebook"):
            urls["partial notebook"] = debug["notebook"]
        for i, report in enumerate(debug.get("reports") or []):
            urls[f"validation report {i + 1}"] = report
        for product, url in urls.items():
            try:
                relative = browse.relative_path(root, url)
            except browse.OutsideRoot:
                continue  # never offer a file outside the root, whatever the record says
            out.append({"step": name, "product": product, "path": relative})
    return out


# ---------------------------------------------------------------------------
# Comparing runs
# ---------------------------------------------------------------------------


def changed_settings(record: RunRecord, currency: str = "") -> list[tuple[str, str]]:
    """(setting, value as shown) of each setting of a run that differs from the defaults
    (the rows of the form's "Settings that differ from the defaults"): those changed at
    launch first, since they tell runs of one market and month apart."""
    rows = forms.differences_of(forms.record_leaves(record.config, record.origins), currency)
    rows.sort(key=lambda row: row["Set by"] != forms.FORM_CHANGE)  # stable: model order
    return [(row["Short"], row["Value"]) for row in rows]


def what_changed(record: RunRecord, currency: str = "", limit: int = 3) -> str:
    """The settings of a run that differ from the defaults, short:
    ``Max discount 20%, Markdown budget 40,000 EUR +2 more``."""
    changes = changed_settings(record, currency)
    if not changes:
        return "defaults"
    text = ", ".join(f"{label} {value}" for label, value in changes[:limit])
    return text + (f" +{len(changes) - limit} more" if len(changes) > limit else "")


def short_name(record: RunRecord, currency: str = "") -> str:
    """A run's name where runs sit side by side: identity, then its own name or what
    changed."""
    return f"{record.market} {record.period} · {record.name or what_changed(record, currency, 2)}"


def run_names(
    records: Sequence[RunRecord], tz: str | None = None, currencies: Sequence[str] = ()
) -> list[str]:
    """``short_name`` of each run, told apart by start time (then id) where they are alike."""
    currencies = list(currencies) or [""] * len(records)
    first = [short_name(r, c) for r, c in zip(records, currencies, strict=True)]
    names = list(first)
    for i, record in enumerate(records):
        if first.count(first[i]) > 1:
            names[i] = f"{names[i]} · {format_time(record.started_at or record.created_at, tz)}"
    for i, record in enumerate(records):
        if names.count(names[i]) > 1:
            names[i] = f"{names[i]} · {record.id[-6:]}"
    return names


def same_scope(records: Sequence[RunRecord], record: RunRecord) -> list[RunRecord]:
    """Other succeeded runs of the same market and period (and category), newest first."""
    return [
        r
        for r in records
        if r.id != record.id
        and r.status == "succeeded"
        and (r.market, r.period, r.category) == (record.market, record.period, record.category)
    ]


def default_comparison(records: Sequence[RunRecord]) -> list[str]:
    """Two runs worth comparing: the newest succeeded run and an earlier one of its market
    and period (older first, as the baseline); else the two newest succeeded runs."""
    succeeded = [r for r in records if r.status == "succeeded"]
    for record in succeeded:
        others = same_scope(succeeded, record)
        if others:
            return [others[0].id, record.id]
    return [r.id for r in reversed(succeeded[:2])]


def compare_params(
    records: Sequence[RunRecord],
    names: Sequence[str] | None = None,
    currencies: Sequence[str] = (),
) -> pd.DataFrame:
    """Settings that differ between the first run and any other, one column per run."""
    if len(records) < 2:
        return pd.DataFrame()
    names = list(names or run_names(records))
    currencies = list(currencies) or [""] * len(records)
    first = records[0]
    keys: list[str] = []
    origins: dict[str, list[str]] = {}
    values: dict[str, dict[str, Any]] = {}
    for other in records[1:]:
        for row in reports.config_differences(first, other):
            if row["key"] not in keys:
                keys.append(row["key"])
    for key in keys:
        values[key] = {}
        origins[key] = []
        for record, name, currency in zip(records, names, currencies, strict=True):
            leaf = _lookup(record.config, key)
            values[key][name] = forms.display_setting(key, leaf, currency)
            origin = record.origins.get(key)
            origins[key].append(forms.describe_origin(origin) if origin else "")
    rows = []
    for key in sorted(keys):
        row = {"Setting": forms.setting_label(key)}
        row.update(values[key])
        row["Set by"] = " → ".join(dict.fromkeys(o for o in origins[key] if o))
        rows.append(row)
    return pd.DataFrame(rows)


def _lookup(data: Mapping[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


MONEY_KPIS = ("revenue_change", "margin_change", "markdown_spent")
PERCENT_KPIS = ("revenue_change_pct", "margin_change_pct", "volume_change_pct")


def compare_kpis(
    records: Sequence[RunRecord],
    kpis: Sequence[Mapping[str, Any] | None],
    currencies: Sequence[str] = (),
    names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """KPIs per run as text with their unit, and each run's change against the first.

    Amounts of money carry their currency; between runs in different currencies (or of
    unknown currency) they are never subtracted: the change reads "not comparable" and the
    percent rows carry the comparison.
    """
    if not records:
        return pd.DataFrame()
    names = list(names or run_names(records))
    currencies = list(currencies) or [""] * len(records)
    rows = []
    for key, label in KPI_LABELS.items():
        values = [(k or {}).get(key) for k in kpis]
        if all(v is None for v in values):
            continue
        row: dict[str, Any] = {"KPI": label}
        for name, value, currency in zip(names, values, currencies, strict=True):
            row[name] = _kpi_text(key, value, currency)
        base, base_currency = values[0], currencies[0]
        for name, value, currency in zip(names[1:], values[1:], currencies[1:], strict=True):
            row[f"Δ {name}"] = _kpi_delta(key, base, value, base_currency, currency)
        rows.append(row)
    return pd.DataFrame(rows)


def _kpi_text(key: str, value: Any, currency: str) -> str:
    if value is None:
        return "–"
    if key in PERCENT_KPIS:
        return f"{value:+.1f}%"
    if key in MONEY_KPIS:
        sign = "+" if key != "markdown_spent" else ""
        return f"{value:{sign},.0f} {currency or '(currency unknown)'}"
    return f"{value:+,.0f}" if key.endswith("_change") else f"{value:,.0f}"


def _kpi_delta(key: str, base: Any, value: Any, base_currency: str, currency: str) -> str:
    if base is None or value is None:
        return "–"
    change = float(value) - float(base)
    if key in PERCENT_KPIS:
        return f"{change:+.1f} pts"
    if key in MONEY_KPIS:
        if not base_currency or base_currency != currency:
            return "not comparable (different currencies)"
        return f"{change:+,.0f} {currency}"
    return f"{change:+,.0f}"


def queue_positions(root: str) -> dict[str, int]:
    """Each queued run's place in the queue (1 starts next), from one listing."""
    from toolkit.runs import queue

    return queue.positions(root)


def schedule_rows(
    root: str, now: dt.datetime | None = None, tz: str | None = None, path=None
) -> list[dict[str, Any]]:
    """configs/schedules.yaml (or ``path``) as rows: when each fires next, what it fired
    last and how those runs went, as whom. Times in ``tz``.

    Raises:
        ScheduleError: the file is wrong (the message names the schedule and key).
    """
    from toolkit.runs import schedules

    now = now or dt.datetime.now(dt.UTC)
    rows = []
    for schedule in schedules.load(path):
        last = schedules.last_fired(schedule, root) or {}
        following = schedules.next_fire(schedule, now) if schedule.enabled else None
        rows.append(
            {
                "Schedule": schedule.name,
                "When": f"{schedule.cron} ({schedule.timezone})",
                "Markets": ", ".join(schedule.markets),
                "Period": schedule.period,
                "Runs as": schedule.run_as,
                "Next": format_time(following.isoformat(), tz) if following else "off",
                "Last": format_time(last.get("fire_at"), tz),
                "Last runs": ", ".join(_run_with_status(r, root) for r in last.get("runs", [])),
            }
        )
    return rows


def _run_with_status(run_id: str, root: str) -> str:
    try:
        return f"{run_id} ({runs.load(run_id, root).status})"
    except (runs.RunNotFound, runs.RecordUnreadable):
        return f"{run_id} (no record)"


# ---------------------------------------------------------------------------
# Was the forecast right? A past period's forecast against its actual sales
# ---------------------------------------------------------------------------

CHECK_SERIES = ("Actual", "Forecast at today's price")
ERROR_MEASURES = {
    "wape": (
        "Units missed (WAPE)",
        "Sum over products of |forecast - actual| over the month, divided by the units sold.",
    ),
    "mape": (
        "Average miss per product (MAPE)",
        "Mean of |forecast - actual| / actual over the products that sold in the month.",
    ),
    "bias": (
        "Bias",
        "Forecast minus actual units, over the units sold: above zero the forecast was high.",
    ),
}


def forecast_check(root: str, record: RunRecord) -> dict[str, Any] | None:
    """The run's forecast-against-actual summary (check_forecast), or None without one."""
    url = output_url(record, accuracy.CHECK_STEP, "summary")
    return read_json(root, url) if url else None


def error_cards(summary: Mapping[str, Any]) -> list[dict[str, str]]:
    """WAPE, MAPE and bias of a checked run as metric cards (label, value, help)."""
    cards = []
    for key, (label, why) in ERROR_MEASURES.items():
        value = summary.get(key)
        if value is None:  # nothing sold: no ratio, rather than a made-up one
            shown = "n/a"
        else:
            shown = f"{100 * value:+.1f}%" if key == "bias" else f"{100 * value:.1f}%"
        cards.append({"label": label, "value": shown, "help": why})
    return cards


def forecast_vs_actual_weeks(rows: pd.DataFrame) -> pd.DataFrame:
    """Long frame (week, units, series) of all products' actual and forecast units per week."""
    actual, forecast = CHECK_SERIES
    weekly = rows.groupby("week", as_index=False)[["actual_units", "forecast_units"]].sum()
    weekly = weekly.rename(columns={"actual_units": actual, "forecast_units": forecast})
    out = weekly.melt(id_vars="week", var_name="series", value_name="units")
    out["week"] = pd.to_datetime(out["week"])
    out["units"] = out["units"].astype(float).round(1)
    return out


def error_per_period(
    root: str, records: Iterable[RunRecord], market: str, category: str | None
) -> pd.DataFrame:
    """Long frame (period, measure, error in percent, run) of the market's forecast error per
    period (``toolkit.runs.accuracy``), for the runs of ``category`` whose outputs are under
    ``root``."""

    def readable(record: RunRecord) -> bool:
        url = output_url(record, accuracy.CHECK_STEP, "summary")
        try:
            return bool(url) and bool(browse.check_url(root, url))
        except browse.OutsideRoot:
            return False

    chosen = [r for r in records if r.category == category and readable(r)]
    rows = accuracy.error_by_period(market, chosen)
    out = [
        {
            "period": row["period"],
            "measure": ERROR_MEASURES[key][0],
            "error": round(100 * row[key], 1),
            "run": row["run_id"],
        }
        for row in rows
        for key in ("wape", "bias")
        if row[key] is not None
    ]
    return pd.DataFrame(out, columns=["period", "measure", "error", "run"])
