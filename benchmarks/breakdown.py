"""Where the time of a run goes: import costs and the per-notebook cost of each engine.

Each import figure is a whole process (``python -c "import X"``), median of a few, so it
includes the interpreter start (measured alone too). The notebook figures are measured
inside one process with the engine already imported: executing a one-cell and a
21-cell trivial notebook with papermill and nbclient's default kernel manager (a fresh
Jupyter kernel per notebook), with papermill and
``kernel_manager_class=toolkit.dag.kernels.ReusedKernelManager`` (the process's kernel
kept and reset before each notebook: what ``pipeline.yaml`` names in every task's
``executor_params``, so what ``toolkit run`` and ``ploomber build`` both do), and with
ploomber-engine (in-process, no kernel).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.bench_pipeline import PROJECT_DIR, base_env
from benchmarks.harness import measure, median

IMPORTS = {
    "interpreter": "pass",
    "toolkit.cli.commands (any toolkit command: click, pydantic config)": (
        "import toolkit.cli.commands"
    ),
    "ploomber (papermill, nbformat, jsonschema, sqlalchemy, ...)": "import ploomber",
    # The same, its objects moved out of the collector's reach before exit: the difference
    # is the interpreter's final garbage collection over what Ploomber's import made.
    "ploomber, gc.freeze() before exit": "import ploomber, gc; gc.freeze()",
    "a step's own imports (pandas, pyarrow, pandera, toolkit.data.io)": (
        "from toolkit.data import io, schemas; from toolkit.pricing import transform"
    ),
    "statsmodels (the forecast step fits its models with it)": "import statsmodels.api",
    "a step's first contract check (+ pandera builds a schema)": (
        "from toolkit.data import schemas; schemas.Plan.to_schema()"
    ),
}

# nbclient's kernel manager for the kept kernel, as pipeline.yaml names it.
REUSED_KERNEL_MANAGER = "toolkit.dag.kernels.ReusedKernelManager"

ENGINES = {
    "papermill": "nbclient's default kernel manager, a fresh kernel per notebook",
    "reused-kernel": (
        f"kernel_manager_class={REUSED_KERNEL_MANAGER}: the process's kernel reset, not "
        "restarted (`toolkit run` and `ploomber build`)"
    ),
    "ploomber-engine": "in-process, no kernel",
}

_ENGINE_SCRIPT = r"""
import json, statistics, sys, tempfile, time
from pathlib import Path
import nbformat

engine, repeats = sys.argv[1], int(sys.argv[2])
work = Path(tempfile.mkdtemp(prefix="bench-nb-"))

def notebook(n_cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1") for _ in range(n_cells)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    path = work / f"nb{n_cells}.ipynb"
    nbformat.write(nb, path)
    return path

if engine == "papermill":
    import papermill as pm
    def execute(path):
        pm.execute_notebook(str(path), str(path.with_suffix(".out.ipynb")), kernel_name="python3",
                            progress_bar=False, log_output=False)
elif engine == "reused-kernel":
    import papermill as pm
    manager = sys.argv[3]  # a dotted path, as pipeline.yaml's executor_params give it
    def execute(path):
        pm.execute_notebook(str(path), str(path.with_suffix(".out.ipynb")), kernel_name="python3",
                            progress_bar=False, log_output=False, kernel_manager_class=manager)
else:
    import ploomber_engine as pe
    def execute(path):
        pe.execute_notebook(str(path), str(path.with_suffix(".out.ipynb")), log_output=False,
                            progress_bar=False)

result = {}
for cells in (1, 21):
    path = notebook(cells)
    execute(path)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        execute(path)
        times.append(time.perf_counter() - start)
    result[cells] = statistics.median(times)
print(json.dumps(result))
"""

# Facts about the current code and pipeline.yaml that the findings depend on.
_PROBE = """
import importlib.util, inspect, json, os, pathlib, sys
import yaml
import toolkit.dag.pipeline as pipeline
import toolkit.runs.runner as runner
import toolkit.runs.executors as executors
import toolkit.pricing.forecasting
origin = pathlib.Path(importlib.util.find_spec("ploomber").origin).parent
spec = yaml.safe_load(pathlib.Path("pipeline.yaml").read_text())
executor = spec.get("executor") or {}
print(json.dumps({
    # A run's plan (each step's source, upstream, params) is kept: a cached run skips Ploomber.
    "plan_kept": "load_dag" in inspect.getsource(pipeline.plan)
    and "PLAN_FOLDER" in inspect.getsource(pipeline.plan),
    # Every executed step is rendered and built by Ploomber...
    "steps_through_ploomber": "build_partially" in inspect.getsource(executors.execute_step),
    # ... from a DAG loaded for that step, or once per run in a process.
    "dag_per_step": "load_dag" in inspect.getsource(executors.execute_step),
    # Every task names the kept kernel's manager for nbclient...
    "kernel_manager_in_yaml": bool(spec["tasks"]) and all(
        (task.get("executor_params") or {}).get("kernel_manager_class") == sys.argv[1]
        for task in spec["tasks"]
    ),
    # ... and `ploomber build` runs every task in its own process, so kernels are kept.
    "ploomber_build_in_process": str(executor.get("dotted_path", "")).endswith("Serial")
    and executor.get("build_in_subprocess") is False,
    "summary_imports_statsmodels": "statsmodels" in sys.modules
    and "forecasting" in inspect.getsource(runner.summary),
    "venv_has_bytecode": any(origin.rglob("*.pyc")),
    # pandera resolves its type annotations against every backend that is installed.
    "schema_imports_dask": (
        importlib.import_module("toolkit.data.schemas").Plan.to_schema() is not None
        and "dask.dataframe" in sys.modules
    ),
    "dont_write_bytecode": bool(os.environ.get("PYTHONDONTWRITEBYTECODE")),
}))
"""


def run(workdir: Path, repeats: int = 3, quick: bool = False) -> dict:
    """Import costs (seconds) and per-notebook / per-cell costs of each engine.

    ``quick``: each import once, as installed only (no warm-up, no bytecode comparison).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    env = base_env(str(workdir / "root"))
    # "installed": as this venv is; "cached": with compiled bytecode available (a private
    # PYTHONPYCACHEPREFIX, written by the warm-up), which shows what compiling costs.
    cached_env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    cached_env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    kinds = {"installed": env} if quick else {"installed": env, "cached": cached_env}
    warmups = 0 if quick else 1
    imports = {}
    for label, code in IMPORTS.items():
        times: dict[str, list] = {kind: [] for kind in kinds}
        for number in range(warmups + repeats):
            for kind, environ in kinds.items():
                argv = [sys.executable, "-c", code]
                sample = measure(label, argv, environ, PROJECT_DIR, workdir / "import.log")
                if number >= warmups:
                    times[kind].append(sample)
        imports[label] = {kind: median(samples) for kind, samples in times.items()}
    engines = {}
    for engine in ENGINES:
        out = subprocess.run(  # noqa: S603
            [sys.executable, "-c", _ENGINE_SCRIPT, engine, str(max(repeats, 2))]
            + [REUSED_KERNEL_MANAGER],
            cwd=PROJECT_DIR,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        times = json.loads(out.stdout.strip().splitlines()[-1])
        one, many = times["1"], times["21"]
        engines[engine] = {"notebook": one, "per_cell": (many - one) / 20}
    probe = subprocess.run(  # noqa: S603
        [sys.executable, "-c", _PROBE, REUSED_KERNEL_MANAGER],
        cwd=PROJECT_DIR,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    loaded = json.loads(probe.stdout.strip().splitlines()[-1])
    return {
        "imports": imports,
        "engines": engines,
        "repeats": repeats,
        "quick": quick,
        "loaded": loaded,
    }


def summary_lines(data: dict) -> list[str]:
    """Markdown lines for results.md."""
    base = data["imports"]["interpreter"]
    lines = [
        "| what | seconds, as installed | seconds, bytecode cached |",
        "|---|---|---|",
    ]
    for label, seconds in data["imports"].items():
        cells = [
            f"{seconds[kind]:.2f}"
            + ("" if label == "interpreter" else f" (+{seconds[kind] - base[kind]:.2f})")
            if kind in seconds
            else "not measured (quick)"
            for kind in ("installed", "cached")
        ]
        lines.append(f"| `import` {label} | {cells[0]} | {cells[1]} |")
    for engine, costs in data["engines"].items():
        how = ENGINES.get(engine, "")
        lines.append(f"| {engine} ({how}): one trivial notebook | {costs['notebook']:.2f} | |")
        lines.append(f"| {engine}: each further trivial cell | {costs['per_cell']:.3f} | |")
    lines.append("")
    lines.append(
        f"Imports: whole processes (`python -c`), median of {data['repeats']} "
        f"{'(quick: no warm-up)' if data.get('quick') else 'after a warm-up'}; "
        '(+x) is over the bare interpreter. "Bytecode cached" runs the same with compiled '
        "`.pyc` files available (a private `PYTHONPYCACHEPREFIX`). Notebooks: one process "
        "per engine with the engine imported, median after a warm-up."
    )
    return lines
