"""Run the benchmark suite and write the results table and plot.

    python -m benchmarks            # make bench: sizes x1/x10/x100 up to 10M sales rows
    python -m benchmarks --quick    # make bench-quick: tiny sizes, one measured round

Benchmarks measure and report; they never fail on a slow result.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks import bench_pipeline, breakdown, report
from benchmarks.harness import Row

HERE = Path(__file__).resolve().parent
FULL = {
    "sizes": (80, 800, 8000),
    "rounds": 3,
    "s3_size": 800,
    "tweak_sizes": (80, 800, 8000),
    "parts": "pipeline,breakdown,app,service,dask",
}
# Quick: no S3 (one more full run) and no Dask (minutes on its own) to stay within minutes.
QUICK = {
    "sizes": (10, 100),
    "rounds": 1,
    "s3_size": 0,
    "tweak_sizes": (10, 100),
    "parts": "pipeline,breakdown,app,service",
}


def _parse(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one measured round")
    parser.add_argument("--sizes", help="products per size, comma-separated (x1,x10,x100)")
    parser.add_argument("--rounds", type=int, help="measured rounds after the warm-up")
    parser.add_argument("--s3-size", type=int, help="products for B4 (0: skip B4)")
    parser.add_argument(
        "--only", help="parts to run, comma-separated: pipeline,breakdown,app,service,dask"
    )
    parser.add_argument("--out", help="results file (default benchmarks/results[-quick].md)")
    parser.add_argument("--workdir", help="keep roots, logs and data here (default: a temp dir)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(argv)
    # `kill` stops the benchmark like Ctrl-C: the command being measured is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    preset = QUICK if args.quick else FULL
    sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else preset["sizes"]
    rounds = args.rounds or preset["rounds"]
    s3_size = preset["s3_size"] if args.s3_size is None else args.s3_size
    if s3_size and s3_size not in sizes:
        s3_size = sizes[min(1, len(sizes) - 1)]
    out = Path(args.out or HERE / ("results-quick.md" if args.quick else "results.md"))
    parts = {p.strip() for p in (args.only or preset["parts"]).split(",") if p.strip()}
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="toolkit-bench-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["PLOOMBER_STATS_ENABLED"] = "false"
    os.environ["PLOOMBER_VERSION_CHECK_DISABLED"] = "1"

    context = {
        "mode": "quick" if args.quick else "full",
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_before": os.getloadavg(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}",
        "sizes": sizes,
        "rounds": rounds,
        "commit": _commit(),
    }
    rows: list[Row] = []
    notes: dict = {}
    print(f"benchmarks ({context['mode']}): sizes {sizes}, {rounds} round(s), work in {workdir}")
    started = time.perf_counter()
    try:
        if "pipeline" in parts:
            settings = bench_pipeline.Settings(
                sizes=sizes,
                rounds=rounds,
                s3_size=s3_size or None,
                workdir=workdir / "pipeline",
                full_warmup=not args.quick,
                tweak_sizes=tuple(n for n in preset["tweak_sizes"] if n in sizes) or sizes[:1],
            )
            rows += _guarded("B1-B4, B6, Ploomber", lambda: bench_pipeline.run(settings))
        if "breakdown" in parts:
            found = _guarded(
                "breakdown",
                lambda: breakdown.run(workdir / "breakdown", 1 if args.quick else 3, args.quick),
            )
            if isinstance(found, dict):
                notes["breakdown"] = found
            else:
                rows += found
        if "app" in parts:
            from benchmarks import bench_app

            rows += _guarded("B5", lambda: bench_app.run(workdir / "app", quick=args.quick))
        if "service" in parts:
            from benchmarks import bench_service

            rows += _guarded(
                "S1-S3",
                lambda: bench_service.run(workdir / "service", sizes, rounds, quick=args.quick),
            )
        if "dask" in parts:
            rows += _guarded("Dask", lambda: _dask_rows(workdir / "dask", args.quick))
        else:
            rows.append(
                Row(
                    "Dask",
                    "backfill of 4 runs, serial / 2 Dask workers",
                    "not run",
                    "reported",
                    "skipped",
                    "not part of this run (`make bench` runs it)",
                )
            )
    finally:
        context["load_after"] = os.getloadavg()
        context["seconds"] = time.perf_counter() - started
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    report.write(out, rows, context, notes)
    print(f"wrote {out} and {out.with_suffix('.png')} in {context['seconds'] / 60:.1f} min")
    return 0


def _commit() -> str:
    import subprocess

    def git(*args):
        return subprocess.run(  # noqa: S603
            ["git", *args], cwd=HERE.parent, capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (
        "-dirty"
        if git("status", "--porcelain", "--", "toolkit", "notebooks", "pipeline.yaml", "configs")
        else ""
    )


def _guarded(label, fn):
    """A part that crashes becomes a row saying so; the other parts still run."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - reported in the results, never hidden
        traceback.print_exc()
        message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return [Row(label, f"{label} did not complete", "error", "-", "error", message[:300])]


# --- Hook: the Dask speedup benchmark (benchmarks/bench_dask.py) -------------------------
# Contract: ``bench_dask.run(workdir: Path, quick: bool) -> list[Row]`` (benchmarks.harness
# rows; ``ratio``/``target_value`` feed the plot). Without it, results.md says "pending".
def _dask_rows(workdir: Path, quick: bool) -> list[Row]:
    import importlib.util

    if importlib.util.find_spec("benchmarks.bench_dask") is None:
        return [
            Row(
                "Dask",
                "backfill of 4 runs, serial / 2 Dask workers",
                "pending",
                "reported",
                "pending",
                "benchmarks/bench_dask.py (run(workdir, quick) -> list[Row]) is not there yet",
            )
        ]
    from benchmarks import bench_dask

    return list(bench_dask.run(workdir=workdir, quick=quick))


if __name__ == "__main__":
    sys.exit(main())
