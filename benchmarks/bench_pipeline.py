"""B1-B4, B6 and Ploomber: `toolkit run` against its floor and against `ploomber build`, the
tweak loop, no-op, scaling and S3.

One session of rounds; each round runs, in order (swapped every other round):

* at every size: the plain floor and a forced full `toolkit run` (B1; B3 between sizes)
* at the first and the largest size, next to the full run: `ploomber build --force` of the
  same ``pipeline.yaml`` on the same data (Ploomber row), its workspace in a private folder
* at each tweak size, right after the full run: a weight-only tweak
  (``--patch optimize.weights.margin=<new value>``, B2) and the same command again, every
  step cached (B6)
* at the S3 size, next to the local full run: the same full run with the root on moto's
  S3 server (B4)

so each ratio compares two processes that ran back to back under the same machine load.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness import Row, Sample, measure, median, paired_ratios, run_rounds

PROJECT_DIR = Path(__file__).resolve().parent.parent
MARKET = "US"
DAYS = 1274  # daily rows per product in the demo data
BUCKET = "toolkit-bench"
TWEAKED = ("optimize", "format_output")  # what a weights patch re-executes (B2)

_STEP_DONE = re.compile(r"^(?:\[\d+/\d+\]|\[plain\]) (\w+): done in ([\d.]+)s", re.M)
# The table `ploomber build` prints at the end: "<task>  True  <elapsed s>  <percentage>".
_PLOOMBER_TASK = re.compile(r"^(\w+)\s+True\s+([\d.]+)\s+[\d.]+\s*$", re.M)


@dataclass
class Settings:
    sizes: tuple[int, ...]  # products per size: x1, x10, x100
    rounds: int
    s3_size: int | None  # None: no S3 benchmark
    workdir: Path
    python: str = sys.executable
    full_warmup: bool = True  # False (quick): warm up only the plain, full and Ploomber runs
    tweak_sizes: tuple[int, ...] = ()  # B2 and B6 at these sizes (default: the smallest)

    @property
    def ploomber_sizes(self) -> tuple[int, ...]:
        """`ploomber build` next to the full run: at the first size and at the largest."""
        return tuple(dict.fromkeys((self.sizes[0], self.sizes[-1])))


def base_env(root: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TOOLKIT_"))}
    env.update(
        TOOLKIT_ROOT=root,
        PLOOMBER_STATS_ENABLED="false",
        PLOOMBER_VERSION_CHECK_DISABLED="1",
        PYTHONUNBUFFERED="1",
        MPLBACKEND="Agg",
    )
    return env


def write_demo_data(python: str, root: Path, n_products: int) -> None:
    """The synthetic raw data for one market, unless ``root`` already has it."""
    if (root / "raw" / f"market={MARKET}" / "sales.parquet").exists():
        return
    code = (
        "import sys; from toolkit.pricing import demo_data; "
        f"demo_data.write([{MARKET!r}], n_products={n_products}, seed=42, root=sys.argv[1])"
    )
    subprocess.run(  # noqa: S603
        [python, "-c", code, str(root)],
        cwd=PROJECT_DIR,
        env=base_env(str(root)),
        check=True,
        stdout=subprocess.DEVNULL,
    )


def prepare_plain(python: str, root: Path, out_dir: Path) -> None:
    subprocess.run(  # noqa: S603
        [python, "-m", "benchmarks.plain", "prepare", str(out_dir)],
        cwd=PROJECT_DIR,
        env=base_env(str(root)),
        check=True,
        stdout=subprocess.DEVNULL,
    )


class S3Server:
    """moto's S3 server on a free loopback port, in this process, with one bucket."""

    def __init__(self):
        import socket

        from moto.server import ThreadedMotoServer

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> S3Server:
        import logging

        import boto3

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request

        self.server.start()
        self.client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )
        self.client.create_bucket(Bucket=BUCKET)
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop()

    def upload_tree(self, local: Path, prefix: str) -> None:
        for path in sorted(local.rglob("*")):
            if path.is_file():
                self.client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(local)}")

    def env(self, root: str) -> dict[str, str]:
        env = base_env(root)
        env.update(
            AWS_ENDPOINT_URL=self.endpoint,
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_REGION="us-east-1",
        )
        return env


def step_times(sample: Sample) -> dict[str, float]:
    """Per-step seconds from a `toolkit run` or plain log ("<step>: done in 1.2s"), or from
    the table a `ploomber build` prints at the end."""
    text = sample.log.read_text(errors="replace") if sample.log else ""
    found = _STEP_DONE.findall(text) or _PLOOMBER_TASK.findall(text)
    return {name: float(seconds) for name, seconds in found}


def run(settings: Settings, progress: Callable[[str], None] = print) -> list[Row]:
    work = settings.workdir
    python = settings.python
    base, sizes = settings.sizes[0], settings.sizes
    roots = {n: work / f"root-{n}" for n in sizes}
    plains = {n: work / f"plain-{n}" for n in sizes}
    logs = work / "logs"
    for n in sizes:
        progress(f"set-up: {n} products ({n * DAYS:,} raw sales rows)")
        write_demo_data(python, roots[n], n)
        prepare_plain(python, roots[n], plains[n])

    toolkit = [python, "-m", "toolkit.cli.commands", "run"]
    rng = random.Random()  # a new margin every time, so a tweak is never already cached
    used: set[str] = set()

    def new_margin() -> str:
        while True:
            value = f"{rng.uniform(0.05, 0.95):.6f}"
            if value not in used:
                used.add(value)
                return value

    counter = iter(range(10**6))

    def command(name: str, argv: list[str], env: dict[str, str]) -> tuple[str, Callable]:
        def thunk() -> Sample:
            log = logs / f"{next(counter):03d}-{name.replace('@', '-')}.log"
            return measure(name, argv, env, PROJECT_DIR, log)

        return name, thunk

    def plain(n: int):
        argv = [python, "-m", "benchmarks.plain", "run", str(plains[n])]
        return command(f"plain@{n}", argv, base_env(str(roots[n])))

    def full(n: int):
        return command(f"full@{n}", [*toolkit, "--force"], base_env(str(roots[n])))

    # The venv's `ploomber` script, as a data scientist types it; products mirrored to the
    # same root (its builds/), the local workspace private to the benchmark.
    ploomber_build = [str(Path(python).parent / "ploomber"), "build", "--force"]

    def ploomber(n: int):
        argv = [*ploomber_build, "--env--build_dir", str(work / f"build-{n}")]
        return command(f"ploomber@{n}", argv, base_env(str(roots[n])))

    tweak_sizes = settings.tweak_sizes or (base,)

    def tweak_pair(n: int, margin: str):
        argv = [*toolkit, f"--patch=optimize.weights.margin={margin}"]
        env = base_env(str(roots[n]))
        return [command(f"tweak@{n}", argv, env), command(f"noop@{n}", argv, env)]

    with S3Server() if settings.s3_size else contextlib.nullcontext() as s3:
        if s3 is not None:
            s3.upload_tree(roots[settings.s3_size] / "raw", "s3root/raw")

        def s3_full():
            env = s3.env(f"s3://{BUCKET}/s3root")
            return command(f"s3@{settings.s3_size}", [*toolkit, "--force"], env)

        def schedule(number: int):
            steps = []
            for n in sizes:
                group = [plain(n), full(n)]
                if number % 2:
                    group.reverse()  # A B, then B A: no command always runs second
                if n in tweak_sizes:
                    at = [name for name, _ in group].index(f"full@{n}") + 1
                    group[at:at] = tweak_pair(n, new_margin())
                if s3 is not None and n == settings.s3_size:
                    at = [name for name, _ in group].index(f"full@{n}")
                    group.insert(at + (number % 2 == 0), s3_full())
                if n in settings.ploomber_sizes:  # before the full run, then after it
                    at = [name for name, _ in group].index(f"full@{n}")
                    group.insert(at + number % 2, ploomber(n))
                steps += group
            return steps

        warmup = [plain(base), full(base), ploomber(base)]
        if settings.full_warmup:
            warmup += tweak_pair(base, new_margin())
            if s3 is not None:
                warmup.append(s3_full())
        samples = run_rounds(schedule, settings.rounds, warmup, progress)
    return rows(settings, samples)


def _spread(ratios: list[float]) -> str:
    if len(ratios) < 2:
        return ""
    return f" (rounds {min(ratios):.2f}-{max(ratios):.2f})"


def _mib(value: float) -> str:
    return f"{value / 2**20:,.0f} MiB"


def _ratio_row(
    id_: str,
    what: str,
    num: list[Sample],
    den: list[Sample],
    target: float | None,
    detail: str,
    label: str = "",
) -> Row:
    ratios = paired_ratios(num, den)
    value = statistics.median(ratios)
    cpu = statistics.median(paired_ratios(num, den, "cpu"))
    verdict = "reported" if target is None else ("met" if value <= target else "missed")
    leftover = sum(sample.leftover for sample in [*num, *den])
    if leftover:
        detail += f"; {leftover} process(es) outlived their command (killed after it)"
    return Row(
        id=id_,
        what=what,
        value=f"{value:.3f}",
        target=f"<= {target}" if target is not None else "reported",
        verdict=verdict,
        detail=(
            f"{median(num):.1f} s / {median(den):.1f} s, medians of {len(num)}"
            f"{_spread(ratios)}; CPU-time ratio {cpu:.3f}; {detail}"
        ).rstrip("; "),
        ratio=value,
        target_value=target,
        extra={"label": label} if label else {},
    )


def rows(settings: Settings, samples: dict[str, list[Sample]]) -> list[Row]:
    sizes, base = settings.sizes, settings.sizes[0]
    out = []
    for n in sizes:
        largest = n == sizes[-1]
        toolkit_steps = _median_steps(samples[f"full@{n}"])
        plain_steps = _median_steps(samples[f"plain@{n}"])
        steps = ", ".join(
            f"{name} {toolkit_steps[name]:.1f}/{plain_steps.get(name, float('nan')):.1f}"
            for name in toolkit_steps
        )
        row = _ratio_row(
            "B1",
            f"full `toolkit run --force` / plain floor, {n:,} products ({n * DAYS:,} rows)",
            samples[f"full@{n}"],
            samples[f"plain@{n}"],
            1.3 if largest else None,
            f"per step, toolkit/plain s: {steps}" if steps else "",
        )
        row.extra = {"size": n, "kind": "B1", "label": f"toolkit/plain, {n:,} products"}
        out.append(row)
    # Like B1's, the B2 and B6 targets are judged at the largest size: their ratios are a
    # fixed cost over the work, so at toy sizes they say more about start-up than use.
    tweak_sizes = settings.tweak_sizes or (base,)
    for n in tweak_sizes:
        out.append(
            _ratio_row(
                "B2",
                f"tweak (`--patch optimize.weights.margin=<new>`) / the full run, {n:,} products",
                samples[f"tweak@{n}"],
                samples[f"full@{n}"],
                0.3 if n == tweak_sizes[-1] else None,  # the CLI; the app gets a warm run service
                _executed(samples[f"tweak@{n}"], TWEAKED),
                f"tweak/full, {n:,} products",
            )
        )
    for small, large in zip(sizes, sizes[1:], strict=False):
        full_small, full_large = samples[f"full@{small}"], samples[f"full@{large}"]
        plain_small, plain_large = samples[f"plain@{small}"], samples[f"plain@{large}"]
        row = _ratio_row(
            "B3",
            f"time({large:,} products) / time({small:,}): x{large // small} data, `toolkit run`",
            full_large,
            full_small,
            float(large // small),
            f"plain floor {median(plain_large) / median(plain_small):.2f}",
        )
        row.extra = {"kind": "B3", "label": f"time x{large // small}: {small:,} -> {large:,}"}
        out.append(row)
    memory = "; ".join(
        f"{n:,} products: toolkit tree {_mib(median(samples[f'full@{n}'], 'tree_rss_peak'))} "
        f"(largest process {_mib(median(samples[f'full@{n}'], 'max_rss'))}), "
        f"plain {_mib(median(samples[f'plain@{n}'], 'max_rss'))}"
        for n in sizes
    )
    out.append(
        Row(
            "B3",
            "peak memory by size (`toolkit run` process tree; plain floor process)",
            _mib(median(samples[f"full@{sizes[-1]}"], "tree_rss_peak")),
            "reported",
            "reported",
            memory,
            extra={
                "kind": "B3-memory",
                "sizes": list(sizes),
                "rows": [n * DAYS for n in sizes],
                "toolkit_seconds": [median(samples[f"full@{n}"]) for n in sizes],
                "plain_seconds": [median(samples[f"plain@{n}"]) for n in sizes],
                "toolkit_rss": [median(samples[f"full@{n}"], "tree_rss_peak") for n in sizes],
                "plain_rss": [median(samples[f"plain@{n}"], "max_rss") for n in sizes],
            },
        )
    )
    if not settings.s3_size:
        out.append(
            Row(
                "B4",
                "full run, root on moto S3 / on local disk",
                "not run",
                "reported",
                "skipped",
                "not part of this run (`make bench` runs it)",
            )
        )
    else:
        n = settings.s3_size
        out.append(
            _ratio_row(
                "B4",
                f"full run, root on moto S3 (loopback) / on local disk, {n:,} products",
                samples[f"s3@{n}"],
                samples[f"full@{n}"],
                None,
                "moto serves from the benchmark process",
                "S3/local",
            )
        )
    for n in tweak_sizes:
        out.append(
            _ratio_row(
                "B6",
                f"no-op (same config again, all 5 steps cached) / full run, {n:,} products",
                samples[f"noop@{n}"],
                samples[f"full@{n}"],
                0.05 if n == tweak_sizes[-1] else None,
                _executed(samples[f"noop@{n}"], ()),
                f"no-op/full, {n:,} products",
            )
        )
    for n in settings.ploomber_sizes:
        toolkit_steps = _median_steps(samples[f"full@{n}"])
        ploomber_steps = _median_steps(samples[f"ploomber@{n}"])
        steps = ", ".join(
            f"{name} {toolkit_steps[name]:.1f}/{ploomber_steps.get(name, float('nan')):.1f}"
            for name in toolkit_steps
        )
        out.append(
            _ratio_row(
                "Ploomber",
                f"full `toolkit run --force` / `ploomber build --force` (same pipeline.yaml), "
                f"{n:,} products",
                samples[f"full@{n}"],
                samples[f"ploomber@{n}"],
                1.0,
                f"per step, toolkit/ploomber s: {steps}" if steps else "",
                f"toolkit/ploomber, {n:,} products",
            )
        )
    return out


def _executed(samples: list[Sample], expected: tuple[str, ...]) -> str:
    """Which steps each run executed (from its log), flagged if not the ``expected`` ones.

    A step re-executes when its cache key changes: a toolkit module or notebook edited
    while the benchmark runs changes it too, and the ratio then measures something else.
    """
    runs = [tuple(step_times(sample)) for sample in samples]
    if all(set(steps) == set(expected) for steps in runs):
        return f"executed {', '.join(expected)}" if expected else "no step executed"
    seen = "; ".join(f"round {i}: {', '.join(steps) or 'none'}" for i, steps in enumerate(runs, 1))
    other = f"other steps than {', '.join(expected)}" if expected else "steps"
    return f"**executed {other}** ({seen}): was code or data changed while the benchmark ran?"


def _median_steps(samples: list[Sample]) -> dict[str, float]:
    per_step: dict[str, list[float]] = {}
    for sample in samples:
        for name, seconds in step_times(sample).items():
            per_step.setdefault(name, []).append(seconds)
    return {name: statistics.median(v) for name, v in per_step.items()}
