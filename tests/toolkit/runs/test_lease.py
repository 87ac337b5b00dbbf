"""One writer per run: conditional writes on both stores, the lease, and a run frozen past
its lease, resumed elsewhere, then thawed."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import threading
import time

import pytest
from helpers import TOOLKIT, new_bucket, project_copy, toolkit, toolkit_env, wait_for

from toolkit.data import storage
from toolkit.pricing import demo_data
from toolkit.runs import store as runs
from toolkit.runs.lease import Lease, LeaseLost, RunBusy
from toolkit.runs.lease import read as read_lease
from toolkit.runs.record import RunRecord

RUN_ID = "20261204-101010-US-2026-11-abcdef"


@pytest.fixture(params=["local", "s3"])
def any_root(request) -> str:
    """A fresh storage root: a local folder, then a bucket on the moto server."""
    return request.getfixturevalue("local_root" if request.param == "local" else "s3_root")


# ---------------------------------------------------------------------------
# Conditional writes
# ---------------------------------------------------------------------------


def test_conditional_create_and_replace(any_root):
    url = storage.join(any_root, "runs", "r", "x.json")
    first = storage.write_if(url, b"first", None)  # create: only if there is none
    with pytest.raises(storage.WriteConflict):
        storage.write_if(url, b"again", None)
    second = storage.write_if(url, b"second", first)  # replace: only the version read
    with pytest.raises(storage.WriteConflict):
        storage.write_if(url, b"stale", first)
    assert storage.read_versioned(url) == (b"second", second)
    assert storage.version_of(url) == second != first
    missing = storage.join(any_root, "runs", "r", "missing.json")
    assert storage.version_of(missing) is None
    with pytest.raises(storage.WriteConflict):
        storage.write_if(missing, b"x", second)  # replacing what is not there
    with pytest.raises(FileNotFoundError):
        storage.read_versioned(missing)


def test_two_writers_with_the_same_version_one_wins(any_root):
    url = storage.join(any_root, "runs", "r", "x.json")
    version = storage.write_if(url, b"base", None)
    # Both read the same version; each then writes: the second finds it changed.
    storage.write_if(url, b"writer A", version)
    with pytest.raises(storage.WriteConflict):
        storage.write_if(url, b"writer B", version)
    assert storage.read_bytes(url) == b"writer A"


def test_racing_local_writers_exactly_one_wins(local_root):
    url = storage.join(local_root, "runs", "r", "x.json")
    version = storage.write_if(url, b"base", None)
    start, won = threading.Barrier(8), []

    def write(i: int) -> None:
        start.wait()
        try:
            storage.write_if(url, f"writer {i}".encode(), version)
            won.append(i)
        except storage.WriteConflict:
            pass

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1
    assert storage.read_bytes(url) == f"writer {won[0]}".encode()


# ---------------------------------------------------------------------------
# The lease
# ---------------------------------------------------------------------------


def a_record(root: str) -> RunRecord:
    return RunRecord(
        id=RUN_ID,
        status="running",
        market="US",
        period="2026-11",
        root=root,
        created_at=runs.now(),
    )


def test_resume_and_cancel_take_the_lease_over_and_the_old_holder_writes_nothing(any_root):
    first = Lease.create(RUN_ID, any_root, 5.0)
    with pytest.raises(RunBusy, match="has already been started"):
        Lease.create(RUN_ID, any_root, 5.0)  # a run id starts once
    with pytest.raises(RunBusy, match="is still running"):
        Lease.take_over(RUN_ID, any_root, "resume", 5.0)  # its holder renews it
    writer = runs.RecordWriter(first, any_root)
    record = a_record(any_root)
    writer.save(record)
    first.renew()

    cancel = Lease.take_over(RUN_ID, any_root, "cancel", 5.0, live_ok=True)
    assert cancel.state.generation == 2
    with pytest.raises(LeaseLost, match="the run was cancelled") as lost:
        first.renew()
    assert lost.value.taken_by.reason == "cancel"
    record.error = "written by a holder that lost the lease"
    with pytest.raises(LeaseLost):
        writer.save(record)
    assert runs.load(RUN_ID, any_root).error is None  # nothing was written

    cancel.release()  # released: a resume need not wait for it to expire
    resume = Lease.take_over(RUN_ID, any_root, "resume", 5.0)
    assert resume.state.generation == 3
    with pytest.raises(LeaseLost, match="taken over by resume"):
        cancel.check()


def test_a_write_that_passed_its_check_before_a_takeover_is_replaced_by_the_holders(any_root):
    """The window between a stale writer's check and its write: its write lands (nobody
    had written since), and the new holder's next write replaces it."""
    old = Lease.create(RUN_ID, any_root, 5.0)
    old_writer = runs.RecordWriter(old, any_root)
    record = a_record(any_root)
    old_writer.save(record)
    url = runs.record_url(RUN_ID, any_root)

    new = Lease.take_over(RUN_ID, any_root, "resume", 5.0, live_ok=True)
    new_writer = runs.RecordWriter(new, any_root)
    resumed = runs.load(RUN_ID, any_root)
    resumed.error = "the resume's"
    # The stale write, as if its check had passed just before the takeover:
    stale = record.model_copy(update={"error": "the stale writer's"})
    storage.write_if(url, json.dumps(stale.to_json()).encode(), old_writer.version)

    new_writer.save(resumed)
    assert runs.load(RUN_ID, any_root).error == "the resume's"
    # And the stale writer's next write, on the version it knew, changes nothing.
    with pytest.raises(storage.WriteConflict):
        storage.write_if(url, json.dumps(stale.to_json()).encode(), old_writer.version)
    with pytest.raises(LeaseLost):
        old_writer.save(stale)
    assert runs.load(RUN_ID, any_root).error == "the resume's"


def test_a_running_record_reads_interrupted_once_its_lease_is_released_or_expired(local_root):
    lease = Lease.create(RUN_ID, local_root, 1.0)
    runs.RecordWriter(lease, local_root).save(a_record(local_root))
    assert runs.load(RUN_ID, local_root).status == "running"
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=4 * 1.0 + 3)
    state = read_lease(RUN_ID, local_root)
    assert state.live() and not state.live(at=later)
    record = runs.load(RUN_ID, local_root)
    assert runs.effective_status(record, at=later, lease=state) == "interrupted"
    lease.release()
    assert runs.load(RUN_ID, local_root).status == "interrupted"


# ---------------------------------------------------------------------------
# A run frozen past its lease, resumed elsewhere, then thawed
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_project(tmp_path_factory):
    """A copy of the project whose optimize step sleeps for ``TEST_OPTIMIZE_SLEEP`` s."""
    return project_copy(
        tmp_path_factory.mktemp("project"),
        "\n# %%\nimport os, time\ntime.sleep(float(os.environ.get('TEST_OPTIMIZE_SLEEP', 0)))\n",
    )


@pytest.mark.slow
def test_a_frozen_run_resumed_elsewhere_then_thawed_writes_nothing(slow_project, tmp_path):
    root = str(tmp_path / "store")
    demo_data.write(["US"], n_products=30, root=root)
    env = toolkit_env(root, TOOLKIT_HEARTBEAT_SECONDS="1", PYTHONPATH=str(slow_project))
    # Its workspace in a folder of ours: papermill writes the executed notebook there as
    # its first cell starts, the sign that the notebook runs in its kernel.
    workspaces = tmp_path / "tmp"
    workspaces.mkdir()
    frozen = subprocess.Popen(
        TOOLKIT + ["run"],
        env={**env, "TEST_OPTIMIZE_SLEEP": "600", "TMPDIR": str(workspaces)},
        cwd=slow_project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        run_id = frozen.stdout.readline().split()[1]
        wait_for(lambda: list(workspaces.glob("toolkit-*/**/optimize.ipynb")))

        live = toolkit(["resume", run_id], env, check=False, cwd=slow_project)
        assert live.returncode == 1 and f"run {run_id} is still running" in live.stderr

        os.killpg(frozen.pid, signal.SIGSTOP)  # paused: it can neither renew nor write
        wait_for(lambda: runs.load(run_id, root).status == "interrupted", timeout=60)
        resumed = toolkit(["resume", run_id], env, cwd=slow_project)
        assert "optimize" in resumed.stdout
        record_json = storage.read_bytes(runs.record_url(run_id, root))

        os.killpg(frozen.pid, signal.SIGCONT)
        _, err = frozen.communicate(timeout=120)
    finally:
        if frozen.poll() is None:
            os.killpg(frozen.pid, signal.SIGKILL)
            frozen.wait()

    assert frozen.returncode == 1, err[-3000:]
    assert f"run {run_id}: this process lost the run's lease" in err
    assert "wrote nothing more" in err and "Traceback" not in err
    # The record is the resume's, byte for byte: the thawed process wrote nothing.
    assert storage.read_bytes(runs.record_url(run_id, root)) == record_json
    record = runs.load(run_id, root)
    assert record.status == "succeeded"
    optimize = record.steps["optimize"]
    assert optimize.attempts == [f"{run_id}.1", f"{run_id}.2"]
    assert optimize.url.endswith(f"/{run_id}.2")  # the resume's execution
    assert any(e.message.startswith("resumed on ") for e in record.events)
    assert not any("interrupted" in e.message for e in record.events)
    # Nor did its step publish or keep a failed notebook.
    fs, path = storage.filesystem(root)
    assert not [p for p in fs.find(path) if f"{run_id}.1" in p and "/optimize/" in p]


@pytest.mark.slow
def test_a_run_whose_storage_stalls_mid_step_stops_and_writes_nothing(
    slow_project, s3_env, tmp_path
):
    from faults import StallingProxy

    root = new_bucket(s3_env, "lease-stalls")
    demo_data.write(["US"], n_products=30, root=root)
    workspaces = tmp_path / "tmp"
    workspaces.mkdir()
    with StallingProxy(s3_env["AWS_ENDPOINT_URL"]) as proxy:
        env = toolkit_env(
            root,
            PYTHONPATH=str(slow_project),
            AWS_ENDPOINT_URL=proxy.url,
            TOOLKIT_STORAGE_CONNECT_TIMEOUT="1",
            TOOLKIT_STORAGE_READ_TIMEOUT="2",
            TOOLKIT_STORAGE_MAX_ATTEMPTS="1",
        )
        stalled = subprocess.Popen(
            TOOLKIT + ["run"],
            env={**env, "TEST_OPTIMIZE_SLEEP": "600", "TMPDIR": str(workspaces)},
            cwd=slow_project,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            run_id = stalled.stdout.readline().split()[1]
            wait_for(lambda: list(workspaces.glob("toolkit-*/**/optimize.ipynb")))
            record_json = storage.read_bytes(runs.record_url(run_id, root))  # not proxied
            proxy.pause()  # storage accepts connections and never answers
            started = time.monotonic()
            _, err = stalled.communicate(timeout=180)
            took = time.monotonic() - started
        finally:
            if stalled.poll() is None:
                os.killpg(stalled.pid, signal.SIGKILL)
                stalled.wait()
        assert stalled.returncode == 1, err[-3000:]
        assert f"run {run_id}: this process lost the run's lease (not renewed for" in err
        assert took < 120  # three beats, then the step's own storage calls' deadlines
        # Nothing was written after the stall: the record still says optimize runs.
        assert storage.read_bytes(runs.record_url(run_id, root)) == record_json
        assert runs.load(run_id, root).steps["optimize"].status == "running"

        proxy.resume()
        wait_for(lambda: runs.load(run_id, root).status == "interrupted", timeout=60)
        toolkit(["resume", run_id], env, cwd=slow_project)
    assert runs.load(run_id, root).status == "succeeded"
