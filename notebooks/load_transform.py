# %% [markdown]
# # Load and transform
# Read the market's raw daily sales and catalog from their sources (`sources`), check them
# against their contracts, and aggregate complete weekly series per product for the history
# before the period: the month being priced. The period's own weeks, when the data holds
# them, are kept apart as actuals.

# %% tags=["parameters"]
upstream = None
product = None
run = None  # market, period, category, root: the run identity
config = None  # config section load_transform

# %%
from pathlib import Path

from toolkit.data import io, schemas, sources
from toolkit.pricing import actuals, transform

reports = str(Path(product["nb"]).parent)

# %%
sales = sources.read("sales", config["sources"], run, report_dir=reports)
catalog = sources.read("catalog", config["sources"], run, report_dir=reports)
print(
    f"{len(sales):,} daily rows, {sales['product_id'].nunique()} products, "
    f"{sales['date'].min():%Y-%m-%d} to {sales['date'].max():%Y-%m-%d}"
)
print(
    transform.history(
        sales, run["period"], config["history_weeks"], config["max_gap_weeks"]
    ).describe()
)

# %%
weekly = transform.weekly_sales(
    sales,
    catalog,
    period=run["period"],
    history_weeks=config["history_weeks"],
    min_weeks_with_sales=config["min_weeks_with_sales"],
    category=run["category"],
    max_gap_weeks=config["max_gap_weeks"],
)
weekly.groupby("week")["units"].sum().plot(title="Weekly units, all products", figsize=(9, 3))
# %%
io.write(weekly, product["data"], schemas.WeeklySales)
# isin over the distinct ids: over all 1.2M Arrow-backed rows it took seconds at 10M sales rows.
kept = catalog["product_id"].isin(weekly["product_id"].unique())
io.write(catalog[kept], product["catalog"], schemas.Catalog)
print(f"{weekly['product_id'].nunique()} products x {weekly['week'].nunique()} weeks")

# %%
# The period's own sales, when the data holds them (a past period): only the check_forecast
# step reads them, to compare with the forecast; no model ever learns from them.
held = actuals.period_actuals(sales, weekly["product_id"].unique(), run["period"])
io.write(held, product["actuals"], schemas.Actuals)
print(f"actual sales in {held['week'].nunique()} weeks of period {run['period']}")
