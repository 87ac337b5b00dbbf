"""Were the recommendations right? The forecast error of a market's runs, period by period.

Each run's ``check_forecast`` step compares its forecast for the priced month with the
units actually sold, when the data holds them (``toolkit.pricing.actuals``). Over time,
the latest succeeded run of each period that could be checked tells how far the model
was off, month after month: what a pricing team asks first about any model.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from toolkit.runs import reports, store
from toolkit.runs.record import RunRecord

__all__ = ["CHECK_STEP", "error_by_period", "forecast_check"]

CHECK_STEP = "check_forecast"
_ERRORS = ("wape", "mape", "bias", "products", "forecast_units", "actual_units")


def forecast_check(record: RunRecord) -> dict[str, Any] | None:
    """The run's forecast-against-actual summary, or None when it has none (the run did
    not get that far, or predates the step). Its ``status`` says whether it was checked."""
    return reports.step_json(record, CHECK_STEP, "summary")


def error_by_period(
    market: str, records: Iterable[RunRecord] | None = None, root: str | None = None
) -> list[dict[str, Any]]:
    """The forecast error per period of ``market``, from the latest succeeded run of each
    period (and category) whose actuals were there to check it.

    Args:
        market: The market code.
        records: Run records to choose from (default: every run under ``root``).
        root: Storage root, when ``records`` is not given.

    Returns:
        One dict per period and category, oldest period first: period, category (None:
        all), run_id, and the run's wape, mape, bias (None where undefined), products,
        forecast_units and actual_units. Periods without a checked run are left out.
    """
    if records is None:
        records = store.list_runs(root)
    newest_first = sorted(records, key=lambda r: r.created_at or "", reverse=True)
    found: dict[tuple[str, str | None], dict[str, Any]] = {}
    for record in newest_first:
        scope = (record.period, record.category)
        if record.market != market or record.status != "succeeded" or scope in found:
            continue
        check = forecast_check(record)
        if not check or check.get("status") != "checked":
            continue  # planned before the month's sales were in: an older run may be checked
        found[scope] = {
            "period": record.period,
            "category": record.category,
            "run_id": record.id,
            **{key: check.get(key) for key in _ERRORS},
        }
    return sorted(found.values(), key=lambda row: (row["period"], row["category"] or ""))
