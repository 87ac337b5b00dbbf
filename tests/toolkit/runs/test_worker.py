"""Workers as real processes: two on one root run each run once within their slots; SIGTERM
hands a run in flight back and leaves no process behind; a run whose worker was killed is
resumed by another worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import psutil
import pytest
from helpers import BIN, PROJECT_DIR, TOOLKIT, new_bucket, toolkit, toolkit_env

from toolkit.runs import lease as leases
from toolkit.runs import queue
from toolkit.runs import store as runs

pytestmark = pytest.mark.slow


@pytest.fixture
def store(local_root):
    toolkit(["demo-data", "--markets", "US", "--products", "60"], toolkit_env(local_root))
    return local_root


def _worker(root, log, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [*TOOLKIT, "worker", "--no-schedules", *args],
        cwd=PROJECT_DIR,
        # Beats of 2 s: a slot gives up its lease after 3 missed beats, and on a loaded
        # machine a 1 s beat can be missed that often while the slot imports.
        env=toolkit_env(root, TOOLKIT_HEARTBEAT_SECONDS="2"),
        stdout=open(log, "w"),  # noqa: SIM115 - the process keeps it
        stderr=subprocess.STDOUT,
    )


def _submit(root, *patches) -> str:
    args = ["submit", "--patch", "country=US", *(f"--patch={p}" for p in patches)]
    return toolkit(args, toolkit_env(root)).stdout.strip()


def _wait(what, check, timeout=600.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


def _tree(process) -> list[psutil.Process]:
    parent = psutil.Process(process.pid)
    return [parent, *parent.children(recursive=True)]


def _stop(process, timeout=90.0) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=timeout)


def _gone(processes) -> bool:
    return not [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _running_step(run_id, after=1):
    record = runs.load(run_id)
    done = [s for s in record.steps.values() if s.status == "succeeded"]
    return record if record.status == "running" and len(done) >= after else None


def test_two_workers_run_each_run_once_within_their_slots(store, tmp_path):
    submitted = [_submit(store, f"forecast.horizon={h}") for h in (8, 9, 8, 9, 10)]
    workers = [_worker(store, tmp_path / "a.log", "--slots", "2")]
    workers.append(_worker(store, tmp_path / "b.log", "--slots", "1"))
    try:
        _wait(
            "every run finished",
            lambda: all(runs.load(r).status == "succeeded" for r in submitted),
        )
        trees = [_tree(w) for w in workers]
    finally:
        codes = [_stop(w) for w in workers]
    assert codes == [0, 0]
    assert all(_gone(tree) for tree in trees)  # slots and kernels went with their worker
    logs = [(tmp_path / n).read_text() for n in ("a.log", "b.log")]
    for run_id in submitted:
        assert sum(log.count(f"run {run_id} succeeded") for log in logs) == 1
        assert leases.read(run_id, store).generation == 1  # claimed once, never taken over
        assert runs.load(run_id).resumed == []
    # Never more runs at once than the two workers' three slots.
    spans = [(runs.load(r).started_at, runs.load(r).finished_at) for r in submitted]
    most = max(sum(1 for s, e in spans if s <= at < e) for at, _ in spans)
    assert most <= 3
    assert queue.pending(store) == []


def test_sigterm_hands_a_run_in_flight_back_and_leaves_nothing(store, tmp_path):
    run_id = _submit(store, "forecast.horizon=7")
    first = _worker(store, tmp_path / "a.log", "--slots", "1", "--grace", "0")
    try:
        _wait("the run's first step done", lambda: _running_step(run_id))
        tree = _tree(first)
        assert len(tree) >= 2  # the worker, its slot (and the slot's kernel)
    finally:
        code = _stop(first)
    assert code == 0
    _wait("the worker's processes gone", lambda: _gone(tree), timeout=30)
    record = runs.load(run_id)
    assert record.status == "interrupted"
    assert leases.read(run_id, store).released  # handed back
    done_before = {n for n, s in record.steps.items() if s.status == "succeeded"}
    assert done_before

    second = _worker(store, tmp_path / "b.log", "--slots", "1")
    try:
        _wait("the run resumed", lambda: runs.load(run_id).status == "succeeded")
    finally:
        _stop(second)
    record = runs.load(run_id)
    assert len(record.resumed) == 1
    for name in done_before:  # resumed, not restarted
        assert len(record.steps[name].attempts) == 1


def test_a_run_whose_worker_was_killed_is_finished_by_another(store, tmp_path):
    run_id = _submit(store, "forecast.horizon=6")
    first = _worker(store, tmp_path / "a.log", "--slots", "1")
    try:
        record = _wait("the run's first step done", lambda: _running_step(run_id))
        tree = _tree(first)
    finally:
        for process in tree:  # the whole machine gone: worker, slot and kernel at once
            process.kill()
        first.wait(timeout=30)
    assert record.pid in {p.pid for p in tree}
    second = _worker(store, tmp_path / "b.log", "--slots", "1")
    try:
        _wait("the run taken over and finished", lambda: runs.load(run_id).status == "succeeded")
    finally:
        _stop(second)
    record = runs.load(run_id)
    assert len(record.resumed) == 1
    assert record.steps["load_transform"].attempts == [f"{run_id}.1"]  # not redone
    assert "takeover 1" in (tmp_path / "b.log").read_text()


def _most_at_once(records) -> int:
    """The most runs whose started..finished spans overlap at one instant."""
    spans = [(r.started_at, r.finished_at) for r in records]
    return max(sum(1 for s, e in spans if s <= at < e) for at, _ in spans)


def test_twenty_submissions_at_once_on_two_slots(store, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from toolkit import config

    worker = _worker(store, tmp_path / "w.log", "--slots", "2")
    try:

        def submit(horizon):  # another config each: every run executes steps of its own
            patches = [f"forecast.horizon={horizon}"]
            resolved = config.resolve(country="US", patches=patches, project_dir=PROJECT_DIR)
            return queue.submit(resolved, (), patches).id

        with ThreadPoolExecutor(20) as pool:
            submitted = list(pool.map(submit, range(4, 24)))
        assert len(queue.pending(store)) + 2 >= 20  # queued at once, before most started
        _wait(
            "every run finished",
            lambda: all(runs.load(r).status in queue.FINAL for r in submitted),
            timeout=1500,
        )
    finally:
        assert _stop(worker) == 0
    records = [runs.load(r) for r in submitted]
    assert [r.status for r in records] == ["succeeded"] * 20
    assert _most_at_once(records) == 2  # never more than its slots, and both used
    assert queue.pending(store) == []


# ---------------------------------------------------------------------------
# On a Dask cluster the operator started
# ---------------------------------------------------------------------------


def _dask(args, cwd, env, log) -> subprocess.Popen:
    """The venv's `dask` command, as an operator runs it on another machine."""
    return subprocess.Popen(
        [str(BIN / "dask"), *args],
        cwd=cwd,
        env=env,
        stdout=open(log, "w"),  # noqa: SIM115 - the process keeps it
        stderr=subprocess.STDOUT,
    )


def _executed_on(address) -> list[int]:
    """Tasks each worker of the cluster at ``address`` has executed."""
    from distributed import Client

    with Client(address, timeout=30) as client:
        counts = client.run(lambda dask_worker: dask_worker.state.executed_count)
    return list(counts.values())


def test_a_worker_on_a_dask_cluster_drains_the_queue(s3_env, tmp_path):
    root = new_bucket(s3_env, "worker-on-dask")
    toolkit(["demo-data", "--markets", "US", "--products", "60"], toolkit_env(root))
    submitted = [_submit(root, f"forecast.horizon={h}") for h in (8, 9)]

    # The cluster shares nothing with the submitter but the storage root: another
    # working directory, no TOOLKIT_ROOT or TOOLKIT_PROJECT; S3 credentials only.
    elsewhere = tmp_path / "cluster"
    elsewhere.mkdir()
    cluster_env = {k: v for k, v in os.environ.items() if not k.startswith(("TOOLKIT_", "DASK_"))}
    # The scheduler picks a free port and says which in its file, as an operator's would.
    scheduler_file = elsewhere / "scheduler.json"
    scheduler = _dask(
        [
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--dashboard-address",
            "127.0.0.1:0",
            "--scheduler-file",
            str(scheduler_file),
        ],
        elsewhere,
        cluster_env,
        tmp_path / "scheduler.log",
    )
    cluster = [scheduler]
    worker = None
    try:
        _wait("the scheduler up", scheduler_file.exists, timeout=60)
        address = json.loads(scheduler_file.read_text())["address"]
        for n in (1, 2):
            cluster.append(
                _dask(
                    [
                        "worker",
                        address,
                        "--nthreads",
                        "1",
                        "--no-dashboard",
                        "--host",
                        "127.0.0.1",
                        "--local-directory",
                        str(elsewhere / f"w{n}"),
                    ],
                    elsewhere,
                    cluster_env,
                    tmp_path / f"dask-worker-{n}.log",
                )
            )
        worker = _worker(
            root, tmp_path / "w.log", "--slots", "2", "--executor", "dask", "--scheduler", address
        )
        _wait(
            "both runs finished",
            lambda: all(runs.load(r, root).status in queue.FINAL for r in submitted),
        )
        trees = [_tree(p) for p in (worker, *cluster)]
        executed = _executed_on(address)
    finally:
        codes = [_stop(worker)] if worker else []
        for process in reversed(cluster):
            process.send_signal(signal.SIGTERM)
            codes.append(process.wait(timeout=60))
    log = (tmp_path / "w.log").read_text()
    assert "executor dask" in log
    records = [runs.load(r, root) for r in submitted]
    assert [r.status for r in records] == ["succeeded", "succeeded"], log
    ran = sum(1 for r in records for s in r.steps.values() if not s.reused)
    # Every step a run executed ran on the cluster, on both of its workers.
    assert sum(executed) == ran and len(executed) == 2, (executed, ran)
    assert codes[0] == 0
    _wait("no process left", lambda: all(_gone(tree) for tree in trees), timeout=30)


def test_a_worker_on_dask_without_a_scheduler_says_so_in_one_line(local_root):
    result = toolkit(
        ["worker", "--executor", "dask", "--no-schedules"], toolkit_env(local_root), check=False
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "worker not started: a worker on Dask needs a scheduler address (--scheduler, "
        "execution.scheduler in configs/ or DASK_SCHEDULER_ADDRESS); start one with "
        "`dask scheduler` and `dask worker`"
    ]
