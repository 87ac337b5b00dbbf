"""The cache keys inputs by content: same bytes, same key; other bytes, another key."""

from __future__ import annotations

import os

from toolkit.data import storage
from toolkit.runs import cache


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
