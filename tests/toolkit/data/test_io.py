"""Validated reads and writes: invalid data is never written, reports land beside outputs."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from helpers import toolkit, toolkit_env

from toolkit.data import io, schemas, storage
from toolkit.pricing import demo_data


def catalog():
    return demo_data.make_catalog("DE", n_products=12)


@pytest.mark.parametrize("root_fixture", ["local_root", "s3_root"])
def test_round_trip(root_fixture, request):
    root = request.getfixturevalue(root_fixture)
    url = storage.join(root, "step", "catalog.parquet")
    io.write(catalog(), url, schemas.Catalog)
    back = io.read(url, schemas.Catalog)
    pd.testing.assert_frame_equal(back, catalog(), check_dtype=False)


@pytest.mark.parametrize("root_fixture", ["local_root", "s3_root"])
def test_invalid_write_leaves_no_product_and_a_report(root_fixture, request):
    root = request.getfixturevalue(root_fixture)
    url = storage.join(root, "step", "catalog.parquet")
    broken = catalog()
    broken.loc[0, "list_price"] = -5.0
    with pytest.raises(io.ContractError) as err:
        io.write(broken, url, schemas.Catalog)
    assert not storage.exists(url)
    report = json.loads(storage.read_bytes(err.value.report_url))
    assert report["dataset"] == "Catalog" and report["stage"] == "write"
    by_column = {f["column"]: f for f in report["failures"]}
    assert by_column["list_price"]["examples"] == [-5.0]


def test_text_in_numeric_column_is_reported_on_read(local_root):
    url = storage.join(local_root, "raw", "sales.parquet")
    frame = demo_data.make_sales(
        "US", demo_data.make_catalog("US", 5), start="2026-01-05", end="2026-01-18"
    )
    frame["units"] = frame["units"].astype(str)
    frame.loc[2, "units"] = "n/a"
    storage.Path(url).parent.mkdir(parents=True)
    frame.to_parquet(url)
    with pytest.raises(io.ContractError) as err:
        io.read(url, schemas.RawSales, report_dir=storage.join(local_root, "reports"))
    assert "column 'units'" in str(err.value) and "'n/a'" in str(err.value)
    assert storage.exists(storage.join(local_root, "reports", "sales.validation.json"))


def test_local_write_is_atomic(local_root, monkeypatch):
    url = storage.join(local_root, "a", "b.bin")
    storage.write_bytes(url, b"old")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        storage.write_bytes(url, b"new")
    assert storage.read_bytes(url) == b"old"
    assert [p.name for p in (storage.Path(local_root) / "a").iterdir()] == ["b.bin"]


def test_missing_table_names_the_url(local_root):
    with pytest.raises(FileNotFoundError, match="no table at .*nothing.parquet"):
        io.read(storage.join(local_root, "nothing.parquet"), schemas.Catalog)


def test_join_refuses_to_climb():
    with pytest.raises(ValueError):
        storage.join("s3://b/p", "../q")
    with pytest.raises(ValueError):
        storage.join("s3://b/p", "/etc")


def raw_sales(**columns):
    frame = {
        "date": pd.to_datetime(["2026-01-05", "2026-01-06", "2026-01-07"]),
        "product_id": ["P1", "P1", "P1"],
        "units": [1, 2, 3],
        "unit_price": [2.5, 2.5, 2.5],
        "promo": [False, False, True],
    }
    return pd.DataFrame({**frame, **columns})


def raw_catalog(**columns):
    frame = {
        "product_id": ["P1", "P2"],
        "product_name": ["Ball", "Kite"],
        "category": ["toys", "toys"],
        "list_price": [9.0, 12.0],
        "unit_cost": [4.0, 5.0],
        "currency": ["EUR", "EUR"],
    }
    return pd.DataFrame({**frame, **columns})


def failure_of(df, contract, column, check):
    with pytest.raises(io.ContractError) as err:
        io.validate(df, contract, url="raw/table.parquet", stage="read")
    found = [f for f in err.value.report.failures if (f["column"], f["check"]) == (column, check)]
    assert found, str(err.value)
    return found[0], str(err.value)


def test_infinite_prices_are_named_with_their_column_and_rows():
    sales = raw_sales(unit_price=[2.5, np.inf, -np.inf])
    failure, message = failure_of(sales, schemas.RawSales, "unit_price", "finite_price")
    assert failure["examples"] == [np.inf, -np.inf] and failure["rows"] == [1, 2]
    assert "column 'unit_price', check finite_price (finite): 2 failing" in message
    assert "inf (row 1), -inf (row 2)" in message

    catalog = raw_catalog(list_price=[9.0, np.inf], unit_cost=[-np.inf, 5.0])
    for column, row in (("list_price", 1), ("unit_cost", 0)):
        failure, _ = failure_of(catalog, schemas.Catalog, column, "finite_money")
        assert failure["rows"] == [row]


CATEGORY_CHECK = "str_matches('^[a-z][a-z0-9_]*\\Z')"


def test_a_category_with_a_trailing_newline_is_an_error_not_a_new_category():
    catalog = raw_catalog(category=["toys", "Toys\n"])
    failure, message = failure_of(catalog, schemas.Catalog, "category", CATEGORY_CHECK)
    assert failure["examples"] == ["Toys\n"] and failure["rows"] == [1]
    assert "column 'category'" in message and "'Toys\\n' (row 1)" in message
    # '$' would have let "toys\n" through: the pattern must match the whole value.
    catalog = raw_catalog(category=["toys\n", "toys"])
    failure, _ = failure_of(catalog, schemas.Catalog, "category", CATEGORY_CHECK)
    assert failure["rows"] == [0]


@pytest.mark.parametrize("value", ["P1\n", " P1", "P1 ", "P١", "P１"])
def test_product_ids_are_ascii_and_matched_in_full(value):
    sales = raw_sales(product_id=["P1", value, "P1"])
    failure, _ = failure_of(sales, schemas.RawSales, "product_id", "str_matches('^P[0-9]+\\Z')")
    assert failure["examples"] == [value] and failure["rows"] == [1]


@pytest.mark.parametrize("market", ["ＵS", "US\n", "us"])
def test_an_export_market_code_is_two_ascii_capitals(market):
    row = {
        "plan_id": "0" * 32,
        "market": market,
        "period": "2026-11",
        "product_id": "P1",
        "product_name": "Ball",
        "category": "toys",
        "currency": "EUR",
        "current_price": 10.0,
        "recommended_price": 9.0,
        "change_pct": -10.0,
        "expected_units": 5.0,
        "expected_revenue_change": 1.0,
        "expected_margin_change": 0.5,
    }
    failure, _ = failure_of(
        pd.DataFrame([row]), schemas.Export, "market", "str_matches('^[A-Z]{2}\\Z')"
    )
    assert failure["examples"] == [market]


def test_an_empty_raw_table_says_it_has_no_rows(tmp_path):
    url = str(tmp_path / "sales.parquet")
    raw_sales().iloc[0:0].to_parquet(url)
    with pytest.raises(io.ContractError, match=r"(?s)sales\.parquet \(0 rows\).*at least one row"):
        io.read(url, schemas.RawSales)


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "is empty (0 bytes), not a Parquet table"),
        (b"PAR1", "is not a readable Parquet table: "),
        (b"not parquet at all, just text\n", "is not a readable Parquet table: "),
    ],
)
def test_an_unreadable_table_is_named_with_its_path(tmp_path, content, reason):
    path = tmp_path / "sales.parquet"
    path.write_bytes(content)
    with pytest.raises(io.UnreadableTable) as err:
        io.read(str(path), schemas.RawSales)
    assert str(err.value).startswith(f"{path} {reason}")
    assert "<Buffer>" not in str(err.value)


def parquet_file(path):
    pd.DataFrame({"a": np.arange(20_000), "b": np.linspace(0, 1, 20_000)}).to_parquet(path)
    return path.read_bytes()


def test_a_truncated_table_is_named_with_its_path(tmp_path):
    path = tmp_path / "catalog.parquet"
    path.write_bytes(parquet_file(path)[:-300])
    with pytest.raises(io.UnreadableTable, match=rf"^{path} is not a readable Parquet table: "):
        io.read_unchecked(str(path))


def test_a_table_corrupt_inside_is_named_with_its_path(tmp_path):
    path = tmp_path / "sales.parquet"
    data = parquet_file(path)
    # The footer stays intact, so only decoding the column data finds the damage.
    path.write_bytes(data[:100] + bytes(b ^ 0xFF for b in data[100:4000]) + data[4000:])
    with pytest.raises(io.UnreadableTable, match=rf"^{path} is not a readable Parquet table: "):
        io.read_unchecked(str(path))


def test_a_truncated_table_on_s3_is_named_with_its_url(s3_root, tmp_path):
    url = storage.join(s3_root, "raw", "market=US", "sales.parquet")
    storage.write_bytes(url, parquet_file(tmp_path / "good.parquet")[:-300])
    with pytest.raises(io.UnreadableTable, match=rf"^{url} is not a readable Parquet table: "):
        io.read(url, schemas.RawSales)


@pytest.mark.slow
def test_a_run_on_raw_sales_with_infinite_prices_stops_at_the_boundary(local_root):
    """End to end: the contract stops the first step, and the command says where, in words."""
    urls = demo_data.write(["US"], n_products=30, root=local_root)["US"]
    sales = io.read(urls["sales"], schemas.RawSales)
    sales.loc[7, "unit_price"] = np.inf
    sales.to_parquet(storage.Path(urls["sales"]))
    result = toolkit(["run", "--patch", "country=US"], toolkit_env(local_root), check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert "step 'load_transform' failed: ContractError: RawSales contract failed" in result.stderr
    # Row 7 of the frame: 8 where the reader numbers rows as the file does, from 1.
    failing = (
        r"column 'unit_price', check finite_price \(finite\): 1 failing, e.g. inf \(row [78]\)"
    )
    assert re.search(failing, result.stderr), result.stderr
