"""Format recommendations for the third-party system and deliver them over HTTP."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import pandas as pd

__all__ = ["DeliveryError", "EXPORT_COLUMNS", "post_json", "to_export"]

EXPORT_COLUMNS = [
    "run_id",
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


class DeliveryError(RuntimeError):
    """Delivery gave up; the message names the endpoint, attempts and last error."""


def to_export(
    plan: pd.DataFrame, catalog: pd.DataFrame, run_id: str, market: str, period: str
) -> pd.DataFrame:
    """Changed prices only, in the receiving system's column order, biggest impact first."""
    changed = plan[plan["changed"]].merge(
        catalog[["product_id", "product_name", "currency"]], on="product_id", how="left"
    )
    export = pd.DataFrame(
        {
            "run_id": run_id,
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
    )
    return export.reset_index(drop=True)


def post_json(
    url: str,
    payload: object,
    idempotency_key: str,
    retries: int = 3,
    timeout: float = 10.0,
    backoff: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> dict:
    """POST ``payload`` as JSON with bounded retries; the receiver dedupes on the key.

    Retries connection errors, timeouts, 429 and 5xx; a 4xx other than 429 is final since
    sending the same body again cannot fix it.

    Returns:
        A record of the delivery: endpoint, status code, attempts.

    Raises:
        DeliveryError: after the last attempt, naming the endpoint and the last error.
    """
    body = json.dumps(payload, default=str).encode()
    last_error = ""
    for attempt in range(1, retries + 2):
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Idempotency-Key": idempotency_key},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                return {
                    "endpoint": url,
                    "status": response.status,
                    "attempts": attempt,
                    "idempotency_key": idempotency_key,
                }
        except urllib.error.HTTPError as exc:
            last_error = f"HTTP {exc.code} {exc.reason}"
            if exc.code != 429 and exc.code < 500:
                break
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            last_error = str(getattr(exc, "reason", exc))
        if attempt <= retries:
            sleep(backoff * 2 ** (attempt - 1))
    raise DeliveryError(f"delivery to {url} failed after {attempt} attempt(s): {last_error}")
