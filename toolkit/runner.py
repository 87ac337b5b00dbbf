"""Run the pipeline for a resolved config through Ploomber, and describe what it produced."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from toolkit import config as config_mod
from toolkit import io, pipeline, schemas, storage

__all__ = ["BuildResult", "StepFailed", "build", "describe", "outputs", "summary"]


class StepFailed(RuntimeError):
    """A step failed; the message says which, why, and where its report and notebook are."""


@dataclass
class BuildResult:
    resolved: config_mod.ResolvedConfig
    ran: dict[str, bool] = field(default_factory=dict)
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)


def ploomber_env(resolved: config_mod.ResolvedConfig, configs=(), patches=()) -> dict:
    """The env values that make ``pipeline.yaml`` resolve to ``resolved``."""
    cfg = resolved.config
    return {
        "country": cfg.country,
        "period": cfg.period,
        "category": cfg.category or "all",
        # JSON keeps a ';' or ',' inside a patch value intact.
        "configs": json.dumps(list(configs)),
        "patches": json.dumps(list(patches)),
    }


def load_dag(resolved: config_mod.ResolvedConfig, configs=(), patches=()):
    dag = pipeline.load_dag(ploomber_env(resolved, configs, patches))
    timeout = resolved.config.execution.step_timeout_seconds
    for task in dag.values():
        # papermill has no execution timeout by default; a hung cell must fail the step.
        task.executor_params["execution_timeout"] = timeout
    return dag


def build(resolved: config_mod.ResolvedConfig, configs=(), patches=(), force=False) -> BuildResult:
    """Build every outdated step (all of them with ``force``).

    Raises:
        StepFailed: naming the failed step, its contract report if any, and its notebook.
    """
    from ploomber.exceptions import DAGBuildError

    dag = load_dag(resolved, configs, patches)
    try:
        report = dag.build(force=force)
    except DAGBuildError as exc:
        raise StepFailed(_explain_failure(dag, exc)) from None
    table = report.to_dict() if report else {"name": [], "Ran?": []}
    ran = {name: bool(flag) for name, flag in zip(table["name"], table["Ran?"], strict=True)}
    return BuildResult(resolved, ran, outputs(dag))


def outputs(dag) -> dict[str, dict[str, str]]:
    """Storage URL of every product, per step."""
    client = pipeline.storage_client()
    return {
        task.name: {key: client._remote_path(str(prod)) for key, prod in task.product.to_json_serializable().items()}
        if isinstance(task.product.to_json_serializable(), dict)
        else {"data": client._remote_path(str(task.product))}
        for task in dag.values()
    }


def _explain_failure(dag, exc) -> str:
    lines = []
    for task in dag.values():
        if task.exec_status.name != "Errored":
            continue
        folder = Path(str(task.product["nb"])).parent
        lines.append(f"step '{task.name}' failed")
        for report_file in sorted(folder.glob("*.validation.json")):
            report = json.loads(report_file.read_text())
            lines.append(str(io.ValidationReport(**report)))
            lines.append(f"report: {report_file}")
        lines.append(f"partially executed notebook: {task.product['nb']}")
    cause = str(exc).strip().splitlines()
    lines.append("cause: " + (cause[-1] if cause else type(exc).__name__))
    return "\n".join(lines)


def describe(result: BuildResult) -> str:
    cfg = result.resolved.config
    lines = [f"market {cfg.country}, period {cfg.period}, category {cfg.category or 'all'}"]
    for step, urls in result.outputs.items():
        state = "ran" if result.ran.get(step) else "up to date"
        lines.append(f"  {step} ({state})")
        lines += [f"    {key}: {url}" for key, url in urls.items()]
    return "\n".join(lines)


def summary(resolved: config_mod.ResolvedConfig, configs=(), patches=(), top: int = 10) -> str:
    """Top recommended changes, forecast error vs seasonal naive, and where outputs are."""
    from toolkit import forecasting

    dag = load_dag(resolved, configs, patches)
    urls = outputs(dag)
    plan = io.read(urls["optimize"]["data"], schemas.Plan)
    kpis = json.loads(storage.read_bytes(urls["optimize"]["kpis"]))
    accuracy = io.read(urls["forecast"]["accuracy"], schemas.ForecastAccuracy)
    backtest = forecasting.summarize_backtest(accuracy)
    changes = plan[plan["changed"]].head(top)
    cfg = resolved.config
    lines = [
        f"Recommendations for {cfg.country} {cfg.period} "
        f"({kpis['n_changes']} price changes; revenue {kpis['revenue_change_pct']:+.1f}%, "
        f"margin {kpis['margin_change_pct']:+.1f}%, volume {kpis['volume_change_pct']:+.1f}%)",
        "",
    ]
    if changes.empty:
        lines.append("  no price changes recommended under these constraints")
    else:
        table = pd.DataFrame(
            {
                "product": changes["product_id"],
                "category": changes["category"],
                "price": changes["current_price"].map("{:,.2f}".format),
                "new price": changes["new_price"].map("{:,.2f}".format),
                "change": (changes["price_change"] * 100).map("{:+.0f}%".format),
                "margin delta": (changes["expected_margin"] - changes["baseline_margin"]).map(
                    "{:+,.0f}".format
                ),
            }
        )
        lines += ["  " + row for row in table.to_string(index=False).splitlines()]
    lines += [
        "",
        f"Forecast backtest WAPE: model {backtest['model_wape']:.1%} vs seasonal naive "
        f"{backtest['naive_wape']:.1%} ({backtest['n_products']} products)",
        "",
        "Outputs:",
    ]
    for step, step_urls in urls.items():
        lines += [f"  {step}.{key}: {url}" for key, url in step_urls.items()]
    return "\n".join(lines)
