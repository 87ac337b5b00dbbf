"""The pipeline end to end, through both entry points, on small synthetic data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import PROJECT_DIR

from toolkit.data import io, schemas, storage
from toolkit.pricing import demo_data

pytestmark = pytest.mark.slow  # whole pipelines: `make test-fast` leaves these out

BIN = Path(sys.executable).parent
N_PRODUCTS = 60
AS_OF = "2026-12-04"  # a Friday: sales through Sunday 29 November 2026


def run(args, env, cwd=PROJECT_DIR, check=True):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def environment(root, build_dir):
    env = dict(os.environ, TOOLKIT_ROOT=str(root), TOOLKIT_BUILD_DIR=str(build_dir))
    env["PLOOMBER_STATS_ENABLED"] = "false"
    return env


def products(root, market="NO", period="2026-11"):
    return storage.join(str(root), "builds", f"market={market}", f"period={period}", "category=all")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """`ploomber build --env--country NO` and `toolkit run --patch country=NO`, each in its
    own root and workspace, on the same demo data."""
    out = {}
    for entry in ("ploomber", "toolkit"):
        base = tmp_path_factory.mktemp(entry)
        root, build_dir = base / "store", base / "build"
        demo_data.write(["NO"], n_products=N_PRODUCTS, root=str(root), as_of=AS_OF)
        env = environment(root, build_dir)
        if entry == "ploomber":
            args = [
                str(BIN / "ploomber"),
                "build",
                "--env--country",
                "NO",
                "--env--build_dir",
                str(build_dir),
            ]
        else:
            args = [str(BIN / "toolkit"), "run", "--patch", "country=NO"]
        out[entry] = (root, run(args, env))
    return out


def test_ploomber_build_writes_every_product_under_the_root(built):
    root, _ = built["ploomber"]
    base = products(root)
    for step, names in {
        "load_transform": [
            "weekly_sales.parquet",
            "catalog.parquet",
            "actuals.parquet",
            "load_transform.ipynb",
        ],
        "identify_underperformers": ["underperformers.parquet"],
        "forecast": ["forecasts.parquet", "accuracy.parquet", "forecast.ipynb"],
        "optimize": ["plan.parquet", "kpis.json"],
        "check_forecast": ["forecast_vs_actual.parquet", "summary.json"],
        "format_output": ["recommendations.csv", "recommendations.json", "delivery.json"],
    }.items():
        for name in names:
            assert storage.exists(storage.join(base, step, name)), f"{step}/{name}"


def test_outputs_hold_their_contracts_and_the_norwegian_config(built):
    root, _ = built["ploomber"]
    base = products(root)
    plan = io.read(storage.join(base, "optimize", "plan.parquet"), schemas.Plan)
    constraints = {
        "max_discount": 0.3,
        "min_margin": 0.15,
        "markdown_budget": 400000,
        "max_changes": 35,
    }  # defaults < markets/NO.yaml < periods/2026-11.yaml
    io.validate(plan, schemas.plan_contract(constraints))
    assert plan["changed"].any()
    export = pd.read_csv(storage.join(base, "format_output", "recommendations.csv"))
    assert list(export.columns) == list(schemas.Export.to_schema().columns)
    assert set(export["market"]) == {"NO"} and set(export["currency"]) == {"NOK"}
    records = json.loads(
        Path(storage.join(base, "format_output", "recommendations.json")).read_text()
    )
    assert [r["product_id"] for r in records] == export["product_id"].tolist()


def test_forecast_beats_seasonal_naive(built):
    from toolkit.pricing import forecasting

    root, _ = built["ploomber"]
    accuracy = io.read(
        storage.join(products(root), "forecast", "accuracy.parquet"), schemas.ForecastAccuracy
    )
    summary = forecasting.summarize_backtest(accuracy)
    assert summary["model_wape"] < summary["naive_wape"]


def test_underperformers_find_the_declining_products(built):
    root, _ = built["ploomber"]
    flagged = io.read(
        storage.join(products(root), "identify_underperformers", "underperformers.parquet"),
        schemas.Underperformers,
    )
    declining = demo_data.declining_products("NO", n_products=N_PRODUCTS)
    found = declining & set(flagged["product_id"])
    assert len(found) >= len(declining) // 2


def latest_record(root):
    env = environment(root, root.parent / "build")
    rows = json.loads(run([str(BIN / "toolkit"), "runs", "list", "--json"], env).stdout)
    shown = run([str(BIN / "toolkit"), "runs", "show", rows[0]["id"], "--json"], env).stdout
    return json.loads(shown)


def test_both_entry_points_agree(built):
    (p_root, _), (t_root, t_result) = built["ploomber"], built["toolkit"]
    record = latest_record(t_root)
    assert record["status"] == "succeeded" and record["market"] == "NO"
    for step, product, name in [
        ("load_transform", "data", "weekly_sales.parquet"),
        ("forecast", "data", "forecasts.parquet"),
        ("optimize", "data", "plan.parquet"),
    ]:
        a = pd.read_parquet(storage.join(products(p_root), step, name))
        b = pd.read_parquet(record["steps"][step]["outputs"][product])
        pd.testing.assert_frame_equal(a, b)
    a = pd.read_csv(storage.join(products(p_root), "format_output", "recommendations.csv"))
    b = pd.read_csv(record["steps"]["format_output"]["outputs"]["csv"])
    # The same recommendations, named by the same plan id: the files name no run.
    pd.testing.assert_frame_equal(a, b)
    assert record["delivery"]["status"] == "skipped"  # no endpoint in configs/
    assert f"run {record['id']}" in t_result.stdout


def test_summary_reports_changes_error_and_locations(built):
    root, result = built["toolkit"]
    env = environment(root, root.parent / "build")
    out = run([str(BIN / "toolkit"), "summary"], env).stdout
    assert out.strip() in result.stdout  # `toolkit run` ends with the same summary
    assert "Recommendations for NO 2026-11" in out
    assert "seasonal naive" in out
    assert str(root) in out


def test_config_edit_reruns_exactly_the_affected_steps(built, tmp_path):
    """A weight patch re-runs optimize and format_output; the rest stays up to date."""
    root, _ = built["toolkit"]
    env = environment(root, root.parent / "build")
    out = run(
        [
            str(BIN / "toolkit"),
            "run",
            "--patch",
            "country=NO",
            "--patch",
            "optimize.weights.margin=0.9",
        ],
        env,
    ).stdout
    assert "optimize: running" in out and "format_output: running" in out
    for step in ("load_transform", "identify_underperformers", "forecast"):
        assert f"{step}: reused from run" in out


def test_broken_raw_file_stops_load_transform_with_a_report(tmp_path):
    root, build_dir = tmp_path / "store", tmp_path / "build"
    demo_data.write(["US"], n_products=20, root=str(root))
    sales_url = storage.raw_url("US", "sales", str(root))
    sales = pd.read_parquet(sales_url)
    sales["units"] = sales["units"].astype(str)
    sales.loc[7, "units"] = "seven"
    sales.to_parquet(sales_url)

    result = run([str(BIN / "toolkit"), "run"], environment(root, build_dir), check=False)
    assert result.returncode == 1
    assert "step 'load_transform' failed" in result.stderr
    assert "column 'units'" in result.stderr and "'seven'" in result.stderr
    record = latest_record(root)
    step = record["steps"]["load_transform"]
    assert step["status"] == "failed"
    assert step["report"][0]["failures"][0]["column"] == "units"
    # Nothing was published for the step; its partial notebook is kept under the run.
    assert not storage.exists(storage.join(str(root), "cache"))
    assert storage.exists(step["debug"]["notebook"])
    assert f"/runs/{record['id']}/" in step["debug"]["notebook"]


def record_by_id(root, run_id):
    env = environment(root, root.parent / "build")
    return json.loads(run([str(BIN / "toolkit"), "runs", "show", run_id, "--json"], env).stdout)


def write_csv_exports(root, market="US"):
    """The demo's data as a team might export it: one CSV per year with their own column
    names, and the catalog as Parquet; returns a config layer that reads them."""
    catalog, sales = demo_data.generate([market], n_products=20, as_of=AS_OF)[market]
    renamed = sales.rename(columns={"date": "day", "product_id": "sku", "units": "qty"})
    for year, part in renamed.groupby(renamed["day"].dt.year):
        storage.write_bytes(
            f"{root}/exports/{market}/sales_{year}.csv", part.to_csv(index=False).encode()
        )
    catalog.rename(columns={"product_id": "sku"}).to_parquet(f"{root}/exports/{market}/items.pq")
    layer = root.parent / "sources.yaml"
    layer.write_text(
        "load_transform:\n"
        "  sources:\n"
        "    sales:\n"
        '      url: "{root}/exports/{country}/sales_*.csv"\n'
        "      columns: {day: date, sku: product_id, qty: units, unit_price: unit_price, "
        "promo: promo}\n"
        "    catalog:\n"
        '      url: "{root}/exports/{country}/items.pq"\n'
        "      columns: {sku: product_id, product_name: product_name, category: category, "
        "list_price: list_price, unit_cost: unit_cost, currency: currency}\n"
    )
    return layer


def test_this_month_and_next_from_the_demo_layout_and_from_csv_exports(tmp_path):
    """On 4 December with sales through 29 November, a backfill plans December and January;
    the same data as CSV exports gives the same plan, and a changed export is a new key."""
    root = tmp_path / "demo" / "store"
    demo_data.write(["US"], n_products=20, root=str(root), as_of=AS_OF)
    env = environment(root, tmp_path / "demo" / "build")
    toolkit = str(BIN / "toolkit")
    args = [toolkit, "backfill", "--market", "US", "--period", "2026-12..2027-01"]
    out = run([*args, "--executor", "serial"], env).stdout
    assert "2 runs: 2 succeeded" in out, out
    runs = json.loads(run([toolkit, "runs", "list", "--json"], env).stdout)
    by_period = {r["period"]: record_by_id(root, r["id"]) for r in runs}
    for period, last_week in [("2026-12", "2026-12-28"), ("2027-01", "2027-01-25")]:
        steps = by_period[period]["steps"]
        weekly = pd.read_parquet(steps["load_transform"]["outputs"]["data"])
        assert weekly["week"].max() == pd.Timestamp("2026-11-23")  # the last complete week
        forecasts = pd.read_parquet(steps["forecast"]["outputs"]["data"])
        assert forecasts["week"].min() == pd.Timestamp("2026-11-30")
        assert forecasts["week"].max() >= pd.Timestamp(last_week)  # through the priced month

    own = tmp_path / "own" / "store"
    layer = write_csv_exports(own)
    own_env = environment(own, tmp_path / "own" / "build")
    mine = [toolkit, "run", "--patch", "period=2026-12", "--config", str(layer)]
    first_id = run(mine, own_env).stdout.splitlines()[0].split()[1]  # "run <id>"
    first = record_by_id(own, first_id)
    assert first["status"] == "succeeded"
    expected = pd.read_csv(by_period["2026-12"]["steps"]["format_output"]["outputs"]["csv"])
    pd.testing.assert_frame_equal(
        pd.read_csv(first["steps"]["format_output"]["outputs"]["csv"]), expected
    )

    # One export changes: load_transform's key changes with it.
    url = f"{own}/exports/US/sales_2025.csv"
    text = storage.read_bytes(url).decode().splitlines()
    fields = text[1].split(",")
    fields[2] = str(int(fields[2]) + 1)  # qty
    text[1] = ",".join(fields)
    storage.write_bytes(url, ("\n".join(text) + "\n").encode())
    again = run(mine, own_env).stdout.splitlines()
    assert again[1] == "[1/6] load_transform: running", again


def test_a_past_period_learns_nothing_from_later_sales_and_is_checked_against_them(tmp_path):
    """November 2026 planned on 4 December, and on 2 November with the same sales up to
    then: the same plan. Only the first data holds November's sales, so only its run
    checks the forecast against them; the other says there are no actuals."""
    toolkit = str(BIN / "toolkit")
    records = {}
    for name in ("later", "before"):
        root = tmp_path / name / "store"
        demo_data.write(["US"], n_products=20, root=str(root), as_of=AS_OF)
        sales_url = storage.raw_url("US", "sales", str(root))
        sales = pd.read_parquet(sales_url)
        if name == "before":  # through Sun 1 November: November's first week starts on the 2nd
            io.write(sales[sales["date"] < "2026-11-02"], sales_url, schemas.RawSales)
        env = environment(root, tmp_path / name / "build")
        out = run([toolkit, "run", "--patch", "country=US", "--patch", "period=2026-11"], env)
        records[name] = record_by_id(root, out.stdout.splitlines()[0].split()[1])
        records[name]["sales"] = sales

    def output(name, step, product):
        return records[name]["steps"][step]["outputs"][product]

    for step, product in [("load_transform", "data"), ("forecast", "data"), ("optimize", "data")]:
        pd.testing.assert_frame_equal(
            pd.read_parquet(output("later", step, product)),
            pd.read_parquet(output("before", step, product)),
        )
    assert storage.read_bytes(output("later", "format_output", "csv")) == storage.read_bytes(
        output("before", "format_output", "csv")
    )

    checked = json.loads(storage.read_bytes(output("later", "check_forecast", "summary")))
    assert checked["status"] == "checked" and checked["forecast_basis"].startswith("current_price")
    assert checked["weeks"] == ["2026-11-02", "2026-11-09", "2026-11-16", "2026-11-23"]
    assert all(isinstance(checked[k], float) for k in ("wape", "mape", "bias"))
    rows = io.read(output("later", "check_forecast", "data"), schemas.ForecastVsActual)
    forecasts = pd.read_parquet(output("later", "forecast", "data"))
    assert set(rows["product_id"]) == set(forecasts["product_id"]) and len(rows) == 4 * len(
        set(forecasts["product_id"])
    )
    sales = records["later"]["sales"]
    november = sales[sales["date"].between("2026-11-02", "2026-11-29")]
    sold = november.groupby("product_id")["units"].sum()
    by_product = rows.groupby("product_id")["actual_units"].sum()
    assert by_product.to_dict() == sold[by_product.index].astype(float).to_dict()
    assert checked["actual_units"] == float(by_product.sum())

    none = json.loads(storage.read_bytes(output("before", "check_forecast", "summary")))
    assert none["status"] == "no_actuals" and "wape" not in none
    assert none["message"].startswith("no actuals for period 2026-11: the raw sales hold 0 of")
    assert io.read(output("before", "check_forecast", "data"), schemas.ForecastVsActual).empty
