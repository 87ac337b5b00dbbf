"""Each contract rejects a broken frame with a readable, bounded report."""

from __future__ import annotations

import pandas as pd
import pytest

from toolkit.data import io, schemas
from toolkit.pricing import demo_data


@pytest.fixture(scope="module")
def good():
    catalog = demo_data.make_catalog("US", n_products=20)
    sales = demo_data.make_sales("US", catalog, start="2026-01-05", end="2026-03-01")
    return catalog, sales


def failures(df, contract):
    with pytest.raises(io.ContractError) as err:
        io.validate(df, contract)
    report = err.value.report
    return {(f["column"], f["check"]): f for f in report.failures}, str(err.value)


def test_good_demo_data_passes(good):
    catalog, sales = good
    io.validate(catalog, schemas.Catalog)
    io.validate(sales, schemas.RawSales)


def test_raw_sales_reports_every_problem_at_once(good):
    _, sales = good
    broken = sales.copy()
    broken["units"] = broken["units"].astype(object)
    broken.loc[3, "units"] = "twelve"
    broken.loc[5, "unit_price"] = -1.0
    broken = pd.concat([broken, broken.iloc[[0]]])  # duplicate key
    broken["extra"] = 1
    found, message = failures(broken, schemas.RawSales)
    columns = {column for column, _ in found}
    assert {"units", "unit_price", "extra"} <= columns
    assert any("unique" in check or "duplicate" in check for _, check in found)
    assert "'twelve'" in message and "-1.0" in message
    assert len(message) < 4000  # a report, not the frame


def test_missing_column_and_nan(good):
    catalog, _ = good
    broken = catalog.drop(columns=["currency"]).copy()
    broken.loc[0, "list_price"] = float("nan")
    found, message = failures(broken, schemas.Catalog)
    assert "currency" in message
    assert any(column == "list_price" for column, _ in found)


def test_business_rule_cost_below_price(good):
    catalog, _ = good
    broken = catalog.copy()
    broken.loc[0, "unit_cost"] = broken.loc[0, "list_price"] * 2
    found, message = failures(broken, schemas.Catalog)
    assert "unit cost is below list price" in message


def test_examples_are_bounded(good):
    _, sales = good
    broken = sales.copy()
    broken["unit_price"] = -1.0
    with pytest.raises(io.ContractError) as err:
        io.validate(broken, schemas.RawSales)
    (failure,) = [f for f in err.value.report.failures if f["column"] == "unit_price"]
    assert failure["count"] == len(sales)
    assert len(failure["examples"]) == io.MAX_EXAMPLES


def plan_frame(**overrides):
    row = {
        "product_id": "P0001",
        "category": "toys",
        "current_price": 10.0,
        "new_price": 8.0,
        "price_change": -0.2,
        "unit_cost": 5.0,
        "baseline_units": 100.0,
        "expected_units": 150.0,
        "baseline_revenue": 1000.0,
        "expected_revenue": 1200.0,
        "baseline_margin": 500.0,
        "expected_margin": 450.0,
        "markdown_cost": 300.0,
        "changed": True,
    }
    row.update(overrides)
    return pd.DataFrame([row])


CONSTRAINTS = {"max_discount": 0.25, "min_margin": 0.15, "markdown_budget": 1000, "max_changes": 5}


def test_plan_contract_rechecks_optimizer_constraints():
    io.validate(plan_frame(), schemas.plan_contract(CONSTRAINTS))
    _, message = failures(
        plan_frame(price_change=-0.3, new_price=7.0), schemas.plan_contract(CONSTRAINTS)
    )
    assert "discount at most 25%" in message
    _, message = failures(plan_frame(markdown_cost=5000.0), schemas.plan_contract(CONSTRAINTS))
    assert "within budget" in message
    _, message = failures(
        plan_frame(new_price=5.5, price_change=-0.45),
        schemas.plan_contract({**CONSTRAINTS, "max_discount": 0.5}),
    )
    assert "keep margin" in message
    _, message = failures(plan_frame(), schemas.plan_contract({**CONSTRAINTS, "max_changes": 0}))
    assert "at most 0 price changes" in message


def test_plan_changed_flag_must_match_price():
    _, message = failures(plan_frame(changed=False), schemas.Plan)
    assert "changed is true exactly when the price moves" in message


def test_export_column_order_is_enforced():
    from toolkit.pricing.delivery import EXPORT_COLUMNS

    row = {c: 1.0 for c in EXPORT_COLUMNS}
    row.update(
        plan_id="0" * 32,
        market="US",
        period="2026-11",
        product_id="P1",
        product_name="x",
        category="toys",
        currency="USD",
    )
    frame = pd.DataFrame([row])
    io.validate(frame, schemas.Export)
    _, message = failures(frame[list(reversed(EXPORT_COLUMNS))], schemas.Export)
    assert "column_in_dataframe" in message or "order" in message


@pytest.mark.parametrize("name", list(schemas.CONTRACTS))
def test_every_contract_column_is_described(name):
    schema = schemas.CONTRACTS[name].to_schema()
    for column_name, column in schema.columns.items():
        assert column.description, f"{name}.{column_name} has no description"
