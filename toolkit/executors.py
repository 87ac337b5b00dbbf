"""Execute one step anywhere: a private workspace, upstream products fetched from storage,
the notebook run by Ploomber, outputs published to the cache. Plus the executors that
schedule such executions: in this process (serial) or on Dask (see ``DaskExecutor``).

``execute_step`` takes and returns plain data, so it runs unchanged on another machine
that shares nothing with the launcher but the storage root.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import shutil
import tempfile
import traceback
from pathlib import Path
from typing import Any

__all__ = [
    "SerialExecutor",
    "crash_point",
    "execute_step",
    "make_executor",
    "release_kernels",
]

_log = logging.getLogger(__name__)


def crash_point(name: str) -> None:
    """Fault injection for the crash tests: SIGKILL this process at a named point.

    ``TOOLKIT_CRASH_AT=<step>:<point>`` (points: before-manifest, after-publish) is read
    only here; without it this does nothing.
    """
    if os.environ.get("TOOLKIT_CRASH_AT") == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _local_products(task) -> dict[str, str]:
    serial = task.product.to_json_serializable()
    return serial if isinstance(serial, dict) else {"data": serial}


def execute_step(request: dict[str, Any]) -> dict[str, Any]:
    """Run one step of a run and publish its outputs.

    Args:
        request: ``root``, ``run_id``, ``step``, ``env`` (Ploomber env values), ``key``,
            ``attempt``, ``timeout``, ``identity``, ``upstream`` (step -> product ->
            URL of the published upstream outputs), ``kernel`` ("reuse": the run's
            kernel, kept between its steps in this process, see ``toolkit.kernels``;
            "fresh": a new kernel), ``source`` (the notebook, relative to the project,
            whose imports a prestarted kernel loads ahead) and ``sources`` (every step's
            notebook: what a spare kernel left for the next run imports, see
            ``toolkit.spare_kernels``).

    Returns:
        ``status`` ("succeeded" or "failed") with ``outputs``/``url`` or ``error``,
        ``report`` (contract failures) and ``debug`` (URLs of the partial notebook and
        reports kept under the run).
    """
    os.environ["TOOLKIT_ROOT"] = request["root"]  # the worker writes where the run lives
    _one_thread_per_library()  # before any kernel starts: kernels inherit this environment
    step = request["step"]
    reuse_kernel = request.get("kernel", "reuse") == "reuse"
    if reuse_kernel and request.get("source"):
        from toolkit import kernels, pipeline

        # Boots on the other core while this process imports papermill and fetches inputs.
        kernels.prestart(
            request["run_id"],
            pipeline.PROJECT_DIR / request["source"],
            spare_sources=[pipeline.PROJECT_DIR / s for s in request.get("sources", ())],
        )
    _skip_slow_optional_imports()
    from toolkit import cache, pipeline, runs

    workspace = Path(tempfile.mkdtemp(prefix=f"toolkit-{step}-"))
    started = runs.now()
    try:
        env = {**request["env"], "build_dir": str(workspace)}
        executor_params: dict[str, Any] = {
            # papermill has no execution timeout by default: a hung cell must fail the step.
            "execution_timeout": int(request["timeout"]),
        }
        if reuse_kernel:
            from toolkit import kernels

            executor_params["engine_name"] = kernels.register_engine()
            executor_params["kernel_key"] = request["run_id"]
        try:
            task = pipeline.notebook_task(step, env)
        except pipeline.NeedsPloomber as reason:
            run, products = _ploomber_task(step, env, request["upstream"], executor_params)
            _log.info("step %s executed by Ploomber: %s", step, reason)
        else:
            run, products = _light_task(task, request["upstream"], executor_params)
        try:
            run()
        except Exception as exc:  # the notebook's error, possibly wrapped by Ploomber
            return _failure(request, Path(products["nb"]), exc, started)
        hit = cache.publish(
            request["root"],
            request["identity"],
            step,
            request["key"],
            request["attempt"],
            products,
            request["run_id"],
            runs.now(),
            before_manifest=lambda: crash_point(f"{step}:before-manifest"),
        )
        return {
            "status": "succeeded",
            "url": hit["url"],
            "outputs": hit["outputs"],
            "started_at": started,
            "finished_at": runs.now(),
        }
    except Exception as exc:  # storage or set-up failure: still a readable step failure
        return {
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(limit=8),
            "started_at": started,
            "finished_at": runs.now(),
            "report": [],
            "debug": {},
        }
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


def _light_task(task, upstream: dict, executor_params: dict):
    """The step executed without Ploomber (``toolkit.notebook_task``)."""
    from toolkit import notebook_task

    _fetch(upstream, task.upstream_products)
    return (lambda: notebook_task.execute(task, **executor_params)), task.products


def _ploomber_task(step: str, env: dict, upstream: dict, executor_params: dict):
    """The step executed by Ploomber, for a pipeline.yaml the light path does not read."""
    from ploomber.constants import TaskStatus
    from ploomber.products import File

    from toolkit import pipeline

    dag = pipeline.load_dag(env)
    if File in dag.clients:
        del dag.clients[File]  # this layer, not Ploomber's client, publishes outputs
    _fetch(upstream, {name: _local_products(dag[name]) for name in upstream})
    task = dag[step]
    task.executor_params.update(executor_params)
    dag.render(force=True, show_progress=False)
    for upstream_task in task.upstream.values():
        # Their products were fetched from storage above; Ploomber must not rebuild them.
        upstream_task.exec_status = TaskStatus.Skipped
    # The executor-facing build (what Ploomber's own executors call): runs the notebook,
    # its on_failure hook, and raises TaskBuildError on failure.
    return (lambda: task._build(catch_exceptions=True)), _local_products(task)


def _fetch(upstream: dict, local: dict) -> None:
    """Download each upstream output (step -> product -> URL) to its path in ``local``."""
    from toolkit import storage

    for step, urls in upstream.items():
        for name, url in urls.items():
            storage.download_file(url, local[step][name])


# Thread pools of the numeric libraries a step's kernel loads (OpenBLAS, MKL, OpenMP, ...).
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def _one_thread_per_library() -> None:
    """One BLAS/OpenMP thread per kernel, unless the operator exported a count.

    Steps run side by side (Dask workers, backfills), one kernel per core: library thread
    pools on top would oversubscribe the cores, which is why Dask pins its own workers to
    one thread. Alone, the forecast's small fits were no slower with one thread (4.7 s
    against 5.5 s at 10M rows, measured once). The same setting everywhere also keeps
    serial and Dask results identical: iterative fits give other floats (1e-5 apart)
    with another thread count.
    """
    for name in THREAD_VARIABLES:
        os.environ.setdefault(name, "1")


def _skip_slow_optional_imports() -> None:
    """Keep ``rfc3987_syntax`` from loading in a process that executes steps.

    jsonschema (under nbformat, under papermill and Ploomber) imports it when installed,
    only to check the "iri" string format, and it compiles 38 grammars as it loads: over a
    second per process. Nothing here checks that format; jsonschema treats the module as
    absent, which it supports. Imports made in the kernel are not affected.
    """
    import sys

    sys.modules.setdefault("rfc3987_syntax", None)


def _failure(request, notebook: Path, exc, started) -> dict[str, Any]:
    """Keep the partial notebook and contract reports under the run, never in the cache."""
    import json

    from toolkit import runs, storage

    folder = notebook.parent
    target = runs.run_url(
        request["run_id"], "steps", request["step"], request["attempt"], root=request["root"]
    )
    debug, report = {}, []
    for path in sorted(folder.glob("*.failed.ipynb")) + sorted(folder.glob("*.ipynb")):
        debug.setdefault("notebook", storage.join(target, path.name))
        storage.upload_file(path, storage.join(target, path.name))
        break
    for path in sorted(folder.glob("*.validation.json")):
        storage.upload_file(path, storage.join(target, path.name))
        debug.setdefault("reports", []).append(storage.join(target, path.name))
        report.append(json.loads(path.read_text()))
    return {
        "status": "failed",
        "error": _root_cause(exc),
        "report": report,
        "debug": debug,
        "traceback": "".join(traceback.format_exception(exc, limit=4))[-4000:],
        "started_at": started,
        "finished_at": runs.now(),
    }


def _root_cause(exc: BaseException) -> str:
    """The notebook's own error, not Ploomber's wrappers.

    Walks the exception chain from the inside out and takes the first error that says
    something: papermill's cell error (exception name and value), a cell timeout or a dead
    kernel from nbclient, skipping bare internals such as ``queue.Empty``.
    """
    chain = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for error in reversed(chain):
        ename, evalue = getattr(error, "ename", None), getattr(error, "evalue", None)
        if ename:
            return f"{ename}: {evalue}"[-3000:]
        text = str(error).strip()
        if text and type(error).__name__ not in ("Empty", "TaskBuildError"):
            return f"{type(error).__name__}: {text}"[-3000:]
    return type(exc).__name__


class SerialExecutor:
    """Runs each step in this process, one at a time: the default."""

    name = "serial"

    def submit(self, fn, *args) -> cf.Future:
        future: cf.Future = cf.Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller via the future
            future.set_exception(exc)
            if isinstance(exc, KeyboardInterrupt):
                raise
        return future

    def wait_any(self, futures):
        done = [f for f in futures if f.done()]
        return done, [f for f in futures if not f.done()]

    def release(self, run_id: str) -> None:
        """The run is over: its kernel, kept in this process, is not needed any more."""
        release_kernels(run_id)

    def close(self) -> None:
        pass


def release_kernels(run_id: str) -> None:
    """Kill the kernels this process kept for a finished run (see ``toolkit.kernels``)."""
    import sys

    kernels = sys.modules.get("toolkit.kernels")  # never imported: no kernel was kept
    if kernels is not None:
        kernels.shutdown(run_id)


def make_executor(name: str = "serial", **options):
    """An executor by name: ``serial`` or ``dask``."""
    if name == "serial":
        return SerialExecutor()
    if name == "dask":
        from toolkit.dask_executor import DaskExecutor

        return DaskExecutor(**options)
    raise ValueError(f"unknown executor {name!r}; choose serial or dask")
