"""Runs as a service (issue 17): load, latency from the app, and the queue's scale.

* Load: 20 runs submitted at once (20 threads, as 20 Launch clicks) to one
  `toolkit worker --slots 2`: the most runs running at once (from the records'
  started/finished times), how many succeeded, the peak summed RSS of the worker's process
  tree (psutil, every 0.2 s), and the Runs page rendered over and over meanwhile
  (AppTest, in a process of its own, as the app's): its median and 95th percentile.
* Latency: at the largest size, a weight tweak launched as the app does
  (``logic.launch.launch``) to a warm worker, timed from the click to the run page
  rendered with its results, over a forced full `toolkit run`; and the same tweak as a
  whole `toolkit run --patch ...` process, over the same full run (paired by round).
* Queue scale: with 10, 1,000 and 10,000 run records in a moto S3 bucket each (a few of
  them queued), the time a warm process takes to find the next run, claim it and read
  its record, as a ratio to the 10-record store, the sizes asked in turn; and the
  storage requests each claim makes (counted by the server).

Each measured side runs in a process of its own: ``python -m benchmarks.bench_service
{submit,render,tweak,claim} ...`` prints JSON; ``run`` drives them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

LOAD_RUNS = 20
LOAD_SLOTS = 2
CLAIMS = 7  # measured claims per store size, in turn, after one warm-up claim each
IDENTITY = ("US", "2026-11")  # env.yaml's, so the app's runs and `toolkit run` share a cache


# ---------------------------------------------------------------------------
# Driving the parts (the benchmark process)
# ---------------------------------------------------------------------------


def run(workdir: Path, sizes: tuple[int, ...], rounds: int, quick: bool = False) -> list:
    """Rows for the load (smallest size), latency (largest size) and queue-scale parts."""
    from benchmarks.harness import Row

    workdir.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    for part in (
        lambda: _load(workdir / "load", sizes[0]),
        lambda: _latency(workdir / "latency", sizes[-1], rounds),
        lambda: _queue_scale(workdir / "queue", (10, 100, 1000) if quick else (10, 1000, 10000)),
    ):
        rows += part()
    return rows


def _env(root: str, workdir: Path) -> dict[str, str]:
    from benchmarks.bench_app import _env as app_env

    return app_env(Path(root), workdir)


def _child(
    argv: list[str], env: dict[str, str], log: Path | None = None, stdin=None
) -> subprocess.Popen:
    from benchmarks.bench_pipeline import PROJECT_DIR

    return subprocess.Popen(  # noqa: S603 - our own argv
        [sys.executable, "-m", "benchmarks.bench_service", *argv],
        cwd=PROJECT_DIR,
        env=env,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=open(log, "wb") if log else subprocess.DEVNULL,  # noqa: SIM115
        text=True,
        start_new_session=True,
    )


def _json_of(child: subprocess.Popen) -> dict:
    out, _ = child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"{child.args[3:5]} exited {child.returncode}: {out[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


class _Worker:
    """`toolkit worker` in a session of its own; stopped (SIGTERM, then killed) on exit."""

    def __init__(self, env: dict[str, str], log: Path, slots: int):
        from benchmarks.bench_pipeline import PROJECT_DIR

        argv = [sys.executable, "-m", "toolkit.cli.commands", "worker", "--no-schedules"]
        argv += ["--slots", str(slots), "--grace", "0"]
        self.process = subprocess.Popen(  # noqa: S603
            argv,
            cwd=PROJECT_DIR,
            env=env,
            stdout=open(log, "wb"),  # noqa: SIM115 - the process keeps it
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.peak_rss = 0
        self._done = threading.Event()
        self._poller = threading.Thread(target=self._poll, daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        import psutil

        from benchmarks.harness import _tree_rss

        try:
            root = psutil.Process(self.process.pid)
        except psutil.Error:
            return
        while not self._done.is_set():
            self.peak_rss = max(self.peak_rss, _tree_rss(root))
            self._done.wait(0.2)

    def __enter__(self) -> _Worker:
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        with contextlib.suppress(ProcessLookupError):  # its session: anything left behind
            os.killpg(self.process.pid, signal.SIGKILL)


def _record(root: str, run_id: str) -> dict:
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
        return json.loads((Path(root) / "runs" / run_id / "record.json").read_text())
    return {}


def _wait_final(root: str, run_ids: list[str], timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        records = [_record(root, r) for r in run_ids]
        if all(r.get("status") in ("succeeded", "failed", "cancelled") for r in records):
            return records
        if time.monotonic() > deadline:
            raise TimeoutError(f"runs not finished within {timeout:.0f} s")
        time.sleep(0.5)


def _most_at_once(records: list[dict]) -> int:
    spans = [(r["started_at"], r["finished_at"]) for r in records if r.get("finished_at")]
    return max((sum(1 for s, e in spans if s <= at < e) for at, _ in spans), default=0)


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def _load(work: Path, size: int) -> list:
    from benchmarks.bench_pipeline import write_demo_data
    from benchmarks.harness import Row

    work.mkdir(parents=True, exist_ok=True)
    (work / "app.yaml").write_text("launchers: []\n")
    root = work / "root"
    write_demo_data(sys.executable, root, size)
    env = _env(str(root), work)
    stop = work / "stop-rendering"
    started = time.perf_counter()
    with _Worker(env, work / "worker.log", LOAD_SLOTS) as worker:
        render = _child(["render", "--until", str(stop)], env, work / "render.log")
        try:
            run_ids = _json_of(_child(["submit", "--count", str(LOAD_RUNS)], env))["run_ids"]
            records = _wait_final(str(root), run_ids, timeout=3600)
        finally:
            stop.touch()
            rendered = _json_of(render)
        seconds = time.perf_counter() - started
    ok = sum(1 for r in records if r["status"] == "succeeded")
    most = _most_at_once(records)
    renders = rendered["warm"]
    median, p95 = statistics.median(renders), _p95(renders)
    return [
        Row(
            "S1",
            f"load: {LOAD_RUNS} runs submitted at once to `toolkit worker --slots {LOAD_SLOTS}`,"
            f" {size:,} products: most running at once",
            str(most),
            f"<= {LOAD_SLOTS}",
            "met" if most <= LOAD_SLOTS and ok == LOAD_RUNS else "missed",
            f"{ok}/{LOAD_RUNS} succeeded in {seconds:.0f} s; peak RSS of the worker's process "
            f"tree (slots and kernels) {worker.peak_rss / 2**20:,.0f} MiB",
        ),
        Row(
            "S1",
            "load: the Runs page rendered while those runs run (AppTest, a warm app)",
            f"p95 {p95:.2f} s",
            "p95 < 2 s",
            "met" if p95 < 2 else "missed",
            f"median {median:.2f} s of {len(renders)} renders; the first (imports) "
            f"{rendered['cold']:.2f} s",
        ),
    ]


def _latency(work: Path, size: int, rounds: int) -> list:
    from benchmarks.bench_pipeline import PROJECT_DIR, _ratio_row, write_demo_data
    from benchmarks.harness import Sample, measure, run_rounds

    work.mkdir(parents=True, exist_ok=True)
    (work / "app.yaml").write_text("launchers: []\n")
    root = work / "root"
    write_demo_data(sys.executable, root, size)
    env = _env(str(root), work)
    toolkit = [sys.executable, "-m", "toolkit.cli.commands", "run"]
    rng, counter = random.Random(), iter(range(10**6))

    def margin() -> str:  # a new one every time: a tweak is never already cached
        return f"{rng.uniform(0.05, 0.95):.6f}"

    def full():
        log = work / "logs" / f"{next(counter):03d}-full.log"
        return "full", lambda: measure("full", [*toolkit, "--force"], env, PROJECT_DIR, log)

    def cli_tweak():
        log = work / "logs" / f"{next(counter):03d}-cli.log"
        argv = [*toolkit, f"--patch=optimize.weights.margin={margin()}"]
        return "cli", lambda: measure("cli", argv, env, PROJECT_DIR, log)

    def app_tweak():
        def thunk() -> Sample:
            child = _child(["tweak", "--margin", margin()], env, work / "tweak.log")
            found = _json_of(child)
            executed.append(found["executed"])
            waited.append(found["waited"])
            return Sample("app", found["seconds"], 0, 0, cpu=float("nan"))

        return "app", thunk

    executed: list[list[str]] = []
    waited: list[float] = []  # click -> the run's record says succeeded
    with _Worker(env, work / "worker.log", 1):
        # The warm-up round warms the worker's slot too (its first run).
        samples = run_rounds(
            lambda n: [full(), app_tweak(), cli_tweak()][:: 1 if n % 2 == 0 else -1],
            rounds,
            [full(), app_tweak(), cli_tweak()],
        )
    steps = ", ".join(sorted({s for e in executed[1:] for s in e})) or "none"
    return [
        _ratio_row(
            "S2",
            f"app tweak to a warm worker, click to results shown / full run, {size:,} products",
            samples["app"],
            samples["full"],
            0.15,
            f"the worker executed {steps}; click to the run finished "
            f"{statistics.median(waited[1:]):.1f} s, then the run page rendered (the rest); "
            "CPU not measured for this side (the worker's processes do the work)",
            f"app tweak/full, {size:,} products",
        ),
        _ratio_row(
            "S2",
            f"the same tweak as `toolkit run --patch ...` / full run, {size:,} products",
            samples["cli"],
            samples["full"],
            None,
            "a whole process: interpreter, imports, kernel start",
            f"CLI tweak/full, {size:,} products",
        ),
    ]


class _RequestCounter(logging.Filter):
    """Counts the requests moto's server answers (werkzeug logs one line each), with when;
    the lines are dropped, not printed."""

    def __init__(self):
        super().__init__()
        self.times: list[float] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.times.append(record.created)
        return False

    def between(self, start: float, end: float) -> int:
        return sum(1 for t in list(self.times) if start <= t <= end)


def _queue_scale(work: Path, counts: tuple[int, ...]) -> list:
    """One warm claiming process per store size, asked for one claim each in turn (the
    order rotating every round), so every size sees the same machine load."""
    from concurrent.futures import ThreadPoolExecutor

    from benchmarks.bench_pipeline import S3Server
    from benchmarks.harness import Row

    work.mkdir(parents=True, exist_ok=True)
    counter = _RequestCounter()
    server_log = logging.getLogger("werkzeug")
    seconds: dict[int, list[float]] = {n: [] for n in counts}
    requests: dict[int, list[int]] = {n: [] for n in counts}
    with S3Server() as s3, contextlib.ExitStack() as stack:
        level = server_log.level
        server_log.addFilter(counter)
        server_log.setLevel(logging.INFO)
        stack.callback(server_log.setLevel, level)
        stack.callback(server_log.removeFilter, counter)
        claimers = {}
        for count in counts:
            bucket = f"queue-{count}"  # a bucket each: the store holds this many records
            s3.client.create_bucket(Bucket=bucket)
            env = s3.env(f"s3://{bucket}/toolkit")
            queued = min(count, CLAIMS + 3)
            _json_of(_child(["submit", "--count", str(queued)], env, work / "submit.log"))
            listed = s3.client.list_objects_v2(Bucket=bucket, Prefix="toolkit/runs/")
            key = next(o["Key"] for o in listed["Contents"] if o["Key"].endswith("record.json"))
            body = json.loads(s3.client.get_object(Bucket=bucket, Key=key)["Body"].read())

            def finished(n: int, body=body, bucket=bucket) -> None:
                run_id = f"20261101-000000-US-2026-11-{n:06x}"
                done = {**body, "id": run_id, "status": "succeeded", "queue_entry": None}
                s3.client.put_object(
                    Bucket=bucket,
                    Key=f"toolkit/runs/{run_id}/record.json",
                    Body=json.dumps(done).encode(),
                )

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(finished, range(count - queued)))
            claimers[count] = stack.enter_context(_Claimer(env, work / f"claim-{count}.log"))
        for number in range(CLAIMS):
            order = counts[number % len(counts) :] + counts[: number % len(counts)]
            for count in order:
                took, (start, end) = claimers[count].claim()
                seconds[count].append(took)
                requests[count].append(counter.between(start, end))
    base = statistics.median(seconds[counts[0]])
    rows = []
    for count in counts[1:]:
        ratios = [a / b for a, b in zip(seconds[count], seconds[counts[0]], strict=True)]
        ratio = statistics.median(ratios)
        rows.append(
            Row(
                "S3",
                f"queue: find and claim the next run with {count:,} records / with "
                f"{counts[0]} (moto S3)",
                f"{ratio:.2f}",
                "<= 2",
                "met" if ratio <= 2 else "missed",
                f"{statistics.median(seconds[count]) * 1000:.0f} ms / {base * 1000:.0f} ms, "
                f"medians of {CLAIMS} claims by warm processes, sizes in turn (rounds "
                f"{min(ratios):.2f}-{max(ratios):.2f}); a claim lists the waiting runs, takes "
                f"the first's lease and reads its record: "
                f"{statistics.median(requests[count]):.0f} storage requests (with "
                f"{counts[0]} records: {statistics.median(requests[counts[0]]):.0f})",
                ratio=ratio,
                target_value=2.0,
                extra={"label": f"claim, {count:,} records / {counts[0]}"},
            )
        )
    return rows


class _Claimer:
    """A warm process that claims the next queued run each time it is asked."""

    def __init__(self, env: dict[str, str], log: Path):
        self.process = _child(["claim"], env, log, stdin=subprocess.PIPE)
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the claiming process did not start; see {log}")

    def __enter__(self) -> _Claimer:
        return self

    def claim(self) -> tuple[float, tuple[float, float]]:
        """Seconds of one claim, and its wall-clock window (to count its requests in)."""
        self.process.stdin.write("claim\n")
        self.process.stdin.flush()
        found = json.loads(self.process.stdout.readline())
        return found["seconds"], tuple(found["window"])

    def __exit__(self, *exc) -> None:
        self.process.stdin.close()  # end of input: it exits
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# ---------------------------------------------------------------------------
# The measured processes
# ---------------------------------------------------------------------------


def submit(count: int) -> dict:
    """Queue ``count`` runs at once, each with its own forecast horizon (so each executes
    steps of its own), as ``count`` Launch clicks would."""
    from concurrent.futures import ThreadPoolExecutor

    from toolkit import config
    from toolkit.runs import queue

    def one(n: int) -> str:
        patches = [f"country={IDENTITY[0]}", f"period={IDENTITY[1]}", f"forecast.horizon={4 + n}"]
        return queue.submit(config.resolve(patches=patches), (), patches).id

    with ThreadPoolExecutor(count) as pool:
        return {"run_ids": list(pool.map(one, range(count)))}


def _app_test(page: str, **query):
    """A new session of the app on ``page`` (a name of ``PAGES`` in app/ui.py), rendered."""
    from streamlit.testing.v1 import AppTest

    from benchmarks.bench_app import APP_DIR, page_script

    at = AppTest.from_file(str(APP_DIR / "main.py"), default_timeout=300)
    at.query_params.update(query)
    at.switch_page(page_script(APP_DIR, page)).run()
    if at.exception:
        raise RuntimeError(f"the {page} page raised: {at.exception[0].value}")
    return at


def render_until(stop: Path) -> dict:
    """Render the Runs page as new sessions until ``stop`` exists (at least once warm)."""
    t0 = time.perf_counter()
    _app_test("runs")
    cold = time.perf_counter() - t0
    warm: list[float] = []
    while not warm or not stop.exists():
        t0 = time.perf_counter()
        _app_test("runs")
        warm.append(time.perf_counter() - t0)
    return {"cold": cold, "warm": warm}


def tweak(margin: str) -> dict:
    """Click to results: launch a weight tweak as the app does, wait for the worker to
    finish it, render its run page. The app is warm first: the Runs page and an earlier
    run's page rendered (imports, settings)."""
    from logic import access, forms, launch

    from toolkit.runs import store as runs

    _app_test("runs")
    latest = runs.list_runs()[0].id  # the full run: its page loads what a run page needs
    _app_test("detail", run=latest)
    identity = forms.Identity(*IDENTITY)
    values = forms.values_of(forms.baseline(identity))
    values["optimize.weights.margin"] = float(margin)
    viewer, settings = access.Viewer.local_user(), access.AppSettings()
    t0 = time.perf_counter()
    run_id = launch.launch(identity, values, viewer, settings).run_id
    while (record := runs.load(run_id)).status not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.1)
    waited = time.perf_counter() - t0
    at = _app_test("detail", run=run_id)
    seconds = time.perf_counter() - t0
    if record.status != "succeeded" or not at.dataframe:
        raise RuntimeError(f"run {run_id} {record.status}; results shown: {bool(at.dataframe)}")
    executed = [name for name, step in record.steps.items() if not step.reused]
    return {"seconds": seconds, "waited": waited, "executed": executed}


def serve_claims() -> None:
    """Claim the next queued run (find it, take its lease, read its record) for each line
    on stdin, after one warm-up claim; print each claim's seconds and window."""
    from toolkit.data import storage
    from toolkit.runs import queue
    from toolkit.runs import store as runs

    root = storage.root()

    def one() -> None:
        entry = queue.pending(root)[0]
        lease = queue.claim(entry, root, runs.heartbeat_seconds())
        if lease is None:
            raise RuntimeError(f"run {entry.run_id} was taken")
        runs.load(entry.run_id, root)

    one()
    print("ready", flush=True)
    for _ in sys.stdin:
        started, t0 = time.time(), time.perf_counter()
        one()
        took = time.perf_counter() - t0
        print(json.dumps({"seconds": took, "window": [started, time.time()]}), flush=True)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_service")
    parser.add_argument("part", choices=["submit", "render", "tweak", "claim"])
    parser.add_argument("--count", type=int, default=LOAD_RUNS)
    parser.add_argument("--until", type=Path)
    parser.add_argument("--margin", default="0.5")
    args = parser.parse_args(argv)
    from benchmarks.bench_app import APP_DIR

    if str(APP_DIR) not in sys.path:  # as app/main.py and the tests do
        sys.path.insert(0, str(APP_DIR))
    if args.part in ("render", "tweak"):
        from streamlit import config as st_config

        st_config.set_option("server.address", "127.0.0.1")  # as .streamlit/config.toml says
    if args.part == "submit":
        result = submit(args.count)
    elif args.part == "render":
        result = render_until(args.until)
    elif args.part == "tweak":
        result = tweak(args.margin)
    else:
        serve_claims()
        return 0
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
