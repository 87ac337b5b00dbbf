"""Where the time of a run goes: import costs and the per-notebook cost of each engine.

Each import figure is a whole process (``python -c "import X"``), median of a few, so it
includes the interpreter start (measured alone too). The notebook figures are measured
inside one process with the engine already imported: executing a one-cell and a
21-cell trivial notebook with papermill's engine (a fresh Jupyter kernel per notebook),
with toolkit's (`toolkit.kernels`: the run's kernel kept, reset before each notebook, as
`toolkit run` does) and with ploomber-engine (in-process, no kernel).
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
    "toolkit.cli (any toolkit command: click, pydantic config)": "import toolkit.cli",
    "ploomber (papermill, nbformat, jsonschema, sqlalchemy, ...)": "import ploomber",
    "a step's own imports (pandas, pyarrow, pandera, toolkit.io)": (
        "from toolkit import io, schemas, transform"
    ),
    "statsmodels (the forecast step fits its models with it)": "import statsmodels.api",
    "a step's first contract check (+ pandera builds a schema)": (
        "from toolkit import schemas; schemas.Plan.to_schema()"
    ),
}

ENGINES = {
    "papermill": "papermill's engine, a fresh kernel per notebook",
    "toolkit-reuse": "toolkit run's engine, the run's kernel reset and reused",
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
elif engine == "toolkit-reuse":
    import papermill as pm
    from toolkit import kernels
    def execute(path):
        pm.execute_notebook(str(path), str(path.with_suffix(".out.ipynb")), kernel_name="python3",
                            progress_bar=False, log_output=False,
                            engine_name=kernels.register_engine(), kernel_key="bench")
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

# Facts about the current code that the findings depend on.
_PROBE = """
import importlib.util, inspect, json, os, pathlib, sys
import toolkit.runner as runner
import toolkit.executors as executors
import toolkit.forecasting
origin = pathlib.Path(importlib.util.find_spec("ploomber").origin).parent
print(json.dumps({
    # A run renders the DAG with Ploomber before it looks anything up in the cache.
    "plan_imports_ploomber": "load_dag" in inspect.getsource(runner._plan),
    "kernel_reused": "kernel" in inspect.getsource(runner.execute),
    "steps_without_ploomber": "notebook_task" in inspect.getsource(executors.execute_step),
    "summary_imports_statsmodels": "statsmodels" in sys.modules
    and "forecasting" in inspect.getsource(runner.summary),
    "venv_has_bytecode": any(origin.rglob("*.pyc")),
    # pandera resolves its type annotations against every backend that is installed.
    "schema_imports_dask": (
        __import__("toolkit.schemas").schemas.Plan.to_schema() is not None
        and "dask.dataframe" in sys.modules
    ),
    "dont_write_bytecode": bool(os.environ.get("PYTHONDONTWRITEBYTECODE")),
    # A run leaves a warmed-up kernel for the next (toolkit.spare_kernels).
    "spare_kernels": importlib.util.find_spec("toolkit.spare_kernels") is not None
    and os.environ.get("TOOLKIT_SPARE_KERNEL_MINUTES", "").strip() != "0",
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
            [sys.executable, "-c", _ENGINE_SCRIPT, engine, str(max(repeats, 2))],
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
        [sys.executable, "-c", _PROBE],
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
