# %% [markdown]
# # Forecast
# Forecast every week from the end of the history through the priced month (and at least
# `horizon` weeks) for the underperformers at today's price, estimate each product's price
# elasticity, and backtest the model against a seasonal-naive baseline.

# %% tags=["parameters"]
upstream = ["load_transform", "identify_underperformers"]
product = None
run = None  # market, period, category, root: the run identity
config = None  # config section forecast

# %%
from pathlib import Path

from toolkit.data import io, schemas
from toolkit.pricing import forecasting, periods, plots

reports = str(Path(product["nb"]).parent)
weekly = io.read(upstream["load_transform"]["data"], schemas.WeeklySales, report_dir=reports)
flagged = io.read(
    upstream["identify_underperformers"]["data"], schemas.Underperformers, report_dir=reports
)
ids = list(flagged["product_id"])

# %%
accuracy = forecasting.backtest(weekly, ids, config["backtest_weeks"], config["season_length"])
summary = forecasting.summarize_backtest(accuracy)
print(
    f"backtest WAPE: model {summary['model_wape']:.1%} vs seasonal naive "
    f"{summary['naive_wape']:.1%} over {summary['n_products']} products"
)

# %%
horizon = max(config["horizon"], periods.weeks_through(run["period"], weekly["week"].max()))
forecasts = forecasting.forecast_frame(weekly, ids, horizon, config["season_length"])
io.write(forecasts, product["data"], schemas.Forecasts)
io.write(accuracy, product["accuracy"], schemas.ForecastAccuracy)

# %%
plots.history_and_forecast(weekly, forecasts, ids[:4])
