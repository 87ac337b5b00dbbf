"""Price recommendations app: launch runs, follow them, read and compare their results.

``make app`` serves it on 127.0.0.1 with the local store, through ``serve.py`` (the Host
check); ``TOOLKIT_ROOT`` switches the store (e.g. to S3). With sign-in configured
(``[auth]`` in .streamlit/secrets.toml) every page needs a signed-in user and
configs/app.yaml says who may launch and who operates.
"""

from __future__ import annotations

import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
if str(APP_DIR) not in sys.path:  # pages import the shared `ui` module next to this file
    sys.path.insert(0, str(APP_DIR))

import streamlit as st  # noqa: E402
import ui  # noqa: E402

st.set_page_config(
    page_title="Price recommendations",
    # An emoji favicon is drawn in the browser; a :material/: one is fetched from Google.
    page_icon="🏷️",
    layout="wide",
    # Open on wide screens, closed on phones, where it would cover the page.
    initial_sidebar_state="auto",
)

ctx = ui.session()

if ctx.exposed_without_auth:
    ui.refuse_exposed(ctx)


def sign_in_through_the_proxy() -> None:
    ui.proxy_login_page(ctx)


if ctx.needs_login:
    login = sign_in_through_the_proxy if ctx.identity_header else ui.login_page
    st.navigation([st.Page(login, title="Sign in", icon=":material/login:")]).run()
    st.stop()

pages = [
    st.Page(ui.PAGES["launch"], title="Launch", icon=":material/rocket_launch:", default=True),
    st.Page(ui.PAGES["runs"], title="Runs", icon=":material/history:"),
    st.Page(ui.PAGES["detail"], title="Results", icon=":material/insights:"),
    st.Page(ui.PAGES["compare"], title="Compare", icon=":material/compare_arrows:"),
]
navigation = st.navigation(pages)
ui.sidebar(ctx)
navigation.run()
