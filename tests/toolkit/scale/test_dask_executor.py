"""Steps on Dask: a private loopback cluster, lost workers retried or failed readably, and
runs on Dask equal to serial runs (storage on the moto S3 server)."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import export_of, new_bucket, toolkit, toolkit_env

from toolkit.data import storage
from toolkit.pricing import demo_data
from toolkit.runs import cache
from toolkit.runs import store as runs
from toolkit.scale.dask_executor import DaskExecutor, DaskUnavailable, ProjectMismatch, StepLost

pytestmark = pytest.mark.slow  # whole pipelines: `make test-fast` leaves these out


def record_of(root, run_id):
    os.environ["TOOLKIT_ROOT"] = str(root)
    return runs.load(run_id, root=str(root))


def run_id_from(output: str) -> str:
    return next(line.split()[1] for line in output.splitlines() if line.startswith("run "))


def plan_of(record):
    data = storage.read_bytes(record.steps["optimize"].outputs["data"])
    return pd.read_parquet(io.BytesIO(data))


# ---------------------------------------------------------------------------
# The executor on its own: test-only tasks
# ---------------------------------------------------------------------------


def wait_all(executor, futures, timeout=180):
    """Drive futures the way the run loop does; fail instead of hanging."""
    deadline = time.monotonic() + timeout
    pending, finished = list(futures), []
    while pending:
        assert time.monotonic() < deadline, f"still running: {pending}"
        done, pending = executor.wait_any(pending)
        assert done, "wait_any returned without a finished future"
        finished += done
    return finished


def listening_addresses(pids):
    import psutil

    found = []
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        found += [c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN]
    return found


def _tick_ms(dask_worker=None, dask_scheduler=None) -> float:
    server = dask_worker or dask_scheduler
    return server.periodic_callbacks["tick"].callback_time


def test_local_cluster_is_private_and_a_lost_worker_is_retried(tmp_path):
    import psutil

    def attempt(request):
        """Counts its attempts in a marker file; the first kills its own worker process."""
        marker = Path(request["marker"])
        count = int(marker.read_text()) + 1 if marker.exists() else 1
        marker.write_text(str(count))
        if request.get("kill_first") and count == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(request.get("sleep", 0))
        return {"attempt": count, "pid": os.getpid(), "tmp": tempfile.gettempdir()}

    with DaskExecutor(workers=2, retries=1) as executor:
        assert executor.cluster is not None and executor.address.startswith("tcp://127.0.0.1:")
        ours = [os.getpid()] + [p.pid for p in psutil.Process().children(recursive=True)]
        assert set(listening_addresses(ours)) <= {"127.0.0.1"}  # moto's server, too
        # Workers compute like serial runs: no BLAS/OpenMP thread pinning or malloc
        # tuning of their own.
        names = (
            "OMP_NUM_THREADS",
            "MKL_NUM_THREADS",
            "OPENBLAS_NUM_THREADS",
            "MALLOC_TRIM_THRESHOLD_",
        )
        launcher = {name: os.environ.get(name) for name in names}
        workers = executor.client.run(lambda: {name: os.environ.get(name) for name in names})
        assert all(env == launcher for env in workers.values()), workers
        # Housekeeping timers run 50x rarer than Dask's 20 ms tick (their CPU is the
        # kernels'), in the scheduler and every worker; no work stealing.
        ticks = executor.client.run(lambda dask_worker: _tick_ms(dask_worker))
        ticks["scheduler"] = executor.client.run_on_scheduler(_tick_ms)
        assert set(ticks.values()) == {1000}, ticks
        assert not executor.client.run_on_scheduler(
            lambda dask_scheduler: "stealing" in dask_scheduler.extensions
        )
        folders = executor.client.run(lambda dask_worker: dask_worker.local_directory)
        assert len(set(folders.values())) == 2
        base = executor._tmp
        assert all(f.startswith(base) for f in folders.values())

        bystander = {"step": "load_transform", "marker": str(tmp_path / "a"), "sleep": 3}
        victim = {"step": "forecast", "marker": str(tmp_path / "b"), "kill_first": True}
        late = {"step": "optimize", "marker": str(tmp_path / "c")}
        futures = [executor.submit(attempt, r) for r in (bystander, victim)]
        # A third task waits for a free worker instead of queueing behind the victim.
        futures.append(executor.submit(attempt, late))
        results = {f.label: f.result() for f in wait_all(executor, futures)}

    assert results["forecast"]["attempt"] == 2  # retried on a fresh worker process
    assert results["load_transform"]["attempt"] == 1 and results["optimize"]["attempt"] == 1
    for result in results.values():
        # A task's temporary files live in its worker's own folder of the cluster's.
        assert result["tmp"].startswith(base) and "/worker-" in result["tmp"], result
    assert not Path(base).exists()  # close() removed the cluster's folder


def test_a_runs_next_step_goes_to_its_idle_worker_and_never_waits_for_a_busy_one():
    def where(request):
        from distributed import get_worker

        time.sleep(request.get("sleep", 0))
        return get_worker().address

    with DaskExecutor(workers=2, retries=0) as executor:
        first = wait_all(executor, [executor.submit(where, {"step": "load_transform"})])
        home = first[0].result()
        assert executor.home == home
        # The worker holding the run's kernel takes its next steps while it is idle.
        for step in ("identify_underperformers", "forecast", "optimize"):
            done = wait_all(executor, [executor.submit(where, {"step": step})])
            assert done[0].result() == home, step

        # Another run's long step occupies that worker: the next step goes elsewhere.
        other = DaskExecutor(shared=executor)
        other.home = home
        blocker = other.submit(where, {"step": "forecast", "sleep": 5})
        deadline = time.monotonic() + 60
        while not executor.client.processing(workers=[home]).get(home):
            assert time.monotonic() < deadline, "the other run's step never started"
            time.sleep(0.1)
        moved = wait_all(executor, [executor.submit(where, {"step": "format_output"})])
        assert moved[0].result() != home
        assert wait_all(other, [blocker])[0].result() == home


def test_lost_worker_without_retries_fails_readably_and_spares_other_steps():
    def work(request):
        if request["step"] == "forecast":
            time.sleep(1)
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(request.get("sleep", 0))
        return request["step"]

    with DaskExecutor(workers=2, retries=0) as executor:
        futures = [
            executor.submit(work, {"step": "load_transform", "sleep": 3}),
            executor.submit(work, {"step": "forecast"}),
            # Dask counts a worker's death against every task the worker holds: these two
            # must wait for a free worker, not queue behind the dying step and fail with it
            # (without the executor's one-task-per-worker gate, one of them does).
            executor.submit(work, {"step": "optimize"}),
            executor.submit(work, {"step": "format_output"}),
        ]
        finished = {f.label: f for f in wait_all(executor, futures, timeout=120)}
        for name in ("load_transform", "optimize", "format_output"):
            assert finished[name].result() == name
        with pytest.raises(StepLost) as caught:
            finished["forecast"].result()
        message = str(caught.value)
        assert "worker lost while running step forecast" in message
        assert "KilledWorker" in message and "retried 0 times" in message

        started = time.monotonic()
        forever = executor.submit(work, {"step": "format_output", "sleep": 600})
        executor.interrupt()  # what a cancelled run's executor gets
        with pytest.raises(KeyboardInterrupt):
            executor.wait_any([forever])
    assert time.monotonic() - started < 60  # close() cancelled the sleeper: no hang
    assert forever.dask_future.status == "cancelled"


def test_scheduler_address_from_environment_and_unreachable_scheduler(monkeypatch):
    import dask
    from distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        protocol="tcp://",
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        silence_logs=logging.ERROR,
    )
    try:
        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.scheduler_address)
        with DaskExecutor(workers=5) as executor:
            assert executor.address == cluster.scheduler_address and executor.cluster is None
            future = executor.submit(lambda request: request["step"] * 2, {"step": "ab"})
            assert wait_all(executor, [future])[0].result() == "abab"
            # A worker with another version of the project must not run our steps.
            executor._fingerprint = "0" * 64
            future = executor.submit(lambda request: 1, {"step": "forecast"})
            with pytest.raises(ProjectMismatch, match="has another toolkit project at"):
                wait_all(executor, [future])[0].result()
        assert cluster.status.name == "running"  # not ours to close
    finally:
        cluster.close()

    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS")
    with (
        dask.config.set({"distributed.comm.timeouts.connect": "2s"}),
        pytest.raises(DaskUnavailable, match=f"Dask scheduler at tcp://127.0.0.1:{port}"),
    ):
        DaskExecutor(scheduler=f"tcp://127.0.0.1:{port}")


# ---------------------------------------------------------------------------
# Whole runs through the CLI
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dask_bucket(s3_env):
    root = new_bucket(s3_env, "dask-runs")
    os.environ["TOOLKIT_ROOT"] = root
    demo_data.write(["US"], n_products=30, root=root)
    return root


def test_run_on_dask_equals_serial_run(dask_bucket):
    root = dask_bucket
    env = toolkit_env(root)
    out = toolkit(["run", "--executor", "dask", "--workers", "2"], env).stdout
    on_dask = record_of(root, run_id_from(out))
    assert on_dask.status == "succeeded" and on_dask.executor == "dask"
    assert all(step.status == "succeeded" for step in on_dask.steps.values())
    assert all(step.outputs for step in on_dask.steps.values())

    serial = record_of(root, run_id_from(toolkit(["run", "--force"], env).stdout))
    assert serial.status == "succeeded" and serial.executor == "serial"
    assert not any(step.reused for step in serial.steps.values())
    pd.testing.assert_frame_equal(plan_of(on_dask), plan_of(serial))
    pd.testing.assert_frame_equal(export_of(on_dask), export_of(serial))
    for name, step in on_dask.steps.items():
        assert step.cache_key == serial.steps[name].cache_key, name


def test_worker_lost_during_a_run_fails_it_with_a_readable_error(dask_bucket):
    root = dask_bucket
    # Every attempt of load_transform kills its worker just before publishing; the
    # launcher never calls this crash point, so only workers die.
    env = toolkit_env(root, TOOLKIT_CRASH_AT="load_transform:before-manifest")
    args = ["run", "--executor", "dask", "--workers", "1"]
    args += ["--patch", "execution.retries=0", "--patch", "load_transform.min_weeks_with_sales=20"]
    result = toolkit(args, env, check=False)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "worker lost while running step load_transform" in result.stderr
    record = record_of(root, run_id_from(result.stdout))
    assert record.stored_status == "failed" and record.status == "failed"
    step = record.steps["load_transform"]
    assert step.status == "failed"
    assert "KilledWorker" in step.error and "retried 0 times" in step.error
    assert list(record.steps) == ["load_transform"]  # nothing ran after it
    identity = {"market": "US", "period": "2026-11", "category": None}
    assert cache.lookup(root, identity, "load_transform", step.cache_key) is None
    events = json.dumps(record.to_json()["events"])
    assert "load_transform: failed: StepLost: worker lost" in events
