"""Validated reads and writes: invalid data is never written, reports land beside outputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

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


def test_raw_contracts_refuse_infinite_prices_and_codes_with_a_trailing_newline():
    sales = pd.DataFrame(
        {
            "date": pd.to_datetime(["2026-01-05", "2026-01-06"]),
            "product_id": ["P1", "P1\n"],
            "units": [1, 2],
            "unit_price": [2.5, np.inf],
            "promo": [False, False],
        }
    )
    with pytest.raises(io.ContractError) as err:
        io.validate(sales, schemas.RawSales, url="raw/sales.parquet", stage="read")
    message = str(err.value)
    assert "column 'unit_price', check finite_price" in message
    assert "column 'product_id'" in message and "'P1\\n'" in message


def test_a_catalog_category_with_a_trailing_newline_is_not_a_new_category():
    catalog = pd.DataFrame(
        {
            "product_id": ["P1"],
            "product_name": ["Ball"],
            "category": ["toys\n"],
            "list_price": [9.0],
            "unit_cost": [4.0],
            "currency": ["EUR"],
        }
    )
    with pytest.raises(io.ContractError, match=r"column 'category'.*'toys\\n'"):
        io.validate(catalog, schemas.Catalog, url="raw/catalog.parquet", stage="read")


def test_an_empty_raw_table_says_it_has_no_rows(tmp_path):
    url = str(tmp_path / "sales.parquet")
    empty = pd.DataFrame(
        {
            "date": pd.to_datetime([]),
            "product_id": pd.Series([], dtype=str),
            "units": pd.Series([], dtype=int),
            "unit_price": pd.Series([], dtype=float),
            "promo": pd.Series([], dtype=bool),
        }
    )
    empty.to_parquet(url)
    with pytest.raises(io.ContractError, match=r"(?s)sales\.parquet \(0 rows\).*at least one row"):
        io.read(url, schemas.RawSales)


@pytest.mark.parametrize("content", [b"", b"PAR1", b"not parquet at all, just text\n"])
def test_an_unreadable_table_is_named_with_its_path(tmp_path, content):
    path = tmp_path / "sales.parquet"
    path.write_bytes(content)
    with pytest.raises(io.UnreadableTable, match=rf"^{path} is not a readable Parquet table"):
        io.read(str(path), schemas.RawSales)


def test_a_truncated_table_is_named_with_its_path(tmp_path):
    path = tmp_path / "catalog.parquet"
    pd.DataFrame({"a": range(1000)}).to_parquet(path)
    path.write_bytes(path.read_bytes()[:-300])
    with pytest.raises(io.UnreadableTable, match=rf"^{path} is not a readable Parquet table"):
        io.read_unchecked(str(path))
