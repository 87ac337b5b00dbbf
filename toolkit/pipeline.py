"""Glue between ``pipeline.yaml`` and toolkit: step parameters, product storage, DAG loading.

``pipeline.yaml`` asks this module, through Ploomber's ``dotted_path`` params, for each
step's config section. The values therefore come from the same layered config whichever
entry point builds the DAG, and Ploomber sees a config edit as a changed parameter and
re-runs exactly the steps it affects.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ploomber.clients.storage.abc import AbstractStorageClient

from toolkit import config as config_mod
from toolkit import storage

__all__ = [
    "STEPS",
    "StorageClient",
    "load_dag",
    "resolve_from_env",
    "run_identity",
    "step_config",
    "storage_client",
]

PROJECT_DIR = config_mod.PROJECT_DIR
STEPS = ("load_transform", "identify_underperformers", "forecast", "optimize", "format_output")

# Which config sections each step depends on: a change elsewhere does not re-run it.
STEP_SECTIONS = {
    "load_transform": ("load_transform",),
    "identify_underperformers": ("underperformers",),
    "forecast": ("forecast",),
    "optimize": ("optimize",),
    "format_output": ("output",),
}


def _split(value, sep: str) -> list[str]:
    if value in (None, "", "None"):
        return []
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    if str(value).lstrip().startswith("["):  # toolkit run passes JSON lists
        return [str(v) for v in json.loads(value)]
    return [part.strip() for part in str(value).split(sep) if part.strip()]


def resolve_from_env(country=None, period=None, category=None, configs="", patches=""):
    """Resolve the layered config from Ploomber env values (strings, lists or None)."""
    return config_mod.resolve(
        country=country,
        period=period,
        category=category,
        configs=_split(configs, ","),
        patches=_split(patches, ";"),
    )


def run_identity(country=None, period=None, category=None, configs="", patches=""):
    """The ``run`` parameter of every step: market, period, category and storage root."""
    cfg = resolve_from_env(country, period, category, configs, patches).config
    return {
        "market": cfg.country,
        "period": cfg.period,
        "category": cfg.category,
        "root": storage.root(),
    }


def step_config(
    step, country=None, period=None, category=None, configs="", patches="", run_id=None
):
    """The ``config`` parameter of ``step``: only the config section it reads.

    A step added with ``toolkit new-step`` reads no section until one is added to the
    config model, so it gets ``{}``.
    """
    resolved = resolve_from_env(country, period, category, configs, patches)
    sections = STEP_SECTIONS.get(step, ())
    values = resolved.section(sections[0]) if sections else {}
    if step == "format_output":
        # A Ploomber build has no run record: name it after its config, so a rebuild with
        # the same config delivers with the same idempotency key.
        values["run_id"] = run_id or f"build-{resolved.digest()[:12]}"
    return values


class StorageClient(AbstractStorageClient):
    """Ploomber File client over fsspec: products go to ``<root>/builds/...`` on any backend.

    Ploomber keeps a local copy of each product in ``.toolkit/build``; this client mirrors
    it to the storage root after a task succeeds and fetches it back on another machine.
    """

    def __init__(self, parent: str | None = None):
        self._parent = parent or storage.join(storage.root(), "builds")
        self._pending_metadata: dict[Path, Path] = {}

    def upload(self, local):
        """Data first, Ploomber's metadata sidecar (its completion marker) last.

        Ploomber uploads the sidecar before the file, and on failure uploads the partial
        notebook over the product path; neither may make a half-done step look done.
        """
        path = Path(local)
        if path.name.startswith(".") and path.name.endswith(".metadata"):
            self._pending_metadata[path.with_name(path.name[1 : -len(".metadata")])] = path
            return
        if path.is_dir():
            super().upload(local)
            return
        metadata = self._pending_metadata.pop(path, None)
        if metadata is None and path.suffix == ".ipynb":
            failed = self._remote_path(path.with_name(f"{path.stem}.failed.ipynb"))
            storage.upload_file(path, failed)
            return
        self._upload(path)
        if metadata is not None:
            self._upload(metadata)

    @property
    def parent(self):
        return self._parent

    def _remote_path(self, local):
        # Products live under <build_dir>/market=..., wherever build_dir is.
        parts = Path(local).resolve().parts
        start = next((i for i, p in enumerate(parts) if p.startswith("market=")), None)
        if start is None:
            raise ValueError(f"product {local} is not under a market=<CODE> folder")
        return storage.join(self._parent, *parts[start:])

    def download(self, local, destination=None):
        remote = self._remote_path(local)
        destination = destination or local
        if self._is_dir(remote):
            fs, path = storage.filesystem(remote)
            fs.get(path, str(destination), recursive=True)
        else:
            storage.download_file(remote, destination)

    def _download(self, local, remote):
        storage.download_file(remote, local)

    def _upload(self, local):
        storage.upload_file(local, self._remote_path(local))

    def _is_file(self, remote):
        fs, path = storage.filesystem(remote)
        return fs.isfile(path)

    def _is_dir(self, remote):
        fs, path = storage.filesystem(remote)
        return fs.isdir(path)

    def __repr__(self):
        return f"{type(self).__name__}({self._parent!r})"


def storage_client() -> StorageClient:
    """Factory named in ``pipeline.yaml`` (``clients: File:``)."""
    return StorageClient()


def load_dag(env: dict | None = None, project_dir: Path = PROJECT_DIR):
    """Build the Ploomber DAG from ``pipeline.yaml``, overriding env values like ``--env--``."""
    os.environ.setdefault("PLOOMBER_STATS_ENABLED", "false")
    from ploomber.spec import DAGSpec

    spec = DAGSpec(str(Path(project_dir) / "pipeline.yaml"), env=_env_with(env, project_dir))
    return spec.to_dag()


def _env_with(overrides: dict | None, project_dir: Path) -> dict:
    data = config_mod.load_yaml_text((Path(project_dir) / "env.yaml").read_text(), "env.yaml") or {}
    if os.environ.get("TOOLKIT_BUILD_DIR"):
        data["build_dir"] = os.environ["TOOLKIT_BUILD_DIR"]
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    data["build_dir"] = str(data.get("build_dir", "")).replace("{{here}}", str(project_dir))
    return data


def set_aside_failed_notebook(task) -> None:
    """Task ``on_failure`` hook: rename the partial notebook so no product of a failed step
    exists. It stays beside the outputs, as ``<step>.failed.ipynb``, for debugging."""
    nb = Path(str(task.product["nb"]))
    if nb.exists():
        nb.replace(nb.with_name(f"{nb.stem}.failed.ipynb"))
