# %% [markdown]
# # Optimize
# Choose one price change per product from the allowed levels, maximising the weighted
# objective (`weights`) under the business `constraints`, with a MILP solver (HiGHS).

# %% tags=["parameters"]
upstream = ["forecast"]
product = None
run = None  # market, period, category, root: the run identity
config = None  # config section optimize: weights and constraints

# %%
from pathlib import Path

from toolkit.data import io, schemas
from toolkit.pricing import optimizer, plots

reports = str(Path(product["nb"]).parent)
forecasts = io.read(upstream["forecast"]["data"], schemas.Forecasts, report_dir=reports)

# %%
candidates = optimizer.candidates_from_forecasts(forecasts)
plan = optimizer.choose_price_changes(candidates, config["weights"], config["constraints"])
# The written plan is re-checked against the same constraints by its contract.
io.write(plan, product["data"], schemas.plan_contract(config["constraints"]))
kpis = optimizer.plan_kpis(plan)
io.write_json(kpis, product["kpis"])
kpis

# %%
plots.impact_by_category(plan)
