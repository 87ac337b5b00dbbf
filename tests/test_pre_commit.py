""".pre-commit-config.yaml runs offline from the venv and stops injected notebooks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import PROJECT_DIR

BIN = Path(sys.executable).parent

INJECTED = """# %% [markdown]
# # Step

# %% tags=["parameters"]
upstream = None

# %% tags=["injected-parameters"]
# Parameters
upstream = {}

# %%
x = 1
"""


@pytest.fixture
def repo(tmp_path) -> Path:
    """A throwaway git repository with the project's hook config and the venv linked in."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in [".pre-commit-config.yaml", "pyproject.toml", "pipeline.yaml", "env.yaml"]:
        shutil.copy(PROJECT_DIR / name, repo / name)
    shutil.copytree(PROJECT_DIR / "notebooks", repo / "notebooks")
    (repo / ".venv").symlink_to(BIN.parent)  # the hooks call .venv/bin/...
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    return repo


def pre_commit(repo: Path, *files: str) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        PRE_COMMIT_HOME=str(repo.parent / "pre-commit-home"),
        PLOOMBER_STATS_ENABLED="false",
    )
    return subprocess.run(
        [str(BIN / "pre-commit"), "run", "--files", *files],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_clean_sources_pass_every_hook(repo):
    result = pre_commit(repo, "notebooks/forecast.py", "pipeline.yaml", "env.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    for hook in ["ruff check", "ruff format --check", "check yaml", "no injected parameters"]:
        assert hook in result.stdout


def test_an_injected_notebook_and_broken_yaml_are_refused(repo):
    (repo / "notebooks" / "step.py").write_text(INJECTED)
    (repo / "broken.yaml").write_text("a: [1\n")
    result = pre_commit(repo, "notebooks/step.py", "broken.yaml")
    assert result.returncode == 1
    assert "notebooks/step.py: injected parameters must not be committed" in result.stdout
    assert "toolkit dev step --remove" in result.stdout
    assert "broken.yaml: while parsing a flow sequence" in result.stdout
