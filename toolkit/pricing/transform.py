"""Clean daily sales and aggregate them to complete weekly series per product."""

from __future__ import annotations

import pandas as pd

__all__ = ["history_window", "weekly_sales"]


def history_window(period: str, history_weeks: int) -> tuple[pd.Timestamp, pd.Timestamp]:
    """First and last Monday of the ``history_weeks`` complete weeks that end in ``period``.

    Args:
        period: month as ``YYYY-MM``; the last week is the last one ending inside it.
        history_weeks: number of weeks in the window.
    """
    month_end = pd.Period(period, freq="M").end_time.normalize()
    # The week of the month's last Sunday is the last complete one.
    last_monday = month_end - pd.Timedelta(days=(month_end.dayofweek + 1) % 7 + 6)
    first_monday = last_monday - pd.Timedelta(weeks=history_weeks - 1)
    return first_monday, last_monday


def weekly_sales(
    sales: pd.DataFrame,
    catalog: pd.DataFrame,
    period: str,
    history_weeks: int,
    min_weeks_with_sales: int,
    category: str | None = None,
) -> pd.DataFrame:
    """Weekly units, revenue, average price and promotion share per product.

    Missing weeks are filled with zero units at list price so every product has the whole
    window; products sold in fewer than ``min_weeks_with_sales`` weeks are dropped.

    Raises:
        ValueError: when the raw data does not cover the window, naming both.
    """
    first, last = history_window(period, history_weeks)
    products = catalog if category is None else catalog[catalog["category"] == category]
    if products.empty:
        raise ValueError(f"no products in category {category!r}")
    days = sales[
        (sales["date"] >= first)
        & (sales["date"] < last + pd.Timedelta(days=7))
        & sales["product_id"].isin(products["product_id"])
    ].copy()
    if days.empty or days["date"].max() < last:
        have = (
            f"{sales['date'].min():%Y-%m-%d}..{sales['date'].max():%Y-%m-%d}"
            if len(sales)
            else "none"
        )
        raise ValueError(
            f"raw sales end before period {period}: need data through "
            f"{last + pd.Timedelta(days=6):%Y-%m-%d}, have {have}"
        )
    days["week"] = days["date"] - pd.to_timedelta(days["date"].dt.dayofweek, unit="D")
    days["revenue"] = days["units"] * days["unit_price"]
    weekly = days.groupby(["product_id", "week"], as_index=False).agg(
        units=("units", "sum"),
        revenue=("revenue", "sum"),
        mean_price=("unit_price", "mean"),
        promo_share=("promo", "mean"),
    )
    grid = pd.MultiIndex.from_product(
        [products["product_id"], pd.date_range(first, last, freq="7D")],
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
