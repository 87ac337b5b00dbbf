"""The step cache: outputs keyed by what determines them, immutable once published.

A step's key hashes its notebook source, the toolkit code it runs, its parameters (its
config section and the run identity) and its upstream steps' keys, plus the raw inputs'
fingerprints for the step that reads them. Each execution publishes into a folder of its
own, ``cache/market=../period=../category=../<step>/<key>/<attempt>/``, data first and
``_MANIFEST.json`` last, so no key is ever rewritten and no reader sees a half-written
step. Concurrent executions of one key both publish; readers take the earliest.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import posixpath
from pathlib import Path
from typing import Any

from toolkit.data import storage

__all__ = ["Hit", "code_fingerprint", "file_fingerprint", "lookup", "publish", "step_key"]

MANIFEST = "_MANIFEST.json"
PACKAGE_DIR = Path(__file__).resolve().parent.parent  # toolkit/


class Hit(dict):
    """A published execution: ``url`` (its folder), ``run_id``, ``files`` and ``outputs``."""


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
    fs, path = storage.filesystem(url)
    try:
        info = fs.info(path)
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
    """The earliest complete execution of ``key``, or None.

    Only attempts with a readable manifest whose files all exist count; a corrupt
    manifest is reported in ``warnings`` and ignored, so the step simply runs again.
    """
    base = key_url(root, identity, step, key)
    complete = []
    for attempt in storage.listdir(base):
        url = storage.join(base, attempt)
        try:
            manifest = json.loads(storage.read_bytes(storage.join(url, MANIFEST)))
            files = manifest["files"]
        except FileNotFoundError:
            continue  # still being written, or its writer died: invisible
        except (ValueError, KeyError, TypeError) as exc:
            if warnings is not None:
                warnings.append(f"ignored corrupt cache manifest {url}/{MANIFEST}: {exc}")
            continue
        if not all(_has_size(storage.join(url, f["name"]), f["size"]) for f in files.values()):
            if warnings is not None:
                warnings.append(f"ignored incomplete cache entry {url}")
            continue
        complete.append((manifest.get("completed_at", ""), attempt, url, manifest))
    if not complete:
        return None
    _, _, url, manifest = min(complete)
    return Hit(
        url=url,
        run_id=manifest.get("run_id"),
        files=manifest["files"],
        outputs={name: storage.join(url, f["name"]) for name, f in manifest["files"].items()},
    )


def _has_size(url: str, size: int) -> bool:
    fs, path = storage.filesystem(url)
    try:
        return int(fs.info(path)["size"]) == int(size)
    except (FileNotFoundError, KeyError):
        return False


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
    """Upload a step's local products, then its manifest; return where they are."""
    url = storage.join(key_url(root, identity, step, key), attempt)
    files = {}
    for name, local in products.items():
        filename = posixpath.basename(str(local))
        storage.upload_file(local, storage.join(url, filename))
        files[name] = {"name": filename, "size": Path(local).stat().st_size}
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
    return Hit(
        url=url,
        run_id=run_id,
        files=files,
        outputs={name: storage.join(url, f["name"]) for name, f in files.items()},
    )
