"""Developer commands of ``toolkit``: dev, new-step, validate and schemas."""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import NoReturn

import click

from toolkit import config as config_mod
from toolkit.cli import options as cli_options

__all__ = ["register"]

# Opening a source from the repo root lets Jupytext find jupytext.toml; Ploomber's own
# Jupyter extension would re-inject env.yaml's values over the cell `toolkit dev` wrote.
JUPYTER_COMMAND = "jupyter nbclassic --ServerApp.jpserver_extensions=\"{'ploomber': False}\""

# Shared with the other command module; importing it also turns telemetry off.
_patch_option, _config_option = cli_options.patch_option, cli_options.config_option


def _fail(message: str, code: int) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(code)


def _shown(path: str | Path) -> str:
    """A path relative to the working directory when it is inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@click.command("dev")
@click.argument("step", required=False)
@_patch_option
@_config_option
@click.option(
    "--refresh",
    is_flag=True,
    help="Replace local copies of the inputs with the newest run's outputs for this config.",
)
@click.option(
    "--run",
    "run_id",
    default=None,
    metavar="RUN",
    help="Open STEP as it ran in this run: its frozen config and upstream outputs.",
)
@click.option(
    "--remove", is_flag=True, help="Remove the injected cell (every notebook if no STEP)."
)
def dev_command(step, patches, configs, refresh, run_id, remove) -> None:
    """Inject STEP's parameters into its notebook, to run it interactively.

    The cell holds what STEP gets in `toolkit run` with the same --patch/--config: its run
    identity, config section and the local paths of its inputs and outputs. Inputs missing
    locally come from the newest `toolkit run` with that config. Remove the cell before
    committing.
    """
    from toolkit.dev import notebooks

    if remove:
        if patches or configs or refresh:
            _fail("--remove takes no --patch, --config or --refresh", 2)
        try:
            cleaned = notebooks.remove_injected(step)
        except notebooks.StepError as exc:
            _fail(str(exc), 2)
        if not cleaned:
            click.echo(
                f"No injected cell in {f'the notebook of {step!r}' if step else 'any notebook'}"
            )
        for path in cleaned:
            click.echo(f"Removed the injected cell from {_shown(path)}")
        return
    if not step:
        _fail(
            "Usage: toolkit dev STEP [--patch ...] [--config ...] | toolkit dev [STEP] --remove", 2
        )
    try:
        done = notebooks.inject(
            step, patches=patches, configs=configs, refresh=refresh, run_id=run_id
        )
    except (notebooks.StepError, config_mod.ConfigError, LookupError) as exc:
        _fail(str(exc), 2)
    except notebooks.MissingUpstreamError as exc:
        _fail(str(exc), 1)
    except OSError as exc:  # StorageError: the store is unreachable or refuses access
        _fail(f"cannot fetch the upstream outputs: {exc}", 1)
    notebook = _shown(done.notebook)
    click.echo(
        f"Injected the parameters of step {step!r} (market {done.market}, period "
        f"{done.period}, category {done.category}) into {notebook}"
    )
    for label, path in done.upstream.items():
        source = done.downloaded.get(label)
        fetched = f" (fetched from {source})" if source else ""
        click.echo(f"  reads  {label}: {path}{fetched}")
    for key, path in done.product.items():
        click.echo(f"  writes {key}: {path}")
    click.echo(
        "\nOpen it as a notebook: from the repository root run\n"
        f"  {JUPYTER_COMMAND}\n"
        f"and open {notebook} (Jupytext reads the .py file as a notebook). VS Code and\n"
        "PyCharm run its `# %%` cells as they are.\n"
        f"Before committing: toolkit dev {step} --remove"
    )


@click.command("new-step")
@click.argument("name")
@click.option("--after", required=True, metavar="STEP", help="Step whose `data` it reads.")
def new_step_command(name, after) -> None:
    """Scaffold step NAME reading STEP's data: notebook, contract, test, pipeline task."""
    from toolkit.dev import notebooks

    try:
        done = notebooks.new_step(name, after)
    except notebooks.StepError as exc:
        _fail(str(exc), 2)
    click.echo(f"New step {name!r} after {after!r}:")
    for path in done.created:
        click.echo(f"  created  {_shown(path)}")
    for path in done.modified:
        about = f" (contract {done.contract})" if path.suffix == ".py" else " (task)"
        click.echo(f"  modified {_shown(path)}{about}")
    click.echo(
        "Next:\n"
        "  - build it with the rest of the pipeline: toolkit run\n"
        f"  - work on it in a notebook: toolkit dev {name}\n"
        "  - document its contract in docs/contracts.md: toolkit schemas docs"
    )


@click.command("validate")
@click.argument("url")
@click.option("--schema", "name", required=True, metavar="NAME", help="Contract name.")
def validate_command(url, name) -> None:
    """Check the Parquet file at URL (local path or fsspec URL) against contract NAME.

    Exit code 0 when it matches, 1 when it breaks the contract (the report says where),
    2 for an unknown NAME or an unreadable URL.
    """
    import pyarrow

    from toolkit.data import io, schemas, storage

    contract = schemas.CONTRACTS.get(name)
    if contract is None:
        close = difflib.get_close_matches(name, list(schemas.CONTRACTS), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        _fail(f"unknown schema {name!r}{hint} (known: {', '.join(schemas.CONTRACTS)})", 2)
    try:
        frame = io.read(url, contract)
    except io.ContractError as exc:
        click.echo(str(exc))
        sys.exit(1)
    except FileNotFoundError:
        _fail(f"cannot read {storage.describe(url)}: no such file", 2)
    except io.UnreadableTable as exc:  # empty, truncated, not Parquet: it names the file
        _fail(str(exc), 2)
    except (OSError, pyarrow.ArrowException) as exc:
        # StorageError (network, permissions), a directory, or not a Parquet file.
        _fail(f"cannot read {storage.describe(url)}: {exc}", 2)
    click.echo(f"OK: {len(frame)} rows match {name}")


@click.group("schemas")
def schemas_group() -> None:
    """List and document the data contracts."""


@schemas_group.command("list")
def schemas_list_command() -> None:
    """Print every contract name with its summary."""
    from toolkit.data import schemas

    width = max(len(name) for name in schemas.CONTRACTS)
    for name, model in schemas.CONTRACTS.items():
        summary = (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else ""
        click.echo(f"{name:<{width}}  {summary}")


@schemas_group.command("docs")
@click.option("--check", is_flag=True, help="Only check the file is up to date (exit 1 if not).")
def schemas_docs_command(check) -> None:
    """Write docs/contracts.md from toolkit/data/schemas.py."""
    from toolkit.dev import contracts_doc

    path = contracts_doc.doc_path()
    if check:
        current = path.read_text() if path.exists() else ""
        if current != contracts_doc.render():
            _fail(f"{_shown(path)} is out of date: run `toolkit schemas docs`", 1)
        click.echo(f"{_shown(path)} is up to date")
        return
    contracts_doc.write(path)
    click.echo(f"Wrote {_shown(path)}")


def register(main: click.Group) -> None:
    """Add the developer commands to the ``toolkit`` click group.

    Args:
        main: The ``toolkit`` group (``toolkit.cli.commands.main``), or any group in tests.
    """
    for command in (dev_command, new_step_command, validate_command, schemas_group):
        main.add_command(command)
