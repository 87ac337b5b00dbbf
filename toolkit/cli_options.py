"""Options shared by the ``toolkit`` commands, and the no-telemetry setting they all need."""

from __future__ import annotations

import os

import click

__all__ = ["config_option", "patch_option"]

# No telemetry, whatever the user's shell says (Ploomber reads these at import).
os.environ["PLOOMBER_STATS_ENABLED"] = "false"
os.environ["PLOOMBER_VERSION_CHECK_DISABLED"] = "1"

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
