"""HTTP delivery against a local server: retries, idempotency key, final failure."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

from toolkit.pricing import delivery


class Receiver:
    """A loopback HTTP server that fails the first ``fail_first`` requests with 503."""

    def __init__(self, fail_first=0, status=200):
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append((dict(self.headers), json.loads(body)))
                code = 503 if len(outer.requests) <= fail_first else status
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/recommendations"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_delivers_with_idempotency_key_after_retries():
    with Receiver(fail_first=2) as receiver:
        receipt = delivery.post_json(
            receiver.url, [{"a": 1}], "run-1", retries=3, sleep=lambda s: None
        )
    assert receipt["status"] == 200 and receipt["attempts"] == 3
    assert [r[0]["Idempotency-Key"] for r in receiver.requests] == ["run-1"] * 3
    assert receiver.requests[-1][1] == [{"a": 1}]


def test_gives_up_after_the_retry_budget():
    with (
        Receiver(fail_first=100) as receiver,
        pytest.raises(delivery.DeliveryError, match=r"127.0.0.1.*after 3 attempt\(s\): HTTP 503"),
    ):
        delivery.post_json(receiver.url, [], "run-2", retries=2, sleep=lambda s: None)
    assert len(receiver.requests) == 3


def test_client_error_is_not_retried():
    with Receiver(status=400) as receiver, pytest.raises(delivery.DeliveryError, match="HTTP 400"):
        delivery.post_json(receiver.url, [], "run-3", retries=5, sleep=lambda s: None)
    assert len(receiver.requests) == 1


def test_closed_port_fails_with_the_endpoint_named():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(delivery.DeliveryError, match=f"127.0.0.1:{port}"):
        delivery.post_json(
            f"http://127.0.0.1:{port}/x", [], "k", retries=1, timeout=2, sleep=lambda s: None
        )


def test_export_has_stable_columns_and_only_changes():
    plan = pd.DataFrame(
        {
            "product_id": ["P1", "P2"],
            "category": ["toys", "home"],
            "current_price": [10.0, 20.0],
            "new_price": [9.0, 20.0],
            "price_change": [-0.1, 0.0],
            "unit_cost": [5.0, 8.0],
            "baseline_units": [10.0, 5.0],
            "expected_units": [12.0, 5.0],
            "baseline_revenue": [100.0, 100.0],
            "expected_revenue": [108.0, 100.0],
            "baseline_margin": [50.0, 60.0],
            "expected_margin": [48.0, 60.0],
            "markdown_cost": [12.0, 0.0],
            "changed": [True, False],
        }
    )
    catalog = pd.DataFrame(
        {"product_id": ["P1", "P2"], "product_name": ["A", "B"], "currency": ["USD", "USD"]}
    )
    export = delivery.to_export(plan, catalog, "run-9", "US", "2026-11")
    assert list(export.columns) == delivery.EXPORT_COLUMNS
    assert export["product_id"].tolist() == ["P1"]
    assert export.loc[0, "change_pct"] == -10.0
    assert export.loc[0, "expected_margin_change"] == -2.0
