"""results.md (the table, the method, where the time goes) and its PNG plot."""

from __future__ import annotations

from pathlib import Path

from benchmarks import breakdown
from benchmarks.harness import Row

_METHOD = """\
Every figure is a whole process (interpreter start, imports, work, exit) timed by the
benchmark; each side of a ratio is measured in the same session as the other, alternating
(A B, then B A in the next round), after a warm-up round that is discarded. A ratio is the
median of the round-by-round ratios (each pair ran back to back under the same machine
load); the seconds shown are the medians of each side. Memory is the peak of the summed
RSS of the process and all its descendants (Jupyter kernels included), polled every
50 ms with psutil, and the largest single process from `wait4` (`ru_maxrss`). Full runs
use `toolkit run --force` on a private storage root with the synthetic demo data for one
market (`toolkit.pricing.demo_data`, 1,274 daily rows per product). The plain floor
(`benchmarks/plain.py`) runs the same notebook code as plain Python in one interpreter,
with the parameters the run injects (rendered by Ploomber in an untimed set-up). The
Ploomber rows run the venv's `ploomber build --force` on the same `pipeline.yaml`, data
and root (its products mirrored to the root's `builds/`), with `--env--build_dir` in a
private folder. B2 and B6 run `toolkit run` from the CLI, as a user does. B4's S3 is
moto's server on a loopback port inside the benchmark process. A process of a command's
session still running after the command exited is killed and said so in the detail.
Nothing is asserted.
"""


def write(out: Path, rows: list[Row], context: dict, notes: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_suffix(".png")
    plotted = plot(png, rows)
    out.write_text("\n".join(markdown(rows, context, notes, png.name if plotted else None)))


def _load_warning(context: dict) -> str:
    cpus = context.get("cpus") or 1
    worst = max(context["load_before"][0], context.get("load_after", (0,))[0])
    if worst > 0.5 * cpus:
        return (
            f"**Caveat: the machine was busy** (1-minute load average up to {worst:.1f} on "
            f"{cpus} CPUs while this ran): absolute seconds are inflated and noisy; the "
            "ratios, whose two sides ran back to back, are the figures to trust, and even "
            "they move by the spread shown per row."
        )
    return f"The machine was quiet (load average at most {worst:.1f} on {cpus} CPUs)."


def markdown(rows: list[Row], context: dict, notes: dict, png: str | None) -> list[str]:
    lines = [
        "# Benchmarks",
        "",
        f"Written by `python -m benchmarks{' --quick' if context['mode'] == 'quick' else ''}` "
        f"({'make bench-quick' if context['mode'] == 'quick' else 'make bench'}) on "
        f"{context['started']}, in {context.get('seconds', 0) / 60:.0f} min; do not edit, "
        "re-run. Sizes (products, one market): "
        f"{', '.join(f'{n:,}' for n in context['sizes'])}; {context['rounds']} measured "
        "round(s) after a warm-up.",
        "",
        f"{context['machine']}, {context['cpus']} CPUs, Python {context['python']}, "
        f"commit {context.get('commit', 'unknown')}. " + _load_warning(context),
        "",
        "| id | what | result | target | verdict | detail |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [row.id, row.what, row.value, row.target, row.verdict, row.detail]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    lines += ["", "## Method", "", _METHOD]
    if isinstance(notes.get("breakdown"), dict):
        lines += ["## Where the time goes", "", *breakdown.summary_lines(notes["breakdown"]), ""]
        lines += findings(rows, notes["breakdown"])
    if png:
        lines += ["", f"![ratios, scaling and memory]({png})", ""]
    return lines


def findings(rows: list[Row], data: dict) -> list[str]:
    """What the measured breakdown says about where the time goes."""
    imports, engines, loaded = data["imports"], data["engines"], data.get("loaded", {})

    def cost(label: str, kind: str = "installed") -> float:
        key = next(k for k in imports if k.startswith(label))
        return imports[key].get(kind, float("nan")) - imports["interpreter"].get(kind, 0.0)

    kernel = engines["papermill"]["notebook"]
    engine = engines["ploomber-engine"]["notebook"]
    missed = {r.id for r in rows if r.verdict == "missed"}
    out = ["### Findings", ""]
    if not loaded.get("venv_has_bytecode") and loaded.get("dont_write_bytecode"):
        out.append(
            "* **No compiled bytecode.** The venv has no `.pyc` files (uv does not compile "
            "by default) and `PYTHONDONTWRITEBYTECODE` is set, so every process, and every "
            "Jupyter kernel, compiles every module it imports"
            + (
                f": `import ploomber` costs {cost('ploomber'):.1f} s instead of "
                f"{cost('ploomber', 'cached'):.1f} s, a step's own imports "
                f"{cost('a step'):.1f} s instead of {cost('a step', 'cached'):.1f} s"
                if "cached" in imports["interpreter"]
                else " (`make bench` measures how much)"
            )
            + ". `uv pip install --compile-bytecode` in `make install` removes it."
        )
    reused = engines.get("reused-kernel", {}).get("notebook")
    if loaded.get("steps_through_ploomber"):
        out.append(
            "* Ploomber renders and builds every step `toolkit run` executes "
            "(`toolkit.runs.executors.execute_step`: the DAG loaded from `pipeline.yaml` "
            + ("for the step" if loaded.get("dag_per_step") else "once per run and process")
            + ", then `dag.build_partially(step, force=True, skip_upstream=True)` with the "
            "upstream products it needs from storage), so a run executes each notebook "
            "exactly as `ploomber build` does; the Ploomber rows compare the two on the "
            f"same pipeline. Importing Ploomber costs {cost('ploomber'):.1f} s as installed, "
            "once per process that executes a step."
            + (
                " The plan (each step's source, upstream and params, as Ploomber renders "
                "them) is kept in `.toolkit/plans/<key>.json` under a key of everything "
                "that decides it, so a fully cached run (B6) never imports Ploomber."
                if loaded.get("plan_kept")
                else " Every run, cached or not, imports Ploomber to plan its steps before "
                "it looks anything up in the cache."
            )
        )
    if reused is not None and loaded.get("kernel_manager_in_yaml"):
        both = (
            "`toolkit run` and `ploomber build` (whose `Serial` executor builds in its own "
            "process, `build_in_subprocess: false`) both"
            if loaded.get("ploomber_build_in_process")
            else "`toolkit run`"
        )
        out.append(
            "* papermill with nbclient's default kernel manager starts a fresh kernel for "
            f"every notebook ({kernel:.1f} s for a trivial one), which then imports the "
            f"step's libraries again ({cost('a step'):.1f} s for pandas, pyarrow, pandera "
            "and toolkit.data.io; statsmodels on top for forecast). `pipeline.yaml` names "
            "`toolkit.dag.kernels.ReusedKernelManager` as nbclient's `kernel_manager_class` "
            "in every task's `executor_params` (Ploomber hands them to papermill, papermill "
            f"to nbclient), so {both} execute each further notebook in the process's kernel, "
            f"reset rather than restarted: {reused:.2f} s per further trivial notebook, the "
            "libraries imported once per process, the client kept connected. ploomber-engine "
            f"runs in-process ({engine:.2f} s) but is not used: a cell calling `os._exit` "
            "would kill the runner, and it has no cell timeout."
        )
    else:
        out.append(
            f"* Per notebook step, papermill starts a fresh kernel: {kernel:.1f} s for a "
            f"trivial notebook (ploomber-engine in-process: {engine:.2f} s), and the kernel "
            f"then imports the step's libraries again ({cost('a step'):.1f} s for pandas, "
            "pyarrow, pandera and toolkit.data.io; statsmodels on top for forecast). Five "
            "steps pay this five times; the plain floor pays the imports once and starts no "
            "kernel."
        )
    if loaded.get("schema_imports_dask"):
        extra = cost("a step's first contract") - cost("a step's own imports")
        if extra > 0.1:
            out.append(
                "* The first contract check in a kernel costs another "
                f"{extra:.1f} s: pandera's `DataFrameModel.to_schema` imports "
                "`dask.dataframe` because dask is installed (the `scale` extra), to register "
                "its Dask types."
            )
        else:
            out.append(
                "* pandera's first schema build imports `dask.dataframe` (dask is installed, "
                "the `scale` extra) to register its Dask types; `toolkit.data.schemas` builds "
                "the contracts at import, so this is part of a step's imports above, paid "
                "once per kernel."
            )
    if loaded.get("summary_imports_statsmodels"):
        out.append(
            "* The summary `toolkit run` prints at the end imports statsmodels through "
            f"toolkit.pricing.forecasting ({cost('statsmodels'):.1f} s), even when every "
            "step was cached."
        )
    if missed & {"B2", "B6"}:
        out.append(
            f"* {'/'.join(sorted(missed & {'B2', 'B6'}))} miss(es) because fixed costs do "
            "not shrink with the work: a tweak still imports Ploomber "
            f"({cost('ploomber'):.1f} s) and loads the DAG (to plan its new config, and to "
            "build its steps), starts a kernel that imports the step's libraries "
            f"({cost('a step'):.1f} s), executes two notebooks, writes records and the "
            "summary, and exits; a cached run reads the kept plan, looks up five keys and "
            "prints the summary."
        )
    if "Ploomber" in missed:
        out.append(
            "* `toolkit run --force` misses `ploomber build --force` (Ploomber rows) by what "
            "it does on top of the same notebook executions: "
            + (
                "it loads the DAG from `pipeline.yaml` once per executed step (each in a "
                "private workspace), where `ploomber build` loads it once; it "
                if loaded.get("dag_per_step")
                else "it "
            )
            + "keys each step, publishes its outputs to the cache and keeps its record "
            "and heartbeat current; and a run whose plan is not kept yet (a new config, "
            "or any edit to the project or toolkit's code) loads the DAG once more to plan."
        )
    exit_cost = cost("ploomber (") - cost("ploomber, gc.freeze")
    if exit_cost > 0.2:
        out.append(
            f"* A process that imported Ploomber spends {exit_cost:.1f} s of its exit in "
            "the interpreter's final garbage collection over the objects the import made "
            "(`import ploomber` as a whole process, with and without `gc.freeze()` before "
            "exit). `toolkit run` and `ploomber build` both pay it after their last output, "
            "and it weighs most on a tweak (B2); a fully cached run does not import Ploomber."
        )
    for row in (r for r in rows if r.id == "Dask" and r.verdict in ("met", "missed")):
        cpu = row.extra.get("cpu_s", {})
        used = (
            f"its process tree used {cpu.get('dask', float('nan')):.0f} CPU-seconds "
            f"against serial's {cpu.get('serial', float('nan')):.0f}"
        )
        lost = (
            "each worker process imports Dask, toolkit and papermill once, and the steps "
            "run slower side by side than alone (compare their durations in the runs' "
            "records): a plain Python loop runs 0-10% slower beside another on this "
            "machine, and the steps' pandas work more."
        )
        if row.verdict == "missed":
            out.append(f"* Dask misses its target ({row.value}): {used}. What is lost: {lost}")
        else:
            out.append(
                f"* Dask meets its target ({row.value}): {used}. The private cluster's "
                "housekeeping timers run 10 to 50 times rarer than Dask's defaults (its "
                "20 ms event-loop tick above all): on two cores their CPU came out of the "
                f"kernels'. What is still lost: {lost}"
            )
    if "B1" in missed:
        out.append(
            "* B1 misses because of the fixed costs above (importing Ploomber and loading "
            "the DAG, the kernel and its client, writing each executed notebook and "
            "publishing outputs), which the plain floor does not pay; they shrink relative "
            "to the work as the data grows (see B1 by size)."
        )
    out.append("")
    return out


def plot(png: Path, rows: list[Row]) -> bool:
    """Ratios against their targets; B3 time and memory against rows. False if no data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = [r for r in rows if r.ratio is not None]
    memory = next((r for r in rows if r.extra.get("kind") == "B3-memory"), None)
    if not ratios and memory is None:
        return False
    fig, axes = plt.subplots(1, 3 if memory else 1, figsize=(16 if memory else 7, 4.8))
    axes = list(axes) if memory else [axes]
    ax = axes[0]
    labels = [f"{r.id} {_short(r)}" for r in ratios]
    values = [r.ratio for r in ratios]
    colors = [
        "tab:green" if r.verdict == "met" else "tab:red" if r.verdict == "missed" else "tab:gray"
        for r in ratios
    ]
    ax.barh(range(len(values)), values, color=colors)
    for i, r in enumerate(ratios):
        if r.target_value is not None:
            ax.plot([r.target_value] * 2, [i - 0.4, i + 0.4], color="black", lw=2)
    ax.set_yticks(range(len(values)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ratio (log); black tick = target")
    ax.set_title("Ratios (green met, red missed, grey reported)")
    if memory:
        extra = memory.extra
        ax = axes[1]
        ax.semilogx(extra["rows"], extra["toolkit_seconds"], "o-", label="toolkit run")
        ax.semilogx(extra["rows"], extra["plain_seconds"], "s--", label="plain floor")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("raw sales rows")
        ax.set_ylabel("seconds (median)")
        ax.set_title("B3 time vs data size")
        ax.legend()
        ax = axes[2]
        mib = 2**20
        ax.semilogx(
            extra["rows"], [v / mib for v in extra["toolkit_rss"]], "o-", label="toolkit tree"
        )
        ax.semilogx(extra["rows"], [v / mib for v in extra["plain_rss"]], "s--", label="plain")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("raw sales rows")
        ax.set_ylabel("peak RSS, MiB")
        ax.set_title("B3 peak memory vs data size")
        ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True


def _short(row: Row) -> str:
    if row.extra.get("label"):
        return row.extra["label"]
    what = row.what.split(",")[0].replace("`", "")
    return what[:38] + ("..." if len(what) > 38 else "")
