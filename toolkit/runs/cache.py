"""The step cache: outputs keyed by what determines them, immutable once published.

A step's key hashes its notebook source, the toolkit code it runs, its parameters (its
config section and the run identity) and its upstream steps' keys, plus the raw inputs'
fingerprints for the step that reads them. Each execution publishes into a folder of its
own, ``cache/market=../period=../category=../<step>/<key>/<attempt>/``, data first and
``_MANIFEST.json`` last, so no key is ever rewritten and no reader sees a half-written
step.

The manifest names each object (relative to its folder) with its size and SHA-256, and
readers check what they read against it: ``lookup`` reads the newest attempt's objects
and skips an attempt whose bytes changed (reported, so the step runs again into a newer
attempt, which later lookups prefer); ``fetch`` checks the upstream products a step
downloads. Newest wins, so ``--force`` repairs a key for every later run.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import logging
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.data import storage

__all__ = [
    "CorruptObject",
    "Damage",
    "Hit",
    "code_fingerprint",
    "fetch",
    "file_fingerprint",
    "lookup",
    "publish",
    "step_key",
]

MANIFEST = "_MANIFEST.json"
PACKAGE_DIR = Path(__file__).resolve().parent.parent  # toolkit/

_log = logging.getLogger(__name__)


class Hit(dict):
    """A published execution: ``url`` (its folder), ``run_id``, ``files`` and ``outputs``."""


@dataclass(frozen=True)
class Damage:
    """A published object whose bytes are not those its manifest names."""

    url: str
    expected: str  # sha256 hex digest from the manifest
    actual: str  # sha256 hex digest of what was read, or why there is none

    def __str__(self) -> str:
        return f"{self.url}: expected sha256 {self.expected}, read {self.actual}"


class CorruptObject(ValueError):
    """``fetch`` read an object whose bytes do not match its manifest."""

    def __init__(self, damage: Damage):
        self.damage = damage
        super().__init__(f"corrupt cached object {damage}")


def _sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def _toolkit_imports(source: str) -> set[str]:
    """Dotted names of the toolkit modules a piece of Python source imports."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("toolkit"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("toolkit."))
    return {name for name in found if _module_file(name) is not None}


@functools.cache
def _module_imports(name: str) -> frozenset[str]:
    """The toolkit modules one toolkit module imports (parsed once per process)."""
    return frozenset(_toolkit_imports(_module_file(name).read_text()))


def _module_file(name: str) -> Path | None:
    """The source file of a toolkit module or package (``toolkit.data.io``), if any."""
    path = PACKAGE_DIR.parent.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def code_fingerprint(source: str) -> str:
    """Hash of the toolkit modules a step's notebook uses, directly or through each other.

    Editing ``pricing/forecasting.py`` re-runs the forecast step (and, through the upstream
    keys, the steps after it), while new or unrelated modules leave every cached result valid.
    """
    seen: set[str] = set()
    todo = sorted(_toolkit_imports(source))
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += sorted(_module_imports(name) - seen)
    digest = hashlib.sha256()
    for name in sorted(seen | {"toolkit"}):
        digest.update(name.encode() + b"\0" + _module_file(name).read_bytes())
    return digest.hexdigest()


def file_fingerprint(url: str) -> str:
    """Identity of a stored file's content, so rewriting the same bytes changes nothing.

    The store's own content checksum where it keeps one (S3's ETag, the MD5 of a single
    PUT; GCS's md5Hash), else a SHA-256 of the bytes.
    """
    try:
        info = storage.info(url)
    except FileNotFoundError:
        return "missing"
    for key in ("ETag", "md5Hash"):
        if info.get(key):
            return f"{key}:{str(info[key]).strip(chr(34))}"
    digest = hashlib.sha256()
    with storage.open_url(url, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def step_key(
    step: str,
    source: str,
    params: dict,
    upstream_keys: dict[str, str],
    inputs: dict[str, str] | None = None,
) -> str:
    """The content key of one step execution."""
    blob = json.dumps(
        {
            "step": step,
            "source": _sha(source),
            "code": code_fingerprint(source),
            "params": params,
            "upstream": dict(sorted(upstream_keys.items())),
            "inputs": dict(sorted((inputs or {}).items())),
        },
        sort_keys=True,
        default=str,
    )
    return _sha(blob)[:32]


def key_url(root: str, identity: dict[str, Any], step: str, key: str) -> str:
    return storage.join(
        root,
        "cache",
        f"market={identity['market']}",
        f"period={identity['period']}",
        f"category={identity['category'] or 'all'}",
        step,
        key,
    )


def lookup(
    root: str, identity: dict[str, Any], step: str, key: str, warnings: list[str] | None = None
) -> Hit | None:
    """The newest intact execution of ``key``, or None.

    Attempts are tried newest first (``completed_at``, then the attempt's name); the
    first whose manifest reads and whose objects all match their digests is the hit.
    Anything skipped on the way (a corrupt manifest, a missing or changed object) is
    reported in ``warnings``, and a changed object in the log too.
    """
    base = key_url(root, identity, step, key)
    published = []
    for attempt in storage.listdir(base):
        url = storage.join(base, attempt)
        try:
            manifest = json.loads(storage.read_bytes(storage.join(url, MANIFEST)))
            files = manifest["files"]
            order = (str(manifest.get("completed_at", "")), attempt)
        except FileNotFoundError:
            continue  # still being written, or its writer died: invisible
        except (ValueError, KeyError, TypeError) as exc:
            _warn(warnings, f"ignored corrupt cache manifest {url}/{MANIFEST}: {exc}")
            continue
        published.append((order, url, manifest, files))
    for _, url, manifest, files in sorted(published, key=lambda found: found[0], reverse=True):
        problem = _check_attempt(url, files)
        if problem is None:
            run_id = manifest.get("run_id")
            return Hit(url=url, run_id=run_id, files=files, outputs=_urls(url, files))
        _warn(warnings, f"skipped cache attempt {url}: {problem}")
    return None


def fetch(outputs: dict[str, str], local: dict[str, str | Path]) -> None:
    """Download published objects (product -> URL, all of one attempt) to their local
    paths, each checked against its manifest's digest before it is written.

    Raises:
        CorruptObject: an object's bytes differ from its manifest (or the manifest is
            unreadable); nothing of it was written locally.
    """
    manifests: dict[str, dict[str, Any]] = {}
    for name, url in outputs.items():
        folder, filename = posixpath.split(url)
        if folder not in manifests:
            manifests[folder] = _digests(folder)
        data = storage.read_bytes(url)
        expected = manifests[folder].get(filename, "unknown (not in its manifest)")
        actual = _sha(data)
        if actual != expected:
            damage = Damage(url, expected, actual)
            _log.warning("corrupt cached object %s", damage)
            raise CorruptObject(damage)
        target = Path(local[name])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def _digests(folder: str) -> dict[str, str]:
    """Filename -> SHA-256 from an attempt's manifest; empty when it has none to give."""
    try:
        files = json.loads(storage.read_bytes(storage.join(folder, MANIFEST)))["files"]
        return {f["name"]: f["sha256"] for f in files.values() if "sha256" in f}
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return {}


def _check_attempt(url: str, files: dict[str, Any]) -> str | Damage | None:
    """What is wrong with an attempt's objects, or None when every one matches its digest.

    Reading an object is the only way to know its bytes: on a local disk a flipped block
    keeps the size and may keep the time stamp, and these objects are small next to
    executing the step again.
    """
    try:
        expected = {entry["name"]: entry["sha256"] for entry in files.values()}
    except (KeyError, TypeError):
        return "its manifest has no content digests (published before they were kept)"
    for filename, digest in expected.items():
        object_url = storage.join(url, filename)
        try:
            actual = _sha(storage.read_bytes(object_url))
        except FileNotFoundError:
            actual = "nothing (the object is missing)"
        if actual != digest:
            damage = Damage(object_url, digest, actual)
            _log.warning("corrupt cached object %s", damage)
            return damage
    return None


def _urls(url: str, files: dict[str, Any]) -> dict[str, str]:
    return {name: storage.join(url, entry["name"]) for name, entry in files.items()}


def _warn(warnings: list[str] | None, message: str) -> None:
    if warnings is not None:
        warnings.append(message)


def publish(
    root: str,
    identity: dict[str, Any],
    step: str,
    key: str,
    attempt: str,
    products: dict[str, str],
    run_id: str,
    completed_at: str,
    before_manifest=None,
) -> Hit:
    """Upload a step's local products, then its manifest; return where they are.

    The manifest names each object by its file name (relative to the attempt's folder,
    so a copied store still reads) with its size and the SHA-256 of the bytes uploaded.
    """
    url = storage.join(key_url(root, identity, step, key), attempt)
    files = {}
    for name, local in products.items():
        filename = posixpath.basename(str(local))
        data = Path(local).read_bytes()
        storage.write_bytes(storage.join(url, filename), data)
        files[name] = {"name": filename, "size": len(data), "sha256": _sha(data)}
    if before_manifest is not None:
        before_manifest()  # the crash tests kill the process here
    manifest = {
        "step": step,
        "key": key,
        "run_id": run_id,
        "completed_at": completed_at,
        "files": files,
    }
    storage.write_bytes(storage.join(url, MANIFEST), json.dumps(manifest, indent=2).encode())
    return Hit(url=url, run_id=run_id, files=files, outputs=_urls(url, files))
