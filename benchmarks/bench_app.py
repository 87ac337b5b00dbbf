"""B5: the app's responsiveness.

* Launch -> record: the time ``logic.launch.launch`` (what the Launch button calls)
  takes until the run's record can be read back from storage. The background run it
  starts is stopped right away (its process group, by id): only the launch is measured.
* First render of a run page whose plan has 100,000 rows, with
  ``streamlit.testing.v1.AppTest``: once in a fresh process (the first visitor after the
  app starts: imports included) and then as new sessions of a warm process with
  Streamlit's data cache cleared (a run nobody has opened yet).

Each part runs in its own process: ``python -m benchmarks.bench_app {fabricate,launch,
render} ...`` prints JSON; ``run`` drives them for ``python -m benchmarks``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

PLAN_ROWS = 100_000
RUN_ID = "20261129-000000-US-2026-11-bench5"
APP_DIR = Path(__file__).resolve().parent.parent / "app"  # the app's logic: `import logic`


def _env(root: Path, workdir: Path) -> dict[str, str]:
    from benchmarks.bench_pipeline import base_env

    env = base_env(str(root))
    env["TOOLKIT_APP_LOG_DIR"] = str(workdir / "app-logs")
    env["TOOLKIT_APP_CONFIG"] = str(workdir / "app.yaml")
    return env


def _json_of(argv: list[str], env: dict[str, str]) -> dict:
    from benchmarks.bench_pipeline import PROJECT_DIR

    out = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "benchmarks.bench_app", *argv],
        cwd=PROJECT_DIR,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(workdir: Path, quick: bool = False) -> list:
    from benchmarks.bench_pipeline import write_demo_data
    from benchmarks.harness import Row

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "app.yaml").write_text("launchers: []\n")
    root = workdir / "root"
    write_demo_data(sys.executable, root, 10)  # launch refuses a market without data
    env = _env(root, workdir)
    repeats = 3 if quick else 7
    launch = _json_of(["launch", "--repeats", str(repeats)], env)
    _json_of(["fabricate", "--rows", str(PLAN_ROWS)], env)
    render = _json_of(["render", "--repeats", str(repeats)], env)
    launch_s = statistics.median(launch["seconds"])
    warm = statistics.median(render["warm"])
    return [
        Row(
            "B5",
            "app: Launch click -> the run's record exists (`logic.launch.launch`)",
            f"{launch_s:.2f} s",
            "< 1 s",
            "met" if launch_s < 1 else "missed",
            f"median of {len(launch['seconds'])} in a warm process (the app's); in a fresh "
            f"process: importing logic.launch {launch['imports']:.2f} s, first call "
            f"{launch['first']:.2f} s",
        ),
        Row(
            "B5",
            f"app: first render of a run page with a {PLAN_ROWS:,}-row plan (AppTest)",
            f"{warm:.2f} s",
            "< 2 s",
            "met" if warm < 2 else "missed",
            f"new session of a warm app, data cache cleared, median of {len(render['warm'])}; "
            f"first visitor of a freshly started app (imports included): {render['cold']:.2f} s",
        ),
    ]


# ---------------------------------------------------------------------------
# The measured processes
# ---------------------------------------------------------------------------


def measure_launch(repeats: int) -> dict:
    import os
    import signal

    started = time.perf_counter()
    from logic import access, forms, launch

    from toolkit.runs import store as runs

    imports = time.perf_counter() - started
    identity = forms.Identity("US", "2026-11")
    values = forms.values_of(forms.baseline(identity))
    viewer, settings = access.Viewer.local_user(), access.AppSettings()
    seconds = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        launched = launch.launch(identity, values, viewer, settings)
        runs.load(launched.run_id)  # the record is there for every reader
        seconds.append(time.perf_counter() - t0)
        # Only the launch is measured: stop the run it started (its own session/group).
        if os.getpgid(launched.pid) == launched.pid:
            os.killpg(launched.pid, signal.SIGTERM)
    return {"imports": imports, "first": seconds[0], "seconds": seconds[1:]}


def fabricate(rows: int) -> dict:
    """A succeeded run whose optimize output is a ``rows``-row plan (Plan contract)."""
    import datetime as dt

    import numpy as np
    import pandas as pd

    from toolkit import config as config_mod
    from toolkit.data import io, schemas, storage
    from toolkit.pricing import demo_data, optimizer
    from toolkit.runs import store as runs

    root = storage.root()
    rng = np.random.default_rng(5)
    ids = [f"P{i:06d}" for i in range(1, rows + 1)]
    categories = np.array(demo_data.CATEGORIES)[rng.integers(0, 6, rows)]
    price = np.round(rng.uniform(2, 500, rows), 2)
    cost = np.round(price * rng.uniform(0.3, 0.6, rows), 2)
    change = np.array([-0.2, -0.1, -0.05, 0.0, 0.05, 0.1])[rng.integers(0, 6, rows)]
    new = np.round(price * (1 + change), 2)
    units = np.round(rng.uniform(10, 1000, rows), 1)
    expected = np.round(units * (1 - 1.5 * change), 1)
    plan = pd.DataFrame(
        {
            "product_id": ids,
            "category": categories,
            "current_price": price,
            "new_price": new,
            "price_change": np.round((new - price) / price, 4),
            "unit_cost": cost,
            "baseline_units": units,
            "expected_units": expected,
            "baseline_revenue": units * price,
            "expected_revenue": expected * new,
            "baseline_margin": units * (price - cost),
            "expected_margin": expected * (new - cost),
            "markdown_cost": np.round(np.clip(price - new, 0, None) * expected, 2),
            "changed": np.abs(new - price) > 1e-9,
        }
    )
    catalog = pd.DataFrame(
        {
            "product_id": ids,
            "product_name": [f"Bench product {i}" for i in range(1, rows + 1)],
            "category": categories,
            "list_price": price,
            "unit_cost": cost,
            "currency": "USD",
        }
    )
    folder = storage.join(root, "bench", RUN_ID)
    outputs = {
        "load_transform": {"catalog": storage.join(folder, "catalog.parquet")},
        "optimize": {
            "data": storage.join(folder, "plan.parquet"),
            "kpis": storage.join(folder, "kpis.json"),
        },
        "format_output": {"csv": storage.join(folder, "recommendations.csv")},
    }
    io.write(catalog, outputs["load_transform"]["catalog"], schemas.Catalog)
    io.write(plan, outputs["optimize"]["data"], schemas.Plan)
    io.write_json(optimizer.plan_kpis(plan), outputs["optimize"]["kpis"])
    storage.write_bytes(outputs["format_output"]["csv"], plan.to_csv(index=False).encode())
    resolved = config_mod.resolve(patches=['country="US"', 'period="2026-11"'])
    now = dt.datetime.now(dt.UTC).isoformat()
    record = {
        "id": RUN_ID,
        "status": "succeeded",
        "market": "US",
        "period": "2026-11",
        "category": None,
        "launcher": "benchmark",
        "created_at": now,
        "started_at": now,
        "finished_at": now,
        "heartbeat_at": now,
        "heartbeat_seconds": 5.0,
        "root": root,
        "inputs": {"configs": [], "patches": []},
        "config": resolved.as_dict(),
        "origins": {key: origin for key, _, origin in resolved.leaves()},
        "steps": {
            name: {"status": "succeeded", "reused": False, "outputs": urls, "duration_s": 1.0}
            for name, urls in outputs.items()
        },
        "events": [],
        "error": None,
        "updated_at": now,
    }
    # The stored JSON is the record's contract for every reader (the app loads it through
    # toolkit.runs.store); written as such, whatever type the store keeps in memory.
    data = json.dumps(record, indent=2, allow_nan=False).encode()
    storage.write_bytes(runs.record_url(RUN_ID, root), data)
    return {"run_id": RUN_ID, "rows": rows, "changed": int(plan["changed"].sum())}


def measure_render(repeats: int) -> dict:
    from streamlit.testing.v1 import AppTest

    main, page = str(APP_DIR / "main.py"), _detail_page(APP_DIR)

    def render() -> float:
        at = AppTest.from_file(main, default_timeout=300)
        at.query_params["run"] = RUN_ID
        t0 = time.perf_counter()
        at.switch_page(page).run()
        seconds = time.perf_counter() - t0
        if at.exception:
            raise RuntimeError(f"the page raised: {at.exception[0].value}")
        if not at.dataframe:
            raise RuntimeError("the page shows no table")
        return seconds

    import streamlit as st
    from streamlit import config as st_config

    st_config.set_option("server.address", "127.0.0.1")  # as .streamlit/config.toml says
    cold = render()
    warm = []
    for _ in range(repeats):
        st.cache_data.clear()  # a run this app instance has not shown yet
        warm.append(render())
    return {"cold": cold, "warm": warm}


def _detail_page(app_dir: Path) -> str:
    return page_script(app_dir, "detail")


def page_script(app_dir: Path, name: str) -> str:
    """A page's script, as the app's router names it (``PAGES[name]`` in ui.py), read
    without importing the app so the first render still pays every import."""
    import ast

    for node in ast.walk(ast.parse((app_dir / "ui.py").read_text())):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "PAGES" for t in node.targets
        ):
            return ast.literal_eval(node.value)[name]
    raise RuntimeError("app/ui.py has no PAGES mapping")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_app")
    parser.add_argument("part", choices=["fabricate", "launch", "render"])
    parser.add_argument("--rows", type=int, default=PLAN_ROWS)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if str(APP_DIR) not in sys.path:  # as app/main.py and the tests do
        sys.path.insert(0, str(APP_DIR))
    if args.part == "fabricate":
        result = fabricate(args.rows)
    elif args.part == "launch":
        result = measure_launch(args.repeats)
    else:
        result = measure_render(args.repeats)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
