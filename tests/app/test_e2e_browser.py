"""End to end in a real headless Chromium: serve the app, launch a run from the form,
follow it, open its recommendations and charts. Playwright drives Debian's chromium and
never downloads a browser."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from apphelpers import PROJECT_DIR, wait_for_status

from toolkit.pricing import demo_data
from toolkit.runs import store as runs

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = PROJECT_DIR / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (CI's .ci/run installs it: "
        "apt-get install chromium); Playwright never downloads a browser",
    ),
]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """`streamlit run app/main.py` on a free loopback port, with a private demo store."""
    root = tmp_path / "store"
    demo_data.write(["US"], n_products=30, root=str(root))
    (tmp_path / "app.yaml").write_text("launchers: []\n")
    port = free_port()
    env = dict(
        os.environ,
        TOOLKIT_ROOT=str(root),
        TOOLKIT_APP_CONFIG=str(tmp_path / "app.yaml"),
        TOOLKIT_APP_LOG_DIR=str(tmp_path / "logs"),
        PLOOMBER_STATS_ENABLED="false",
        PLOOMBER_VERSION_CHECK_DISABLED="1",
    )
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed in the finally below
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app/main.py",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--server.headless",
            "true",
        ],
        cwd=PROJECT_DIR,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise AssertionError(
                    "the app server did not start:\n" + (tmp_path / "server.log").read_text()
                )
            time.sleep(0.3)
        yield url, str(root)
    finally:
        for record in runs.list_runs(str(root)):  # no run outlives the test
            if record.status in runs.ACTIVE and record.pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(os.getpgid(record.pid), signal.SIGTERM)
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()


def test_launch_follow_and_read_results_in_a_browser(server):
    from playwright.sync_api import expect, sync_playwright

    url, root = server
    ARTIFACTS.mkdir(exist_ok=True)
    expect.set_options(timeout=90_000)  # the first page load imports pandas & co.
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1800})
        page.set_default_timeout(90_000)
        try:
            page.goto(url)
            launch = page.get_by_role("button", name="Launch run")
            expect(launch).to_be_enabled()
            expect(page.get_by_text("Local mode: no sign-in is configured")).to_be_visible()
            launch.click()

            # The run shows at once, queued or running, with its steps.
            expect(page.get_by_text("Your latest run")).to_be_visible()
            expect(page.get_by_text("Load transform").first).to_be_visible()
            ids = [r.id for r in runs.list_runs(root)]
            assert len(ids) == 1
            run_id = ids[0]
            assert runs.load(run_id, root).status in runs.ACTIVE

            # Follow it on the Runs page while it runs in the background.
            page.get_by_role("link", name="Follow it on the Runs page").click()
            expect(page.get_by_role("heading", name="Runs")).to_be_visible()
            expect(page.get_by_text(re.compile(r"\d of 5 steps done")).first).to_be_visible()
            record = wait_for_status(
                run_id, ("succeeded", "failed", "cancelled", "interrupted"), root=root
            )
            assert record.status == "succeeded", record.error

            # Its recommendations: a table with rows, a chart that renders.
            page.goto(f"{url}/run_detail?run={run_id}")
            expect(page.get_by_role("heading", name="Run results")).to_be_visible()
            expect(page.get_by_text(re.compile(r"Revenue change, USD"))).to_be_visible()
            products = page.get_by_text(re.compile(r"^\d+ products\."))
            expect(products).to_be_visible()
            assert int(products.inner_text().split()[0]) > 0
            table = page.locator('[data-testid="stDataFrame"]').first
            expect(table).to_be_visible()
            rows = table.locator('[role="row"]')
            expect(rows.nth(1)).to_be_attached()  # header row plus at least one data row
            page.screenshot(path=str(ARTIFACTS / "app-e2e-recommendations.png"), full_page=True)
            page.get_by_role("tab", name=re.compile("Charts")).click()
            chart = page.locator('[data-testid="stVegaLiteChart"]').first
            expect(chart).to_be_visible()
            expect(chart.locator("canvas, svg").first).to_be_visible()
            time.sleep(1.5)  # let the chart finish drawing for the screenshot
            page.screenshot(path=str(ARTIFACTS / "app-e2e.png"), full_page=True)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "app-e2e-failure.png"), full_page=True)
            raise
        finally:
            browser.close()
