# %% [markdown]
# # Optimize
# Choose one price change per product from the allowed levels, maximising the weighted
# objective (`weights`) over the weeks of the priced month under the business
# `constraints`, with a MILP solver (HiGHS).

# %% tags=["parameters"]
upstream = ["forecast"]
product = None
run = None  # market, period, category, root: the run identity
config = None  # config section optimize: weights and constraints

# %%
from pathlib import Path

from toolkit.data import io, schemas
from toolkit.pricing import optimizer, periods, plots

reports = str(Path(product["nb"]).parent)
forecasts = io.read(upstream["forecast"]["data"], schemas.Forecasts, report_dir=reports)

# %%
# Weeks before the month are forecast to bridge the gap since the data; only the month's own
# weeks are priced.
priced = forecasts[forecasts["week"].isin(periods.weeks_of(run["period"]))]
candidates = optimizer.candidates_from_forecasts(priced)
plan = optimizer.choose_price_changes(candidates, config["weights"], config["constraints"])
# The written plan is re-checked against the same constraints by its contract.
io.write(plan, product["data"], schemas.plan_contract(config["constraints"]))
kpis = optimizer.plan_kpis(plan)
io.write_json(kpis, product["kpis"])
kpis

# %%
plots.impact_by_category(plan)
