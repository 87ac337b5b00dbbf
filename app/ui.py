"""Pieces every page uses: who is here, cached reads of immutable outputs, run progress.

Decisions and storage access live in ``toolkit``; this module only turns their results
into widgets. Data is always shown as data (``st.dataframe``, ``st.text``, ``st.code``,
``st.metric``); text from records or outputs that must sit in Markdown goes through
``md`` first.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

import pandas as pd
import streamlit as st
from logic import access, browse, forms, launch, page_data

from toolkit import config as config_mod
from toolkit.data import storage
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

    @property
    def exposed_without_auth(self) -> bool:
        """Listening beyond this computer with nobody signing in: refuse to serve."""
        return not self.auth_configured and (self.address or "") not in access.LOOPBACK

    @property
    def needs_login(self) -> bool:
        return self.auth_configured and self.viewer is None


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
    claims = st.user.to_dict() if configured else {}
    viewer = access.viewer_from_claims(claims, configured)
    error = None
    try:
        settings = access.load_settings()
    except config_mod.ConfigError as exc:
        settings, error = access.AppSettings(), str(exc)
    decision = access.can_launch(viewer, settings)
    if error and configured:
        decision = access.Decision(
            False, f"The app settings are invalid, so nobody may launch: {error}"
        )
    return Session(
        auth_configured=configured,
        viewer=viewer,
        settings=settings,
        decision=decision,
        root=storage.root(),
        address=st.get_option("server.address"),
        settings_error=error,
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
        if ctx.viewer and ctx.viewer.authenticated:
            st.button("Sign out", on_click=st.logout, icon=":material/logout:")
        st.divider()
        st.caption("Results are read from")
        st.text(ctx.root)
        if not ctx.auth_configured:
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


@st.cache_data(ttl=OUTPUT_TTL, max_entries=32, show_spinner=False)
def notebook_text(root: str, url: str) -> str:
    return page_data.notebook_text(root, url)


@st.cache_data(ttl=OUTPUT_TTL, max_entries=16, show_spinner=False)
def file_bytes(root: str, url: str) -> bytes:
    return browse.read_output(root, url)


@st.cache_data(ttl=60, max_entries=32, show_spinner=False)
def _categories(root: str, market: str, fingerprint: str) -> list[str]:
    return page_data.raw_categories(root, market)


def categories(root: str, market: str) -> list[str]:
    """Categories in a market's catalog; keyed by the file's fingerprint, so never stale."""
    from toolkit.runs import cache

    url = storage.raw_url(market, "catalog", root)
    try:
        fingerprint = cache.file_fingerprint(url)
    except OSError:
        return []
    return _categories(root, market, fingerprint)


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


def load_run(run_id: str) -> RunRecord | None:
    try:
        return runs.load(run_id)
    except runs.RunNotFound as exc:
        st.error(md(exc), icon=":material/error:")
        return None


def status_badge(status: str | None) -> None:
    status = status or "unreadable"
    color, icon = page_data.STATUS_BADGES.get(status, ("gray", ":material/help:"))
    st.badge(md(page_data.STATUS_TEXT.get(status, status.capitalize())), icon=icon, color=color)


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
    for row in rows:
        badge, name, took, detail = st.columns([1.7, 2.2, 0.9, 4.2], vertical_alignment="center")
        with badge:
            status_badge(row["status"])
        name.text(row["Step"])
        took.text(row["Time"])
        detail.text(row["Detail"])
    return rows


def status_line(record: RunRecord, tz: str | None) -> None:
    status = record.status
    started = page_data.format_time(record.started_at or record.created_at, tz)
    elapsed = page_data.format_duration(page_data._elapsed(record))
    parts = []
    if started:
        parts.append(f"started {started}")
    if elapsed:
        parts.append(("running for " if status in runs.ACTIVE else "took ") + elapsed)
    if record.launcher:
        parts.append(f"launched by {record.launcher}")
    badge, text = st.columns([1, 6], vertical_alignment="center")
    with badge:
        status_badge(status)
    text.text(" · ".join(parts))


def progress_panel(run_id: str, ctx: Session, *, show_log: bool = True, key: str = "") -> None:
    """Live progress of one run: refreshes itself while the run is queued or running."""
    first = load_run(run_id)
    if first is None:
        return
    was_active = page_data.is_active(first)

    def body() -> None:
        record = load_run(run_id)
        if record is None:
            return
        status_line(record, timezone())
        steps_table(record)
        if record.status == "failed" and record.error:
            st.error(md(f"The run failed: {record.error}"), icon=":material/error:")
        can_cancel = page_data.is_active(record) and ctx.decision.allowed
        if can_cancel and st.button(
            "Cancel this run", key=f"cancel-{key}-{run_id}", icon=":material/cancel:"
        ):
            try:
                launch.cancel(run_id, ctx.viewer, ctx.settings)
                st.toast("Cancel requested: the run stops within a few seconds.")
            except (access.AccessDenied, runs.RunNotFound) as exc:
                st.error(md(exc))
        if show_log:
            with st.expander("Log", icon=":material/article:"):
                st.code(reports.run_log(record) or "nothing logged yet", language=None)
                output = launch.launch_log(run_id)
                if output:
                    st.caption("Output of the run's process")
                    st.code(output[-8000:], language=None)
        if was_active and not page_data.is_active(record):
            st.rerun()  # the run ended: refresh the whole page (results, buttons)

    st.fragment(run_every=POLL_SECONDS if was_active else None)(body)()


# ---------------------------------------------------------------------------
# Form widgets generated from the config model
# ---------------------------------------------------------------------------


def widget_key(spec: forms.FieldSpec) -> str:
    return f"cfg.{spec.key}"


def _help(spec: forms.FieldSpec) -> str:
    allowed = f" Allowed: {spec.bounds_text}." if spec.bounds_text else ""
    return f"{spec.help}{allowed}"


def _percent(value: float) -> str:
    return f"{value * 100:+.0f}%" if value else "0% (no change)"


def field_widget(spec: forms.FieldSpec, disabled: bool = False) -> Any:
    """The widget for one config field; its value comes from session state (key)."""
    key = widget_key(spec)
    common = dict(key=key, help=_help(spec), disabled=disabled)
    if spec.kind == "slider":
        raw = st.slider(
            spec.label,
            min_value=float(spec.minimum),
            max_value=float(spec.maximum),
            step=spec.step,
            **common,
        )
    elif spec.kind == "int":
        raw = st.number_input(
            spec.label,
            min_value=None if spec.minimum is None else int(spec.minimum),
            max_value=None if spec.maximum is None else int(spec.maximum),
            step=1,
            **common,
        )
    elif spec.kind == "float":
        big = (spec.maximum or 0) > 1e6
        raw = st.number_input(
            spec.label,
            min_value=spec.minimum,
            max_value=spec.maximum,
            step=spec.step,
            format="%.0f" if big else "%.2f",
            **common,
        )
    elif spec.kind == "float_list":
        current = st.session_state.get(key) or []
        options = sorted({*spec.choices, *(float(v) for v in current)})
        raw = st.multiselect(
            spec.label,
            options,
            format_func=_percent,
            max_selections=spec.max_items,
            **common,
        )
    elif spec.kind == "choice":
        raw = st.selectbox(spec.label, list(spec.choices), **common)
    elif spec.kind == "bool":
        raw = st.checkbox(spec.label, **common)
    else:
        raw = st.text_input(
            spec.label, placeholder="none" if spec.optional else "", max_chars=2000, **common
        )
    return forms.from_widget(spec, raw)


def set_form_values(values: dict[str, Any]) -> None:
    """Put config values into the form's widgets (before they are drawn)."""
    for spec in forms.form_fields():
        if spec.key in values:
            st.session_state[widget_key(spec)] = forms.to_widget(spec, values[spec.key])


def show_problems(problems: list[forms.FieldProblem]) -> None:
    for problem in problems:
        st.error(md(f"{problem.label or problem.key}: {problem.message}"), icon=":material/error:")
