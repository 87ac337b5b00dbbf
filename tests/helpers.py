"""Helpers shared by the tests (fixtures live in conftest.py): the project, and the
`toolkit` command run as a user runs it, in a process of its own."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TOOLKIT = [sys.executable, "-m", "toolkit.cli.commands"]


def toolkit_env(root, **extra) -> dict[str, str]:
    """The environment of a `toolkit` process on storage root ``root``: beats every second,
    no Dask scheduler unless the test names one."""
    env = dict(os.environ, TOOLKIT_ROOT=str(root), TOOLKIT_HEARTBEAT_SECONDS="1")
    env.update(extra)
    if "DASK_SCHEDULER_ADDRESS" not in extra:
        env.pop("DASK_SCHEDULER_ADDRESS", None)
    return env


def wait_for(predicate, timeout=300, every=0.5):
    """``predicate()``'s first true value, asked every ``every`` s for ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met in {timeout} s")


def project_copy(target: Path, optimize_tail: str = "") -> Path:
    """A copy of the project's code, configs and pipeline in ``target`` (for a test that
    changes a notebook), with ``optimize_tail`` appended to the optimize notebook."""
    for name in ("toolkit", "notebooks", "configs"):
        shutil.copytree(
            PROJECT_DIR / name, target / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    for name in ("pipeline.yaml", "env.yaml"):
        shutil.copy(PROJECT_DIR / name, target / name)
    notebook = target / "notebooks" / "optimize.py"
    notebook.write_text(notebook.read_text() + optimize_tail)
    return target


def run(args, env, cwd=PROJECT_DIR, check=True, timeout=900) -> subprocess.CompletedProcess:
    """Run a command; with ``check``, a failure shows the end of its output."""
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def toolkit(args, env, check=True, cwd=PROJECT_DIR, timeout=1500) -> subprocess.CompletedProcess:
    """`toolkit ARGS` in a process of its own, from the project folder by default."""
    return run([*TOOLKIT, *args], env, cwd=cwd, check=check, timeout=timeout)


def export_of(record):
    """A run's recommendations CSV as a frame (for comparing runs)."""
    import pandas as pd

    from toolkit.data import storage

    data = storage.read_bytes(record.steps["format_output"].outputs["csv"])
    return pd.read_csv(io.BytesIO(data))


def new_bucket(s3_env, name) -> str:
    """A new bucket on the moto server of ``s3_env``; its ``toolkit`` prefix as a root."""
    import boto3

    boto3.client(
        "s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], region_name="us-east-1"
    ).create_bucket(Bucket=name)
    return f"s3://{name}/toolkit"


class Receiver:
    """A loopback HTTP receiver for deliveries, started and stopped by the test (``with``).

    Answers 503 to the first ``fail_first`` requests, then ``status``; keeps each
    request's headers and JSON body in ``requests``.
    """

    def __init__(self, fail_first=0, status=200, headers=None):
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append((dict(self.headers), json.loads(body)))
                code = 503 if len(outer.requests) <= fail_first else status
                self.send_response(code)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}/recommendations"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
