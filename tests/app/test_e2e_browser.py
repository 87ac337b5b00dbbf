"""End to end in a real headless Chromium: serve the app, launch a run from the form,
follow it, open its recommendations and charts. Playwright drives Debian's chromium and
never downloads a browser."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from apphelpers import PROJECT_DIR, make_run, serve_app, wait_for_status

from toolkit.pricing import demo_data
from toolkit.runs import store as runs

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = PROJECT_DIR / "test-artifacts"
SCREENSHOTS = ARTIFACTS / "screenshots"  # each page at 1400 and 390 px, kept for review
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


@pytest.fixture
def server(tmp_path):
    """The app as `make app` serves it (app/serve.py), on a free loopback port, with a
    private demo store of two markets in two currencies."""
    root = tmp_path / "store"
    demo_data.write(["US", "DE"], n_products=30, root=str(root))
    with serve_app(tmp_path, str(root)) as url:
        yield url, str(root)


@pytest.fixture
def server_with_worker(tmp_path):
    """``server`` with a `toolkit worker` that runs what the app queues (as `make app`)."""
    root = tmp_path / "store"
    demo_data.write(["US"], n_products=30, root=str(root))
    with serve_app(tmp_path, str(root), worker=True) as url:
        yield url, str(root)


@pytest.fixture
def browser():
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    expect.set_options(timeout=90_000)  # the first page load imports pandas & co.
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def open_page(browser, width: int = 1400, headers: dict | None = None):
    # Tall: Streamlit scrolls inside the page, so a screenshot shows only the viewport.
    page = browser.new_page(viewport={"width": width, "height": 2400}, extra_http_headers=headers)
    page.set_default_timeout(90_000)
    outside = []  # every request to a host other than the app's
    page.on(
        "request",
        lambda request: (
            outside.append(request.url)
            if not request.url.startswith(("http://127.0.0.1", "data:", "blob:"))
            else None
        ),
    )
    return page, outside


def settle(page) -> None:
    """Wait until Streamlit has finished the script run (no spinner, no stale elements)."""
    from playwright.sync_api import expect

    expect(page.locator('[data-testid="stStatusWidget"]')).to_have_count(0)
    expect(page.locator('[data-testid="stSkeleton"]')).to_have_count(0)
    expect(page.locator('[data-stale="true"]')).to_have_count(0)
    time.sleep(1.5)  # charts draw after the run ends; only for the screenshot


def test_launch_follow_and_read_results_in_a_browser(server_with_worker, browser):
    """The form's value is what the run gets; the run is followed live; its results open
    on pictures, then the recommendations table."""
    from playwright.sync_api import expect

    url, root = server_with_worker
    page, outside = open_page(browser)
    try:
        page.goto(url)
        launch = page.get_by_role("button", name="Launch run")
        expect(launch).to_be_enabled()
        expect(page.get_by_text("Local mode: no sign-in is configured")).to_be_visible()
        discount = page.get_by_role("spinbutton", name="Max discount (%)")
        discount.fill("20")
        discount.press("Tab")
        expect(
            page.get_by_text(re.compile(r"^1 setting\(s\) changed in this form"))
        ).to_be_visible()
        expect(launch).to_be_enabled()
        launch.click()

        # The run shows at once, queued or running, with its steps.
        expect(page.get_by_text("Your latest run")).to_be_visible()
        expect(page.get_by_text("Load transform").first).to_be_visible()
        ids = [r.id for r in runs.list_runs(root)]
        assert len(ids) == 1
        run_id = ids[0]
        record = runs.load(run_id, root)
        assert record.status in runs.ACTIVE
        assert record.config["optimize"]["constraints"]["max_discount"] == 0.2  # as typed

        # The panel follows it: its time ticks while it runs, and it says how it ended.
        running = page.get_by_text(re.compile(r"running for \d+ s")).first
        expect(running).to_be_visible()
        expect(running).not_to_have_text(running.inner_text())  # a later time, no reload
        record = wait_for_status(
            run_id, ("succeeded", "failed", "cancelled", "interrupted"), root=root
        )
        assert record.status == "succeeded", record.error
        expect(page.get_by_text(re.compile(r"took \d+"))).to_be_visible()
        expect(page.get_by_text("runs in the background")).to_have_count(0)
        expect(page.get_by_role("button", name="Cancel this run")).to_have_count(0)

        page.get_by_role("link", name="Follow it on the Runs page").click()
        expect(page.get_by_role("heading", name="Runs")).to_be_visible()
        expect(page.get_by_text("6 of 6 steps done").first).to_be_visible()

        # Pictures first: KPI cards against their limits and charts, then the table.
        page.goto(f"{url}/run_detail?run={run_id}")
        expect(page.get_by_role("heading", name="Run results")).to_be_visible()
        expect(page.get_by_text("Revenue change (USD)")).to_be_visible()
        expect(page.get_by_text(re.compile(r"USD budget")).first).to_be_visible()
        chart = page.locator('[data-testid="stVegaLiteChart"]').first
        expect(chart.locator("canvas, svg").first).to_be_visible()
        settle(page)
        page.screenshot(path=str(SCREENSHOTS / "results-real-run-1400.png"), full_page=True)
        page.get_by_role("tab", name=re.compile("Recommendations")).click()
        products = page.get_by_text(re.compile(r"^\d+ products\."))
        expect(products).to_be_visible()
        assert int(products.inner_text().split()[0]) > 0
        rows = page.locator('[data-testid="stDataFrame"]').first.locator('[role="row"]')
        expect(rows.nth(1)).to_be_attached()  # header row plus at least one data row
        assert outside == [], outside  # no request to any outside host
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "app-e2e-failure.png"), full_page=True)
        raise


def test_a_cancel_reads_cancelling_until_the_run_is_recorded_cancelled(server, browser):
    """No worker here: the launched run waits in the queue until it is cancelled."""
    from playwright.sync_api import expect

    url, root = server
    page, outside = open_page(browser)
    page.goto(url)
    name = page.get_by_role("textbox", name="Run name (optional)")
    name.fill("To be cancelled")
    name.press("Enter")  # a text box hands its value over on Enter or when it loses focus
    expect(page.get_by_text("Press Enter to apply")).to_have_count(0)
    page.get_by_role("button", name="Launch run").click()
    expect(page.get_by_text("Your latest run")).to_be_visible()
    page.get_by_role("button", name="Cancel this run").click()
    expect(page.get_by_role("button", name="Cancelling…")).to_be_disabled()
    expect(page.get_by_text(re.compile("This run was cancelled by"))).to_be_visible()
    expect(page.get_by_role("button", name="Cancelling…")).to_have_count(0)
    [record] = runs.list_runs(root)
    assert (record.status, record.name) == ("cancelled", "To be cancelled")
    assert outside == [], outside


def test_an_out_of_range_value_cannot_launch(server, browser):
    from playwright.sync_api import expect

    url, root = server
    page, _ = open_page(browser)
    page.goto(url)
    launch = page.get_by_role("button", name="Launch run")
    expect(launch).to_be_enabled()
    for label, typed, words in [
        ("Max discount (%)", "500", "Max discount: must be at least 0%, below 100%; it is 500%"),
        ("Max changes", "99999", "Max changes: must be 0 to 10,000; it is 99,999"),
    ]:
        field = page.get_by_role("spinbutton", name=label)
        field.fill(typed)
        field.press("Tab")
        expect(page.get_by_text(words).first).to_be_visible()  # in words, next to the field
        expect(field).to_have_value(re.compile(typed))  # the box keeps what was typed
        expect(launch).to_be_disabled()
        expect(page.get_by_text(re.compile("Launch is disabled until"))).to_be_visible()
    settle(page)
    page.screenshot(path=str(SCREENSHOTS / "launch-invalid-1400.png"), full_page=True)
    launch.click(force=True)  # a click on the disabled button does nothing
    time.sleep(2)
    assert runs.list_runs(root) == []


@pytest.mark.parametrize(
    "path",
    [
        "/?from_run=nope-123",
        "/run_detail?run=does-not-exist",
        "/runs?run=does-not-exist",
        "/compare?runs=us-1,nope-9",
    ],
)
def test_a_bad_run_id_in_a_url_names_it_and_offers_the_way_back(server, browser, path):
    from playwright.sync_api import expect

    url, root = server
    make_run(root, "us-1")
    make_run(root, "us-2")
    page, _ = open_page(browser)
    page.goto(url + path)
    missing = re.search(r"=(?:us-1,)?([\w-]+)$", path).group(1)
    expect(page.get_by_text(f"There is no run '{missing}'")).to_be_visible()
    expect(page.get_by_role("link", name="See the latest runs")).to_be_visible()
    expect(page.get_by_text("Traceback")).to_have_count(0)
    expect(page.locator('[data-testid="stException"]')).to_have_count(0)
    expect(page.locator('[data-testid="stMetric"]')).to_have_count(0)  # no other run instead
    page.get_by_role("link", name="See the latest runs").click()
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()


def test_every_page_at_desktop_and_phone_width(server, browser):
    """A screenshot of each page at 1400 and 390 px, kept in test-artifacts/screenshots/
    for review; Compare of two markets says it does not mix currencies; nothing is fetched
    from another host."""
    from playwright.sync_api import expect

    url, root = server
    make_run(root, "us-1")
    make_run(root, "us-2", patches=("optimize.constraints.max_discount=0.2",), price_change=-0.2)
    make_run(root, "de-1", market="DE", currency="EUR")
    make_run(root, "us-failed", failed_step="forecast", error="ValueError: too few weeks")
    make_run(root, "us-cancelled", status="cancelled", failed_step="forecast")
    pages = {
        "launch": ("/", "Launch a run"),
        "runs": ("/runs?run=us-2", "Runs"),
        "results": ("/run_detail?run=us-2", "Run results"),
        "results-failed": ("/run_detail?run=us-failed", "Run results"),
        "results-cancelled": ("/run_detail?run=us-cancelled", "Run results"),
        "compare": ("/compare?runs=us-1,us-2", "Compare runs"),
        "compare-markets": ("/compare?runs=us-1,de-1", "Compare runs"),
    }
    for width in (1400, 390):
        page, outside = open_page(browser, width)
        for name, (path, heading) in pages.items():
            page.goto(url + path)
            expect(page.get_by_role("heading", name=heading)).to_be_visible()
            if name == "compare-markets":
                expect(page.get_by_text(re.compile("different currencies"))).to_be_visible()
            settle(page)
            page.screenshot(path=str(SCREENSHOTS / f"{name}-{width}.png"), full_page=True)
            assert page.locator('[data-testid="stException"]').count() == 0, name
        if width == 390:  # the sidebar starts closed on a phone, never over the page
            expect(page.locator('[data-testid="stSidebar"]')).to_have_attribute(
                "data-collapsed", "true"
            )
        assert outside == [], outside
        page.close()


TRACEBACK = 'Traceback (most recent call last):\n  File "/srv/secret/toolkit/x.py", line 1'


def test_the_operator_view_is_hidden_from_a_signed_in_non_operator(tmp_path, browser):
    """Signed in through a proxy (configs/app.yaml identity_header): a listed operator sees
    the technical layer of a failed run, anyone else its explanation only."""
    from playwright.sync_api import expect

    root = str(tmp_path / "store")
    make_run(root, "us-f", failed_step="forecast", error="ValueError: x", traceback=TRACEBACK)
    settings = (
        "launchers: [ops@example.com]\noperators: [ops@example.com]\n"
        "identity_header: X-Forwarded-Email\n"
    )
    with serve_app(tmp_path, root, app_yaml=settings) as url:
        for email, operator in (("viewer@example.com", False), ("ops@example.com", True)):
            page, outside = open_page(browser, headers={"X-Forwarded-Email": email})
            page.goto(f"{url}/run_detail?run=us-f")
            expect(page.get_by_role("heading", name="Run results")).to_be_visible()
            expect(page.get_by_text("Step Forecast failed: ValueError: x")).to_be_visible()
            sidebar = page.locator('[data-testid="stSidebar"]')
            expect(sidebar.get_by_text(email)).to_be_visible()
            expect(sidebar.get_by_text("Local mode")).to_have_count(0)
            count = 1 if operator else 0
            expect(page.get_by_role("tab", name=re.compile("Files"))).to_have_count(count)
            expect(page.get_by_role("tab", name=re.compile("notebooks"))).to_have_count(count)
            expect(page.get_by_text(re.compile(r"\(for operators\)"))).to_have_count(count)
            expect(sidebar.get_by_text("Results are read from")).to_have_count(count)
            if not operator:
                expect(page.get_by_text("/srv/secret")).to_have_count(0)
                expect(page.get_by_text(root)).to_have_count(0)
            assert outside == [], outside
            page.close()
        page, _ = open_page(browser)  # no header: not through the proxy
        page.goto(url)
        expect(page.get_by_text(re.compile("signed in through a proxy"))).to_be_visible()
        expect(page.get_by_role("heading", name="Launch a run")).to_have_count(0)
        page.close()
