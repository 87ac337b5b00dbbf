"""What people read about runs: KPIs, logs, and differences between runs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from toolkit.data import storage
from toolkit.runs.record import RunRecord

__all__ = [
    "BACKTEST_COLUMNS",
    "config_differences",
    "diff_runs",
    "diff_text",
    "kpis",
    "pooled_backtest",
    "run_log",
    "wape",
]

BACKTEST_COLUMNS = ("product_id", "model_mae", "naive_mae", "model_wape", "naive_wape", "n_weeks")


def step_json(record: RunRecord, step_name: str, product: str) -> dict[str, Any] | None:
    """A JSON product of one of the run's steps, or None when the run has none (not that
    far yet, a step it predates, or a file gone or unreadable)."""
    step = record.steps.get(step_name)
    url = step.outputs.get(product) if step else None
    if not url:
        return None
    try:
        return json.loads(storage.read_bytes(url))
    except (FileNotFoundError, ValueError):
        return None


def kpis(record: RunRecord) -> dict[str, Any] | None:
    """The plan KPIs of a run (from its optimize step), or None when it has none yet."""
    return step_json(record, "optimize", "kpis")


def pooled_backtest(accuracy: Mapping[str, Any]) -> dict:
    """Pools per-product backtest accuracy into unit-weighted totals.

    Each product's holdout units are recovered as mae * n_weeks / wape (from either
    method's WAPE), so the pooled WAPE is total absolute error over total units, as if all
    products were one series.

    Args:
        accuracy: The ``BACKTEST_COLUMNS`` of a backtest, as equal-length arrays (a
            DataFrame's or an Arrow table's columns): no pandas needed to read a summary.

    Returns:
        model_wape and naive_wape (NaN if nothing sold), improvement (1 - model_wape /
        naive_wape, NaN when the baseline is perfect) and n_products.
    """
    import numpy as np

    def column(name: str):
        return np.asarray(accuracy[name], dtype=float)

    model_error = column("model_mae") * column("n_weeks")
    naive_error = column("naive_mae") * column("n_weeks")
    with np.errstate(divide="ignore", invalid="ignore"):
        units = model_error / column("model_wape")
        units = np.where(np.isfinite(units), units, naive_error / column("naive_wape"))
    # What is still unknown sold nothing (NaN WAPE) or was forecast perfectly by both
    # methods; either way it adds no error.
    total_units = float(np.where(np.isfinite(units), units, 0.0).sum())
    model_wape = wape(float(model_error.sum()), total_units)
    naive_wape = wape(float(naive_error.sum()), total_units)
    return {
        "model_wape": model_wape,
        "naive_wape": naive_wape,
        "improvement": 1.0 - model_wape / naive_wape if naive_wape > 0 else float("nan"),
        "n_products": len(accuracy["product_id"]),
    }


def wape(abs_error: float, actual: float) -> float:
    """Weighted absolute percentage error: total absolute error over total actual units
    (NaN when nothing sold)."""
    return float(abs_error / actual) if actual > 0 else float("nan")


def _leaves(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_leaves(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): data}


def config_differences(a: RunRecord, b: RunRecord) -> list[dict[str, Any]]:
    """Each config key whose value differs between two records, with both origins."""
    left, right = _leaves(a.config), _leaves(b.config)
    rows = []
    for key in sorted(set(left) | set(right)):
        if left.get(key) != right.get(key):
            rows.append(
                {
                    "key": key,
                    "a": left.get(key),
                    "b": right.get(key),
                    "a_origin": a.origins.get(key),
                    "b_origin": b.origins.get(key),
                }
            )
    return rows


def diff_runs(a: RunRecord, b: RunRecord) -> dict[str, Any]:
    """Config differences and KPI deltas (b minus a)."""
    ka, kb = kpis(a) or {}, kpis(b) or {}
    deltas = {}
    for key in sorted(set(ka) & set(kb)):
        if isinstance(ka[key], int | float) and isinstance(kb[key], int | float):
            deltas[key] = {"a": ka[key], "b": kb[key], "delta": kb[key] - ka[key]}
    return {"a": a.id, "b": b.id, "config": config_differences(a, b), "kpis": deltas}


def diff_text(diff: dict[str, Any]) -> str:
    lines = [f"a = {diff['a']}", f"b = {diff['b']}", "", "config differences:"]
    if not diff["config"]:
        lines.append("  none")
    for row in diff["config"]:
        lines.append(
            f"  {row['key']}: {json.dumps(row['a'])} -> {json.dumps(row['b'])}"
            f"   ({row['a_origin']} -> {row['b_origin']})"
        )
    lines += ["", "KPI deltas (b - a):"]
    if not diff["kpis"]:
        lines.append("  no KPIs on one side (did both runs finish?)")
    for key, row in diff["kpis"].items():
        lines.append(f"  {key:<20} {row['a']:>14,.2f} {row['b']:>14,.2f} {row['delta']:>+14,.2f}")
    return "\n".join(lines)


def notebook_text(url: str, max_chars: int = 20_000) -> str:
    """The stream and error outputs of an executed notebook, as plain text."""
    import nbformat

    nb = nbformat.reads(storage.read_bytes(url).decode(), as_version=4)
    chunks = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                chunks.append(output.get("text", ""))
            elif output.get("output_type") == "error":
                chunks.append(f"{output.get('ename')}: {output.get('evalue')}\n")
    text = "".join(chunks)
    return text[-max_chars:]


def run_log(record: RunRecord, step: str | None = None) -> str:
    """The run's events and step errors; with ``step``, that step's notebook output too."""
    lines = [f"{e.at[:19].replace('T', ' ')}  {e.message}" for e in record.events]
    if record.error:
        lines.append(f"error: {record.error}")
    for name, info in record.steps.items():
        if info.traceback and info.status == "failed":
            lines += [f"--- {name} traceback ---", info.traceback.rstrip()]
    if step:
        info = record.steps.get(step)
        if info is None:
            lines.append(f"no step {step!r} in this run")
        else:
            url = info.outputs.get("nb") or info.debug.get("notebook")
            if url:
                lines += [f"--- {step} notebook output ({url}) ---", notebook_text(url).rstrip()]
            else:
                lines.append(f"step {step!r} has no notebook yet")
    return "\n".join(lines)
