"""Was the forecast right? A past period's forecast against what it actually sold.

A run for period ``P`` learns only from the weeks before ``P`` (``periods.timeline``).
When the raw sales also hold every week of ``P``, the forecast can be checked: per
product, the units forecast for ``P``'s weeks against the units sold. The forecast is the
one at the current list price without promotions, the counterfactual the plan starts from
(the recommended prices are a what-if on top of it); the actual sales are at whatever
prices and promotions the market really had, so the price paid is shown beside them.

Errors are on each product's units over the whole period, the quantity the plan decides:

* WAPE = sum |forecast - actual| / sum actual: the share of units the forecast missed;
* MAPE = mean of |forecast - actual| / actual over the products that sold;
* bias = (sum forecast - sum actual) / sum actual: above zero the forecast was too high.
"""

from __future__ import annotations

import math

import pandas as pd

from toolkit.pricing import periods

__all__ = [
    "FORECAST_BASIS",
    "error_summary",
    "forecast_vs_actual",
    "period_actuals",
]

FORECAST_BASIS = (
    "current_price: units forecast at the current list price without promotions, the "
    "model's counterfactual; actual units are at the prices and promotions the market had"
)
_DAY = pd.Timedelta(days=1)
_COMPARED = ["product_id", "category", "week", "forecast_units", "actual_units"]
_COMPARED += ["current_price", "actual_price"]


def period_actuals(sales: pd.DataFrame, product_ids, period: str) -> pd.DataFrame:
    """Weekly units and revenue per product in the weeks of ``period`` the sales hold.

    A week is held when the sales run through its Sunday and the market sold something
    in it (a week without a single sale is missing data, not a quiet week). Within a
    held week a product without sales sold zero units.

    Returns:
        The ``Actuals`` contract's columns (product_id, week, units, revenue), one row
        per product per held week; no rows when the sales hold none of the weeks.
    """
    weeks = periods.weeks_of(period)
    start, end = weeks[0], weeks[-1] + 7 * _DAY
    days = sales[(sales["date"] >= start) & (sales["date"] < end)]
    complete_through = periods.last_complete_sunday(sales["date"].max()) if len(sales) else None
    days = days[days["date"] <= complete_through] if complete_through is not None else days
    mondays = days["date"] - pd.to_timedelta(days["date"].dt.dayofweek, unit="D")
    held = weeks.intersection(pd.DatetimeIndex(mondays.unique()))
    ids = pd.Index(pd.unique(pd.Series(list(product_ids), dtype=str)), name="product_id")
    days = days.assign(week=mondays)[days["product_id"].isin(ids)]
    days = days.sort_values(["product_id", "date"], kind="stable")  # sums in one order
    sums = (
        days.assign(revenue=days["units"] * days["unit_price"])
        .groupby(["product_id", "week"], as_index=False)[["units", "revenue"]]
        .sum()
    )
    grid = pd.MultiIndex.from_product([ids, held], names=["product_id", "week"])
    out = grid.to_frame(index=False).merge(sums, on=["product_id", "week"], how="left")
    out["units"] = out["units"].fillna(0).astype(float)
    out["revenue"] = out["revenue"].fillna(0.0).astype(float)
    out["week"] = out["week"].astype("datetime64[ns]")
    return out.sort_values(["product_id", "week"], ignore_index=True)


def forecast_vs_actual(
    forecasts: pd.DataFrame, actuals: pd.DataFrame, period: str
) -> tuple[pd.DataFrame, dict]:
    """The forecast for ``period``'s weeks against the actual units, and a summary.

    Args:
        forecasts: The ``Forecasts`` of the run (forecast at the current price).
        actuals: ``period_actuals`` of the same products.
        period: The priced month.

    Returns:
        The ``ForecastVsActual`` rows (one per forecast product per week of the period;
        none when the actuals do not cover every week) and a JSON-ready summary: its
        ``status`` is ``checked`` with the errors (``error_summary``), or
        ``no_actuals`` with a ``message`` saying which weeks are missing and no numbers.
    """
    weeks = periods.weeks_of(period)
    held = weeks.intersection(pd.DatetimeIndex(actuals["week"].unique()))
    summary = {
        "period": period,
        "forecast_basis": FORECAST_BASIS,
        "weeks": [f"{week:%Y-%m-%d}" for week in weeks],
        "weeks_with_actuals": [f"{week:%Y-%m-%d}" for week in held],
    }
    if len(held) < len(weeks):
        span = f"{weeks[0]:%Y-%m-%d}..{weeks[-1] + 6 * _DAY:%Y-%m-%d}"
        message = (
            f"no actuals for period {period}: the raw sales hold {len(held)} of its "
            f"{len(weeks)} weeks ({span})"
        )
        if len(held):
            message += f", through {held[-1] + 6 * _DAY:%Y-%m-%d}; the check needs all of them"
        empty = pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in _COMPARED})
        return empty, {**summary, "status": "no_actuals", "message": message}
    planned = forecasts[forecasts["week"].isin(weeks)]
    rows = planned.merge(actuals, on=["product_id", "week"], how="left", validate="1:1")
    rows = rows.rename(columns={"units": "actual_units"})
    # Every forecast product is in the actuals (same products, every held week): a missing
    # one means the two tables are not of the same run.
    if rows["actual_units"].isna().any():
        missing = sorted(rows.loc[rows["actual_units"].isna(), "product_id"].unique())
        raise ValueError(f"actuals lack forecast products of period {period}: {missing[:5]}")
    paid = rows["revenue"] / rows["actual_units"].where(rows["actual_units"] > 0)
    rows["actual_price"] = paid.astype(float)  # NaN: nothing sold, no price paid
    rows = rows[_COMPARED].sort_values(["product_id", "week"], ignore_index=True)
    return rows, {**summary, "status": "checked", **error_summary(rows)}


def error_summary(rows: pd.DataFrame) -> dict:
    """WAPE, MAPE and bias of each product's units over the period (see the module).

    Values are None, not NaN, where they are undefined (nothing sold, no products), so
    the summary is plain JSON and never shows a made-up number.
    """
    totals = rows.groupby("product_id")[["forecast_units", "actual_units"]].sum()
    forecast, actual = totals["forecast_units"], totals["actual_units"]
    sold = actual > 0
    total = float(actual.sum())
    return {
        "products": len(totals),
        "products_sold": int(sold.sum()),
        "forecast_units": float(forecast.sum()),
        "actual_units": total,
        "wape": _ratio(float((forecast - actual).abs().sum()), total),
        "mape": float(((forecast - actual).abs() / actual)[sold].mean()) if sold.any() else None,
        "bias": _ratio(float(forecast.sum()) - total, total),
    }


def _ratio(part: float, whole: float) -> float | None:
    value = part / whole if whole > 0 else math.nan
    return value if math.isfinite(value) else None


def _dtype(column: str) -> str:
    if column == "week":
        return "datetime64[ns]"
    return "str" if column in ("product_id", "category") else "float64"
