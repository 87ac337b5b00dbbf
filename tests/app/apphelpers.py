"""Helpers for the app tests: AppTest sessions, element lookups, waiting for runs, and
fabricated runs (a record plus small outputs that satisfy their contracts) for pages that
only read results."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
from helpers import PROJECT_DIR

from toolkit import config as config_mod
from toolkit.data import io, schemas, storage
from toolkit.runs import store as runs
from toolkit.runs.record import RunRecord

APP_MAIN = PROJECT_DIR / "app" / "main.py"
XSS = "<img src=x onerror=alert(1)>"


def new_app():
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(APP_MAIN), default_timeout=90)


def widget(elements, key):
    """The element with this key among ``elements`` (e.g. ``at.slider``)."""
    return elements(key=key)


def button(at, label):
    matches = [b for b in at.button if b.label == label]
    assert matches, f"no button {label!r}; buttons: {[b.label for b in at.button]}"
    return matches[0]


def shown(markdown: str) -> str:
    """Markdown source as a reader sees it: backslash escapes removed."""
    return re.sub(r"\\(.)", r"\1", str(markdown))


def texts(at, *kinds: str) -> list[str]:
    """Every piece of text the page shows (of ``kinds``, default all), as read."""
    kinds = kinds or (
        "markdown",
        "caption",
        "text",
        "error",
        "warning",
        "info",
        "success",
        "code",
        "title",
        "subheader",
    )
    return [shown(e.value) for kind in kinds for e in getattr(at, kind)]


def wait_for_status(run_id, statuses, timeout=420, root=None):
    deadline = time.monotonic() + timeout
    record = None
    while time.monotonic() < deadline:
        try:
            record = runs.load(run_id, root)
        except runs.RunNotFound:
            record = None
        if record and record.status in statuses:
            return record
        time.sleep(1.0)
    raise AssertionError(f"run {run_id} not {statuses} after {timeout}s: {record}")


# ---------------------------------------------------------------------------
# Fabricated runs: contract-valid outputs and a record, in milliseconds
# ---------------------------------------------------------------------------


def _frames(names: list[str], price_change: float, currency: str = "USD"):
    ids = [f"P{i:04d}" for i in range(1, len(names) + 1)]
    categories = ["home" if i % 2 else "toys" for i in range(len(ids))]
    catalog = pd.DataFrame(
        {
            "product_id": ids,
            "product_name": names,
            "category": categories,
            "list_price": [20.0 + i for i in range(len(ids))],
            "unit_cost": [8.0] * len(ids),
            "currency": [currency] * len(ids),
        }
    )
    weeks = pd.date_range("2026-06-01", periods=26, freq="W-MON")
    weekly = pd.DataFrame(
        [
            {
                "product_id": pid,
                "category": cat,
                "week": week,
                "units": float(50 + 10 * np.sin(n / 3) + i),
                "revenue": float((50 + i) * 20),
                "avg_price": 20.0 + i,
                "promo_share": 0.0,
                "list_price": 20.0 + i,
                "unit_cost": 8.0,
            }
            for i, (pid, cat) in enumerate(zip(ids, categories, strict=True))
            for n, week in enumerate(weeks)
        ]
    )
    future = pd.date_range(weeks[-1] + pd.Timedelta(days=7), periods=8, freq="W-MON")
    forecasts = pd.DataFrame(
        [
            {
                "product_id": pid,
                "category": cat,
                "week": week,
                "step": step,
                "forecast_units": 45.0 + i,
                "elasticity": -1.5,
                "current_price": 20.0 + i,
                "unit_cost": 8.0,
            }
            for i, (pid, cat) in enumerate(zip(ids, categories, strict=True))
            for step, week in enumerate(future, start=1)
        ]
    )
    current = catalog["list_price"]
    changed = pd.Series([i % 2 == 0 for i in range(len(ids))])
    new = current.where(~changed, (current * (1 + price_change)).round(2))
    units = pd.Series([360.0 + i for i in range(len(ids))])
    plan = pd.DataFrame(
        {
            "product_id": ids,
            "category": categories,
            "current_price": current,
            "new_price": new,
            "price_change": ((new - current) / current).round(4),
            "unit_cost": 8.0,
            "baseline_units": units,
            "expected_units": units * 1.1,
            "baseline_revenue": units * current,
            "expected_revenue": units * 1.1 * new,
            "baseline_margin": units * (current - 8.0),
            "expected_margin": units * 1.1 * (new - 8.0),
            "markdown_cost": ((current - new).clip(lower=0) * units * 1.1).round(2),
            "changed": changed,
        }
    )
    return catalog, weekly, forecasts, plan


def make_run(
    root: str,
    run_id: str,
    *,
    names: list[str] | None = None,
    patches: tuple[str, ...] = (),
    price_change: float = -0.1,
    status: str = "succeeded",
    launcher: str = "analyst@example.com",
    failed_step: str | None = None,
    market: str = "US",
    currency: str = "USD",
    error: str | None = None,
    traceback: str | None = None,
    run_name: str | None = None,
) -> RunRecord:
    """Write a run record and outputs that satisfy their contracts, as a real run would.

    ``failed_step`` fails there: with a contract report, or with ``error`` and
    ``traceback`` when given; ``status="cancelled"`` with ``failed_step`` cancels there.
    """
    names = names or ["Aurora Lamp 1", "Nimbus Mug 2", "Vertex Robot 3", "Harbor Vase 4"]
    catalog, weekly, forecasts, plan = _frames(names, price_change, currency)
    resolved = config_mod.resolve(
        patches=[f'country="{market}"', 'period="2026-11"', 'category="all"', *patches]
    )
    base = storage.join(root, "cache", f"market={market}", "period=2026-11", "category=all")
    outputs = {
        "load_transform": {"data": ("weekly_sales.parquet", weekly, schemas.WeeklySales)},
        "forecast": {"data": ("forecasts.parquet", forecasts, schemas.Forecasts)},
        "optimize": {"data": ("plan.parquet", plan, schemas.Plan)},
    }
    steps: dict = {}
    now = dt.datetime.now(dt.UTC)
    for name in (
        "load_transform",
        "identify_underperformers",
        "forecast",
        "optimize",
        "format_output",
    ):
        folder = storage.join(base, name, f"key-{run_id}", f"{run_id}.1")
        if failed_step == name and status == "cancelled":
            steps[name] = {"status": "cancelled", "error": "run cancelled", "duration_s": 1.0}
            break
        if failed_step == name and error:
            steps[name] = {
                "status": "failed",
                "error": error,
                "traceback": traceback,
                "duration_s": 1.5,
            }
            break
        if failed_step == name:
            report = {
                "dataset": "RawSales",
                "url": storage.raw_url("US", "sales", root),
                "stage": "read",
                "n_rows": 120,
                "failures": [
                    {
                        "column": "units",
                        "check": "greater_than_or_equal_to(0)",
                        "count": 2,
                        "examples": [-1, -5],
                        "description": "units sold are never negative",
                    }
                ],
            }
            steps[name] = {
                "status": "failed",
                "error": "ContractError: RawSales contract failed on read",
                "report": [report],
                "debug": {},
                "duration_s": 1.5,
            }
            break
        urls = {}
        for product, (filename, frame, contract) in outputs.get(name, {}).items():
            urls[product] = storage.join(folder, filename)
            io.write(frame, urls[product], contract)
        if name == "load_transform":
            urls["catalog"] = storage.join(folder, "catalog.parquet")
            io.write(catalog, urls["catalog"], schemas.Catalog)
        if name == "optimize":
            urls["kpis"] = storage.join(folder, "kpis.json")
            revenue = float((plan["expected_revenue"] - plan["baseline_revenue"]).sum())
            io.write_json(
                {
                    "revenue_change": revenue,
                    "revenue_change_pct": 100 * revenue / float(plan["baseline_revenue"].sum()),
                    "margin_change": 1234.5,
                    "margin_change_pct": 2.5,
                    "volume_change": 144.0,
                    "volume_change_pct": 10.0,
                    "n_changes": int(plan["changed"].sum()),
                    "markdown_spent": float(plan["markdown_cost"].sum()),
                },
                urls["kpis"],
            )
        if name == "format_output":
            urls["csv"] = storage.join(folder, "recommendations.csv")
            storage.write_bytes(urls["csv"], b"run_id,product_id\n" + run_id.encode() + b",P0001\n")
        steps[name] = {
            "status": "succeeded",
            "reused": False,
            "outputs": urls,
            "duration_s": 2.0,
        }
    record = RunRecord.model_validate(
        {
            "id": run_id,
            "status": "failed" if failed_step and status != "cancelled" else status,
            "market": market,
            "period": "2026-11",
            "category": None,
            "launcher": launcher,
            "name": run_name,
            "created_at": (now - dt.timedelta(minutes=5)).isoformat(),
            "started_at": (now - dt.timedelta(minutes=5)).isoformat(),
            "finished_at": (now - dt.timedelta(minutes=4)).isoformat(),
            "heartbeat_at": (now - dt.timedelta(minutes=4)).isoformat(),
            "heartbeat_seconds": 5.0,
            "root": root,
            "inputs": {"configs": [], "patches": list(patches)},
            "config": resolved.as_dict(),
            "origins": {key: origin for key, _, origin in resolved.leaves()},
            "steps": steps,
            "events": [{"at": now.isoformat(), "message": "[1/5] load_transform: done in 2.0s"}]
            + (
                [{"at": now.isoformat(), "message": f"run cancelled by {launcher} on host"}]
                if status == "cancelled"
                else []
            ),
            "error": (
                "run cancelled"
                if status == "cancelled"
                else "a step failed; see its error and report"
                if failed_step
                else None
            ),
        }
    )
    runs.save(record, root)
    return record


# ---------------------------------------------------------------------------
# A real app server on loopback
# ---------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_app(
    tmp_path,
    root: str,
    app_yaml: str = "launchers: []\n",
    host: str = "localhost",
    worker: bool = False,
):
    """`streamlit run app/serve.py` (as `make app`) on a free loopback port, and with
    ``worker`` a `toolkit worker` for the runs it queues; yields the app's URL.

    Ready when it answers a request naming ``host`` (one of its allowed hosts). Every run
    the app started, the worker and the server are stopped at the end."""
    (tmp_path / "app.yaml").write_text(app_yaml)
    port = free_port()
    env = dict(
        os.environ,
        TOOLKIT_ROOT=root,
        TOOLKIT_APP_CONFIG=str(tmp_path / "app.yaml"),
        TOOLKIT_APP_LOG_DIR=str(tmp_path / "logs"),
        PLOOMBER_STATS_ENABLED="false",
        PLOOMBER_VERSION_CHECK_DISABLED="1",
    )
    log_file = tmp_path / f"server-{port}.log"
    log = open(log_file, "wb")  # noqa: SIM115 - closed in the finally below
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app/serve.py",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--server.headless",
            "true",
            "--server.fileWatcherType",  # an edit of the app during a test changes nothing
            "none",
        ],
        cwd=PROJECT_DIR,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    workers = []
    if worker:
        argv = [sys.executable, "-m", "toolkit.cli.commands", "worker", "--slots", "1"]
        workers.append(
            subprocess.Popen(
                [*argv, "--no-schedules", "--grace", "0"],
                cwd=PROJECT_DIR,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if raw_request(url, host, "/_stcore/health").endswith("200 OK"):
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise AssertionError("the app server did not start:\n" + log_file.read_text())
            time.sleep(0.3)
        yield url
    finally:
        for record in runs.list_runs(root):  # no run outlives the test
            if record.status in runs.ACTIVE and record.pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(os.getpgid(record.pid), signal.SIGTERM)
        for started in [*workers, process]:
            os.killpg(started.pid, signal.SIGTERM)
            try:
                started.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(started.pid, signal.SIGKILL)
                started.wait(timeout=10)
        log.close()


def raw_request(url: str, host: str, path: str = "/", websocket: bool = False) -> str:
    """Send one HTTP request (or websocket handshake) with this ``Host`` over a plain
    socket; return the status line of the answer."""
    import socket
    from urllib.parse import urlparse

    where = urlparse(url)
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "User-Agent: test"]
    if websocket:
        lines += [
            "Connection: Upgrade",
            "Upgrade: websocket",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        ]
    else:
        lines.append("Connection: close")
    with socket.create_connection((where.hostname, where.port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.split(b"\r\n", 1)[0].decode()


def check_forecast(root: str, record: RunRecord, period: str, sold: float | None) -> RunRecord:
    """Move a fabricated run to ``period`` and give it a check_forecast step, as a real run
    writes it: the run's forecast units for the period's weeks, and actual units of
    ``sold`` times the forecast (None: the data does not hold the period yet)."""
    from toolkit.pricing import actuals, periods

    weeks = periods.weeks_of(period)
    catalog, _, forecasts, _ = _frames(["A", "B", "C", "D"], -0.1)
    forecasts = forecasts.groupby("product_id").head(len(weeks)).copy()
    forecasts["week"] = list(weeks) * catalog.shape[0]
    held = forecasts[["product_id", "week"]].assign(
        units=forecasts["forecast_units"] * (sold or 0.0),
        revenue=forecasts["forecast_units"] * (sold or 0.0) * forecasts["current_price"],
    )
    rows, summary = actuals.forecast_vs_actual(forecasts, held if sold else held.iloc[:0], period)
    folder = storage.join(root, "cache", "check_forecast", record.id)
    outputs = {
        "data": storage.join(folder, "forecast_vs_actual.parquet"),
        "summary": storage.join(folder, "summary.json"),
    }
    io.write(rows, outputs["data"], schemas.ForecastVsActual)
    io.write_json(summary, outputs["summary"])
    steps = {name: step.model_dump() for name, step in record.steps.items()}
    steps["check_forecast"] = {"status": "succeeded", "outputs": outputs, "duration_s": 1.0}
    data = record.model_dump()
    moved = RunRecord.model_validate({**data, "period": period, "steps": steps})
    runs.save(moved, root)
    return moved
