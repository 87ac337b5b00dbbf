"""The `toolkit` command as a process: what it leaves behind when it is stopped, and how
it says it is outside a project."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from helpers import PROJECT_DIR, TOOLKIT, toolkit, toolkit_env

from toolkit.pricing import demo_data
from toolkit.runs import store as runs


def start_run(env) -> tuple[subprocess.Popen, list[str]]:
    """`toolkit run --force`, returned once the forecast step is executing."""
    process = subprocess.Popen(
        [*TOOLKIT, "run", "--force"],
        cwd=PROJECT_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # As from a terminal: a test runner started in the background ignores SIGINT, and
        # Python keeps an ignored SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen = []
    for line in process.stdout:
        seen.append(line)
        if "forecast: running" in line:
            return process, seen
    raise AssertionError(f"the run ended before its forecast step: {''.join(seen)}")


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_stopped_run_leaves_no_kernel_and_no_temporary_folder(tmp_path, stop):
    private_tmp = tempfile.mkdtemp(prefix="tk-", dir="/tmp")  # noqa: S108 - short socket paths
    root = tmp_path / "store"
    demo_data.write(["US"], n_products=40, root=str(root))
    env = toolkit_env(root, TMPDIR=private_tmp, TOOLKIT_HEARTBEAT_SECONDS="5")
    process, _ = start_run(env)
    children = psutil.Process(process.pid).children(recursive=True)
    assert any("ipykernel" in " ".join(c.cmdline()) for c in children), "no kernel running"
    time.sleep(0.5)
    process.send_signal(stop)
    rest = process.stdout.read()
    assert process.wait(timeout=120) == 130, rest
    assert "toolkit resume" in rest
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], [p.cmdline() for p in alive]
    left = [p.name for p in Path(private_tmp).iterdir() if p.name.startswith("toolkit-")]
    assert left == []
    shutil.rmtree(private_tmp, ignore_errors=True)
    [record] = runs.list_runs(str(root))
    assert runs.effective_status(record) == "interrupted"


def test_outside_a_project_every_command_says_where_to_go(tmp_path):
    env = toolkit_env(tmp_path / "store")
    env.pop("TOOLKIT_PROJECT", None)
    result = toolkit(["config", "show"], env, check=False, cwd=tmp_path)
    assert result.returncode == 2
    assert "not inside a toolkit project: no pipeline.yaml in" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_second_checkout_is_its_own_project(project_copy, local_root):
    shutil.copytree(PROJECT_DIR / "configs", project_copy / "configs")
    (project_copy / "toolkit" / "data").mkdir(parents=True)
    shutil.copy(PROJECT_DIR / "toolkit" / "data" / "schemas.py", project_copy / "toolkit" / "data")
    env = toolkit_env(local_root)
    toolkit(["new-step", "price_check", "--after", "optimize"], env, cwd=project_copy / "notebooks")
    assert "price_check" in (project_copy / "pipeline.yaml").read_text()
    assert (project_copy / "notebooks" / "price_check.py").exists()
    assert "price_check" not in (PROJECT_DIR / "pipeline.yaml").read_text()
    assert not (PROJECT_DIR / "notebooks" / "price_check.py").exists()


def test_demo_data_as_of_writes_through_the_last_complete_week(local_root):
    out = toolkit(
        ["demo-data", "--markets", "SE", "--products", "3", "--as-of", "2026-12-04"],
        toolkit_env(local_root),
    ).stdout
    assert "SE: " in out and "rows through 2026-11-29)" in out
    bad = toolkit(["demo-data", "--as-of", "4.12.2026"], toolkit_env(local_root), check=False)
    assert bad.returncode == 2 and "'4.12.2026' does not match the format '%Y-%m-%d'" in bad.stderr


def test_sources_check_prints_what_a_run_would_read(local_root):
    demo_data.write(["SE"], n_products=3, root=local_root, as_of="2026-12-04")
    env = toolkit_env(local_root)
    good = toolkit(["sources", "check", "--patch", "country=SE", "--patch", "period=2027-01"], env)
    assert good.stdout.splitlines() == [
        f"sales: {local_root}/raw/market=SE/sales.parquet (1 file)",
        "  3,822 rows, 3 products, 2023-06-05 to 2026-11-29",
        f"catalog: {local_root}/raw/market=SE/catalog.parquet (1 file)",
        "  3 rows, 3 products",
        "period 2027-01: history 2023-12-04..2026-11-29 (156 weeks), gap 5 weeks, "
        "priced weeks 2027-01-04..2027-01-31 (4 weeks)",
        "no problems",
    ]
    too_late = toolkit(
        ["sources", "check", "--patch", "country=SE", "--patch", "period=2027-03"], env, check=False
    )
    assert too_late.returncode == 1
    assert "problem: raw sales end on 2026-11-29: their last complete week" in too_late.stdout
    missing = toolkit(["sources", "check", "--patch", "country=NO"], env, check=False)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert f"  problem: no table at {local_root}/raw/market=NO/sales.parquet" in missing.stdout
    assert missing.stdout.splitlines()[-1] == "2 problems"


def test_sources_check_names_file_row_and_column_of_a_bad_csv(local_root, tmp_path):
    demo_data.write(["SE"], n_products=3, root=local_root, as_of="2026-12-04")
    csv = tmp_path / "sales.csv"
    csv.write_text(
        "Datum;Artikel;Menge;Preis;Aktion\n"
        "01.12.2025;P0001;3;9,50;false\n"
        "02.12.2025;P0001;zwei;9,50;false\n"
    )
    layer = tmp_path / "sources.yaml"
    layer.write_text(
        "load_transform:\n"
        "  sources:\n"
        "    sales:\n"
        f"      url: {csv}\n"
        "      delimiter: ';'\n"
        "      decimal: ','\n"
        "      date_format: '%d.%m.%Y'\n"
        "      columns: {Datum: date, Artikel: product_id, Menge: units, Preis: unit_price, "
        "Aktion: promo}\n"
    )
    args = ["sources", "check", "--patch", "country=SE", "--config", str(layer)]
    result = toolkit(args, toolkit_env(local_root), check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"  problem: RawSales contract failed on read of {csv} (2 rows):" in result.stdout
    assert "column 'Menge (units)'" in result.stdout and "'zwei' (row 3)" in result.stdout
