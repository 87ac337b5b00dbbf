"""Execute one step anywhere: a private workspace, upstream products fetched from storage,
the notebook run by Ploomber, outputs published to the cache. Plus the executors that
schedule such executions: in this process (serial) or on Dask (see ``DaskExecutor``).

``execute_step`` takes and returns plain data, so it runs unchanged on another machine
that shares nothing with the launcher but the storage root.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import logging
import os
import shutil
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit import tempdirs
from toolkit.dag import pipeline
from toolkit.data import storage
from toolkit.runs import cache, lease, store

__all__ = [
    "SerialExecutor",
    "crash_point",
    "execute_step",
    "release_all",
    "release_run",
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


def execute_step(request: dict[str, Any]) -> dict[str, Any]:
    """Run one step of a run and publish its outputs.

    Ploomber renders and builds the step (``DAG.build_partially`` with its upstream
    skipped: their products are fetched from storage first) in a private workspace;
    papermill and nbclient execute the notebook in this process's kept kernel
    (``toolkit.dag.kernels``, named in ``pipeline.yaml``).

    Args:
        request: ``root``, ``run_id``, ``step``, ``env`` (Ploomber env values), ``key``,
            ``attempt``, ``timeout`` (seconds for the whole notebook), ``memory_mb``
            (resident memory of its kernel; 0 or absent: no limit), ``identity``,
            ``upstream`` (step -> product -> URL of the published upstream outputs) and
            ``kernel`` ("reuse": kernels kept between notebooks; "fresh": a new kernel per
            notebook).

    Returns:
        ``status`` ("succeeded" or "failed") with ``outputs``/``url`` or ``error``,
        ``report`` (contract failures) and ``debug`` (URLs of the partial notebook and
        reports kept under the run); ``corrupt_upstream``, the upstream step whose
        published object did not match its digest, when that is why it failed.
    """
    from toolkit.dag import kernels  # jupyter_client: a fully cached run need not load it

    os.environ["TOOLKIT_ROOT"] = request["root"]  # the worker writes where the run lives
    kernels.reuse(request.get("kernel", "reuse") == "reuse")
    step = request["step"]
    started = store.now()
    try:
        workspace = _workspace_of(request)
        dag, products = workspace.dag, workspace.products
        _log.info("step %s of run %s in %s", step, request["run_id"], workspace.folder)
        try:
            _fetch(request["upstream"], products)
        except cache.CorruptObject as exc:
            return _corrupt_upstream(request, exc, started)
        notebook = Path(products[step]["nb"])
        # The whole notebook is bounded here; nbclient's per-cell timeout, set to the same
        # number in the DAG's env, is only a backstop.
        with kernels.limited(request["timeout"], request.get("memory_mb") or None) as limits:
            try:
                dag.build_partially(step, force=True, show_progress=False, skip_upstream=True)
            except Exception as exc:  # the notebook's error, wrapped by Ploomber
                return _failure(request, notebook, exc, started, _over_limit(request, limits))
        if limits.exceeded:  # stopped, yet the notebook ended as if it had not
            return _failure(request, notebook, None, started, _over_limit(request, limits))
        _confirm_holder(request)
        hit = cache.publish(
            request["root"],
            request["identity"],
            step,
            request["key"],
            request["attempt"],
            products[step],
            request["run_id"],
            store.now(),
            before_manifest=lambda: crash_point(f"{step}:before-manifest"),
        )
        return {
            "status": "succeeded",
            "url": hit["url"],
            "outputs": hit["outputs"],
            "started_at": started,
            "finished_at": store.now(),
        }
    except Exception as exc:  # storage or set-up failure: still a readable step failure
        return {
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(limit=8),
            "started_at": started,
            "finished_at": store.now(),
            "report": [],
            "debug": {},
        }


@dataclass
class _RunWorkspace:
    """A run's private folder in this process, and its DAG built with that folder."""

    folder: Path
    dag: Any
    products: dict[str, dict[str, str]]  # step -> product -> local path


_workspaces: dict[str, _RunWorkspace] = {}
_workspaces_lock = threading.Lock()


def _workspace_of(request: dict[str, Any]) -> _RunWorkspace:
    """The run's workspace in this process, made (and its DAG built) at its first step.

    Steps of one run in one process share it: a step finds the products of the steps
    before it that ran here, and Ploomber builds the DAG once per run, not per step.
    """
    with _workspaces_lock:
        found = _workspaces.get(request["run_id"])
        if found is None:
            from ploomber.products import File  # Ploomber loads only where a step executes

            if not _workspaces:
                atexit.register(release_all)
            folder = tempdirs.make("run")
            env = {**request["env"], "build_dir": str(folder), "step_timeout": request["timeout"]}
            dag = pipeline.load_dag(env)
            # This layer, not the File client of `ploomber build`, publishes a run's outputs.
            dag.clients.pop(File, None)
            products = {name: _local_products(dag[name]) for name in dag}
            found = _workspaces[request["run_id"]] = _RunWorkspace(folder, dag, products)
        return found


def _local_products(task) -> dict[str, str]:
    serial = task.product.to_json_serializable()
    return serial if isinstance(serial, dict) else {"data": serial}


def _fetch(upstream: dict, local: dict) -> None:
    """Download each upstream output (step -> product -> URL) to its path in ``local``,
    checked against its manifest's digest, unless the step ran in this workspace and
    left it there. ``cache.CorruptObject`` when one does not match."""
    for step, urls in upstream.items():
        wanted = {name: url for name, url in urls.items() if not os.path.exists(local[step][name])}
        cache.fetch(wanted, {name: local[step][name] for name in wanted})


def _corrupt_upstream(request, exc: cache.CorruptObject, started) -> dict[str, Any]:
    """A failed step that names the upstream step whose published object is corrupt
    (``corrupt_upstream``): the run loop executes that step again, then this one."""
    upstream = next(
        step for step, urls in request["upstream"].items() if exc.damage.url in urls.values()
    )
    return {
        "status": "failed",
        "error": str(exc),
        "corrupt_upstream": upstream,
        "started_at": started,
        "finished_at": store.now(),
        "report": [],
        "debug": {},
    }


def _confirm_holder(request: dict[str, Any]) -> None:
    """``LeaseLost`` when another process took the run over while this step ran: a step
    of a run this process no longer holds writes nothing."""
    if "lease" in request:
        lease.confirm(request["lease"])


def _over_limit(request: dict[str, Any], limits) -> str | None:
    """Why a step stopped over one of its limits failed (None: it was not stopped)."""
    step = request["step"]
    if limits.exceeded == "memory":
        return f"step {step} used more than {request['memory_mb']} MB (execution.step_memory_mb)"
    if limits.exceeded == "time":
        return (
            f"step {step} exceeded its time limit of {request['timeout']} s"
            " (execution.step_timeout_seconds)"
        )
    return None


def _failure(request, notebook: Path, exc, started, reason: str | None = None) -> dict[str, Any]:
    """Keep the partial notebook and contract reports under the run, never in the cache.

    ``reason``: why the step failed when the notebook's own error does not say (a limit)."""
    _confirm_holder(request)
    import json

    from toolkit.runs import store as runs

    folder = notebook.parent
    target = runs.run_url(
        request["run_id"], "steps", request["step"], request["attempt"], root=request["root"]
    )
    debug, report, error = {}, [], None
    for path in sorted(folder.glob("*.failed.ipynb")) + sorted(folder.glob("*.ipynb")):
        debug.setdefault("notebook", storage.join(target, path.name))
        storage.upload_file(path, storage.join(target, path.name))
        error = _notebook_error(path)
        break
    for path in sorted(folder.glob("*.validation.json")):
        storage.upload_file(path, storage.join(target, path.name))
        debug.setdefault("reports", []).append(storage.join(target, path.name))
        report.append(json.loads(path.read_text()))
    return {
        "status": "failed",
        "error": reason or error or _root_cause(exc),
        "report": report,
        "debug": debug,
        "traceback": "".join(traceback.format_exception(exc, limit=4))[-4000:] if exc else None,
        "started_at": started,
        "finished_at": runs.now(),
    }


def _notebook_error(notebook: Path) -> str | None:
    """The error of the cell papermill marked as raising, as ``Name: value``: what the step
    said, without Ploomber's report and the notebook's traceback around it. None when no
    cell raised (a cell timeout or a dead kernel leave no such mark)."""
    import json

    try:
        cells = json.loads(notebook.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return None
    for cell in cells:
        if cell.get("metadata", {}).get("papermill", {}).get("exception"):
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    return f"{output['ename']}: {output['evalue']}"[-3000:]
    return None


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
    """Runs a run's steps one at a time in this process: the default.

    Steps execute in a thread of their own, so the main thread stays free to take Ctrl-C,
    SIGTERM and a cancel: nbclient claims SIGINT and SIGTERM for itself in the thread that
    executes a notebook when that thread is the main one, and would only drop its kernel.
    """

    name = "serial"

    def __init__(self) -> None:
        self._steps = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="toolkit-step")

    def submit(self, fn, *args) -> cf.Future:
        return self._steps.submit(fn, *args)

    def wait_any(self, futures):
        done, pending = cf.wait(futures, return_when=cf.FIRST_COMPLETED)
        return list(done), list(pending)

    def interrupt(self) -> None:
        """Stop the step executing now: its kernel is killed, so its notebook fails."""
        from toolkit.dag import kernels

        kernels.shutdown_all()

    def release(self, run_id: str) -> None:
        """The run is over: its workspace and kept kernel are not needed any more."""
        self._steps.submit(release_run, run_id).result()  # in the thread the kernel serves

    def close(self) -> None:
        self._steps.shutdown(wait=True)


def release_run(run_id: str) -> None:
    """A run is over: remove its workspace here and close the idle kernels this process kept
    (see ``toolkit.dag.kernels``).

    A kernel is never kept from one run for the next: module state one run's steps left
    cannot reach another run.
    """
    from toolkit.dag import kernels

    with _workspaces_lock:
        workspace = _workspaces.pop(run_id, None)
    if workspace is not None:
        shutil.rmtree(workspace.folder, ignore_errors=True)
    kernels.close_idle()


def release_all() -> None:
    """Remove every run workspace of this process (it exits)."""
    for run_id in list(_workspaces):
        release_run(run_id)
