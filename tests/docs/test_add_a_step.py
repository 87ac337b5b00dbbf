"""docs/add-a-step.md works: every `$ ` command of the tutorial, in order, on a copy."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import PROJECT_DIR

pytestmark = pytest.mark.slow  # whole pipelines: `make test-fast` leaves these out

TUTORIAL = PROJECT_DIR / "docs" / "add-a-step.md"
BIN = Path(sys.executable).parent
NOT_COPIED = (".venv", ".git", "store", ".toolkit", "*_cache", "__pycache__", "*.egg-info")


def commands(markdown: str) -> list[str]:
    """The `$ ` lines of the ```console blocks, in order."""
    blocks = re.findall(r"^```console\n(.*?)^```", markdown, flags=re.M | re.S)
    return [line[2:] for block in blocks for line in block.splitlines() if line.startswith("$ ")]


def test_the_tutorial_has_the_whole_loop():
    found = commands(TUTORIAL.read_text())
    assert found[0] == "toolkit demo-data --markets US --products 40"
    for expected in [
        "toolkit new-step price_elasticity --after forecast",
        "toolkit run",
        "toolkit dev price_elasticity",
        "toolkit dev price_elasticity --remove",
        "toolkit schemas docs",
    ]:
        assert expected in found
    assert any(c.startswith("toolkit validate ") for c in found)


def test_every_command_of_the_tutorial_succeeds(tmp_path):
    from toolkit.cli import commands as cli

    if "new-step" not in cli.main.commands:
        pytest.skip("toolkit/cli/commands.py does not call cli_dev.register(main) yet")
    project = tmp_path / "project"
    shutil.copytree(PROJECT_DIR, project, ignore=shutil.ignore_patterns(*NOT_COPIED))
    env = dict(
        os.environ,
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        # The editable install maps `toolkit` to the original checkout; the copy must run
        # its own package, whose schemas.py gains the new contract.
        PYTHONPATH=str(project),
        TOOLKIT_ROOT=str(tmp_path / "store"),
        TOOLKIT_BUILD_DIR=str(tmp_path / "build"),
        PLOOMBER_STATS_ENABLED="false",
        PLOOMBER_VERSION_CHECK_DISABLED="1",
    )
    for number, command in enumerate(commands(TUTORIAL.read_text()), 1):
        result = subprocess.run(
            ["bash", "-c", command],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert result.returncode == 0, (
            f"tutorial command {number} failed (exit {result.returncode}): $ {command}\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    # The tutorial's end state: a validated output, documented, and a clean notebook.
    assert "## PriceElasticity" in (project / "docs" / "contracts.md").read_text()
    assert "injected-parameters" not in (project / "notebooks" / "price_elasticity.py").read_text()
