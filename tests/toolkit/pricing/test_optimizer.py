"""Tests for toolkit.pricing.optimizer: constraints, optimality, weight monotonicity, validation."""

import itertools
import math
import warnings

import numpy as np
import pandas as pd
import pytest

from toolkit.pricing import optimizer
from toolkit.pricing.optimizer import (
    InfeasiblePlanError,
    choose_price_changes,
    evaluate_levels,
    plan_kpis,
)

LEVELS = [-0.3, -0.2, -0.1, -0.05, 0.0, 0.05, 0.1]
BALANCED = {"revenue": 0.4, "margin": 0.5, "volume": 0.1}


def make_candidates(n: int = 30, seed: int = 7) -> pd.DataFrame:
    """Seeded products with a mix of elastic/inelastic demand and thin/fat margins."""
    rng = np.random.default_rng(seed)
    price = rng.uniform(2.0, 40.0, n).round(2)
    return pd.DataFrame(
        {
            "product_id": [f"P{i:03d}" for i in range(n)],
            "category": rng.choice(["dairy", "bakery", "snacks"], n),
            "current_price": price,
            "unit_cost": (price * rng.uniform(0.45, 0.9, n)).round(2),
            "baseline_units": rng.uniform(20.0, 400.0, n).round(1),
            "elasticity": rng.uniform(-3.5, -0.4, n),
        }
    )


def make_constraints(**overrides) -> dict:
    """Constraints that bind on make_candidates() (checked in test_constraints_bind)."""
    constraints = {
        "price_levels": LEVELS,
        "max_discount": 0.2,
        "min_margin": 0.15,
        "markdown_budget": 400.0,
        "max_changes": 8,
    }
    constraints.update(overrides)
    return constraints


def one_product(price=10.0, cost=6.0, units=100.0, elasticity=-2.0, pid="A") -> dict:
    return {
        "product_id": pid,
        "category": "c",
        "current_price": price,
        "unit_cost": cost,
        "baseline_units": units,
        "elasticity": elasticity,
    }


def totals(plan: pd.DataFrame) -> dict:
    return {
        "revenue": plan["expected_revenue"].sum(),
        "margin": plan["expected_margin"].sum(),
        "units": plan["expected_units"].sum(),
    }


# --- independent re-implementation of the model, used to check the optimiser -------------


def option_values(row, level: float) -> dict:
    """Units, revenue, margin and markdown of one product at one level, from the spec."""
    new_price = row.current_price if level == 0 else round(row.current_price * (1 + level), 2)
    units = row.baseline_units * (new_price / row.current_price) ** row.elasticity
    return {
        "level": level,
        "new_price": new_price,
        "units": units,
        "revenue": new_price * units,
        "margin": (new_price - row.unit_cost) * units,
        "markdown": max(row.current_price - new_price, 0.0) * units,
    }


def spec_objective(candidates: pd.DataFrame, weights: dict, rows: list[dict]) -> float:
    """Normalised weighted objective of a set of chosen options (one dict per product)."""
    base_units = candidates["baseline_units"]
    scale_r = (candidates["current_price"] * base_units).sum()
    scale_m = abs(((candidates["current_price"] - candidates["unit_cost"]) * base_units).sum())
    scale_v = base_units.sum()
    d_r = sum(r["revenue"] for r in rows) - scale_r
    d_m = (
        sum(r["margin"] for r in rows)
        - ((candidates["current_price"] - candidates["unit_cost"]) * base_units).sum()
    )
    d_v = sum(r["units"] for r in rows) - scale_v
    return (
        weights["revenue"] * d_r / scale_r
        + weights["margin"] * d_m / scale_m
        + (weights["volume"] * d_v / scale_v)
    )


def plan_objective(candidates: pd.DataFrame, weights: dict, plan: pd.DataFrame) -> float:
    rows = [
        {"revenue": r.expected_revenue, "margin": r.expected_margin, "units": r.expected_units}
        for r in plan.itertuples()
    ]
    return spec_objective(candidates, weights, rows)


def brute_force_best(candidates: pd.DataFrame, weights: dict, constraints: dict) -> float:
    """Best objective over every combination of allowed levels."""
    per_product = []
    for row in candidates.itertuples():
        options = []
        for level in sorted(set(constraints["price_levels"]) | {0.0}):
            opt = option_values(row, level)
            if level != 0:
                if level < -constraints["max_discount"]:
                    continue
                if (opt["new_price"] - row.unit_cost) / opt["new_price"] < constraints[
                    "min_margin"
                ]:
                    continue
            options.append(opt)
        per_product.append(options)
    best = -math.inf
    for combo in itertools.product(*per_product):
        n_changes = sum(opt["level"] != 0 for opt in combo)
        spent = sum(opt["markdown"] for opt in combo)
        if n_changes <= constraints["max_changes"] and spent <= constraints["markdown_budget"]:
            best = max(best, spec_objective(candidates, weights, list(combo)))
    return best


# --- plan shape and constraints -------------------------------------------------------------


def test_plan_has_one_row_per_product_and_the_documented_columns():
    candidates = make_candidates()
    plan = choose_price_changes(candidates, BALANCED, make_constraints())

    assert list(plan.columns) == optimizer.PLAN_COLUMNS
    assert sorted(plan["product_id"]) == sorted(candidates["product_id"])
    assert plan["changed"].dtype == bool
    assert plan.attrs["solver_status"] == "optimal"


@pytest.mark.parametrize(
    "weights",
    [
        BALANCED,
        {"revenue": 1.0, "margin": 0.0, "volume": 0.0},
        {"revenue": 0.0, "margin": 1.0, "volume": 0.0},
        {"revenue": 0.0, "margin": 0.0, "volume": 1.0},
    ],
)
def test_constraints_are_respected(weights):
    candidates = make_candidates()
    constraints = make_constraints()
    plan = choose_price_changes(candidates, weights, constraints)
    changed = plan[plan["changed"]]
    unchanged = plan[~plan["changed"]]

    assert set(plan["price_change"]) <= set(LEVELS)
    assert (plan["price_change"] >= -constraints["max_discount"] - 1e-12).all()
    margin_rate = (changed["new_price"] - changed["unit_cost"]) / changed["new_price"]
    assert (margin_rate >= constraints["min_margin"] - 1e-12).all()
    assert plan["markdown_cost"].sum() <= constraints["markdown_budget"]
    assert len(changed) <= constraints["max_changes"]
    assert (plan["markdown_cost"] >= 0).all()
    assert (unchanged["new_price"] == unchanged["current_price"]).all()
    assert (unchanged["markdown_cost"] == 0).all()
    assert (changed["price_change"] != 0).all()


def test_constraints_bind_on_the_test_data():
    # Guards the test above: without the limits the optimiser would break them.
    candidates = make_candidates()
    loose = make_constraints(markdown_budget=math.inf, max_changes=len(candidates))
    plan = choose_price_changes(candidates, BALANCED, loose)
    assert plan["markdown_cost"].sum() > make_constraints()["markdown_budget"]
    assert plan["changed"].sum() > make_constraints()["max_changes"]


def test_min_margin_only_applies_to_changed_products():
    # Current margin rate 5% is below min_margin 15%: no change must still be possible.
    candidates = pd.DataFrame([one_product(price=10.0, cost=9.5), one_product(pid="B")])
    plan = choose_price_changes(candidates, BALANCED, make_constraints())
    thin = plan.set_index("product_id").loc["A"]
    if thin["changed"]:
        assert (thin["new_price"] - thin["unit_cost"]) / thin["new_price"] >= 0.15
    assert len(plan) == 2


def test_max_changes_zero_changes_nothing():
    candidates = make_candidates()
    plan = choose_price_changes(candidates, BALANCED, make_constraints(max_changes=0))
    assert not plan["changed"].any()
    assert (plan["new_price"] == plan["current_price"]).all()
    assert (plan["expected_units"] == plan["baseline_units"]).all()
    assert plan_kpis(plan)["revenue_change"] == 0


def test_zero_budget_allows_no_discounts():
    candidates = make_candidates()
    weights = {"revenue": 0.2, "margin": 0.0, "volume": 1.0}  # weights that love discounts
    plan = choose_price_changes(candidates, weights, make_constraints(markdown_budget=0.0))
    assert (plan["price_change"] >= 0).all()
    assert plan["markdown_cost"].sum() == 0
    # Price rises are still allowed when they help.
    margin_plan = choose_price_changes(
        candidates, {"revenue": 0, "margin": 1, "volume": 0}, make_constraints(markdown_budget=0.0)
    )
    assert (margin_plan["price_change"] > 0).any()


def test_infinite_budget_means_no_budget_limit():
    candidates = make_candidates()
    plan = choose_price_changes(
        candidates, BALANCED, make_constraints(markdown_budget=math.inf, max_changes=30)
    )
    assert plan["changed"].any()


# --- optimality --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize(
    "weights",
    [
        BALANCED,
        {"revenue": 1.0, "margin": 0.0, "volume": 0.0},
        {"revenue": 0.0, "margin": 0.3, "volume": 1.0},
    ],
)
def test_solution_matches_brute_force(seed, weights):
    candidates = make_candidates(n=6, seed=seed)
    constraints = make_constraints(
        price_levels=[-0.25, -0.15, -0.05, 0.0, 0.05, 0.1],
        max_discount=0.2,
        min_margin=0.1,
        markdown_budget=60.0,
        max_changes=3,
    )
    plan = choose_price_changes(candidates, weights, constraints)
    best = brute_force_best(candidates, weights, constraints)

    assert plan_objective(candidates, weights, plan) == pytest.approx(best, rel=1e-9, abs=1e-12)
    assert plan.attrs["objective"] == pytest.approx(best, rel=1e-9, abs=1e-12)


# --- weight monotonicity -----------------------------------------------------------------


def sweep(candidates, constraints, key, others, values=(0.0, 0.25, 0.5, 0.75, 1.0)):
    """Plan totals while one weight rises and the others stay fixed."""
    results = []
    for value in values:
        weights = {**others, key: value}
        results.append(totals(choose_price_changes(candidates, weights, constraints)))
    return results


@pytest.mark.parametrize(
    "key, total, others",
    [
        ("margin", "margin", {"revenue": 0.6, "volume": 0.3}),
        ("margin", "margin", {"revenue": 0.0, "volume": 1.0}),
        ("revenue", "revenue", {"margin": 0.6, "volume": 0.0}),
        ("revenue", "revenue", {"margin": 0.2, "volume": 0.7}),
        ("volume", "units", {"revenue": 0.3, "margin": 0.6}),
        ("volume", "units", {"revenue": 0.0, "margin": 1.0}),
    ],
)
def test_raising_a_weight_never_lowers_its_total(key, total, others):
    candidates = make_candidates(seed=11)
    results = sweep(candidates, make_constraints(), key, others)
    values = [r[total] for r in results]
    for before, after in itertools.pairwise(values):
        assert after >= before - 1e-9 * abs(before)
    assert values[-1] > values[0]  # the seeded data is rich enough for a real trade-off


def test_margin_weight_designed_case():
    # Elastic, thin-margin product: a 10% cut gains 23% revenue but loses 31% margin, a 10%
    # rise loses 17% revenue but gains 13% margin. Revenue alone picks the cut; a full margin
    # weight (revenue weight fixed at 0.2) flips the choice to the rise.
    candidates = pd.DataFrame([one_product(price=10.0, cost=8.0, elasticity=-3.0)])
    constraints = make_constraints(
        price_levels=[-0.1, 0.0, 0.1], min_margin=0.0, markdown_budget=math.inf
    )
    low = choose_price_changes(candidates, {"revenue": 0.2, "margin": 0, "volume": 0}, constraints)
    high = choose_price_changes(candidates, {"revenue": 0.2, "margin": 1, "volume": 0}, constraints)
    assert low["price_change"].item() == -0.1
    assert high["price_change"].item() == 0.1
    assert totals(high)["margin"] > totals(low)["margin"]


def test_revenue_weight_designed_case():
    # Inelastic product: a 10% rise gains 4.9% revenue and loses 4.7% units, a 10% cut gains
    # 5.4% units and loses 5.1% revenue. Volume (weight 0.5) alone picks the cut; adding a
    # full revenue weight flips the choice to the rise.
    candidates = pd.DataFrame([one_product(price=10.0, cost=3.0, elasticity=-0.5)])
    constraints = make_constraints(
        price_levels=[-0.1, 0.0, 0.1], min_margin=0.0, markdown_budget=math.inf
    )
    low = choose_price_changes(candidates, {"revenue": 0, "margin": 0, "volume": 0.5}, constraints)
    high = choose_price_changes(candidates, {"revenue": 1, "margin": 0, "volume": 0.5}, constraints)
    assert low["price_change"].item() == -0.1
    assert high["price_change"].item() == 0.1
    assert totals(high)["revenue"] > totals(low)["revenue"]


def test_volume_weight_designed_case():
    # A 10% rise gains 8% margin and loses 13% units, a 10% cut loses 12% margin and gains
    # 17% units. Margin alone picks the rise; adding a full volume weight flips to the cut.
    candidates = pd.DataFrame([one_product(price=10.0, cost=6.0, elasticity=-1.5)])
    constraints = make_constraints(
        price_levels=[-0.1, 0.0, 0.1], min_margin=0.0, markdown_budget=math.inf
    )
    low = choose_price_changes(candidates, {"revenue": 0, "margin": 1, "volume": 0}, constraints)
    high = choose_price_changes(candidates, {"revenue": 0, "margin": 1, "volume": 1}, constraints)
    assert low["price_change"].item() == 0.1
    assert high["price_change"].item() == -0.1
    assert totals(high)["units"] > totals(low)["units"]


# --- ordering, determinism, empty input ---------------------------------------------------


def test_plan_is_sorted_by_contribution_then_product_id():
    candidates = make_candidates()
    plan = choose_price_changes(candidates, BALANCED, make_constraints())
    n_changed = int(plan["changed"].sum())
    assert n_changed > 0
    # Changed rows have a positive contribution, so they come before the unchanged ones.
    assert plan["changed"].iloc[:n_changed].all()
    unchanged_ids = plan["product_id"].iloc[n_changed:].tolist()
    assert unchanged_ids == sorted(unchanged_ids)


def test_is_deterministic_and_independent_of_row_order():
    candidates = make_candidates()
    first = choose_price_changes(candidates, BALANCED, make_constraints())
    second = choose_price_changes(candidates, BALANCED, make_constraints())
    shuffled = candidates.sample(frac=1.0, random_state=3)
    third = choose_price_changes(shuffled, BALANCED, make_constraints())
    pd.testing.assert_frame_equal(first, second)
    pd.testing.assert_frame_equal(first, third)


def test_empty_candidates_give_empty_plan():
    empty = make_candidates().iloc[0:0]
    plan = choose_price_changes(empty, BALANCED, make_constraints())
    assert plan.empty
    assert list(plan.columns) == optimizer.PLAN_COLUMNS
    kpis = plan_kpis(plan)
    assert kpis["n_changes"] == 0
    assert kpis["markdown_spent"] == 0
    assert math.isnan(kpis["revenue_change_pct"])


# --- evaluate_levels and KPIs ------------------------------------------------------------


def test_evaluate_levels_follows_the_model_and_adds_no_change():
    candidates = make_candidates(n=4)
    options = evaluate_levels(candidates, [-0.1, 0.05])
    assert len(options) == 4 * 3
    assert sorted(options["price_change"].unique()) == [-0.1, 0.0, 0.05]

    for row in options.itertuples():
        product = candidates.set_index("product_id").loc[row.product_id]
        expected_price = round(product.current_price * (1 + row.price_change), 2)
        assert row.new_price == pytest.approx(expected_price)
        units = product.baseline_units * (row.new_price / product.current_price) ** (
            product.elasticity
        )
        assert row.expected_units == pytest.approx(units)
        assert row.expected_margin == pytest.approx((row.new_price - product.unit_cost) * units)
        assert row.markdown_cost == pytest.approx(
            max(product.current_price - row.new_price, 0) * units
        )

    no_change = options[options["price_change"] == 0.0]
    assert (no_change[["d_revenue", "d_margin", "d_volume", "markdown_cost"]] == 0).all().all()


def test_plan_kpis_are_consistent_with_the_plan():
    candidates = make_candidates()
    plan = choose_price_changes(candidates, BALANCED, make_constraints())
    kpis = plan_kpis(plan)
    base_margin = plan["baseline_margin"].sum()
    assert kpis["margin_change"] == pytest.approx(plan["expected_margin"].sum() - base_margin)
    assert kpis["margin_change_pct"] == pytest.approx(100 * kpis["margin_change"] / base_margin)
    assert kpis["volume_change"] == pytest.approx(
        plan["expected_units"].sum() - plan["baseline_units"].sum()
    )
    assert kpis["n_changes"] == plan["changed"].sum()
    assert kpis["markdown_spent"] == pytest.approx(plan["markdown_cost"].sum())
    assert set(kpis) == {
        "revenue_change",
        "margin_change",
        "volume_change",
        "revenue_change_pct",
        "margin_change_pct",
        "volume_change_pct",
        "n_changes",
        "markdown_spent",
    }


# --- validation and solver failures ------------------------------------------------------


@pytest.mark.parametrize(
    "weights, match",
    [
        ({"revenue": 0, "margin": 0, "volume": 0}, "all be zero"),
        ({"revenue": 1, "margin": 0}, r"missing \['volume'\]"),
        ({"revenue": 1.5, "margin": 0, "volume": 0}, r"weights\['revenue'\] must be in \[0, 1\]"),
        ({"revenue": -0.1, "margin": 1, "volume": 0}, r"weights\['revenue'\]"),
        ({"revenue": "high", "margin": 0, "volume": 0}, r"weights\['revenue'\] must be a number"),
        ({"revenue": 1, "margin": 0, "volume": 0, "profit": 1}, r"unknown \['profit'\]"),
    ],
)
def test_invalid_weights_are_rejected(weights, match):
    with pytest.raises(ValueError, match=match):
        choose_price_changes(make_candidates(), weights, make_constraints())


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"max_discount": 1.0}, r"max_discount'\] must be in \[0, 1\)"),
        ({"max_discount": -0.1}, "max_discount"),
        ({"min_margin": 1.0}, "min_margin"),
        ({"markdown_budget": -5.0}, r"markdown_budget'\] must be >= 0"),
        ({"markdown_budget": float("nan")}, "markdown_budget"),
        ({"max_changes": -1}, r"max_changes'\] must be >= 0"),
        ({"max_changes": 2.5}, r"max_changes'\] must be an integer"),
        ({"price_levels": [-1.0, 0.0]}, "price_levels"),
        ({"price_levels": "0.1"}, "price_levels"),
        ({"max_chnages": 3}, r"unknown keys \['max_chnages'\]"),
    ],
)
def test_invalid_constraints_are_rejected(overrides, match):
    with pytest.raises(ValueError, match=match):
        choose_price_changes(make_candidates(), BALANCED, make_constraints(**overrides))


def test_missing_constraint_key_is_named():
    constraints = make_constraints()
    del constraints["markdown_budget"]
    with pytest.raises(ValueError, match=r"missing required keys \['markdown_budget'\]"):
        choose_price_changes(make_candidates(), BALANCED, constraints)


@pytest.mark.parametrize(
    "column, value, match",
    [
        ("baseline_units", -1.0, r"'baseline_units' must be finite and >= 0"),
        ("elasticity", 0.5, r"'elasticity' must be finite and < 0"),
        ("current_price", 0.0, r"'current_price' must be finite and > 0"),
        ("unit_cost", np.nan, "'unit_cost'"),
        ("current_price", "cheap", r"'current_price' must be numeric"),
    ],
)
def test_invalid_candidate_values_are_rejected(column, value, match):
    candidates = make_candidates().astype({column: object})
    candidates.loc[3, column] = value
    with pytest.raises(ValueError, match=match):
        choose_price_changes(candidates, BALANCED, make_constraints())


def test_missing_column_and_duplicate_ids_are_rejected():
    with pytest.raises(ValueError, match=r"missing required columns \['elasticity'\]"):
        choose_price_changes(
            make_candidates().drop(columns="elasticity"), BALANCED, make_constraints()
        )
    duplicated = make_candidates()
    duplicated.loc[1, "product_id"] = duplicated.loc[0, "product_id"]
    with pytest.raises(ValueError, match="must be unique"):
        choose_price_changes(duplicated, BALANCED, make_constraints())


def fake_milp(status, keep_x, message):
    """A milp stand-in that solves for real, then reports the given status."""
    real = optimizer.milp

    def run(*args, **kwargs):
        res = real(*args, **kwargs)
        res.status, res.message = status, message
        if not keep_x:
            res.x = None
        return res

    return run


def test_solver_infeasible_status_raises_readable_error(monkeypatch):
    monkeypatch.setattr(optimizer, "milp", fake_milp(2, False, "The problem is infeasible."))
    with pytest.raises(InfeasiblePlanError, match="No price plan satisfies the constraints"):
        choose_price_changes(make_candidates(), BALANCED, make_constraints())
    assert issubclass(InfeasiblePlanError, ValueError)


def test_time_limit_without_solution_raises(monkeypatch):
    monkeypatch.setattr(optimizer, "milp", fake_milp(1, False, "Time limit reached."))
    with pytest.raises(RuntimeError, match="raise time_limit"):
        choose_price_changes(make_candidates(), BALANCED, make_constraints())


def test_time_limit_with_solution_warns_and_flags_the_plan(monkeypatch):
    monkeypatch.setattr(optimizer, "milp", fake_milp(1, True, "Time limit reached."))
    with pytest.warns(RuntimeWarning, match="before proving optimality"):
        plan = choose_price_changes(make_candidates(), BALANCED, make_constraints())
    assert plan.attrs["solver_status"] == "time_limit"


def test_optimal_solve_emits_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        choose_price_changes(make_candidates(), BALANCED, make_constraints(), time_limit=30)
