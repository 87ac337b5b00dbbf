"""The storage root on every store the toolkit names: a local folder, S3 (moto's server),
GCS (fake-gcs-server) and Azure Blob (Azurite), each over HTTP on loopback. The same calls
behave the same everywhere; conditional writes are decided by the server where the store
and its fsspec library allow it (S3, Azure; creation on GCS), else compared, then written.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import threading
import time

import pytest
from faults import StallingProxy

from toolkit.data import storage

ROOTS = {"local": "local_root", "s3": "s3_root", "gs": "gcs_root", "az": "azure_root"}


@pytest.fixture(params=list(ROOTS))
def root(request) -> str:
    return request.getfixturevalue(ROOTS[request.param])


def test_read_write_list_and_remove(root):
    record = storage.join(root, "runs", "r1", "record.json")
    other = storage.join(root, "runs", "r2", "record.json")
    assert not storage.exists(record)
    assert storage.listdir(storage.join(root, "runs")) == []
    storage.write_bytes(record, b'{"id": "r1"}')
    storage.write_bytes(other, b'{"id": "r2"}')
    assert storage.exists(record)
    assert storage.read_bytes(record) == b'{"id": "r1"}'
    assert storage.info(record)["size"] == len(b'{"id": "r1"}')
    assert storage.open_url(record).read() == b'{"id": "r1"}'
    assert storage.listdir(storage.join(root, "runs")) == ["r1", "r2"]
    assert storage.glob(storage.join(root, "runs", "*", "record.json")) == [record, other]
    found = storage.read_many([record, record + ".missing"])
    assert found[record] == b'{"id": "r1"}'
    assert isinstance(found[record + ".missing"], FileNotFoundError)
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(record + ".missing")

    storage.remove(record)
    assert not storage.exists(record)
    storage.remove(record)  # removing what is gone is no error
    storage.remove(storage.join(root, "runs"), recursive=True)
    assert not storage.exists(other)
    assert storage.listdir(storage.join(root, "runs")) == []


def test_conditional_writes_create_once_and_replace_only_the_version_read(root):
    url = storage.join(root, "leases", "r1.json")
    first = storage.write_if(url, b"generation 1", None)
    with pytest.raises(storage.WriteConflict, match="expected no object"):
        storage.write_if(url, b"another creator", None)
    data, version = storage.read_versioned(url)
    assert (data, version) == (b"generation 1", first) == (data, storage.version_of(url))

    second = storage.write_if(url, b"generation 2", version)
    assert second != first and storage.version_of(url) == second
    with pytest.raises(storage.WriteConflict, match="changed"):
        storage.write_if(url, b"a stale writer", first)
    assert storage.read_bytes(url) == b"generation 2"

    storage.remove(url)
    assert storage.version_of(url) is None
    with pytest.raises(storage.WriteConflict):
        storage.write_if(url, b"after removal", second)


def race(url: str, version: str | None, writers: int = 6) -> list[str]:
    """``writers`` threads, each with a client of its own, write ``url`` at ``version`` at
    once; the versions of those that won."""
    start, won = threading.Barrier(writers), []

    def write(n: int) -> None:
        fs = storage.own_filesystem(url)
        start.wait()
        with contextlib.suppress(storage.WriteConflict):
            won.append(storage.write_if(url, f"writer {n}".encode(), version, fs))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return won


def test_of_writers_creating_one_object_at_once_one_wins(root):
    url = storage.join(root, "leases", "raced.json")
    won = race(url, None)
    assert len(won) == 1 and storage.version_of(url) == won[0]


def test_of_writers_replacing_one_version_at_once_one_wins(root):
    if root.startswith("gs://"):
        pytest.skip("gcsfs sends no generation with a replacement: compared, then written")
    url = storage.join(root, "leases", "raced.json")
    version = storage.write_if(url, b"generation 1", None)
    won = race(url, version)
    assert len(won) == 1 and storage.version_of(url) == won[0]


# A deadline of (1 s connect + 1 s read) x 2 attempts; slack for a loaded machine.
KNOBS = {
    "TOOLKIT_STORAGE_CONNECT_TIMEOUT": "1",
    "TOOLKIT_STORAGE_READ_TIMEOUT": "1",
    "TOOLKIT_STORAGE_MAX_ATTEMPTS": "2",
}
LIMIT = 4 * 1.5 + 3

OPERATIONS = {
    "read": storage.read_bytes,
    "write": lambda url: storage.write_bytes(url, b"again"),
    "list": lambda url: storage.listdir(posixpath.dirname(url)),
    "exists": storage.exists,
    "replace": lambda url: storage.write_if(url, b"again", storage.version_of(url)),
}


def test_a_cloud_that_stops_answering_fails_each_call_within_its_deadline(cloud_root, monkeypatch):
    """gcsfs and adlfs retry on their own; the storage deadline still ends every call."""
    url = storage.join(cloud_root, "runs", "r1", "record.json")
    storage.write_bytes(url, b"{}")
    endpoint_variable = {"gs": "STORAGE_EMULATOR_HOST", "az": "AZURE_STORAGE_CONNECTION_STRING"}
    name = endpoint_variable[cloud_root.split("://")[0]]
    setting = os.environ[name]
    endpoint = setting if name.startswith("STORAGE") else setting.split("BlobEndpoint=")[1]
    target = "/".join(endpoint.split("/")[:3])  # http://127.0.0.1:<port>
    with StallingProxy(target) as proxy:
        monkeypatch.setenv(name, setting.replace(target, proxy.url))
        for knob, value in KNOBS.items():
            monkeypatch.setenv(knob, value)
        # Instances are cached by their arguments, not by the environment they read.
        type(storage.filesystem(url)[0]).clear_instance_cache()
        assert storage.read_bytes(url) == b"{}"  # through the proxy
        proxy.pause()
        for operation, call in OPERATIONS.items():
            started = time.monotonic()
            with pytest.raises(storage.StorageError, match="deadline|cannot"):
                call(url)
            elapsed = time.monotonic() - started
            assert elapsed < LIMIT, f"{operation} failed after {elapsed:.1f} s"
        proxy.resume()
        assert storage.read_bytes(url) == b"{}"
