"""Runs on a real S3 API (moto over HTTP) and on local disk: isolated, cached, resumable."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys

import pandas as pd
import pytest
from helpers import (
    PROJECT_DIR,
    TOOLKIT,
    Receiver,
    export_of,
    new_bucket,
    project_copy,
    toolkit,
    toolkit_env,
    wait_for,
)

from toolkit.data import storage
from toolkit.pricing import demo_data
from toolkit.runs import cache
from toolkit.runs import record as record_mod
from toolkit.runs import store as runs
from toolkit.runs.record import RunRecord, StepRecord

pytestmark = pytest.mark.slow  # whole pipelines: `make test-fast` leaves these out


def record_of(root, run_id):
    os.environ["TOOLKIT_ROOT"] = str(root)
    return runs.load(run_id, root=str(root))


def run_id_from(output: str) -> str:
    return next(line.split()[1] for line in output.splitlines() if line.startswith("run "))


def plan_of(record):
    import io

    return pd.read_parquet(io.BytesIO(storage.read_bytes(record.steps["optimize"].outputs["data"])))


@pytest.fixture(scope="module")
def baseline(s3_env):
    """One finished run on S3 with small demo data; later tests build on its cache."""
    root = new_bucket(s3_env, "runs-baseline")
    os.environ["TOOLKIT_ROOT"] = root
    demo_data.write(["US"], n_products=30, root=root)
    result = toolkit(["run"], toolkit_env(root))
    return root, run_id_from(result.stdout)


def test_run_prints_id_progress_and_outputs_and_records_everything(baseline):
    root, run_id = baseline
    record = record_of(root, run_id)
    assert record.status == "succeeded"
    assert record.schema_version == record_mod.SCHEMA_VERSION
    assert record.launcher and record.versions["ploomber"] == "0.23.3"
    assert record.origins["optimize.weights.margin"] == "configs/defaults.yaml"
    for name, step in record.steps.items():
        assert step.status == "succeeded", name
        assert step.cache_key and step.outputs
        assert all(url.startswith(root) for url in step.outputs.values())
    assert storage.exists(record.config_url)


def test_weight_change_reexecutes_only_the_last_steps(baseline):
    root, first = baseline
    env = toolkit_env(root)
    out = toolkit(["run", "--patch", "optimize.weights.margin=0.9"], env).stdout
    second = run_id_from(out)
    record = record_of(root, second)
    reused = {name for name, step in record.steps.items() if step.reused}
    # The forecast check reads no weights: it is reused too.
    assert reused == {"load_transform", "identify_underperformers", "forecast", "check_forecast"}
    assert record.steps["load_transform"].reused_from == first
    assert not record.steps["optimize"].reused

    listed = json.loads(toolkit(["runs", "list", "--json"], env).stdout)
    row = next(r for r in listed if r["id"] == second)
    assert row["steps"]["forecast"] == {"status": "reused", "reused": True}
    assert {"id", "status", "market", "period", "launcher", "started_at", "duration_s"} <= set(row)

    diff = json.loads(toolkit(["runs", "diff", first, second, "--json"], env).stdout)
    changed = {row["key"]: row for row in diff["config"]}
    assert set(changed) == {"optimize.weights.margin"}
    assert changed["optimize.weights.margin"]["b_origin"] == "--patch optimize.weights.margin=0.9"
    assert diff["kpis"]["margin_change"]["delta"] >= 0  # more weight on margin, no less margin
    logs = toolkit(["runs", "logs", second, "--step", "optimize"], env).stdout
    assert "reused from run" in logs and "optimize notebook output" in logs


def test_concurrent_runs_equal_serial_runs(s3_env):
    root = new_bucket(s3_env, "runs-concurrent")
    os.environ["TOOLKIT_ROOT"] = root
    demo_data.write(["US"], n_products=30, root=root)
    env = toolkit_env(root)
    procs = [
        subprocess.Popen(
            TOOLKIT + ["run"],
            env=env,
            cwd=PROJECT_DIR,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    ids = []
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
        ids.append(run_id_from(out))
    serial = run_id_from(toolkit(["run", "--force"], env).stdout)
    records = [record_of(root, i) for i in ids + [serial]]
    assert all(r.status == "succeeded" for r in records)
    for record in records[1:]:
        pd.testing.assert_frame_equal(plan_of(records[0]), plan_of(record))
        pd.testing.assert_frame_equal(export_of(records[0]), export_of(record))
    # Every execution published into its own attempt folder: no key written twice.
    fs, base = storage.filesystem(storage.join(root, "cache"))
    manifests = [p for p in fs.find(base) if p.endswith(cache.MANIFEST)]
    assert len(manifests) == len(set(manifests))
    owners = {json.loads(fs.cat_file(p))["run_id"] for p in manifests}
    assert owners <= set(ids + [serial])


def test_a_reused_kernel_gives_what_fresh_kernels_give_and_outlives_no_run(s3_env):
    import psutil

    # Its own store: a second execution of the same keys would change what later tests
    # of the baseline's cache find.
    root = new_bucket(s3_env, "runs-kernels")
    os.environ["TOOLKIT_ROOT"] = root
    demo_data.write(["US"], n_products=30, root=root)
    env = toolkit_env(root)
    reused_run = run_id_from(toolkit(["run"], env).stdout)
    fresh_run = run_id_from(
        toolkit(["run", "--force", "--patch", "execution.kernel=fresh"], env).stdout
    )
    reused, fresh = record_of(root, reused_run), record_of(root, fresh_run)
    assert reused.config["execution"]["kernel"] == "reuse"
    pd.testing.assert_frame_equal(plan_of(reused), plan_of(fresh))
    pd.testing.assert_frame_equal(export_of(reused), export_of(fresh))
    for name, step in reused.steps.items():
        cells = json.loads(storage.read_bytes(step.outputs["nb"]))["cells"]
        counts = [c["execution_count"] for c in cells if c["cell_type"] == "code"]
        assert counts == list(range(1, len(counts) + 1)), f"{name} did not start afresh"

    def kernel_of_this_root(process):
        try:
            return "ipykernel" in " ".join(process.cmdline()) and (
                process.environ().get("TOOLKIT_ROOT") == root
            )
        except psutil.Error:
            return False

    assert not [p.pid for p in psutil.process_iter() if kernel_of_this_root(p)]


def test_reader_sees_a_run_finished_by_another_process(baseline):
    root, _ = baseline
    os.environ["TOOLKIT_ROOT"] = root
    before = {r.id for r in runs.list_runs(root)}  # a long-lived reader lists first
    new = run_id_from(toolkit(["run"], toolkit_env(root)).stdout)  # fully cached
    after = {r.id: r for r in runs.list_runs(root)}
    assert new not in before and after[new].status == "succeeded"


def test_a_fully_cached_run_imports_neither_ploomber_nor_pandas(baseline):
    """Planning reads pipeline.yaml itself; Ploomber (seconds to import) only runs steps,
    and the summary reads its tables with Arrow."""
    root, first = baseline
    script = (
        "import sys\n"
        "from toolkit.cli.commands import main\n"
        "main(['run'], standalone_mode=False)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'ploomber')\n"
        "print('ploomber modules:', loaded)\n"
        "print('pandas loaded:', 'pandas' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=toolkit_env(root),
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count(f": reused from run {first}") == 6  # every step cached
    assert "ploomber modules: []" in result.stdout, result.stdout[-3000:]
    assert "pandas loaded: False" in result.stdout
    assert "Forecast backtest WAPE: model " in result.stdout


def test_the_summary_prints_the_plan_as_pandas_would(tmp_path, local_root):
    from toolkit.pricing import forecasting
    from toolkit.runs import runner

    plan = pd.DataFrame(
        {
            "product_id": ["P1", "P22", "P333"],
            "category": ["toys", "grocery", "electronics"],
            "current_price": [1234.5, 2.8, 19.4],
            "new_price": [987.6, 2.24, 19.4],
            "price_change": [-0.2, -0.2, 0.0],
            "expected_margin": [5000.0, 100.0, 50.0],
            "baseline_margin": [1750.5, 777.0, 50.0],
            "changed": [True, True, False],
        }
    )
    accuracy = pd.DataFrame(
        {
            "product_id": ["P1", "P22"],
            "model_mae": [2.0, 1.0],
            "naive_mae": [3.0, float("nan")],
            "model_wape": [0.2, float("nan")],
            "naive_wape": [0.3, 0.5],
            "n_weeks": [12, 12],
        }
    )
    urls = {name: f"{local_root}/{name}" for name in ("plan", "accuracy", "kpis")}
    plan.to_parquet(urls["plan"])
    accuracy.to_parquet(urls["accuracy"])
    kpis = {"n_changes": 2, "revenue_change_pct": 1.0}
    storage.write_bytes(
        urls["kpis"],
        json.dumps(kpis | {"margin_change_pct": 2.0, "volume_change_pct": 3.0}).encode(),
    )
    record = RunRecord(
        id="r",
        status="succeeded",
        market="US",
        period="2026-11",
        root=str(local_root),
        created_at="2026-11-29T00:45:12+00:00",
        steps={
            "optimize": StepRecord(
                status="succeeded", outputs={"data": urls["plan"], "kpis": urls["kpis"]}
            ),
            "forecast": StepRecord(status="succeeded", outputs={"accuracy": urls["accuracy"]}),
        },
    )

    text = runner.summary(record)

    changes = plan[plan["changed"]]
    expected = pd.DataFrame(
        {
            "product": changes["product_id"],
            "category": changes["category"],
            "price": changes["current_price"].map("{:,.2f}".format),
            "new price": changes["new_price"].map("{:,.2f}".format),
            "change": (changes["price_change"] * 100).map("{:+.0f}%".format),
            "margin delta": (changes["expected_margin"] - changes["baseline_margin"]).map(
                "{:+,.0f}".format
            ),
        }
    ).to_string(index=False)
    assert ["  " + line for line in expected.splitlines()] == text.splitlines()[2:5]
    pooled = forecasting.summarize_backtest(accuracy)
    assert (
        f"Forecast backtest WAPE: model {pooled['model_wape']:.1%} vs seasonal naive "
        f"{pooled['naive_wape']:.1%} (2 products)"
    ) in text


def test_corrupt_manifest_reruns_the_step_and_corrupt_record_is_reported(baseline):
    root, run_id = baseline
    os.environ["TOOLKIT_ROOT"] = root
    record = record_of(root, run_id)
    step_url = record.steps["identify_underperformers"].url
    storage.write_bytes(storage.join(step_url, cache.MANIFEST), b'{"step": "identify_und')
    env = toolkit_env(root)
    out = toolkit(["run"], env).stdout
    rerun = record_of(root, run_id_from(out))
    assert "ignored corrupt cache manifest" in out
    assert rerun.steps["identify_underperformers"].reused is False
    assert rerun.steps["load_transform"].reused is True
    assert rerun.status == "succeeded"

    storage.write_bytes(runs.record_url(run_id, root), b'{"id": "trunc')
    shown = toolkit(["runs", "show", run_id], env, check=False)
    assert shown.returncode == 2 and "is corrupt" in shown.stderr
    listed = json.loads(toolkit(["runs", "list", "--json"], env).stdout)
    assert any(r["id"] == run_id and r["status"] == "unreadable" for r in listed)


def test_unreachable_endpoint_fails_within_the_deadline_naming_it():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = toolkit_env(
        "s3://nowhere/toolkit",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="x",
        AWS_SECRET_ACCESS_KEY="x",
        AWS_REGION="us-east-1",
    )
    result = toolkit(["run"], env, check=False, timeout=120)
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr and "run failed" in result.stderr


# ---------------------------------------------------------------------------
# Crashes and resume, on the local root
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs") / "store"
    demo_data.write(["US"], n_products=30, root=str(root))
    return str(root)


def resume_and_check(root, run_id, env):
    wait_for(lambda: record_of(root, run_id).status == "interrupted", timeout=60)
    toolkit(["resume", run_id], env)
    record = record_of(root, run_id)
    assert record.status == "succeeded"
    assert all(s.status in ("succeeded", "reused") for s in record.steps.values())
    return record


def test_sigkill_mid_step_then_resume(local_store, tmp_path):
    # The step's workspace lands in a folder of ours, where papermill writes the executed
    # notebook as soon as its first cell starts: the sign that the notebook is running.
    workspaces = tmp_path / "tmp"
    workspaces.mkdir()
    env = toolkit_env(local_store, TMPDIR=str(workspaces))
    proc = subprocess.Popen(
        TOOLKIT + ["run", "--patch", "forecast.horizon=9"],
        env=env,
        cwd=PROJECT_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    run_id = run_id_from(proc.stdout.readline() + "\n")

    def in_forecast_notebook():
        return list(workspaces.glob("toolkit-*/**/forecast.ipynb"))

    wait_for(in_forecast_notebook, every=0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its kernel, like a lost machine
    proc.wait()
    assert record_of(local_store, run_id).stored_status == "running"
    record = resume_and_check(local_store, run_id, env)
    assert len(record.steps["forecast"].attempts) == 2
    assert len(record.steps["load_transform"].attempts) <= 1


@pytest.mark.parametrize(
    "point, horizon, attempts", [("before-manifest", 10, 2), ("after-publish", 11, 1)]
)
def test_crash_around_publishing_then_resume(local_store, point, horizon, attempts):
    env = toolkit_env(local_store, TOOLKIT_CRASH_AT=f"forecast:{point}")
    result = toolkit(["run", "--patch", f"forecast.horizon={horizon}"], env, check=False)
    assert result.returncode == -signal.SIGKILL
    run_id = run_id_from(result.stdout)
    key = record_of(local_store, run_id).steps["forecast"].cache_key
    identity = {"market": "US", "period": "2026-11", "category": None}
    published = cache.lookup(local_store, identity, "forecast", key)
    # Data without its manifest is invisible; after the manifest it is visible.
    assert (published is None) == (point == "before-manifest")

    env.pop("TOOLKIT_CRASH_AT")
    record = resume_and_check(local_store, run_id, env)
    forecast = record.steps["forecast"]
    assert len(forecast.attempts) == attempts  # after publishing, nothing is redone
    visible = cache.lookup(local_store, identity, "forecast", key)
    assert visible["url"] == forecast.url


@pytest.fixture(scope="module")
def faulty_project(tmp_path_factory):
    """A copy of the project whose optimize notebook misbehaves on request, after writing."""
    return project_copy(
        tmp_path_factory.mktemp("project"),
        (
            "\n# %%\nimport os, time\n"
            "fault = os.environ.get('TEST_OPTIMIZE_FAULT')\n"
            "if fault == 'raise':\n    raise RuntimeError('optimize broke after writing')\n"
            "if fault == 'sleep':\n    time.sleep(3600)\n"
            "if fault == 'exit':\n    os._exit(138)\n"
        ),
    )


@pytest.mark.parametrize(
    "fault, patches, message",
    [
        ("raise", [], "optimize broke after writing"),
        ("sleep", ["execution.step_timeout_seconds=10"], "Timeout"),
        ("exit", [], "Kernel"),
    ],
)
def test_failing_step_keeps_its_notebook_and_publishes_nothing(
    faulty_project, local_store, fault, patches, message
):
    env = toolkit_env(local_store, TEST_OPTIMIZE_FAULT=fault, PYTHONPATH=str(faulty_project))
    args = ["run", "--patch", f"optimize.weights.volume=0.{len(fault)}"]
    args += [x for p in patches for x in ("--patch", p)]
    result = toolkit(args, env, check=False, cwd=faulty_project)
    assert result.returncode == 1, result.stderr[-2000:]
    record = record_of(local_store, run_id_from(result.stdout))
    optimize = record.steps["optimize"]
    assert record.status == "failed" and optimize.status == "failed"
    assert message.lower() in optimize.error.lower()
    assert "format_output" not in record.steps
    identity = {"market": "US", "period": "2026-11", "category": None}
    assert cache.lookup(local_store, identity, "optimize", optimize.cache_key) is None
    assert storage.exists(optimize.debug["notebook"])


def test_effective_status_turns_interrupted_without_heartbeat():
    now = dt.datetime.now(dt.UTC)
    record = RunRecord(
        id="r",
        status="running",
        market="US",
        period="2026-11",
        root="/tmp/store",
        created_at=(now - dt.timedelta(minutes=1)).isoformat(),
        heartbeat_seconds=5,
        heartbeat_at=(now - dt.timedelta(seconds=10)).isoformat(),
    )
    assert runs.effective_status(record, at=now) == "running"
    assert runs.effective_status(record, at=now + dt.timedelta(seconds=30)) == "interrupted"
    finished = record.model_copy(update={"status": "succeeded"})
    assert runs.effective_status(finished, at=now) == "succeeded"


def test_cancel_stops_a_running_run(local_store):
    env = toolkit_env(local_store)
    proc = subprocess.Popen(
        TOOLKIT + ["run", "--patch", "forecast.horizon=7"],
        env=env,
        cwd=PROJECT_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    run_id = run_id_from(proc.stdout.readline() + "\n")
    wait_for(
        lambda: (
            getattr(record_of(local_store, run_id).steps.get("forecast"), "status", None)
            == "running"
        )
    )
    toolkit(["runs", "cancel", run_id], env)
    assert proc.wait(timeout=120) == 1
    record = record_of(local_store, run_id)
    assert record.status == "cancelled"
    # The cancel lands inside forecast, or just after it finished; nothing runs after it.
    assert record.steps["forecast"].status in ("cancelled", "succeeded")
    assert "optimize" not in record.steps


# ---------------------------------------------------------------------------
# Delivery: explicit, once per distinct plan
# ---------------------------------------------------------------------------


def delivery_config(folder, url, allowed) -> str:
    """An operator's --config layer: deliver to ``url``, allowing ``allowed`` and loopback
    (the test's receiver listens there; loopback is refused unless allowed)."""
    path = folder / "delivery.yaml"
    path.write_text(
        "output:\n"
        f"  endpoint: {json.dumps(url)}\n"
        f"  allowed_endpoints: {json.dumps(allowed)}\n"
        '  allow_addresses: ["127.0.0.0/8"]\n'
    )
    return str(path)


def test_each_plan_is_delivered_once_and_a_rerun_says_by_which_run(tmp_path):
    root = str(tmp_path / "store")
    demo_data.write(["US"], n_products=30, root=root)
    env = toolkit_env(root)
    with Receiver() as receiver:
        config = delivery_config(tmp_path, receiver.url, [receiver.url])
        first_out = toolkit(["run", "--config", config], env).stdout
        first = record_of(root, run_id_from(first_out))
        again = record_of(root, run_id_from(toolkit(["run", "--config", config], env).stdout))
        args = ["run", "--config", config, "--patch", "optimize.constraints.max_changes=0"]
        changed = record_of(root, run_id_from(toolkit(args, env).stdout))

    plan_id = first.delivery.plan_id
    assert first.delivery.status == "delivered" and first.delivery.delivered_by == first.id
    assert f"delivery: plan {plan_id} delivered to {receiver.url} by this run" in first_out
    [sent, sent_changed] = receiver.requests  # the rerun sent nothing
    assert sent[0]["Idempotency-Key"] == plan_id and sent[0]["X-Toolkit-Run"] == first.id
    export = export_of(first)
    assert sent[1] == json.loads(storage.read_bytes(first.steps["format_output"].outputs["json"]))
    assert len(sent[1]) == len(export) > 0 and set(export["plan_id"]) == {plan_id}

    # The same plan again: every step reused, nothing sent, and the record says who did.
    assert all(step.reused for step in again.steps.values())
    assert again.status == "succeeded" and again.delivery.status == "already_delivered"
    assert (again.delivery.plan_id, again.delivery.delivered_by) == (plan_id, first.id)
    shown = toolkit(["runs", "show", again.id], env).stdout
    assert f"plan {plan_id} already delivered to {receiver.url} by run {first.id}" in shown
    shown_json = json.loads(toolkit(["runs", "show", again.id, "--json"], env).stdout)
    assert shown_json["delivery"]["delivered_by"] == first.id
    # Its files are the shared, content-named ones: no run's id in them.
    assert "run_id" not in export_of(again).columns

    # Another plan: delivered by its own run, under its own key.
    assert changed.delivery.status == "delivered" and changed.delivery.delivered_by == changed.id
    assert changed.delivery.plan_id != plan_id
    assert sent_changed[0]["Idempotency-Key"] == changed.delivery.plan_id
    assert sent_changed[1] == []  # no price changes allowed


def test_an_endpoint_outside_the_allow_list_fails_the_run_before_its_steps(tmp_path):
    root = str(tmp_path / "store")
    demo_data.write(["US"], n_products=30, root=root)
    endpoint = "http://169.254.169.254/latest/meta-data/"
    config = delivery_config(tmp_path, endpoint, ["https://receiver.example.com/"])
    result = toolkit(["run", "--config", config], toolkit_env(root), check=False)
    assert result.returncode == 1
    assert "is not in output.allowed_endpoints" in result.stderr
    assert "Traceback" not in result.stderr
    record = record_of(root, run_id_from(result.stdout))
    assert record.status == "failed" and record.steps == {}
    assert record.delivery.status == "failed" and record.delivery.endpoint == endpoint


def test_identical_raw_files_rewritten_reuse_every_step(baseline):
    root, _ = baseline
    demo_data.write(["US"], n_products=30, root=root)  # the same bytes, new time stamps
    result = toolkit(["run"], toolkit_env(root))
    record = record_of(root, run_id_from(result.stdout))
    assert record.status == "succeeded"
    assert all(step.reused for step in record.steps.values()), record.steps
