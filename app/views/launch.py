"""Launch: pick market, month and category, adjust settings, start a run in the background."""

from __future__ import annotations

import contextlib

import pandas as pd
import streamlit as st
import ui
from logic import access, forms, launch, page_data

from toolkit import config as config_mod
from toolkit.runs import record as record_mod

ALL = "(all categories)"
IDENTITY_KEYS = ("launch.country", "launch.period", "launch.category")
SAVED = "launch.saved"  # the form survives a visit to another page

ctx = ui.guard()  # sign-in and exposure checks, on every page


def _identity_from_state() -> forms.Identity:
    category = st.session_state.get("launch.category")
    return forms.Identity(
        st.session_state.get("launch.country", ""),
        st.session_state.get("launch.period", ""),
        None if category in (None, ALL) else category,
    )


def _load_baseline() -> None:
    """A new market, month or category: the form shows that selection's settings."""
    st.session_state.pop("launch.seeded_from", None)
    with contextlib.suppress(config_mod.ConfigError):  # the page explains the problem
        ui.set_form_values(forms.values_of(forms.baseline(_identity_from_state())))


def _seed(identity: forms.Identity, values: dict) -> None:
    st.session_state["launch.country"] = identity.country
    st.session_state["launch.period"] = identity.period
    st.session_state["launch.category"] = identity.category or ALL
    ui.set_form_values(values)


# --- Where the form's values come from: a run to repeat, the last visit, or defaults ---
source_run = st.query_params.get("from_run")
if source_run is not None:
    record = ui.find_run(source_run)
    if record is None:  # the link named a run that is not there: say so, keep the form as is
        st.stop()
    del st.query_params["from_run"]
    _seed(*page_data.rerun_seed(record))
    st.session_state["launch.seeded_from"] = source_run
    if "launch.last" in st.session_state:
        del st.session_state["launch.last"]
elif "launch.country" not in st.session_state and SAVED in st.session_state:
    saved = st.session_state[SAVED]
    _seed(saved["identity"], saved["values"])
elif "launch.country" not in st.session_state:
    default = forms.default_identity()
    planned = page_data.default_period(ui.plannable_periods(ctx.root, default))
    st.session_state["launch.country"] = default.country
    st.session_state["launch.period"] = planned or default.period  # next month, data allowing
    st.session_state["launch.category"] = default.category or ALL
    _load_baseline()

st.title("Launch a run")
st.caption(
    "Choose the market and month, adjust the settings if you need to, and launch. "
    "The run continues in the background: you can close this tab and follow it on the "
    "Runs page."
)
if not ctx.decision.allowed:
    st.info(ui.md(ctx.decision.reason), icon=":material/visibility:")
if st.session_state.get("launch.seeded_from"):
    st.info(
        ui.md(
            f"Prefilled with the settings of run {st.session_state['launch.seeded_from']}. "
            "Choosing another market, month or category loads that selection's settings."
        ),
        icon=":material/replay:",
    )

# --- The run launched from this page, live ---------------------------------------------
last = st.session_state.get("launch.last")
if last:
    with st.container(border=True):
        head, close = st.columns([6, 1], vertical_alignment="center")
        head.subheader("Your latest run", anchor=False)
        if close.button("Dismiss", icon=":material/close:", key="launch.dismiss"):
            del st.session_state["launch.last"]
            st.rerun()
        ui.progress_panel(last, ctx, show_log=False, key="launch", background_note=True)
        links = st.columns(3)
        links[0].page_link(
            ui.PAGES["runs"],
            label="Follow it on the Runs page",
            icon=":material/history:",
            query_params={"run": last},
        )
        links[1].page_link(
            ui.PAGES["detail"],
            label="See its results",
            icon=":material/insights:",
            query_params={"run": last},
        )

# --- What to run -------------------------------------------------------------------------
with st.container(border=True):
    st.subheader("What to run", divider="gray", anchor=False)
    with_data = set(page_data.markets_with_data(ctx.root))
    markets = forms.market_options()
    current_period = st.session_state.get("launch.period")
    plannable = ui.plannable_periods(ctx.root, _identity_from_state())
    periods = forms.period_options(
        extra=[current_period] if current_period else [], plannable=plannable
    )
    col_market, col_period, col_category = st.columns(3)
    col_market.selectbox(
        "Market",
        markets,
        key="launch.country",
        on_change=_load_baseline,
        format_func=lambda m: m if m in with_data else f"{m} (no sales data yet)",
        help="The market (country) to recommend prices for.",
    )
    col_period.selectbox(
        "Month",
        periods,
        key="launch.period",
        on_change=_load_baseline,
        help="The month whose prices the run sets. Its sales history ends in the last "
        "complete week before it; the months offered are those the sales data in the store "
        "can plan.",
    )
    country = st.session_state["launch.country"]
    categories = [ALL] + forms.category_options(ui.categories(ctx.root, country))
    if st.session_state.get("launch.category") not in categories:
        categories.append(st.session_state["launch.category"])
    col_category.selectbox(
        "Category",
        categories,
        key="launch.category",
        on_change=_load_baseline,
        help="Optionally limit the run to one product category.",
    )
    identity = _identity_from_state()
    currency = ui.market_currency(ctx.root, identity.country)
    if plannable and identity.period not in plannable:
        st.warning(
            ui.md(
                f"The sales data for market {identity.country} cannot plan {identity.period}: "
                f"it can plan {plannable[-1]} to {plannable[0]}. Pick one of those months."
            ),
            icon=":material/event_busy:",
        )
    if identity.country not in with_data:
        st.warning(
            ui.md(
                f"There is no sales data for market {identity.country} in the store yet, so a "
                "run would fail. Pick another market or ask for the data to be loaded."
            ),
            icon=":material/database:",
        )

try:
    base = forms.baseline(identity)
except config_mod.ConfigError as exc:
    ui.show_problems(
        [forms.FieldProblem(p.key, forms.plain_message(p.message), p.key) for p in exc.problems]
    )
    st.stop()

if any(ui.widget_key(spec) not in st.session_state for spec in forms.form_fields()):
    ui.set_form_values(forms.values_of(base))

# --- Settings, generated from the config model -----------------------------------------
groups = forms.form_groups()
values: dict = {}
slots: dict = {}  # under each field: its allowed range, or its problem
placeholders: dict = {}  # under each group: problems of the group as a whole
col_left, col_right = st.columns(2, gap="medium")
for group, column in zip(
    [g for g in groups if not g.advanced], [col_left, col_right], strict=False
):
    with column.container(border=True):
        st.subheader(group.title, divider="gray", anchor=False, help=group.help or None)
        if group.name == "weights":
            st.caption("How much each goal counts when choosing prices. Only the ratios matter.")
        else:
            st.caption("Limits every recommendation must respect.")
        for spec in group.fields:
            values[spec.key] = ui.field_widget(spec, slots, currency)
        placeholders[group.name] = st.empty()
launch_box = st.container(border=True)  # under both columns: last on a phone too

with st.expander("Advanced settings", icon=":material/tune:"):
    st.caption(
        "Settings of the analysis steps. Most people never change these; each one's "
        "help (?) says what it does."
    )
    advanced = [g for g in groups if g.advanced]
    for group, tab in zip(advanced, st.tabs([g.title for g in advanced]), strict=True):
        with tab:
            columns = st.columns(2)
            for i, spec in enumerate(group.fields):
                with columns[i % 2]:
                    values[spec.key] = ui.field_widget(spec, slots, currency)
            placeholders[group.name] = st.empty()

# --- Check before anything runs ----------------------------------------------------------
checked = forms.check(identity, values)
by_group = ui.field_problems(checked.problems, slots)  # under their fields
for group_name, placeholder in placeholders.items():
    problems = [p for p in by_group if p.group == group_name]
    if problems:
        with placeholder.container():
            ui.show_problems(problems)

# --- Launch ------------------------------------------------------------------------------
rows = forms.differences(checked.resolved, currency) if checked.resolved is not None else []
with launch_box:
    st.subheader("Launch", divider="gray", anchor=False)
    st.text(
        f"Market {identity.country} · {identity.period} · {identity.category or 'all categories'}"
    )
    changed = sum(1 for r in rows if r["Set by"] == forms.FORM_CHANGE)
    if checked.ok:
        st.caption(
            f"{changed} setting(s) changed in this form; {len(rows)} differ from the "
            "defaults (listed below)."
        )
    if checked.problems:
        count = len(checked.problems)
        st.error(
            f"Launch is disabled until {'this is' if count == 1 else f'these {count} are'} "
            "fixed; nothing has been launched.",
            icon=":material/block:",
        )
        st.markdown("\n".join(f"- {ui.md(p)}" for p in checked.problems))
    run_name = st.text_input(
        "Run name (optional)",
        max_chars=record_mod.NAME_MAX,
        placeholder="e.g. Deeper cuts for Black Friday",
        help="Shown in the runs list, the run's header and Compare, to tell runs apart.",
        key="launch.name",
    )
    run_note = st.text_area(
        "Note (optional)",
        max_chars=record_mod.NOTE_MAX,
        placeholder="Why this run: what you want to find out.",
        height=68,
        key="launch.note",
    )
    _, label_problems = launch.labels(run_name, run_note)
    for problem in label_problems:
        st.error(ui.md(str(problem)), icon=":material/error:")
    ready = checked.ok and not label_problems
    clicked = st.button(
        "Launch run",
        type="primary",
        icon=":material/rocket_launch:",
        disabled=not (ready and ctx.decision.allowed),
        help=None if ready else "Fix the settings listed above first.",
        width="stretch",
        key="launch.go",
    )
    who = ctx.viewer.launcher if ctx.viewer else "nobody"
    st.caption(ui.md(f"Recorded as launched by {who}."))
    if clicked:
        try:
            launched = launch.launch(
                identity, values, ctx.viewer, ctx.settings, name=run_name, note=run_note
            )
        except launch.LaunchRefused as exc:
            ui.show_problems(exc.problems)
        except access.AccessDenied as exc:
            st.error(ui.md(exc), icon=":material/block:")
        else:
            st.session_state["launch.last"] = launched.run_id
            for key in ("launch.name", "launch.note"):  # the next run gets its own
                st.session_state.pop(key, None)
            st.session_state[SAVED] = {"identity": identity, "values": values}
            st.rerun()

st.subheader("Settings that differ from the defaults", divider="gray", anchor=False)
if checked.resolved is None:
    st.caption("Fix the problems above to see the effective settings.")
elif rows:
    st.caption(
        "Each value and where it comes from: the market's or month's own settings, or your "
        "changes in this form."
    )
    st.dataframe(
        pd.DataFrame(rows).drop(columns=["Key", "Short"]), hide_index=True, width="stretch"
    )
else:
    st.caption("Every setting is at its default.")

st.session_state[SAVED] = {"identity": identity, "values": values}
