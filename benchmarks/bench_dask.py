"""Wall time of one backfill on a local Dask cluster vs the serial executor (not a test).

    python benchmarks/bench_dask.py [REPEATS] [--quick] [--products N] [--workers N]

``python -m benchmarks`` calls ``run(workdir, quick)`` for its results table. Each
measurement is one whole ``toolkit backfill`` process (cluster start-up included) on a
fresh local storage root, so nothing comes from a cache; the demo data is written before
the clock starts. Serial and Dask alternate, their order flipping every repeat, so drift
in the machine's load hits both alike. There is no warm-up round: one backfill already
takes minutes. Prints each measurement, then a markdown row with the medians and the
ratio serial/dask. Asserts nothing.

Runs have 800 and 8,000 demo products (about 1M and 10M raw sales rows): scale-out is
for runs with real work. The cluster's own start-up (the scheduler, and two worker
processes that import Dask, toolkit and Ploomber: about 10 CPU-seconds) is a fixed cost
that weighs on small runs; the target is judged at the largest size.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
if str(PROJECT_DIR) not in sys.path:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(PROJECT_DIR))

from benchmarks.harness import Row, Sample, measure, paired_ratios, run_rounds  # noqa: E402


@dataclass
class Settings:
    """What one comparison runs."""

    workdir: Path
    repeats: int = 3
    products: int = 800
    workers: int = 2
    markets: str = "US,DE"
    periods: str = "2026-10..2026-11"

    @property
    def n_runs(self) -> int:
        """Runs in one backfill: markets x periods."""
        from toolkit.runs.backfill import parse_list, parse_periods

        return len(parse_list(self.markets)) * len(parse_periods(self.periods))


SIZES = (800, 8000)  # products per run: 1M and 10M raw sales rows
TARGET = 1.7  # serial / Dask, judged at the largest size like the other benchmarks


def run(workdir: Path, quick: bool = False) -> list[Row]:
    """The ``python -m benchmarks`` hook: a row per size (quick: the smallest, 1 repeat)."""
    sizes = SIZES[:1] if quick else SIZES
    return [
        compare(
            Settings(Path(workdir) / str(n), repeats=1 if quick else 3, products=n),
            target=TARGET if n == sizes[-1] else None,
        )
        for n in sizes
    ]


def compare(settings: Settings, progress=print, target: float | None = None) -> Row:
    """Alternate serial and Dask backfills ``settings.repeats`` times; one results row."""
    counter = itertools.count(1)

    def thunk(executor: str):
        return lambda: backfill_once(executor, settings, next(counter))

    def schedule(number: int):
        order = ("serial", "dask") if number % 2 == 0 else ("dask", "serial")
        return [(executor, thunk(executor)) for executor in order]

    progress(
        f"Dask: backfill of {settings.n_runs} runs ({settings.products} products), "
        f"{settings.workers} workers vs serial, {settings.repeats} repeat(s), "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    )
    samples = run_rounds(schedule, settings.repeats, progress=progress)
    serial = statistics.median(s.seconds for s in samples["serial"])
    dask = statistics.median(s.seconds for s in samples["dask"])
    pairs = paired_ratios(samples["serial"], samples["dask"])
    ratio = statistics.median(pairs)  # as every other ratio: the median of the pairs
    # CPU of the process tree (launcher, workers, kernels): what the speed-up costs.
    cpu = {k: statistics.median(getattr(s, "cpu", 0.0) for s in v) for k, v in samples.items()}
    return Row(
        "Dask",
        f"backfill of {settings.n_runs} runs of {settings.products:,} products, serial / "
        f"{settings.workers} Dask workers (wall time ratio, > 1: Dask faster)",
        f"{ratio:.2f}",
        f">= {target}" if target else "reported",
        ("met" if ratio >= target else "missed") if target else "reported",
        f"median serial {serial:.1f} s, Dask {dask:.1f} s over {settings.repeats} "
        f"repeat(s), no warm-up; round-by-round ratios "
        f"{', '.join(f'{p:.2f}' for p in pairs)}; CPU serial {cpu['serial']:.0f} s, "
        f"Dask {cpu['dask']:.0f} s; {os.cpu_count()} CPUs",
        ratio=ratio,
        target_value=target,
        extra={"serial_s": serial, "dask_s": dask, "pairs": pairs, "cpu_s": cpu},
    )


def backfill_once(executor: str, settings: Settings, number: int) -> Sample:
    """One timed ``toolkit backfill`` process on a fresh root with fresh demo data."""
    from toolkit.pricing import demo_data
    from toolkit.runs.backfill import parse_list

    root = settings.workdir / f"root-{number}-{executor}"
    demo_data.write(parse_list(settings.markets), n_products=settings.products, root=str(root))
    env = dict(os.environ, TOOLKIT_ROOT=str(root), PLOOMBER_STATS_ENABLED="false")
    env.pop("DASK_SCHEDULER_ADDRESS", None)  # a local cluster on this machine
    argv = [sys.executable, "-m", "toolkit.cli.commands", "backfill", "--executor", executor]
    argv += ["--market", settings.markets, "--period", settings.periods]
    if executor == "dask":
        argv += ["--workers", str(settings.workers)]
    log = settings.workdir / "logs" / f"{number}-{executor}.log"
    return measure(executor, argv, env, PROJECT_DIR, log)


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, run the comparison, print its markdown row."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repeats", nargs="?", type=int, default=3, help="measurements each")
    parser.add_argument("--quick", action="store_true", help="one measurement each")
    parser.add_argument("--products", type=int, default=800, help="demo products per market")
    parser.add_argument("--workers", type=int, default=2, help="Dask worker processes")
    parser.add_argument("--markets", default="US,DE")
    parser.add_argument("--periods", default="2026-10..2026-11")
    parser.add_argument("--workdir", help="keep roots and logs here (default: a temp dir)")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    if repeats < 1:
        parser.error("REPEATS must be at least 1")
    with tempfile.TemporaryDirectory(prefix="toolkit-bench-dask-") as scratch:
        settings = Settings(
            Path(args.workdir or scratch),
            repeats=repeats,
            products=args.products,
            workers=args.workers,
            markets=args.markets,
            periods=args.periods,
        )
        row = compare(settings)
    extra = row.extra
    print(f"\n{row.detail}\nload average {os.getloadavg()[0]:.1f} at the end\n")
    print("| runs | products | repeats | serial median | dask median | workers | serial/dask |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {settings.n_runs} | {settings.products} | {repeats} | {extra['serial_s']:.1f} s "
        f"| {extra['dask_s']:.1f} s | {settings.workers} | {row.value} |"
    )


if __name__ == "__main__":
    main()
