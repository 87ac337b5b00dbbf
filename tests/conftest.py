"""Shared fixtures: a private storage root per test, a real S3 API on loopback, the project."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest
from helpers import PROJECT_DIR

os.environ["PLOOMBER_STATS_ENABLED"] = "false"
os.environ["PLOOMBER_VERSION_CHECK_DISABLED"] = "1"
# gcsfs reads this once, when first imported (by whichever test comes first): its default
# filesystem asks a gRPC API no emulator has what kind each bucket is, a minute's wait.
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def local_root(tmp_path, monkeypatch) -> str:
    """A fresh local storage root for one test."""
    root = tmp_path / "store"
    root.mkdir()
    monkeypatch.setenv("TOOLKIT_ROOT", str(root))
    return str(root)


@pytest.fixture
def project(tmp_path) -> Path:
    """A private copy of the project's configs and env.yaml, safe to edit."""
    target = tmp_path / "project"
    target.mkdir()
    shutil.copytree(PROJECT_DIR / "configs", target / "configs")
    shutil.copy(PROJECT_DIR / "env.yaml", target / "env.yaml")
    return target


@pytest.fixture
def project_copy(tmp_path) -> Path:
    """pipeline.yaml, env.yaml and the notebooks, in a folder of their own, safe to edit."""
    target = tmp_path / "project"
    shutil.copytree(PROJECT_DIR / "notebooks", target / "notebooks")
    for name in ("pipeline.yaml", "env.yaml"):
        shutil.copy(PROJECT_DIR / name, target / name)
    return target


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server over HTTP on a loopback port, as s3fs's own tests run it."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_root(s3_server, monkeypatch, request) -> str:
    """A fresh bucket on the moto server, set as the storage root."""
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    bucket = "toolkit-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    bucket = "".join(c for c in bucket if c.isalnum() or c == "-")
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    root = f"s3://{bucket}/prefix"
    monkeypatch.setenv("TOOLKIT_ROOT", root)
    import fsspec

    fsspec.AbstractFileSystem.clear_instance_cache()
    return root


@pytest.fixture(scope="module")
def s3_env(s3_server):
    """Credentials and endpoint for the moto server, in this process's environment (so the
    `toolkit` processes a test module starts inherit them)."""
    values = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_server,
    }
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    yield values
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def stalling_s3(s3_server, monkeypatch, request):
    """A fresh bucket on the moto server behind a proxy the test can pause (storage that
    accepts connections and never answers) and resume: a ``faults.StallingS3`` with
    ``root``, ``env``, ``endpoint``, ``pause()``, ``resume()``. The root, credentials and
    endpoint are set in this process; the proxy stops with the test."""
    import boto3
    import fsspec
    from faults import StallingProxy, StallingS3

    bucket = "stall-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    bucket = "".join(c for c in bucket if c.isalnum() or c == "-").strip("-")
    boto3.client(
        "s3",
        endpoint_url=s3_server,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket=bucket)
    with StallingProxy(s3_server) as proxy:
        env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": proxy.url,
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)  # would win over the proxy
        root = f"s3://{bucket}/prefix"
        monkeypatch.setenv("TOOLKIT_ROOT", root)
        fsspec.AbstractFileSystem.clear_instance_cache()
        yield StallingS3(root, env, proxy)
        proxy.resume()  # let clients that still wait on it finish before it closes


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory):
    """fake-gcs-server (a real GCS JSON API, with generation preconditions) on a loopback
    port, for gcsfs: the environment a process needs to use it."""
    from helpers import Emulator, fake_gcs_server

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [fake_gcs_server(), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1"]
    args += ["-port", port, "-external-url", url, "-log-level", "error"]
    with Emulator(args, port, tmp_path_factory.mktemp("gcs") / "server.log"):
        # gcsfs's default filesystem first asks a gRPC control API (not emulated) what kind
        # of bucket each is, waiting a minute for the answer; the plain one does not.
        yield {"STORAGE_EMULATOR_HOST": url, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


@pytest.fixture(scope="session")
def azure_server(tmp_path_factory):
    """Azurite's Blob service (from npm, installed by `make test`) on a loopback port, for
    adlfs: the environment a process needs to use it."""
    from helpers import AZURITE, AZURITE_ACCOUNT, AZURITE_KEY, Emulator

    if not AZURITE.exists():
        pytest.fail(f"{AZURITE} is missing: `make test` installs Azurite from npm")
    port = free_port()
    args = [AZURITE, "--blobHost", "127.0.0.1", "--blobPort", port, "--inMemoryPersistence"]
    args += ["--silent", "--skipApiVersionCheck", "--disableTelemetry"]
    with Emulator(args, port, tmp_path_factory.mktemp("azurite") / "server.log"):
        yield {
            "AZURE_STORAGE_CONNECTION_STRING": (
                f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
                f"AccountKey={AZURITE_KEY};"
                f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
            )
        }


def use_cloud(cloud: str, env: dict[str, str], monkeypatch) -> str:
    from helpers import new_cloud_root

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    root = new_cloud_root(cloud)
    monkeypatch.setenv("TOOLKIT_ROOT", root)
    return root


@pytest.fixture
def gcs_root(gcs_server, monkeypatch) -> str:
    """A fresh bucket on fake-gcs-server, set as the storage root, with the emulator's
    variables in this process's environment."""
    return use_cloud("gs", gcs_server, monkeypatch)


@pytest.fixture
def azure_root(azure_server, monkeypatch) -> str:
    """A fresh container on Azurite, set as the storage root, with the emulator's
    variables in this process's environment."""
    return use_cloud("az", azure_server, monkeypatch)


@pytest.fixture(params=["gs", "az"])
def cloud_root(request) -> str:
    """``gcs_root`` and ``azure_root`` in turn."""
    return request.getfixturevalue("gcs_root" if request.param == "gs" else "azure_root")
