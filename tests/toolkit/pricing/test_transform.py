"""load_transform's logic on a small sample."""

from __future__ import annotations

import pandas as pd
import pytest

from toolkit.data import io, schemas
from toolkit.pricing import demo_data, transform


@pytest.fixture(scope="module")
def sample():
    catalog = demo_data.make_catalog("DE", n_products=12)
    return catalog, demo_data.make_sales("DE", catalog)


def test_history_window_ends_with_the_last_complete_week_of_the_period():
    first, last = transform.history_window("2026-11", 156)
    assert last == pd.Timestamp("2026-11-23")  # Mon 23 .. Sun 29 November
    assert first == last - pd.Timedelta(weeks=155)
    _, last_march = transform.history_window("2026-03", 10)
    assert last_march == pd.Timestamp("2026-03-23")  # the week of Sun 29 March


def test_weekly_sales_are_complete_and_hold_their_contract(sample):
    catalog, sales = sample
    weekly = transform.weekly_sales(sales, catalog, "2026-11", 104, 10)
    io.validate(weekly, schemas.WeeklySales)
    assert weekly.groupby("product_id").size().eq(104).all()
    one = weekly[weekly["product_id"] == catalog["product_id"][0]].iloc[-1]
    days = sales[
        (sales["product_id"] == one["product_id"])
        & sales["date"].between(one["week"], one["week"] + pd.Timedelta(days=6))
    ]
    assert one["units"] == days["units"].sum()
    assert one["revenue"] == pytest.approx((days["units"] * days["unit_price"]).sum())


def test_category_filter_and_sparse_products(sample):
    catalog, sales = sample
    category = catalog["category"].iloc[0]
    weekly = transform.weekly_sales(sales, catalog, "2026-11", 104, 10, category=category)
    assert set(weekly["category"]) == {category}
    sparse = sales[~((sales["product_id"] == "P0001") & (sales["date"] > "2025-01-01"))]
    kept = transform.weekly_sales(sparse, catalog, "2026-11", 52, 20)
    assert "P0001" not in set(kept["product_id"])


def test_missing_history_is_a_clear_error(sample):
    catalog, sales = sample
    with pytest.raises(ValueError, match=r"raw sales end before period 2027-03"):
        transform.weekly_sales(sales, catalog, "2027-03", 52, 1)
    with pytest.raises(ValueError, match="no products in category 'garden'"):
        transform.weekly_sales(sales, catalog, "2026-11", 52, 1, category="garden")
