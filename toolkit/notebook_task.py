"""Execute one step's notebook as Ploomber's ``NotebookRunner`` does, without Ploomber.

Importing Ploomber costs about two seconds per process, and rendering its DAG a quarter
of a second per step: most of a tweak's run, where one or two small steps re-execute.
``toolkit.pipeline.notebook_task`` reads a step from ``pipeline.yaml`` the way Ploomber's
spec does; this module renders and executes it the way ``NotebookRunner`` does, with the
same libraries Ploomber calls:

* jupytext reads the py:percent source; the notebook gets the kernelspec Jupyter reports
  and loses any cell injected for interactive work (``toolkit dev``);
* papermill's ``parameterize_notebook`` adds the ``injected-parameters`` cell (params,
  then ``upstream`` if any, then ``product``);
* pyflakes checks the code (undefined names, syntax) and, with ``static_analysis:
  strict``, the parameters cell must declare exactly the params passed;
* papermill executes it into the ``nb`` product; on failure the partial notebook is set
  aside (``on_failure: toolkit.pipeline.set_aside_failed_notebook``) and the error
  raised; on success every declared product must exist.

The executed notebook is the one Ploomber would write (a test compares the rendered
notebooks of every step). Anything else in a task goes to Ploomber
(``toolkit.pipeline.NeedsPloomber``).
"""

from __future__ import annotations

import ast
import os
import tempfile
from pathlib import Path
from typing import Any

from toolkit.notebooks import INJECTED_TAGS
from toolkit.pipeline import NotebookTask, set_aside

__all__ = ["MissingProductsError", "StaticAnalysisError", "execute", "render"]


class StaticAnalysisError(ValueError):
    """The notebook's code does not pass the checks Ploomber makes before running it."""


class MissingProductsError(RuntimeError):
    """The notebook ran cleanly but did not write all the products the step declares."""


# pyflakes messages that stop a notebook before it runs, as in Ploomber's static analysis.
_BLOCKING = (
    "UndefinedName",
    "UndefinedLocal",
    "DuplicateArgument",
    "ReturnOutsideFunction",
    "YieldOutsideFunction",
    "ContinueOutsideLoop",
    "BreakOutsideLoop",
)


def params_of(task: NotebookTask) -> dict[str, Any]:
    """What the injected cell assigns: the task's params, ``upstream``, ``product``."""
    upstream = {"upstream": task.upstream_products} if task.upstream_products else {}
    return {**task.params, **upstream, "product": task.products}


def render(task: NotebookTask) -> str:
    """The notebook, parameters injected, as Ploomber's ``NotebookSource`` renders it.

    Raises:
        StaticAnalysisError: the code has an undefined name or a syntax error, or (with
            ``static_analysis: strict``) the parameters cell and the params differ.
    """
    import jupytext
    import nbformat
    from jupyter_client.kernelspec import get_kernel_spec
    from papermill.parameterize import parameterize_notebook

    source = Path(task.source)
    nb = jupytext.reads(source.read_text(encoding="utf-8"), fmt="py")
    kernel_name = nb.metadata.get("kernelspec", {}).get("name") or "python3"
    spec = get_kernel_spec(kernel_name)
    nb.metadata.kernelspec = {
        "display_name": spec.display_name,
        "language": spec.language,
        "name": kernel_name,
    }
    nb.cells = [
        cell
        for cell in nb.cells
        if not set(cell.get("metadata", {}).get("tags", [])) & set(INJECTED_TAGS)
    ]
    parameters = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    code_cells = [c for c in nb.cells if c.source.strip()]
    if code_cells and code_cells[-1] in parameters:
        raise StaticAnalysisError(
            f"{source}: the parameters cell is the last cell; add the step's code after it"
        )
    for cell in nb.cells:
        cell.metadata.setdefault("tags", [])
    nb.metadata["papermill"] = {}
    params = params_of(task)
    nb = parameterize_notebook(nb, params)  # the notebook was just read: no copy needed
    for cell in nb.cells:
        if not cell.metadata["tags"]:
            cell.metadata.pop("tags")
    if (
        task.static_analysis != "disable"
        and nb.metadata.get("kernelspec", {}).get("language", "python") == "python"
    ):
        _check(nb, params, source, signature=task.static_analysis == "strict")
    return nbformat.writes(nb)


def _check(nb, params: dict, source: Path, signature: bool) -> None:
    """Ploomber's static analysis: pyflakes on the code cells, then the params."""
    from pyflakes import api, reporter

    code = "\n".join(_without_magics(c.source) for c in nb.cells if c.cell_type == "code")
    messages: list = []

    class _Collect(reporter.Reporter):
        def __init__(self):
            self.syntax: list[str] = []

        def flake(self, message):
            messages.append(message)

        def syntaxError(self, filename, msg, lineno, offset, text):  # noqa: N802 - pyflakes API
            self.syntax.append(f"line {lineno}: {msg}: {(text or '').strip()}")

        def unexpectedError(self, filename, msg):  # noqa: N802 - pyflakes API
            self.syntax.append(str(msg))

    collect = _Collect()
    api.check(code, filename=str(source), reporter=collect)
    if collect.syntax:
        raise StaticAnalysisError(f"{source}: syntax error, {'; '.join(collect.syntax)}")
    errors = [m for m in messages if type(m).__name__ in _BLOCKING]
    if errors:
        lines = "; ".join(m.message % m.message_args for m in errors)
        raise StaticAnalysisError(
            f"{source}: {lines} (the notebook would fail; to skip this check, set "
            "static_analysis: disable on the task in pipeline.yaml)"
        )
    if signature:
        parameters = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        declared = _declared(parameters.source) - {"product", "upstream"}
        passed = set(params) - {"product", "upstream"}
        if declared != passed:
            problems = []
            if declared - passed:
                problems.append(f"declared but not passed: {', '.join(sorted(declared - passed))}")
            if passed - declared:
                problems.append(
                    f"passed but not declared: {', '.join(sorted(passed - declared))} "
                    "(add them to the parameters cell, assigned None)"
                )
            raise StaticAnalysisError(
                f"{source}: the parameters cell does not match the task's params in "
                f"pipeline.yaml; {'; '.join(problems)}"
            )


def _declared(code: str) -> set[str]:
    """Names the parameters cell assigns (``name = ...`` or ``name: type = ...``)."""
    names = set()
    for node in ast.parse(code).body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign) and node.value is not None:
            targets = [node.target]
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def _without_magics(source: str) -> str:
    """IPython magics and shell lines commented out, so that pyflakes reads the rest."""
    lines, rest_is_magic = [], False
    for line in source.splitlines():
        stripped = line.lstrip()
        if rest_is_magic or stripped.startswith(("%", "!")):
            lines.append(f"# {line}")
            if stripped.startswith("%%") and stripped.split()[0] not in _PYTHON_CELL_MAGICS:
                rest_is_magic = True
        else:
            lines.append(line)
    return "\n".join(lines)


_PYTHON_CELL_MAGICS = {"%%capture", "%%timeit", "%%time"}


def execute(task: NotebookTask, **executor_params: Any) -> None:
    """Render and execute the step's notebook into its ``nb`` product.

    Args:
        task: The step, from ``toolkit.pipeline.notebook_task``.
        **executor_params: Passed to ``papermill.execute_notebook`` (engine, timeout).

    Raises:
        StaticAnalysisError: see ``render``; nothing was executed.
        papermill.PapermillExecutionError: a cell failed; the partial notebook was set
            aside as ``<step>.failed.ipynb`` when the task asks for it.
        MissingProductsError: the notebook finished without writing all its products.
    """
    import papermill

    rendered = render(task)
    out = Path(task.products["nb"])
    out.parent.mkdir(parents=True, exist_ok=True)
    descriptor, tmp = tempfile.mkstemp(".ipynb")
    os.close(descriptor)
    try:
        Path(tmp).write_text(rendered, encoding="utf-8")
        papermill.execute_notebook(tmp, str(out), **executor_params)
    except BaseException:
        if task.set_aside_failed:
            set_aside(out)
        raise
    finally:
        Path(tmp).unlink(missing_ok=True)
    missing = [name for name, path in task.products.items() if not Path(path).exists()]
    if missing:
        if task.set_aside_failed:
            set_aside(out)
        raise MissingProductsError(
            f"step {task.name!r} ran but did not write product(s) {', '.join(missing)}: "
            + ", ".join(task.products[name] for name in missing)
        )
