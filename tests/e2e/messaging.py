"""Producers and consumers for the message-interop tests: nats-py (an independent NATS client, asyncio) driven
from the synchronous tests, and the two-site topology with a broker per site."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from tests.e2e.topology import Certs, Gateway, access_domain, free_port

PRODUCER_APP = "order-app"


@dataclass
class Received:
    subject: str
    data: bytes
    headers: dict[str, str]
    sequence: int


def publish(url: str, subject: str, payloads: list[bytes], headers: dict[str, str] | None = None,
            chunk: int = 500) -> None:
    """Publish with JetStream acknowledgements (each stored in the origin stream), `chunk` in flight at once."""
    async def run() -> None:
        nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
        try:
            js = nc.jetstream(timeout=10)
            for start in range(0, len(payloads), chunk):
                await asyncio.gather(*(js.publish(subject, data, headers=headers)
                                       for data in payloads[start:start + chunk]))
        finally:
            await nc.close()
    asyncio.run(run())


def stream_count(url: str, stream: str) -> int:
    """Messages in `stream` now (0 when it does not exist yet)."""
    async def run() -> int:
        nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
        try:
            try:
                info = await nc.jetstream(timeout=5).stream_info(stream)
            except nats.js.errors.NotFoundError:
                return 0
            return info.state.messages
        finally:
            await nc.close()
    return asyncio.run(run())


def read_stream(url: str, stream: str, subject: str = ">") -> list[Received]:
    """Every message of `stream` (matching `subject`), in stream order, through an ephemeral consumer."""
    async def run() -> list[Received]:
        nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
        try:
            js = nc.jetstream(timeout=10)
            try:
                total = (await js.stream_info(stream)).state.messages
            except nats.js.errors.NotFoundError:
                return []
            if not total:
                return []
            sub = await js.pull_subscribe(subject, stream=stream, config=ConsumerConfig(
                ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=30))
            out: list[Received] = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    batch = await sub.fetch(1000, timeout=1)
                except nats.errors.TimeoutError:
                    break
                out += [Received(m.subject, m.data, dict(m.headers or {}), m.metadata.sequence.stream) for m in batch]
            await sub.unsubscribe()
            return out
        finally:
            await nc.close()
    return asyncio.run(run())


def wait_for_count(url: str, stream: str, count: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        seen = stream_count(url, stream)
        if seen >= count:
            return seen
        time.sleep(0.1)
    return seen


@dataclass
class MessageSites:
    a: Gateway  # provider side: its broker receives
    b: Gateway  # consumer side: its producers publish
    url_a: str
    url_b: str
    admin_a: int
    admin_b: int

    def stop(self) -> None:
        for gateway in (self.b, self.a):
            gateway.stop()


def message_sites(certs: Certs, folder: Path, url_a: str, url_b: str, *, name: str,
                  b_messaging: dict[str, Any] | None = None) -> MessageSites:
    """GW-A exports orders.created (app order-app) and audit.> (any app) to site-b, takes messages up to 8 KiB;
    GW-B imports
    orders.created, audit.> and payments.settled (which A does not export) from its own broker."""
    folder.mkdir(parents=True, exist_ok=True)
    a_peer, b_peer, admin_a, admin_b = free_port(), free_port(), free_port(), free_port()

    def site(own: str, other: str, port: int, other_port: int, admin: int, messaging: dict) -> dict[str, Any]:
        paths, theirs = certs.site(own), certs.site(other)
        return {
            "site": own,
            "listen": {"peer": f"127.0.0.1:{port}", "admin": f"127.0.0.1:{admin}"},
            "tls": {"ca": str(paths.ca), "cert": str(paths.cert), "key": str(paths.key)},
            "peers": {other: {"endpoints": [f"127.0.0.1:{other_port}"], "ca": str(theirs.ca),
                              "domain": access_domain(own, other)}},
            "domains": {other: access_domain(other, own)},
            "messaging": messaging,
        }

    a = Gateway(f"{name}-site-a", site("site-a", "site-b", a_peer, b_peer, admin_a, {
        "broker": {"kind": "nats", "url": url_a},
        "max_message_bytes": 8192,
        "exports": [
            {"subject": "orders.created", "stream": "ORDERS", "allow": {"site-b": {"apps": [PRODUCER_APP]}}},
            {"subject": "audit.>", "stream": "AUDIT", "allow": ["site-b"]},
        ],
    }), folder)
    b = Gateway(f"{name}-site-b", site("site-b", "site-a", b_peer, a_peer, admin_b, {
        "broker": {"kind": "nats", "url": url_b},
        "ack_wait_ms": 4000,
        "delivery_timeout_ms": 2000,
        "imports": [
            {"subject": "orders.created", "to": "site-a"},
            {"subject": "audit.>", "to": "site-a"},
            {"subject": "payments.settled", "to": "site-a"},
        ],
        **(b_messaging or {}),
    }), folder)
    a.start()
    b.start()
    for subject in ("orders.created", "audit.>", "payments.settled"):
        b.wait_for_event(lambda e, s=subject: e.get("event") == "messages.import_ready" and e.get("subject") == s,
                         timeout=20)
    return MessageSites(a, b, url_a, url_b, admin_a, admin_b)
