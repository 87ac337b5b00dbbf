"""Clean daily sales and aggregate them to complete weekly series per product."""

from __future__ import annotations

import pandas as pd

from toolkit.pricing import periods

__all__ = ["history", "weekly_sales"]


def weekly_sales(
    sales: pd.DataFrame,
    catalog: pd.DataFrame,
    period: str,
    history_weeks: int,
    min_weeks_with_sales: int,
    category: str | None = None,
    max_gap_weeks: int = 8,
) -> pd.DataFrame:
    """Weekly units, revenue, average price and promotion share per product.

    The weeks are the history of a run pricing ``period`` (``periods.timeline``): the
    ``history_weeks`` complete weeks before it, ending at most ``max_gap_weeks`` before
    it; later sales are never read. A product's weeks without sales are filled with zero
    units at list price so every product has the whole window; products sold in fewer
    than ``min_weeks_with_sales`` weeks are dropped.

    Raises:
        ValueError: when there are no sales, or no product has enough weeks with sales.
        periods.HistoryError: when the sales end too long before the period, or weeks of
            its history have no sales at all (naming them).
    """
    window = history(sales, period, history_weeks, max_gap_weeks)
    first, last = window.history[0], window.history[-1]
    products = catalog if category is None else catalog[catalog["category"] == category]
    if products.empty:
        raise ValueError(f"no products in category {category!r}")
    days = sales[
        (sales["date"] >= first)
        & (sales["date"] < last + pd.Timedelta(days=7))
        & sales["product_id"].isin(products["product_id"])
    ]
    # Sums depend on the order of their terms in the last bits: the same sales in another
    # row order (other files, another export) must give the same weeks, and the same plan.
    days = days.sort_values(["product_id", "date"], kind="stable", ignore_index=True)
    days["week"] = days["date"] - pd.to_timedelta(days["date"].dt.dayofweek, unit="D")
    days["revenue"] = days["units"] * days["unit_price"]
    weekly = days.groupby(["product_id", "week"], as_index=False).agg(
        units=("units", "sum"),
        revenue=("revenue", "sum"),
        mean_price=("unit_price", "mean"),
        promo_share=("promo", "mean"),
    )
    grid = pd.MultiIndex.from_product(
        [products["product_id"], window.history],
        names=["product_id", "week"],
    ).to_frame(index=False)
    weekly = grid.merge(weekly, on=["product_id", "week"], how="left").merge(
        products[["product_id", "category", "list_price", "unit_cost"]], on="product_id"
    )
    weekly["units"] = weekly["units"].fillna(0.0).astype(float)
    weekly["revenue"] = weekly["revenue"].fillna(0.0).astype(float)
    weekly["promo_share"] = weekly["promo_share"].fillna(0.0).astype(float)
    # Average price paid; a week without sales had the shelf price, else the list price.
    paid = weekly["revenue"] / weekly["units"].where(weekly["units"] > 0)
    weekly["avg_price"] = paid.fillna(weekly["mean_price"]).fillna(weekly["list_price"])
    sold_weeks = weekly[weekly["units"] > 0].groupby("product_id").size()
    keep = sold_weeks[sold_weeks >= min_weeks_with_sales].index
    if keep.empty:  # an empty table would fail later steps with nothing to explain it
        raise ValueError(
            f"no product sold in at least {min_weeks_with_sales} of the {history_weeks} "
            "weeks (load_transform.min_weeks_with_sales)"
        )
    weekly = weekly[weekly["product_id"].isin(keep)]
    columns = [
        "product_id",
        "category",
        "week",
        "units",
        "revenue",
        "avg_price",
        "promo_share",
        "list_price",
        "unit_cost",
    ]
    return weekly[columns].sort_values(["product_id", "week"]).reset_index(drop=True)


def history(
    sales: pd.DataFrame, period: str, history_weeks: int, max_gap_weeks: int
) -> periods.Timeline:
    """The weeks a run for ``period`` learns from, checked against the sales it has.

    Raises:
        ValueError: there are no sales.
        periods.HistoryError: the sales end too long before the period, or weeks of the
            history have no sales at all (naming them).
    """
    if sales.empty:  # min()/max() of no dates is NaT, which explains nothing
        raise ValueError("raw sales have no rows: nothing to aggregate")
    window = periods.timeline(period, sales["date"].max(), history_weeks, max_gap_weeks)
    _check_every_week_has_sales(sales, window)
    return window


def _check_every_week_has_sales(sales: pd.DataFrame, window: periods.Timeline) -> None:
    # A history week without a single sale in the whole market is missing data, not a
    # quiet week: filled with zeros it would read as a collapse in demand.
    first, last = window.history[0], window.history[-1]
    days = pd.DatetimeIndex(sales["date"].unique())
    days = days[(days >= first) & (days < last + pd.Timedelta(days=7))]
    missing = window.history.difference(days - pd.to_timedelta(days.dayofweek, unit="D"))
    if missing.empty:
        return
    where = f"the {len(window.history)}-week history of period {window.period} ({first:%Y-%m-%d}.."
    where += f"{last + pd.Timedelta(days=6):%Y-%m-%d}, load_transform.history_weeks)"
    start = sales["date"].min()
    if start > first:
        raise periods.HistoryError(
            f"raw sales start on {start:%Y-%m-%d}, after {where} begins: "
            f"{len(missing)} weeks have no sales"
        )
    shown = ", ".join(f"{week:%Y-%m-%d}" for week in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    raise periods.HistoryError(
        f"raw sales have no rows in {len(missing)} weeks of {where}: weeks of {shown}{more}"
    )
