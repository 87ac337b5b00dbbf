"""Find products selling below their own seasonal baseline and below their category peers."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["score_products"]

_EPS = 1e-9


def score_products(
    weekly: pd.DataFrame,
    recent_weeks: int,
    baseline_weeks: int,
    decline_threshold: float,
    peer_threshold: float,
    max_products: int,
    season_length: int = 52,
) -> pd.DataFrame:
    """Score every product and keep the clear underperformers, worst first.

    ``own_ratio`` compares the recent window with the trailing baseline before it, divided
    by the same ratio one season earlier so a normal seasonal dip is not a decline.
    ``peer_ratio`` compares that with the median of the product's category, so a market-wide
    slump does not flag everything.
    """
    weekly = weekly.sort_values(["product_id", "week"])
    weeks = np.sort(weekly["week"].unique())
    needed = recent_weeks + baseline_weeks
    if len(weeks) < needed:
        raise ValueError(
            f"need at least {needed} weeks (recent_weeks + baseline_weeks), have {len(weeks)}"
        )
    units = weekly.pivot(index="week", columns="product_id", values="units").sort_index()

    def window_ratio(end: int) -> pd.Series | None:
        if end - needed < 0:
            return None
        recent = units.iloc[end - recent_weeks : end].mean()
        baseline = units.iloc[end - needed : end - recent_weeks].mean()
        return (recent + _EPS) / (baseline + _EPS), recent, baseline

    ratio, recent, baseline = window_ratio(len(units))
    last_year = window_ratio(len(units) - season_length)
    own = ratio / last_year[0] if last_year is not None else ratio

    categories = weekly.drop_duplicates("product_id").set_index("product_id")["category"]
    scores = pd.DataFrame(
        {
            "product_id": own.index,
            "category": categories.reindex(own.index).to_numpy(),
            "recent_units": recent.to_numpy(),
            "baseline_units": baseline.to_numpy(),
            "own_ratio": own.to_numpy(),
        }
    )
    peer_median = scores.groupby("category")["own_ratio"].transform("median")
    scores["peer_ratio"] = scores["own_ratio"] / peer_median
    scores["score"] = (1 - scores["own_ratio"]) + (1 - scores["peer_ratio"])
    flagged = scores[
        (scores["own_ratio"] < decline_threshold) & (scores["peer_ratio"] < peer_threshold)
    ]
    flagged = flagged.sort_values(["score", "product_id"], ascending=[False, True])
    return flagged.head(max_products).reset_index(drop=True)
