"""load_transform's logic on a small sample."""

from __future__ import annotations

import pandas as pd
import pytest

from toolkit.data import io, schemas
from toolkit.pricing import demo_data, periods, transform


@pytest.fixture(scope="module")
def sample():
    catalog = demo_data.make_catalog("DE", n_products=12)
    return catalog, demo_data.make_sales("DE", catalog)


def test_the_history_ends_with_the_last_complete_week_before_the_period(sample):
    catalog, sales = sample  # through Sunday 29 November 2026
    december = transform.weekly_sales(sales, catalog, "2026-12", 104, 10)
    assert december["week"].max() == pd.Timestamp("2026-11-23")
    assert december["week"].nunique() == 104
    november = transform.weekly_sales(sales, catalog, "2026-11", 104, 10)
    assert november["week"].max() == pd.Timestamp("2026-10-26")  # Sun 1 Nov is October's
    january = transform.weekly_sales(sales, catalog, "2027-01", 104, 10)
    assert january.equals(december)  # the five weeks between are forecast, not learnt


def test_a_past_period_gives_the_same_history_whatever_came_after_it(sample):
    catalog, sales = sample
    before_june = sales[sales["date"] < pd.Timestamp("2026-06-01")]  # June starts on Monday
    with_later = transform.weekly_sales(sales, catalog, "2026-06", 104, 10)
    assert with_later.equals(transform.weekly_sales(before_june, catalog, "2026-06", 104, 10))


def test_incomplete_history_names_what_is_missing(sample):
    catalog, sales = sample
    late_start = sales[sales["date"] >= pd.Timestamp("2025-01-06")]
    with pytest.raises(periods.HistoryError) as err:
        transform.weekly_sales(late_start, catalog, "2026-12", 156, 10)
    assert str(err.value) == (
        "raw sales start on 2025-01-06, after the 156-week history of period 2026-12 "
        "(2023-12-04..2026-11-29, load_transform.history_weeks) begins: 57 weeks have no sales"
    )
    hole = sales[~sales["date"].between(pd.Timestamp("2026-03-02"), pd.Timestamp("2026-03-15"))]
    with pytest.raises(periods.HistoryError, match=r"no rows in 2 weeks of the 104-week "):
        transform.weekly_sales(hole, catalog, "2026-12", 104, 10)
    with pytest.raises(periods.HistoryError, match="weeks of 2026-03-02, 2026-03-09$"):
        transform.weekly_sales(hole, catalog, "2026-12", 104, 10)


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
    with pytest.raises(periods.HistoryError, match=r"13 weeks before period 2027-03 starts"):
        transform.weekly_sales(sales, catalog, "2027-03", 52, 1)
    assert not transform.weekly_sales(sales, catalog, "2027-03", 52, 1, max_gap_weeks=13).empty
    with pytest.raises(ValueError, match="no products in category 'garden'"):
        transform.weekly_sales(sales, catalog, "2026-11", 52, 1, category="garden")


def test_no_sales_and_no_product_left_are_clear_errors(sample):
    catalog, sales = sample
    with pytest.raises(ValueError, match="^raw sales have no rows: nothing to aggregate$"):
        transform.weekly_sales(sales.iloc[0:0], catalog, "2026-11", 104, 10)
    with pytest.raises(ValueError, match=r"no product sold in at least 200 of the 104 weeks"):
        transform.weekly_sales(sales, catalog, "2026-11", 104, 200)
