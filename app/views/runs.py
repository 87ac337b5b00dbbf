"""Runs: every run with its status; follow one live, cancel it, open or repeat it."""

from __future__ import annotations

import pandas as pd
import streamlit as st
import ui
from logic import page_data

from toolkit.runs import store as runs

ctx = ui.guard()  # sign-in and exposure checks, on every page
tz = ui.timezone()

st.title("Runs")
st.caption(
    "Every run of the price recommendations, newest first. Click a row to follow its "
    "progress, cancel it, open its results or launch it again with the same settings."
)


def currencies_of(records) -> dict[str, str]:
    return {m: ui.market_currency(ctx.root, m) for m in {r.market for r in records if r.market}}


records = runs.list_runs()  # never cached: other people and replicas start runs too
currencies = currencies_of(records)
if not records:
    st.info("No runs yet. Start one on the Launch page.", icon=":material/info:")
    st.page_link(ui.PAGES["launch"], label="Launch a run", icon=":material/rocket_launch:")
    st.stop()


# --- The list: filters and table, refreshed while runs are going (durations tick) ------
@st.fragment(run_every=ui.POLL_SECONDS if any(map(page_data.is_active, records)) else None)
def run_list() -> None:
    refresh = st.session_state.get("runs.drawn")  # this list alone, not the whole page
    listed = runs.list_runs() if refresh else records  # runs start and end meanwhile
    rows = page_data.run_rows(listed, tz, {**currencies, **currencies_of(listed)})
    with st.container(border=True):
        cols = st.columns([1, 1, 1, 1, 2])
        statuses = cols[0].multiselect(
            "Status",
            sorted({r["status"] for r in rows}),
            format_func=page_data.status_text,
            key="runs.status",
        )
        markets = cols[1].multiselect(
            "Market", sorted({r["Market"] for r in rows if r["Market"]}), key="runs.market"
        )
        periods = cols[2].multiselect(
            "Month",
            sorted({r["Period"] for r in rows if r["Period"]}, reverse=True),
            key="runs.period",
        )
        launchers = cols[3].multiselect(
            "Launched by",
            sorted({r["Launched by"] for r in rows if r["Launched by"]}),
            key="runs.launcher",
        )
        text = cols[4].text_input(
            "Search", placeholder="name, run id, category, ...", key="runs.search"
        )
    shown = page_data.filter_rows(rows, statuses, markets, periods, launchers, text)
    active = sum(1 for r in rows if r["status"] in runs.ACTIVE)
    st.caption(f"{len(shown)} of {len(rows)} runs shown · {active} queued or running")

    frame = pd.DataFrame(shown, columns=list(rows[0]))
    event = st.dataframe(
        ui.styled_status(frame),
        hide_index=True,
        column_order=[c for c in frame.columns if c != "status"],
        width="stretch",
        on_select="rerun",
        selection_mode="single-row",
        key="runs.table",
        column_config={
            "Steps reused": st.column_config.NumberColumn(
                "Reused", help="Steps whose results came from the cache of an earlier run."
            ),
            "Run": st.column_config.TextColumn("Run id", width="large"),
            "Name": st.column_config.TextColumn(
                "Name", help="The name given at launch, if any (its note is shown below)."
            ),
            "What changed": st.column_config.TextColumn(
                "What changed",
                width="medium",
                help="Settings that differ from the defaults, those changed at launch first.",
            ),
        },
    )
    candidates = [r for r in shown if r["status"] in runs.ACTIVE] or shown or rows
    st.session_state["runs.default"] = candidates[0]["Run"]
    # A selection is a row index: apply it only when it changes, since newer runs shift rows.
    selected = list(event.selection.rows) if event is not None else []
    if selected != st.session_state.get("runs.applied_selection"):
        st.session_state["runs.applied_selection"] = selected
        if selected and selected[0] < len(shown):
            st.query_params["run"] = shown[selected[0]]["Run"]
            if refresh:
                st.rerun()  # show the chosen run below (a click reruns only this list)


st.session_state["runs.drawn"] = False
run_list()
st.session_state["runs.drawn"] = True

# --- The selected run --------------------------------------------------------------------
run_id = st.query_params.get("run") or st.session_state["runs.default"]
record = ui.find_run(run_id, ctx)  # a link to a missing run says so, never shows another
if record is None:
    st.stop()

with st.container(border=True):
    category = record.category or "all categories"
    title = f"{record.market} {record.period} · {category}"
    st.subheader(
        ui.md(f"{record.name} ({title})" if record.name else title),
        divider="gray",
        anchor=False,
    )
    ui.run_header(record, currencies.get(record.market, ""))
    ui.progress_panel(run_id, ctx, key="runs")
    cols = st.columns(3)
    cols[0].page_link(
        ui.PAGES["detail"],
        label="Open the results",
        icon=":material/insights:",
        query_params={"run": run_id},
        disabled=record.status != "succeeded" and not record.steps,
    )
    if cols[1].button(
        "Re-run with these parameters",
        icon=":material/replay:",
        disabled=not ctx.decision.allowed,
        help="Opens the Launch form filled with this run's market, month and settings.",
        key="runs.rerun",
    ):
        st.switch_page(ui.PAGES["launch"], query_params={"from_run": run_id})
    # Only runs of the same market and month: their money is in the same currency.
    others = page_data.same_scope(records, record)
    if others:
        cols[2].page_link(
            ui.PAGES["compare"],
            label="Compare with the previous run",
            icon=":material/compare_arrows:",
            help="The newest earlier run of the same market and month: same currency.",
            query_params={"runs": f"{others[0].id},{run_id}"},
        )
    else:
        cols[2].caption("No other finished run of this market and month to compare with.")
