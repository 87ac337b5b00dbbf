"""The forecast error of a market's runs, period by period, from their forecast checks."""

from __future__ import annotations

from toolkit.data import io, storage
from toolkit.runs import accuracy
from toolkit.runs.record import RunRecord


def checked_run(root, run_id, period, *, market="US", status="succeeded", wape=0.1, at="10"):
    """A run record whose check_forecast summary says ``wape`` (None: no actuals yet)."""
    url = storage.join(root, "cache", run_id, "summary.json")
    if wape is None:
        io.write_json({"period": period, "status": "no_actuals", "message": "none"}, url)
    else:
        summary = {"period": period, "status": "checked", "wape": wape, "mape": 0.2}
        io.write_json({**summary, "bias": -0.05, "products": 3}, url)
    step = {"status": "succeeded", "outputs": {"summary": url}}
    return RunRecord.model_validate(
        {
            "id": run_id,
            "status": status,
            "market": market,
            "period": period,
            "created_at": f"2026-12-01T{at}:00:00+00:00",
            "root": root,
            "steps": {accuracy.CHECK_STEP: step},
        }
    )


def test_the_latest_checked_run_of_each_period(local_root):
    records = [
        checked_run(local_root, "sep-old", "2026-09", wape=0.5, at="08"),
        checked_run(local_root, "sep-new", "2026-09", wape=0.2, at="09"),
        checked_run(local_root, "sep-failed", "2026-09", status="failed", wape=0.9, at="11"),
        checked_run(local_root, "oct-checked", "2026-10", wape=0.3, at="08"),
        checked_run(local_root, "oct-too-early", "2026-10", wape=None, at="12"),
        checked_run(local_root, "dec", "2026-12", wape=None),
        checked_run(local_root, "de", "2026-08", market="DE"),
    ]
    rows = accuracy.error_by_period("US", records)
    assert [(r["period"], r["run_id"], r["wape"]) for r in rows] == [
        ("2026-09", "sep-new", 0.2),
        ("2026-10", "oct-checked", 0.3),
    ]
    assert rows[0]["mape"] == 0.2 and rows[0]["bias"] == -0.05 and rows[0]["category"] is None


def test_runs_without_a_check_are_left_out(local_root):
    old = checked_run(local_root, "old", "2026-09").model_copy(update={"steps": {}})
    assert accuracy.forecast_check(old) is None
    assert accuracy.error_by_period("US", [old]) == []
