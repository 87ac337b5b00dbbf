"""Forecasting, elasticity and backtest on small synthetic weekly sales with known truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from toolkit.pricing import forecasting

FIRST_MONDAY = pd.Timestamp("2023-01-02")


def make_weekly(
    n_products: int = 20, n_weeks: int = 156, seed: int = 0
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Poisson weekly units with yearly seasonality, trend, promotions and price changes.

    Units follow base * season * trend * (avg_price / list_price) ** elasticity; every
    fourth product loses up to half its volume over its last 30 weeks.
    """
    rng = np.random.default_rng(seed)
    weeks = pd.date_range(FIRST_MONDAY, periods=n_weeks, freq="7D").astype("datetime64[ns]")
    t = np.arange(n_weeks)
    frames, elasticities = [], {}
    for i in range(n_products):
        product_id = f"P{i:03d}"
        amplitude, phase = rng.uniform(0.1, 0.5), rng.uniform(0, 2 * np.pi)
        season = amplitude * np.sin(2 * np.pi * t / 52 + phase)
        season += rng.uniform(0, 0.6) * np.exp(-0.5 * ((t % 52 - 50) / 1.5) ** 2)  # holidays
        log_trend = rng.uniform(-0.15, 0.15) * t / 52
        if i % 4 == 0:
            log_trend -= rng.uniform(0.3, 0.7) * np.clip((t - (n_weeks - 30)) / 30, 0, None)
        list_price = rng.uniform(2, 50)
        old_price = list_price * rng.uniform(0.85, 1.05)
        shelf_price = np.where(t < rng.integers(30, 120), old_price, list_price)
        promo_share = np.where(
            rng.random(n_weeks) < 0.15, rng.choice([3 / 7, 5 / 7, 1], n_weeks), 0
        )
        avg_price = shelf_price * (1 - rng.uniform(0.1, 0.3) * promo_share)
        elasticity = rng.uniform(-3, -0.8)
        mean_units = rng.uniform(20, 250) * np.exp(season + log_trend)
        units = rng.poisson(mean_units * (avg_price / list_price) ** elasticity).astype(float)
        elasticities[product_id] = elasticity
        frames.append(
            pd.DataFrame(
                {
                    "product_id": product_id,
                    "category": f"cat{i % 3}",
                    "week": weeks,
                    "units": units,
                    "revenue": units * avg_price,
                    "avg_price": avg_price,
                    "promo_share": promo_share.astype(float),
                    "list_price": list_price,
                    "unit_cost": 0.6 * list_price,
                }
            )
        )
    return pd.concat(frames, ignore_index=True), elasticities


@pytest.fixture(scope="module")
def synthetic() -> tuple[pd.DataFrame, dict[str, float]]:
    return make_weekly()


@pytest.fixture(scope="module")
def accuracy(synthetic) -> pd.DataFrame:
    weekly, truth = synthetic
    return forecasting.backtest(weekly, sorted(truth), holdout_weeks=12)


def one_product(weekly: pd.DataFrame, product_id: str, new_id: str) -> pd.DataFrame:
    return weekly[weekly["product_id"] == product_id].assign(product_id=new_id)


def test_forecast_rows_weeks_and_values(synthetic):
    weekly, _ = synthetic
    ids = ["P003", "P001", "P002"]

    forecasts = forecasting.forecast_products(weekly, ids, horizon=8)

    assert list(forecasts.columns) == ["product_id", "week", "step", "forecast_units"]
    assert len(forecasts) == 3 * 8
    assert list(forecasts["product_id"].unique()) == ids
    assert forecasts["week"].dtype == "datetime64[ns]"
    last_week = weekly["week"].max()
    expected_weeks = [last_week + pd.Timedelta(weeks=step) for step in range(1, 9)]
    for _, rows in forecasts.groupby("product_id"):
        assert list(rows["step"]) == list(range(1, 9))
        assert list(rows["week"]) == expected_weeks
    assert (forecasts["week"].dt.dayofweek == 0).all()
    assert np.isfinite(forecasts["forecast_units"]).all()
    assert (forecasts["forecast_units"] >= 0).all()


def test_forecast_is_deterministic(synthetic):
    weekly, _ = synthetic
    first = forecasting.forecast_products(weekly, ["P005", "P006"], horizon=6)
    second = forecasting.forecast_products(weekly, ["P005", "P006"], horizon=6)
    pd.testing.assert_frame_equal(first, second)


def test_forecast_assumes_list_price_not_a_recent_promotion(synthetic):
    weekly, truth = synthetic
    plain = one_product(weekly, "P007", "PLAIN")
    plain = plain.assign(avg_price=plain["list_price"], promo_share=0.0)
    # Same history, but the last four weeks were a 30% off promotion with the lift it brings.
    promo = plain.assign(product_id="PROMO")
    last4 = promo.index[-4:]
    promo.loc[last4, "avg_price"] *= 0.7
    promo.loc[last4, "promo_share"] = 1.0
    promo.loc[last4, "units"] *= 0.7 ** truth["P007"]

    forecasts = forecasting.forecast_products(pd.concat([plain, promo]), ["PLAIN", "PROMO"], 8)

    totals = forecasts.groupby("product_id")["forecast_units"].sum()
    assert totals["PROMO"] == pytest.approx(totals["PLAIN"], rel=0.15)


def test_forecast_carries_a_recent_decline_forward():
    weekly, _ = make_weekly(n_products=2, seed=0)
    weekly = weekly[weekly["product_id"] == "P001"]
    # Volume fell to 60% between 40 and 20 weeks ago and stayed there; the last 12 weeks
    # are held out. Seasonal naive would still expect last year's volume.
    level = np.ones(len(weekly))
    level[-40:-20] = np.linspace(1.0, 0.6, 20)
    level[-20:] = 0.6
    declining = weekly.assign(units=np.round(weekly["units"] * level))
    history, future = declining.iloc[:-12], declining.iloc[-12:]

    forecast = forecasting.forecast_products(history, ["P001"], horizon=12)["forecast_units"]

    same_weeks_last_year = declining["units"].iloc[-64:-52].sum()
    assert forecast.sum() < 0.8 * same_weeks_last_year
    assert forecast.sum() == pytest.approx(future["units"].sum(), rel=0.25)


def test_backtest_columns_and_values(accuracy, synthetic):
    _, truth = synthetic
    assert list(accuracy.columns) == [
        "product_id",
        "model_mae",
        "naive_mae",
        "model_wape",
        "naive_wape",
        "n_weeks",
    ]
    assert list(accuracy["product_id"]) == sorted(truth)
    assert (accuracy["n_weeks"] == 12).all()
    metrics = accuracy[["model_mae", "naive_mae", "model_wape", "naive_wape"]]
    assert (metrics >= 0).all().all()


def test_model_beats_seasonal_naive(accuracy):
    summary = forecasting.summarize_backtest(accuracy)

    assert summary["n_products"] == 20
    assert summary["model_wape"] < summary["naive_wape"]
    # Measured 0.15 vs 0.30 here (0.10-0.15 vs 0.20-0.30 over ten seeds): a clear margin.
    assert summary["improvement"] > 0.25


def test_summarize_backtest_weights_by_units():
    # Holdout units 100, 300 and 0 over 10 weeks; absolute errors below.
    model_error, naive_error, units = (
        np.array([10.0, 30.0, 5.0]),
        np.array([20.0, 90.0, 0.0]),
        np.array([100.0, 300.0, 0.0]),
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        accuracy = pd.DataFrame(
            {
                "product_id": ["A", "B", "C"],
                "model_mae": model_error / 10,
                "naive_mae": naive_error / 10,
                "model_wape": np.where(units > 0, model_error / units, np.nan),
                "naive_wape": np.where(units > 0, naive_error / units, np.nan),
                "n_weeks": 10,
            }
        )

    summary = forecasting.summarize_backtest(accuracy)

    assert summary["model_wape"] == pytest.approx(45 / 400)
    assert summary["naive_wape"] == pytest.approx(110 / 400)
    assert summary["improvement"] == pytest.approx(1 - 45 / 110)
    assert summary["n_products"] == 3


def test_elasticities_match_the_truth(synthetic):
    weekly, truth = synthetic

    estimates = forecasting.estimate_elasticity(weekly)

    assert list(estimates.columns) == ["product_id", "elasticity", "elasticity_se"]
    assert list(estimates["product_id"]) == sorted(truth)
    true = estimates["product_id"].map(truth)
    assert (estimates["elasticity"] < 0).all()
    assert estimates["elasticity"].between(*forecasting.ELASTICITY_BOUNDS).all()
    assert np.corrcoef(estimates["elasticity"], true)[0, 1] > 0.9
    assert (estimates["elasticity"] - true).abs().median() < 0.25
    assert ((estimates["elasticity"] - true).abs() < 0.75).all()
    assert (estimates["elasticity_se"] > 0).all()
    assert np.isfinite(estimates["elasticity_se"]).all()


def test_elasticity_without_price_changes_borrows_the_category_median(synthetic):
    weekly, _ = synthetic
    flat = one_product(weekly, "P004", "PFLAT")
    flat = flat.assign(avg_price=flat["list_price"], promo_share=0.0)

    estimates = forecasting.estimate_elasticity(pd.concat([weekly, flat])).set_index("product_id")

    peers = weekly.loc[weekly["category"] == flat["category"].iloc[0], "product_id"].unique()
    assert estimates.loc["PFLAT", "elasticity"] == pytest.approx(
        estimates.loc[peers, "elasticity"].median()
    )
    assert estimates.loc["PFLAT", "elasticity_se"] == np.inf


def test_all_zero_series_forecasts_zeros(synthetic):
    weekly, _ = synthetic
    zero = one_product(weekly, "P001", "PZERO").assign(units=0.0, revenue=0.0)
    frame = pd.concat([weekly, zero])

    forecasts = forecasting.forecast_products(frame, ["PZERO"], horizon=5)
    accuracy = forecasting.backtest(frame, ["PZERO", "P001"], holdout_weeks=12)

    assert (forecasts["forecast_units"] == 0).all()
    zero_row = accuracy.set_index("product_id").loc["PZERO"]
    assert zero_row["model_mae"] == 0
    assert np.isnan(zero_row["model_wape"])
    assert forecasting.summarize_backtest(accuracy)["n_products"] == 2


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda w: forecasting.forecast_products(w, ["P001", "NOPE"], 4), "unknown.*'NOPE'"),
        (lambda w: forecasting.forecast_products(w, ["P001"], 0), "horizon must be at least 1"),
        (lambda w: forecasting.forecast_products(w, "P001", 4), "sequence of ids"),
        (lambda w: forecasting.backtest(w, ["P001"], 0), "holdout_weeks must be at least 1"),
        (
            lambda w: forecasting.backtest(w, ["P001"], 100),
            "'P001' has 156 weeks, too few for season length 52",
        ),
        (
            lambda w: forecasting.forecast_products(w[w["week"] > "2024-10-28"], ["P001"], 4),
            "'P001' has 60 weeks, too few for season length 52",
        ),
        (
            lambda w: forecasting.forecast_products(w.drop(index=w.index[5]), ["P000"], 4),
            "'P000' has gaps",
        ),
        (lambda w: forecasting.estimate_elasticity(w.drop(columns="avg_price")), "avg_price"),
    ],
)
def test_bad_requests_raise_clear_errors(synthetic, call, message):
    weekly, _ = synthetic
    with pytest.raises(ValueError, match=message):
        call(weekly)


def test_summarize_backtest_rejects_empty_accuracy(accuracy):
    with pytest.raises(ValueError, match="no products"):
        forecasting.summarize_backtest(accuracy.iloc[:0])
