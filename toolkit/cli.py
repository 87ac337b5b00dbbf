"""The ``toolkit`` command: run the pipeline, inspect config, write demo data."""

from __future__ import annotations

import json
import os
import sys

import click

from toolkit import config as config_mod

# No telemetry, whatever the user's shell says (Ploomber reads these at import).
os.environ["PLOOMBER_STATS_ENABLED"] = "false"
os.environ["PLOOMBER_VERSION_CHECK_DISABLED"] = "1"

_patch_option = click.option(
    "--patch",
    "patches",
    multiple=True,
    metavar="KEY.PATH=VALUE",
    help="Override one config value, e.g. --patch country=DE (repeatable, applied last).",
)
_config_option = click.option(
    "--config",
    "configs",
    multiple=True,
    metavar="URL",
    help="Extra config layer: local path or fsspec URL such as s3://... (repeatable).",
)


def _resolve_or_exit(configs, patches) -> config_mod.ResolvedConfig:
    try:
        return config_mod.resolve(configs=configs, patches=patches)
    except config_mod.ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Run notebook pipelines with layered config, data contracts and storage by URL."""


@main.group()
def config() -> None:
    """Inspect the layered configuration."""


@config.command("show")
@_patch_option
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON: {key: {value, origin}}.")
def config_show(patches, configs, as_json) -> None:
    """Print the merged config, each value with the layer it came from."""
    resolved = _resolve_or_exit(configs, patches)
    leaves = resolved.leaves()
    if as_json:
        data = {key: {"value": value, "origin": origin} for key, value, origin in leaves}
        click.echo(json.dumps(data, indent=2))
        return
    width = max(len(key) for key, _, _ in leaves)
    for key, value, origin in leaves:
        shown = json.dumps(value) if not isinstance(value, str) else value
        click.echo(f"{key:<{width}}  {shown:<24}  # {origin}")


@main.command("demo-data")
@click.option("--markets", default=None, help="Comma-separated market codes (default: all).")
@click.option("--products", "n_products", default=240, show_default=True, type=int)
@click.option("--seed", default=42, show_default=True, type=int)
def demo_data_command(markets, n_products, seed) -> None:
    """Write the SYNTHETIC demo sales and catalogs to the storage root."""
    from toolkit import demo_data

    chosen = [m.strip().upper() for m in markets.split(",")] if markets else None
    for market, urls in demo_data.write(chosen, n_products=n_products, seed=seed).items():
        click.echo(f"{market}: {urls['sales']} ({urls['rows']:,} rows), {urls['catalog']}")


@main.command("run")
@_patch_option
@_config_option
@click.option("--force", is_flag=True, help="Re-execute every step, even if up to date.")
def run_command(patches, configs, force) -> None:
    """Run the pipeline for the config these layers and patches give."""
    from toolkit import runner

    resolved = _resolve_or_exit(configs, patches)
    try:
        result = runner.build(resolved, configs=configs, patches=patches, force=force)
    except runner.StepFailed as exc:
        click.echo(f"\n{exc}", err=True)
        sys.exit(1)
    click.echo(runner.describe(result))


@main.command("summary")
@_patch_option
@_config_option
def summary_command(patches, configs) -> None:
    """Summarise the latest outputs for this config: top changes, forecast error, files."""
    from toolkit import runner

    resolved = _resolve_or_exit(configs, patches)
    click.echo(runner.summary(resolved, configs=configs, patches=patches))


if __name__ == "__main__":
    main()
