"""Delivery: only to endpoints and addresses the operator allows, once per plan, retried."""

from __future__ import annotations

import json
import socket

import pytest
from helpers import Receiver

from toolkit.data import storage
from toolkit.runs import deliveries

NO_SLEEP = {"sleep": lambda seconds: None}


def loopback(url: str) -> deliveries.EndpointPolicy:
    """What the test config says: this receiver, and loopback explicitly allowed."""
    return deliveries.EndpointPolicy((url,), ("127.0.0.0/8", "::1/128"))


# ---------------------------------------------------------------------------
# Sending
# ---------------------------------------------------------------------------


def test_delivers_with_idempotency_key_and_run_after_retries():
    with Receiver(fail_first=2) as receiver:
        policy = loopback(receiver.url)
        receipt = deliveries.post_json(
            receiver.url, b'[{"a": 1}]', "plan-1", policy=policy, run_id="r1", **NO_SLEEP
        )
    assert receipt["http_status"] == 200 and receipt["attempts"] == 3
    assert [r[0]["Idempotency-Key"] for r in receiver.requests] == ["plan-1"] * 3
    assert receiver.requests[-1][0]["X-Toolkit-Run"] == "r1"
    assert receiver.requests[-1][1] == [{"a": 1}]


def test_gives_up_after_the_retry_budget():
    with (
        Receiver(fail_first=100) as receiver,
        pytest.raises(deliveries.DeliveryError, match=r"127.0.0.1.*after 3 attempt\(s\): HTTP 503"),
    ):
        deliveries.post_json(
            receiver.url, b"[]", "k", policy=loopback(receiver.url), retries=2, **NO_SLEEP
        )
    assert len(receiver.requests) == 3


@pytest.mark.parametrize(
    ("status", "headers", "words"),
    [(400, {}, "HTTP 400"), (302, {"Location": "http://169.254.169.254/"}, "not followed")],
)
def test_client_errors_and_redirects_are_final(status, headers, words):
    with (
        Receiver(status=status, headers=headers) as receiver,
        pytest.raises(deliveries.DeliveryError, match=words),
    ):
        deliveries.post_json(
            receiver.url, b"[]", "k", policy=loopback(receiver.url), retries=5, **NO_SLEEP
        )
    assert len(receiver.requests) == 1


def test_closed_port_fails_with_the_endpoint_named():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x"
    with pytest.raises(deliveries.DeliveryError, match=f"127.0.0.1:{port}"):
        deliveries.post_json(
            url, b"[]", "k", policy=loopback(url), retries=1, timeout=2, **NO_SLEEP
        )


# ---------------------------------------------------------------------------
# Where delivery may go
# ---------------------------------------------------------------------------


ALLOWED = (
    "https://receiver.example.com/hooks",
    "https://*.prices.example.net",
    "http://intranet.example.org:8080/",
)


@pytest.mark.parametrize(
    "url",
    [
        "https://receiver.example.com/hooks",
        "https://receiver.example.com/hooks/prices?token=1",
        "https://RECEIVER.example.com./hooks/x",
        "https://eu.prices.example.net/any",
        "http://intranet.example.org:8080/x",
    ],
)
def test_endpoints_in_the_allow_list_pass(url):
    deliveries.EndpointPolicy(ALLOWED).check_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://receiver.example.com/hooksevil",  # a path prefix ends at a segment
        "https://receiver.example.com/other",
        "http://receiver.example.com/hooks",  # another scheme
        "https://receiver.example.com:8443/hooks",  # another port
        "https://receiver.example.com.evil.net/hooks",
        "https://prices.example.net/x",  # *.host covers subdomains only
        "http://intranet.example.org/x",  # default port 80, not 8080
        "https://user:pw@receiver.example.com/hooks",
        "http://169.254.169.254/latest/meta-data/",
    ],
)
def test_endpoints_outside_the_allow_list_are_refused(url):
    with pytest.raises(deliveries.EndpointRefused, match="output.endpoint|credentials"):
        deliveries.EndpointPolicy(ALLOWED).check_url(url)


def test_no_allow_list_means_no_delivery():
    with pytest.raises(deliveries.EndpointRefused, match=r"allowed: none.*configs/"):
        deliveries.EndpointPolicy().check_url("https://receiver.example.com/")


@pytest.mark.parametrize(
    ("host", "why", "network"),
    [
        ("169.254.169.254", "cloud metadata", "169.254.169.254/32"),
        ("[fd00:ec2::254]", "cloud metadata", "fd00:ec2::254/128"),
        ("100.100.100.200", "cloud metadata", "100.100.100.200/32"),
        ("169.254.10.1", "link-local", "169.254.0.0/16"),
        ("[fe80::1]", "link-local", "fe80::/10"),
        ("127.0.0.1", "loopback", "127.0.0.0/8"),
        ("127.8.8.8", "loopback", "127.0.0.0/8"),
        ("[::1]", "loopback", "::1/128"),
        ("0.0.0.0", "unspecified", "0.0.0.0/32"),
        ("[::ffff:169.254.169.254]", "cloud metadata", "169.254.169.254/32"),
        ("[64:ff9b::a9fe:a9fe]", "cloud metadata", "169.254.169.254/32"),  # NAT64
    ],
)
def test_internal_addresses_are_refused_unless_the_operator_allows_them(host, why, network):
    url = f"http://{host}/x"
    with pytest.raises(deliveries.EndpointRefused, match=f"{why}.*output.allow_addresses"):
        deliveries.EndpointPolicy((url,)).addresses(url)
    assert deliveries.EndpointPolicy((url,), (network,)).addresses(url)


def answer(address: str, port: int = 80) -> tuple:
    """One entry of what ``socket.getaddrinfo`` returns, for a name no DNS here knows."""
    return (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))


def test_a_name_is_checked_by_every_address_it_resolves_to():
    url = "http://localhost:9/x"
    with pytest.raises(deliveries.EndpointRefused, match="loopback"):
        deliveries.EndpointPolicy((url,)).addresses(url)
    assert deliveries.EndpointPolicy((url,), ("127.0.0.0/8", "::1/128")).addresses(url)
    # One internal address among public ones is enough to refuse (DNS rebinding).
    answers = [answer(a) for a in ("93.184.215.14", "169.254.169.254")]
    url = "http://receiver.example.com/x"
    with pytest.raises(deliveries.EndpointRefused, match="169.254.169.254, a cloud metadata"):
        deliveries.EndpointPolicy((url,)).addresses(url, resolve=lambda *a, **k: answers)


def test_metadata_host_names_are_refused_whatever_they_resolve_to():
    url = "http://metadata.google.internal/computeMetadata/v1/"
    public = [answer("93.184.215.14")]
    with pytest.raises(deliveries.EndpointRefused, match="metadata host name"):
        deliveries.EndpointPolicy((url,)).addresses(url, resolve=lambda *a, **k: public)


def test_the_connection_goes_to_the_checked_address_with_the_host_named():
    # A name no DNS knows, resolved once by the check: the request reaches the checked
    # address, so no second lookup can send it elsewhere.
    with Receiver() as receiver:
        url = f"http://receiver.invalid:{receiver.port}/in"
        checked = [answer("127.0.0.1", receiver.port)]
        deliveries.post_json(
            url, b"[]", "k", policy=loopback(url), resolve=lambda *a, **k: checked, **NO_SLEEP
        )
    assert receiver.requests[0][0]["Host"] == f"receiver.invalid:{receiver.port}"


def test_a_refused_endpoint_sends_nothing():
    with Receiver() as receiver:
        policy = deliveries.EndpointPolicy((receiver.url,))  # loopback not allowed
        with pytest.raises(deliveries.EndpointRefused, match="loopback"):
            deliveries.post_json(receiver.url, b"[]", "k", policy=policy, **NO_SLEEP)
    assert receiver.requests == []


# ---------------------------------------------------------------------------
# Once per plan
# ---------------------------------------------------------------------------


def published(root: str, plan_id: str, records: list) -> dict[str, str]:
    """A format_output step's delivery files, as a run's outputs name them."""
    base = storage.join(root, "cache", plan_id)
    files = {"json": "recommendations.json", "delivery": "delivery.json"}
    files = {name: storage.join(base, filename) for name, filename in files.items()}
    storage.write_bytes(files["json"], json.dumps(records).encode())
    storage.write_bytes(files["delivery"], json.dumps({"plan_id": plan_id}).encode())
    return files


def output(url: str, **changes) -> dict:
    config = {
        "endpoint": url,
        "allowed_endpoints": [url],
        "allow_addresses": ["127.0.0.0/8"],
        "retries": 0,
        "timeout_seconds": 5,
    }
    return {**config, **changes}


def test_each_plan_is_delivered_once_per_endpoint(local_root):
    plan_a = published(local_root, "a" * 32, [{"plan_id": "a" * 32, "product_id": "P1"}])
    plan_b = published(local_root, "b" * 32, [])
    with Receiver() as first, Receiver() as second:
        sent = deliveries.deliver(local_root, "run-1", output(first.url), plan_a)
        again = deliveries.deliver(local_root, "run-2", output(first.url), plan_a)
        changed = deliveries.deliver(local_root, "run-3", output(first.url), plan_b)
        elsewhere = deliveries.deliver(local_root, "run-4", output(second.url), plan_a)
        resumed = deliveries.deliver(local_root, "run-1", output(first.url), plan_a)
    assert sent["status"] == "delivered" and sent["delivered_by"] == "run-1"
    assert again["status"] == "already_delivered" and again["delivered_by"] == "run-1"
    assert again["delivered_at"] == sent["delivered_at"]
    assert "already delivered to" in deliveries.describe(again)
    assert changed["status"] == "delivered" and changed["plan_id"] == "b" * 32
    assert [(h["Idempotency-Key"], h["X-Toolkit-Run"], body) for h, body in first.requests] == [
        ("a" * 32, "run-1", [{"plan_id": "a" * 32, "product_id": "P1"}]),
        ("b" * 32, "run-3", []),
    ]
    assert elsewhere["status"] == "delivered" and len(second.requests) == 1
    # A resumed run finds its own delivery: delivered (by itself), not sent again.
    assert (resumed["status"], resumed["delivered_by"]) == ("delivered", "run-1")
    entries = storage.listdir(storage.join(local_root, "deliveries", "a" * 32))
    assert entries == ["run-1.json", "run-4.json"]  # each run writes only its own entry


def test_a_failed_delivery_is_recorded_and_a_later_run_delivers(local_root):
    plan = published(local_root, "c" * 32, [])
    with Receiver(status=500) as down:
        failed = deliveries.deliver(local_root, "run-1", output(down.url), plan, **NO_SLEEP)
    assert failed["status"] == "failed" and "HTTP 500" in failed["error"]
    assert deliveries.earliest_delivery(local_root, "c" * 32, down.url) is None
    with Receiver() as up:
        sent = deliveries.deliver(local_root, "run-2", output(up.url), plan)
    assert sent["status"] == "delivered" and len(up.requests) == 1


def test_no_endpoint_skips_and_says_so(local_root):
    receipt = deliveries.deliver(local_root, "run-1", {"endpoint": None}, {})
    assert receipt["status"] == "skipped"
    assert deliveries.describe(receipt) == "not delivered: output.endpoint is not set"
