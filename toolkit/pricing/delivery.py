"""Recommendations in the receiving system's format, named by their content.

The format_output step writes them; the run delivers them afterwards
(``toolkit.runs.deliveries``). A step's outputs are shared by every run that reuses them
from the cache, so nothing here names a run: each row carries the plan id, a hash of the
recommendations and their scope, which is also the idempotency key of their delivery.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["EXPORT_COLUMNS", "delivery_manifest", "plan_id", "to_export"]

EXPORT_COLUMNS = [
    "plan_id",
    "market",
    "period",
    "product_id",
    "product_name",
    "category",
    "currency",
    "current_price",
    "recommended_price",
    "change_pct",
    "expected_units",
    "expected_revenue_change",
    "expected_margin_change",
]


def plan_id(records: list[dict[str, Any]], market: str, period: str, category: str | None) -> str:
    """Hash of the recommendations (without their plan id) and the scope they are for.

    The scope counts too: two scopes with no price changes have equal (empty) records but
    are different plans.
    """
    content = {
        "scope": [market, period, category or "all"],
        "records": [{k: v for k, v in r.items() if k != "plan_id"} for r in records],
    }
    blob = json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def to_export(
    plan: pd.DataFrame,
    catalog: pd.DataFrame,
    market: str,
    period: str,
    category: str | None = None,
) -> pd.DataFrame:
    """Changed prices only, in the receiving system's column order, biggest impact first.

    ``category`` is the run's scope (None: all categories), part of the plan id.
    """
    import pandas as pd  # here: the run loop imports this module's siblings without pandas

    changed = plan[plan["changed"]].merge(
        catalog[["product_id", "product_name", "currency"]], on="product_id", how="left"
    )
    export = pd.DataFrame(
        {
            "plan_id": "",
            "market": market,
            "period": period,
            "product_id": changed["product_id"],
            "product_name": changed["product_name"],
            "category": changed["category"],
            "currency": changed["currency"],
            "current_price": changed["current_price"].round(2),
            "recommended_price": changed["new_price"].round(2),
            "change_pct": (changed["price_change"] * 100).round(1),
            "expected_units": changed["expected_units"].round(1),
            "expected_revenue_change": (
                changed["expected_revenue"] - changed["baseline_revenue"]
            ).round(2),
            "expected_margin_change": (
                changed["expected_margin"] - changed["baseline_margin"]
            ).round(2),
        },
        columns=EXPORT_COLUMNS,
    ).reset_index(drop=True)
    # The id of exactly what is written: the records as JSON reads them back.
    records = json.loads(export.to_json(orient="records"))
    export["plan_id"] = plan_id(records, market, period, category)
    return export


def delivery_manifest(
    export: pd.DataFrame, market: str, period: str, category: str | None
) -> dict[str, Any]:
    """What the run delivers (``delivery.json``): the plan id, its scope and its size.

    The id is kept here as well as in the rows, since a plan without changes has no rows.
    """
    (plan,) = export["plan_id"].unique().tolist() or [plan_id([], market, period, category)]
    return {
        "plan_id": plan,
        "market": market,
        "period": period,
        "category": category,
        "recommendations": len(export),
    }
