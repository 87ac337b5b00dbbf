"""Options shared by the ``toolkit`` commands."""

from __future__ import annotations

import click

__all__ = ["config_option", "patch_option"]

patch_option = click.option(
    "--patch",
    "patches",
    multiple=True,
    metavar="KEY.PATH=VALUE",
    help="Override one config value, e.g. --patch country=DE (repeatable, applied last).",
)
config_option = click.option(
    "--config",
    "configs",
    multiple=True,
    metavar="URL",
    help="Extra config layer: local path or fsspec URL such as s3://... (repeatable).",
)
