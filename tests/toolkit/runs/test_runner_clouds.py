"""The whole pipeline with the storage root on GCS (fake-gcs-server) and on Azure Blob
(Azurite), as a user runs it: `toolkit demo-data`, then `toolkit run` twice."""

from __future__ import annotations

import pytest
from helpers import toolkit, toolkit_env

from toolkit.data import storage
from toolkit.runs import store as runs

pytestmark = pytest.mark.slow  # whole pipelines: `make test-fast` leaves these out

ROOTS = {"gs": "gcs_root", "az": "azure_root"}


def run_id_from(output: str) -> str:
    return next(line.split()[1] for line in output.splitlines() if line.startswith("run "))


@pytest.mark.parametrize("cloud", list(ROOTS))
def test_a_run_on_each_cloud_keeps_everything_there_and_reuses_it(cloud, request):
    root = request.getfixturevalue(ROOTS[cloud])  # the emulator's variables are exported
    assert root.startswith(f"{cloud}://")
    env = toolkit_env(root)
    toolkit(["demo-data", "--markets", "US", "--products", "30"], env)
    assert storage.exists(storage.raw_url("US", "sales", root))

    first = runs.load(run_id_from(toolkit(["run"], env).stdout), root)
    assert first.status == "succeeded"
    for name, step in first.steps.items():
        assert step.status == "succeeded" and not step.reused, name
        assert step.outputs and all(url.startswith(root) for url in step.outputs.values())
        assert all(storage.exists(url) for url in step.outputs.values()), name
    assert storage.exists(first.config_url)

    # The same config again: every step found in the cloud's cache, by content.
    second = runs.load(run_id_from(toolkit(["run"], env).stdout), root)
    assert second.status == "succeeded"
    assert {step.reused_from for step in second.steps.values()} == {first.id}
