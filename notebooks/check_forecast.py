# %% [markdown]
# # Check the forecast
# Was the forecast right? For a past period whose weeks the raw sales hold, compare the
# units forecast for the period at the current price (the counterfactual the plan starts
# from) with the units actually sold, per product and week, and sum up the errors (WAPE,
# MAPE, bias). For a period still to come, say that there are no actuals yet.

# %% tags=["parameters"]
upstream = ["load_transform", "forecast"]
product = None
run = None  # market, period, category, root: the run identity
config = None  # reads no config section

# %%
from pathlib import Path

from toolkit.data import io, schemas
from toolkit.pricing import actuals

reports = str(Path(product["nb"]).parent)
forecasts = io.read(upstream["forecast"]["data"], schemas.Forecasts, report_dir=reports)
held = io.read(upstream["load_transform"]["actuals"], schemas.Actuals, report_dir=reports)


# %%
def percent(value, spec):
    """A ratio as text; None (nothing sold) is shown as such, never as a number."""
    return "n/a" if value is None else format(value, spec)


rows, summary = actuals.forecast_vs_actual(forecasts, held, run["period"])
io.write(rows, product["data"], schemas.ForecastVsActual)
io.write_json(summary, product["summary"])
if summary["status"] == "checked":
    print(
        f"period {run['period']}: WAPE {percent(summary['wape'], '.1%')}, "
        f"bias {percent(summary['bias'], '+.1%')} over {summary['products']} products"
    )
else:
    print(summary["message"])

# %%
if not rows.empty:
    weekly = rows.groupby("week")[["forecast_units", "actual_units"]].sum()
    weekly.plot(title="Forecast at the current price vs actual units", figsize=(7, 3))
