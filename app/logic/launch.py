"""Start runs from the app: checked first, then queued for a worker.

``launch`` checks the form (``forms.check``) and the person (``access``), then submits the
run to the queue in storage (``toolkit.runs.queue``): its ``queued`` record shows at once
on every app replica, and a worker (``toolkit worker``; ``make app`` starts one) runs it
within its slots, on the cluster the operator chose. The app starts no process, so
neither a reload, a closed tab nor a restart of the app loses a run.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from logic import access, forms
from toolkit import config as config_mod
from toolkit import project
from toolkit.data import storage
from toolkit.runs import record as record_mod
from toolkit.runs.record import RunRecord

__all__ = [
    "LaunchRefused",
    "Launched",
    "build_argv",
    "cancel",
    "launch",
    "labels",
    "launch_log",
    "log_path",
]

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,119}$")
LOG_TAIL_CHARS = 20_000


class LaunchRefused(ValueError):
    """Nothing was started; ``problems`` say why, field by field."""

    def __init__(self, problems: Sequence[forms.FieldProblem]):
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems) or "launch refused")


@dataclass
class Launched:
    run_id: str
    record: RunRecord | None = None
    position: int | None = None  # its place in the queue when it was submitted


def warm_up() -> None:
    """Import what launching needs (Ploomber takes seconds) so the first launch is quick."""
    # A warm-up only: if it fails, launching imports it again and reports the error.
    with contextlib.suppress(Exception):
        from toolkit.runs import runner  # noqa: F401


def log_dir() -> Path:
    """Where launched processes write their output (local to this app instance)."""
    override = os.environ.get("TOOLKIT_APP_LOG_DIR", "").strip()
    return Path(override) if override else project.root() / ".toolkit" / "app-logs"


def log_path(run_id: str) -> Path:
    if not RUN_ID.match(run_id):
        raise ValueError(f"invalid run id {run_id!r}")
    return log_dir() / f"{run_id}.log"


def launch_log(run_id: str, max_chars: int = LOG_TAIL_CHARS) -> str | None:
    """The tail of the launched process's output, when this instance launched the run."""
    try:
        path = log_path(run_id)
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_chars * 4))
            text = fh.read().decode("utf-8", errors="replace")
    except (OSError, ValueError):
        return None
    # Progress bars redraw with carriage returns; keep the last state of each line.
    lines = [line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n")]
    return "\n".join(lines).strip("\n")[-max_chars:]


def _check_patch(patch: str) -> str:
    allowed = {spec.key for spec in forms.form_fields()} | set(config_mod.IDENTITY_KEYS)
    key = patch.partition("=")[0]
    if config_mod.operator_key(key.strip()):
        raise ValueError(f"patch key {key!r} is {forms.OPERATOR_SETTING}")
    if key not in allowed:
        raise ValueError(f"patch key {key!r} is not a setting of the form")
    config_mod.parse_patch(patch)  # a ConfigError for anything that is not a plain literal
    return patch


def build_argv(run_id: str, patches: Sequence[str], python: str | None = None) -> list[str]:
    """The command that runs ``run_id``: an argv list, never passed to a shell.

    Each patch is one argument, attached to its option (``--patch=key=value``), so a
    value can never be read as another option.
    """
    if not RUN_ID.match(run_id):
        raise ValueError(f"invalid run id {run_id!r}")
    argv = [python or sys.executable, "-m", "toolkit.cli.commands", "run", "--run-id", run_id]
    argv += [f"--patch={_check_patch(p)}" for p in patches]
    return argv


def labels(name: str | None, note: str | None) -> tuple[dict[str, str | None], list]:
    """The run's name and note as stored, and the problems that keep them from it."""
    out: dict[str, str | None] = {}
    problems = []
    for key, label, check, text in (
        ("name", "Run name", record_mod.check_name, name),
        ("note", "Note", record_mod.check_note, note),
    ):
        try:
            out[key] = check(text)
        except record_mod.LabelError as exc:
            problems.append(forms.FieldProblem(key, str(exc), label, "labels"))
    return out, problems


def launch(
    identity: forms.Identity,
    values: Mapping[str, Any],
    viewer: access.Viewer | None,
    settings: access.AppSettings | None = None,
    *,
    name: str | None = None,
    note: str | None = None,
) -> Launched:
    """Check the run and queue it for a worker; return at once. ``name`` and ``note``
    (optional) tell the run apart in lists.

    Raises:
        AccessDenied: ``viewer`` may not launch.
        LaunchRefused: the form has problems (nothing was written or started).
    """
    access.require_launch(viewer, settings or access.load_settings())
    assert viewer is not None
    checked = forms.check(identity, values)
    named, problems = labels(name, note)
    if problems or not checked.ok:
        raise LaunchRefused(checked.problems + problems)
    root = storage.root()
    if not storage.listdir(storage.join(root, "raw", f"market={identity.country}")):
        raise LaunchRefused(
            [
                forms.FieldProblem(
                    "country",
                    f"no sales data for market {identity.country} under {root}/raw; "
                    "ask for the data to be loaded (or run `toolkit demo-data`)",
                    "Market",
                    "identity",
                )
            ]
        )
    patches = [_check_patch(p) for p in checked.patches]
    from toolkit.runs import queue  # imports the run loop (seconds): only when launching

    record = queue.submit(
        checked.resolved,
        patches=patches,
        launcher=viewer.launcher,
        launched_from="app",
        **named,
    )
    return Launched(run_id=record.id, record=record, position=queue.positions(root).get(record.id))


def cancel(run_id: str, viewer: access.Viewer | None, settings: access.AppSettings | None = None):
    """Cancel a queued run, or stop a running one (it notices within one heartbeat)."""
    access.require_launch(viewer, settings or access.load_settings())
    from toolkit.runs import queue

    queue.cancel(run_id)
