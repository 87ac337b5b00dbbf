"""Start runs from the app: checked first, recorded at once, executed in the background.

``launch`` checks the form (``forms.check``) and the person (``access``), writes the run's
``queued`` record so every app replica shows it immediately, then starts
``python -m toolkit.cli.commands run --run-id ID --patch=...`` as a detached process: an argv list,
never a shell, in a session of its own, so neither a reload, a closed tab nor a restart
of the app stops it. The run's progress lives in its record in storage; the process's
own output goes to a log file on the machine that launched it.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from logic import access, forms
from toolkit import config as config_mod
from toolkit import project
from toolkit.data import storage
from toolkit.runs import store as runs
from toolkit.runs.record import RunRecord

__all__ = [
    "LaunchRefused",
    "Launched",
    "build_argv",
    "cancel",
    "launch",
    "launch_log",
    "log_path",
]

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,119}$")
LOG_TAIL_CHARS = 20_000
# The process needs several seconds (Ploomber's import alone takes ~8 s) before it takes
# the queued record over and starts beating; until then the record reads as queued for up
# to 4 x this + 2 seconds instead of looking interrupted after 22 s.
QUEUED_HEARTBEAT_SECONDS = 45.0


class LaunchRefused(ValueError):
    """Nothing was started; ``problems`` say why, field by field."""

    def __init__(self, problems: Sequence[forms.FieldProblem]):
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems) or "launch refused")


@dataclass
class Launched:
    run_id: str
    pid: int
    argv: list[str]
    log_path: Path
    record: RunRecord | None = None


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


def _environment(viewer: access.Viewer, root: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        TOOLKIT_ROOT=root,
        TOOLKIT_LAUNCHER=viewer.launcher,
        PYTHONUNBUFFERED="1",
    )
    return env


def _watch(process: subprocess.Popen, run_id: str, root: str) -> None:
    """Wait for the process (no zombies); if it died before taking the run over, say so."""
    code = process.wait()
    try:
        record = runs.load(run_id, root)
    except runs.RunNotFound:
        return
    if record.launched_from != "app" or record.stored_status != "queued":
        return  # the process re-created the record: the run's own record tells the story
    output = (launch_log(run_id, 3000) or "").strip()
    record.stored_status = None
    record.status = "failed"
    record.finished_at = runs.now()
    record.error = f"the run's process exited with code {code} before the run started" + (
        f"; its last output:\n{output}" if output else ""
    )
    runs.save(record, root)


def _reap(process: subprocess.Popen, run_id: str, root: str) -> None:
    # The app outlives its runs: wait for each so none lingers as a zombie.
    threading.Thread(
        target=_watch, args=(process, run_id, root), daemon=True, name="toolkit-reaper"
    ).start()


def launch(
    identity: forms.Identity,
    values: Mapping[str, Any],
    viewer: access.Viewer | None,
    settings: access.AppSettings | None = None,
) -> Launched:
    """Check, record and start a run in the background; return at once.

    Raises:
        AccessDenied: ``viewer`` may not launch.
        LaunchRefused: the form has problems (nothing was written or started).
    """
    access.require_launch(viewer, settings or access.load_settings())
    assert viewer is not None
    checked = forms.check(identity, values)
    if not checked.ok:
        raise LaunchRefused(checked.problems)
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
    cfg = checked.resolved.config
    run_id = runs.new_id(cfg.country, cfg.period)
    argv = build_argv(run_id, checked.patches)

    # The queued record first, so the run shows at once on every replica. The process
    # re-creates it with the same content when it starts (see the report for a CLI that
    # executes an existing record instead).
    from toolkit.runs import runner  # imports Ploomber (seconds): only when launching

    record = runner.create(
        checked.resolved,
        patches=checked.patches,
        run_id=run_id,
        launcher=viewer.launcher,
        launched_from="app",
        heartbeat_seconds=QUEUED_HEARTBEAT_SECONDS,
    )

    path = log_path(run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "ab") as log:
            process = subprocess.Popen(  # noqa: S603 - an argv list; no shell is involved
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(project.root()),
                env=_environment(viewer, root),
                start_new_session=True,
                close_fds=True,
            )
    except OSError as exc:
        record.status = "failed"
        record.error = f"could not start the run: {exc}"
        record.finished_at = runs.now()
        runs.save(record, root)
        raise
    _reap(process, run_id, root)
    return Launched(run_id=run_id, pid=process.pid, argv=argv, log_path=path, record=record)


def cancel(run_id: str, viewer: access.Viewer | None, settings: access.AppSettings | None = None):
    """Ask a queued or running run to stop (it notices within one heartbeat)."""
    access.require_launch(viewer, settings or access.load_settings())
    from toolkit.runs import runner

    runner.cancel(run_id)
