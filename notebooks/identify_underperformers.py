# %% [markdown]
# # Identify underperformers
# Score each product against its own seasonal baseline and its category peers;
# the thresholds come from config (`underperformers`).

# %% tags=["parameters"]
upstream = ["load_transform"]
product = None
run = None  # market, period, category, root: the run identity
config = None  # config section underperformers

# %%
from pathlib import Path

from toolkit.data import io, schemas
from toolkit.pricing import underperformers

reports = str(Path(product["nb"]).parent)
weekly = io.read(upstream["load_transform"]["data"], schemas.WeeklySales, report_dir=reports)

# %%
flagged = underperformers.score_products(
    weekly,
    recent_weeks=config["recent_weeks"],
    baseline_weeks=config["baseline_weeks"],
    decline_threshold=config["decline_threshold"],
    peer_threshold=config["peer_threshold"],
    max_products=config["max_products"],
)
print(f"{len(flagged)} of {weekly['product_id'].nunique()} products underperform")
flagged.groupby("category").size().plot.barh(title="Underperformers by category", figsize=(6, 3))
# %%
io.write(flagged, product["data"], schemas.Underperformers)
flagged.head(10)
