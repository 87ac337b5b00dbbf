from __future__ import annotations

import pytest
from helpers import toolkit, toolkit_env

from toolkit import settings
from toolkit.data import storage
from toolkit.runs import store as runs


@pytest.mark.parametrize("raw", ["abc", "0", "-1", "nan", "inf"])
def test_seconds_refuse_what_is_not_a_positive_number(monkeypatch, raw):
    monkeypatch.setenv("TOOLKIT_HEARTBEAT_SECONDS", raw)
    with pytest.raises(settings.SettingError, match="TOOLKIT_HEARTBEAT_SECONDS=.*positive"):
        settings.seconds("TOOLKIT_HEARTBEAT_SECONDS", 5.0)


@pytest.mark.parametrize("raw", ["3.5", "0", "x", "٣"])
def test_counts_refuse_what_is_not_a_whole_number(monkeypatch, raw):
    monkeypatch.setenv("TOOLKIT_STORAGE_MAX_ATTEMPTS", raw)
    with pytest.raises(settings.SettingError, match="TOOLKIT_STORAGE_MAX_ATTEMPTS"):
        settings.count("TOOLKIT_STORAGE_MAX_ATTEMPTS", 3)


def test_unset_or_blank_knobs_take_their_default(monkeypatch):
    monkeypatch.setenv("TOOLKIT_HEARTBEAT_SECONDS", " ")
    monkeypatch.delenv("TOOLKIT_STORAGE_MAX_ATTEMPTS", raising=False)
    assert settings.seconds("TOOLKIT_HEARTBEAT_SECONDS", 5.0) == 5.0
    assert settings.count("TOOLKIT_STORAGE_MAX_ATTEMPTS", 3) == 3
    monkeypatch.setenv("TOOLKIT_HEARTBEAT_SECONDS", "0.5")
    assert settings.seconds("TOOLKIT_HEARTBEAT_SECONDS", 5.0) == 0.5


def test_a_bad_knob_is_one_line_from_the_command(local_root):
    env = toolkit_env(local_root, TOOLKIT_HEARTBEAT_SECONDS="abc")
    result = toolkit(["run", "--patch", "country=NO"], env, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "toolkit: TOOLKIT_HEARTBEAT_SECONDS='abc': expected a positive number of seconds, such as 5"
    )


@pytest.mark.parametrize(
    "name, read",
    [
        ("TOOLKIT_STORAGE_CONNECT_TIMEOUT", storage.connect_timeout),
        ("TOOLKIT_STORAGE_READ_TIMEOUT", storage.read_timeout),
        ("TOOLKIT_STORAGE_MAX_ATTEMPTS", storage.max_attempts),
        ("TOOLKIT_HEARTBEAT_SECONDS", runs.heartbeat_seconds),
    ],
)
def test_every_numeric_knob_is_read_through_settings(monkeypatch, name, read):
    monkeypatch.setenv(name, "-2")
    with pytest.raises(settings.SettingError, match=f"^{name}='-2': expected a "):
        read()
    monkeypatch.setenv(name, "2")
    assert read() == 2


def test_a_bad_storage_knob_is_one_line_before_any_request():
    env = toolkit_env("s3://bucket/prefix", TOOLKIT_STORAGE_READ_TIMEOUT="soon")
    result = toolkit(["runs", "list"], env, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "toolkit: TOOLKIT_STORAGE_READ_TIMEOUT='soon': expected a positive number of seconds, "
        "such as 5"
    )
