"""The app's security settings stay on: XSRF, CORS, no telemetry, localhost only."""

from __future__ import annotations

import re
import tomllib

from helpers import PROJECT_DIR


def test_streamlit_config_keeps_protections_on_and_binds_to_localhost():
    config = tomllib.loads((PROJECT_DIR / ".streamlit" / "config.toml").read_text())
    assert config["server"]["enableXsrfProtection"] is True
    assert config["server"]["enableCORS"] is True
    assert config["server"]["address"] == "127.0.0.1"
    assert config["browser"]["gatherUsageStats"] is False


def test_secrets_are_never_committed():
    ignored = (PROJECT_DIR / ".gitignore").read_text().splitlines()
    assert ".streamlit/secrets.toml" in ignored
    assert not (PROJECT_DIR / ".streamlit" / "secrets.toml").exists()


def test_make_app_serves_on_localhost():
    makefile = (PROJECT_DIR / "Makefile").read_text()
    target = re.search(r"^app: install.*?(?=^\S)", makefile, re.M | re.S)
    assert target, "no `app` target depending on `install`"
    # serve.py: main.py behind the Host check (tests/app/test_host_check.py)
    assert "streamlit run app/serve.py --server.address 127.0.0.1" in target.group(0)
    assert "demo-data" in target.group(0)


def test_pages_never_render_html_and_app_never_imports_pandera_or_ploomber():
    for path in (PROJECT_DIR / "app").rglob("*.py"):
        text = path.read_text()
        assert "unsafe_allow_html" not in text, path
        assert "st.html(" not in text, path
        assert not re.search(r"^\s*(import|from)\s+(pandera|ploomber)\b", text, re.M), path
    for path in (PROJECT_DIR / "toolkit").glob("*.py"):
        assert not re.search(r"^\s*(import|from)\s+streamlit\b", path.read_text(), re.M), path


def test_pages_do_not_live_in_a_folder_named_pages():
    """Streamlit treats app/pages/ as a legacy multipage folder: on a fresh server a direct
    visit to /runs would run that file without app/main.py, i.e. without the sign-in guard."""
    assert not (PROJECT_DIR / "app" / "pages").exists()
    for page in ("launch", "runs", "run_detail", "compare"):
        text = (PROJECT_DIR / "app" / "views" / f"{page}.py").read_text()
        assert "ctx = ui.guard()" in text, page
