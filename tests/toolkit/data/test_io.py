"""Validated reads and writes: invalid data is never written, reports land beside outputs."""

from __future__ import annotations

import json

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
