"""Weekly unit forecasts, price elasticities and forecast backtests per product."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from toolkit.runs import reports

# statsmodels (slow to import) is imported where a model is fitted, so reading results
# (summarize_backtest) does not pay for it.

__all__ = [
    "ELASTICITY_BOUNDS",
    "backtest",
    "estimate_elasticity",
    "forecast_frame",
    "forecast_products",
    "summarize_backtest",
]

ELASTICITY_BOUNDS = (-5.0, -0.1)

# Elasticity is estimated against yearly seasonality; the weekly frame is weekly by contract.
_ELASTICITY_SEASON_LENGTH = 52
# Fitting needs one and a half seasons of history: with less, seasonality cannot be told
# apart from trend and the model loses to seasonal naive on synthetic data.
_MIN_HISTORY_SEASONS = 1.5
# Ten yearly harmonics follow a sharp holiday peak without chasing weekly noise.
_MAX_HARMONICS = 10
# Newey-West lags: residuals of weekly sales stay correlated for about a month.
_HAC_LAGS = 4
# Fourier phases are anchored to a fixed Monday so that every product and every
# backtest cut-off sees the same week-of-year pattern.
_EPOCH = pd.Timestamp("1970-01-05")
# The weekly sales frame has one row per product per consecutive Monday; these are
# the columns this module reads.
_REQUIRED_COLUMNS = ("product_id", "category", "week", "units", "avg_price", "list_price")


def estimate_elasticity(weekly: pd.DataFrame) -> pd.DataFrame:
    """Estimates each product's constant price elasticity of demand.

    Per product, log1p(units) is regressed on log(avg_price / list_price), a
    piecewise-linear trend and yearly Fourier terms, so that seasonal peaks and level
    shifts are not mistaken for price response. Standard errors are Newey-West (HAC)
    because weekly residuals are autocorrelated.

    Args:
        weekly: Weekly sales, one row per product per week.

    Returns:
        One row per product, sorted by product_id, with columns product_id,
        elasticity (clipped to ELASTICITY_BOUNDS) and elasticity_se (unclipped
        standard error). A product whose price never moved, or that never sold,
        says nothing about its own price response: it gets the median elasticity of
        its category (of all products if its category has none) and an
        elasticity_se of inf to mark the value as borrowed.

    Raises:
        ValueError: If a column is missing, a product has fewer than 78 weeks, gaps
            or duplicate weeks, or no product at all has an estimable elasticity.
    """
    _check_columns(weekly)
    rows = []
    for product_id, frame in weekly.groupby("product_id", sort=True):
        series = _prepare(frame, product_id, _ELASTICITY_SEASON_LENGTH)
        elasticity, se = np.nan, np.inf
        if series["units"].any() and _has_price_variation(series["log_ratio"]):
            fit = _regress(series, _ELASTICITY_SEASON_LENGTH, cov_type="HAC")
            elasticity = float(np.clip(fit.params["log_price_ratio"], *ELASTICITY_BOUNDS))
            se = float(fit.bse["log_price_ratio"])
        category = frame["category"].iloc[0]
        rows.append(
            {
                "product_id": product_id,
                "category": category,
                "elasticity": elasticity,
                "elasticity_se": se,
            }
        )
    result = pd.DataFrame(rows, columns=["product_id", "category", "elasticity", "elasticity_se"])
    estimated = result["elasticity"].notna()
    if not estimated.any():
        raise ValueError(
            "no product has an estimable elasticity (prices never moved or nothing sold): "
            f"{list(result['product_id'])}"
        )
    borrowed = result["category"].map(result[estimated].groupby("category")["elasticity"].median())
    borrowed = borrowed.fillna(result.loc[estimated, "elasticity"].median())
    result["elasticity"] = result["elasticity"].fillna(borrowed)
    return result.drop(columns="category")


def forecast_products(
    weekly: pd.DataFrame,
    product_ids: Sequence[str],
    horizon: int,
    season_length: int = 52,
) -> pd.DataFrame:
    """Forecasts weekly units at the current list price, without promotions.

    Model, per product on log1p(units): a regression on trend, Fourier seasonality
    and log price ratio isolates the seasonal and price effects; the remaining
    price-adjusted, deseasonalised series is forecast with damped-trend exponential
    smoothing so that recent level shifts (e.g. a declining product) carry forward
    while all history still shapes the seasonality. The seasonal profile is added
    back at a price ratio of 1 and the result is transformed back with expm1, which
    gives a median-like forecast (a little below the mean for slow sellers). A
    product that never sold is forecast at zero.

    Args:
        weekly: Weekly sales, one row per product per week.
        product_ids: Products to forecast; duplicates are ignored.
        horizon: Number of future weeks, at least 1.
        season_length: Weeks per seasonal cycle.

    Returns:
        One row per product per future week, in the order of product_ids, with
        columns product_id, week (the Mondays after the product's last week),
        step (1..horizon) and forecast_units (>= 0).

    Raises:
        ValueError: On horizon < 1, an unknown product id, or a product with fewer
            than 1.5 seasons of weeks, gaps or duplicate weeks.
    """
    if horizon < 1:
        raise ValueError(f"horizon must be at least 1 week, got {horizon}")
    series_by_product = _select(weekly, product_ids, season_length, holdout_weeks=0)
    frames = []
    for product_id, series in series_by_product.items():
        steps = np.arange(1, horizon + 1)
        last_week = series["week"].iloc[-1]
        frames.append(
            pd.DataFrame(
                {
                    "product_id": product_id,
                    "week": last_week + pd.to_timedelta(7 * steps, unit="D"),
                    "step": steps,
                    "forecast_units": _forecast_series(series, horizon, season_length),
                }
            )
        )
    if not frames:
        return pd.DataFrame(
            {
                "product_id": pd.Series(dtype="str"),
                "week": pd.Series(dtype=weekly["week"].dtype),
                "step": pd.Series(dtype="int64"),
                "forecast_units": pd.Series(dtype="float64"),
            }
        )
    result = pd.concat(frames, ignore_index=True)
    result["week"] = result["week"].astype(weekly["week"].dtype)
    return result


def backtest(
    weekly: pd.DataFrame,
    product_ids: Sequence[str],
    holdout_weeks: int,
    season_length: int = 52,
) -> pd.DataFrame:
    """Scores the model and a seasonal-naive baseline on the last weeks of history.

    Both are fitted on all but the last holdout_weeks weeks. The model forecasts at
    list price without promotion, exactly as in production, so promotions and
    price changes inside the holdout count as error for both methods. The
    seasonal-naive forecast repeats the last training season.

    Args:
        weekly: Weekly sales, one row per product per week.
        product_ids: Products to score; duplicates are ignored.
        holdout_weeks: Number of final weeks held out, at least 1.
        season_length: Weeks per seasonal cycle.

    Returns:
        One row per product, in the order of product_ids, with columns product_id,
        model_mae, naive_mae, model_wape, naive_wape and n_weeks. WAPE is
        sum|error| / sum(actual), NaN when nothing sold in the holdout.

    Raises:
        ValueError: On holdout_weeks < 1, an unknown product id, or a product whose
            training part has fewer than 1.5 seasons of weeks, gaps or duplicates.
    """
    if holdout_weeks < 1:
        raise ValueError(f"holdout_weeks must be at least 1 week, got {holdout_weeks}")
    series_by_product = _select(weekly, product_ids, season_length, holdout_weeks)
    rows = []
    for product_id, series in series_by_product.items():
        train = series.iloc[:-holdout_weeks]
        actual = series["units"].to_numpy()[-holdout_weeks:]
        model = _forecast_series(train, holdout_weeks, season_length)
        last_season = train["units"].to_numpy()[-season_length:]
        # np.resize repeats the last season when the holdout is longer than one.
        naive = np.resize(last_season, holdout_weeks)
        model_error = np.abs(model - actual).sum()
        naive_error = np.abs(naive - actual).sum()
        rows.append(
            {
                "product_id": product_id,
                "model_mae": model_error / holdout_weeks,
                "naive_mae": naive_error / holdout_weeks,
                "model_wape": reports.wape(model_error, actual.sum()),
                "naive_wape": reports.wape(naive_error, actual.sum()),
                "n_weeks": holdout_weeks,
            }
        )
    columns = list(reports.BACKTEST_COLUMNS)
    return pd.DataFrame(rows, columns=columns).astype({"n_weeks": "int64"})


def summarize_backtest(accuracy: pd.DataFrame) -> dict:
    """Pools per-product backtest accuracy into unit-weighted totals.

    Each product's holdout units are recovered as mae * n_weeks / wape (from either
    method's WAPE), so the pooled WAPE is total absolute error over total units, as
    if all products were one series.

    Args:
        accuracy: Output of backtest.

    Returns:
        A dict with model_wape and naive_wape (NaN if nothing sold), improvement
        (1 - model_wape / naive_wape, NaN when the baseline is perfect) and
        n_products.

    Raises:
        ValueError: If accuracy is empty or lacks a backtest column.
    """
    missing = [column for column in reports.BACKTEST_COLUMNS if column not in accuracy.columns]
    if missing:
        raise ValueError(f"accuracy lacks backtest columns: {missing}")
    if accuracy.empty:
        raise ValueError("accuracy has no products to summarize")
    return reports.pooled_backtest(accuracy)


def _check_columns(weekly: pd.DataFrame) -> None:
    missing = [column for column in _REQUIRED_COLUMNS if column not in weekly.columns]
    if missing:
        raise ValueError(f"weekly sales frame lacks columns: {missing}")


def _select(
    weekly: pd.DataFrame,
    product_ids: Sequence[str],
    season_length: int,
    holdout_weeks: int,
) -> dict[str, pd.DataFrame]:
    """Checks the request and returns each product's prepared series, in request order."""
    _check_columns(weekly)
    if isinstance(product_ids, str):
        raise ValueError(f"product_ids must be a sequence of ids, not the string {product_ids!r}")
    if season_length < 2:
        raise ValueError(f"season_length must be at least 2 weeks, got {season_length}")
    wanted = list(dict.fromkeys(product_ids))
    wanted_set = set(wanted)
    groups = {
        key: frame for key, frame in weekly.groupby("product_id", sort=False) if key in wanted_set
    }
    unknown = [product_id for product_id in wanted if product_id not in groups]
    if unknown:
        raise ValueError(f"unknown product ids (not in the weekly sales frame): {unknown}")
    return {
        product_id: _prepare(groups[product_id], product_id, season_length, holdout_weeks)
        for product_id in wanted
    }


def _prepare(
    frame: pd.DataFrame, product_id: str, season_length: int, holdout_weeks: int = 0
) -> pd.DataFrame:
    """Sorts one product's weeks, checks them, and adds the model inputs."""
    min_weeks = int(np.ceil(_MIN_HISTORY_SEASONS * season_length)) + holdout_weeks
    if len(frame) < min_weeks:
        holdout = f" plus the {holdout_weeks}-week holdout" if holdout_weeks else ""
        raise ValueError(
            f"product {product_id!r} has {len(frame)} weeks, too few for season length "
            f"{season_length}: at least {min_weeks} are needed (1.5 seasons to fit{holdout})"
        )
    series = frame.sort_values("week")
    t = ((series["week"] - _EPOCH) / pd.Timedelta(days=7)).to_numpy()
    if not np.allclose(np.diff(t), 1.0):
        raise ValueError(f"product {product_id!r} has gaps or duplicate weeks")
    return pd.DataFrame(
        {
            "week": series["week"].to_numpy(),
            "t": t,
            "units": series["units"].to_numpy(dtype=float),
            "log_ratio": np.log(series["avg_price"] / series["list_price"]).to_numpy(),
        }
    )


def _has_price_variation(log_ratio: pd.Series) -> bool:
    return float(np.ptp(log_ratio.to_numpy())) > 1e-6


def _fourier(t: np.ndarray, season_length: int) -> pd.DataFrame:
    """Sine and cosine terms of the seasonal cycle at week index t."""
    # Harmonics stop below the Nyquist frequency, where the sine column is all zero.
    harmonics = np.arange(1, min(_MAX_HARMONICS, (season_length - 1) // 2) + 1)
    angles = 2 * np.pi * np.outer(t, harmonics) / season_length
    columns = [f"sin{k}" for k in harmonics] + [f"cos{k}" for k in harmonics]
    return pd.DataFrame(np.hstack([np.sin(angles), np.cos(angles)]), columns=columns)


def _trend(t: np.ndarray, season_length: int) -> pd.DataFrame:
    """Piecewise-linear trend with a knot every season, counted back from the last week.

    The bends absorb slow level shifts (a product taking off or declining) that would
    otherwise be confused with price changes made around the same time. Knots a full
    season apart cannot mimic the seasonal pattern, so the Fourier terms keep it.
    """
    knots = t[-1] - np.arange(season_length, len(t), season_length)
    slope = (t - t[-1])[:, None]
    hinges = np.maximum(t[:, None] - knots[None, :], 0.0)
    columns = ["trend"] + [f"hinge{i}" for i in range(len(knots))]
    return pd.DataFrame(np.hstack([slope, hinges]) / season_length, columns=columns)


def _regress(series: pd.DataFrame, season_length: int, cov_type: str = "nonrobust"):
    """OLS of log1p(units) on a constant, trend, Fourier terms and the log price ratio.

    The price column is left out when the price never moved, as it then carries no
    price information and would only make the design singular.
    """
    import statsmodels.api as sm

    t = series["t"].to_numpy()
    design = pd.concat([_trend(t, season_length), _fourier(t, season_length)], axis=1)
    design.insert(0, "const", 1.0)
    if _has_price_variation(series["log_ratio"]):
        design["log_price_ratio"] = series["log_ratio"].to_numpy()
    model = sm.OLS(np.log1p(series["units"].to_numpy()), design)
    if cov_type == "HAC":
        return model.fit(cov_type="HAC", cov_kwds={"maxlags": _HAC_LAGS})
    return model.fit()


def _forecast_series(series: pd.DataFrame, horizon: int, season_length: int) -> np.ndarray:
    """Forecasts one product's units for the next `horizon` weeks at list price."""
    from statsmodels.tools.sm_exceptions import ConvergenceWarning
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    if not series["units"].any():
        return np.zeros(horizon)
    t = series["t"].to_numpy()
    seasonal = _fourier(t, season_length)
    fit = _regress(series, season_length)
    seasonal_coef = fit.params[seasonal.columns].to_numpy()
    price_coef = 0.0
    if "log_price_ratio" in fit.params:
        # Same economic bounds as estimate_elasticity, so a noisy product cannot get a
        # price response with the wrong sign.
        price_coef = float(np.clip(fit.params["log_price_ratio"], *ELASTICITY_BOUNDS))
    adjusted = (
        np.log1p(series["units"].to_numpy())
        - seasonal.to_numpy() @ seasonal_coef
        - price_coef * series["log_ratio"].to_numpy()
    )
    with warnings.catch_warnings():
        # Short noisy series often stop the smoothing-parameter search early; the
        # parameters it returns are still usable.
        warnings.simplefilter("ignore", ConvergenceWarning)
        # SLSQP rather than the default L-BFGS-B: under CPU contention L-BFGS-B's
        # multithreaded BLAS calls made fitting up to ten times slower.
        smoother = ExponentialSmoothing(
            adjusted, trend="add", damped_trend=True, initialization_method="estimated"
        ).fit(method="SLSQP")
    future_seasonal = _fourier(t[-1] + np.arange(1, horizon + 1), season_length)
    log_forecast = smoother.forecast(horizon) + future_seasonal.to_numpy() @ seasonal_coef
    return np.clip(np.expm1(log_forecast), 0.0, None)


def forecast_frame(
    weekly: pd.DataFrame, product_ids: Sequence[str], horizon: int, season_length: int = 52
) -> pd.DataFrame:
    """Forecasts joined with what the optimizer needs: elasticity, current price and cost.

    Returns:
        The ``Forecasts`` contract's columns, one row per product per future week.
    """
    ids = list(dict.fromkeys(product_ids))
    selected = weekly[weekly["product_id"].isin(ids)]
    forecasts = forecast_products(selected, ids, horizon, season_length)
    elasticities = estimate_elasticity(selected)[["product_id", "elasticity"]]
    products = selected.drop_duplicates("product_id")[
        ["product_id", "category", "list_price", "unit_cost"]
    ].rename(columns={"list_price": "current_price"})
    frame = forecasts.merge(products, on="product_id").merge(elasticities, on="product_id")
    columns = [
        "product_id",
        "category",
        "week",
        "step",
        "forecast_units",
        "elasticity",
        "current_price",
        "unit_cost",
    ]
    return frame[columns]
