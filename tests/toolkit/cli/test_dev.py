"""The developer commands: validate, schemas, new-step and dev, with their exit codes."""

from __future__ import annotations

import io as _io
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from helpers import PROJECT_DIR

from toolkit.cli import dev as cli_dev
from toolkit.data import io, schemas, storage
from toolkit.dev import contracts_doc
from toolkit.pricing import demo_data

BIN = Path(sys.executable).parent


@pytest.fixture
def toolkit():
    """Invoke the commands on a fresh group, as `toolkit.cli.commands.main` registers them."""

    @click.group()
    def group() -> None:
        pass

    cli_dev.register(group)
    runner = CliRunner()
    return lambda *args: runner.invoke(group, [str(a) for a in args])


def parquet_bytes(frame) -> bytes:
    buffer = _io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def write_good_and_broken(base: str) -> tuple[str, str]:
    """A valid catalog, and one with a negative price and a cost above its price."""
    good, broken = storage.join(base, "good.parquet"), storage.join(base, "broken.parquet")
    catalog = demo_data.make_catalog("US", n_products=20)
    io.write(catalog, good, schemas.Catalog)
    bad = catalog.copy()
    bad.loc[3, "list_price"] = -5.0
    bad.loc[7, "unit_cost"] = bad.loc[7, "list_price"] * 2
    storage.write_bytes(broken, parquet_bytes(bad))  # io.write would refuse it
    return good, broken


@pytest.mark.parametrize("where", ["local", "s3"])
def test_validate_accepts_a_good_file_and_reports_a_broken_one(where, toolkit, request):
    root = request.getfixturevalue("local_root" if where == "local" else "s3_root")
    good, broken = write_good_and_broken(storage.join(root, "checks"))

    ok = toolkit("validate", good, "--schema", "Catalog")
    assert ok.exit_code == 0, ok.output
    assert ok.output == "OK: 20 rows match Catalog\n"

    failed = toolkit("validate", broken, "--schema", "Catalog")
    assert failed.exit_code == 1
    assert f"Catalog contract failed on read of {broken} (20 rows):" in failed.output
    assert "column 'list_price', check greater_than(0): 1 failing, e.g. -5.0" in failed.output
    assert "check cost_below_price (unit cost is below list price): 2 failing" in failed.output


def test_validate_against_the_wrong_contract_names_the_columns(toolkit, local_root):
    good, _ = write_good_and_broken(local_root)
    result = toolkit("validate", good, "--schema", "Plan")
    assert result.exit_code == 1
    assert "column 'new_price', check column_in_dataframe" in result.output
    assert "column 'list_price', check column_in_schema" in result.output


def test_validate_unknown_schema_lists_the_known_ones(toolkit, local_root):
    good, _ = write_good_and_broken(local_root)
    result = toolkit("validate", good, "--schema", "Catalogue")
    assert result.exit_code == 2
    assert "unknown schema 'Catalogue'; did you mean Catalog?" in result.output
    assert ", ".join(schemas.CONTRACTS) in result.output


@pytest.mark.parametrize("where", ["local", "s3"])
def test_validate_unreadable_url_exits_2(where, toolkit, request):
    root = request.getfixturevalue("local_root" if where == "local" else "s3_root")
    missing = storage.join(root, "nothing", "here.parquet")
    result = toolkit("validate", missing, "--schema", "Catalog")
    assert result.exit_code == 2
    assert f"cannot read {missing}" in result.output and "no such file" in result.output

    not_parquet = storage.join(root, "notes.parquet")
    storage.write_bytes(not_parquet, b"just text")
    result = toolkit("validate", not_parquet, "--schema", "Catalog")
    assert result.exit_code == 2
    assert f"{not_parquet} is not a readable Parquet table" in result.output


def test_schemas_list_names_every_contract(toolkit):
    result = toolkit("schemas", "list")
    assert result.exit_code == 0
    names = [line.split()[0] for line in result.output.splitlines()]
    assert names == list(schemas.CONTRACTS)
    assert "Weekly sales per product" in result.output


def test_schemas_docs_writes_and_checks(toolkit, tmp_path, monkeypatch):
    target = tmp_path / "docs" / "contracts.md"
    monkeypatch.setattr(contracts_doc, "doc_path", lambda: target)
    stale = toolkit("schemas", "docs", "--check")
    assert stale.exit_code == 1
    assert "is out of date: run `toolkit schemas docs`" in stale.output

    written = toolkit("schemas", "docs")
    assert written.exit_code == 0 and "Wrote" in written.output
    assert target.read_text() == contracts_doc.render()
    assert toolkit("schemas", "docs", "--check").exit_code == 0


@pytest.mark.parametrize(
    ("name", "after", "message"),
    [
        ("PriceElasticity", "forecast", "is not a lowercase Python identifier"),
        ("price_elasticity", "format_output", "has no parquet `data` product"),
        ("price_elasticity", "nowhere", "--after 'nowhere' is not a step in pipeline.yaml"),
        ("forecast", "load_transform", "step 'forecast' already exists"),
    ],
)
def test_new_step_refusals_exit_2_and_change_nothing(toolkit, name, after, message):
    before = {
        p: p.read_text()
        for p in [PROJECT_DIR / "pipeline.yaml", PROJECT_DIR / "toolkit/data/schemas.py"]
    }
    result = toolkit("new-step", name, "--after", after)
    assert result.exit_code == 2
    assert message in result.output
    assert {p: p.read_text() for p in before} == before
    assert not (PROJECT_DIR / "notebooks" / "price_elasticity.py").exists()


def test_dev_needs_a_step_unless_removing(toolkit):
    result = toolkit("dev")
    assert result.exit_code == 2 and "Usage: toolkit dev STEP" in result.output
    result = toolkit("dev", "forecast", "--remove", "--patch", "country=NO")
    assert result.exit_code == 2 and "--remove takes no --patch" in result.output


def test_dev_unknown_step_lists_the_steps(toolkit, local_root, tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_BUILD_DIR", str(tmp_path / "build"))
    result = toolkit("dev", "forecasts")
    assert result.exit_code == 2
    assert "unknown step 'forecasts': pipeline.yaml has load_transform," in result.output


def test_dev_without_upstream_products_says_what_to_run(toolkit, local_root, tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_BUILD_DIR", str(tmp_path / "build"))
    before = (PROJECT_DIR / "notebooks" / "optimize.py").read_text()
    result = toolkit("dev", "optimize", "--patch", "country=NO", "--patch", "forecast.horizon=8")
    assert result.exit_code == 1
    assert "cannot open step 'optimize'" in result.output
    assert f"not under the storage root {local_root}/builds" in result.output
    assert "forecast.data: " + str(tmp_path / "build" / "market=NO") in result.output
    assert "toolkit run --patch country=NO --patch forecast.horizon=8" in result.output
    assert (PROJECT_DIR / "notebooks" / "optimize.py").read_text() == before


def test_dev_rejects_a_bad_patch(toolkit, local_root):
    result = toolkit("dev", "forecast", "--patch", "forecast.horizon=0")
    assert result.exit_code == 2
    assert "forecast.horizon" in result.output


def test_the_toolkit_console_script_has_the_commands(local_root):
    from toolkit.cli import commands as cli

    if "validate" not in cli.main.commands:
        pytest.skip("toolkit/cli/commands.py does not call cli_dev.register(main) yet")
    good, broken = write_good_and_broken(local_root)
    env = dict(os.environ, PLOOMBER_STATS_ENABLED="false", TOOLKIT_ROOT=local_root)
    ok = subprocess.run(
        [str(BIN / "toolkit"), "validate", good, "--schema", "Catalog"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and ok.stdout == "OK: 20 rows match Catalog\n", ok.stderr
    failed = subprocess.run(
        [str(BIN / "toolkit"), "validate", broken, "--schema", "Catalog"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert failed.returncode == 1 and "cost_below_price" in failed.stdout
    listed = subprocess.run(
        [str(BIN / "toolkit"), "schemas", "list"], env=env, capture_output=True, text=True
    )
    assert listed.returncode == 0
    assert [line.split()[0] for line in listed.stdout.splitlines()] == list(schemas.CONTRACTS)
