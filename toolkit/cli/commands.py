"""The ``toolkit`` command: run the pipeline, inspect config, write demo data."""

from __future__ import annotations

import json
import logging
import signal
import sys

import click

from toolkit import config as config_mod
from toolkit import project, settings
from toolkit.cli import options as cli_options
from toolkit.runs import record as record_mod

# Shared with the other command module.
_patch_option, _config_option = cli_options.patch_option, cli_options.config_option


def _resolve_or_exit(configs, patches) -> config_mod.ResolvedConfig:
    try:
        return config_mod.resolve(configs=configs, patches=patches)
    except config_mod.ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)


class _Commands(click.Group):
    """The command group: outside a project, with a bad ``TOOLKIT_*`` knob, or with storage
    that fails, every command says so in one line (the message names the URL and endpoint)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (project.NotInProject, settings.SettingError) as exc:
            click.echo(f"toolkit: {exc}", err=True)
            sys.exit(2)
        except Exception as exc:
            # Storage is imported only by commands that use it: checked only on an error.
            if not isinstance(exc, storage_errors()):
                raise
            click.echo(f"toolkit: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log what toolkit does (--log-level INFO).")
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default=None,
    help="Log messages of this level and above to stderr (default WARNING).",
)
def main(verbose: bool, log_level: str | None) -> None:
    """Run notebook pipelines with layered config, data contracts and storage by URL."""
    level = (log_level or ("INFO" if verbose else "WARNING")).upper()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if level == "DEBUG":  # everything, the libraries' messages too
        logging.basicConfig(level=logging.DEBUG, handlers=[handler])
    else:  # toolkit's own; libraries' warnings still reach stderr through Python's default
        logger = logging.getLogger("toolkit")
        logger.setLevel(level)
        logger.addHandler(handler)
        logger.propagate = False
    # SIGTERM ends a command as Ctrl-C does: the run is recorded as interrupted, and its
    # kernels and temporary folders go with it.
    signal.signal(signal.SIGTERM, signal.default_int_handler)


@main.group()
def config() -> None:
    """Inspect the layered configuration."""


@config.command("show")
@_patch_option
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON: {key: {value, origin}}.")
def config_show(patches, configs, as_json) -> None:
    """Print the merged config, each value with the layer it came from."""
    resolved = _resolve_or_exit(configs, patches)
    leaves = resolved.leaves()
    if as_json:
        data = {key: {"value": value, "origin": origin} for key, value, origin in leaves}
        click.echo(json.dumps(data, indent=2))
        return
    width = max(len(key) for key, _, _ in leaves)
    for key, value, origin in leaves:
        shown = json.dumps(value) if not isinstance(value, str) else value
        click.echo(f"{key:<{width}}  {shown:<24}  # {origin}")


@main.command("demo-data")
@click.option("--markets", default=None, help="Comma-separated market codes (default: all).")
@click.option("--products", "n_products", default=240, show_default=True, type=int)
@click.option("--seed", default=42, show_default=True, type=int)
@click.option(
    "--as-of",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    help="Write sales through the last complete week before this day (default: today).",
)
def demo_data_command(markets, n_products, seed, as_of) -> None:
    """Write the SYNTHETIC demo sales and catalogs to the storage root."""
    from toolkit.pricing import demo_data

    chosen = [m.strip().upper() for m in markets.split(",")] if markets else None
    day = as_of.date() if as_of else None
    for market, urls in demo_data.write(chosen, n_products, seed, as_of=day).items():
        click.echo(
            f"{market}: {urls['sales']} ({urls['rows']:,} rows through "
            f"{urls['last_day']:%Y-%m-%d}), {urls['catalog']}"
        )


@main.group("sources")
def sources_group() -> None:
    """The raw tables a run reads (load_transform.sources)."""


@sources_group.command("check")
@_patch_option
@_config_option
def sources_check(patches, configs) -> None:
    """Read a run's sources and check them, without running anything: rows, dates,
    products and problems (exit status 1 when there are any)."""
    from toolkit.data import sources, storage
    from toolkit.pricing import transform

    resolved = _resolve_or_exit(configs, patches)
    cfg, section = resolved.config, resolved.section("load_transform")
    run = {"market": cfg.country, "period": cfg.period, "root": storage.root()}
    found = {name: sources.summarise(name, section["sources"], run) for name in sources.TABLES}
    for summary in found.values():
        for line in summary.lines():
            click.echo(line)
    problems = sum(len(summary.problems) for summary in found.values())
    sales, catalog = found["sales"].frame, found["catalog"].frame
    if sales is not None:
        try:
            window = transform.history(
                sales, cfg.period, section["history_weeks"], section["max_gap_weeks"]
            )
            click.echo(window.describe())
        except ValueError as exc:
            click.echo(f"problem: {exc}")
            problems += 1
    if sales is not None and catalog is not None:
        unknown = sorted(set(sales["product_id"]) - set(catalog["product_id"]))
        if unknown:  # the run leaves them out; worth knowing, not an error
            click.echo(f"note: {len(unknown)} products sold are not in the catalog: {unknown[:5]}")
    click.echo(f"{problems} problem{'s' * (problems != 1)}" if problems else "no problems")
    if problems:
        sys.exit(1)


_name_option = click.option(
    "--name",
    default=None,
    help=f"A short name for the run, shown in lists (at most {record_mod.NAME_MAX} characters).",
)
_note_option = click.option(
    "--note",
    default=None,
    help=f"Why this run, in a sentence or two (at most {record_mod.NOTE_MAX} characters).",
)


def _labels_or_exit(name, note) -> dict:
    """The run's name and note as stored, or a one-line usage error."""
    labels = {}
    for option, check, text in (
        ("name", record_mod.check_name, name),
        ("note", record_mod.check_note, note),
    ):
        try:
            labels[option] = check(text)
        except record_mod.LabelError as exc:
            _usage_exit(f"--{option}: {exc}")
    return labels


@main.command("run")
@_patch_option
@_config_option
@_name_option
@_note_option
@click.option("--force", is_flag=True, help="Re-execute every step, ignoring the cache.")
@click.option("--run-id", default=None, hidden=True, help="Use this id (the app picks one).")
@click.option(
    "--executor",
    type=click.Choice(["serial", "dask"]),
    default=None,
    help="Where steps run (default: config execution.executor).",
)
@click.option("--workers", type=int, default=None, help="Dask LocalCluster workers.")
@click.option("--scheduler", default=None, help="Dask scheduler address, e.g. tcp://host:8786.")
def run_command(patches, configs, name, note, force, run_id, executor, workers, scheduler) -> None:
    """Run the pipeline: prints the run id, progress per step and where outputs are."""
    from toolkit.runs import runner

    labels = _labels_or_exit(name, note)
    resolved = _resolve_or_exit(configs, patches)
    executor, options = _executor_choice(resolved, executor, workers, scheduler)
    try:
        record = runner.start(
            resolved,
            configs,
            patches,
            force=force,
            run_id=run_id,
            executor=executor,
            executor_options=options,
            progress=_progress,
            **labels,
        )
    except runner.RunFailed as exc:
        click.echo(f"\n{exc}", err=True)
        sys.exit(1)
    except runner.LeaseError as exc:  # another process owns the run: this one stopped
        click.echo(f"\n{exc}", err=True)
        sys.exit(1)
    except (*storage_errors(), *_dask_errors()) as exc:  # evaluated only on an error
        click.echo(f"run failed: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo(
            "\ninterrupted; `toolkit runs list` shows the run, `toolkit resume RUN` finishes it",
            err=True,
        )
        sys.exit(130)
    click.echo("")
    click.echo(runner.summary(record))


def _executor_choice(resolved, executor, workers, scheduler):
    execution = resolved.config.execution
    name = executor or getattr(execution, "executor", "serial")
    options = {}
    if name == "dask":
        options = {
            "workers": workers or getattr(execution, "workers", 2),
            "scheduler": scheduler or getattr(execution, "scheduler", None),
            "retries": getattr(execution, "retries", 2),
        }
    return name, options


@main.command("backfill")
@click.option("--market", "markets", default=None, help="Comma-separated market codes: US,DE,FR.")
@click.option(
    "--period",
    "periods",
    default=None,
    help="Months: a range 2026-01..2026-06, a list 2026-01,2026-03, or both mixed.",
)
@click.option(
    "--category",
    "categories",
    default=None,
    help="Comma-separated categories; 'all' means no filter (default: all).",
)
@_patch_option
@_config_option
@click.option(
    "--executor",
    type=click.Choice(["serial", "dask"]),
    default=None,
    help="serial: one run after another; dask: all at once on one cluster "
    "(default: config execution.executor; on --resume, the backfill's).",
)
@click.option(
    "--workers", type=click.IntRange(min=1), default=None, help="Dask LocalCluster workers."
)
@click.option("--scheduler", default=None, help="Dask scheduler address, e.g. tcp://host:8786.")
@click.option(
    "--resume",
    "resume",
    is_flag=True,
    help="Resume the latest backfill: its failed and interrupted runs, and the runs "
    "that never started.",
)
@click.option("--id", "backfill_id", default=None, help="With --resume: this backfill's id.")
def backfill_command(
    markets,
    periods,
    categories,
    patches,
    configs,
    executor,
    workers,
    scheduler,
    resume,
    backfill_id,
) -> None:
    """One run per market x period x category; prints progress and a summary table.

    Exit status 1 when any run did not succeed, 2 for invalid arguments or config.
    """
    from toolkit.runs import backfill as backfill_mod

    if backfill_id and not resume:
        _usage_exit("--id names the backfill to resume; add --resume")
    if not resume and (not markets or not periods):
        _usage_exit("give --market and --period (or --resume)")
    try:
        results = backfill_mod.backfill(
            markets or (),
            periods or (),
            categories,
            configs,
            patches,
            executor=executor,
            executor_options={"workers": workers, "scheduler": scheduler},
            progress=_progress,
            resume=(backfill_id or True) if resume else False,
        )
    except (backfill_mod.BackfillError, config_mod.ConfigError) as exc:
        _usage_exit(str(exc))
    except backfill_mod.BackfillInterrupted as exc:
        click.echo("\n" + backfill_mod.summary_table(exc.results))
        click.echo(
            f"\ninterrupted; `toolkit backfill --resume --id {exc.results[0]['backfill']}` "
            "goes on from here",
            err=True,
        )
        sys.exit(130)
    except (*storage_errors(), *_dask_errors()) as exc:
        click.echo(f"backfill failed: {exc}", err=True)
        sys.exit(1)
    click.echo("\n" + backfill_mod.summary_table(results))
    if any(r["status"] != "succeeded" for r in results):
        sys.exit(1)


def _usage_exit(message: str) -> None:
    click.echo(message, err=True)
    sys.exit(2)


def _dask_errors():
    try:
        from toolkit.scale.dask_executor import DaskUnavailable
    except ImportError:  # no Dask installed: the error says so when it is asked for
        return ()
    return (DaskUnavailable,)


def storage_errors():
    from toolkit.data.storage import StorageError

    return (StorageError,)


def _progress(message: str) -> None:
    click.echo(message, err=False)


@main.command("resume")
@click.argument("run_id")
def resume_command(run_id) -> None:
    """Finish an interrupted or failed run, re-executing only its unfinished steps."""
    from toolkit.runs import runner
    from toolkit.runs import store as runs

    try:
        record = runner.resume(run_id, progress=_progress)
    except runs.RunNotFound as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    except (RuntimeError, *storage_errors()) as exc:  # RunFailed, RunBusy, LeaseLost
        click.echo(str(exc), err=True)
        sys.exit(1)
    click.echo(runner.describe(record))


@main.command("summary")
@click.argument("run_id", required=False)
def summary_command(run_id) -> None:
    """Top changes, forecast error and outputs of a run (default: the latest that succeeded)."""
    from toolkit.runs import runner

    record = _record_or_exit(run_id) if run_id else _latest_succeeded()
    click.echo(runner.summary(record))


def _latest_succeeded():
    from toolkit.runs import store as runs

    for record in runs.list_runs():
        if record.status == "succeeded":
            return record
    click.echo("no succeeded run yet; start one with `toolkit run`", err=True)
    sys.exit(2)


def _record_or_exit(run_id):
    from toolkit.runs import store as runs

    try:
        return runs.load(run_id)
    except runs.RunNotFound as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)


@main.group("runs")
def runs_group() -> None:
    """List, inspect, compare and cancel runs."""


_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


@runs_group.command("list")
@_json_option
@click.option("--status", default=None, help="Only runs with this status.")
@click.option("--market", default=None, help="Only runs for this market.")
def runs_list(as_json, status, market) -> None:
    """Runs, newest first: status, market, period, launcher, start, duration."""
    from toolkit.runs import store as runs

    rows = [runs.summary_row(r) for r in runs.list_runs()]
    rows = [
        r
        for r in rows
        if (not status or r["status"] == status) and (not market or r["market"] == market.upper())
    ]
    if any(r["status"] == "queued" for r in rows):
        from toolkit.runs import queue

        places = queue.positions()
        for r in rows:
            r["position"] = places.get(r["id"])
        # The queue on top, in the order it starts; the rest newest first, as listed.
        rows.sort(key=lambda r: (r["position"] is None, r["position"] or 0))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no runs yet")
        return
    header = (
        f"{'RUN':<40} {'STATUS':<12} {'MARKET':<6} {'PERIOD':<8} {'LAUNCHER':<12} "
        f"{'STARTED':<20} {'DURATION':>9}"
    )
    click.echo(header)
    for r in rows:
        started = (r["started_at"] or "")[:19].replace("T", " ")
        if r.get("position"):
            started = f"queued, #{r['position']}"
        duration = f"{r['duration_s']:.0f}s" if r["duration_s"] is not None else "-"
        click.echo(
            f"{r['id']:<40} {r['status']:<12} {r['market'] or '-':<6} "
            f"{r['period'] or '-':<8} {str(r['launcher'] or '-')[:12]:<12} "
            f"{started:<20} {duration:>9}"
        )


@runs_group.command("show")
@click.argument("run_id")
@_json_option
def runs_show(run_id, as_json) -> None:
    """Effective config with origins, each step's status, timing and outputs."""
    from toolkit.runs import deliveries, runner
    from toolkit.runs import store as runs

    record = _record_or_exit(run_id)
    if as_json:
        stored = record.model_dump(mode="json")  # URLs resolved against this root
        out = {
            **runs.summary_row(record),
            **{
                key: stored[key]
                for key in ("config", "origins", "steps", "delivery", "error", "versions")
            },
            "git_commit": record.git_commit,
        }
        click.echo(json.dumps(out, indent=2, default=str))
        return
    row = runs.summary_row(record)
    click.echo(
        f"run {row['id']}: {row['status']}, {row['market']} {row['period']} "
        f"{row['category'] or 'all'}, launched by {row['launcher']}, "
        f"{row['duration_s'] or 0:.0f}s"
    )
    for label in ("name", "note"):
        if getattr(record, label):
            click.echo(f"{label}: {getattr(record, label)}")
    click.echo("\nconfig:")
    for key, origin in record.origins.items():
        click.echo(f"  {key} = {json.dumps(_lookup(record.config, key))}  # {origin}")
    click.echo("\nsteps:")
    for name, step in record.steps.items():
        reused = f" (reused from {step.reused_from})" if step.reused else ""
        timing = f" {step.duration_s}s" if step.duration_s is not None else ""
        click.echo(f"  {name}: {step.status}{reused}{timing} key={step.cache_key}")
        for key, url in step.outputs.items():
            click.echo(f"    {key}: {url}")
    if record.delivery is not None:
        click.echo(f"\ndelivery: {deliveries.describe(record.delivery.model_dump())}")
    if record.status != "succeeded":
        click.echo("")
        click.echo(runner.explain_failure(record))


def _lookup(data, dotted):
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


@runs_group.command("logs")
@click.argument("run_id")
@click.option("--step", default=None, help="Also print this step's notebook output.")
def runs_logs(run_id, step) -> None:
    """The run's events, errors and, with --step, a step's notebook output."""
    from toolkit.runs import reports

    record = _record_or_exit(run_id)
    click.echo(reports.run_log(record, step))


@runs_group.command("diff")
@click.argument("run_a")
@click.argument("run_b")
@_json_option
def runs_diff(run_a, run_b, as_json) -> None:
    """Config differences and KPI deltas between two runs."""
    from toolkit.runs import reports

    diff = reports.diff_runs(_record_or_exit(run_a), _record_or_exit(run_b))
    if as_json:
        click.echo(json.dumps(diff, indent=2, default=str))
        return
    click.echo(reports.diff_text(diff))


@runs_group.command("cancel")
@click.argument("run_id")
def runs_cancel(run_id) -> None:
    """Stop a queued or running run now; its process stops within one heartbeat."""
    from toolkit.runs import queue, runner

    status = _record_or_exit(run_id).status
    if status not in ("succeeded", "failed", "cancelled"):
        try:
            status = queue.cancel(run_id).status
        except (*storage_errors(), runner.LeaseError) as exc:
            click.echo(f"cannot cancel {run_id}: {exc}", err=True)
            sys.exit(1)
        if status == "cancelled":
            click.echo(f"cancelled run {run_id}")
            return
    click.echo(f"run {run_id} already {status}; nothing to cancel")


@main.command("submit")
@_patch_option
@_config_option
@_name_option
@_note_option
@click.option(
    "--priority",
    type=click.IntRange(0, 9),
    default=0,
    show_default=True,
    help="Higher starts first; equal priorities start in submission order.",
)
def submit_command(patches, configs, name, note, priority) -> None:
    """Queue a run for a worker (`toolkit worker`); prints its id at once."""
    from toolkit.runs import queue

    labels = _labels_or_exit(name, note)
    resolved = _resolve_or_exit(configs, patches)
    try:
        record = queue.submit(resolved, configs, patches, priority=priority, **labels)
    except storage_errors() as exc:
        click.echo(f"submit failed: {exc}", err=True)
        sys.exit(1)
    click.echo(record.id)


@main.command("worker")
@click.option(
    "--slots",
    type=click.IntRange(min=1),
    default=None,
    help="Runs at once (default: one per core, within memory at 2 GiB a run).",
)
@click.option(
    "--executor",
    type=click.Choice(["serial", "dask"]),
    default=None,
    help="Where a run's steps execute (default: config execution.executor).",
)
@click.option("--scheduler", default=None, help="Dask scheduler address, e.g. tcp://host:8786.")
@click.option(
    "--grace",
    "grace_seconds",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds running runs may finish after SIGTERM before they are handed back.",
)
@click.option("--no-schedules", is_flag=True, help="Do not fire configs/schedules.yaml.")
def worker_command(slots, executor, scheduler, grace_seconds, no_schedules) -> None:
    """Run queued runs until SIGTERM or Ctrl-C (then hand unfinished ones back)."""
    from toolkit.data import storage
    from toolkit.runs import worker

    # The operator's choice: the command line, else configs/ (never a submission).
    name, executor_options = _executor_choice(_resolve_or_exit((), ()), executor, None, scheduler)
    options = worker.Options(
        executor=name,
        executor_options=executor_options,
        grace_seconds=grace_seconds,
        schedules=not no_schedules,
    )
    if slots:
        options.slots = slots
    worker.Worker(storage.root(), options, progress=_progress).run()


@main.group("schedules")
def schedules_group() -> None:
    """Runs on a calendar, from configs/schedules.yaml."""


def _schedules_or_exit():
    from toolkit.runs import schedules

    try:
        return schedules.load()
    except schedules.ScheduleError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)


def _time_or_exit(value: str | None):
    import datetime as dt

    if value is None:
        return dt.datetime.now(dt.UTC)
    try:
        at = dt.datetime.fromisoformat(value)
    except ValueError:
        _usage_exit(f"--now {value!r}: expected an ISO time such as 2026-12-01T06:00:00+01:00")
    return at if at.tzinfo else at.replace(tzinfo=dt.UTC)


@schedules_group.command("list")
@click.option("--now", default=None, help="Next fire times after this ISO time (default: now).")
@_json_option
def schedules_list(now, as_json) -> None:
    """Each schedule, its next fire time and what it last fired."""
    from toolkit.data import storage
    from toolkit.runs import schedules

    at, root = _time_or_exit(now), storage.root()
    rows = []
    for schedule in _schedules_or_exit():
        last = schedules.last_fired(schedule, root)
        rows.append(
            {
                "name": schedule.name,
                "enabled": schedule.enabled,
                "cron": f"{schedule.cron} ({schedule.timezone})",
                "next_fire": schedules.next_fire(schedule, at).isoformat(),
                "last_fire": last["fire_at"] if last else None,
                "last_runs": last["runs"] if last else [],
                "run_as": schedule.run_as,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no schedules in configs/schedules.yaml")
    for r in rows:
        state = "" if r["enabled"] else "  (disabled)"
        click.echo(
            f"{r['name']}: {r['cron']}, next {r['next_fire']}, last {r['last_fire'] or '-'}, "
            f"runs as {r['run_as']}{state}"
        )


@schedules_group.command("tick")
@click.option("--now", default=None, help="Fire what is due at this ISO time (default: now).")
def schedules_tick(now) -> None:
    """Fire what is due now; the same tick twice submits nothing twice."""
    from toolkit.runs import schedules

    _schedules_or_exit()  # a broken file: one line, exit 2
    try:
        fired = schedules.tick(_time_or_exit(now))
    except (*storage_errors(), config_mod.ConfigError) as exc:
        click.echo(f"tick failed: {exc}", err=True)
        sys.exit(1)
    for item in fired:
        click.echo(str(item))
    if not fired:
        click.echo("nothing due")


# The data scientist's commands: dev, new-step, validate, schemas.
from toolkit.cli import dev as cli_dev  # noqa: E402 - registers on the group defined above

cli_dev.register(main)


if __name__ == "__main__":
    main()
