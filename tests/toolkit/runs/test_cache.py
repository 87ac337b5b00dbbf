"""The cache keys inputs by content (same bytes, same key) and verifies what it reads: a
published object that changed is reported and skipped, and its step executes again."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
from helpers import toolkit, toolkit_env

from toolkit import config as config_mod
from toolkit.data import storage
from toolkit.runs import cache, runner
from toolkit.runs import store as runs


def test_a_local_file_is_fingerprinted_by_its_bytes_not_its_time_stamp(tmp_path):
    url = str(tmp_path / "sales.parquet")
    storage.write_bytes(url, b"abc" * 1000)
    first = cache.file_fingerprint(url)
    os.utime(url, (0, 0))
    storage.write_bytes(url, b"abc" * 1000)
    assert cache.file_fingerprint(url) == first
    storage.write_bytes(url, b"abd" * 1000)  # same size, other bytes
    assert cache.file_fingerprint(url) != first
    assert cache.file_fingerprint(str(tmp_path / "absent.parquet")) == "missing"


def test_an_s3_object_is_fingerprinted_by_its_content_checksum(s3_root):
    url = storage.join(s3_root, "raw", "sales.parquet")
    storage.write_bytes(url, b"abc" * 1000)
    first = cache.file_fingerprint(url)
    storage.write_bytes(url, b"abc" * 1000)
    assert cache.file_fingerprint(url) == first
    storage.write_bytes(url, b"abd" * 1000)
    assert cache.file_fingerprint(url) != first


# ---------------------------------------------------------------------------
# A cache that verifies itself: digests in the manifest, newest intact attempt wins
# ---------------------------------------------------------------------------

IDENTITY = {"market": "US", "period": "2026-11", "category": None}


def flip_middle(path) -> None:
    """Corrupt a file in place as a bad disk block would: same size, same time stamp."""
    stat = os.stat(path)
    with open(path, "r+b") as fh:
        fh.seek(stat.st_size // 2)
        block = fh.read(64)
        fh.seek(stat.st_size // 2)
        fh.write(bytes(b ^ 0xFF for b in block))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def publish_attempt(root, tmp_path, attempt, completed_at, payload=b"rows" * 500):
    local = tmp_path / attempt / "forecasts.parquet"
    local.parent.mkdir(parents=True)
    local.write_bytes(payload)
    return cache.publish(
        root, IDENTITY, "forecast", "k1", attempt, {"data": str(local)}, attempt, completed_at
    )


def test_a_manifest_names_each_object_relatively_with_its_sha256(local_root, tmp_path):
    hit = publish_attempt(local_root, tmp_path, "run-a.1", "2026-12-01T10:00:00.000+00:00")
    text = storage.read_bytes(storage.join(hit["url"], cache.MANIFEST)).decode()
    entry = json.loads(text)["files"]["data"]
    assert entry == {
        "name": "forecasts.parquet",
        "size": 2000,
        "sha256": hashlib.sha256(b"rows" * 500).hexdigest(),
    }
    assert local_root not in text  # a copied store still reads


def test_lookup_takes_the_newest_intact_attempt_and_reports_a_corrupt_one(
    local_root, tmp_path, caplog
):
    older = publish_attempt(local_root, tmp_path, "run-a.1", "2026-12-01T10:00:00.000+00:00")
    newer = publish_attempt(local_root, tmp_path, "run-b.1", "2026-12-02T10:00:00.000+00:00")
    assert cache.lookup(local_root, IDENTITY, "forecast", "k1")["url"] == newer["url"]

    flip_middle(newer["outputs"]["data"])
    warnings: list[str] = []
    with caplog.at_level(logging.WARNING, logger="toolkit.runs.cache"):
        hit = cache.lookup(local_root, IDENTITY, "forecast", "k1", warnings)
    assert hit["url"] == older["url"]
    expected = newer["files"]["data"]["sha256"]
    actual = hashlib.sha256(Path(newer["outputs"]["data"]).read_bytes()).hexdigest()
    for text in (warnings[0], caplog.text):
        assert newer["outputs"]["data"] in text and expected in text and actual in text

    flip_middle(older["outputs"]["data"])
    assert cache.lookup(local_root, IDENTITY, "forecast", "k1") is None


def test_an_attempt_without_digests_is_not_trusted(local_root, tmp_path):
    hit = publish_attempt(local_root, tmp_path, "run-a.1", "2026-12-01T10:00:00.000+00:00")
    manifest_url = storage.join(hit["url"], cache.MANIFEST)
    manifest = json.loads(storage.read_bytes(manifest_url))
    del manifest["files"]["data"]["sha256"]  # as published before digests were kept
    storage.write_bytes(manifest_url, json.dumps(manifest).encode())
    warnings: list[str] = []
    assert cache.lookup(local_root, IDENTITY, "forecast", "k1", warnings) is None
    assert "no content digests" in warnings[0]


def test_fetch_writes_only_objects_that_match_their_digest(local_root, tmp_path):
    hit = publish_attempt(local_root, tmp_path, "run-a.1", "2026-12-01T10:00:00.000+00:00")
    target = tmp_path / "workspace" / "forecasts.parquet"
    cache.fetch(hit["outputs"], {"data": target})
    assert target.read_bytes() == b"rows" * 500

    target.unlink()
    flip_middle(hit["outputs"]["data"])
    with pytest.raises(cache.CorruptObject) as caught:
        cache.fetch(hit["outputs"], {"data": target})
    assert caught.value.damage.url == hit["outputs"]["data"]
    assert caught.value.damage.expected == hit["files"]["data"]["sha256"]
    assert hit["outputs"]["data"] in str(caught.value)
    assert not target.exists()


def test_an_object_rewritten_on_s3_is_skipped_and_refused(s3_root, tmp_path):
    older = publish_attempt(s3_root, tmp_path, "run-a.1", "2026-12-01T10:00:00.000+00:00")
    newer = publish_attempt(s3_root, tmp_path, "run-b.1", "2026-12-02T10:00:00.000+00:00")
    url = newer["outputs"]["data"]
    data = bytearray(storage.read_bytes(url))
    data[len(data) // 2] ^= 0xFF
    storage.write_bytes(url, bytes(data))  # S3 objects change only by a new PUT
    warnings: list[str] = []
    assert cache.lookup(s3_root, IDENTITY, "forecast", "k1", warnings)["url"] == older["url"]
    assert url in warnings[0] and newer["files"]["data"]["sha256"] in warnings[0]
    with pytest.raises(cache.CorruptObject):
        cache.fetch(newer["outputs"], {"data": tmp_path / "fetched.parquet"})


# ---------------------------------------------------------------------------
# Whole runs on a local store (slow)
# ---------------------------------------------------------------------------


def run_id_from(output: str) -> str:
    return next(line.split()[1] for line in output.splitlines() if line.startswith("run "))


@pytest.fixture(scope="module")
def finished_store(tmp_path_factory):
    """A local store with small demo data (written by `toolkit demo-data`) and one run."""
    root = str(tmp_path_factory.mktemp("cache") / "store")
    env = toolkit_env(root)
    toolkit(["demo-data", "--markets", "US", "--products", "30"], env)
    run_id = run_id_from(toolkit(["run"], env).stdout)
    return root, run_id


@pytest.fixture
def store(finished_store, tmp_path):
    """A copy of the finished store for one test to damage (the cache is keyed by content,
    not by the root, so the copy's cache serves it)."""
    root, run_id = finished_store
    copy = str(tmp_path / "store")
    shutil.copytree(root, copy)
    return copy, run_id


@pytest.mark.slow
def test_a_cached_parquet_corrupted_in_place_is_reported_and_executed_again(store):
    root, first = store
    forecast = runs.load(first, root).steps["forecast"]
    damaged = forecast.outputs["data"].replace(forecast.url.split("/cache/")[0], root)
    flip_middle(damaged)
    env = toolkit_env(root)

    result = toolkit(["run"], env)
    second = runs.load(run_id_from(result.stdout), root)
    assert second.status == "succeeded"
    assert "skipped cache attempt" in result.stdout and damaged in result.stdout
    assert f"corrupt cached object {damaged}: expected sha256 " in result.stderr
    assert any(damaged in event.message for event in second.events)
    assert not second.steps["forecast"].reused  # executed again, into a new attempt
    assert second.steps["forecast"].url != forecast.url
    assert {n for n, s in second.steps.items() if s.reused} == {
        "load_transform",
        "identify_underperformers",
        "optimize",
        "check_forecast",
        "format_output",
    }

    third = runs.load(run_id_from(toolkit(["run"], env).stdout), root)
    assert third.steps["forecast"].reused_from == second.id  # the newest intact attempt
    assert third.steps["forecast"].url == second.steps["forecast"].url


@pytest.mark.slow
def test_force_publishes_attempts_that_later_runs_reuse(store):
    root, first = store
    optimize = runs.load(first, root).steps["optimize"]
    flip_middle(optimize.outputs["data"].replace(optimize.url.split("/cache/")[0], root))
    env = toolkit_env(root)

    forced = runs.load(run_id_from(toolkit(["run", "--force"], env).stdout), root)
    assert forced.status == "succeeded"
    assert not any(step.reused for step in forced.steps.values())

    result = toolkit(["run"], env)
    after = runs.load(run_id_from(result.stdout), root)
    assert {step.reused_from for step in after.steps.values()} == {forced.id}
    assert "skipped cache attempt" not in result.stdout


@pytest.mark.slow
def test_demo_data_written_again_reuses_every_step(store):
    root, first = store
    env = toolkit_env(root)
    toolkit(["demo-data", "--markets", "US", "--products", "30"], env)  # same bytes, new times
    record = runs.load(run_id_from(toolkit(["run"], env).stdout), root)
    assert record.status == "succeeded"
    assert {step.reused_from for step in record.steps.values()} == {first}


@pytest.mark.slow
def test_an_upstream_object_corrupted_after_its_lookup_executes_that_step_again(store):
    """The object changes between the lookup that checked it and the download of the step
    that reads it: the download refuses it, and the run executes the upstream step again."""
    root, first = store
    os.environ["TOOLKIT_ROOT"] = root
    events: list[str] = []

    def corrupt_after_lookup(message: str) -> None:
        events.append(message)
        if message.startswith("[1/6] load_transform: reused"):
            hit = cache.lookup(root, IDENTITY, "load_transform", key_of("load_transform"))
            flip_middle(hit["outputs"]["data"])

    def key_of(step: str) -> str:
        return runs.load(first, root).steps[step].cache_key

    patch = ["underperformers.max_products=59"]  # identify_underperformers executes
    resolved = config_mod.resolve(patches=patch)
    record = runner.start(resolved, (), patch, progress=corrupt_after_lookup)
    assert record.status == "succeeded"
    steps = record.steps
    assert not steps["load_transform"].reused  # executed again, after its attempt was refused
    assert len(steps["identify_underperformers"].attempts) == 2
    assert any("corrupt cached object" in e and "load_transform runs again" in e for e in events)
    assert any("skipped cache attempt" in e for e in events)
