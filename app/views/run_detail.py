"""Results of one run: KPIs, recommendations, charts, notebooks, settings and files."""

from __future__ import annotations

import altair as alt
import forecast_checks
import pandas as pd
import streamlit as st
import ui
from logic import browse, forms, page_data

from toolkit.runs import reports
from toolkit.runs import store as runs

ctx = ui.guard()  # sign-in and exposure checks, on every page
tz = ui.timezone()

st.title("Run results")

# --- Which run ---------------------------------------------------------------------------
records = runs.list_runs()
if not records:
    st.info("No runs yet. Start one on the Launch page.", icon=":material/info:")
    st.stop()
ids = [r.id for r in records]
labels = {r.id: page_data.run_label(r, tz) for r in records}
wanted = st.query_params.get("run")
if wanted is not None and wanted not in ids and ui.find_run(wanted, ctx) is None:
    st.stop()  # the link names a run that is not there: say so, show no other run
if wanted is None:
    wanted = next((r.id for r in records if r.status == "succeeded"), ids[0])
if wanted not in ids:  # a run newer than the listing
    ids.insert(0, wanted)
run_id = st.selectbox(
    "Run",
    ids,
    index=ids.index(wanted),
    format_func=lambda i: labels.get(i, i),
    help="Newest first. Open a run from the Runs page or pick one here.",
)
st.query_params["run"] = run_id
record = ui.find_run(run_id, ctx)
if record is None:
    st.stop()

status = record.status
category = record.category or "all categories"
title = f"{record.market} {record.period} · {category}"
st.subheader(
    ui.md(f"{record.name} ({title})" if record.name else title),
    divider="gray",
    anchor=False,
)
ui.status_line(record, tz)
ui.run_header(record, ui.market_currency(ctx.root, record.market))

if status in runs.ACTIVE:
    st.info(
        "This run is still going; its results appear here when it finishes.",
        icon=":material/hourglass_top:",
    )
    ui.progress_panel(run_id, ctx, key="detail")
    st.stop()

# --- Why it failed, or that it was cancelled ----------------------------------------------
if status != "succeeded":
    ui.outcome(record, ctx)
for failure in page_data.failures(record):
    if failure["status"] == "cancelled":
        continue  # the sentence above says so; a cancel is not an error
    report = failure["report"]
    if not report.empty:
        st.caption(
            "The data broke its contract. Each row is one broken rule: the column, the "
            "check, how many values failed and a few examples."
        )
        st.dataframe(report, hide_index=True, width="stretch")
    ui.operator_details(
        ctx,
        f"Step {failure['step']}: error and traceback",
        "\n\n".join(t for t in (failure["error"], failure["traceback"]) if t),
    )

# --- Data every tab uses -------------------------------------------------------------------
root = ctx.root
catalog = ui.optional_table(root, record, "load_transform", "catalog", "Catalog")
currency = page_data.currency_of(catalog)
kpi_url = page_data.output_url(record, "optimize", "kpis")
kpis = None
if kpi_url:
    try:
        kpis = ui.json_output(root, kpi_url)
    except (FileNotFoundError, browse.OutsideRoot, ValueError, OSError) as exc:
        st.warning(ui.md(f"Could not read the KPIs: {exc}"), icon=":material/warning:")
plan = ui.optional_table(root, record, "optimize", "data", "Plan")

names = [
    ":material/insights: Overview",
    ":material/table: Recommendations",
    ":material/tune: Settings",
]
if ctx.operator:  # the technical layer: notebooks, logs and files
    names += [":material/description: Steps & notebooks", ":material/folder_open: Files"]
tabs = st.tabs(names)
tab_overview, tab_recs, tab_settings = tabs[:3]
tab_operator = tabs[3:]

# --- Overview: pictures first --------------------------------------------------------------
with tab_overview:
    cards = page_data.kpi_cards(kpis, currency, record.config)
    if cards:
        # The plan's effects, then the two limits it works within, each against its limit.
        effects = [c for c in cards if c["limit"] is None]
        limits = [c for c in cards if c["limit"] is not None]
        for row in (effects, limits):
            for card, column in zip(row, st.columns(len(row)), strict=True):
                with column.container(border=True):
                    st.metric(ui.md(card["label"]), card["value"], card["delta"], help=card["help"])
                    if card["limit"]:
                        used = card["used"]
                        st.progress(min(max(used, 0.0), 1.0), text=ui.md(card["limit"]))
    elif status == "succeeded":
        st.info("This run has no plan KPIs.", icon=":material/info:")

    if plan is not None and not plan.empty:
        left, right = st.columns(2, gap="large")
        with left:
            st.subheader("Price changes", divider="gray", anchor=False)
            counts = page_data.price_change_counts(plan)
            if counts.empty:
                st.info("The plan changes no price.", icon=":material/info:")
            else:
                bars = (
                    alt.Chart(counts)
                    .mark_bar(color="#4c72b0", size=36)
                    .encode(
                        x=alt.X(
                            "Change (%):O", title="Price change (%)", axis=alt.Axis(labelAngle=0)
                        ),
                        y=alt.Y("Products:Q", title="Products"),
                        tooltip=["Change (%)", "Products"],
                    )
                    .properties(height=260)
                )
                st.altair_chart(bars, width="stretch")
                st.caption("How many products get each price change.")
        with right:
            st.subheader("Impact by category", divider="gray", anchor=False)
            impact = page_data.impact_by_category(plan)
            bars = (
                alt.Chart(impact)
                .mark_bar()
                .encode(
                    y=alt.Y("category:N", title=None),
                    x=alt.X("change:Q", title=f"Expected change ({currency or 'market currency'})"),
                    yOffset="measure:N",
                    color=alt.Color(
                        "measure:N",
                        title=None,
                        scale=alt.Scale(domain=["Revenue", "Margin"], range=["#4c72b0", "#55a868"]),
                        legend=alt.Legend(orient="top"),
                    ),
                    tooltip=[
                        alt.Tooltip("category:N", title="Category"),
                        alt.Tooltip("measure:N", title="Measure"),
                        alt.Tooltip("change:Q", title="Change", format="+,.0f"),
                    ],
                )
                .properties(height=260)
            )
            st.altair_chart(bars, width="stretch")
            st.caption("Expected revenue and margin change of the recommended prices.")

    weekly = ui.optional_table(root, record, "load_transform", "data", "WeeklySales")
    forecasts = ui.optional_table(root, record, "forecast", "data", "Forecasts")
    st.subheader("Sales history and forecast", divider="gray", anchor=False)
    if weekly is None or forecasts is None or forecasts.empty:
        st.info("No forecast in this run.", icon=":material/info:")
    else:
        options = page_data.forecast_products(forecasts, plan, catalog)
        option_names = dict(options)
        top = page_data.top_products(plan) if plan is not None else []
        ordered = top + [pid for pid, _ in options if pid not in top]
        product = st.selectbox(
            "Product",
            ordered,
            format_func=lambda pid: option_names.get(pid, pid),
            key="detail.product",
            help="Products the run forecast, those with the largest margin effect first.",
        )
        series = page_data.history_and_forecast(weekly, forecasts, product, plan=plan)
        domain = list(page_data.FORECAST_SERIES)
        chart = (
            alt.Chart(series)
            .mark_line(point=alt.OverlayMarkDef(size=12))
            .encode(
                x=alt.X("week:T", title="Week"),
                y=alt.Y("units:Q", title="Units per week"),
                color=alt.Color(
                    "series:N",
                    title=None,
                    scale=alt.Scale(domain=domain, range=["#4c72b0", "#dd8452", "#55a868"]),
                    legend=alt.Legend(orient="top", labelLimit=260),
                ),
                strokeDash=alt.StrokeDash(
                    "series:N",
                    scale=alt.Scale(domain=domain, range=[[1, 0], [5, 3], [2, 2]]),
                    legend=None,
                ),
                tooltip=[
                    alt.Tooltip("week:T", title="Week"),
                    alt.Tooltip("series:N", title="Series"),
                    alt.Tooltip("units:Q", title="Units", format=",.1f"),
                ],
            )
            .properties(height=320)
        )
        st.altair_chart(chart, width="stretch")
        st.caption(
            "Weekly units sold (last 78 weeks) and the forecast at today's price and, for a "
            "product whose price changes, at the recommended price."
        )

    # Was the forecast right? For a past month whose sales are in, and month by month.
    forecast_checks.forecast_against_actual(root, record)
    forecast_checks.error_per_period(root, records, record)

# --- Recommendations: tables and downloads --------------------------------------------------
with tab_recs:
    if plan is None:
        st.info("No recommendations: the optimize step did not finish.", icon=":material/info:")
    else:
        cols = st.columns([1, 2, 2])
        only_changes = cols[0].toggle("Only price changes", value=True, key="detail.only_changes")
        chosen = cols[1].multiselect(
            "Categories", sorted(plan["category"].astype(str).unique()), key="detail.categories"
        )
        needle = cols[2].text_input("Find a product", placeholder="id or name", key="detail.find")
        table = page_data.recommendations(plan, catalog, only_changes)
        if chosen:
            table = table[table["Category"].isin(chosen)]
        if needle.strip():
            mask = table["Product"].str.contains(needle.strip(), case=False, regex=False) | table[
                "Name"
            ].str.contains(needle.strip(), case=False, regex=False)
            table = table[mask]
        money = currency or "market currency"
        st.caption(
            ui.md(
                f"{len(table)} products. Click a column header to sort. Prices and amounts in "
                f"{money}; changes are over the forecast horizon."
            )
        )
        whole = st.column_config.NumberColumn(format="%+,.0f")
        st.dataframe(
            table,
            hide_index=True,
            width="stretch",
            key="detail.table",
            column_order=[c for c in table.columns if not (only_changes and c == "Changed")],
            column_config={
                "Current price": st.column_config.NumberColumn("Price", format="%.2f"),
                "Recommended price": st.column_config.NumberColumn(
                    "New price", format="%.2f", help="Recommended price"
                ),
                "Change %": st.column_config.NumberColumn("Change", format="%+.1f%%"),
                "Expected units": st.column_config.NumberColumn(
                    "Units", format="%,.0f", help="Expected units over the forecast horizon"
                ),
                "Revenue change": whole,
                "Margin change": whole,
                "Markdown cost": st.column_config.NumberColumn(format="%,.0f"),
            },
        )
        dl1, dl2, _ = st.columns([1, 1, 1])
        dl1.download_button(
            "Download this table (CSV)",
            table.to_csv(index=False).encode(),
            file_name=f"{run_id}-recommendations-view.csv",
            mime="text/csv",
            icon=":material/download:",
            on_click="ignore",
        )
        csv_url = page_data.output_url(record, "format_output", "csv")
        if csv_url:
            try:
                dl2.download_button(
                    "Download the delivery file (CSV)",
                    ui.file_bytes(root, csv_url),
                    file_name=f"{run_id}-recommendations.csv",
                    mime="text/csv",
                    icon=":material/download:",
                    on_click="ignore",
                    help="Exactly what the receiving system gets: changed prices only.",
                )
            except (FileNotFoundError, browse.OutsideRoot, ValueError, OSError):
                dl2.warning("The delivery file cannot be read; ask an operator.")

# --- Steps and their notebooks (operators) ------------------------------------------------------
for tab_steps in tab_operator[:1]:
    with tab_steps:
        st.caption(
            "Each step runs a notebook. Steps reused from an earlier run show that run's notebook."
        )
        ui.steps_table(record)
        with st.expander("Log", icon=":material/article:"):
            st.code(reports.run_log(record) or "nothing logged", language=None)
        for item in page_data.notebooks(record):
            title = item["step"].replace("_", " ").capitalize()
            state = page_data.STATUS_TEXT.get(item["status"], str(item["status"]))
            with st.expander(ui.md(f"{title} · {state}"), icon=":material/description:"):
                if item["partial"]:
                    st.caption("The step failed; this is the notebook as far as it ran.")
                try:
                    parts = ui.notebook_parts(root, item["url"])
                    data = ui.file_bytes(root, item["url"])
                except (FileNotFoundError, browse.OutsideRoot, ValueError, OSError) as exc:
                    st.warning(ui.md(f"Notebook unavailable: {exc}"))
                    continue
                st.download_button(
                    "Download the notebook (.ipynb)",
                    data,
                    file_name=f"{run_id}-{item['filename']}",
                    mime="application/x-ipynb+json",
                    icon=":material/download:",
                    key=f"nb-{item['step']}",
                    on_click="ignore",
                )
                for kind, content in parts:
                    if kind == "code":
                        st.code(content, language="python")
                    elif kind == "image":
                        st.image(content)
                    elif content.strip():
                        st.text(content)

# --- Settings ----------------------------------------------------------------------------
with tab_settings:
    st.caption("The settings this run used, and which layer each came from.")
    origins = record.origins
    config = record.config
    rows = []
    for key, origin in origins.items():
        node = config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        rows.append(
            {
                "Setting": forms.setting_label(key),
                "Value": forms.display_setting(key, node, currency),
                "Set by": forms.describe_origin(origin),
            }
        )
    if rows:
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    versions = record.versions
    if versions:
        with st.expander("Software versions"):
            st.dataframe(
                pd.DataFrame(
                    {"Package": list(versions), "Version": [str(v) for v in versions.values()]}
                ),
                hide_index=True,
            )

# --- Files (operators) -------------------------------------------------------------------
for tab_files in tab_operator[1:]:
    with tab_files:
        files = page_data.output_files(record, root)
        st.caption(ui.md(f"Files this run produced, under the storage root {root}."))
        if not files:
            st.info("No files yet.", icon=":material/info:")
        else:
            st.dataframe(pd.DataFrame(files), hide_index=True, width="stretch")
            paths = [f["path"] for f in files]
            requested = st.query_params.get("file")
            if requested and requested not in paths:
                paths.insert(0, requested)
            path = st.selectbox("File", paths, key="detail.file")
            try:
                url = browse.resolve_output(root, path)
                data = ui.file_bytes(root, url)
            except browse.OutsideRoot as exc:
                st.error(ui.md(exc), icon=":material/block:")
            except (FileNotFoundError, ValueError, OSError) as exc:
                st.warning(ui.md(exc), icon=":material/warning:")
            else:
                st.download_button(
                    "Download this file",
                    data,
                    file_name=path.rsplit("/", 1)[-1],
                    icon=":material/download:",
                    key="file-download",
                    on_click="ignore",
                )
