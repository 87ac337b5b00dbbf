"""A past period's forecast against its actual sales: the weeks, the errors, no fake numbers."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from toolkit.data import io, schemas
from toolkit.pricing import actuals, demo_data, periods


def daily(first: str, last: str, products=("P0001", "P0002"), units=1, price=10.0):
    days = pd.date_range(first, last, freq="D")
    return pd.DataFrame(
        [
            {"date": day, "product_id": pid, "units": units, "unit_price": price, "promo": False}
            for pid in products
            for day in days
        ]
    )


def forecast_rows(rows):
    """Forecasts rows from (product, week, units), at a current price of 10."""
    return pd.DataFrame(
        [
            {
                "product_id": pid,
                "category": "toys",
                "week": pd.Timestamp(week),
                "step": step,
                "forecast_units": units,
                "elasticity": -1.5,
                "current_price": 10.0,
                "unit_cost": 5.0,
            }
            for step, (pid, week, units) in enumerate(rows, start=1)
        ]
    )


def held_weeks(sales, period):
    return list(actuals.period_actuals(sales, ["P0001"], period)["week"].dt.strftime("%Y-%m-%d"))


def test_a_month_starting_on_sunday_leaves_its_first_day_to_the_month_before():
    # Sun 1 November 2026 is in October's last week; November's weeks end on Sun 29.
    sales = daily("2026-10-26", "2026-11-29")
    assert held_weeks(sales, "2026-11") == ["2026-11-02", "2026-11-09", "2026-11-16", "2026-11-23"]
    assert held_weeks(sales, "2026-10")[-1] == "2026-10-26"  # through Sun 1 November


def test_a_month_starting_on_monday_and_the_53rd_week():
    june = daily("2026-06-01", "2026-06-28")
    assert held_weeks(june, "2026-06") == ["2026-06-01", "2026-06-08", "2026-06-15", "2026-06-22"]
    # December 2026 ends with ISO week 53, Mon 28 December to Sun 3 January 2027.
    through_new_year = daily("2026-11-30", "2027-01-03")
    assert held_weeks(through_new_year, "2026-12")[-1] == "2026-12-28"
    assert held_weeks(daily("2026-11-30", "2027-01-02"), "2026-12")[-1] == "2026-12-21"
    assert held_weeks(through_new_year, "2027-01") == []


def test_weeks_without_any_sale_in_the_market_are_not_held():
    sales = daily("2026-11-02", "2026-11-29")
    hole = sales[~sales["date"].between("2026-11-09", "2026-11-15")]
    assert held_weeks(hole, "2026-11") == ["2026-11-02", "2026-11-16", "2026-11-23"]
    # One product sold, the other not: the week is held and the other sold zero.
    one = sales[(sales["product_id"] == "P0001") | (sales["date"] < "2026-11-23")]
    table = actuals.period_actuals(one, ["P0001", "P0002"], "2026-11")
    last = table[table["week"] == pd.Timestamp("2026-11-23")].set_index("product_id")
    assert last["units"].to_dict() == {"P0001": 7.0, "P0002": 0.0}
    io.validate(table, schemas.Actuals)


def test_actuals_read_only_the_products_asked_and_sum_revenue():
    sales = daily("2026-11-02", "2026-11-29", products=("P0001", "P0002", "P0003"), units=2)
    table = actuals.period_actuals(sales, ["P0003"], "2026-11")
    assert set(table["product_id"]) == {"P0003"}
    assert table["units"].tolist() == [14.0] * 4 and table["revenue"].tolist() == [140.0] * 4


def test_errors_are_on_each_products_units_over_the_period():
    rows = pd.DataFrame(
        {
            "product_id": ["A", "A", "B", "B", "C", "C"],
            "forecast_units": [10.0, 10.0, 30.0, 30.0, 5.0, 0.0],
            "actual_units": [15.0, 15.0, 20.0, 20.0, 0.0, 0.0],
        }
    )
    errors = actuals.error_summary(rows)
    # Per product: A 20 vs 30, B 60 vs 40, C 5 vs 0 (sold nothing: out of MAPE).
    assert errors["products"] == 3 and errors["products_sold"] == 2
    assert errors["forecast_units"] == 85.0 and errors["actual_units"] == 70.0
    assert errors["wape"] == pytest.approx((10 + 20 + 5) / 70)
    assert errors["mape"] == pytest.approx((10 / 30 + 20 / 40) / 2)
    assert errors["bias"] == pytest.approx(15 / 70)


def test_nothing_sold_gives_no_ratios_rather_than_made_up_ones():
    rows = pd.DataFrame({"product_id": ["A"], "forecast_units": [3.0], "actual_units": [0.0]})
    errors = actuals.error_summary(rows)
    assert errors["wape"] is None and errors["mape"] is None and errors["bias"] is None
    empty = actuals.error_summary(rows.iloc[:0])
    assert empty["products"] == 0 and empty["wape"] is None


def test_forecast_against_actual_for_a_held_period():
    weeks = periods.weeks_of("2026-11")
    forecasts = forecast_rows(
        [("P0001", week, 8.0) for week in [weeks[0] - pd.Timedelta(weeks=1), *weeks]]
    )
    sales = daily("2026-10-26", "2026-11-29", products=("P0001",), units=1, price=9.0)
    held = actuals.period_actuals(sales, ["P0001"], "2026-11")
    rows, summary = actuals.forecast_vs_actual(forecasts, held, "2026-11")
    io.validate(rows, schemas.ForecastVsActual)
    assert list(rows["week"]) == list(weeks)  # the gap week before the period is left out
    assert rows["actual_units"].tolist() == [7.0] * 4
    assert rows["actual_price"].tolist() == [9.0] * 4 and rows["current_price"].eq(10).all()
    assert summary["status"] == "checked" and summary["forecast_basis"].startswith("current_price")
    assert summary["wape"] == pytest.approx(4 / 28) and summary["bias"] == pytest.approx(4 / 28)
    assert len(summary["weeks"]) == len(summary["weeks_with_actuals"]) == 4


def test_a_period_the_data_does_not_hold_says_so_without_numbers():
    weeks = periods.weeks_of("2026-11")
    forecasts = forecast_rows([("P0001", week, 8.0) for week in weeks])
    partial = daily("2026-11-02", "2026-11-18", products=("P0001",))  # into week 3
    held = actuals.period_actuals(partial, ["P0001"], "2026-11")
    rows, summary = actuals.forecast_vs_actual(forecasts, held, "2026-11")
    assert rows.empty and list(rows.columns) == list(schemas.ForecastVsActual.to_schema().columns)
    io.validate(rows, schemas.ForecastVsActual)
    assert summary["status"] == "no_actuals"
    assert summary["message"] == (
        "no actuals for period 2026-11: the raw sales hold 2 of its 4 weeks "
        "(2026-11-02..2026-11-29), through 2026-11-15; the check needs all of them"
    )
    assert not any(key in summary for key in ("wape", "mape", "bias", "actual_units"))
    none = actuals.period_actuals(daily("2026-10-01", "2026-10-25"), ["P0001"], "2026-11")
    _, summary = actuals.forecast_vs_actual(forecasts, none, "2026-11")
    assert summary["message"].endswith("hold 0 of its 4 weeks (2026-11-02..2026-11-29)")


def test_demo_data_checks_its_own_past_month():
    catalog = demo_data.make_catalog("US", n_products=3)
    sales = demo_data.make_sales("US", catalog)  # through Sunday 29 November 2026
    table = actuals.period_actuals(sales, catalog["product_id"], "2026-11")
    assert table["week"].nunique() == 4 and len(table) == 12
    io.validate(table, schemas.Actuals)
    assert not math.isnan(table["units"].sum())
