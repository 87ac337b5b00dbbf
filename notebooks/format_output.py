# %% [markdown]
# # Format output
# Write the recommendations in the receiving system's format (CSV and JSON, stable column
# order) and, when `output.endpoint` is set, POST them there with the run id as
# idempotency key.

# %% tags=["parameters"]
upstream = ["load_transform", "optimize"]
product = None
run = None  # market, period, category, root: the run identity
config = None  # config section output, plus run_id

# %%
import json
from pathlib import Path

from toolkit.data import io, schemas
from toolkit.pricing import delivery

reports = str(Path(product["nb"]).parent)
plan = io.read(upstream["optimize"]["data"], schemas.Plan, report_dir=reports)
catalog = io.read(upstream["load_transform"]["catalog"], schemas.Catalog, report_dir=reports)

# %%
export = delivery.to_export(plan, catalog, config["run_id"], run["market"], run["period"])
export = io.validate(export, schemas.Export, url=product["csv"], stage="write", report_dir=reports)
Path(product["csv"]).write_text(export.to_csv(index=False))
records = json.loads(export.to_json(orient="records"))
Path(product["json"]).write_text(json.dumps(records, indent=2))
print(f"{len(export)} recommendations")

# %%
if config["endpoint"]:
    receipt = delivery.post_json(
        config["endpoint"],
        records,
        config["run_id"],
        retries=config["retries"],
        timeout=config["timeout_seconds"],
    )
else:
    receipt = {"endpoint": None, "status": "skipped: output.endpoint not set"}
Path(product["delivery"]).write_text(json.dumps(receipt, indent=2))
export.head(10)
