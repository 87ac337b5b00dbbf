"""The run queue in storage: submit, positions, exactly-once claims by real processes (local
and moto S3), cancel, and runs whose worker died."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from helpers import PROJECT_DIR, toolkit, toolkit_env

from toolkit import config as config_mod
from toolkit.runs import lease as leases
from toolkit.runs import queue
from toolkit.runs import store as runs


@pytest.fixture(params=["local", "s3"])
def any_root(request) -> str:
    return request.getfixturevalue("local_root" if request.param == "local" else "s3_root")


def _submit(n: int, **fields) -> list[str]:
    resolved = config_mod.resolve(patches=["country=US"])
    return [queue.submit(resolved, patches=["country=US"], **fields).id for _ in range(n)]


def test_submit_prints_the_id_at_once_and_lists_positions(local_root):
    env = toolkit_env(local_root)
    first = toolkit(["submit", "--patch", "country=US"], env).stdout.strip()
    urgent = toolkit(["submit", "--patch", "country=US", "--priority", "5"], env).stdout.strip()
    assert runs.load(first).status == "queued"
    listed = json.loads(toolkit(["runs", "list", "--status", "queued", "--json"], env).stdout)
    assert [(r["id"], r["position"]) for r in listed] == [(urgent, 1), (first, 2)]
    text = toolkit(["runs", "list", "--status", "queued"], env).stdout
    assert "queued, #1" in text and urgent in text


def test_a_queued_run_stays_queued_however_long_it_waits(local_root):
    (run_id,) = _submit(1)
    record = runs.load(run_id)
    late = runs.parse_time(record.created_at).timestamp() + 3600
    import datetime as dt

    assert runs.effective_status(record, at=dt.datetime.fromtimestamp(late, dt.UTC)) == "queued"


def test_submission_order_and_priority(local_root):
    plain = _submit(2)
    (urgent,) = _submit(1, priority=9)
    assert [e.run_id for e in queue.pending()] == [urgent, *plain]
    assert queue.positions() == {urgent: 1, plain[0]: 2, plain[1]: 3}


CLAIMER = """
import json, sys
from toolkit.runs import queue
root, got = sys.argv[1], []
while True:
    entries = queue.pending(root)
    if not entries:
        break
    for entry in entries:
        if queue.claim(entry, root, 30.0) is not None:
            got.append(entry.run_id)
print(json.dumps(got))
"""


def test_two_processes_claim_each_run_exactly_once(any_root):
    submitted = _submit(12)
    claimers = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, any_root],
            cwd=PROJECT_DIR,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    claimed = [json.loads(p.communicate(timeout=300)[0]) for p in claimers]
    assert all(p.returncode == 0 for p in claimers)
    assert sorted(claimed[0] + claimed[1]) == sorted(submitted)  # each once, none lost
    assert queue.pending(any_root) == []
    for run_id in submitted:
        assert leases.read(run_id, any_root).generation == 1


def test_cancel_takes_a_queued_run_off_the_queue(local_root):
    run_id, other = _submit(2)
    env = toolkit_env(local_root)
    assert "cancelled run" in toolkit(["runs", "cancel", run_id], env).stdout
    assert runs.load(run_id).status == "cancelled"
    assert [e.run_id for e in queue.pending()] == [other]
    assert queue.positions() == {other: 1}


def test_a_cancelled_entry_is_never_run(local_root):
    (run_id,) = _submit(1)
    entry = queue.pending()[0]
    from toolkit.runs import runner

    runner.cancel(run_id)  # around the queue: its entry stays behind
    assert queue.claim(entry, local_root, 1.0) is None
    assert queue.pending() == []


def test_a_run_whose_worker_died_is_taken_over_once_then_given_up(local_root):
    (run_id,) = _submit(1)
    lease = queue.claim(queue.pending()[0], local_root, 0.2)  # a worker that dies at once
    assert lease is not None
    assert queue.abandoned(local_root, retries=1, seconds=1.0, limit=5) == []  # still live
    time.sleep(0.2 * leases.EXPIRE_BEATS + leases.SLACK_SECONDS + 0.5)
    # Two workers look at once: one counts the takeover, the other finds it counted.
    first = queue.abandoned(local_root, retries=1, seconds=1.0, limit=5)
    second = queue.abandoned(local_root, retries=1, seconds=1.0, limit=5)
    assert first == [queue.Abandoned(run_id, handed_back=False, takeovers=1)]
    assert second == []  # counted: that worker is taking it over
    # It takes the run over (runner.resume would), and dies too before finishing it.
    leases.Lease.take_over(run_id, local_root, "resume", 0.2)
    time.sleep(0.2 * leases.EXPIRE_BEATS + leases.SLACK_SECONDS + 0.5)
    # Past the budget: failed, not taken over again.
    assert queue.abandoned(local_root, retries=1, seconds=1.0, limit=5) == []
    record = runs.load(run_id)
    assert record.status == "failed" and "retry budget is 1" in record.error
    assert queue.abandoned(local_root, retries=1, seconds=1.0, limit=5) == []  # gone


def test_a_handed_back_run_is_resumed_without_spending_the_budget(local_root):
    (run_id,) = _submit(1)
    lease = queue.claim(queue.pending()[0], local_root, 1.0)
    lease.release()  # its worker stopped and handed it back
    found = queue.abandoned(local_root, retries=0, seconds=1.0, limit=5)
    assert found == [queue.Abandoned(run_id, handed_back=True, takeovers=0)]


def test_a_run_can_be_named_and_noted_when_submitted(local_root):
    env = toolkit_env(local_root)
    argv = ["submit", "--patch", "country=US", "--name", "Deeper cuts", "--note", "test 40%"]
    run_id = toolkit(argv, env).stdout.strip()
    record = runs.load(run_id)
    assert (record.name, record.note) == ("Deeper cuts", "test 40%")
    too_long = toolkit(["submit", "--name", "x" * 81], env, check=False)
    assert too_long.returncode == 2
    assert (
        too_long.stderr.strip()
        == "--name: the run name is 81 characters; keep it to 80 (say more in the note)"
    )
    assert queue.positions() == {run_id: 1}  # nothing queued for the refused one
