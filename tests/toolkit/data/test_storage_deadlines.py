"""Storage that stops answering: every call fails within its deadline, then works again.

moto's S3 server sits behind a proxy the test pauses (connections accepted, never
answered). The knobs give a deadline of (1 s connect + 1 s read) x 2 attempts = 4 s;
each call must fail within that plus slack, saying which endpoint, operation and URL.
"""

from __future__ import annotations

import io
import posixpath
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import toolkit, toolkit_env

from toolkit.data import io as data_io
from toolkit.data import storage

KNOBS = {
    "TOOLKIT_STORAGE_CONNECT_TIMEOUT": "1",
    "TOOLKIT_STORAGE_READ_TIMEOUT": "1",
    "TOOLKIT_STORAGE_MAX_ATTEMPTS": "2",
}
BOUND = (1 + 1) * 2
LIMIT = BOUND * 1.5 + 3  # slack for a loaded machine, still far below the old minutes

OPERATIONS = {  # name: (call on an object's URL, the verb its error message uses)
    "read": (storage.read_bytes, "read"),
    "write": (lambda url: storage.write_bytes(url, b'{"id": "again"}'), "write"),
    "list": (lambda url: storage.listdir(posixpath.dirname(url)), "list"),
    "glob": (lambda url: storage.glob(posixpath.dirname(url) + "/*.json"), "list"),
    "exists": (storage.exists, "check"),
    "info": (storage.info, "check"),
    "delete": (storage.remove, "remove"),
    "open and read": (lambda url: storage.open_url(url).read(), "open"),
    "read many": (lambda url: storage.read_many([url, url + ".other"]), "read"),
}


@pytest.fixture
def stalled(stalling_s3, monkeypatch):
    """The stalling S3 store with a 4 s deadline, and one object on it."""
    for name, value in KNOBS.items():
        monkeypatch.setenv(name, value)
    assert storage.deadline() == BOUND
    url = storage.join(stalling_s3.root, "runs", "r1", "record.json")
    storage.write_bytes(url, b'{"id": "r1"}')
    return stalling_s3, url


def fails_within_bound(call, *args) -> tuple[str, float]:
    """The StorageError message of ``call(*args)``, and how long it took to fail."""
    started = time.monotonic()
    with pytest.raises(storage.StorageError) as failure:
        call(*args)
    elapsed = time.monotonic() - started
    assert elapsed < LIMIT, f"failed after {elapsed:.1f} s, deadline {BOUND} s"
    return str(failure.value), elapsed


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_each_call_fails_within_its_deadline_then_works_again(stalled, operation):
    s3, url = stalled
    call, verb = OPERATIONS[operation]
    s3.pause()
    message, _ = fails_within_bound(call, url)
    assert message.startswith(f"cannot {verb} {s3.root}/runs/"), message
    assert f"endpoint {s3.endpoint}" in message
    s3.resume()
    call(url)  # the same call, once the store answers


def test_a_write_waiting_for_100_continue_ends_at_the_deadline(stalled):
    """botocore sends a PUT's body only after ``100 Continue``, a wait aiohttp's read timeout
    does not cover: only the overall deadline ends it, and the message says so."""
    s3, url = stalled
    s3.pause()
    message, _ = fails_within_bound(storage.write_bytes, url, b"x")
    assert f"the {BOUND:g} s deadline passed (2 attempts of 1 s to connect + 1 s to read)" in (
        message
    )
    s3.resume()
    assert storage.read_bytes(url) == b'{"id": "r1"}'  # the stalled write never landed


def test_a_large_object_is_read_by_ranges_each_within_the_deadline(stalled):
    s3, _ = stalled
    table = pa.table({"week": list(range(50_000)), "units": [1.5] * 50_000})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    url = storage.raw_url("NO", "sales", s3.root)
    storage.write_bytes(url, buffer.getvalue())
    assert data_io.read_unchecked(url).equals(table.to_pandas())  # small: read whole

    fs, path = storage.filesystem(url)
    size = storage.info(url)["size"]
    ranges = io.BufferedReader(storage.BoundedReader(url, fs, path, size), buffer_size=2**16)
    assert pq.read_table(ranges).equals(table)  # the footer, then column chunks, by ranges
    ranges.seek(0)
    s3.pause()
    message, _ = fails_within_bound(ranges.read)
    assert message.startswith(f"cannot read {url}")
    s3.resume()
    assert ranges.read() == buffer.getvalue()


def test_a_run_that_cannot_reach_storage_fails_naming_endpoint_and_operation(stalled):
    s3, _ = stalled
    env = toolkit_env(s3.root, **s3.env, **KNOBS)
    s3.pause()
    started = time.monotonic()
    result = toolkit(["run", "--patch", "country=NO"], env, check=False, timeout=300)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("run failed: cannot ") and f"endpoint {s3.endpoint}" in last, last
    assert elapsed < 120, f"took {elapsed:.0f} s"
