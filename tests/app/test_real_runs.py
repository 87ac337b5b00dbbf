"""Real runs launched from the app: background process, live progress in another session,
cache reuse, cancel, results and comparison (small demo data; a few minutes in all)."""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import subprocess
import sys

import pytest
from apphelpers import PROJECT_DIR, new_app, shown, texts, wait_for_status
from streamlit import config as st_config

from toolkit.pricing import demo_data
from toolkit.runs import accuracy, runner
from toolkit.runs import store as runs

pytestmark = pytest.mark.slow  # whole pipelines: `make test-fast` leaves these out


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    """One store with small demo data, shared by this module's runs (so the cache works)."""
    base = tmp_path_factory.mktemp("app-runs")
    root = base / "store"
    demo_data.write(["US"], n_products=30, root=str(root))
    patch = pytest.MonkeyPatch()  # module-wide: set up before the per-test fixtures
    patch.setenv("TOOLKIT_ROOT", str(root))
    patch.setenv("TOOLKIT_APP_LOG_DIR", str(base / "app-logs"))
    patch.setenv("PLOOMBER_STATS_ENABLED", "false")
    address = st_config.get_option("server.address")
    st_config.set_option("server.address", "127.0.0.1")
    # The app queues runs; a worker runs them, as `make app` starts one.
    worker = subprocess.Popen(
        [sys.executable, "-m", "toolkit.cli.commands", "worker", "--slots", "1"]
        + ["--no-schedules", "--grace", "0"],
        env=dict(os.environ, TOOLKIT_ROOT=str(root), PLOOMBER_STATS_ENABLED="false"),
        cwd=PROJECT_DIR,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    yield str(root)
    os.killpg(worker.pid, signal.SIGTERM)
    worker.wait(timeout=60)
    st_config.set_option("server.address", address)
    for record in runs.list_runs(str(root)):  # never leave a run behind
        if record.status in runs.ACTIVE and record.pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(record.pid), signal.SIGTERM)
    patch.undo()


def launch_from_form(revenue: float, category: str | None = None):
    """Open the Launch page in a new session, set the revenue weight, click Launch."""
    at = new_app().run()
    if category:
        at.selectbox(key="launch.category").set_value(category).run()
    at.slider(key="cfg.optimize.weights.revenue").set_value(revenue).run()
    at.button(key="launch.go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    run_id = at.session_state["launch.last"]
    return at, run_id


@pytest.fixture(scope="module")
def first_run(demo_root):
    at, run_id = launch_from_form(0.5)
    # The record exists at once (queued), before the background process has done anything.
    record = runs.load(run_id)
    assert record.status in ("queued", "running")
    assert "Your latest run" in texts(at, "subheader")
    return at, run_id


def test_a_launched_run_shows_at_once_and_runs_in_the_background(first_run):
    at, run_id = first_run
    record = runs.load(run_id)
    assert record.launcher == getpass.getuser()  # local mode: the person at this computer
    assert "optimize.weights.revenue=0.5" in record.inputs.patches
    assert record.origins["optimize.weights.revenue"] == "--patch optimize.weights.revenue=0.5"


def test_another_session_sees_the_run_and_its_progress(first_run):
    _, run_id = first_run
    other = new_app().run()
    other.query_params["run"] = run_id
    other.switch_page("views/runs.py").run()
    assert run_id in other.dataframe[0].value["Run"].tolist()
    seen = texts(other)
    assert any(run_id in t for t in seen)
    for step in ("Load transform", "Forecast", "Format output"):
        assert any(step in t for t in seen), step  # a line per step, with its status
    assert other.get("progress")
    if runs.load(run_id).status in runs.ACTIVE:
        assert [b for b in other.button if b.label == "Cancel this run"]


def test_the_run_succeeds_and_its_results_show(first_run):
    _, run_id = first_run
    record = wait_for_status(run_id, ("succeeded", "failed", "cancelled", "interrupted"))
    assert record.status == "succeeded", runner.explain_failure(record)
    at = new_app().run()
    at.query_params["run"] = run_id
    at.switch_page("views/run_detail.py").run()
    assert not at.exception
    labels = [shown(m.label) for m in at.metric][:2]
    assert labels == ["Revenue change (USD)", "Margin change (USD)"]
    assert len(at.dataframe[0].value) == int(at.metric[3].value)  # the changed products
    # A month whose sales are in adds its forecast against actual and the error per period.
    checked = (accuracy.forecast_check(record) or {}).get("status") == "checked"
    assert len(at.get("vega_lite_chart")) == (5 if checked else 3)
    notebooks = [e.label for e in at.expander if " · " in e.label]
    assert len(notebooks) == 6 and all("Succeeded" in n for n in notebooks)


def test_a_second_run_reuses_cached_steps_and_compares(first_run):
    _, first = first_run
    wait_for_status(first, ("succeeded",))
    _, second = launch_from_form(0.6)
    record = wait_for_status(second, ("succeeded", "failed", "cancelled", "interrupted"))
    assert record.status == "succeeded", runner.explain_failure(record)
    steps = record.steps
    for name in ("load_transform", "identify_underperformers", "forecast"):
        assert steps[name].reused and steps[name].reused_from == first
    assert not steps["optimize"].reused

    at = new_app().run()
    at.query_params["run"] = second
    at.switch_page("views/runs.py").run()
    assert any("Reused from cache" in t for t in texts(at, "markdown"))
    assert any(f"reused from run {first}" in t for t in texts(at))

    compare = new_app().run()
    compare.query_params["runs"] = f"{first},{second}"
    compare.switch_page("views/compare.py").run()
    kpis, params = compare.dataframe[0].value, compare.dataframe[1].value
    assert any(c.startswith("Δ") for c in kpis.columns)
    row = params.set_index("Setting").loc["Objective weights: Revenue"]
    assert list(row.iloc[:2]) == ["0.5", "0.6"]


def test_a_run_can_be_cancelled_from_the_page(demo_root, first_run):
    wait_for_status(first_run[1], ("succeeded",))  # one run at a time on small machines
    at, run_id = launch_from_form(0.45, category="electronics")
    cancel = [b for b in at.button if b.label == "Cancel this run"]
    assert cancel, [b.label for b in at.button]
    cancel[0].click().run()
    record = wait_for_status(run_id, ("cancelled", "succeeded", "failed"), timeout=180)
    assert record.status == "cancelled"
