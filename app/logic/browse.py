"""Browsing outputs without leaving the storage root.

The app shows and offers downloads of files under the storage root only: a relative path
a person typed or clicked (``resolve_output``), or a URL read from a run record
(``check_url``; a record is data, and data can be wrong). Both refuse ``..``, percent-
encoded dots (also double-encoded), absolute paths, other schemes, a sibling folder that
merely shares the root's prefix (``/x/store2`` for root ``/x/store``) and, on a local
root, symlinks that point outside it.
"""

from __future__ import annotations

import os
import posixpath
import re
from urllib.parse import unquote

from toolkit.data import storage

__all__ = ["OutsideRoot", "check_url", "read_output", "relative_path", "resolve_output"]

MAX_DECODE = 4  # "%25252e" is three levels deep; more than this is refused outright
MAX_DOWNLOAD_BYTES = 200 * 1024 * 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


class OutsideRoot(ValueError):
    """The path or URL is not a file under the storage root."""


def _refuse(path: str, why: str, root: str) -> OutsideRoot:
    shown = path if len(path) <= 200 else path[:197] + "..."
    return OutsideRoot(
        f"refused {shown!r}: {why}; only files under the storage root {root} can be shown"
    )


def _decodings(text: str, root: str) -> list[str]:
    """``text`` and each percent-decoding of it, until it stops changing."""
    out = [text]
    for _ in range(MAX_DECODE):
        decoded = unquote(text)
        if decoded == text:
            return out
        out.append(decoded)
        text = decoded
    raise _refuse(out[0], "percent-encoded too many times", root)


def _check_segments(original: str, text: str, root: str) -> None:
    if _CONTROL.search(text):
        raise _refuse(original, "control characters are not allowed", root)
    if "\\" in text:
        raise _refuse(original, "backslashes are not allowed", root)
    if ".." in text.split("/"):
        raise _refuse(original, "'..' would climb out of the root", root)


def _local(root: str) -> bool:
    return "://" not in root or root.startswith("file://")


def _strip_file(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


def _inside(root: str, url: str) -> bool:
    root = root.rstrip("/")
    return url == root or url.startswith(root + "/")


def _check_symlinks(root: str, url: str, original: str) -> None:
    """On a local root the real file must be under the real root."""
    if not _local(root):
        return
    real_root = os.path.realpath(_strip_file(root))
    real = os.path.realpath(_strip_file(url))
    if os.path.commonpath([real_root, real]) != real_root:
        raise _refuse(original, "it is (or passes through) a link to outside the root", root)


def resolve_output(root: str, relative: str) -> str:
    """The URL of ``relative`` (a path under the storage root), or ``OutsideRoot``."""
    if not isinstance(relative, str) or not relative.strip():
        raise _refuse(str(relative), "empty path", root)
    for text in _decodings(relative, root):
        _check_segments(relative, text, root)
        if text.startswith(("/", "~")) or _SCHEME.match(text):
            raise _refuse(relative, "absolute paths and URLs are not allowed here", root)
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    if not parts:
        raise _refuse(relative, "empty path", root)
    url = storage.join(root.rstrip("/"), *parts)
    if not _inside(root, url):  # storage.join cannot leave, but say so if it ever did
        raise _refuse(relative, "outside the root", root)
    _check_symlinks(root, url, relative)
    return url


def check_url(root: str, url: str) -> str:
    """``url`` itself when it is a file under ``root`` (a URL from a run record)."""
    if not isinstance(url, str) or not url:
        raise _refuse(str(url), "empty URL", root)
    root = root.rstrip("/")
    for text in _decodings(url, root):
        _check_segments(url, text, root)
    if _local(root):
        base = _strip_file(root)
        path = _strip_file(url)
        if "://" in path or not path.startswith("/"):
            raise _refuse(url, "not a path on this computer's storage root", root)
        if posixpath.normpath(path) != path.rstrip("/"):
            raise _refuse(url, "the path is not in normal form", root)
        if not _inside(base, path):
            raise _refuse(url, "outside the root", root)
        _check_symlinks(root, path, url)
        return url
    if not _inside(root, url):
        raise _refuse(url, "outside the root", root)
    return url


def relative_path(root: str, url: str) -> str:
    """``url`` relative to ``root`` (after ``check_url``)."""
    check_url(root, url)
    base = _strip_file(root.rstrip("/"))
    return _strip_file(url)[len(base) :].lstrip("/")


def read_output(root: str, url: str, max_bytes: int = MAX_DOWNLOAD_BYTES) -> bytes:
    """The bytes of a file under ``root``; refuses anything else, and huge files."""
    url = check_url(root, url)
    try:
        size = storage.info(url).get("size")
    except FileNotFoundError:
        raise FileNotFoundError(f"no file at {url}") from None
    if size is not None and int(size) > max_bytes:
        raise ValueError(f"{url} is {int(size):,} bytes, more than {max_bytes:,} can be shown")
    return storage.read_bytes(url)
