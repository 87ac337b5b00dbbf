"""Ploomber's File client over fsspec, for ``ploomber build``.

Apart from ``toolkit.dag.pipeline`` because subclassing Ploomber's client imports Ploomber
(seconds): only a Ploomber build, which has imported it anyway, loads this module, through
``toolkit.dag.pipeline.storage_client`` (named in ``pipeline.yaml``).
"""

from __future__ import annotations

from pathlib import Path

from ploomber.clients.storage.abc import AbstractStorageClient

from toolkit.data import storage

__all__ = ["StorageClient"]


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
            storage.download_tree(remote, destination)
        else:
            storage.download_file(remote, destination)

    def _download(self, local, remote):
        storage.download_file(remote, local)

    def _upload(self, local):
        storage.upload_file(local, self._remote_path(local))

    def _is_file(self, remote):
        return storage.kind(remote) == "file"

    def _is_dir(self, remote):
        return storage.kind(remote) == "directory"

    def __repr__(self):
        return f"{type(self).__name__}({self._parent!r})"
