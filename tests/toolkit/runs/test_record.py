"""The typed run record: old records still read, bad ones refused readably, round trips."""

from __future__ import annotations

import copy
import datetime as dt
import json

import pytest

from toolkit.data import storage
from toolkit.runs import store as runs
from toolkit.runs.record import (
    NAME_MAX,
    NOTE_MAX,
    SCHEMA_VERSION,
    LabelError,
    RunEvent,
    RunRecord,
    StepRecord,
    check_name,
    check_note,
    map_urls,
    relative_url,
)

RUN_ID = "20261129-004512-US-2026-11-3f9a1c"


def version_1_record(root: str) -> dict:
    """A record as the toolkit wrote it before the model (no schema_version): finished."""
    return {
        "id": RUN_ID,
        "status": "failed",
        "market": "US",
        "period": "2026-11",
        "category": None,
        "launcher": "ann",
        "host": "box",
        "created_at": "2026-11-29T00:45:12.001+00:00",
        "heartbeat_at": "2026-11-29T00:47:30.512+00:00",
        "heartbeat_seconds": 5.0,
        "root": root,
        "inputs": {"configs": [], "patches": ["optimize.weights.margin=0.9"]},
        "config": {"country": "US", "execution": {"step_timeout_seconds": 1800}},
        "origins": {"optimize.weights.margin": "--patch optimize.weights.margin=0.9"},
        "config_url": f"{root}/runs/{RUN_ID}/config.yaml",
        "executor": "serial",
        "force": False,
        "versions": {"python": "3.11.9", "ploomber": "0.23.3"},
        "git_commit": "abc123-dirty",
        "steps": {
            "load_transform": {
                "status": "reused",
                "reused": True,
                "reused_from": "20261128-101010-US-2026-11-aaaaaa",
                "cache_key": "k1",
                "outputs": {"data": f"{root}/cache/x/weekly_sales.parquet"},
                "url": f"{root}/cache/x",
                "error": None,
                "duration_s": 0.0,
            },
            "forecast": {
                "status": "failed",
                "cache_key": "k2",
                "reused": False,
                "started_at": "2026-11-29T00:45:20.000+00:00",
                "attempts": [f"{RUN_ID}.1"],
                "error": "ContractError: Forecasts contract failed on write",
                "report": [
                    {
                        "dataset": "Forecasts",
                        "url": f"{root}/x.parquet",
                        "stage": "write",
                        "n_rows": 3,
                        "failures": [],
                    }
                ],
                "debug": {"notebook": f"{root}/runs/{RUN_ID}/steps/forecast/1/forecast.ipynb"},
                "traceback": "Traceback ...",
                "finished_at": "2026-11-29T00:47:01.000+00:00",
                "duration_s": 101.0,
            },
        },
        "events": [
            {"at": "2026-11-29T00:45:13.000+00:00", "message": "[1/5] load_transform: reused"},
            {"at": "2026-11-29T00:47:01.000+00:00", "message": "[3/5] forecast: failed: boom"},
        ],
        "started_at": "2026-11-29T00:45:12.500+00:00",
        "finished_at": "2026-11-29T00:47:01.100+00:00",
        "error": "a step failed; see its error and report",
        "pid": 4242,
        "resumed": ["2026-11-29T00:46:00.000+00:00"],
        "updated_at": "2026-11-29T00:47:01.100+00:00",
    }


def write_raw(root: str, data) -> None:
    text = data if isinstance(data, str) else json.dumps(data)
    storage.write_bytes(runs.record_url(RUN_ID, root), text.encode())


def test_a_version_1_record_loads(local_root):
    write_raw(local_root, version_1_record(local_root))

    record = runs.load(RUN_ID, local_root)

    assert isinstance(record, RunRecord) and record.schema_version == 1
    assert record.status == "failed" and record.stored_status == "failed"
    assert record.inputs.patches == ["optimize.weights.margin=0.9"]
    reused, failed = record.steps["load_transform"], record.steps["forecast"]
    assert isinstance(failed, StepRecord)
    assert reused.reused and reused.reused_from.endswith("aaaaaa") and reused.attempts == []
    assert failed.report[0]["dataset"] == "Forecasts" and failed.debug["notebook"]
    assert record.events[1] == RunEvent(
        at="2026-11-29T00:47:01.000+00:00", message="[3/5] forecast: failed: boom"
    )
    assert runs.duration_seconds(record) == 108.6
    assert runs.summary_row(record)["steps"]["load_transform"] == {
        "status": "reused",
        "reused": True,
    }
    assert [r.id for r in runs.list_runs(local_root)] == [RUN_ID]


def test_saving_writes_the_same_keys_plus_the_schema_version(local_root):
    old = version_1_record(local_root)
    write_raw(local_root, old)

    runs.save(runs.load(RUN_ID, local_root), local_root)

    stored = json.loads(storage.read_bytes(runs.record_url(RUN_ID, local_root)))
    assert stored["schema_version"] == SCHEMA_VERSION
    assert set(old) <= set(stored) and "stored_status" not in stored
    # Since version 3 the run's files are named relative to the root; nothing else changes.
    assert stored["config_url"] == f"runs/{RUN_ID}/config.yaml"
    expected = map_urls(old, lambda url: relative_url(local_root, url))
    for key in set(old) - {"updated_at", "steps"}:
        assert stored[key] == expected[key], key
    for name, step in expected["steps"].items():
        assert {k: stored["steps"][name][k] for k in step} == step


def test_round_trip_save_load_is_equal(local_root):
    record = RunRecord.model_validate(version_1_record(local_root))
    assert record.schema_version == SCHEMA_VERSION  # a new record, not a stored one
    record.status = "succeeded"

    runs.save(record, local_root)
    loaded = runs.load(RUN_ID, local_root)

    assert loaded.model_dump() == record.model_dump()
    assert loaded.stored_status == "succeeded"


def test_a_late_heartbeat_reads_interrupted_and_keeps_the_stored_status(local_root):
    old = version_1_record(local_root)
    old.update(status="running", finished_at=None)
    write_raw(local_root, old)

    record = runs.load(RUN_ID, local_root)

    assert record.status == "interrupted" and record.stored_status == "running"


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda r: r.update(status="exploded"), "status: Input should be 'queued'"),
        (lambda r: r.pop("market"), "market: Field required"),
        (lambda r: r["steps"]["forecast"].update(status="meh"), "steps.forecast.status"),
        (lambda r: r.update(created_at="yesterday"), "created_at: Value error"),
    ],
)
def test_an_invalid_record_is_refused_naming_the_run_and_the_problem(local_root, change, expected):
    bad = copy.deepcopy(version_1_record(local_root))
    change(bad)
    write_raw(local_root, bad)

    with pytest.raises(runs.RecordUnreadable) as caught:
        runs.load(RUN_ID, local_root)

    message = str(caught.value)
    assert runs.record_url(RUN_ID, local_root) in message and "is invalid" in message
    assert expected in message
    assert "pydantic" not in message and "\n" not in message
    assert isinstance(caught.value, runs.RunNotFound)  # callers that caught it still do
    (listed,) = runs.list_runs(local_root)
    assert listed.id == RUN_ID and listed.status == "unreadable" and expected in listed.error


def test_a_corrupt_record_is_refused_naming_it(local_root):
    write_raw(local_root, '{"id": "trunc')

    with pytest.raises(runs.RecordUnreadable, match=f"{RUN_ID}/record.json is corrupt"):
        runs.load(RUN_ID, local_root)
    write_raw(local_root, "[1, 2]")
    with pytest.raises(runs.RecordUnreadable, match="is not a JSON object"):
        runs.load(RUN_ID, local_root)


def test_fields_from_a_newer_writer_are_kept(local_root):
    newer = version_1_record(local_root)
    newer.update(schema_version=SCHEMA_VERSION + 1, priority="high", labels={"team": "eu"})
    newer["steps"]["forecast"]["gpu_seconds"] = 12.5
    write_raw(local_root, newer)

    record = runs.load(RUN_ID, local_root)
    assert record.schema_version == SCHEMA_VERSION + 1
    assert record.model_extra == {"priority": "high", "labels": {"team": "eu"}}
    runs.save(record, local_root)  # e.g. a resume by this version

    stored = json.loads(storage.read_bytes(runs.record_url(RUN_ID, local_root)))
    assert stored["priority"] == "high" and stored["labels"] == {"team": "eu"}
    assert stored["steps"]["forecast"]["gpu_seconds"] == 12.5


def test_assignments_are_validated():
    record = RunRecord(
        id="r",
        status="queued",
        market="US",
        period="2026-11",
        root="/tmp/store",
        created_at=dt.datetime.now(dt.UTC).isoformat(),
    )
    assert record.schema_version == SCHEMA_VERSION and record.steps == {}
    with pytest.raises(ValueError, match="status"):
        record.status = "done"
    record.status = "running"
    assert record.status == "running"


def test_a_record_without_name_or_note_reads_as_none_and_keeps_them_once_set(local_root):
    write_raw(local_root, version_1_record(local_root))
    record = runs.load(RUN_ID, local_root)
    assert (record.name, record.note) == (None, None)
    record.name, record.note = "Black Friday test", "deeper cuts, same budget"
    runs.save(record, local_root)
    again = runs.load(RUN_ID, local_root)
    assert (again.name, again.note) == ("Black Friday test", "deeper cuts, same budget")


@pytest.mark.parametrize(
    ("check", "text", "expected"),
    [
        (check_name, "  Deeper\tcuts \n ", "Deeper cuts"),
        (check_name, "   ", None),
        (check_note, " line one\r\nline two ", "line one\nline two"),
        (check_note, None, None),
    ],
)
def test_names_and_notes_are_stored_tidy(check, text, expected):
    assert check(text) == expected


@pytest.mark.parametrize(
    ("check", "text", "words"),
    [
        (check_name, "x" * (NAME_MAX + 1), f"keep it to {NAME_MAX}"),
        (check_name, "bell\x07", "control characters"),
        (check_note, "y" * (NOTE_MAX + 1), f"keep it to {NOTE_MAX}"),
    ],
)
def test_a_name_or_note_that_cannot_be_stored_says_why(check, text, words):
    with pytest.raises(LabelError, match=words):
        check(text)
