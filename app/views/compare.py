"""Compare: two or more runs side by side, their setting differences and KPI deltas."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st
import ui
from logic import browse, page_data

from toolkit.runs import store as runs

ctx = ui.guard()  # sign-in and exposure checks, on every page
tz = ui.timezone()

st.title("Compare runs")
st.caption(
    "Pick two or more runs. The first one is the baseline: every other run's KPIs are "
    "shown as a change against it, and only the settings that differ are listed."
)

records = runs.list_runs()
if len(records) < 2:
    st.info("Comparing needs at least two runs.", icon=":material/info:")
    st.stop()
ids = [r.id for r in records]
labels = {r.id: page_data.run_label(r, tz) for r in records}

if "compare.runs" not in st.session_state:
    requested = [i for i in (st.query_params.get("runs") or "").split(",") if i in ids]
    if len(requested) < 2:
        succeeded = [r.id for r in records if r.status == "succeeded"]
        requested = list(reversed((succeeded or ids)[:2]))
    st.session_state["compare.runs"] = requested
chosen = st.multiselect(
    "Runs to compare (the first is the baseline)",
    ids,
    key="compare.runs",
    format_func=lambda i: labels.get(i, i),
    max_selections=6,
)
st.query_params["runs"] = ",".join(chosen)
if len(chosen) < 2:
    st.info("Pick at least two runs.", icon=":material/info:")
    st.stop()

loaded = [r for r in (ui.load_run(i) for i in chosen) if r is not None]
kpis = []
for record in loaded:
    url = page_data.output_url(record, "optimize", "kpis")
    try:
        kpis.append(ui.json_output(ctx.root, url) if url else None)
    except (FileNotFoundError, browse.OutsideRoot, ValueError, OSError):
        kpis.append(None)

# --- Headline per run --------------------------------------------------------------------
HEADLINE = (
    ("revenue_change_pct", "Revenue change", "{:+.1f}%", "{:+.1f} pts"),
    ("margin_change_pct", "Margin change", "{:+.1f}%", "{:+.1f} pts"),
    ("volume_change_pct", "Volume change", "{:+.1f}%", "{:+.1f} pts"),
    ("n_changes", "Price changes", "{:,.0f}", "{:+,.0f}"),
)
base = kpis[0] or {}
for index, (record, kpi) in enumerate(zip(loaded, kpis, strict=True)):
    with st.container(border=True):
        cols = st.columns([2.2, 1, 1, 1, 1], vertical_alignment="center")
        with cols[0]:
            ui.status_badge(record.status)
            st.text(
                f"{'Baseline' if index == 0 else 'Compared'}: {record.market} "
                f"{record.period} · {record.category or 'all'}"
            )
            st.caption(ui.md(record.id))
        if kpi is None:
            cols[1].caption("No KPIs: the run did not finish its plan.")
            continue
        for (key, label, fmt, delta_fmt), column in zip(HEADLINE, cols[1:], strict=True):
            value = kpi.get(key)
            delta, arrow = None, "auto"
            if index and base.get(key) is not None and value is not None:
                change = value - base[key]
                delta = delta_fmt.format(change) if abs(change) >= 0.05 else "same"
                arrow = "auto" if abs(change) >= 0.05 else "off"
            column.metric(
                label,
                fmt.format(value) if value is not None else "–",
                delta,
                delta_color="normal" if arrow == "auto" else "off",
                delta_arrow=arrow,
            )

# --- KPI deltas --------------------------------------------------------------------------
st.subheader("KPIs and their change against the baseline", divider="gray", anchor=False)
kpi_table = page_data.compare_kpis(loaded, kpis)
if kpi_table.empty:
    st.info("None of these runs has KPIs yet.", icon=":material/info:")
else:
    st.dataframe(
        kpi_table,
        hide_index=True,
        width="stretch",
        column_config={
            c: st.column_config.NumberColumn(format="%+,.2f" if c.startswith("Δ") else "%,.2f")
            for c in kpi_table.columns
            if c != "KPI"
        },
    )
    pct = [
        {"run": page_data.short_name(r), "KPI": label, "change": (k or {}).get(key)}
        for r, k in zip(loaded, kpis, strict=True)
        for key, label in (
            ("revenue_change_pct", "Revenue %"),
            ("margin_change_pct", "Margin %"),
            ("volume_change_pct", "Volume %"),
        )
        if (k or {}).get(key) is not None
    ]
    if pct:
        order = [page_data.short_name(r) for r in loaded]
        chart = (
            alt.Chart(pd.DataFrame(pct))
            .mark_bar()
            .encode(
                x=alt.X(
                    "KPI:N",
                    title=None,
                    sort=["Revenue %", "Margin %", "Volume %"],
                    axis=alt.Axis(labelAngle=0),
                ),
                xOffset=alt.XOffset("run:N", sort=order),
                y=alt.Y("change:Q", title="Expected change (%)"),
                color=alt.Color("run:N", title="Run", sort=order, legend=alt.Legend(orient="top")),
                tooltip=["run", "KPI", alt.Tooltip("change:Q", format="+.1f")],
            )
            .properties(height=300)
        )
        st.altair_chart(chart, width="stretch")

# --- Parameter differences ---------------------------------------------------------------
st.subheader("Settings that differ", divider="gray", anchor=False)
params = page_data.compare_params(loaded)
if params.empty:
    st.success("These runs used the same settings.", icon=":material/check_circle:")
else:
    st.caption("Only settings whose value differs between the baseline and another run.")
    st.dataframe(params, hide_index=True, width="stretch")
