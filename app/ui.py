"""Pieces every page uses: who is here, cached reads of immutable outputs, run progress.

Decisions and storage access live in ``toolkit``; this module only turns their results
into widgets. Data is always shown as data (``st.dataframe``, ``st.text``, ``st.code``,
``st.metric``); text from records or outputs that must sit in Markdown goes through
``md`` first.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from typing import Any

import pandas as pd
import streamlit as st
from logic import access, browse, forms, launch, page_data

from toolkit import config as config_mod
from toolkit.data import storage
from toolkit.runs import lease as leases
from toolkit.runs import reports
from toolkit.runs import store as runs
from toolkit.runs.record import RunRecord

PAGES = {
    "launch": "views/launch.py",
    "runs": "views/runs.py",
    "detail": "views/run_detail.py",
    "compare": "views/compare.py",
}
POLL_SECONDS = 2.0


@st.cache_resource(show_spinner=False)
def _warm_up() -> bool:
    """Once per server: import the launch machinery in the background, not on a click."""
    threading.Thread(target=launch.warm_up, daemon=True, name="toolkit-warm-up").start()
    return True


_warm_up()
OUTPUT_TTL = 300  # outputs are immutable (a new execution gets a new URL); this bounds memory


# ---------------------------------------------------------------------------
# Who is using the app
# ---------------------------------------------------------------------------


@dataclass
class Session:
    auth_configured: bool
    viewer: access.Viewer | None
    settings: access.AppSettings
    decision: access.Decision
    root: str
    address: str | None
    settings_error: str | None = None
    operator: bool = False  # sees the technical layer: files, logs, notebooks, tracebacks
    identity_header: str | None = None  # sign-in by a proxy that sends this header

    @property
    def exposed_without_auth(self) -> bool:
        """Listening beyond this computer with nobody signing in: refuse to serve."""
        return not self.auth_configured and (self.address or "") not in access.LOOPBACK

    @property
    def needs_login(self) -> bool:
        return (self.auth_configured or bool(self.identity_header)) and self.viewer is None


def refuse_exposed(ctx: Session) -> None:
    st.error(
        md(
            "This app has no sign-in configured but is listening on "
            f"{ctx.address or 'every network address'}. It refuses to show anything: set "
            'server.address = "127.0.0.1" in .streamlit/config.toml, or configure sign-in '
            "([auth] in .streamlit/secrets.toml)."
        ),
        icon=":material/gpp_bad:",
    )
    st.stop()


def guard() -> Session:
    """Every page starts here, whichever way it was reached: the same checks as the router."""
    ctx = session()
    if ctx.exposed_without_auth:
        refuse_exposed(ctx)
    if ctx.needs_login:
        if ctx.identity_header:
            proxy_login_page(ctx)
        else:
            login_page()
        st.stop()
    return ctx


def auth_configured() -> bool:
    """Sign-in is configured when ``.streamlit/secrets.toml`` has an ``[auth]`` section."""
    try:
        return "auth" in st.secrets
    except Exception:  # noqa: BLE001 - no secrets file at all: no sign-in
        return False


def session() -> Session:
    configured = auth_configured()
    error = None
    try:
        settings = access.load_settings()
    except config_mod.ConfigError as exc:
        settings, error = access.AppSettings(), str(exc)
    header = None if configured else settings.identity_header
    if header:  # a sign-in proxy on this computer names the person
        viewer = access.viewer_from_header(st.context.headers.get(header))
    else:
        viewer = access.viewer_from_claims(st.user.to_dict() if configured else {}, configured)
    decision = access.can_launch(viewer, settings)
    if error and configured:
        decision = access.Decision(
            False, f"The app settings are invalid, so nobody may launch: {error}"
        )
    return Session(
        auth_configured=configured,
        identity_header=header,
        viewer=viewer,
        settings=settings,
        decision=decision,
        root=storage.root(),
        address=st.get_option("server.address"),
        settings_error=error,
        operator=access.is_operator(viewer, settings),
    )


def timezone() -> str | None:
    try:
        return st.context.timezone
    except Exception:  # noqa: BLE001 - no browser context (tests, bare mode)
        return None


def login_page() -> None:
    st.title("Price recommendations")
    st.write("Sign in to see runs and results.")
    if not access_authlib_available():
        st.error(
            "Sign-in is configured, but the Authlib package is missing on the server, so "
            "nobody can sign in. Ask an administrator to install `Authlib>=1.3.2`."
        )
        return
    st.button("Sign in", type="primary", on_click=st.login, icon=":material/login:")


def proxy_login_page(ctx: Session) -> None:
    st.title("Price recommendations")
    st.error(
        md(
            "This app is signed in through a proxy, and this request came without the "
            f"person's email ({ctx.identity_header}). Open the app at the proxy's address."
        ),
        icon=":material/login:",
    )


def access_authlib_available() -> bool:
    try:
        import authlib  # noqa: F401
    except ImportError:
        return False
    return True


def sidebar(ctx: Session) -> None:
    with st.sidebar:
        st.caption(
            "Signed in as" if ctx.viewer and ctx.viewer.authenticated else "Using the app as"
        )
        st.text(ctx.viewer.name if ctx.viewer else "nobody")
        if ctx.viewer and ctx.viewer.email and ctx.viewer.email != ctx.viewer.name:
            st.text(ctx.viewer.email)
        if ctx.decision.allowed:
            st.caption("You may launch and cancel runs.")
        else:
            st.caption("You may view runs and results.")
        if ctx.viewer and ctx.viewer.authenticated and ctx.auth_configured:
            st.button("Sign out", on_click=st.logout, icon=":material/logout:")
        st.divider()
        if ctx.operator:  # a server path: for operators only
            st.caption("Results are read from")
            st.text(ctx.root)
        if not (ctx.auth_configured or ctx.identity_header):
            st.info(
                "Local mode: no sign-in is configured, so this app only listens on this "
                "computer (127.0.0.1). People on other computers cannot open it.",
                icon=":material/lock:",
            )


# ---------------------------------------------------------------------------
# Markdown-safe text
# ---------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:&])")


def md(text: Any) -> str:
    """``text`` escaped so Markdown shows it literally (no links, images, HTML or math)."""
    return _MD_SPECIAL.sub(r"\\\1", str(text)).replace("\n", " ")


# ---------------------------------------------------------------------------
# Cached reads: only immutable outputs, keyed by URL; never run lists or records
# ---------------------------------------------------------------------------


@st.cache_data(ttl=OUTPUT_TTL, max_entries=64, show_spinner=False)
def table(root: str, url: str, contract: str) -> pd.DataFrame:
    return page_data.read_table(root, url, contract)


@st.cache_data(ttl=OUTPUT_TTL, max_entries=64, show_spinner=False)
def json_output(root: str, url: str) -> Any:
    return page_data.read_json(root, url)


@st.cache_data(ttl=OUTPUT_TTL, max_entries=16, show_spinner=False)
def notebook_parts(root: str, url: str) -> list:
    return page_data.notebook_parts(root, url)


@st.cache_data(ttl=OUTPUT_TTL, max_entries=16, show_spinner=False)
def file_bytes(root: str, url: str) -> bytes:
    return browse.read_output(root, url)


@st.cache_data(ttl=60, max_entries=32, show_spinner=False)
def _catalog_values(root: str, market: str, column: str, fingerprint: str) -> list[str]:
    return page_data.raw_catalog_values(root, market, column)


def _catalog(root: str, market: str, column: str) -> list[str]:
    """Values of a column of a market's catalog; keyed by the file's fingerprint, so never
    stale."""
    from toolkit.runs import cache

    url = storage.raw_url(market, "catalog", root)
    try:
        fingerprint = cache.file_fingerprint(url)
    except OSError:
        return []
    return _catalog_values(root, market, column, fingerprint)


def categories(root: str, market: str) -> list[str]:
    return _catalog(root, market, "category")


@st.cache_data(ttl=60, max_entries=16, show_spinner=False)
def _plannable(sources_json: str, run_json: str, history: int, gap: int, fingerprint: str):
    return page_data.plannable_months(json.loads(sources_json), json.loads(run_json), history, gap)


def plannable_periods(root: str, identity: forms.Identity) -> list[str]:
    """The months a run for this market can plan with the sales in the store (newest
    first), as its config reads them; keyed by the files' content, so never stale."""
    try:
        section = forms.baseline(identity).section("load_transform")
    except config_mod.ConfigError:
        return []
    run = {"market": identity.country, "period": identity.period, "root": root}
    fingerprint = page_data.sales_fingerprint(section["sources"], run)
    if not fingerprint:
        return []
    return _plannable(
        json.dumps(section["sources"], sort_keys=True),
        json.dumps(run, sort_keys=True),
        int(section["history_weeks"]),
        int(section["max_gap_weeks"]),
        fingerprint,
    )


def market_currency(root: str, market: str) -> str:
    """The currency of a market's prices, from its catalog ("" without data)."""
    found = _catalog(root, market, "currency")
    return found[0] if len(found) == 1 else ""


def optional_table(root: str, record: RunRecord, step: str, product: str, contract: str):
    url = page_data.output_url(record, step, product)
    if not url:
        return None
    try:
        return table(root, url, contract)
    except (FileNotFoundError, browse.OutsideRoot, ValueError, OSError) as exc:
        st.warning(md(f"Could not read the {step} output: {exc}"), icon=":material/warning:")
        return None


# ---------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------


def find_run(run_id: str | None, ctx: Session | None = None) -> RunRecord | None:
    """The run a link or picker names, or None after saying which id is missing and
    offering the way back to the latest runs (never another run in its place)."""
    detail = ""
    try:
        if run_id:
            return runs.load(run_id)
        message = "This link names no run."
    except runs.RecordUnreadable as exc:
        message = f"Run {run_id} exists, but its record cannot be read."
        detail = str(exc)
    except runs.RunNotFound:
        message = (
            f"There is no run {run_id!r}. The link may be mistyped or cut short, or the run "
            "was removed."
        )
    st.error(md(message), icon=":material/link_off:")
    st.page_link(PAGES["runs"], label="See the latest runs", icon=":material/history:")
    if detail and ctx is not None:
        operator_details(ctx, "Why the record cannot be read", detail)
    return None


def load_run(run_id: str) -> RunRecord | None:
    return find_run(run_id)


def operator_details(ctx: Session, title: str, text: str) -> None:
    """Technical detail (tracebacks, storage paths, logs) for operators only."""
    if ctx.operator and text:
        with st.expander(f"{title} (for operators)", icon=":material/engineering:"):
            st.code(text, language=None)


def status_badge(status: str | None) -> None:
    st.markdown(badge_markdown(status))


def badge_markdown(status: str | None) -> str:
    """A status badge as Markdown, to sit in a line of text (lines wrap on a phone, where
    columns would stack)."""
    status = status or "unreadable"
    color, icon = page_data.STATUS_BADGES.get(status, ("gray", ":material/help:"))
    text = md(page_data.STATUS_TEXT.get(status, status.capitalize()))
    return f":{color}-badge[{icon} {text}]"


def styled_status(frame: pd.DataFrame, status_column: str = "status"):
    """``frame`` with its Status cell coloured by status (the raw column stays hidden)."""
    colors = frame[status_column].map(page_data.STATUS_COLORS).fillna("")

    def paint(column: pd.Series) -> list[str]:
        if column.name != "Status":
            return [""] * len(column)
        return [f"color: {c}; font-weight: 600" if c else "" for c in colors]

    return frame.style.apply(paint, axis=0)


def steps_table(record: RunRecord) -> list[dict]:
    """One line per pipeline step: a status badge, the step, its time and what happened."""
    rows = page_data.step_rows(record)
    done = sum(1 for r in rows if r["status"] in ("succeeded", "reused"))
    reused = sum(1 for r in rows if r["status"] == "reused")
    text = f"{done} of {len(rows)} steps done"
    if reused:
        text += f" ({reused} reused from earlier runs)"
    st.progress(page_data.progress_fraction(rows), text=text)
    lines = [
        f"{badge_markdown(row['status'])} **{md(row['Step'])}** · {md(row['Time'])} · "
        f"{md(row['Detail'])}"
        for row in rows
    ]
    st.markdown("  \n".join(lines))  # one line per step, at any width
    return rows


def run_header(record: RunRecord, currency: str = "") -> None:
    """What tells a run apart, under its title: what changed, its note and its id."""
    changed = page_data.what_changed(record, currency)
    st.caption(md(f"What changed: {changed} · run {record.id}"))
    if record.note:
        st.caption(md(f"Note: {record.note}"))


def status_line(record: RunRecord, tz: str | None, cancelling: bool = False) -> None:
    """The run's status badge (``Cancelling…`` once a cancel was asked for and until the
    run is recorded cancelled), start, time so far or taken, and launcher."""
    status = record.status
    started = page_data.format_time(record.started_at or record.created_at, tz)
    elapsed = page_data.format_duration(page_data._elapsed(record))
    parts = []
    if started:
        parts.append(f"started {started}")
    if elapsed:
        parts.append(("running for " if status in runs.ACTIVE else "took ") + elapsed)
    text = md(" · ".join(parts))
    if record.launcher:  # as code: Markdown would make an e-mail address a mailto link
        launcher = " ".join(record.launcher.replace("`", "'").split())
        text += f" · launched by `{launcher}`"
    shown = "cancelling" if cancelling and status in runs.ACTIVE else status
    st.markdown(f"{badge_markdown(shown)} {text}")


def outcome(record: RunRecord, ctx: Session) -> None:
    """How a finished run ended, in one sentence; a cancel reads as a cancel."""
    sentence = page_data.outcome_sentence(record)
    if not sentence:
        return
    if record.status == "cancelled":
        st.info(md(sentence), icon=":material/cancel:")
    elif record.status == "interrupted":
        st.warning(md(sentence), icon=":material/warning:")
    else:
        st.error(md(sentence), icon=":material/error:")


def progress_panel(
    run_id: str,
    ctx: Session,
    *,
    show_log: bool = True,
    key: str = "",
    background_note: bool = False,
) -> None:
    """Live progress of one run: refreshes itself while the run is queued or running, and
    once more when it ends."""
    first = find_run(run_id, ctx)
    if first is None:
        return
    was_active = page_data.is_active(first)

    cancel_key = f"cancel.{run_id}"  # "asked": clicked; "sent": the cancel was written

    def body() -> None:
        record = find_run(run_id, ctx)
        if record is None:
            return
        active = page_data.is_active(record)
        if not active:
            st.session_state.pop(cancel_key, None)
        cancelling = st.session_state.get(cancel_key)
        if background_note and active:
            st.caption(
                md(f"Run {run_id} runs in the background; closing this tab does not stop it.")
            )
        status_line(record, timezone(), cancelling=bool(cancelling))
        steps_table(record)
        if not active:
            outcome(record, ctx)
        if active and ctx.decision.allowed and cancelling:
            # Shown before the cancel is written, and until the record says cancelled.
            st.button(
                "Cancelling…",
                key=f"cancelling-{key}-{run_id}",
                icon=":material/hourglass_top:",
                disabled=True,
            )
            if cancelling == "asked":
                st.session_state[cancel_key] = "sent"
                _cancel(run_id, ctx, cancel_key)
        elif active and ctx.decision.allowed:
            st.button(
                "Cancel this run",
                key=f"cancel-{key}-{run_id}",
                icon=":material/cancel:",
                on_click=st.session_state.__setitem__,
                args=(cancel_key, "asked"),
            )
        if show_log and ctx.operator:
            with st.expander("Log (for operators)", icon=":material/article:"):
                st.code(reports.run_log(record) or "nothing logged yet", language=None)
                output = launch.launch_log(run_id)
                if output:
                    st.caption("Output of the run's process")
                    st.code(output[-8000:], language=None)
        if was_active and not active:
            st.rerun()  # the run ended: refresh the whole page (results, buttons)

    st.fragment(run_every=POLL_SECONDS if was_active else None)(body)()


def _cancel(run_id: str, ctx: Session, cancel_key: str) -> None:
    """Write the cancel; the panel shows "Cancelling…" until the record says cancelled
    (its next refresh). A refused cancel says why and offers the button again."""
    try:
        launch.cancel(run_id, ctx.viewer, ctx.settings)
    except access.AccessDenied as exc:
        st.session_state.pop(cancel_key, None)
        st.toast(md(exc), icon=":material/block:")
    except runs.RunNotFound:
        st.session_state.pop(cancel_key, None)
        st.toast(md(f"Run {run_id} is no longer there."), icon=":material/link_off:")
    except (leases.LeaseError, storage.StorageError) as exc:  # try again next click
        st.session_state.pop(cancel_key, None)
        st.toast(md(f"Could not cancel run {run_id} just now: {exc}"), icon=":material/error:")


# ---------------------------------------------------------------------------
# Form widgets generated from the config model
# ---------------------------------------------------------------------------


def widget_key(spec: forms.FieldSpec) -> str:
    return f"cfg.{spec.key}"


def _help(spec: forms.FieldSpec) -> str:
    allowed = f" Allowed: {spec.bounds_text}." if spec.bounds_text else ""
    return f"{spec.help}{allowed}"


def _percent(value: float) -> str:
    return f"{value * 100:+g}%" if value else "0% (no change)"


def field_label(spec: forms.FieldSpec, currency: str = "") -> str:
    """The label with its unit: ``Max discount (%)``, ``Markdown budget (EUR)``."""
    if spec.percent and spec.kind != "float_list":
        return f"{spec.label} (%)"
    if spec.money:
        return f"{spec.label} ({currency or 'market currency'})"
    return spec.label


def field_widget(
    spec: forms.FieldSpec, slots: dict[str, Any], currency: str = "", disabled: bool = False
) -> Any:
    """The widget for one config field (its value comes from session state, by key), the
    allowed range in words under it, and a slot for its problem in ``slots`` (see
    ``field_problems``).

    Number boxes take any number and the form checks it: a box that refused a typed value
    would keep showing it while the old value launched. Sliders and pickers cannot leave
    their range, so they need no words.
    """
    key = widget_key(spec)
    label = field_label(spec, currency)
    common = dict(key=key, help=_help(spec), disabled=disabled)
    if spec.kind == "slider":
        raw = st.slider(
            label,
            min_value=float(spec.minimum),
            max_value=float(spec.maximum),
            step=spec.step,
            **common,
        )
    elif spec.kind == "int":
        raw = st.number_input(label, step=1, **common)
    elif spec.kind == "float":
        if spec.percent:
            step, fmt = 1.0, "%.1f"
        elif spec.money or (spec.maximum or 0) > 1e6:
            step, fmt = 1000.0, "%.0f"
        else:
            step, fmt = spec.step, "%.2f"
        raw = st.number_input(label, step=step, format=fmt, **common)
    elif spec.kind == "float_list":
        current = st.session_state.get(key) or []
        options = sorted({*spec.choices, *(float(v) for v in current)})
        raw = st.multiselect(
            label,
            options,
            format_func=_percent,
            max_selections=spec.max_items,
            **common,
        )
    elif spec.kind == "choice":
        raw = st.selectbox(label, list(spec.choices), **common)
    elif spec.kind == "bool":
        raw = st.checkbox(label, **common)
    else:
        raw = st.text_input(
            label, placeholder="none" if spec.optional else "", max_chars=2000, **common
        )
    slot = st.empty()
    if spec.kind in ("int", "float") and spec.bounds_text:
        slot.caption(md(f"Allowed: {spec.bounds_text}"))
    slots[spec.key] = slot
    return forms.from_widget(spec, raw)


def field_problems(
    problems: list[forms.FieldProblem], slots: dict[str, Any]
) -> list[forms.FieldProblem]:
    """Show each problem under its field; return those that belong to no field."""
    by_key: dict[str, list[forms.FieldProblem]] = {}
    for problem in problems:
        by_key.setdefault(problem.key, []).append(problem)
    rest = []
    for key, found in by_key.items():
        slot = slots.get(key)
        if slot is None:
            rest.extend(found)
            continue
        with slot.container():
            for problem in found:
                st.error(md(f"{problem.label}: {problem.message}"), icon=":material/error:")
    return rest


def set_form_values(values: dict[str, Any]) -> None:
    """Put config values into the form's widgets (before they are drawn)."""
    for spec in forms.form_fields():
        if spec.key in values:
            st.session_state[widget_key(spec)] = forms.to_widget(spec, values[spec.key])


def show_problems(problems: list[forms.FieldProblem]) -> None:
    for problem in problems:
        st.error(md(f"{problem.label or problem.key}: {problem.message}"), icon=":material/error:")
