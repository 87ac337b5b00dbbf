# %% [markdown]
# # Format output
# Write the recommendations in the receiving system's format (CSV and JSON, stable column
# order) and `delivery.json`, naming the plan they make by its content. Nothing here
# names a run, since later runs may reuse these files from the cache: `toolkit run`
# delivers them after its steps, once per distinct plan (`toolkit.runs.deliveries`).

# %% tags=["parameters"]
upstream = ["load_transform", "optimize"]
product = None
run = None  # market, period, category, root: the run identity
config = None  # config section output (read by the delivery, after the steps)

# %%
import json
from pathlib import Path

from toolkit.data import io, schemas
from toolkit.pricing import delivery

reports = str(Path(product["nb"]).parent)
plan = io.read(upstream["optimize"]["data"], schemas.Plan, report_dir=reports)
catalog = io.read(upstream["load_transform"]["catalog"], schemas.Catalog, report_dir=reports)

# %%
scope = (run["market"], run["period"], run["category"])
export = delivery.to_export(plan, catalog, *scope)
export = io.validate(export, schemas.Export, url=product["csv"], stage="write", report_dir=reports)
Path(product["csv"]).write_text(export.to_csv(index=False))
records = json.loads(export.to_json(orient="records"))
Path(product["json"]).write_text(json.dumps(records, indent=2))
manifest = delivery.delivery_manifest(export, *scope)
Path(product["delivery"]).write_text(json.dumps(manifest, indent=2))
print(f"{len(export)} recommendations, plan {manifest['plan_id']}")
export.head(10)
