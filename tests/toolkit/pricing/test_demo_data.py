"""Tests for toolkit.pricing.demo_data: determinism, schema, invariants, planted structure."""

import numpy as np
import pandas as pd
import pytest

from toolkit.pricing.demo_data import (
    CATEGORIES,
    END,
    MARKETS,
    START,
    declining_products,
    generate,
    make_catalog,
    make_sales,
    sales_end,
    write,
)

SMALL = 60  # enough products for every property that doesn't need the full catalog


@pytest.fixture(scope="module")
def us_small():
    catalog = make_catalog("US", n_products=SMALL)
    return catalog, make_sales("US", catalog)


@pytest.fixture(scope="module")
def de_full():
    catalog = make_catalog("DE")
    return catalog, make_sales("DE", catalog)


def test_markets_and_categories():
    expected = {"US": "USD", "DE": "EUR", "NO": "NOK", "FR": "EUR", "GB": "GBP", "SE": "SEK"}
    assert expected.items() <= MARKETS.items()
    assert len(CATEGORIES) >= 6
    assert all(c == c.lower() for c in CATEGORIES)
    assert pd.Timestamp(START).day_name() == "Monday"
    assert pd.Timestamp(END).day_name() == "Sunday"
    assert pd.Timestamp(END).strftime("%Y-%m") == "2026-11"


def test_catalog_columns_and_dtypes(us_small):
    catalog, _ = us_small
    assert list(catalog.columns) == [
        "product_id",
        "product_name",
        "category",
        "list_price",
        "unit_cost",
        "currency",
    ]
    assert catalog.dtypes.astype(str).to_dict() == {
        "product_id": "str",
        "product_name": "str",
        "category": "str",
        "list_price": "float64",
        "unit_cost": "float64",
        "currency": "str",
    }


def test_sales_columns_and_dtypes(us_small):
    _, sales = us_small
    assert list(sales.columns) == ["date", "product_id", "units", "unit_price", "promo"]
    assert sales.dtypes.astype(str).to_dict() == {
        "date": "datetime64[ns]",
        "product_id": "str",
        "units": "int64",
        "unit_price": "float64",
        "promo": "bool",
    }


def test_catalog_invariants(de_full):
    catalog, _ = de_full
    assert len(catalog) == 240
    assert catalog["product_id"].is_unique
    assert catalog["product_id"].iloc[0] == "P0001"
    assert catalog["product_id"].str.fullmatch(r"P\d{4}").all()
    assert catalog["product_name"].str.len().gt(0).all()
    assert set(catalog["category"]) <= set(CATEGORIES)
    assert catalog["category"].value_counts().min() >= 20
    assert catalog["category"].nunique() >= 6
    assert (catalog["list_price"] > 0).all()
    assert (catalog["unit_cost"] > 0).all()
    assert (catalog["unit_cost"] < catalog["list_price"]).all()
    cost_share = catalog["unit_cost"] / catalog["list_price"]
    assert cost_share.between(0.39, 0.76).all()
    assert (catalog["currency"] == "EUR").all()


def test_sales_invariants(us_small):
    catalog, sales = us_small
    n_days = (pd.Timestamp(END) - pd.Timestamp(START)).days + 1
    assert n_days >= 3 * 365
    assert len(sales) == len(catalog) * n_days
    assert sales["date"].min() == pd.Timestamp(START)
    assert sales["date"].max() == pd.Timestamp(END)
    assert (sales["date"] == sales["date"].dt.normalize()).all()
    assert not sales.duplicated(["date", "product_id"]).any()
    assert set(sales["product_id"]) == set(catalog["product_id"])
    assert (sales["units"] >= 0).all()
    assert (sales["unit_price"] > 0).all()
    assert 0.02 < sales["promo"].mean() < 0.25


def test_base_demand_levels_are_not_tiny(us_small):
    _, sales = us_small
    daily = sales.groupby("product_id")["units"].mean()
    assert daily.min() > 0.5
    assert daily.median() > 5
    assert daily.max() < 300


def test_list_price_is_the_current_off_promo_price(us_small):
    catalog, sales = us_small
    last_day = sales[(sales["date"] == pd.Timestamp(END)) & ~sales["promo"]]
    list_price = catalog.set_index("product_id")["list_price"]
    assert len(last_day) > 0
    np.testing.assert_array_equal(
        last_day["unit_price"].to_numpy(), list_price[last_day["product_id"]].to_numpy()
    )


def test_each_product_has_one_to_three_list_price_changes(us_small):
    _, sales = us_small
    off_promo_prices = sales[~sales["promo"]].groupby("product_id")["unit_price"].nunique()
    assert off_promo_prices.between(2, 4).all()


def test_deterministic_for_same_seed():
    first = generate(["GB"], n_products=SMALL, seed=7)["GB"]
    second = generate(["GB"], n_products=SMALL, seed=7)["GB"]
    pd.testing.assert_frame_equal(first[0], second[0])
    pd.testing.assert_frame_equal(first[1], second[1])


def test_different_seed_gives_different_data(us_small):
    catalog, sales = us_small
    other_catalog = make_catalog("US", n_products=SMALL, seed=43)
    other_sales = make_sales("US", other_catalog, seed=43)
    assert not catalog.equals(other_catalog)
    assert not sales["units"].equals(other_sales["units"])
    assert declining_products("US", SMALL, seed=42) != declining_products("US", SMALL, seed=43)


def test_market_independent_of_other_markets(us_small):
    together = generate(["FR", "US"], n_products=SMALL)
    alone = generate(["US"], n_products=SMALL)
    assert list(together) == ["FR", "US"]
    for left, right in zip(together["US"], alone["US"], strict=True):
        pd.testing.assert_frame_equal(left, right)
    pd.testing.assert_frame_equal(together["US"][1], us_small[1])


def test_markets_share_products_but_differ():
    data = generate(["US", "NO"], n_products=SMALL)
    us_catalog, us_sales = data["US"]
    no_catalog, no_sales = data["NO"]
    for column in ["product_id", "product_name", "category"]:
        pd.testing.assert_series_equal(us_catalog[column], no_catalog[column])
    assert (no_catalog["currency"] == "NOK").all()
    # NOK prices are about ten times USD prices.
    price_ratio = (no_catalog["list_price"] / us_catalog["list_price"]).median()
    assert 7 < price_ratio < 14
    assert not us_sales["units"].equals(no_sales["units"])


def test_generate_defaults_to_all_markets():
    result = generate(n_products=6)
    assert list(result) == list(MARKETS)
    assert list(generate("SE", n_products=6)) == ["SE"]
    for market, (catalog, sales) in result.items():
        assert (catalog["currency"] == MARKETS[market]).all()
        assert set(sales["product_id"]) == set(catalog["product_id"])


def test_unknown_market_is_rejected():
    with pytest.raises(ValueError, match="unknown market"):
        make_catalog("XX")
    with pytest.raises(ValueError, match="unknown market"):
        declining_products("XX")


def test_declining_products_is_a_stable_minority(de_full):
    catalog, _ = de_full
    decliners = declining_products("DE")
    assert decliners == declining_products("DE", n_products=240, seed=42)
    assert decliners <= set(catalog["product_id"])
    assert 15 <= len(decliners) <= 40
    assert len(declining_products("DE", n_products=SMALL)) >= 3
    assert declining_products("DE") != declining_products("US")


def test_declining_products_really_decline(de_full):
    _, sales = de_full
    decliners = declining_products("DE")
    end = pd.Timestamp(END)
    recent = sales["date"] > end - pd.Timedelta(weeks=8)
    # The same weeks one year (52 weeks) earlier, so seasonality and weekdays cancel.
    year_before = (sales["date"] > end - pd.Timedelta(weeks=60)) & (
        sales["date"] <= end - pd.Timedelta(weeks=52)
    )
    ratio = (
        sales[recent].groupby("product_id")["units"].mean()
        / sales[year_before].groupby("product_id")["units"].mean()
    )
    is_decliner = ratio.index.isin(list(decliners))
    assert ratio[is_decliner].mean() < 0.8
    assert ratio[~is_decliner].mean() > 0.9
    assert ratio[is_decliner].mean() < ratio[~is_decliner].mean() - 0.2


def test_promotions_raise_units(us_small):
    _, sales = us_small
    by_promo = sales.groupby(["product_id", "promo"])["units"].mean().unstack().dropna()
    lift = by_promo[True] / by_promo[False]
    assert len(lift) >= SMALL // 2
    assert lift.mean() > 1.2
    assert (lift > 1).mean() > 0.8


def test_toys_peak_in_december(de_full):
    catalog, sales = de_full
    toys = catalog.loc[catalog["category"] == "toys", "product_id"]
    toy_sales = sales[sales["product_id"].isin(toys)]
    # Mean daily units x 7 = weekly units, comparable across months of any length.
    weekly_by_month = toy_sales.groupby(toy_sales["date"].dt.month)["units"].mean() * 7
    assert weekly_by_month[12] > 1.5 * weekly_by_month[6]


def test_apparel_peaks_in_spring(de_full):
    catalog, sales = de_full
    apparel = catalog.loc[catalog["category"] == "apparel", "product_id"]
    apparel_sales = sales[sales["product_id"].isin(apparel)]
    by_month = apparel_sales.groupby(apparel_sales["date"].dt.month)["units"].mean()
    assert by_month[4] > 1.2 * by_month[10]


def test_weekly_pattern(us_small):
    _, sales = us_small
    by_weekday = sales.groupby(sales["date"].dt.day_of_week)["units"].mean()
    assert by_weekday[5] > by_weekday[1]  # Saturday busier than Tuesday


def test_shorter_window_and_subset_catalog(us_small):
    catalog, _ = us_small
    subset = catalog.iloc[:5]
    sales = make_sales("US", subset, start="2025-01-01", end="2025-03-31")
    assert len(sales) == 5 * 90
    assert sales["date"].min() == pd.Timestamp("2025-01-01")
    assert list(sales["product_id"].unique()) == list(subset["product_id"])


@pytest.mark.parametrize(
    ("as_of", "end"),
    [
        ("2026-12-04", "2026-11-29"),  # a Friday: the week in progress is not written
        ("2026-12-06", "2026-11-29"),  # a Sunday is not over yet
        ("2026-12-07", "2026-12-06"),  # a Monday: last week is complete
    ],
)
def test_sales_end_with_the_last_complete_week_before_the_day(as_of, end):
    assert sales_end(as_of) == pd.Timestamp(end)


def test_written_sales_plan_this_month_and_next(local_root):
    from toolkit.data import io, schemas
    from toolkit.pricing import transform

    written = write(["SE"], n_products=4, root=local_root, as_of="2026-12-04")["SE"]
    assert written["last_day"] == pd.Timestamp("2026-11-29")
    sales = io.read(written["sales"], schemas.RawSales)
    catalog = io.read(written["catalog"], schemas.Catalog)
    assert (sales["date"].min(), sales["date"].max()) == (pd.Timestamp(START), pd.Timestamp(END))
    for period in ("2026-12", "2027-01"):
        weekly = transform.weekly_sales(sales, catalog, period, 156, 10)
        assert weekly["week"].max() == pd.Timestamp("2026-11-23")
    later = generate(["SE"], n_products=4, as_of="2027-03-10")["SE"][1]
    assert later["date"].max() == pd.Timestamp("2027-03-07")
