"""One storage root, addressed by fsspec URL: a local folder by default, S3/GCS/Azure in production.

The root comes from ``TOOLKIT_ROOT`` (default ``<project>/store``). S3 settings come from
the usual AWS variables (``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3`` for any S3-compatible
service, ``AWS_REGION``, credentials), so the same code talks to AWS, MinIO or moto.
Every call on a remote store ends within its deadline, ``(connect timeout + read timeout) x
attempts``, whatever the libraries underneath retry; listings are not cached, so a
long-lived reader sees what other processes wrote.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import posixpath
import time
import uuid
from pathlib import Path
from typing import Any

import fsspec
from fsspec.core import strip_protocol, url_to_fs
from fsspec.exceptions import FSTimeoutError

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


def deadline() -> float:
    """Seconds one call on a remote store may take, all its attempts included."""
    return (connect_timeout() + read_timeout()) * max_attempts()


def _deadline_text() -> str:
    return (
        f"the {deadline():g} s deadline passed ({max_attempts()} attempts of "
        f"{connect_timeout():g} s to connect + {read_timeout():g} s to read)"
    )


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
            # botocore's "max_attempts" counts retries after the first try; this counts tries.
            "retries": {"total_max_attempts": max_attempts(), "mode": "standard"},
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
        from toolkit.data.s3 import OneRetryLayerS3FileSystem

        return OneRetryLayerS3FileSystem(**s3_options()), strip_protocol(url)
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
    except FSTimeoutError:
        raise StorageError(f"cannot {action} {describe(url)}: {_deadline_text()}") from None
    except (OSError, TimeoutError, ConnectionError) as exc:
        raise StorageError(f"cannot {action} {describe(url)}: {exc}") from exc
    except Exception as exc:  # botocore and aiohttp raise their own types
        if type(exc).__module__.split(".")[0] in ("botocore", "aiohttp", "aiobotocore"):
            raise StorageError(f"cannot {action} {describe(url)}: {exc}") from exc
        raise


def _bounded(url: str, action: str, fs: fsspec.AbstractFileSystem, method: str, *args, **kwargs):
    """``fs.<method>(*args, **kwargs)``, ended at the deadline on a remote store.

    An async filesystem's blocking methods are fsspec ``sync_wrapper``s, which hand a
    ``timeout`` to ``fsspec.asyn.sync``: it cancels the call's coroutine when the time is
    up (aiohttp's read timeout alone does not bound every wait, such as a PUT waiting for
    ``100 Continue``) and raises ``FSTimeoutError``. A local disk needs no deadline.
    """
    if fs.async_impl:
        kwargs["timeout"] = deadline()
    return _call(url, action, getattr(fs, method), *args, **kwargs)


WHOLE_READ_BYTES = 32 * 2**20  # at the default deadline of 105 s, read at 0.3 MB/s or more


def open_url(url: str, mode: str = "rb"):
    """A file object on ``url``; on a remote store, for reading only, each read bounded.

    An object up to ``WHOLE_READ_BYTES`` is read whole in one call (so its bytes are of
    one version, and Parquet's footer and columns come from one request); a larger one
    through ``BoundedReader``, ranged reads of at most that size, each a call of its own.
    """
    fs, path = filesystem(url)
    if not fs.async_impl:
        return _call(url, "open", fs.open, path, mode)
    if mode != "rb":
        raise ValueError(f"open_url reads remote objects in 'rb' mode only, not {mode!r}: {url}")
    size = _bounded(url, "open", fs, "info", path)["size"]
    if size <= WHOLE_READ_BYTES:
        return io.BytesIO(_bounded(url, "read", fs, "cat_file", path))
    return io.BufferedReader(BoundedReader(url, fs, path, size), buffer_size=WHOLE_READ_BYTES)


class BoundedReader(io.RawIOBase):
    """A remote object read by ranges, each range one call within the deadline, so a
    stall fails the read that met it instead of hanging. pyarrow reads it like a file
    (seek, tell, read)."""

    def __init__(self, url: str, fs: fsspec.AbstractFileSystem, path: str, size: int):
        self.url, self.fs, self.path, self.size = url, fs, path, size
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self.size - self.position, WHOLE_READ_BYTES)
        if count <= 0:
            return 0
        end = self.position + count
        data = _bounded(
            self.url, "read", self.fs, "cat_file", self.path, start=self.position, end=end
        )
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)

    def readall(self) -> bytes:
        parts = []
        while chunk := self.read(WHOLE_READ_BYTES):
            parts.append(chunk)
        return b"".join(parts)


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return bool(_bounded(url, "check", fs, "exists", path))


def info(url: str) -> dict[str, Any]:
    """What the store keeps about an object: ``size``, and ``ETag`` on S3 (``FileNotFoundError``
    when there is none)."""
    fs, path = filesystem(url)
    return _bounded(url, "check", fs, "info", path)


def kind(url: str) -> str | None:
    """``"file"`` or ``"directory"`` (a prefix, on an object store); None when neither."""
    try:
        return info(url).get("type")
    except FileNotFoundError:
        return None


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    return _bounded(url, "read", fs, "cat_file", path)


def read_many(urls: list[str]) -> dict[str, bytes | FileNotFoundError]:
    """Each URL's bytes, or ``FileNotFoundError`` where there is none, in one batched call
    within the deadline (s3fs fetches them concurrently). The URLs share one store; any
    other failure fails the call, as a single read's would."""
    if not urls:
        return {}
    fs, _ = filesystem(urls[0])
    paths = {filesystem(url)[1]: url for url in urls}
    action = f"read {len(urls)} objects, the first"
    blobs = _bounded(urls[0], action, fs, "cat", list(paths), on_error="return")
    found: dict[str, bytes | FileNotFoundError] = {}
    for path, url in paths.items():
        blob = blobs.get(path, FileNotFoundError(url))
        if isinstance(blob, Exception) and not isinstance(blob, FileNotFoundError):
            raise StorageError(f"cannot read {describe(url)}: {blob}") from blob
        found[url] = blob
    return found


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
    _bounded(url, "write", fs, "pipe_file", path, data)


def upload_file(local: str | Path, url: str) -> None:
    """Copy a local file to ``url`` atomically."""
    write_bytes(url, Path(local).read_bytes())


def download_file(url: str, local: str | Path) -> None:
    local = Path(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(read_bytes(url))


def download_tree(url: str, local: str | Path) -> None:
    """Copy the folder (or prefix) ``url`` to ``local``, within one deadline."""
    fs, path = filesystem(url)
    _bounded(url, "read", fs, "get", path, str(local), recursive=True)


def listdir(url: str) -> list[str]:
    """Names directly under ``url`` (empty when it does not exist)."""
    fs, path = filesystem(url)
    try:
        entries = _bounded(url, "list", fs, "ls", path, detail=False)
    except FileNotFoundError:
        return []
    return sorted(posixpath.basename(e.rstrip("/")) for e in entries)


def glob(url: str) -> list[str]:
    """What ``url``'s wildcards match, sorted, spelled as ``url`` is (a path stays a path)."""
    fs, pattern = filesystem(url)
    matches = sorted(_bounded(url, "list", fs, "glob", pattern))
    return [fs.unstrip_protocol(path) if "://" in url else path for path in matches]


def remove(url: str, recursive: bool = False) -> None:
    fs, path = filesystem(url)
    with contextlib.suppress(FileNotFoundError):
        _bounded(url, "remove", fs, "rm", path, recursive=recursive)


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


# ---------------------------------------------------------------------------
# Conditional writes: one object replaced only by whoever read its latest version
# ---------------------------------------------------------------------------

LOCK_WAIT_SECONDS = 10.0  # a local lock is held for one small write; longer means a stuck holder


class WriteConflict(StorageError):
    """A conditional write found the object other than expected: created by someone else,
    or changed or removed since the version the writer had."""


def own_filesystem(url: str) -> fsspec.AbstractFileSystem:
    """A filesystem for ``url`` that shares no client or connections with other callers, so
    its calls never queue behind theirs (a local disk needs none of its own)."""
    fs, _ = filesystem(url)
    if _is_local(fs):
        return fs
    return type(fs)(skip_instance_cache=True, **fs.storage_options)


def read_versioned(url: str, fs: fsspec.AbstractFileSystem | None = None) -> tuple[bytes, str]:
    """An object's bytes and the version ``write_if`` compares: its ETag on S3, else the
    SHA-256 of its content. ``FileNotFoundError`` when there is none."""
    shared, path = filesystem(url)
    fs = fs or shared
    if not _is_s3(fs):
        data = _bounded(url, "read", fs, "cat_file", path)
        return data, _digest(data)
    for _ in range(3):
        # The same ETag before and after the read: the bytes are of that version.
        before = _bounded(url, "read", fs, "info", path)["ETag"]
        data = _bounded(url, "read", fs, "cat_file", path)
        if _bounded(url, "read", fs, "info", path)["ETag"] == before:
            return data, before
    raise StorageError(f"cannot read {describe(url)}: it changed during each of 3 reads")


def version_of(url: str, fs: fsspec.AbstractFileSystem | None = None) -> str | None:
    """The version ``write_if`` compares, or None when there is no object."""
    shared, path = filesystem(url)
    fs = fs or shared
    try:
        if _is_s3(fs):
            return _bounded(url, "check", fs, "info", path)["ETag"]
        return read_versioned(url, fs)[1]
    except FileNotFoundError:
        return None


def write_if(
    url: str, data: bytes, version: str | None, fs: fsspec.AbstractFileSystem | None = None
) -> str:
    """Write ``data`` only if the object is still at ``version`` (None: only if there is no
    object yet); return its new version. Of two writers with the same version, one wins.

    S3 decides on the server (``If-None-Match: *`` to create, ``If-Match: <ETag>`` to
    replace). A local disk compares and replaces under an exclusive lock on a sibling lock
    file (``.<name>.lock``), which every conditional writer takes. Other stores (GCS,
    Azure through fsspec) compare, then write: that narrows the race to the time of one
    write but does not close it.

    Raises:
        WriteConflict: the object is not at ``version``; nothing was written.
    """
    shared, path = filesystem(url)
    fs = fs or shared
    if _is_local(fs):
        written = _call(url, "write", _local_write_if, url, Path(path), data, version)
    elif _is_s3(fs):
        condition = {"mode": "create"} if version is None else {"IfMatch": version}
        try:
            written = _bounded(url, "write", fs, "pipe_file", path, data, **condition)["ETag"]
        except (FileNotFoundError, StorageError) as exc:  # removed meanwhile; or refused
            if not isinstance(exc, FileNotFoundError) and not _refused(exc):
                raise
            written = None
    else:
        written = None
        if version_of(url, fs) == version:
            _bounded(url, "write", fs, "pipe_file", path, data)
            written = _digest(data)
    if written is None:
        expected = "no object" if version is None else f"version {version}"
        raise WriteConflict(f"{describe(url)} changed: expected {expected}; not written")
    return written


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _is_s3(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("s3", "s3a")


def _refused(exc: BaseException | None) -> bool:
    """Whether S3 refused a conditional write (rather than failed to answer): 412 when the
    condition does not hold, 409 when another conditional write to the key was in flight."""
    while exc is not None:
        if isinstance(exc, FileExistsError):
            return True
        answer = getattr(exc, "response", None)  # botocore's ClientError
        if isinstance(answer, dict):
            code = answer.get("Error", {}).get("Code")
            status = answer.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                return True
            if status in (409, 412):
                return True
        exc = exc.__cause__
    return False


def _local_write_if(url: str, target: Path, data: bytes, version: str | None) -> str | None:
    """The content's digest once written, or None when the file is not at ``version``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(f".{target.name}.lock"), "ab") as lock:
        _lock(lock)  # released when the file closes
        try:
            current: str | None = _digest(target.read_bytes())
        except FileNotFoundError:
            current = None
        if current != version:
            return None
        write_bytes(url, data)  # atomic replace: readers, who take no lock, see old or new
    return _digest(data)


def _lock(fh) -> None:
    """An exclusive lock on ``fh``, waiting at most ``LOCK_WAIT_SECONDS``: a holder that
    was paused inside its write must not hang the next writer for good."""
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"another process has held its lock for more than {LOCK_WAIT_SECONDS:.0f} s"
                ) from None
            time.sleep(0.01)
