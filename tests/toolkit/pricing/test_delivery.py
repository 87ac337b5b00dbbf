"""The export format: stable columns, changed prices only, named by content, not by run."""

from __future__ import annotations

import pandas as pd

from toolkit.data import io, schemas
from toolkit.pricing import delivery


def plan_frame(new_price=9.0):
    return pd.DataFrame(
        {
            "product_id": ["P1", "P2"],
            "category": ["toys", "home"],
            "current_price": [10.0, 20.0],
            "new_price": [new_price, 20.0],
            "price_change": [new_price / 10.0 - 1, 0.0],
            "unit_cost": [5.0, 8.0],
            "baseline_units": [10.0, 5.0],
            "expected_units": [12.0, 5.0],
            "baseline_revenue": [100.0, 100.0],
            "expected_revenue": [108.0, 100.0],
            "baseline_margin": [50.0, 60.0],
            "expected_margin": [48.0, 60.0],
            "markdown_cost": [12.0, 0.0],
            "changed": [new_price != 10.0, False],
        }
    )


CATALOG = pd.DataFrame(
    {"product_id": ["P1", "P2"], "product_name": ["A", "B"], "currency": ["USD", "USD"]}
)


def test_export_has_stable_columns_and_only_changes():
    export = delivery.to_export(plan_frame(), CATALOG, "US", "2026-11")
    assert list(export.columns) == delivery.EXPORT_COLUMNS
    assert export["product_id"].tolist() == ["P1"]
    assert export.loc[0, "change_pct"] == -10.0
    assert export.loc[0, "expected_margin_change"] == -2.0
    io.validate(export, schemas.Export)


def test_the_plan_id_names_the_content_and_scope_never_a_run():
    first = delivery.to_export(plan_frame(), CATALOG, "US", "2026-11")
    again = delivery.to_export(plan_frame(), CATALOG, "US", "2026-11")
    assert first["plan_id"].tolist() == again["plan_id"].tolist()  # any run, same plan
    assert "run_id" not in first.columns
    other_price = delivery.to_export(plan_frame(new_price=9.5), CATALOG, "US", "2026-11")
    other_scope = delivery.to_export(plan_frame(), CATALOG, "US", "2026-11", "toys")
    ids = {frame.loc[0, "plan_id"] for frame in (first, other_price, other_scope)}
    assert len(ids) == 3


def test_the_manifest_names_the_plan_even_without_changes():
    export = delivery.to_export(plan_frame(), CATALOG, "US", "2026-11")
    manifest = delivery.delivery_manifest(export, "US", "2026-11", None)
    assert manifest == {
        "plan_id": export.loc[0, "plan_id"],
        "market": "US",
        "period": "2026-11",
        "category": None,
        "recommendations": 1,
    }
    unchanged = delivery.to_export(plan_frame(new_price=10.0), CATALOG, "US", "2026-11")
    assert unchanged.empty
    ids = {
        delivery.delivery_manifest(unchanged, market, "2026-11", None)["plan_id"]
        for market in ("US", "DE")
    }
    assert len(ids) == 2  # no changes in two markets: two plans, two deliveries
