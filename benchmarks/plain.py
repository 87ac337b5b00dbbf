"""The floor for B1: the pipeline's step code as plain Python, one step after the other, in
one interpreter, with no orchestration, no kernels and no notebooks written.

``prepare`` (untimed set-up, uses Ploomber and jupytext) renders the DAG exactly as a run
does for a storage root, takes each step's injected parameters cell (what papermill would
run), and writes each notebook as a Python script with its ``parameters`` cell replaced by
those values::

    python -m benchmarks.plain prepare OUT_DIR [--patch key=value ...]   # TOOLKIT_ROOT set

``run`` (the timed part) only executes those scripts in order, each in a fresh namespace,
reading the same raw files and writing the same products (to a local workspace)::

    python -m benchmarks.plain run OUT_DIR

Nothing heavy is imported at module level, so ``run`` pays only for what the steps import.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

MANIFEST = "steps.json"


def prepare(out_dir: str | Path, patches: tuple[str, ...] = ()) -> list[Path]:
    """Write one script per step into ``out_dir``; products go to ``out_dir/workspace``."""
    import jupytext
    from ploomber.products import File

    from toolkit import config as config_mod
    from toolkit.dag import pipeline
    from toolkit.dev.notebooks import INJECTED_TAGS
    from toolkit.runs import runner

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    resolved = config_mod.resolve(patches=patches)
    env = runner.ploomber_env(resolved, (), patches, run_id="plain")
    env = {**env, "build_dir": str(out / "workspace")}
    dag = pipeline.load_dag(env)
    if File in dag.clients:
        del dag.clients[File]  # nothing is mirrored to storage
    dag.render(force=True, show_progress=False)
    scripts = []
    order = [step.name for step in pipeline.plan(env)]  # the order a run takes
    for position, name in enumerate(order, start=1):
        task = dag[name]
        rendered = json.loads(task.source.nb_str_rendered)
        injected = [
            "".join(cell["source"])
            for cell in rendered["cells"]
            if "injected-parameters" in cell.get("metadata", {}).get("tags", [])
        ]
        if len(injected) != 1:
            raise RuntimeError(f"{name}: expected one injected-parameters cell")
        notebook = jupytext.read(str(task.source.loc))
        cells = []
        for cell in notebook.cells:
            tags = cell.metadata.get("tags", [])
            if cell.cell_type != "code" or any(t in INJECTED_TAGS for t in tags):
                continue  # a `toolkit dev` cell left in the source: the run replaces it too
            if "parameters" in tags:
                cells.append("# parameters, as the run injects them\n" + injected[0])
            else:
                cells.append(cell.source)
        script = out / f"{position:02d}_{name}.py"
        script.write_text(f"# {name}: generated from {task.source.loc}\n\n" + "\n\n".join(cells))
        Path(str(task.product["nb"])).parent.mkdir(parents=True, exist_ok=True)
        scripts.append(script)
    (out / MANIFEST).write_text(json.dumps([s.name for s in scripts], indent=2))
    return scripts


def run(out_dir: str | Path) -> None:
    """Execute the prepared scripts in order in this interpreter."""
    import matplotlib

    matplotlib.use("Agg")  # no display; figures are built but never rendered to PNG
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    for name in json.loads((out / MANIFEST).read_text()):
        path = out / name
        started = time.perf_counter()
        code = compile(path.read_text(), str(path), "exec")
        exec(code, {"__name__": "__main__", "__file__": str(path)})  # noqa: S102
        plt.close("all")
        # Parsed by the benchmarks to compare with each step's time in `toolkit run`.
        print(f"[plain] {path.stem[3:]}: done in {time.perf_counter() - started:.2f}s", flush=True)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.plain", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare", help="write the step scripts (uses Ploomber)")
    prep.add_argument("out_dir")
    prep.add_argument("--patch", action="append", default=[], help="key.path=value")
    execute = commands.add_parser("run", help="execute the step scripts in order")
    execute.add_argument("out_dir")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        for script in prepare(args.out_dir, tuple(args.patch)):
            print(script)
    else:
        run(args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
