"""Data contracts: one pandera model for every dataset a step reads or writes.

Business rules are checks here, not comments elsewhere. Steps never call these directly:
``toolkit.data.io.read``/``write`` validate at the boundary, lazily, and stop with a report.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

__all__ = [
    "CONTRACTS",
    "Actuals",
    "Catalog",
    "Export",
    "ForecastAccuracy",
    "ForecastVsActual",
    "Forecasts",
    "Plan",
    "RawSales",
    "Underperformers",
    "WeeklySales",
    "plan_contract",
]

_TOLERANCE = 1e-6


class _Contract(pa.DataFrameModel):
    class Config:
        coerce = True  # "12" becomes 12; "abc" is reported with its column
        strict = True  # an unexpected column is a changed upstream, not a detail


class RawSales(_Contract):
    """Daily sales per product, as delivered by the source system (one file per market)."""

    date: Series[pd.Timestamp] = pa.Field(description="Sales day.")
    product_id: Series[str] = pa.Field(str_matches=r"^P[0-9]+\Z", description="Product key.")
    units: Series[int] = pa.Field(ge=0, description="Units sold that day.")
    unit_price: Series[float] = pa.Field(gt=0, description="Shelf price paid that day.")
    promo: Series[bool] = pa.Field(description="Whether the product was on promotion.")

    class Config:
        unique = ["date", "product_id"]

    @pa.check("unit_price", description="finite")
    def finite_price(cls, price: Series[float]) -> Series[bool]:
        return np.isfinite(price)

    @pa.dataframe_check(description="at least one row")
    def not_empty(cls, df: pd.DataFrame) -> bool:
        return len(df) > 0


class Catalog(_Contract):
    """Product master data of one market: current list price and unit cost."""

    product_id: Series[str] = pa.Field(unique=True, str_matches=r"^P[0-9]+\Z", description="Key.")
    product_name: Series[str] = pa.Field(str_length={"min_value": 1}, description="Display name.")
    category: Series[str] = pa.Field(str_matches=r"^[a-z][a-z0-9_]*\Z", description="Category.")
    list_price: Series[float] = pa.Field(gt=0, description="Current list price.")
    unit_cost: Series[float] = pa.Field(gt=0, description="Cost of one unit.")
    currency: Series[str] = pa.Field(str_matches=r"^[A-Z]{3}\Z", description="ISO currency.")

    @pa.check("list_price", "unit_cost", description="finite")
    def finite_money(cls, amount: Series[float]) -> Series[bool]:
        return np.isfinite(amount)

    @pa.dataframe_check(description="at least one row")
    def not_empty(cls, df: pd.DataFrame) -> bool:
        return len(df) > 0

    @pa.dataframe_check(description="unit cost is below list price")
    def cost_below_price(cls, df: pd.DataFrame) -> Series[bool]:
        return df["unit_cost"] < df["list_price"]


class WeeklySales(_Contract):
    """Weekly sales per product for the history window, gaps filled with zero units."""

    product_id: Series[str] = pa.Field(description="Product key.")
    category: Series[str] = pa.Field(description="Product category.")
    week: Series[pd.Timestamp] = pa.Field(description="Monday starting the week.")
    units: Series[float] = pa.Field(ge=0, description="Units sold in the week.")
    revenue: Series[float] = pa.Field(ge=0, description="Revenue in the week.")
    avg_price: Series[float] = pa.Field(gt=0, description="Average price paid.")
    promo_share: Series[float] = pa.Field(ge=0, le=1, description="Share of days on promotion.")
    list_price: Series[float] = pa.Field(gt=0, description="Current list price.")
    unit_cost: Series[float] = pa.Field(gt=0, description="Cost of one unit.")

    class Config:
        unique = ["product_id", "week"]

    @pa.check("week", description="weeks start on Monday")
    def monday(cls, week: Series[pd.Timestamp]) -> Series[bool]:
        return week.dt.dayofweek == 0


class Underperformers(_Contract):
    """Products selling below their own seasonal baseline and below their category peers."""

    product_id: Series[str] = pa.Field(unique=True, description="Product key.")
    category: Series[str] = pa.Field(description="Product category.")
    recent_units: Series[float] = pa.Field(ge=0, description="Mean weekly units, recent window.")
    baseline_units: Series[float] = pa.Field(ge=0, description="Mean weekly units, baseline.")
    own_ratio: Series[float] = pa.Field(ge=0, description="Recent vs own baseline, deseasoned.")
    peer_ratio: Series[float] = pa.Field(ge=0, description="Own ratio vs category median.")
    score: Series[float] = pa.Field(description="Higher means more underperforming.")


class Forecasts(_Contract):
    """Forecast units per underperforming product and future week, at the current price."""

    product_id: Series[str] = pa.Field(description="Product key.")
    category: Series[str] = pa.Field(description="Product category.")
    week: Series[pd.Timestamp] = pa.Field(description="Monday starting the forecast week.")
    step: Series[int] = pa.Field(ge=1, description="Weeks ahead.")
    forecast_units: Series[float] = pa.Field(ge=0, description="Expected units.")
    elasticity: Series[float] = pa.Field(lt=0, ge=-10, description="Price elasticity of demand.")
    current_price: Series[float] = pa.Field(gt=0, description="Current list price.")
    unit_cost: Series[float] = pa.Field(gt=0, description="Cost of one unit.")

    class Config:
        unique = ["product_id", "week"]


class ForecastAccuracy(_Contract):
    """Backtest of the model against a seasonal-naive baseline, per product."""

    product_id: Series[str] = pa.Field(unique=True, description="Product key.")
    model_mae: Series[float] = pa.Field(ge=0, description="Model mean absolute error.")
    naive_mae: Series[float] = pa.Field(ge=0, description="Seasonal-naive mean absolute error.")
    model_wape: Series[float] = pa.Field(ge=0, nullable=True, description="Model WAPE.")
    naive_wape: Series[float] = pa.Field(ge=0, nullable=True, description="Naive WAPE.")
    n_weeks: Series[int] = pa.Field(ge=1, description="Weeks held out.")


class Actuals(_Contract):
    """Weekly sales per product in the weeks of the priced month the raw sales hold
    (none for a month still to come): what the forecast is checked against, never learnt."""

    product_id: Series[str] = pa.Field(description="Product key.")
    week: Series[pd.Timestamp] = pa.Field(description="Monday starting a week of the period.")
    units: Series[float] = pa.Field(ge=0, description="Units sold in the week.")
    revenue: Series[float] = pa.Field(ge=0, description="Revenue in the week.")

    class Config:
        unique = ["product_id", "week"]

    @pa.check("week", description="weeks start on Monday")
    def monday(cls, week: Series[pd.Timestamp]) -> Series[bool]:
        return week.dt.dayofweek == 0


class ForecastVsActual(_Contract):
    """A past period's forecast at the current price against the units actually sold, per
    product and week of the period; no rows when the raw sales do not hold all its weeks."""

    product_id: Series[str] = pa.Field(description="Product key.")
    category: Series[str] = pa.Field(description="Product category.")
    week: Series[pd.Timestamp] = pa.Field(description="Monday starting a week of the period.")
    forecast_units: Series[float] = pa.Field(ge=0, description="Units forecast, current price.")
    actual_units: Series[float] = pa.Field(ge=0, description="Units actually sold.")
    current_price: Series[float] = pa.Field(gt=0, description="Price the forecast assumes.")
    actual_price: Series[float] = pa.Field(
        gt=0, nullable=True, description="Average price paid; empty when nothing sold."
    )

    class Config:
        unique = ["product_id", "week"]


class Plan(_Contract):
    """One row per candidate product: the chosen price and its expected effect."""

    product_id: Series[str] = pa.Field(unique=True, description="Product key.")
    category: Series[str] = pa.Field(description="Product category.")
    current_price: Series[float] = pa.Field(gt=0, description="Price today.")
    new_price: Series[float] = pa.Field(gt=0, description="Recommended price.")
    price_change: Series[float] = pa.Field(gt=-1, le=1, description="Fractional change.")
    unit_cost: Series[float] = pa.Field(gt=0, description="Cost of one unit.")
    baseline_units: Series[float] = pa.Field(ge=0, description="Units over the horizon, no change.")
    expected_units: Series[float] = pa.Field(ge=0, description="Units at the new price.")
    baseline_revenue: Series[float] = pa.Field(ge=0, description="Revenue, no change.")
    expected_revenue: Series[float] = pa.Field(ge=0, description="Revenue at the new price.")
    baseline_margin: Series[float] = pa.Field(description="Gross margin, no change.")
    expected_margin: Series[float] = pa.Field(description="Gross margin at the new price.")
    markdown_cost: Series[float] = pa.Field(ge=0, description="Revenue given up to discounts.")
    changed: Series[bool] = pa.Field(description="Whether the price changes.")

    @pa.dataframe_check(description="changed is true exactly when the price moves")
    def changed_matches_price(cls, df: pd.DataFrame) -> Series[bool]:
        return df["changed"] == ((df["new_price"] - df["current_price"]).abs() > _TOLERANCE)


def plan_contract(constraints: Mapping[str, Any]) -> pa.DataFrameSchema:
    """The Plan contract plus the optimizer's business constraints, re-checked on the output."""
    max_discount = float(constraints["max_discount"])
    min_margin = float(constraints["min_margin"])
    budget = float(constraints["markdown_budget"])
    max_changes = int(constraints["max_changes"])

    def within_discount(df: pd.DataFrame) -> pd.Series:
        return df["price_change"] >= -max_discount - _TOLERANCE

    def keeps_margin(df: pd.DataFrame) -> pd.Series:
        margin = (df["new_price"] - df["unit_cost"]) / df["new_price"]
        return ~df["changed"] | (margin >= min_margin - _TOLERANCE)

    def within_budget(df: pd.DataFrame) -> bool:
        return bool(df["markdown_cost"].sum() <= budget * (1 + _TOLERANCE) + _TOLERANCE)

    def within_max_changes(df: pd.DataFrame) -> bool:
        return bool(df["changed"].sum() <= max_changes)

    schema = copy.deepcopy(Plan.to_schema())
    schema.checks = list(schema.checks) + [
        pa.Check(within_discount, name=f"discount at most {max_discount:.0%}"),
        pa.Check(keeps_margin, name=f"changed prices keep margin >= {min_margin:.0%}"),
        pa.Check(within_budget, name=f"total markdown within budget {budget:,.0f}"),
        pa.Check(within_max_changes, name=f"at most {max_changes} price changes"),
    ]
    return schema


class Export(_Contract):
    """Recommendations in the third-party format: stable column order, changed prices only."""

    plan_id: Series[str] = pa.Field(
        str_matches=r"^[0-9a-f]{32}$",
        description="Hash of the recommendations and their scope; their delivery's key.",
    )
    market: Series[str] = pa.Field(str_matches=r"^[A-Z]{2}\Z", description="Market code.")
    period: Series[str] = pa.Field(str_matches=r"^[0-9]{4}-[0-9]{2}\Z", description="Month.")
    product_id: Series[str] = pa.Field(unique=True, description="Product key.")
    product_name: Series[str] = pa.Field(description="Display name.")
    category: Series[str] = pa.Field(description="Product category.")
    currency: Series[str] = pa.Field(str_matches=r"^[A-Z]{3}\Z", description="ISO currency.")
    current_price: Series[float] = pa.Field(gt=0, description="Price today.")
    recommended_price: Series[float] = pa.Field(gt=0, description="Price to set.")
    change_pct: Series[float] = pa.Field(gt=-100, le=100, description="Change in percent.")
    expected_units: Series[float] = pa.Field(ge=0, description="Units over the horizon.")
    expected_revenue_change: Series[float] = pa.Field(description="Revenue delta.")
    expected_margin_change: Series[float] = pa.Field(description="Margin delta.")

    class Config:
        ordered = True  # the receiving system reads columns by position


CONTRACTS: dict[str, type[_Contract]] = {
    model.__name__: model
    for model in (
        RawSales,
        Catalog,
        WeeklySales,
        Underperformers,
        Forecasts,
        ForecastAccuracy,
        Actuals,
        ForecastVsActual,
        Plan,
        Export,
    )
}

# Build every contract's schema at import. The first build makes pandera resolve the
# annotations against each installed backend, importing dask.dataframe when the `scale`
# extra is there (most of a second). Paid here, it falls into a prestarted kernel's
# warm-up (`toolkit.dag.kernels`), in parallel with the launcher, instead of into the first
# step that checks a frame; later builds are cached by pandera.
for _model in CONTRACTS.values():
    _model.to_schema()
del _model
