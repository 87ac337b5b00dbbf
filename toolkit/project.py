"""Where the project is: the nearest folder with ``pipeline.yaml``, as git and Ploomber find theirs.

Every command works on the project of its working directory (or ``TOOLKIT_PROJECT``), so one
virtual environment serves any number of checkouts.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["NotInProject", "resolve", "root"]

MARKER = "pipeline.yaml"


class NotInProject(FileNotFoundError):
    """Neither the working directory nor any parent holds ``pipeline.yaml``."""


def root(start: Path | str | None = None) -> Path:
    """The project folder: ``TOOLKIT_PROJECT``, else the nearest ``pipeline.yaml`` upwards.

    Args:
        start: where to start looking (default: the working directory).
    """
    configured = os.environ.get("TOOLKIT_PROJECT", "").strip()
    if configured:
        path = Path(configured).expanduser().resolve()
        if not (path / MARKER).is_file():
            raise NotInProject(f"TOOLKIT_PROJECT={configured}: {path} holds no {MARKER}")
        return path
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / MARKER).is_file():
            return folder
    raise NotInProject(
        f"not inside a toolkit project: no {MARKER} in {here} or any folder above it "
        "(cd into the project, or set TOOLKIT_PROJECT)"
    )


def resolve(project_dir: Path | str | None) -> Path:
    """``project_dir`` as given, else the project of the working directory."""
    return Path(project_dir) if project_dir is not None else root()
