"""Private temporary folders: named after their process, swept once it is gone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from toolkit import tempdirs


@pytest.fixture
def short_tmp(monkeypatch):
    folder = Path(tempfile.mkdtemp(prefix="tk-", dir="/tmp"))  # noqa: S108 - socket paths
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() caches its first answer
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def ended_pid() -> int:
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    return ended.pid


def test_sweep_removes_every_kind_of_folder_whose_owner_is_gone(short_tmp):
    dead = ended_pid()
    orphans = [short_tmp / f"toolkit-{kind}-{dead}-x" for kind in ("run", "kernel", "other")]
    living = [
        short_tmp / f"toolkit-run-{os.getpid()}-x",
        short_tmp / f"toolkit-run-{os.getppid()}-x",
    ]
    unrelated = short_tmp / f"tmp-{dead}-x"
    for folder in [*orphans, *living, unrelated]:
        folder.mkdir()
        (folder / "kernel.json").write_text("{}")
    assert sorted(tempdirs.sweep()) == sorted(orphans)
    assert all(folder.exists() for folder in [*living, unrelated])


def test_a_new_folder_is_named_after_its_process_and_sweeps_first(short_tmp):
    orphan = short_tmp / f"toolkit-kernel-{ended_pid()}-x"
    orphan.mkdir()
    made = tempdirs.make("run")
    assert made.parent == short_tmp and made.name.startswith(f"toolkit-run-{os.getpid()}-")
    assert not orphan.exists()
