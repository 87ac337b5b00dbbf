"""Launching: an argv list, never a shell; hostile values are refused or stay plain data."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys

import pytest
from logic import access, forms, launch

from toolkit import config as config_mod
from toolkit import project
from toolkit.data import storage
from toolkit.runs import store as runs

US = forms.Identity("US", "2026-11")
LOCAL = access.Viewer.local_user()
HOSTILE = ["US; touch x", "$(touch x)", "`touch x`", "--help", "x && touch x", "| touch x"]


def values(**changes):
    base = forms.values_of(forms.baseline(US))
    return dict(base, **changes)


def test_argv_is_a_list_with_each_patch_attached_to_its_option():
    checked = forms.check(US, values(**{"optimize.weights.revenue": 0.55}))
    argv = launch.build_argv("20261129-010203-US-2026-11-abcdef", checked.patches)
    assert argv[:6] == [
        sys.executable,
        "-m",
        "toolkit.cli.commands",
        "run",
        "--run-id",
        "20261129-010203-US-2026-11-abcdef",
    ]
    assert argv[6:] == [
        '--patch=country="US"',
        '--patch=period="2026-11"',
        '--patch=category="all"',
        "--patch=optimize.weights.revenue=0.55",
    ]


@pytest.mark.parametrize("run_id", ["../x", "a b", "; touch x", "-rf", "", "x" * 200])
def test_argv_refuses_odd_run_ids(run_id):
    with pytest.raises(ValueError):
        launch.build_argv(run_id, [])


@pytest.mark.parametrize(
    "patch", ["shell=$(id)", "optimize.weights.revenue; touch x=1", "forecast.horizon={a: 1}"]
)
def test_argv_refuses_keys_outside_the_model_and_non_literals(patch):
    with pytest.raises((ValueError, config_mod.ConfigError)):
        launch.build_argv("run-1", [patch])


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_identity_values_are_refused_and_nothing_runs(
    local_root, tmp_path, monkeypatch, hostile
):
    monkeypatch.setenv("TOOLKIT_PROJECT", str(project.root()))
    monkeypatch.chdir(tmp_path)  # where a shell would have written `x`
    for identity in (
        forms.Identity(hostile, "2026-11"),
        forms.Identity("US", hostile),
        forms.Identity("US", "2026-11", hostile),
    ):
        with pytest.raises(launch.LaunchRefused):
            launch.launch(identity, values(), LOCAL, access.AppSettings())
    with pytest.raises(launch.LaunchRefused):
        launch.launch(US, values(**{"forecast.horizon": hostile}), LOCAL, access.AppSettings())
    assert storage.listdir(storage.join(local_root, "runs")) == []
    assert not (tmp_path / "x").exists()


def cli(patches, cwd):
    """What the launched process would read from these patches: `toolkit config show`."""
    argv = launch.build_argv("run-1", patches)
    assert argv[3:6] == ["run", "--run-id", "run-1"]
    argv[3:6] = ["config", "show", "--json"]  # same interpreter, same patch arguments
    env = dict(os.environ, TOOLKIT_PROJECT=str(project.root()))
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_an_accepted_value_reaches_the_run_exactly(tmp_path):
    levels = [-0.25, -0.1, 0.0, 0.05]
    checked = forms.check(US, values(**{"optimize.constraints.price_levels": levels}))
    assert checked.ok
    result = cli(checked.patches, tmp_path)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["optimize.constraints.price_levels"] == {
        "value": levels,
        "origin": f"--patch {checked.changes[0]}",
    }


def test_an_option_like_value_is_a_value_not_an_option(tmp_path):
    result = cli(['forecast.horizon="--help"'], tmp_path)
    assert result.returncode == 2
    assert "Usage:" not in result.stdout + result.stderr
    assert "forecast.horizon" in result.stderr and "--help" in result.stderr


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("output.endpoint", "http://169.254.169.254/latest/meta-data/"),
        ("output.allow_addresses", ["169.254.0.0/16"]),
        ("execution.scheduler", "tcp://scheduler.attacker.example:8786"),
        ("execution.executor", "dask"),
        ("execution.kernel", "fresh"),
    ],
)
def test_a_launch_may_not_set_operator_settings(local_root, key, value):
    fake_raw_data(local_root)  # so only the setting can be the reason
    with pytest.raises(launch.LaunchRefused) as caught:
        launch.launch(US, values(**{key: value}), LOCAL, access.AppSettings())
    assert str(caught.value) == f"{key}: {forms.OPERATOR_SETTING}"
    assert storage.listdir(storage.join(local_root, "runs")) == []
    # Nor can a crafted argv: the patch itself is refused, whatever its value.
    with pytest.raises(ValueError, match=f"'{key}' is an operator setting"):
        launch.build_argv("run-1", [f"{key}={forms.format_value(value)}"])


def test_a_refused_launch_says_why_per_field(local_root):
    zero = {f"optimize.weights.{k}": 0.0 for k in ("revenue", "margin", "volume")}
    with pytest.raises(launch.LaunchRefused) as caught:
        launch.launch(US, values(**zero), LOCAL, access.AppSettings())
    assert caught.value.problems[0].group == "weights"
    assert storage.listdir(storage.join(local_root, "runs")) == []


def test_a_market_without_data_is_refused_before_anything_is_written(local_root):
    with pytest.raises(launch.LaunchRefused, match="no sales data"):
        launch.launch(US, values(), LOCAL, access.AppSettings())
    assert storage.listdir(storage.join(local_root, "runs")) == []


def test_launch_log_is_only_read_for_valid_ids(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_APP_LOG_DIR", str(tmp_path))
    (tmp_path / "run-1.log").write_text("line 1\nprogress 10%\rprogress 100%\n")
    assert launch.launch_log("run-1") == "line 1\nprogress 100%"
    assert launch.launch_log("../etc/passwd") is None


def fake_raw_data(root):
    storage.write_bytes(storage.raw_url("US", "catalog", root), b"not read by these tests")


def test_launch_queues_the_run_for_a_worker_and_shows_its_position(local_root):
    from toolkit.runs import queue

    fake_raw_data(local_root)
    first = launch.launch(US, values(), LOCAL, access.AppSettings())
    second = launch.launch(US, values(), LOCAL, access.AppSettings())
    assert (first.position, second.position) == (1, 2)
    record = runs.load(second.run_id)
    assert record.status == "queued" and record.launched_from == "app"
    assert record.launcher == LOCAL.launcher
    much_later = runs.parse_time(record.created_at) + dt.timedelta(hours=2)
    assert runs.effective_status(record, at=much_later) == "queued"  # waits for a worker
    # Cancelled before it starts: off the queue, the next one moves up.
    launch.cancel(first.run_id, LOCAL, access.AppSettings())
    assert runs.load(first.run_id).status == "cancelled"
    assert queue.positions() == {second.run_id: 1}
