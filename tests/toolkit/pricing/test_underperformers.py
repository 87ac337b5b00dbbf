"""identify_underperformers' scoring on a small sample."""

from __future__ import annotations

import pytest

from toolkit.data import io, schemas
from toolkit.pricing import demo_data, transform, underperformers


@pytest.fixture(scope="module")
def weekly():
    catalog = demo_data.make_catalog("US", n_products=60)
    sales = demo_data.make_sales("US", catalog)
    return transform.weekly_sales(sales, catalog, "2026-12", 156, 26)  # data through Nov 29


def test_flags_the_products_that_really_decline(weekly):
    flagged = underperformers.score_products(weekly, 8, 26, 0.85, 1.0, 60)
    io.validate(flagged, schemas.Underperformers)
    declining = demo_data.declining_products("US", n_products=60)
    top = set(flagged["product_id"].head(len(declining) * 2))
    assert len(declining & top) >= len(declining) - 1
    assert flagged["score"].is_monotonic_decreasing


def test_thresholds_and_limit_come_from_config(weekly):
    loose = underperformers.score_products(weekly, 8, 26, 1.0, 2.0, 60)
    strict = underperformers.score_products(weekly, 8, 26, 0.6, 1.0, 60)
    assert len(strict) < len(loose)
    assert len(underperformers.score_products(weekly, 8, 26, 1.0, 2.0, 5)) == 5
    assert (strict["own_ratio"] < 0.6).all()


def test_too_short_history_is_a_clear_error(weekly):
    short = weekly[
        weekly["week"] >= weekly["week"].max() - __import__("pandas").Timedelta(weeks=20)
    ]
    with pytest.raises(ValueError, match="need at least 34 weeks"):
        underperformers.score_products(short, 8, 26, 0.85, 1.0, 60)
