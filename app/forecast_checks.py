"""Was the forecast right? The Results page's sections on a past period's actual sales:
this run's forecast against them, and the market's forecast error period by period."""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import streamlit as st
import ui
from logic import browse, page_data

from toolkit.runs.record import RunRecord

_READ_ERRORS = (FileNotFoundError, browse.OutsideRoot, ValueError, OSError)


def forecast_against_actual(root: str, record: RunRecord) -> None:
    """This run's forecast for its month against what sold, or why there is none yet."""
    st.subheader("Forecast against actual", divider="gray", anchor=False)
    try:
        summary = page_data.forecast_check(root, record)
    except _READ_ERRORS as exc:
        st.warning(ui.md(f"Could not read the forecast check: {exc}"), icon=":material/warning:")
        return
    if summary is None:
        st.info("This run did not check its forecast.", icon=":material/info:")
        return
    if summary.get("status") != "checked":
        st.info(
            ui.md(
                f"{summary.get('message', 'No actual sales yet.')} Run it again once the "
                "month's sales are in to see how the forecast did."
            ),
            icon=":material/event_upcoming:",
        )
        return
    for card, column in zip(
        page_data.error_cards(summary), st.columns(len(page_data.ERROR_MEASURES)), strict=True
    ):
        with column.container(border=True):
            st.metric(card["label"], card["value"], help=card["help"])
    rows = ui.optional_table(root, record, "check_forecast", "data", "ForecastVsActual")
    if rows is None or rows.empty:
        return
    series = page_data.forecast_vs_actual_weeks(rows)
    domain = list(page_data.CHECK_SERIES)
    chart = (
        alt.Chart(series)
        .mark_line(point=True)
        .encode(
            x=alt.X("week:T", title="Week"),
            y=alt.Y("units:Q", title="Units per week, all forecast products"),
            color=alt.Color(
                "series:N",
                title=None,
                scale=alt.Scale(domain=domain, range=["#4c72b0", "#dd8452"]),
                legend=alt.Legend(orient="top"),
            ),
            tooltip=[
                alt.Tooltip("week:T", title="Week"),
                alt.Tooltip("series:N", title="Series"),
                alt.Tooltip("units:Q", title="Units", format=",.0f"),
            ],
        )
        .properties(height=280)
    )
    st.altair_chart(chart, width="stretch")
    st.caption(
        "Units sold in each week of the month against the forecast at today's price, the "
        "baseline the plan started from: the actual sales are at the prices and promotions "
        "the market really had."
    )


def error_per_period(root: str, records: Sequence[RunRecord], record: RunRecord) -> None:
    """The forecast error of the market's runs over time (same category as ``record``)."""
    errors = page_data.error_per_period(root, records, record.market, record.category)
    st.subheader(
        ui.md(f"Forecast error per period · {record.market}"), divider="gray", anchor=False
    )
    if errors.empty:
        st.info(
            "No run of this market has been checked against actual sales yet: a run for a "
            "month whose sales are in shows how its forecast did.",
            icon=":material/info:",
        )
        return
    measures = [label for label, _ in page_data.ERROR_MEASURES.values()]
    chart = (
        alt.Chart(errors)
        .mark_bar()
        .encode(
            x=alt.X("period:N", title="Month", axis=alt.Axis(labelAngle=0)),
            xOffset="measure:N",
            y=alt.Y("error:Q", title="Error (%)"),
            color=alt.Color(
                "measure:N",
                title=None,
                scale=alt.Scale(domain=[measures[0], measures[2]], range=["#4c72b0", "#c44e52"]),
                legend=alt.Legend(orient="top"),
            ),
            tooltip=[
                alt.Tooltip("period:N", title="Month"),
                alt.Tooltip("measure:N", title="Measure"),
                alt.Tooltip("error:Q", title="Error (%)", format="+.1f"),
                alt.Tooltip("run:N", title="Run"),
            ],
        )
        .properties(height=260)
    )
    st.altair_chart(chart, width="stretch")
    st.caption(
        "For each month, the latest finished run whose month's sales are in: the share of "
        "units its forecast missed, and its bias (above zero: forecast too high)."
    )
