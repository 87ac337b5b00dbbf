"""Fixtures for the app tests: private app settings, launch logs and listening address."""

from __future__ import annotations

import pytest
from apphelpers import new_app


@pytest.fixture(autouse=True)
def app_environment(tmp_path, monkeypatch):
    """App settings, launch logs and the listening address, private to each test."""
    from streamlit import config as st_config

    settings = tmp_path / "app.yaml"
    settings.write_text("launchers: [boss@example.com]\n")
    monkeypatch.setenv("TOOLKIT_APP_CONFIG", str(settings))
    monkeypatch.setenv("TOOLKIT_APP_LOG_DIR", str(tmp_path / "app-logs"))
    monkeypatch.setenv("PLOOMBER_STATS_ENABLED", "false")
    previous = st_config.get_option("server.address")
    st_config.set_option("server.address", "127.0.0.1")
    yield
    st_config.set_option("server.address", previous)


@pytest.fixture
def app():
    """A fresh AppTest session of the whole app (router and pages)."""
    return new_app()
