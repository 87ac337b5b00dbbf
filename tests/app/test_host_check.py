"""The Host check in front of the app (app/serve.py): requests and websocket handshakes
naming a host the operator did not allow are refused, so DNS rebinding cannot reach a
loopback app. Raw sockets, so the Host header is exactly what a rebinding page sends."""

from __future__ import annotations

import pytest
from apphelpers import raw_request, serve_app

pytestmark = pytest.mark.slow  # serves the app twice


def test_only_loopback_names_are_answered_by_default(tmp_path, local_root):
    with serve_app(tmp_path, local_root) as url:
        port = url.rsplit(":", 1)[1]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
            assert raw_request(url, host, "/_stcore/health").endswith("200 OK"), host
            assert " 101 " in raw_request(url, host, "/_stcore/stream", websocket=True), host
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", ""):
            assert " 400 " in raw_request(url, host, "/"), host
            assert " 400 " in raw_request(url, host, "/_stcore/health"), host
            assert " 400 " in raw_request(url, host, "/_stcore/stream", websocket=True), host


def test_behind_a_proxy_the_configured_names_are_answered(tmp_path, local_root):
    settings = "launchers: []\nallowed_hosts: [prices.example.com]\n"
    with serve_app(tmp_path, local_root, settings, host="prices.example.com") as url:
        assert raw_request(url, "prices.example.com", "/_stcore/health").endswith("200 OK")
        ws = raw_request(url, "prices.example.com", "/_stcore/stream", websocket=True)
        assert " 101 " in ws
        assert " 400 " in raw_request(url, "localhost", "/_stcore/health")
        assert " 400 " in raw_request(url, "evil.example", "/_stcore/stream", websocket=True)
