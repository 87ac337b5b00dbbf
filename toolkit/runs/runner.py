"""Runs: record, cache lookup, execution, heartbeat, cancel and resume of one pipeline run.

``toolkit run`` lands here. The DAG comes from the same ``pipeline.yaml`` as ``ploomber
build``; the effective config is frozen as ``runs/<id>/config.yaml`` so every step,
on any machine and on resume, sees exactly the values the run started with.

One process at a time writes a run: the holder of its lease (``runs.lease``). The run
loop takes it (a new run) or takes it over (``resume``, ``cancel``), the heartbeat renews
it, and every record write checks it first; a process that loses it stops its step and
writes nothing more.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from toolkit import config as config_mod
from toolkit import tempdirs
from toolkit.dag import pipeline
from toolkit.data import sources, storage
from toolkit.runs import cache, deliveries, executors
from toolkit.runs import store as runs
from toolkit.runs.lease import GIVE_UP_BEATS, Lease, LeaseError, LeaseLost, RunBusy
from toolkit.runs.lease import read as read_lease
from toolkit.runs.record import RunEvent, RunInputs, RunRecord, StepRecord

__all__ = [
    "LeaseError",
    "LeaseLost",
    "RunBusy",
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
    """The run loop's record: updated in place (fields set one by one, each validated), so
    whoever holds it (the run loop, ``RunFailed``) sees the current state, and saved
    after every change by the lease holder's writer (``LeaseLost`` once it lost it)."""

    def __init__(self, record: RunRecord, lease: Lease, progress: Progress):
        self.record = record
        self.lease = lease
        self.writer = runs.RecordWriter(lease, record.root)
        self.progress = progress

    def update(self, **fields) -> None:
        for name, value in fields.items():
            setattr(self.record, name, value)
        self.writer.save(self.record)

    def step(self, name: str, **fields) -> None:
        step = self.record.steps.get(name)
        if step is None:
            self.record.steps[name] = StepRecord(**fields)
        else:
            for field, value in fields.items():
                setattr(step, field, value)
        self.writer.save(self.record)

    def event(self, message: str) -> None:
        self.progress(message)
        self.record.events.append(RunEvent(at=runs.now(), message=message))
        self.writer.save(self.record)


class _Heartbeat:
    """Keeps the run's lease: renews it every beat, and stops the run once it is lost.

    Two threads of their own, never the run's storage calls or locks: one renews (and
    learns when another process took the lease over), one watches the time since the
    last renewal, so a renewal stuck on storage cannot hide that the lease is running
    out. When either finds the lease lost, the watcher calls ``stop_run`` once. (A loss
    the run loop finds itself, checking before a write, it handles itself.)
    """

    def __init__(self, lease: Lease, interval: float, stop_run: Callable[[], None]):
        self.lease, self.interval, self.stop_run = lease, interval, stop_run
        self.stopped = threading.Event()
        self.lost = threading.Event()  # found by the heartbeat
        self.pool = None  # the run's executor, once it has one
        self.renewed = time.monotonic()  # the lease was just written
        self.threads = [
            threading.Thread(target=self._renew, daemon=True, name="toolkit-lease-renew"),
            threading.Thread(target=self._watch, daemon=True, name="toolkit-lease-watch"),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _renew(self) -> None:
        while not self.stopped.wait(self.interval):
            started = time.monotonic()
            try:
                self.lease.renew()
            except LeaseLost:
                self.lost.set()
                return
            except Exception:  # noqa: BLE001 - a missed beat; the watcher counts them
                continue
            self.renewed = started

    def _watch(self) -> None:
        give_up = GIVE_UP_BEATS * self.interval
        while not self.stopped.wait(min(self.interval / 4, 1.0)):
            late = time.monotonic() - self.renewed
            if late > give_up and self.lease.lost is None:
                self.lease.lose(
                    f"not renewed for {late:.1f} s: storage did not answer, or this process "
                    "was paused"
                )
                self.lost.set()
            if self.lost.is_set():
                if not self.stopped.is_set():
                    self.stop_run()
                return

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
    lease: Lease | None = None,
    **fields: Any,
) -> RunRecord:
    """Write a new run's frozen config and its ``queued`` record; return the record.

    With the run's ``lease``, as its holder; without, for a process that will take the
    run's lease when it starts (the app's launch). ``fields`` set or override fields
    before the first save (``backfill``, ``launcher``).
    """
    root = storage.root()
    cfg = resolved.config
    run_id = run_id or runs.new_id(cfg.country, cfg.period)
    config_url = runs.run_url(run_id, "config.yaml", root=root)
    frozen = yaml.safe_dump(resolved.as_dict(), sort_keys=False).encode()
    if lease is not None:
        lease.check()
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
    if lease is None:
        runs.save(record, root)
    else:
        runs.RecordWriter(lease, root).save(record)
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
    **fields: Any,
) -> RunRecord:
    """Create a run and execute it. Returns the final record. ``fields`` set record fields
    (``name``, ``note``).

    Raises:
        RunFailed: the run did not succeed (or was cancelled before it started).
        RunBusy: ``run_id`` has been started before.
        LeaseLost: another process took the run over (see ``execute``).
    """
    root = storage.root()
    cfg = resolved.config
    run_id = run_id or runs.new_id(cfg.country, cfg.period)
    lease = _new_lease(run_id, root)
    try:
        record = create(
            resolved,
            configs,
            patches,
            run_id=run_id,
            executor=executor,
            force=force,
            lease=lease,
            **fields,
        )
    except BaseException:
        lease.release()
        raise
    progress(f"run {record.id}")
    return execute(
        record,
        lease=lease,
        force=force,
        executor=executor,
        executor_options=executor_options,
        progress=progress,
    )


def _new_lease(run_id: str, root: str) -> Lease:
    """A new run's lease; ``RunFailed`` when a cancel took it before the run started."""
    try:
        return Lease.create(run_id, root, runs.heartbeat_seconds())
    except RunBusy:
        found = read_lease(run_id, root)
        if found is not None and found.reason == "cancel":
            raise RunFailed(runs.load(run_id, root)) from None
        raise


def resume(
    run_id: str, progress: Progress = print, executor=None, executor_options=None
) -> RunRecord:
    """Finish an interrupted or failed run, re-executing only its unfinished steps.

    Takes the run's lease over (a new generation): the process that ran it before, if it
    still lives (paused, or cut off from storage), can write nothing more.

    Raises:
        RunBusy: the run is still running (its lease is renewed): refused.
    """
    root = storage.root()
    record = runs.load(run_id, root)
    if record.status in runs.ACTIVE:
        raise RunBusy(
            f"run {run_id} is still {record.status} (heartbeat {record.heartbeat_at}); "
            "cancel it first or wait for it"
        )
    if record.status == "succeeded":
        progress(f"run {run_id} already succeeded; nothing to do")
        return record
    lease = Lease.take_over(run_id, root, "resume", runs.heartbeat_seconds())
    try:
        # Read again now that no one else may write it: the last holder's final state.
        record = runs.load(run_id, root)
    except BaseException:
        lease.release()
        raise
    if record.stored_status == "succeeded":
        lease.release()
        progress(f"run {run_id} already succeeded; nothing to do")
        return record
    record.status = record.stored_status or record.status
    record.stored_status = None
    record.resumed.append(runs.now())
    record.events.append(
        RunEvent(
            at=runs.now(),
            message=f"resumed on {lease.state.holder} (lease generation {lease.state.generation})",
        )
    )
    return execute(
        record,
        lease=lease,
        force=False,
        executor=executor or record.executor,
        executor_options=executor_options,
        progress=progress,
    )


def cancel(run_id: str) -> RunRecord:
    """Stop a queued, running or interrupted run now, and record it cancelled.

    Takes the run's lease over, live or not: the run's process sees that within one beat,
    stops its step and writes nothing more. Returns the record (as it was, when the run
    had already finished).
    """
    root = storage.root()
    record = runs.load(run_id, root)
    if record.status in ("succeeded", "failed", "cancelled"):
        return record
    lease = Lease.take_over(run_id, root, "cancel", runs.heartbeat_seconds(), live_ok=True)
    try:
        record = runs.load(run_id, root)  # as its last holder left it
        if record.stored_status in ("succeeded", "failed", "cancelled"):
            return record  # it finished in the meantime
        at = runs.now()
        for step in record.steps.values():
            if step.status == "running":
                step.status, step.finished_at = "cancelled", at
        record.status, record.stored_status = "cancelled", None
        record.finished_at, record.error = at, "run cancelled"
        record.events.append(
            RunEvent(at=at, message=f"run cancelled by {runs.launcher()} on {lease.state.holder}")
        )
        runs.RecordWriter(lease, root).save(record)
        return record
    finally:
        lease.release()


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


def _step_keys(steps: list[pipeline.Step], root: str) -> dict[str, str]:
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
                _raw_inputs(step, root) if not step.upstream else {},
            )
    return keys


def _key_params(step: pipeline.Step) -> dict[str, Any]:
    """The params that decide a step's outputs: not the storage root, not the run id."""
    params = json.loads(json.dumps(step.params, default=str))
    params.get("run", {}).pop("root", None)
    params.get("config", {}).pop("run_id", None)
    return params


def _raw_inputs(step: pipeline.Step, root: str) -> dict[str, str]:
    """Content fingerprints of the files a step's sources name (``config.sources``), each
    named relative to the root, so that a moved root keeps its keys."""
    section = step.params.get("config") or {}
    if "sources" not in section:
        return {}
    run, prefix = {**step.params["run"], "root": root}, f"{root.rstrip('/')}/"
    found = sources.input_urls(section["sources"], run)
    return {url.removeprefix(prefix): cache.file_fingerprint(url) for url in found}


def execute(
    record: RunRecord,
    *,
    lease: Lease | None = None,
    force=False,
    executor="serial",
    executor_options=None,
    progress: Progress = print,
) -> RunRecord:
    """Walk the DAG: reuse cached steps, execute the others, keep the record current.

    As the holder of the run's ``lease`` (taken here for a new run when not given),
    renewed by the heartbeat and released at the end.

    Raises:
        RunFailed: a step or the delivery failed, or the run was cancelled.
        LeaseLost: another process took the run over, or this one could not renew its
            lease in time: it stopped its step and wrote nothing more.
        KeyboardInterrupt: Ctrl-C or SIGTERM (recorded as interrupted).
    """
    lease = lease or _new_lease(record.id, record.root)
    recorder = _Recorder(record, lease, progress)
    on_main_thread = threading.current_thread() is threading.main_thread()
    beat = _Heartbeat(lease, lease.state.seconds, lambda: _stop_run(beat, on_main_thread))
    beat.start()
    try:
        return _walk(
            recorder, beat, force=force, executor=executor, executor_options=executor_options
        )
    except (KeyboardInterrupt, LeaseLost):
        if lease.lost is None:
            raise
        raise _lost(lease, record) from None
    finally:
        beat.stop()
        lease.release()


def _stop_run(beat: _Heartbeat, on_main_thread: bool) -> None:
    """The lease is lost: stop the run by the way Ctrl-C and cancel stop it."""
    if on_main_thread:
        # Ctrl-C for the loop, sent to the main thread itself: a signal raised in this
        # thread would wait until the main thread next ran Python, and it is blocked
        # waiting for the step.
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
    elif beat.pool is not None:
        beat.pool.interrupt()  # a loop in a thread (a backfill): its executor stops it


def _lost(lease: Lease, record: RunRecord) -> Exception:
    """What to raise once the lease is lost: a cancel as the failed, cancelled run it is
    (``RunFailed``, as the canceller recorded it); anything else as ``LeaseLost``."""
    lost = lease.lost
    assert lost is not None
    if lost.taken_by is None or lost.taken_by.reason != "cancel":
        return lost
    try:
        cancelled = runs.load(record.id, record.root)
    except (runs.RunNotFound, storage.StorageError):
        cancelled = record
    cancelled.status = "cancelled"  # the canceller may not have written it yet
    return RunFailed(cancelled)


def _walk(recorder: _Recorder, beat: _Heartbeat, *, force, executor, executor_options) -> RunRecord:
    """The run loop of ``execute``: each step reused or executed, the record kept current,
    a failure or Ctrl-C recorded (unless the lease is lost: then nothing is written)."""
    record = recorder.record
    root = record.root
    pool = None
    try:
        recorder.update(
            status="running",
            started_at=record.started_at or runs.now(),
            heartbeat_at=runs.now(),
            heartbeat_seconds=beat.interval,
            finished_at=None,
            error=None,
            pid=_pid(),
        )
        env, steps = _plan(record)
        order = [step.name for step in steps]
        upstream_of = {step.name: list(step.upstream) for step in steps}
        identity = {
            "market": record.market,
            "period": record.period,
            "category": record.category,
        }
        timeout = int(record.config["execution"]["step_timeout_seconds"])
        memory_mb = int(record.config["execution"].get("step_memory_mb") or 0)
        tempdirs.sweep()  # what killed processes left: workspaces, kernel sockets
        keys = _step_keys(steps, root)  # before any step executes, see _PARSING
        refusal = _endpoint_refusal(record.config.get("output", {}))
        if refusal is not None:  # now, not after every step has run
            _fail_delivery(recorder, refusal)
        outputs: dict[str, dict[str, str]] = {}
        pending = list(order)
        running: dict[Any, str] = {}
        failed = False
        refetched: set[str] = set()  # steps that found an upstream object corrupt, once
        total = len(order)
        while (pending and not failed) or running:
            ready = [s for s in pending if all(u in outputs for u in upstream_of[s])]
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
                    "memory_mb": memory_mb,
                    "kernel": record.config["execution"].get("kernel", "reuse"),
                    "identity": identity,
                    "upstream": {u: outputs[u] for u in upstream_of[name]},
                    "lease": recorder.lease.ticket(),
                }
                if pool is None:  # not before a step needs it: a cached run needs no cluster
                    options = executor_options
                    if options is None:  # a resume: the options of the run's frozen config
                        options = configured_executor_options(executor, record.config)
                    pool = beat.pool = make_executor(executor, **options)
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
                elif result.get("corrupt_upstream") and name not in refetched:
                    # Changed since its lookup checked it: that step runs again (its
                    # lookup now skips the attempt), then this one.
                    refetched.add(name)
                    corrupt = result["corrupt_upstream"]
                    outputs.pop(corrupt, None)
                    queued = {*pending, *running.values()}
                    pending[:0] = [s for s in (corrupt, name) if s not in queued]
                    recorder.event(f"{position}: {result['error']}; {corrupt} runs again")
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
        if recorder.lease.lost is not None:
            raise  # nothing more is written
        for name, step in list(record.steps.items()):
            if step.status in ("running", "failed") and not step.finished_at:
                recorder.step(name, status="interrupted", finished_at=runs.now())
            elif step.status == "running":
                recorder.step(name, status="interrupted")
        recorder.update(status="interrupted", finished_at=runs.now(), error="run interrupted")
        recorder.event("run interrupted")
        raise
    except LeaseLost:
        if pool is not None:
            pool.interrupt()  # the steps executing now stop too
        raise
    except RunFailed:
        raise
    except Exception as exc:
        recorder.update(
            status="failed", finished_at=runs.now(), error=f"{type(exc).__name__}: {exc}"
        )
        raise
    finally:
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
        recorder.lease.check()  # what is sent cannot be taken back: only by the run's holder
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
