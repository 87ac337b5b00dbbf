"""The storage root: defaults, URL joins, S3 settings from the environment."""

from __future__ import annotations

import pytest

from toolkit import project
from toolkit.data import storage


def test_default_root_is_the_project_store(monkeypatch):
    monkeypatch.delenv("TOOLKIT_ROOT", raising=False)
    assert storage.root() == str(project.root() / "store")
    monkeypatch.setenv("TOOLKIT_ROOT", "s3://bucket/prefix/")
    assert storage.root() == "s3://bucket/prefix"


def test_s3_options_have_timeouts_retries_and_endpoint(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_REGION", "eu-north-1")
    options = storage.s3_options()
    assert options["config_kwargs"]["connect_timeout"] > 0
    assert options["config_kwargs"]["retries"]["total_max_attempts"] >= 1
    assert options["client_kwargs"] == {
        "endpoint_url": "http://127.0.0.1:9000",
        "region_name": "eu-north-1",
    }
    assert options["use_listings_cache"] is False
    assert "127.0.0.1:9000" in storage.describe("s3://b/k")


def test_gcs_and_azure_clients_get_the_request_timeouts(monkeypatch):
    monkeypatch.setenv("TOOLKIT_STORAGE_CONNECT_TIMEOUT", "2")
    monkeypatch.setenv("TOOLKIT_STORAGE_READ_TIMEOUT", "7.5")
    gcs = storage.cloud_options("gs")["requests_timeout"]
    assert (gcs.sock_connect, gcs.sock_read) == (2, 7.5)
    azure = storage.cloud_options("az")
    assert (azure["connection_timeout"], azure["read_timeout"]) == (2, 8)  # whole seconds
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:4443")
    assert storage.cloud_options("gs")["token"] == "anon"  # never the metadata server


def test_unknown_protocol_names_the_package_to_install():
    with pytest.raises(storage.StorageError, match="no filesystem for oci://.*ocifs"):
        storage.filesystem("oci://bucket/key")


def test_raw_urls_are_hive_style(local_root):
    assert storage.raw_url("NO", "sales").endswith("/raw/market=NO/sales.parquet")


def test_listing_sees_new_objects_on_s3(s3_root):
    assert storage.listdir(storage.join(s3_root, "runs")) == []
    storage.write_bytes(storage.join(s3_root, "runs", "a", "record.json"), b"{}")
    assert storage.listdir(storage.join(s3_root, "runs")) == ["a"]
    storage.write_bytes(storage.join(s3_root, "runs", "b", "record.json"), b"{}")
    assert storage.listdir(storage.join(s3_root, "runs")) == ["a", "b"]
