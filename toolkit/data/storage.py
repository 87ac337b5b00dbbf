"""One storage root, addressed by fsspec URL: a local folder by default, S3/GCS/Azure in production.

The root comes from ``TOOLKIT_ROOT`` (default ``<project>/store``). S3 settings come from
the usual AWS variables (``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3`` for any S3-compatible
service, ``AWS_REGION``, credentials), so the same code talks to AWS, MinIO or moto.
Every call has a connect and read timeout and a bounded retry budget, and listings are not
cached, so a long-lived reader sees what other processes wrote.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from pathlib import Path
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from toolkit import project, settings

__all__ = [
    "StorageError",
    "exists",
    "filesystem",
    "join",
    "open_url",
    "read_bytes",
    "root",
    "write_bytes",
]


def connect_timeout() -> float:
    return settings.seconds("TOOLKIT_STORAGE_CONNECT_TIMEOUT", 5.0)


def read_timeout() -> float:
    return settings.seconds("TOOLKIT_STORAGE_READ_TIMEOUT", 30.0)


def max_attempts() -> int:
    return settings.count("TOOLKIT_STORAGE_MAX_ATTEMPTS", 3)


class StorageError(OSError):
    """A storage call failed; the message names the URL and, for S3, the endpoint."""


def root() -> str:
    """The storage root URL, without a trailing slash."""
    value = os.environ.get("TOOLKIT_ROOT", "").strip() or str(project.root() / "store")
    if "://" not in value:
        value = str(Path(value).expanduser().resolve())
    return value.rstrip("/")


def join(base: str, *parts: str) -> str:
    """Join URL parts with ``/``; parts may not climb out of ``base``."""
    for part in parts:
        if part.startswith("/") or ".." in part.split("/"):
            raise ValueError(f"path part {part!r} would leave {base!r}")
    return posixpath.join(base.rstrip("/"), *parts)


def raw_url(market: str, name: str, base: str | None = None) -> str:
    """Where the source system drops a market's raw tables (``sales``, ``catalog``)."""
    return join(base or root(), "raw", f"market={market}", f"{name}.parquet")


def s3_options() -> dict[str, Any]:
    """s3fs options from the environment, with explicit timeouts and retries."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    options: dict[str, Any] = {
        "config_kwargs": {
            "connect_timeout": connect_timeout(),
            "read_timeout": read_timeout(),
            "retries": {"max_attempts": max_attempts(), "mode": "standard"},
        },
        "use_listings_cache": False,
    }
    client_kwargs = {}
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        client_kwargs["region_name"] = region
    if client_kwargs:
        options["client_kwargs"] = client_kwargs
    return options


def describe(url: str) -> str:
    """The URL, plus the endpoint for S3, for error messages."""
    if url.startswith("s3://"):
        endpoint = s3_options().get("client_kwargs", {}).get("endpoint_url", "AWS default")
        return f"{url} (endpoint {endpoint})"
    return url


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``url`` and the path within it."""
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    options: dict[str, Any] = {}
    if protocol in ("s3", "s3a"):
        options = s3_options()
    elif protocol not in ("file", "local", "memory"):
        options = {"use_listings_cache": False}
    try:
        return url_to_fs(url, **options)
    except ImportError as exc:
        raise StorageError(
            f"no filesystem for {protocol}:// URLs ({exc}); install its fsspec package "
            "(gcsfs for gs://, adlfs for az://)"
        ) from None


def _call(url: str, action: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except FileNotFoundError:
        raise
    except (OSError, TimeoutError, ConnectionError) as exc:
        raise StorageError(f"cannot {action} {describe(url)}: {exc}") from exc
    except Exception as exc:  # botocore and aiohttp raise their own types
        if type(exc).__module__.split(".")[0] in ("botocore", "aiohttp", "aiobotocore"):
            raise StorageError(f"cannot {action} {describe(url)}: {exc}") from exc
        raise


def open_url(url: str, mode: str = "rb"):
    fs, path = filesystem(url)
    return _call(url, "open", fs.open, path, mode)


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return bool(_call(url, "check", fs.exists, path))


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    return _call(url, "read", fs.cat_file, path)


def write_bytes(url: str, data: bytes) -> None:
    """Write a whole object atomically: readers see the old state or the new, never a part.

    Object stores publish a PUT only when it completes; on a local disk we write a
    temporary sibling and rename it into place.
    """
    fs, path = filesystem(url)
    if _is_local(fs):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return
    _call(url, "write", fs.pipe_file, path, data)


def upload_file(local: str | Path, url: str) -> None:
    """Copy a local file to ``url`` atomically."""
    write_bytes(url, Path(local).read_bytes())


def download_file(url: str, local: str | Path) -> None:
    local = Path(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(read_bytes(url))


def listdir(url: str) -> list[str]:
    """Names directly under ``url`` (empty when it does not exist)."""
    fs, path = filesystem(url)
    try:
        entries = _call(url, "list", fs.ls, path, detail=False)
    except FileNotFoundError:
        return []
    return sorted(posixpath.basename(e.rstrip("/")) for e in entries)


def remove(url: str, recursive: bool = False) -> None:
    fs, path = filesystem(url)
    with contextlib.suppress(FileNotFoundError):
        _call(url, "remove", fs.rm, path, recursive=recursive)


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")
