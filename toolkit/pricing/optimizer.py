"""Choose one price change per product by mixed-integer optimisation (scipy.optimize.milp)."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

__all__ = [
    "InfeasiblePlanError",
    "choose_price_changes",
    "evaluate_levels",
    "plan_kpis",
]

CANDIDATE_COLUMNS = [
    "product_id",
    "category",
    "current_price",
    "unit_cost",
    "baseline_units",
    "elasticity",
]
PLAN_COLUMNS = [
    "product_id",
    "category",
    "current_price",
    "new_price",
    "price_change",
    "unit_cost",
    "baseline_units",
    "expected_units",
    "baseline_revenue",
    "expected_revenue",
    "baseline_margin",
    "expected_margin",
    "markdown_cost",
    "changed",
]
OPTION_COLUMNS = [
    "product_id",
    "category",
    "price_change",
    "current_price",
    "new_price",
    "unit_cost",
    "baseline_units",
    "expected_units",
    "baseline_revenue",
    "expected_revenue",
    "baseline_margin",
    "expected_margin",
    "margin_rate",
    "markdown_cost",
    "d_revenue",
    "d_margin",
    "d_volume",
]
WEIGHT_KEYS = ("revenue", "margin", "volume")
CONSTRAINT_KEYS = ("price_levels", "max_discount", "min_margin", "markdown_budget", "max_changes")

# Comparisons of fractions such as -0.3 >= -0.30000000000000004 must not depend on float noise.
_TOL = 1e-12
# The budget row is tightened by this relative amount so that solver feasibility tolerances
# (~1e-7) can never let the rounded plan overspend the budget.
_BUDGET_SLACK = 1e-6
DEFAULT_TIME_LIMIT_S = 60.0


class InfeasiblePlanError(ValueError):
    """Raised when the constraints admit no price plan."""


def evaluate_levels(candidates: pd.DataFrame, price_levels: Sequence[float]) -> pd.DataFrame:
    """Expand candidates into the long table of (product, price level) options.

    The no-change level 0.0 is always included because every delta is measured against it.
    Options whose rounded price is not positive (only possible for tiny prices) are omitted.

    Args:
        candidates: One row per product with the columns ``product_id``, ``category``,
            ``current_price``, ``unit_cost``, ``baseline_units`` and ``elasticity``.
        price_levels: Fractional price changes, e.g. ``[-0.1, 0.0, 0.05]``; each must be > -1.

    Returns:
        One row per (product, level), products in input order and levels ascending, with
        ``price_change``, ``new_price``, ``expected_units``, baseline/expected revenue and
        margin, ``margin_rate`` (of the new price), ``markdown_cost`` (>= 0) and the deltas
        ``d_revenue``, ``d_margin``, ``d_volume`` versus no change.

    Raises:
        ValueError: If a column is missing or holds invalid values, or a level is invalid.
    """
    cands = _validate_candidates(candidates)
    levels = _validate_levels(price_levels)
    if cands.empty:
        return _empty_frame(OPTION_COLUMNS)

    n_levels = len(levels)
    opts = cands.loc[cands.index.repeat(n_levels)].reset_index(drop=True)
    opts["price_change"] = np.tile(levels, len(cands))
    # Python's round() (correctly rounded) rather than numpy's, so prices match the documented
    # formula round(current_price * (1 + level), 2) exactly, also on half-cent edge cases.
    raw = opts["current_price"] * (1.0 + opts["price_change"])
    opts["new_price"] = [round(v, 2) for v in raw.tolist()]
    opts = opts[opts["new_price"] > 0].reset_index(drop=True)
    # The no-change price is the current price itself, not its rounding.
    no_change = opts["price_change"] == 0.0
    opts.loc[no_change, "new_price"] = opts.loc[no_change, "current_price"]

    ratio = opts["new_price"] / opts["current_price"]
    opts["expected_units"] = opts["baseline_units"] * ratio ** opts["elasticity"]
    opts["baseline_revenue"] = opts["current_price"] * opts["baseline_units"]
    opts["expected_revenue"] = opts["new_price"] * opts["expected_units"]
    opts["baseline_margin"] = (opts["current_price"] - opts["unit_cost"]) * opts["baseline_units"]
    opts["expected_margin"] = (opts["new_price"] - opts["unit_cost"]) * opts["expected_units"]
    opts["margin_rate"] = (opts["new_price"] - opts["unit_cost"]) / opts["new_price"]
    discount = (opts["current_price"] - opts["new_price"]).clip(lower=0.0)
    opts["markdown_cost"] = discount * opts["expected_units"]
    opts["d_revenue"] = opts["expected_revenue"] - opts["baseline_revenue"]
    opts["d_margin"] = opts["expected_margin"] - opts["baseline_margin"]
    opts["d_volume"] = opts["expected_units"] - opts["baseline_units"]
    return opts[OPTION_COLUMNS]


def choose_price_changes(
    candidates: pd.DataFrame,
    weights: Mapping[str, float],
    constraints: Mapping[str, Any],
    *,
    time_limit: float = DEFAULT_TIME_LIMIT_S,
) -> pd.DataFrame:
    """Pick one price level per product, maximising a weighted objective under constraints.

    Binary variable x[p, l] selects level l for product p; exactly one level per product.
    The objective maximises ``sum x * (w_rev * d_revenue / R + w_mar * d_margin / M +
    w_vol * d_volume / V)`` where R, M, V are baseline totals over all candidates, so the
    weights are comparable. Markdown spend and the number of changed products are linear
    constraints. Disallowed levels (deeper than ``max_discount``, new margin rate below
    ``min_margin``, single-option markdown above the budget) are removed up front.

    Args:
        candidates: One row per product (see :func:`evaluate_levels`); ``product_id`` unique.
        weights: ``revenue``, ``margin``, ``volume`` in [0, 1], not all zero.
        constraints: ``price_levels`` (fractions; 0.0 is always allowed), ``max_discount``
            in [0, 1), ``min_margin`` (< 1; applies to changed products only),
            ``markdown_budget`` (>= 0 currency, ``math.inf`` for none) and ``max_changes``
            (int >= 0).
        time_limit: Solver time limit in seconds. If it is hit, the best plan found is
            returned with a ``RuntimeWarning`` and ``plan.attrs["solver_status"]``
            set to ``"time_limit"``.

    Returns:
        The plan: one row per candidate with columns :data:`PLAN_COLUMNS`, sorted by
        objective contribution (biggest first), ties by ``product_id``. ``plan.attrs``
        holds ``solver_status``, ``solver_message``, ``objective`` and ``mip_gap``.

    Raises:
        ValueError: If candidates, weights or constraints are invalid.
        InfeasiblePlanError: If the solver proves that no plan satisfies the constraints.
        RuntimeError: If the solver stops without any plan (time limit, numerical failure).
    """
    w = _validate_weights(weights)
    cons = _validate_constraints(constraints)
    if not (isinstance(time_limit, numbers.Real) and time_limit > 0):
        raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit!r}")

    # Sorting by product_id makes the model, and so any tie-breaking, independent of row order.
    cands = _validate_candidates(candidates)
    cands = cands.sort_values("product_id", kind="stable").reset_index(drop=True)
    if cands.empty:
        return _empty_frame(PLAN_COLUMNS)

    opts = evaluate_levels(cands, cons["price_levels"])
    opts["score"] = _scores(opts, w)
    is_change = opts["price_change"] != 0.0
    allowed = (
        (opts["price_change"] >= -cons["max_discount"] - _TOL)
        & (opts["margin_rate"] >= cons["min_margin"] - _TOL)
        & (opts["markdown_cost"] <= cons["markdown_budget"])
        # A change that does not improve the objective is dominated by "no change", which
        # spends no budget and uses no change slot; dropping it is exact and keeps the plan
        # free of pointless (tied) changes.
        & (opts["score"] > 0.0)
    )
    opts = opts[~is_change | allowed].copy()
    # Two levels can round to the same price; keep the smaller move so ties resolve stably.
    opts["_abs_change"] = opts["price_change"].abs()
    opts = (
        opts.sort_values(["product_id", "_abs_change", "price_change"], kind="stable")
        .drop_duplicates(["product_id", "new_price"])
        .sort_values(["product_id", "price_change"], kind="stable")
        .drop(columns="_abs_change")
        .reset_index(drop=True)
    )

    chosen, info = _solve(opts, cons, time_limit)
    plan = _build_plan(opts.loc[chosen])
    _check_plan(plan, cons)
    plan.attrs.update(info)
    return plan


def plan_kpis(plan: pd.DataFrame) -> dict[str, float | int]:
    """Summarise a plan from :func:`choose_price_changes`.

    Args:
        plan: A plan DataFrame.

    Returns:
        ``revenue_change``, ``margin_change``, ``volume_change`` (absolute), the matching
        ``*_pct`` values in percent of the baseline total (NaN when that total is zero),
        ``n_changes`` and ``markdown_spent``.

    Raises:
        ValueError: If a plan column is missing.
    """
    missing = [c for c in PLAN_COLUMNS if c not in plan.columns]
    if missing:
        raise ValueError(f"plan is missing columns {missing}")
    pairs = {
        "revenue": ("baseline_revenue", "expected_revenue"),
        "margin": ("baseline_margin", "expected_margin"),
        "volume": ("baseline_units", "expected_units"),
    }
    kpis: dict[str, float | int] = {}
    for name, (base_col, new_col) in pairs.items():
        base = float(plan[base_col].sum())
        change = float(plan[new_col].sum()) - base
        kpis[f"{name}_change"] = change
        # abs(): a negative baseline margin must not flip the sign of the percentage.
        kpis[f"{name}_change_pct"] = 100.0 * change / abs(base) if base != 0 else math.nan
    kpis["n_changes"] = int(plan["changed"].sum())
    kpis["markdown_spent"] = float(plan["markdown_cost"].sum())
    return kpis


def _scores(opts: pd.DataFrame, w: dict[str, float]) -> pd.Series:
    """Weighted, normalised objective contribution of each option."""
    baseline = opts[opts["price_change"] == 0.0]
    totals = {
        "revenue": baseline["baseline_revenue"].sum(),
        "margin": baseline["baseline_margin"].sum(),
        "volume": baseline["baseline_units"].sum(),
    }
    # abs() keeps the direction of a delta when total margin is negative; a zero total
    # (e.g. no forecast units at all) falls back to 1 since all its deltas are zero anyway.
    scale = {k: abs(v) if abs(v) > 0 else 1.0 for k, v in totals.items()}
    return (
        w["revenue"] * opts["d_revenue"] / scale["revenue"]
        + w["margin"] * opts["d_margin"] / scale["margin"]
        + w["volume"] * opts["d_volume"] / scale["volume"]
    )


def _solve(
    opts: pd.DataFrame, cons: dict[str, Any], time_limit: float
) -> tuple[np.ndarray, dict[str, Any]]:
    """Solve the MILP; return the index labels of the chosen options and solver info."""
    n_opts = len(opts)
    product_codes, products = pd.factorize(opts["product_id"], sort=True)
    is_change = (opts["price_change"] != 0.0).to_numpy()
    score = opts["score"].to_numpy()

    # Rescale so the best single option is worth 1: HiGHS's absolute gap tolerance (1e-6)
    # is then negligible however many products there are. The ranking is unchanged.
    best = score.max() if score.max() > 0 else 1.0
    c = -score / best

    one_per_product = sparse.csr_matrix(
        (np.ones(n_opts), (product_codes, np.arange(n_opts))), shape=(len(products), n_opts)
    )
    rows = [LinearConstraint(one_per_product, 1.0, 1.0)]
    rows.append(LinearConstraint(is_change.astype(float)[None, :], -np.inf, cons["max_changes"]))
    budget = cons["markdown_budget"]
    markdown = opts["markdown_cost"].to_numpy()
    if math.isfinite(budget) and budget > 0 and markdown.sum() > budget:
        # Normalised to a budget of 1 so the row is well scaled whatever the currency.
        rows.append(LinearConstraint(markdown[None, :] / budget, -np.inf, 1.0 - _BUDGET_SLACK))
    # With a zero budget every option with positive markdown was already removed.

    res = milp(
        c=c,
        integrality=np.ones(n_opts),
        bounds=Bounds(0.0, 1.0),
        constraints=rows,
        options={"time_limit": float(time_limit), "mip_rel_gap": 1e-9, "presolve": True},
    )
    if res.status == 2:
        raise InfeasiblePlanError(
            "No price plan satisfies the constraints "
            f"(max_changes={cons['max_changes']}, markdown_budget={budget}, "
            f"max_discount={cons['max_discount']}, min_margin={cons['min_margin']}): "
            f"{res.message}"
        )
    if res.x is None:
        raise RuntimeError(
            f"The price optimiser found no plan (solver status {res.status}: {res.message}). "
            f"If the time limit of {time_limit}s was hit, raise time_limit."
        )
    status = "optimal" if res.status == 0 else "time_limit" if res.status == 1 else "other"
    if status != "optimal":
        warnings.warn(
            f"Price optimiser stopped before proving optimality ({res.message}); returning "
            f"the best plan found, relative gap {res.mip_gap}.",
            RuntimeWarning,
            stacklevel=3,
        )

    # Take the largest x per product rather than rounding, so tiny solver noise (0.9999999)
    # can never produce zero or two choices for a product.
    order = np.lexsort((-res.x, product_codes))
    first = np.r_[True, product_codes[order][1:] != product_codes[order][:-1]]
    chosen = opts.index.to_numpy()[order[first]]
    info = {
        "solver_status": status,
        "solver_message": str(res.message),
        "objective": float(score[order[first]].sum()),
        "mip_gap": None if res.mip_gap is None else float(res.mip_gap),
    }
    return chosen, info


def _build_plan(chosen: pd.DataFrame) -> pd.DataFrame:
    """Turn the chosen options into the plan table, biggest contribution first."""
    plan = chosen.copy()
    plan["changed"] = plan["price_change"] != 0.0
    plan = plan.sort_values(["score", "product_id"], ascending=[False, True], kind="stable")
    return plan[PLAN_COLUMNS].reset_index(drop=True)


def _check_plan(plan: pd.DataFrame, cons: dict[str, Any]) -> None:
    """Guard against solver tolerances leaking into the plan; these should never fire."""
    n_changes = int(plan["changed"].sum())
    spent = float(plan["markdown_cost"].sum())
    if n_changes > cons["max_changes"]:
        raise RuntimeError(f"plan changes {n_changes} prices, above max_changes")
    if spent > cons["markdown_budget"]:
        raise RuntimeError(f"plan spends {spent} on markdowns, above markdown_budget")


def _validate_candidates(candidates: pd.DataFrame) -> pd.DataFrame:
    """Check candidate columns and values; return a clean copy with typed columns."""
    if not isinstance(candidates, pd.DataFrame):
        raise ValueError(f"candidates must be a pandas DataFrame, got {type(candidates).__name__}")
    missing = [c for c in CANDIDATE_COLUMNS if c not in candidates.columns]
    if missing:
        raise ValueError(f"candidates is missing required columns {missing}")
    cands = candidates[CANDIDATE_COLUMNS].reset_index(drop=True).copy()
    if cands["product_id"].isna().any():
        raise ValueError("candidates column 'product_id' must not contain missing values")
    cands["product_id"] = cands["product_id"].astype(str)
    duplicated = cands.loc[cands["product_id"].duplicated(), "product_id"].unique().tolist()
    if duplicated:
        raise ValueError(f"candidates column 'product_id' must be unique; repeated: {duplicated}")

    checks = {
        "current_price": (lambda s: s > 0, "> 0"),
        "unit_cost": (lambda s: s > 0, "> 0"),
        "baseline_units": (lambda s: s >= 0, ">= 0"),
        "elasticity": (lambda s: s < 0, "< 0"),
    }
    for col, (ok, expectation) in checks.items():
        try:
            values = pd.to_numeric(cands[col]).astype(float)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"candidates column '{col}' must be numeric: {exc}") from exc
        bad = ~(np.isfinite(values) & ok(values))
        if bad.any():
            examples = cands.loc[bad, "product_id"].head(5).tolist()
            raise ValueError(
                f"candidates column '{col}' must be finite and {expectation}; "
                f"{int(bad.sum())} row(s) fail, e.g. product_id {examples}"
            )
        cands[col] = values
    return cands


def _validate_levels(price_levels: Sequence[float]) -> np.ndarray:
    """Return sorted unique levels including 0.0; each must be a finite number > -1."""
    if isinstance(price_levels, str | bytes) or not isinstance(price_levels, Sequence | np.ndarray):
        raise ValueError(f"price_levels must be a list of fractions, got {price_levels!r}")
    levels = []
    for level in price_levels:
        if isinstance(level, bool) or not isinstance(level, numbers.Real):
            raise ValueError(f"price_levels must hold numbers, got {level!r}")
        if not (math.isfinite(level) and level > -1):
            raise ValueError(f"price_levels must be finite fractions > -1, got {level!r}")
        levels.append(float(level))
    return np.unique(np.array([*levels, 0.0]))


def _validate_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """Check the objective weights."""
    if not isinstance(weights, Mapping):
        raise ValueError(f"weights must be a mapping, got {type(weights).__name__}")
    missing = [k for k in WEIGHT_KEYS if k not in weights]
    unknown = sorted(set(weights) - set(WEIGHT_KEYS))
    if missing or unknown:
        raise ValueError(
            f"weights must have exactly the keys {list(WEIGHT_KEYS)}; "
            f"missing {missing}, unknown {unknown}"
        )
    w = {}
    for key in WEIGHT_KEYS:
        value = weights[key]
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"weights['{key}'] must be a number in [0, 1], got {value!r}")
        if not 0 <= value <= 1:
            raise ValueError(f"weights['{key}'] must be in [0, 1], got {value!r}")
        w[key] = float(value)
    if not any(w.values()):
        raise ValueError("weights must not all be zero: set at least one of revenue/margin/volume")
    return w


def _validate_constraints(constraints: Mapping[str, Any]) -> dict[str, Any]:
    """Check the business constraints and return them with normalised types."""
    if not isinstance(constraints, Mapping):
        raise ValueError(f"constraints must be a mapping, got {type(constraints).__name__}")
    missing = [k for k in CONSTRAINT_KEYS if k not in constraints]
    if missing:
        raise ValueError(f"constraints is missing required keys {missing}")
    unknown = sorted(set(constraints) - set(CONSTRAINT_KEYS))
    if unknown:
        raise ValueError(
            f"constraints has unknown keys {unknown}; allowed: {list(CONSTRAINT_KEYS)}"
        )

    def number(key: str) -> float:
        value = constraints[key]
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
            raise ValueError(f"constraints['{key}'] must be a number, got {value!r}")
        return float(value)

    max_discount = number("max_discount")
    if not 0 <= max_discount < 1:
        raise ValueError(f"constraints['max_discount'] must be in [0, 1), got {max_discount!r}")
    min_margin = number("min_margin")
    if not min_margin < 1:
        raise ValueError(f"constraints['min_margin'] must be a fraction < 1, got {min_margin!r}")
    budget = number("markdown_budget")
    if budget < 0:
        raise ValueError(f"constraints['markdown_budget'] must be >= 0, got {budget!r}")
    max_changes = constraints["max_changes"]
    if isinstance(max_changes, bool) or not isinstance(max_changes, numbers.Integral):
        raise ValueError(f"constraints['max_changes'] must be an integer, got {max_changes!r}")
    if max_changes < 0:
        raise ValueError(f"constraints['max_changes'] must be >= 0, got {max_changes!r}")
    try:
        levels = _validate_levels(constraints["price_levels"])
    except ValueError as exc:
        raise ValueError(f"constraints['price_levels'] is invalid: {exc}") from exc
    return {
        "price_levels": levels.tolist(),
        "max_discount": max_discount,
        "min_margin": min_margin,
        "markdown_budget": budget,
        "max_changes": int(max_changes),
    }


def _empty_frame(columns: list[str]) -> pd.DataFrame:
    """An empty frame with the given columns and sensible dtypes."""
    dtypes = {"product_id": "str", "category": "str", "changed": "bool"}
    return pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, "float64")) for c in columns})


def candidates_from_forecasts(forecasts: pd.DataFrame) -> pd.DataFrame:
    """One candidate per product: units over the whole horizon, elasticity, price and cost."""
    return (
        forecasts.groupby(["product_id", "category"], as_index=False)
        .agg(
            current_price=("current_price", "first"),
            unit_cost=("unit_cost", "first"),
            baseline_units=("forecast_units", "sum"),
            elasticity=("elasticity", "first"),
        )
        .sort_values("product_id")
        .reset_index(drop=True)
    )
