"""What the calls did, counted where they end: the request path's side of the metrics.

The per-call cost is a tuple, one dict lookup and a few integer additions (no lock: the gateway is one trio
thread; no prometheus-client object on the path). The admin endpoint turns these tables into Prometheus
metrics when it is scraped (interlink/control/metrics.py).

Label values are bounded: services and peer sites are those of the site file, statuses those of gRPC and Bolt
(STATUSES), methods the first METHODS_PER_SERVICE seen per service; anything else is counted as `other`. The table of
label tuples is therefore bounded by the configuration, and the cache in front of it (keyed by what callers
sent) by CACHE_ENTRIES.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass

from interlink.model import Status
from interlink.routes import Snapshot
from interlink.wire import bolt, message_link

OTHER = "other"
METHODS_PER_SERVICE = 64
CACHE_ENTRIES = 4096
DENIALS_KEPT = 20
# interlink_call_duration_seconds buckets: from a fast local hop to a slow cross-site call.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# The status a call ended with: a gRPC status, a Bolt one, or what the access line says of a relayed Bolt answer.
# A relayed answer's status is read from what the other side sent (a stamped status): anything else is `other`.
STATUSES = frozenset([*Status.__members__, *bolt.ResponseStatus.__members__, "APPLICATION_ERROR",
                      "MALFORMED_RESPONSE_HEADER"])

# (ingress, peer_site, service, method, protocol, status, translated, loadtest)
CallLabels = tuple[str, str, str, str, str, str, str, str]


@dataclass(slots=True)
class Denial:
    at: float  # unix time
    peer: str | None
    caller_app: str | None
    service: str | None
    reason: str


class CallMetrics:
    """Counters of one gateway process. `calls[labels] = [count, sum of seconds, bucket counts...]`."""

    def __init__(self) -> None:
        self.calls: dict[CallLabels, list[float]] = {}
        self._cells: dict[tuple, list[float]] = {}  # what callers sent -> its (bounded) cell
        self.audit: dict[tuple[str, str, str], int] = {}  # (peer_site, decision, reason) -> count
        self.retries: dict[tuple[str, str, str], int] = {}  # (ingress, service, why) -> retries made
        self.denials: deque[Denial] = deque(maxlen=DENIALS_KEPT)
        self._services: frozenset[str] = frozenset()
        self._peers: frozenset[str] = frozenset()
        self._methods: dict[str, set[str]] = {}

    def install(self, snapshot: Snapshot) -> None:
        """The label values the site file allows (a reload may add some; counted series stay)."""
        config = snapshot.config
        messages = [message_link.SERVICE] if config.messaging is not None else []  # (subjects are its methods)
        self._services = frozenset(
            [*snapshot.imports, *snapshot.exports, *snapshot.bolt_imports, *snapshot.bolt_exports, *messages]
        )
        self._peers = frozenset(config.peers) | frozenset(snapshot.domain_of_peer)
        self._cells.clear()

    def observe(self, ingress: str, peer: object, service: str, method: object, protocol: str, status: str,
                translated: object, loadtest: bool, seconds: float) -> None:
        """One finished call."""
        key = (ingress, peer, service, method, protocol, status, translated, loadtest)
        cell = self._cells.get(key)
        if cell is None:
            cell = self._cell(key)
        cell[0] += 1
        cell[1] += seconds
        cell[2 + bisect_left(BUCKETS, seconds)] += 1

    def _cell(self, key: tuple) -> list[float]:
        ingress, peer, service, method, protocol, status, translated, loadtest = key
        service = service if service in self._services else OTHER
        peer = peer if peer in self._peers else (OTHER if peer else "")
        status = status if status in STATUSES else OTHER
        methods = self._methods.setdefault(service, set())
        if method not in methods:
            if len(methods) < METHODS_PER_SERVICE and isinstance(method, str) and service != OTHER:
                methods.add(method)
            else:
                method = OTHER if method else ""
        labels: CallLabels = (ingress, peer, service, method or "", protocol, status, str(translated or ""),
                              "true" if loadtest else "false")
        cell = self.calls.get(labels)
        if cell is None:
            cell = self.calls[labels] = [0, 0.0] + [0] * (len(BUCKETS) + 1)
        if len(self._cells) < CACHE_ENTRIES:
            self._cells[key] = cell
        return cell

    def decided(self, peer: object, decision: str, reason: str) -> None:
        """One audit decision (`reason` is a label from a fixed set: the refusal's kind, or "" when allowed)."""
        key = (peer if peer in self._peers else OTHER if peer else "", decision, reason)
        self.audit[key] = self.audit.get(key, 0) + 1  # type: ignore[arg-type, index]

    def retried(self, ingress: str, service: str, why: str) -> None:
        """One retry (`why`: unprocessed | idempotent); the service label is bounded like a call's."""
        key = (ingress, service if service in self._services else OTHER, why)
        self.retries[key] = self.retries.get(key, 0) + 1

    def denied(self, peer: object, caller_app: object, service: object, reason: str) -> None:
        self.denials.append(Denial(time.time(), _text(peer), _text(caller_app), _text(service), reason))


def _text(value: object) -> str | None:
    return None if value is None else str(value)[:200]
