"""Runs: record, cache lookup, execution, heartbeat, cancel and resume of one pipeline run.

``toolkit run`` lands here. The DAG comes from the same ``pipeline.yaml`` as ``ploomber
build``; the effective config is frozen as ``runs/<id>/config.yaml`` so every step,
on any machine and on resume, sees exactly the values the run started with.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from toolkit import config as config_mod
from toolkit.dag import pipeline
from toolkit.data import storage
from toolkit.runs import cache, deliveries, executors
from toolkit.runs import store as runs
from toolkit.runs.record import RunEvent, RunInputs, RunRecord, StepRecord

__all__ = [
    "RunFailed",
    "cancel",
    "describe",
    "ploomber_env",
    "resume",
    "start",
]

Progress = Callable[[str], None]


class RunFailed(RuntimeError):
    """A run ended without success; ``record`` says which step and why."""

    def __init__(self, record: RunRecord):
        self.record = record
        super().__init__(explain_failure(record))


def ploomber_env(resolved: config_mod.ResolvedConfig, configs=(), patches=(), run_id="") -> dict:
    """The env values that make ``pipeline.yaml`` resolve to ``resolved``."""
    cfg = resolved.config
    return {
        "country": cfg.country,
        "period": cfg.period,
        "category": cfg.category or "all",
        # JSON keeps a ';' or ',' inside a patch value intact.
        "configs": json.dumps(list(configs)),
        "patches": json.dumps(list(patches)),
        "run_id": run_id,
    }


def load_dag(resolved: config_mod.ResolvedConfig, configs=(), patches=()):
    """The DAG for this config, in the default Ploomber workspace (for inspection)."""
    return pipeline.load_dag(ploomber_env(resolved, configs, patches))  # imports Ploomber


# ---------------------------------------------------------------------------
# Record keeping
# ---------------------------------------------------------------------------


class _Recorder:
    """Serialises record updates from the run loop and the heartbeat thread.

    The record is updated in place (fields set one by one, each validated), so whoever
    holds it (the run loop, ``RunFailed``) sees the current state; every change is saved
    under the lock, so a beat never writes a half-made update.
    """

    def __init__(self, record: RunRecord, root: str, progress: Progress):
        self.record = record
        self.root = root
        self.progress = progress
        self.lock = threading.Lock()

    def update(self, **fields) -> None:
        with self.lock:
            for name, value in fields.items():
                setattr(self.record, name, value)
            runs.save(self.record, self.root)

    def step(self, name: str, **fields) -> None:
        with self.lock:
            step = self.record.steps.get(name)
            if step is None:
                self.record.steps[name] = StepRecord(**fields)
            else:
                for field, value in fields.items():
                    setattr(step, field, value)
            runs.save(self.record, self.root)

    def event(self, message: str) -> None:
        self.progress(message)
        with self.lock:
            self.record.events.append(RunEvent(at=runs.now(), message=message))
            runs.save(self.record, self.root)


class _Heartbeat(threading.Thread):
    """Beats into the record; interrupts the run when a cancel marker appears."""

    def __init__(self, recorder: _Recorder, interval: float):
        super().__init__(daemon=True, name="toolkit-heartbeat")
        self.recorder = recorder
        self.interval = interval
        self.stopped = threading.Event()
        self.cancelled = False

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.recorder.update(heartbeat_at=runs.now())
                if not self.cancelled and self.cancel_requested():
                    # Ctrl-C for the run's main thread: it stops the notebook (its kernel
                    # is not kept), and the loop marks the run cancelled.
                    signal.raise_signal(signal.SIGINT)
            except Exception:  # noqa: BLE001 - a missed beat must not kill the run
                continue

    def cancel_requested(self) -> bool:
        """Whether a cancel marker exists (checked at each beat and before each step)."""
        if not self.cancelled:
            url = runs.run_url(self.recorder.record.id, "cancel", root=self.recorder.root)
            self.cancelled = storage.exists(url)
        return self.cancelled

    def stop(self) -> None:
        self.stopped.set()


# ---------------------------------------------------------------------------
# Start, resume, cancel
# ---------------------------------------------------------------------------


def create(
    resolved: config_mod.ResolvedConfig,
    configs=(),
    patches=(),
    run_id=None,
    executor: str = "serial",
    force: bool = False,
    **fields: Any,
) -> RunRecord:
    """Write a new run's frozen config and its ``queued`` record; return the record.

    ``fields`` set or override fields before the first save (``backfill``, ``launcher``).
    """
    root = storage.root()
    cfg = resolved.config
    run_id = run_id or runs.new_id(cfg.country, cfg.period)
    config_url = runs.run_url(run_id, "config.yaml", root=root)
    frozen = yaml.safe_dump(resolved.as_dict(), sort_keys=False).encode()
    storage.write_bytes(config_url, frozen)
    created = runs.now()
    values: dict[str, Any] = {
        "id": run_id,
        "status": "queued",
        "market": cfg.country,
        "period": cfg.period,
        "category": cfg.category,
        "launcher": runs.launcher(),
        "host": socket.gethostname(),
        "created_at": created,
        "heartbeat_at": created,
        "heartbeat_seconds": runs.heartbeat_seconds(),
        "root": root,
        "inputs": RunInputs(configs=list(configs), patches=list(patches)),
        "config": resolved.as_dict(),
        "origins": {key: origin for key, _, origin in resolved.leaves()},
        "config_url": config_url,
        "executor": executor,
        "force": force,
        "versions": runs.versions(),
        "git_commit": runs.git_commit(),
    }
    record = RunRecord(**{**values, **fields})
    runs.save(record, root)
    return record


def start(
    resolved: config_mod.ResolvedConfig,
    configs=(),
    patches=(),
    *,
    force=False,
    run_id=None,
    executor="serial",
    executor_options=None,
    progress: Progress = print,
) -> RunRecord:
    """Create a run and execute it. Returns the final record; raises ``RunFailed``."""
    record = create(resolved, configs, patches, run_id=run_id, executor=executor, force=force)
    progress(f"run {record.id}")
    return execute(
        record, force=force, executor=executor, executor_options=executor_options, progress=progress
    )


def resume(
    run_id: str, progress: Progress = print, executor=None, executor_options=None
) -> RunRecord:
    """Finish an interrupted or failed run, re-executing only its unfinished steps."""
    record = runs.load(run_id)
    status = record.status
    if status in runs.ACTIVE:
        raise RuntimeError(
            f"run {run_id} is still {status} (heartbeat {record.heartbeat_at}); "
            "cancel it first or wait for it"
        )
    if status == "succeeded":
        progress(f"run {run_id} already succeeded; nothing to do")
        return record
    record.status = record.stored_status or status
    record.stored_status = None
    record.resumed.append(runs.now())
    # A cancel request that stopped the run before would stop it again at the first beat.
    storage.remove(runs.run_url(run_id, "cancel", root=record.root))
    return execute(
        record,
        force=False,
        executor=executor or record.executor,
        executor_options=executor_options,
        progress=progress,
    )


def cancel(run_id: str) -> None:
    """Ask a running run to stop: it notices within one heartbeat."""
    record = runs.load(run_id)
    storage.write_bytes(runs.run_url(run_id, "cancel", root=record.root), b"cancel\n")


# ---------------------------------------------------------------------------
# The run loop
# ---------------------------------------------------------------------------


# CPython 3.11 builds AST objects with an interpreter-wide recursion counter, so two threads
# parsing at once can fail with "AST constructor recursion depth mismatch"
# (python/cpython#106905). Planning and keying parse Python (Ploomber's rendering, the
# notebooks' imports): run loops of a Dask backfill do it one thread at a time, and a run
# does it before its steps execute (the serial executor's thread renders with Ploomber).
_PARSING = threading.Lock()


def _plan(record: RunRecord) -> tuple[dict[str, str], list[pipeline.Step]]:
    """A run's env (its frozen config) and its steps in run order.

    The plan is the same for every run of the same config and project files, so it is
    asked for without the run's id; a fully cached run then finds it kept and never
    imports Ploomber.
    """
    env = {
        "country": record.market,
        "period": record.period,
        "category": record.category or "all",
        "configs": json.dumps([record.config_url]),
        "patches": "[]",
        "run_id": record.id,
    }
    # Planning renders params only; no product is written to this workspace.
    workspace = Path(tempfile.gettempdir()) / "toolkit-plan"
    with _PARSING:
        return env, pipeline.plan({**env, "run_id": "", "build_dir": str(workspace)})


def _step_keys(steps: list[pipeline.Step], root: str, market: str) -> dict[str, str]:
    """Every step's cache key, in run order (a key depends on its upstream keys only).

    Computed before any step executes: keying parses Python, and Ploomber parses while it
    renders a step in the executor's thread.
    """
    keys: dict[str, str] = {}
    with _PARSING:
        for step in steps:
            keys[step.name] = cache.step_key(
                step.name,
                step.source.read_text(),
                _key_params(step),
                {u: keys[u] for u in step.upstream},
                _raw_inputs(root, market) if not step.upstream else {},
            )
    return keys


def _key_params(step: pipeline.Step) -> dict[str, Any]:
    """The params that decide a step's outputs: not the storage root, not the run id."""
    params = json.loads(json.dumps(step.params, default=str))
    params.get("run", {}).pop("root", None)
    params.get("config", {}).pop("run_id", None)
    return params


def _raw_inputs(root: str, market: str) -> dict[str, str]:
    """Fingerprints of the market's raw files, for the steps that read them."""
    base = storage.join(root, "raw", f"market={market}")
    return {
        name: cache.file_fingerprint(storage.join(base, name)) for name in storage.listdir(base)
    }


def execute(
    record: RunRecord,
    *,
    force=False,
    executor="serial",
    executor_options=None,
    progress: Progress = print,
) -> RunRecord:
    """Walk the DAG: reuse cached steps, execute the others, keep the record current."""
    root = record.root
    recorder = _Recorder(record, root, progress)
    recorder.update(
        status="running",
        started_at=record.started_at or runs.now(),
        heartbeat_at=runs.now(),
        finished_at=None,
        error=None,
        pid=_pid(),
    )
    beat = _Heartbeat(recorder, float(record.heartbeat_seconds or runs.heartbeat_seconds()))
    beat.start()
    pool = None
    try:
        env, steps = _plan(record)
        order = [step.name for step in steps]
        upstream_of = {step.name: list(step.upstream) for step in steps}
        identity = {
            "market": record.market,
            "period": record.period,
            "category": record.category,
        }
        timeout = int(record.config["execution"]["step_timeout_seconds"])
        keys = _step_keys(steps, root, record.market)  # before any step executes, see _PARSING
        refusal = _endpoint_refusal(record.config.get("output", {}))
        if refusal is not None:  # now, not after every step has run
            _fail_delivery(recorder, refusal)
        outputs: dict[str, dict[str, str]] = {}
        pending = list(order)
        running: dict[Any, str] = {}
        failed = False
        total = len(order)
        while (pending and not failed) or running:
            ready = [s for s in pending if all(u in outputs for u in upstream_of[s])]
            if ready and beat.cancel_requested():  # before starting more steps, not a beat later
                raise KeyboardInterrupt
            for name in ready:
                pending.remove(name)
                position = f"[{order.index(name) + 1}/{total}] {name}"
                warnings: list[str] = []
                previous = record.steps.get(name) or StepRecord(status="running")
                hit = None if force else cache.lookup(root, identity, name, keys[name], warnings)
                for warning in warnings:
                    recorder.event(f"{position}: {warning}")
                if hit is not None:
                    outputs[name] = hit["outputs"]
                    own = hit["run_id"] == record.id
                    recorder.step(
                        name,
                        status="succeeded" if own else "reused",
                        reused=not own,
                        reused_from=None if own else hit["run_id"],
                        cache_key=keys[name],
                        outputs=hit["outputs"],
                        url=hit["url"],
                        error=None,
                        duration_s=previous.duration_s if own else 0.0,
                    )
                    how = "already done" if own else f"reused from run {hit['run_id']}"
                    recorder.event(f"{position}: {how}")
                    continue
                attempt = f"{record.id}.{len(previous.attempts) + 1}"
                recorder.step(
                    name,
                    status="running",
                    cache_key=keys[name],
                    reused=False,
                    started_at=runs.now(),
                    attempts=[*previous.attempts, attempt],
                    error=None,
                )
                recorder.event(f"{position}: running")
                request = {
                    "root": root,
                    "run_id": record.id,
                    "step": name,
                    "env": env,
                    "key": keys[name],
                    "attempt": attempt,
                    "timeout": timeout,
                    "kernel": record.config["execution"].get("kernel", "reuse"),
                    "identity": identity,
                    "upstream": {u: outputs[u] for u in upstream_of[name]},
                }
                if pool is None:  # not before a step needs it: a cached run needs no cluster
                    options = executor_options
                    if options is None:  # a resume: the options of the run's frozen config
                        options = configured_executor_options(executor, record.config)
                    pool = make_executor(executor, **options)
                if not pending and not running:
                    # The last step: this process mostly waits for it, so the summary's
                    # libraries load meanwhile instead of after it.
                    threading.Thread(target=_import_summary_modules, daemon=True).start()
                running[pool.submit(executors.execute_step, request)] = name
            done, _ = pool.wait_any(list(running)) if running else ([], [])
            for future in done:
                name = running.pop(future)
                result = _result_of(future)
                position = f"[{order.index(name) + 1}/{total}] {name}"
                duration = _seconds(result.get("started_at"), result.get("finished_at"))
                if result["status"] == "succeeded":
                    executors.crash_point(f"{name}:after-publish")
                    outputs[name] = result["outputs"]
                    recorder.step(
                        name,
                        status="succeeded",
                        outputs=result["outputs"],
                        url=result["url"],
                        finished_at=result["finished_at"],
                        duration_s=duration,
                    )
                    recorder.event(f"{position}: done in {duration:.1f}s")
                else:
                    failed = True
                    recorder.step(
                        name,
                        status="failed",
                        error=result["error"],
                        report=result.get("report", []),
                        debug=result.get("debug", {}),
                        traceback=result.get("traceback"),
                        finished_at=result.get("finished_at"),
                        duration_s=duration,
                    )
                    recorder.event(f"{position}: failed: {result['error'].splitlines()[-1]}")
            if beat.cancelled:  # the notebook may have turned the interrupt into an error
                raise KeyboardInterrupt
        if failed:
            recorder.update(
                status="failed",
                finished_at=runs.now(),
                error="a step failed; see its error and report",
            )
            raise RunFailed(record)
        _deliver(recorder, outputs.get("format_output"))
        recorder.update(status="succeeded", finished_at=runs.now())
        return record
    except KeyboardInterrupt:
        if pool is not None:
            pool.interrupt()  # the step executing now stops too
        status = "cancelled" if beat.cancelled else "interrupted"
        for name, step in list(record.steps.items()):
            if step.status in ("running", "failed") and not step.finished_at:
                recorder.step(name, status=status, finished_at=runs.now())
            elif step.status == "running":
                recorder.step(name, status=status)
        recorder.update(status=status, finished_at=runs.now(), error=f"run {status}")
        recorder.event(f"run {status}")
        if beat.cancelled:
            raise RunFailed(record) from None
        raise
    except RunFailed:
        raise
    except Exception as exc:
        recorder.update(
            status="failed", finished_at=runs.now(), error=f"{type(exc).__name__}: {exc}"
        )
        raise
    finally:
        beat.stop()
        if pool is not None:
            pool.release(record.id)
            pool.close()


def _endpoint_refusal(output: dict[str, Any]) -> dict[str, Any] | None:
    """A failed delivery receipt when the operator's allow-list refuses the endpoint."""
    endpoint = output.get("endpoint")
    try:
        if endpoint:
            deliveries.EndpointPolicy.from_config(output).check_url(endpoint)
    except deliveries.EndpointRefused as exc:
        return {"status": "failed", "endpoint": endpoint, "error": str(exc)}
    return None


def _deliver(recorder: _Recorder, files: dict[str, str] | None) -> None:
    """Deliver the recommendations, or record which run already did (every run, cached or
    not: a reused format_output step delivers nothing by itself)."""
    record = recorder.record
    if files is None:
        receipt = {"status": "skipped", "error": "the pipeline has no format_output step"}
    else:
        receipt = deliveries.deliver(record.root, record.id, record.config.get("output", {}), files)
    if receipt["status"] == "failed":
        _fail_delivery(recorder, receipt)
    recorder.update(delivery=receipt)
    recorder.event(f"delivery: {deliveries.describe(receipt)}")


def _fail_delivery(recorder: _Recorder, receipt: dict[str, Any]) -> NoReturn:
    recorder.update(
        delivery=receipt,
        status="failed",
        finished_at=runs.now(),
        error=f"delivery failed: {receipt['error']}",
    )
    recorder.event(f"delivery: {deliveries.describe(receipt)}")
    raise RunFailed(recorder.record)


def _result_of(future) -> dict[str, Any]:
    try:
        return future.result()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - a lost worker is a failed step, not a crash
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "report": []}


def _seconds(start: str | None, end: str | None) -> float:
    a, b = runs.parse_time(start), runs.parse_time(end)
    return round((b - a).total_seconds(), 2) if a and b else 0.0


def _pid() -> int:
    return os.getpid()


# ---------------------------------------------------------------------------
# Presentation
# ---------------------------------------------------------------------------


def explain_failure(record: RunRecord) -> str:
    lines = [f"run {record.id} {record.status}"]
    for name, step in record.steps.items():
        if step.status not in ("failed", "cancelled", "interrupted"):
            continue
        lines.append(f"step '{name}' {step.status}: {step.error or ''}".rstrip())
        for report in step.report:
            lines.append(_report_text(report))
        for key, url in step.debug.items():
            lines.append(f"  {key}: {url}")
    if record.delivery is not None and record.delivery.status == "failed":
        lines.append(deliveries.describe(record.delivery.model_dump()))
    return "\n".join(lines)


def _report_text(report: dict[str, Any]) -> str:
    from toolkit.data import io

    fields = {k: report[k] for k in ("dataset", "url", "stage", "n_rows", "failures")}
    return str(io.ValidationReport(**fields))


def _read_table(url: str, columns: Sequence[str]):
    """Columns of a published Parquet table, as an Arrow table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    # From memory and in this thread: Arrow's thread pools, once started, can abort the
    # process at exit ("terminate called without an active exception", apache/arrow#34314),
    # and these tables are small. Not pq.read_table: its dataset layer imports pandas.
    data = pa.BufferReader(storage.read_bytes(str(url)))
    return pq.ParquetFile(data).read(columns=list(columns), use_threads=False)


def describe(record: RunRecord) -> str:
    """Where a finished run's outputs are, step by step."""
    lines = [
        f"run {record.id}: {record.status} "
        f"({record.market} {record.period} {record.category or 'all'})"
    ]
    for name, step in record.steps.items():
        state = step.status
        if step.reused:
            state = f"reused from {step.reused_from}"
        lines.append(f"  {name} ({state})")
        lines += [f"    {key}: {url}" for key, url in step.outputs.items()]
    if record.delivery is not None:
        lines.append(f"  delivery: {deliveries.describe(record.delivery.model_dump())}")
    return "\n".join(lines)


def _import_summary_modules() -> None:
    import numpy  # noqa: F401 - what ``summary`` reads tables with
    import pyarrow.parquet  # noqa: F401


# What the summary shows of a plan: columns, and how each row of changes reads.
_SUMMARY_COLUMNS = (
    "product_id",
    "category",
    "current_price",
    "new_price",
    "price_change",
    "expected_margin",
    "baseline_margin",
    "changed",
)
_SUMMARY_HEADERS = ("product", "category", "price", "new price", "change", "margin delta")


def _summary_row(change: dict[str, Any]) -> tuple[str, ...]:
    return (
        str(change["product_id"]),
        str(change["category"]),
        f"{change['current_price']:,.2f}",
        f"{change['new_price']:,.2f}",
        f"{change['price_change'] * 100:+.0f}%",
        f"{change['expected_margin'] - change['baseline_margin']:+,.0f}",
    )


def summary(record: RunRecord, top: int = 10) -> str:
    """Top recommended changes, forecast error vs seasonal naive, where outputs are.

    Read with Arrow, not pandas: a cached run is mostly this summary, and importing
    pandas would be half its time. Published outputs passed their contracts when
    written; re-checking them only to print a summary would import pandera too.
    """
    from toolkit.runs import reports

    steps = record.steps
    plan = _read_table(steps["optimize"].outputs["data"], _SUMMARY_COLUMNS)
    kpis = json.loads(storage.read_bytes(steps["optimize"].outputs["kpis"]))
    accuracy = _read_table(steps["forecast"].outputs["accuracy"], reports.BACKTEST_COLUMNS)
    # Plain lists: converting Arrow columns to NumPy arrays would import pandas.
    backtest = reports.pooled_backtest(accuracy.to_pydict())
    changes = plan.filter(plan["changed"]).slice(0, top).to_pylist()
    lines = [
        f"Recommendations for {record.market} {record.period} "
        f"({kpis['n_changes']} price changes; revenue {kpis['revenue_change_pct']:+.1f}%, "
        f"margin {kpis['margin_change_pct']:+.1f}%, volume {kpis['volume_change_pct']:+.1f}%)",
        "",
    ]
    if not changes:
        lines.append("  no price changes recommended under these constraints")
    else:
        rows = [_SUMMARY_HEADERS] + [_summary_row(change) for change in changes]
        widths = [max(len(value) for value in column) for column in zip(*rows, strict=True)]
        for row in rows:  # right-aligned, as pandas prints a table
            lines.append("  " + " ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))
    lines += [
        "",
        f"Forecast backtest WAPE: model {backtest['model_wape']:.1%} vs seasonal naive "
        f"{backtest['naive_wape']:.1%} ({backtest['n_products']} products)",
        "",
        describe(record),
    ]
    return "\n".join(lines)


def configured_executor_options(name: str, config: dict[str, Any]) -> dict[str, Any]:
    """An executor's options from a config's ``execution`` section.

    That section is the operator's (configs/, the environment, an operator's own --patch;
    the app's launch path refuses it), so a Dask scheduler address never comes from a
    launcher. With no scheduler there, ``DaskExecutor`` takes ``DASK_SCHEDULER_ADDRESS``
    or starts a local cluster.
    """
    if name != "dask":
        return {}
    execution = config.get("execution", {})
    return {key: execution[key] for key in ("workers", "scheduler", "retries") if key in execution}


def make_executor(name: str = "serial", **options):
    """An executor by name: ``serial`` or ``dask``."""
    if name == "serial":
        return executors.SerialExecutor()
    if name == "dask":
        from toolkit.scale.dask_executor import DaskExecutor  # imports Dask: only when asked

        return DaskExecutor(**options)
    raise ValueError(f"unknown executor {name!r}; choose serial or dask")
