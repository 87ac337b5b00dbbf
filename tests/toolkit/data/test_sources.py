"""Raw tables from the team's own sources: CSV or Parquet, renamed columns, globs and
templates, locally, on S3 (moto), GCS (fake-gcs-server) and Azure Blob (Azurite), checked
file by file."""

from __future__ import annotations

import io as _io

import pandas as pd
import pytest

from toolkit import config as config_mod
from toolkit.data import io, schemas, sources, storage
from toolkit.pricing import demo_data, transform

AS_OF = "2026-12-04"  # sales through Sunday 29 November 2026
GERMAN = {"Datum": "date", "Artikel": "product_id", "Menge": "units", "Preis": "unit_price"}
GERMAN_SALES = {**GERMAN, "Aktion": "promo"}
GERMAN_CATALOG = {
    "Artikelnummer": "product_id",
    "Bezeichnung": "product_name",
    "Warengruppe": "category",
    "Listenpreis": "list_price",
    "Einstandspreis": "unit_cost",
    "Waehrung": "currency",
}


@pytest.fixture(scope="module")
def demo():
    return demo_data.generate(["SE"], n_products=6, as_of=AS_OF)["SE"]


ROOTS = {"local": "local_root", "s3": "s3_root", "gs": "gcs_root", "az": "azure_root"}


@pytest.fixture(params=list(ROOTS))
def root(request) -> str:
    return request.getfixturevalue(ROOTS[request.param])


def defaults() -> dict:
    return config_mod.resolve(patches=["country=SE"]).section("load_transform")["sources"]


def run_for(root: str, period: str = "2026-12") -> dict:
    return {"market": "SE", "period": period, "category": None, "root": root}


def as_german_csv(sales: pd.DataFrame) -> bytes:
    """A team's export: their column names, ';' between fields, decimal commas, dd.mm.yyyy."""
    renamed = sales.rename(columns={v: k for k, v in GERMAN_SALES.items()})
    renamed["Datum"] = renamed["Datum"].dt.strftime("%d.%m.%Y")
    renamed["Filiale"] = "Nord"  # a column the run does not read
    return renamed.to_csv(sep=";", decimal=",", index=False).encode()


def write_exports(root: str, sales: pd.DataFrame, catalog: pd.DataFrame) -> dict:
    """Sales as one CSV per year under exports/<country>/, the catalog as renamed Parquet;
    returns the sources that read them."""
    for year, part in sales.groupby(sales["date"].dt.year):
        storage.write_bytes(f"{root}/exports/SE/sales_{year}.csv", as_german_csv(part))
    buffer = _io.BytesIO()
    catalog.rename(columns={v: k for k, v in GERMAN_CATALOG.items()}).to_parquet(buffer)
    storage.write_bytes(f"{root}/exports/SE/artikel.parquet", buffer.getvalue())
    csv = {"delimiter": ";", "decimal": ",", "date_format": "%d.%m.%Y", "encoding": "utf-8"}
    return {
        "sales": {"url": "{root}/exports/{country}/sales_*.csv", "format": None}
        | csv
        | {"columns": GERMAN_SALES},
        "catalog": {"url": "{root}/exports/{country}/artikel.parquet", "format": None}
        | csv
        | {"columns": GERMAN_CATALOG},
    }


def test_the_default_source_is_the_demo_layout(local_root, demo):
    demo_data.write(["SE"], n_products=6, root=local_root, as_of=AS_OF)
    catalog, sales = demo
    read = sources.read("sales", defaults(), run_for(local_root))
    pd.testing.assert_frame_equal(read, io.read(storage.raw_url("SE", "sales"), schemas.RawSales))
    assert read["date"].max() == pd.Timestamp("2026-11-29")
    assert sources.read("catalog", defaults(), run_for(local_root))["product_id"].tolist() == (
        catalog["product_id"].tolist()
    )


def test_renamed_csv_and_parquet_in_several_files_read_as_the_demo_layout(root, demo):
    catalog, sales = demo
    configured = write_exports(root, sales, catalog)
    assert len(sources.urls("sales", configured["sales"], run_for(root))) == 4  # 2023..2026
    read_sales = sources.read("sales", configured, run_for(root))
    read_catalog = sources.read("catalog", configured, run_for(root))
    by_day = ["product_id", "date"]  # the files hold a year of every product each
    pd.testing.assert_frame_equal(
        read_sales.sort_values(by_day, ignore_index=True),
        io.validate(sales, schemas.RawSales).sort_values(by_day, ignore_index=True),
    )
    pd.testing.assert_frame_equal(read_catalog, io.validate(catalog, schemas.Catalog))
    # ...so the run learns exactly the same history from them.
    expected = transform.weekly_sales(sales, catalog, "2026-12", 104, 10)
    assert transform.weekly_sales(read_sales, read_catalog, "2026-12", 104, 10).equals(expected)


def test_the_files_of_the_cache_key_follow_the_template(local_root, demo):
    catalog, sales = demo
    configured = write_exports(local_root, sales, catalog)
    found = sources.input_urls(configured, run_for(local_root))
    assert [url.rsplit("/", 1)[1] for url in found] == [
        "sales_2023.csv",
        "sales_2024.csv",
        "sales_2025.csv",
        "sales_2026.csv",
        "artikel.parquet",
    ]
    assert all(url.startswith(f"{local_root}/exports/SE/") for url in found)
    other_market = {**run_for(local_root), "market": "NO"}
    # A glob matching nothing adds nothing, a missing file its URL: the step says what it is.
    assert sources.input_urls(configured, other_market) == [
        f"{local_root}/exports/NO/artikel.parquet"
    ]
    with pytest.raises(sources.SourceError, match=r"sources.sales.url: no file matches .*/NO/"):
        sources.read("sales", configured, other_market)


def test_a_bad_row_names_the_file_the_row_and_the_column(local_root, demo):
    catalog, sales = demo
    configured = write_exports(local_root, sales, catalog)
    url = f"{local_root}/exports/SE/sales_2025.csv"
    lines = storage.read_bytes(url).decode().splitlines()
    fields = lines[4].split(";")  # row 5 of the file, the header being row 1
    fields[2] = "-3"  # Menge
    lines[4] = ";".join(fields)
    storage.write_bytes(url, ("\n".join(lines) + "\n").encode())
    reports = f"{local_root}/reports"
    with pytest.raises(io.ContractError) as err:
        sources.read("sales", configured, run_for(local_root), report_dir=reports)
    message = str(err.value)
    assert f"RawSales contract failed on read of {url}" in message
    assert "column 'Menge (units)', check greater_than_or_equal_to(0): 1 failing" in message
    assert "-3 (row 5)" in message
    assert err.value.report_url == f"{reports}/sales_2025.validation.json"
    assert storage.exists(err.value.report_url)


def test_a_date_in_another_format_names_the_row(local_root, demo):
    catalog, sales = demo
    configured = write_exports(local_root, sales, catalog)
    url = f"{local_root}/exports/SE/sales_2024.csv"
    text = storage.read_bytes(url).decode().replace("03.01.2024", "2024-01-03", 1)
    storage.write_bytes(url, text.encode())
    with pytest.raises(sources.SourceError) as err:
        sources.read("sales", configured, run_for(local_root))
    assert str(err.value).startswith(
        f"{url}: column 'Datum': 1 values do not match date format '%d.%m.%Y', e.g. "
        "'2024-01-03' (row "
    )


def test_a_row_in_two_files_names_both(local_root, demo):
    catalog, sales = demo
    configured = write_exports(local_root, sales, catalog)
    storage.write_bytes(f"{local_root}/exports/SE/sales_2026b.csv", as_german_csv(sales.tail(1)))
    with pytest.raises(sources.SourceError) as err:
        sources.read("sales", configured, run_for(local_root))
    assert str(err.value) == (
        "load_transform.sources.sales.url: 1 rows appear in more than one file, e.g. "
        f"date 2026-11-29, product_id P0006: {local_root}/exports/SE/sales_2026.csv row "
        f"{len(sales[sales['date'].dt.year == 2026]) + 1} and "
        f"{local_root}/exports/SE/sales_2026b.csv row 2"
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"columns": {**GERMAN_SALES, "Menge": "qty"}},
            "load_transform.sources.sales.columns: 'Menge' maps to 'qty', which is not a "
            "RawSales column (date, product_id, units, unit_price, promo)",
        ),
        (
            {"columns": {**GERMAN_SALES, "Stueck": "units", "Menge": "unit_price"}},
            "load_transform.sources.sales.columns: several columns map to 'unit_price'",
        ),
        (
            {"columns": {**GERMAN_SALES, "Menge": "units", "Anzahl": "units"}},
            "load_transform.sources.sales.columns: several columns map to 'units'",
        ),
        (
            {"url": "{root}/exports/{country}/sales_2026.txt"},
            "set load_transform.sources.sales.format to csv or parquet",
        ),
    ],
)
def test_a_source_that_does_not_fit_says_which_key(local_root, demo, change, message):
    catalog, sales = demo
    configured = write_exports(local_root, sales, catalog)
    storage.write_bytes(f"{local_root}/exports/SE/sales_2026.txt", b"x")
    configured["sales"] |= change
    with pytest.raises(sources.SourceError, match="^.*" + message.replace("(", r"\(")[:60]):
        sources.read("sales", configured, run_for(local_root))


def test_a_missing_column_lists_the_columns_the_file_has(local_root, demo):
    catalog, sales = demo
    configured = write_exports(local_root, sales, catalog)
    configured["sales"]["columns"] = {**GERMAN, "Promo": "promo"}
    with pytest.raises(sources.SourceError) as err:
        sources.read("sales", configured, run_for(local_root))
    assert str(err.value) == (
        f"{local_root}/exports/SE/sales_2023.csv has no column 'Promo' "
        "(load_transform.sources.sales.columns); its columns: Datum, Artikel, Menge, Preis, "
        "Aktion, Filiale"
    )


def test_a_market_points_at_its_own_bucket(project):
    (project / "configs/markets/SE.yaml").write_text(
        (project / "configs/markets/SE.yaml").read_text() + "load_transform:\n"
        "  sources:\n"
        "    sales:\n"
        '      url: "s3://se-exports/{period}/sales_*.csv"\n'
        "      delimiter: ;\n"
        "      columns: {Datum: date, Artikel: product_id}\n"
    )
    resolved = config_mod.resolve(patches=["country=SE"], project_dir=project)
    section = resolved.section("load_transform")["sources"]
    assert section["sales"]["url"] == "s3://se-exports/{period}/sales_*.csv"
    assert section["sales"]["columns"] == {"Datum": "date", "Artikel": "product_id"}
    assert section["catalog"]["url"] == "{root}/raw/market={country}/catalog.parquet"
    assert resolved.origin("load_transform.sources.sales.url") == "configs/markets/SE.yaml"
    assert sources.expand(section["sales"]["url"], run_for("/r", "2027-01")) == (
        "s3://se-exports/2027-01/sales_*.csv"
    )
    other = config_mod.resolve(patches=["country=NO"], project_dir=project)
    assert other.section("load_transform")["sources"]["sales"]["columns"] == {}


def test_an_unknown_placeholder_is_a_config_error(project):
    with pytest.raises(config_mod.ConfigError, match=r"unknown placeholder \{market\}"):
        config_mod.resolve(
            patches=['load_transform.sources.sales.url="{root}/{market}.csv"'], project_dir=project
        )
