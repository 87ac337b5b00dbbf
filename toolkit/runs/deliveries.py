"""Delivery of a run's recommendations: once per distinct plan and endpoint, to allowed places.

The format_output step may be reused from the cache, so it cannot deliver: a reused step
runs nothing. The run delivers instead, after its steps, whether they executed or were
reused. The idempotency key is the plan id (``toolkit.pricing.delivery``: a hash of the
recommendations and their scope), so the receiver sees one delivery per distinct plan;
each successful delivery is written to ``deliveries/<plan id>/<run id>.json``, and a later
run with the same plan and endpoint records that run X already delivered it instead of
sending it again. Runs that deliver the same plan at the same moment both send it, with
the same key, and both write an entry of their own: the receiver drops the second, and
readers take the earliest entry.

Where it goes is the operator's: ``output.endpoint`` must match ``output.allowed_endpoints``,
and every address its host name resolves to is checked: loopback, link-local, unspecified
and cloud metadata addresses are refused unless ``output.allow_addresses`` names their
network. The connection then goes to a checked address, never to a second resolution of
the name (DNS rebinding), and redirects are not followed.
"""

from __future__ import annotations

import datetime as dt
import http.client
import ipaddress
import json
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from toolkit.data import storage

__all__ = [
    "DeliveryError",
    "EndpointPolicy",
    "EndpointRefused",
    "deliver",
    "describe",
    "earliest_delivery",
    "post_json",
]

# Cloud instance metadata services: AWS, Azure, GCP, Oracle (IPv4), AWS (IPv6), Alibaba.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
METADATA_HOSTS = frozenset(
    ("metadata", "metadata.google.internal", "instance-data", "instance-data.ec2.internal")
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # IPv6 addresses that carry an IPv4 one
DEFAULT_PORTS = {"http": 80, "https": 443}

Resolver = Callable[..., list]


class DeliveryError(RuntimeError):
    """Delivery gave up; the message names the endpoint, attempts and last error."""


class EndpointRefused(DeliveryError):
    """The endpoint is not one the operator allows; nothing was sent."""


# ---------------------------------------------------------------------------
# Where delivery may go
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int
    path: str
    query: str

    @property
    def request_path(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path


def _target(url: str) -> _Target:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise EndpointRefused(f"endpoint {url!r} is not a valid URL: {exc}") from None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise EndpointRefused(f"endpoint {url!r} is not an http(s) URL with a host")
    if parts.username is not None or parts.password is not None:
        raise EndpointRefused(f"endpoint {url!r} has credentials in it, which are not sent")
    host = parts.hostname.rstrip(".").lower()
    port = port or DEFAULT_PORTS[parts.scheme]
    return _Target(parts.scheme, host, port, parts.path or "/", parts.query)


def _matches(target: _Target, pattern: str) -> bool:
    allowed = _target(pattern)
    if allowed.scheme != target.scheme or allowed.port != target.port:
        return False
    if allowed.host.startswith("*."):
        host_ok = target.host.endswith(allowed.host[1:])
    else:
        host_ok = target.host == allowed.host
    prefix = allowed.path.rstrip("/")
    return host_ok and (not prefix or target.path == prefix or target.path.startswith(f"{prefix}/"))


def _embedded_ipv4(ip: ipaddress.IPv4Address | ipaddress.IPv6Address):
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, NAT64), else ``ip`` itself."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            return ip.ipv4_mapped
        if ip.sixtofour:
            return ip.sixtofour
        if ip in NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def _why_refused(ip) -> str | None:
    """Why an address is off limits by default, or None."""
    for candidate in {ip, _embedded_ipv4(ip)}:
        if candidate in METADATA_ADDRESSES:
            return "a cloud metadata address"
        if candidate.is_loopback:
            return "a loopback address"
        if candidate.is_link_local:
            return "a link-local address"
        if candidate.is_unspecified:
            return "an unspecified address (this machine)"
    return None


@dataclass(frozen=True)
class EndpointPolicy:
    """The operator's rules for delivery endpoints (``output.allowed_endpoints`` and
    ``output.allow_addresses``)."""

    allowed_endpoints: tuple[str, ...] = ()
    allow_addresses: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, output: Mapping[str, Any]) -> EndpointPolicy:
        """The policy of a config's ``output`` section."""
        return cls(
            tuple(output.get("allowed_endpoints") or ()),
            tuple(output.get("allow_addresses") or ()),
        )

    def check_url(self, url: str) -> None:
        """Refuse an endpoint outside ``allowed_endpoints`` (no name is resolved).

        Raises:
            EndpointRefused: naming the endpoint and the allow-list.
        """
        target = _target(url)
        if not any(_matches(target, pattern) for pattern in self.allowed_endpoints):
            allowed = ", ".join(self.allowed_endpoints) or "none"
            raise EndpointRefused(
                f"output.endpoint {url!r} is not in output.allowed_endpoints (allowed: "
                f"{allowed}); the operator adds it in configs/"
            )

    def addresses(self, url: str, resolve: Resolver = socket.getaddrinfo) -> list[str]:
        """Check ``url`` and every address its host resolves to; return those addresses.

        Raises:
            EndpointRefused: the URL is not allowed, or an address it resolves to is
                loopback, link-local, unspecified or cloud metadata and not in
                ``allow_addresses``, or its host is a metadata service's name.
            DeliveryError: the host name does not resolve.
        """
        self.check_url(url)
        target = _target(url)
        try:
            found = resolve(target.host, target.port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise DeliveryError(f"cannot resolve the host of {url}: {exc}") from None
        addresses = list(dict.fromkeys(info[4][0] for info in found))
        networks = [ipaddress.ip_network(n, strict=False) for n in self.allow_addresses]
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%", 1)[0])  # without an IPv6 zone
            why = _why_refused(ip)
            if target.host in METADATA_HOSTS:
                why = why or "the address of a cloud metadata host name"
            allowed = any(ip in net or _embedded_ipv4(ip) in net for net in networks)
            if why and not allowed:
                raise EndpointRefused(
                    f"output.endpoint {url!r} resolves to {address}, {why}; refused unless "
                    "output.allow_addresses in configs/ names its network"
                )
        if not addresses:
            raise DeliveryError(f"cannot resolve the host of {url}: no address")
        return addresses


# ---------------------------------------------------------------------------
# Sending
# ---------------------------------------------------------------------------


def _connect(addresses: Iterable[str], port: int, timeout: float) -> socket.socket:
    last: OSError | None = None
    for address in addresses:
        try:
            return socket.create_connection((address, port), timeout=timeout)
        except OSError as exc:
            last = exc
    raise last or OSError("no address to connect to")


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to addresses checked beforehand, not to a new lookup of the
    host name; the Host header still names the host."""

    def __init__(self, host: str, port: int, addresses: list[str], timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.addresses = addresses

    def connect(self) -> None:
        self.sock = _connect(self.addresses, self.port, self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """As ``_PinnedHTTPConnection``, with TLS verified against the host name."""

    def __init__(self, host: str, port: int, addresses: list[str], timeout: float):
        self.tls = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self.tls)
        self.addresses = addresses

    def connect(self) -> None:
        plain = _connect(self.addresses, self.port, self.timeout)
        self.sock = self.tls.wrap_socket(plain, server_hostname=self.host)


def _send(target: _Target, addresses: list[str], body: bytes, headers: dict, timeout: float):
    kind = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    connection = kind(target.host, target.port, addresses, timeout)
    try:
        connection.request("POST", target.request_path, body=body, headers=headers)
        response = connection.getresponse()
        response.read(65_536)
        return response.status, response.reason
    finally:
        connection.close()


def post_json(
    url: str,
    body: bytes,
    idempotency_key: str,
    *,
    policy: EndpointPolicy,
    run_id: str | None = None,
    retries: int = 3,
    timeout: float = 10.0,
    backoff: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
    resolve: Resolver = socket.getaddrinfo,
) -> dict[str, Any]:
    """POST a JSON ``body`` to an endpoint ``policy`` allows, with bounded retries.

    The receiver dedupes on ``Idempotency-Key``; ``X-Toolkit-Run`` names the sending run.
    Retries connection errors, timeouts, 429 and 5xx; any other status is final, since
    sending the same body again cannot fix it (a redirect is not followed).

    Returns:
        ``endpoint``, ``http_status``, ``attempts`` and ``idempotency_key``.

    Raises:
        EndpointRefused: ``policy`` refuses the endpoint; nothing was sent.
        DeliveryError: after the last attempt, naming the endpoint and the last error.
    """
    target = _target(url)
    addresses = policy.addresses(url, resolve)
    headers = {
        "Content-Type": "application/json",
        "Idempotency-Key": idempotency_key,
        "User-Agent": "toolkit",
    }
    if run_id:
        headers["X-Toolkit-Run"] = run_id
    last_error = ""
    attempt = 0
    for attempt in range(1, retries + 2):
        try:
            status, reason = _send(target, addresses, body, headers, timeout)
        except ssl.SSLCertVerificationError as exc:
            last_error = f"TLS certificate not valid for {target.host}: {exc.verify_message}"
            break
        except (OSError, http.client.HTTPException) as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        else:
            if 200 <= status < 300:
                return {
                    "endpoint": url,
                    "http_status": status,
                    "attempts": attempt,
                    "idempotency_key": idempotency_key,
                }
            last_error = f"HTTP {status} {reason}"
            if 300 <= status < 400:
                last_error += " (redirects are not followed)"
            if status != 429 and status < 500:
                break
        if attempt <= retries:
            sleep(backoff * 2 ** (attempt - 1))
    raise DeliveryError(f"delivery to {url} failed after {attempt} attempt(s): {last_error}")


# ---------------------------------------------------------------------------
# Once per plan
# ---------------------------------------------------------------------------


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def earliest_delivery(root: str, plan_id: str, endpoint: str) -> dict[str, Any] | None:
    """The first recorded delivery of ``plan_id`` to ``endpoint``, or None."""
    folder = storage.join(root, "deliveries", plan_id)
    found = []
    for name in storage.listdir(folder):
        try:
            entry = json.loads(storage.read_bytes(storage.join(folder, name)))
        except (FileNotFoundError, ValueError):
            continue  # half-written or damaged: not a delivery anyone can rely on
        if isinstance(entry, dict) and entry.get("endpoint") == endpoint:
            found.append((str(entry.get("delivered_at", "")), name, entry))
    return min(found, key=lambda item: item[:2])[2] if found else None


def _absolute(root: str, url: str) -> str:
    """An output's URL; a record may name it relative to the storage root."""
    return url if "://" in url or url.startswith("/") else storage.join(root, url)


def deliver(
    root: str,
    run_id: str,
    output: Mapping[str, Any],
    files: Mapping[str, str],
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Deliver a run's recommendations, unless this plan already went to this endpoint.

    Args:
        root: the storage root holding ``deliveries/``.
        run_id: the delivering run.
        output: the run's ``output`` config section.
        files: the format_output step's outputs (``json`` and ``delivery`` URLs).

    Returns:
        The receipt for the run record: ``status`` (``delivered``, ``already_delivered``,
        ``skipped`` or ``failed``), ``plan_id``, ``endpoint``, ``delivered_by``,
        ``delivered_at``, ``attempts``, ``http_status`` and ``error``.
    """
    endpoint = output.get("endpoint")
    if not endpoint:
        return {"status": "skipped", "error": "output.endpoint is not set"}
    files = {name: _absolute(root, url) for name, url in files.items()}
    plan = json.loads(storage.read_bytes(files["delivery"]))["plan_id"]
    receipt: dict[str, Any] = {"plan_id": plan, "endpoint": endpoint}
    earlier = earliest_delivery(root, plan, endpoint)
    if earlier is not None:
        return {
            **receipt,
            # A resumed run may find its own delivery, made before it was interrupted.
            "status": "delivered" if earlier["run_id"] == run_id else "already_delivered",
            "delivered_by": earlier["run_id"],
            "delivered_at": earlier["delivered_at"],
        }
    try:
        sent = post_json(
            endpoint,
            storage.read_bytes(files["json"]),
            plan,
            policy=EndpointPolicy.from_config(output),
            run_id=run_id,
            retries=int(output.get("retries", 3)),
            timeout=float(output.get("timeout_seconds", 10)),
            sleep=sleep,
        )
    except DeliveryError as exc:
        return {**receipt, "status": "failed", "error": str(exc)}
    entry = {
        **receipt,
        "run_id": run_id,
        "delivered_at": _now(),
        "http_status": sent["http_status"],
        "attempts": sent["attempts"],
    }
    entry_url = storage.join(root, "deliveries", plan, f"{run_id}.json")
    storage.write_bytes(entry_url, json.dumps(entry, indent=2).encode())
    return {
        **receipt,
        "status": "delivered",
        "delivered_by": run_id,
        "delivered_at": entry["delivered_at"],
        "attempts": sent["attempts"],
        "http_status": sent["http_status"],
    }


def describe(receipt: Mapping[str, Any] | None) -> str:
    """One line for people: what became of a run's recommendations."""
    if not receipt:
        return "not delivered (the run did not finish)"
    status, plan, endpoint = receipt.get("status"), receipt.get("plan_id"), receipt.get("endpoint")
    if status == "delivered":
        return f"plan {plan} delivered to {endpoint} by this run ({receipt.get('delivered_at')})"
    if status == "already_delivered":
        return (
            f"plan {plan} already delivered to {endpoint} by run {receipt.get('delivered_by')} "
            f"({receipt.get('delivered_at')}); not sent again"
        )
    if status == "skipped":
        return f"not delivered: {receipt.get('error')}"
    return f"delivery failed: {receipt.get('error')}"
