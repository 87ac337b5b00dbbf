"""The app as ``make app`` serves it: Streamlit's own ASGI app (``st.App``) around
``main.py``, with a Host check in front of every request and websocket handshake.

Without sign-in the only protection is the loopback bind, and a page on another site can
reach a loopback server by DNS rebinding: its name resolves to 127.0.0.1 but the browser
still sends that name as ``Host``. Streamlit's ``server.allowedHosts`` checks only
websocket handshakes, so Starlette's ``TrustedHostMiddleware`` (through ``st.App``'s public
``middleware`` parameter) checks everything, against ``allowed_hosts`` in configs/app.yaml
(127.0.0.1 and localhost by default; add the public name when a proxy is in front).

    streamlit run app/serve.py --server.address 127.0.0.1
"""

from __future__ import annotations

import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
if str(APP_DIR) not in sys.path:  # `logic` sits next to this file
    sys.path.insert(0, str(APP_DIR))

import streamlit as st  # noqa: E402
from logic import access  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.middleware.trustedhost import TrustedHostMiddleware  # noqa: E402

from toolkit import config as config_mod  # noqa: E402

try:
    settings = access.load_settings()
except config_mod.ConfigError as exc:
    sys.exit(f"The app settings are invalid, so the app does not start: {exc}")

app = st.App(
    str(APP_DIR / "main.py"),
    middleware=[
        Middleware(TrustedHostMiddleware, allowed_hosts=settings.allowed_hosts, www_redirect=False)
    ],
)
