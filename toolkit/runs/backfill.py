"""Backfills: one run per market x period x category, concurrently on one executor, resumable."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import queue
import re
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from toolkit import config as config_mod
from toolkit.data import storage
from toolkit.runs import runner
from toolkit.runs import store as runs
from toolkit.runs.record import RunRecord

__all__ = [
    "BackfillError",
    "BackfillInterrupted",
    "backfill",
    "latest_id",
    "load_manifest",
    "manifest_url",
    "parse_list",
    "parse_periods",
    "summary_table",
]

Progress = Callable[[str], None]

MAX_MONTHS_PER_RANGE = 120  # ten years: a longer range is almost surely a typo
_MONTH = re.compile(r"^([0-9]{4})-([0-9]{2})$")
# Resume re-executes these; a cancelled run was stopped on purpose and stays stopped.
RESUMABLE = ("failed", "interrupted")


class BackfillError(ValueError):
    """A backfill cannot start: bad periods, an identity patch, nothing to resume."""


class BackfillInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the backfill; ``results`` says where each combination stands."""

    def __init__(self, results: list[dict[str, Any]]):
        super().__init__("backfill interrupted")
        self.results = results


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------


def _month(text: str, where: str) -> tuple[int, int]:
    match = _MONTH.match(text)
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise BackfillError(f"bad period {text!r} in {where!r}: expected YYYY-MM, month 01-12")
    return int(match.group(1)), int(match.group(2))


def parse_periods(text: str | Iterable[str]) -> list[str]:
    """Months from ``2026-01..2026-06`` ranges and comma lists, in order, without repeats.

    Args:
        text: e.g. ``"2026-01..2026-06"``, ``"2026-01,2026-03"``, ``"2025-11..2026-01,2026-06"``
            or an iterable of such strings.

    Returns:
        ``YYYY-MM`` strings, ranges expanded (both ends included).

    Raises:
        BackfillError: naming the bad item: not ``YYYY-MM``, a range that runs backwards
            or spans more than ``MAX_MONTHS_PER_RANGE`` months, or no period at all.
    """
    given = text if isinstance(text, str) else ",".join(text)
    months: list[str] = []
    for item in (part.strip() for part in given.split(",")):
        if not item:
            continue
        if ".." in item:
            start_text, _, end_text = (side.strip() for side in item.partition(".."))
            start, end = _month(start_text, item), _month(end_text, item)
            count = (end[0] - start[0]) * 12 + end[1] - start[1] + 1
            if count < 1:
                raise BackfillError(
                    f"period range {item!r} runs backwards; write the earlier month first"
                )
            if count > MAX_MONTHS_PER_RANGE:
                raise BackfillError(
                    f"period range {item!r} spans {count} months, more than "
                    f"{MAX_MONTHS_PER_RANGE}; split it if you mean it"
                )
            index = start[0] * 12 + start[1] - 1
            months += [f"{i // 12:04d}-{i % 12 + 1:02d}" for i in range(index, index + count)]
        else:
            year, month = _month(item, given)
            months.append(f"{year:04d}-{month:02d}")
    if not months:
        raise BackfillError(
            f"no period in {given!r}; give e.g. 2026-01..2026-06 or 2026-01,2026-03"
        )
    return list(dict.fromkeys(months))


def parse_list(text: str | Iterable[str | None] | None) -> list[str]:
    """``"US, DE"`` or ``["US", "DE"]`` as a list of stripped, non-empty, unique items."""
    if text is None:
        return []
    items = text.split(",") if isinstance(text, str) else list(text)
    return list(dict.fromkeys(str(i).strip() for i in items if i is not None and str(i).strip()))


def _categories(values) -> list[str | None]:
    """Categories with ``all`` (or None) meaning no category filter; default: all."""
    if isinstance(values, str):
        items: list = parse_list(values)
    else:
        items = list(values) if values is not None else [None]
    out = [
        None if v is None or str(v).strip().lower() in ("", "all") else str(v).strip()
        for v in items
    ]
    return list(dict.fromkeys(out)) or [None]


# ---------------------------------------------------------------------------
# The manifest: which combinations a backfill has and which run each got
# ---------------------------------------------------------------------------


def manifest_url(backfill_id: str, root: str | None = None) -> str:
    """``<root>/backfills/<id>.json``, beside ``runs/``."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,120}", backfill_id) or backfill_id.startswith("."):
        raise BackfillError(f"invalid backfill id {backfill_id!r}")
    return storage.join(root or storage.root(), "backfills", f"{backfill_id}.json")


def load_manifest(backfill_id: str | None = None, root: str | None = None) -> dict[str, Any]:
    """The manifest of ``backfill_id``, or of the latest backfill.

    Raises:
        BackfillError: there is no such backfill, or none at all.
    """
    root = root or storage.root()
    backfill_id = backfill_id or latest_id(root)
    if backfill_id is None:
        raise BackfillError(f"no backfill under {storage.join(root, 'backfills')} to resume")
    try:
        return json.loads(storage.read_bytes(manifest_url(backfill_id, root)))
    except FileNotFoundError:
        raise BackfillError(f"no backfill {backfill_id!r} under {root}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BackfillError(f"backfill manifest {backfill_id!r} is corrupt: {exc}") from None


def latest_id(root: str | None = None) -> str | None:
    """The id of the most recently created backfill under ``root``, or None."""
    root = root or storage.root()
    base = storage.join(root, "backfills")
    newest: tuple[str, str] | None = None
    for name in storage.listdir(base):
        if not name.endswith(".json") or name.startswith("."):
            continue
        try:
            created = json.loads(storage.read_bytes(storage.join(base, name)))["created_at"]
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            continue  # unreadable: not a backfill anyone can resume
        newest = max(newest or (created, name), (created, name))
    return newest[1].removesuffix(".json") if newest else None


def _new_id() -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return f"backfill-{stamp}-{secrets.token_hex(3)}"


@dataclass
class _Combination:
    market: str
    period: str
    category: str | None
    run_id: str | None = None
    status: str = "pending"
    error: str | None = None
    # Not saved: the stop switch of the run's executor (dask), set on cancel or Ctrl-C.
    stop: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def label(self) -> str:
        return f"{self.market} {self.period} {self.category or 'all'}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "market": self.market,
            "period": self.period,
            "category": self.category,
            "run_id": self.run_id,
            "status": self.status,
            "error": self.error,
        }


class _Manifest:
    """The backfill's manifest, rewritten whole (one atomic put) after every change."""

    def __init__(self, data: dict[str, Any], combinations: list[_Combination], root: str):
        self.data, self.combinations, self.root = data, combinations, root
        self.lock = threading.Lock()

    def save(self) -> None:
        with self.lock:
            self.data["combinations"] = [c.as_dict() for c in self.combinations]
            self.data["updated_at"] = runs.now()
            body = json.dumps(self.data, indent=2, default=str).encode()
            storage.write_bytes(manifest_url(self.data["id"], self.root), body)


# ---------------------------------------------------------------------------
# The backfill
# ---------------------------------------------------------------------------


def backfill(
    markets: str | Iterable[str],
    periods: str | Iterable[str],
    categories: Iterable[str | None] | str | None = (None,),
    configs: Iterable[str] = (),
    patches: Iterable[str] = (),
    executor: str | None = "serial",
    executor_options: dict[str, Any] | None = None,
    progress: Progress = print,
    resume: bool | str = False,
) -> list[dict[str, Any]]:
    """One run per market x period x category, on one executor; failures do not stop others.

    With ``dask`` the runs go concurrently, each run's loop in a thread of its own, all
    sharing one Dask cluster, so their steps interleave on the workers. With ``serial``
    they run one after another in this process.

    Args:
        markets: market codes (``"US,DE"`` or a list).
        periods: months, see ``parse_periods``.
        categories: category names; None or ``"all"`` for no category filter.
        configs: extra config layers for every run (local paths or URLs).
        patches: ``key.path=value`` overrides for every run; not the run identity.
        executor: ``serial`` or ``dask``; None takes the resumed backfill's executor,
            else ``execution.executor`` of the config.
        executor_options: for ``dask``, ``workers``, ``scheduler`` and ``retries``
            overriding the config's ``execution`` section.
        progress: receives each line of progress, prefixed with its combination.
        resume: True to resume the latest backfill, or the id of one: its failed and
            interrupted runs resume, its combinations that never started (or whose config
            was invalid) start now; ``markets`` and ``periods`` must then be empty.

    Returns:
        One result per combination, see ``summary_table``: ``backfill``, ``run_id``,
        ``market``, ``period``, ``category``, ``status`` (a run status, ``invalid`` for
        a config error, ``pending`` when never started), ``duration_s``,
        ``steps_reused``, ``steps`` and ``error``.

    Raises:
        BackfillError: bad periods, a patch that sets the run identity, nothing to resume.
        config_mod.ConfigError: the configs or patches are invalid for every run.
        BackfillInterrupted: on Ctrl-C, after every started run recorded ``interrupted``.
    """
    root = storage.root()
    if resume:
        if parse_list(markets) or (periods and parse_list(periods)):
            raise BackfillError(
                "--resume takes the markets and periods of the backfill it resumes; "
                "drop --market and --period"
            )
        data = load_manifest(resume if isinstance(resume, str) else None, root)
        configs, patches = data.get("configs", []), data.get("patches", [])
        combinations = [
            _Combination(c["market"], c["period"], c["category"], c.get("run_id"), c["status"])
            for c in data["combinations"]
        ]
        data.setdefault("resumed", []).append(runs.now())
        executor = executor or data.get("executor")
    else:
        configs, patches = list(configs), list(patches)
        _check_identity_patches(patches)
        market_list = [m.upper() for m in parse_list(markets)]
        if not market_list:
            raise BackfillError("no market given; e.g. --market US,DE")
        combinations = [
            _Combination(m, p, c)
            for m, p, c in itertools.product(
                market_list, parse_periods(periods), _categories(categories)
            )
        ]
        data = {
            "id": _new_id(),
            "created_at": runs.now(),
            "launcher": runs.launcher(),
            "host": socket.gethostname(),
            "root": root,
            "configs": configs,
            "patches": patches,
        }
    # Invalid for every run (a bad patch): raise now rather than once per combination.
    execution = config_mod.resolve(configs=configs, patches=patches).config.execution
    name = executor or execution.executor
    if name not in ("serial", "dask"):
        raise BackfillError(f"unknown executor {name!r}; choose serial or dask")
    options: dict[str, Any] = {}
    if name == "dask":
        options = {
            "workers": execution.workers,
            "scheduler": execution.scheduler,
            "retries": execution.retries,
        }
        options.update({k: v for k, v in (executor_options or {}).items() if v is not None})
    data["executor"] = name
    manifest = _Manifest(data, combinations, root)
    say = _locked(progress)
    say(f"backfill {data['id']}: {len(combinations)} runs on the {name} executor")
    context = _Context(manifest, configs, patches, name, say)
    manifest.save()
    if name == "serial":
        _run_serially(context)
    else:
        _run_on_dask(context, options)
    return [_result(data["id"], c) for c in combinations]


@dataclass
class _Context:
    manifest: _Manifest
    configs: list[str]
    patches: list[str]
    executor: str
    progress: Progress


def _locked(progress: Progress) -> Progress:
    lock = threading.Lock()

    def say(message: str) -> None:
        with lock:
            progress(message)

    return say


def _check_identity_patches(patches: list[str]) -> None:
    for patch in patches:
        key = patch.partition("=")[0].strip()
        if key in config_mod.IDENTITY_KEYS:
            raise BackfillError(
                f"--patch {patch!r} sets the run identity, which the backfill sets per run; "
                "use --market, --period and --category instead"
            )


def _run_serially(context: _Context) -> None:
    """One combination after another in this thread: a cancel stops only its run."""
    try:
        for combination in context.manifest.combinations:
            _drive(context, combination, None)
    except KeyboardInterrupt:
        _finish_interrupted(context)


def _run_on_dask(context: _Context, options: dict[str, Any]) -> None:
    """Every combination's run loop in a thread, all on one Dask cluster.

    Threads pull combinations from a queue, as many runs at once as the cluster has
    threads: each run's next step then finds idle the worker that ran its last one, which
    keeps the run's Jupyter kernel (``toolkit.dag.kernels``). More runs would only queue their
    steps on the scheduler while their records say running, and spread every run over
    every worker, starting a kernel for it on each.
    """
    from toolkit.scale.dask_executor import DaskExecutor

    shared = DaskExecutor(**options)
    try:
        _drive_threads(context, shared)
    finally:
        shared.close()


def _drive_threads(context: _Context, shared) -> None:
    """Run loops in threads over ``shared``; Ctrl-C and cancels routed to the right run."""
    slots = max(1, sum(shared.client.nthreads().values()))
    todo: queue.Queue[_Combination] = queue.Queue()
    for combination in context.manifest.combinations:
        todo.put(combination)
    # Single dict and list operations, atomic under the GIL: no lock needed.
    active: dict[int, _Combination] = {}
    stopping = threading.Event()
    finished: list[str] = []  # names of the threads that are done

    def work() -> None:
        try:
            while not stopping.is_set():
                try:
                    combination = todo.get_nowait()
                except queue.Empty:
                    return
                active[id(combination)] = combination
                if stopping.is_set():  # set after the main thread looked at ``active``
                    combination.stop.set()
                try:
                    _drive(context, combination, shared)
                except KeyboardInterrupt:  # its run recorded "interrupted" already
                    pass
                finally:
                    active.pop(id(combination), None)
        finally:
            finished.append(threading.current_thread().name)

    threads = [
        threading.Thread(target=work, name=f"toolkit-backfill-{i}", daemon=True)
        for i in range(min(slots, len(context.manifest.combinations)))
    ]
    for thread in threads:
        thread.start()
    interrupted, seen = False, 0
    with _CountedInterrupts() as interrupts:
        while len(finished) < len(threads):
            time.sleep(0.2)
            if interrupts.count == seen:
                continue
            seen = interrupts.count
            if interrupted:
                break  # a second Ctrl-C: leave now; the runs' heartbeats just stop
            # Ctrl-C: every run stops and records "interrupted"; the rest never start.
            interrupted = True
            context.progress("stopping every run (Ctrl-C again to leave at once)")
            stopping.set()
            for combination in list(active.values()):
                combination.stop.set()
    if interrupted:
        _finish_interrupted(context)


class _CountedInterrupts:
    """While run loops are in threads, SIGINT is counted in the main thread, not raised.

    Ctrl-C arrives as SIGINT (a cancelled run's loop is stopped by its own executor, not
    by a signal). Raised as KeyboardInterrupt, it could surface anywhere in the main thread,
    including in ``Thread.join``, which on CPython 3.11 then marks a live thread stopped
    (bpo-45274), and the shared cluster would close under its run.
    """

    def __init__(self):
        self.count = 0
        self.previous = None

    def __enter__(self) -> _CountedInterrupts:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._note)
        return self

    def _note(self, signum, frame) -> None:
        self.count += 1

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def _finish_interrupted(context: _Context) -> None:
    context.manifest.save()
    backfill_id = context.manifest.data["id"]
    context.progress(f"backfill {backfill_id} interrupted")
    raise BackfillInterrupted([_result(backfill_id, c) for c in context.manifest.combinations])


def _drive(context: _Context, combination: _Combination, shared) -> None:
    """Start, resume or report one combination's run; record the outcome in the manifest.

    Raises:
        KeyboardInterrupt: Ctrl-C (serial) or a stop of this run's executor (dask) that
            was not a cancel; the run recorded ``interrupted``.
    """
    say = _prefixed(context.progress, combination.label)
    options = {"shared": shared, "stop": combination.stop} if shared is not None else None
    try:
        if combination.run_id is not None:
            record = _resume(context, combination, options, say)
        else:
            record = _start(context, combination, options, say)
    except runner.RunFailed as exc:
        record = exc.record
    except KeyboardInterrupt:
        _settle(context, combination, status="interrupted")
        raise
    except Exception as exc:  # storage, Dask: this combination failed, the others go on
        _settle(context, combination, status="failed", error=f"{type(exc).__name__}: {exc}")
        say(f"failed: {type(exc).__name__}: {exc}")
        return
    if record is not None:
        _settle(context, combination, record=record)


def _start(context: _Context, combination: _Combination, options, say) -> RunRecord | None:
    try:
        resolved = config_mod.resolve(
            country=combination.market,
            period=combination.period,
            category=combination.category,
            configs=context.configs,
            patches=context.patches,
        )
        _check_identity(resolved, combination)
    except config_mod.ConfigError as exc:
        combination.status, combination.error = "invalid", str(exc)
        context.manifest.save()
        say(f"invalid config: {_first_problem(exc)}")
        return None
    record = runner.create(
        resolved,
        context.configs,
        context.patches,
        executor=context.executor,
        backfill=context.manifest.data["id"],
    )
    combination.run_id, combination.status, combination.error = record.id, "running", None
    context.manifest.save()
    say(f"run {record.id}")
    return runner.execute(record, executor=context.executor, executor_options=options, progress=say)


def _resume(context: _Context, combination: _Combination, options, say) -> RunRecord | None:
    record = runs.load(combination.run_id)
    status = record.status
    if status not in RESUMABLE:
        how = {
            "succeeded": "already succeeded",
            "cancelled": "was cancelled on purpose; a backfill resume leaves it as it is",
        }.get(status, f"is still {status}; is the backfill still going elsewhere?")
        say(f"run {combination.run_id} {how}")
        return record
    say(f"resuming run {combination.run_id} ({status})")
    return runner.resume(
        combination.run_id,
        progress=say,
        executor=context.executor,
        executor_options=options,
    )


def _check_identity(resolved: config_mod.ResolvedConfig, combination: _Combination) -> None:
    cfg = resolved.config
    wanted = {"country": combination.market, "period": combination.period}
    wanted["category"] = combination.category
    for key, value in wanted.items():
        got = getattr(cfg, key)
        if got != value:
            source = resolved.origin(key)
            raise config_mod.ConfigError(
                [
                    config_mod.Problem(
                        source,
                        key,
                        f"sets {key} to {got!r}, overriding the backfill's {value!r}; "
                        "a backfill's layers may not set the run identity",
                    )
                ]
            )


def _settle(
    context: _Context,
    combination: _Combination,
    record: RunRecord | None = None,
    status: str | None = None,
    error: str | None = None,
) -> None:
    """Note a combination's outcome in the manifest: from its record, else as given."""
    if record is not None:
        combination.run_id = record.id
        combination.status = record.status
        combination.error = _run_error(record)
    else:
        combination.status, combination.error = status or "failed", error
        if combination.run_id is not None:
            try:  # the run's own record is the better account, when it exists
                record = runs.load(combination.run_id)
                combination.status = record.status
                combination.error = _run_error(record) or combination.error
            except (runs.RunNotFound, storage.StorageError):
                pass
    context.manifest.save()


def _run_error(record: RunRecord) -> str | None:
    if record.status == "succeeded":
        return None
    for name, step in record.steps.items():
        if step.status in ("failed", "cancelled", "interrupted") and step.error:
            return f"step {name}: {step.error}"
    return record.error or f"run {record.status}"


def _first_problem(exc: config_mod.ConfigError) -> str:
    return str(exc.problems[0]) if exc.problems else str(exc)


def _prefixed(progress: Progress, label: str) -> Progress:
    return lambda message: progress(f"[{label}] {message}")


def _result(backfill_id: str, combination: _Combination) -> dict[str, Any]:
    out = {
        "backfill": backfill_id,
        "run_id": combination.run_id,
        "market": combination.market,
        "period": combination.period,
        "category": combination.category,
        "status": combination.status,
        "duration_s": None,
        "steps_reused": None,
        "steps": None,
        "error": combination.error,
    }
    if combination.run_id is None:
        return out
    try:
        record = runs.load(combination.run_id)
    except (runs.RunNotFound, storage.StorageError) as exc:
        out["error"] = out["error"] or str(exc)
        return out
    steps = record.steps
    out.update(
        status=record.status,
        duration_s=runs.duration_seconds(record),
        steps_reused=sum(1 for s in steps.values() if s.reused),
        steps=len(steps),
    )
    return out


# ---------------------------------------------------------------------------
# Presentation
# ---------------------------------------------------------------------------


def summary_table(results: list[dict[str, Any]]) -> str:
    """A fixed-width table, one row per combination, then each failure's reason.

    Columns: run id, market, period, category, status, duration, steps reused.
    """
    header = ("RUN", "MARKET", "PERIOD", "CATEGORY", "STATUS", "DURATION", "REUSED")
    rows = []
    for r in results:
        duration = f"{r['duration_s']:.1f}s" if r.get("duration_s") is not None else "-"
        reused = f"{r['steps_reused']}/{r['steps']}" if r.get("steps") else "-"
        rows.append(
            (
                r.get("run_id") or "-",
                r["market"],
                r["period"],
                r.get("category") or "all",
                r["status"],
                duration,
                reused,
            )
        )
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    right = {5, 6}  # numbers line up on the right

    def line(row) -> str:
        cells = [
            f"{cell:>{widths[i]}}" if i in right else f"{cell:<{widths[i]}}"
            for i, cell in enumerate(row)
        ]
        return "  ".join(cells).rstrip()

    lines = [line(header), *(line(row) for row in rows)]
    failures = [r for r in results if r["status"] != "succeeded"]
    if failures:
        lines.append("")
        for r in failures:
            reason = (r.get("error") or r["status"]).strip()
            # A config error lists its problems on the lines after its first.
            shown = " ".join(part.strip(" -") for part in reason.splitlines() if part.strip())
            lines.append(
                f"{r['market']} {r['period']} {r.get('category') or 'all'}: {r['status']}: "
                f"{shown[:500]}"
            )
    counts: dict[str, int] = {}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    lines.append("")
    lines.append(
        f"{len(results)} runs: " + ", ".join(f"{n} {status}" for status, n in counts.items())
    )
    return "\n".join(lines)
