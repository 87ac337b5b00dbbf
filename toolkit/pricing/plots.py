"""Charts for the step notebooks: people would rather look at these than read tables."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

__all__ = ["history_and_forecast", "impact_by_category"]


def history_and_forecast(
    weekly: pd.DataFrame,
    forecasts: pd.DataFrame,
    product_ids: Sequence[str],
    history_weeks: int = 78,
):
    """Recent weekly units and the forecast, one panel per product."""
    import matplotlib.pyplot as plt  # slow to import: steps that draw nothing never pay it

    ids = list(product_ids)
    fig, axes = plt.subplots(
        len(ids) or 1, 1, figsize=(9, 2.2 * max(len(ids), 1)), sharex=True, squeeze=False
    )
    for ax, pid in zip(axes[:, 0], ids, strict=False):
        past = weekly[weekly["product_id"] == pid].tail(history_weeks)
        future = forecasts[forecasts["product_id"] == pid]
        ax.plot(past["week"], past["units"], label="actual", color="#4c72b0")
        ax.plot(future["week"], future["forecast_units"], label="forecast", color="#dd8452")
        ax.set_title(pid, fontsize=9, loc="left")
        ax.set_ylabel("units / week")
    axes[0, 0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def impact_by_category(plan: pd.DataFrame):
    """Expected revenue and margin change per category for the chosen plan."""
    import matplotlib.pyplot as plt

    deltas = (
        plan.assign(
            revenue=plan["expected_revenue"] - plan["baseline_revenue"],
            margin=plan["expected_margin"] - plan["baseline_margin"],
        )
        .groupby("category")[["revenue", "margin"]]
        .sum()
    )
    fig, ax = plt.subplots(figsize=(7, 3))
    if deltas.empty:
        ax.text(0.5, 0.5, "no candidates", ha="center", va="center")
    else:
        deltas.plot.barh(ax=ax, title="Expected change by category")
        ax.axvline(0, color="black", linewidth=0.8)
    fig.tight_layout()
    return fig
