"""Schedules with an injected clock: due, not due, missed (catch-up), repeated tick, who runs
them, next fire times across daylight saving, and a broken file named in one line."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from helpers import toolkit, toolkit_env

from toolkit.runs import queue, schedules
from toolkit.runs import store as runs

UTC = dt.UTC


def _write(tmp_path, body: str):
    path = tmp_path / "schedules.yaml"
    path.write_text(body)
    return path


MONTHLY = """
schedules:
  monthly:
    cron: "0 6 1 * *"
    timezone: Europe/Oslo
    markets: [US, NO]
    period: next month
    patches: ["forecast.horizon=8"]
    run_as: planner@example.com
    priority: 2
"""


@pytest.fixture
def launchers(tmp_path, monkeypatch):
    app = tmp_path / "app.yaml"
    app.write_text("launchers: [planner@example.com]\n")
    monkeypatch.setenv("TOOLKIT_APP_CONFIG", str(app))


def test_a_due_schedule_fires_once_and_records_who_and_why(local_root, tmp_path, launchers):
    path = _write(tmp_path, MONTHLY)
    fire = dt.datetime(2026, 12, 1, 5, 0, tzinfo=UTC)  # 06:00 in Oslo (winter, UTC+1)
    fired = schedules.tick(fire + dt.timedelta(seconds=20), path=path)
    assert [f.fire_at for f in fired] == [fire.isoformat()]
    assert len(fired[0].runs) == 2
    records = [runs.load(r) for r in fired[0].runs]
    assert sorted(r.market for r in records) == ["NO", "US"]
    for record in records:
        assert record.status == "queued" and record.period == "2027-01"  # next month
        assert record.launcher == "planner@example.com"
        assert record.launched_from == "schedule"
        assert record.schedule == {
            "name": "monthly",
            "fire_at": fire.isoformat(),
            "run_as": "planner@example.com",
        }
        assert record.config["forecast"]["horizon"] == 8
    assert {e.run_id for e in queue.pending()} == set(fired[0].runs)
    assert all(e.priority == 2 for e in queue.pending())
    # The same tick again, or a later one before the next fire time: nothing more.
    assert schedules.tick(fire + dt.timedelta(seconds=20), path=path) == []
    assert schedules.tick(fire + dt.timedelta(days=3), path=path) == []
    assert len(queue.pending()) == 2
    last = schedules.last_fired(schedules.load(path)[0], local_root)
    assert last["runs"] == fired[0].runs


def test_not_due_fires_nothing(local_root, tmp_path, launchers):
    path = _write(tmp_path, MONTHLY)
    # 1 December 05:59 in Oslo: the 1 November fire is a month old, past catch-up.
    assert schedules.tick(dt.datetime(2026, 12, 1, 4, 59, tzinfo=UTC), path=path) == []
    assert queue.pending() == []


def test_missed_fire_times_catch_up_with_the_latest_only(local_root, tmp_path, launchers):
    path = _write(
        tmp_path,
        """
schedules:
  hourly:
    cron: "0 * * * *"
    markets: [US]
    run_as: planner@example.com
    catch_up_hours: 6
""",
    )
    # Down from 01:30 to 05:20: 02:00, 03:00, 04:00 and 05:00 were missed.
    fired = schedules.tick(dt.datetime(2026, 12, 2, 5, 20, tzinfo=UTC), path=path)
    assert [f.fire_at for f in fired] == ["2026-12-02T05:00:00+00:00"]
    assert len(queue.pending()) == 1
    # Down for longer than catch_up_hours: its latest time is too old, nothing fires.
    later = dt.datetime(2026, 12, 2, 13, 0, tzinfo=UTC)
    assert [f.fire_at for f in schedules.tick(later, path=path)] == [later.isoformat()]
    path.write_text(path.read_text().replace("catch_up_hours: 6", "catch_up_hours: 0.1"))
    assert schedules.tick(dt.datetime(2026, 12, 2, 16, 30, tzinfo=UTC), path=path) == []


def test_run_as_must_be_allowed_to_launch(local_root, tmp_path, launchers):
    path = _write(tmp_path, MONTHLY.replace("planner@example.com", "intruder@example.com"))
    fired = schedules.tick(dt.datetime(2026, 12, 1, 5, 0, tzinfo=UTC), path=path)
    assert fired[0].runs == [] and "not on launchers" in fired[0].skipped
    assert queue.pending() == []


def test_next_fire_times_follow_the_time_zone(tmp_path):
    (schedule,) = schedules.load(_write(tmp_path, MONTHLY))
    # 06:00 in Oslo is 05:00 UTC in winter, 04:00 UTC in summer.
    assert schedule.period_at(dt.datetime(2026, 12, 31, 23, 30, tzinfo=UTC)) == "2027-02"
    after = dt.datetime(2026, 12, 1, 5, 0, tzinfo=UTC)
    assert schedules.next_fire(schedule, after) == dt.datetime(2027, 1, 1, 5, tzinfo=UTC)
    after = dt.datetime(2027, 5, 15, tzinfo=UTC)
    assert schedules.next_fire(schedule, after) == dt.datetime(2027, 6, 1, 4, tzinfo=UTC)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('cron: "0 6 1 *"', "schedules.monthly.cron: not a cron expression"),
        ("timezone: Mars/Olympus", "schedules.monthly.timezone: unknown time zone"),
        ("period: someday", "schedules.monthly.period: expected this month"),
        ("colour: blue", "schedules.monthly.colour: Extra inputs are not permitted"),
    ],
)
def test_a_broken_schedule_is_named_in_one_line(tmp_path, body, message):
    key = body.split(":")[0]
    lines = [line for line in MONTHLY.splitlines() if not line.strip().startswith(f"{key}:")]
    path = _write(tmp_path, "\n".join(lines) + f"\n    {body}\n")
    with pytest.raises(schedules.ScheduleError, match=message):
        schedules.load(path)


def test_the_commands(local_root, tmp_path, launchers, monkeypatch):
    # The project's configs/schedules.yaml ships one schedule, disabled.
    env = toolkit_env(local_root)
    listed = json.loads(
        toolkit(["schedules", "list", "--json", "--now", "2026-12-02T00:00:00Z"], env).stdout
    )
    assert listed[0]["name"] == "monthly-pricing" and listed[0]["enabled"] is False
    assert listed[0]["next_fire"] == "2027-01-01T05:00:00+00:00"
    out = toolkit(["schedules", "tick", "--now", "2027-01-01T05:00:00Z"], env)
    assert "nothing due" in out.stdout
    bad = toolkit(["schedules", "tick", "--now", "yesterday"], env, check=False)
    assert bad.returncode == 2 and "expected an ISO time" in bad.stderr
    assert "Traceback" not in bad.stderr
