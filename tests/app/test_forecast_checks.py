"""The Results page answers "was the forecast right?" for past months, and over time."""

from __future__ import annotations

import json

from apphelpers import check_forecast, make_run, shown, texts


def open_run(app, run_id):
    app.run()
    app.query_params.update({"run": run_id})
    app.switch_page("views/run_detail.py").run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def chart_specs(at) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.tabs[0].get("vega_lite_chart")]


def test_a_past_month_shows_its_forecast_against_actual_and_the_error_per_period(app, local_root):
    check_forecast(local_root, make_run(local_root, "sep"), "2026-09", sold=0.8)
    check_forecast(local_root, make_run(local_root, "oct"), "2026-10", sold=1.25)
    at = open_run(app, "oct")
    headers = texts(at, "subheader")
    assert "Forecast against actual" in headers and "Forecast error per period · US" in headers
    cards = {shown(m.label): m.value for m in at.metric}
    # Forecast 1, sold 1.25: a fifth of the units missed, 20% too low.
    assert cards["Units missed (WAPE)"] == "20.0%" and cards["Bias"] == "-20.0%"
    specs = chart_specs(at)
    assert len(specs) == 5  # price changes, impact, forecast, forecast vs actual, per period
    encodings = [spec.get("encoding", {}) for spec in specs]
    assert encodings[3]["y"]["title"] == "Units per week, all forecast products"
    assert encodings[4]["x"]["title"] == "Month" and encodings[4]["y"]["title"] == "Error (%)"


def test_a_month_without_its_sales_says_so_and_still_shows_the_markets_past(app, local_root):
    check_forecast(local_root, make_run(local_root, "sep"), "2026-09", sold=0.8)
    check_forecast(local_root, make_run(local_root, "dec"), "2026-12", sold=None)
    at = open_run(app, "dec")
    infos = texts(at, "info")
    assert any(
        text.startswith("no actuals for period 2026-12: the raw sales hold 0") for text in infos
    )
    assert not any("WAPE" in shown(m.label) for m in at.metric)  # no numbers made up
    assert len(chart_specs(at)) == 4  # the market's error per period, from September


def test_runs_from_before_the_check_show_no_check(app, local_root):
    make_run(local_root, "old")
    at = open_run(app, "old")
    assert "This run did not check its forecast." in texts(at, "info")
    assert any(
        text.startswith("No run of this market has been checked") for text in texts(at, "info")
    )
