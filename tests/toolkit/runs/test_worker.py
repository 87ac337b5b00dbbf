"""Workers as real processes: two on one root run each run once within their slots; SIGTERM
hands a run in flight back and leaves no process behind; a run whose worker was killed is
resumed by another worker."""

from __future__ import annotations

import signal
import subprocess
import time

import psutil
import pytest
from helpers import PROJECT_DIR, TOOLKIT, toolkit, toolkit_env

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
