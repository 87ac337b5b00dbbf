"""Compare: two or more runs side by side, their setting differences and KPI changes.

Money is only ever subtracted within one currency: runs of different markets are compared
by their percent effects."""

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
    param = st.query_params.get("runs")
    if param is None:
        requested = page_data.default_comparison(records)
    else:
        requested = [i for i in param.split(",") if i]
        missing = [i for i in requested if i not in ids]
        if missing:  # say which; never compare other runs in their place
            for run_id in missing:
                ui.find_run(run_id, ctx)
            requested = [i for i in requested if i in ids]
    st.session_state["compare.runs"] = requested[:6]
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

loaded = [r for r in (ui.find_run(i, ctx) for i in chosen) if r is not None]
if len(loaded) < 2:
    st.stop()
kpis, currencies = [], []
for record in loaded:
    url = page_data.output_url(record, "optimize", "kpis")
    try:
        kpis.append(ui.json_output(ctx.root, url) if url else None)
    except (FileNotFoundError, browse.OutsideRoot, ValueError, OSError):
        kpis.append(None)
    catalog = ui.optional_table(ctx.root, record, "load_transform", "catalog", "Catalog")
    currencies.append(page_data.currency_of(catalog))
names = page_data.run_names(loaded, tz, currencies)
same_money = len(set(currencies)) == 1 and currencies[0] != ""
if not same_money:
    shown = ", ".join(
        f"{r.market}: {c or 'unknown'}" for r, c in zip(loaded, currencies, strict=True)
    )
    st.warning(
        ui.md(
            f"These runs count money in different currencies ({shown}), so amounts are shown "
            "each in its own currency and never subtracted; compare their percent effects."
        ),
        icon=":material/currency_exchange:",
    )

# --- Headline per run --------------------------------------------------------------------
HEADLINE = (
    ("revenue_change_pct", "Revenue change", "{:+.1f}%", "{:+.1f} pts"),
    ("margin_change_pct", "Margin change", "{:+.1f}%", "{:+.1f} pts"),
    ("volume_change_pct", "Volume change", "{:+.1f}%", "{:+.1f} pts"),
    ("n_changes", "Price changes", "{:,.0f}", "{:+,.0f}"),
)
base = kpis[0] or {}
for index, (record, kpi, name, currency) in enumerate(
    zip(loaded, kpis, names, currencies, strict=True)
):
    with st.container(border=True):
        cols = st.columns([2.2, 1, 1, 1, 1], vertical_alignment="center")
        with cols[0]:
            ui.status_badge(record.status)
            st.text(f"{'Baseline' if index == 0 else 'Compared'}: {name}")
            st.caption(ui.md(f"Prices in {currency or 'an unknown currency'} · run {record.id}"))
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

# --- Percent effects, one scale per KPI ----------------------------------------------------
pct = [
    {"Run": name, "KPI": label, "Change (%)": (k or {}).get(key)}
    for name, k in zip(names, kpis, strict=True)
    for key, label in (
        ("revenue_change_pct", "Revenue"),
        ("margin_change_pct", "Margin"),
        ("volume_change_pct", "Volume"),
    )
    if (k or {}).get(key) is not None
]
if pct:
    st.subheader("Expected effect of each plan, in percent", divider="gray", anchor=False)
    st.caption(
        "Each measure has its own scale, so a 1% margin effect stays readable next to a "
        "25% volume effect."
    )
    frame = pd.DataFrame(pct)
    for label, column in zip(("Revenue", "Margin", "Volume"), st.columns(3), strict=True):
        part = frame[frame["KPI"] == label]
        if part.empty:
            continue
        chart = (
            alt.Chart(part, title=f"{label} change (%)")
            .mark_bar()
            .encode(
                y=alt.Y("Run:N", title=None, sort=names, axis=alt.Axis(labelLimit=160)),
                x=alt.X("Change (%):Q", title=None),
                color=alt.Color("Run:N", sort=names, legend=None),
                tooltip=["Run", alt.Tooltip("Change (%):Q", format="+.2f")],
            )
            .properties(height=60 + 36 * len(part))
        )
        column.altair_chart(chart, width="stretch")

# --- KPI table -----------------------------------------------------------------------------
st.subheader("KPIs and their change against the baseline", divider="gray", anchor=False)
kpi_table = page_data.compare_kpis(loaded, kpis, currencies, names)
if kpi_table.empty:
    st.info("None of these runs has KPIs yet.", icon=":material/info:")
else:
    st.dataframe(kpi_table, hide_index=True, width="stretch")

# --- Parameter differences ---------------------------------------------------------------
st.subheader("Settings that differ", divider="gray", anchor=False)
params = page_data.compare_params(loaded, names, currencies)
if params.empty:
    st.success("These runs used the same settings.", icon=":material/check_circle:")
else:
    st.caption("Only settings whose value differs between the baseline and another run.")
    st.dataframe(params, hide_index=True, width="stretch")
