"""What a running gateway tells its operator: the status document, readiness, and Prometheus metrics.

`GatewayStatus` is what the admin endpoint (control/admin.py) serves, and what `interlink status` reads:

    /status, /      status()     site, version, uptime, config + last reload, peers and their links (state per
                                 connection, RTT from keep-alive, certificates on both sides), exports and
                                 their providers (registry sync), imports, the last denials, counters
    /readyz         readiness()  listening, registry synced, and every peer we import from has a link up
    /metrics        metrics()    Prometheus text (or OpenMetrics), written by prometheus-client from the
                                 gateway's own tables when scraped (gateway/metrics.py counts on the call path)

Nothing here runs per call: everything is read from the gateway when asked.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata

import trio
from cryptography import x509
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import Collector

from interlink.gateway.gateway import Gateway
from interlink.gateway.metrics import BUCKETS
from interlink.net import trips
from interlink.net.pool import ConnectionPool

try:
    VERSION = metadata.version("interlink")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    VERSION = "unknown"


class GatewayStatus:
    """The admin endpoint's sources for one gateway process (control/admin.py AdminSources)."""

    def __init__(self, gateway: Gateway, *, worker: int = 0) -> None:
        self.gateway = gateway
        self.worker = worker
        self.started_at = time.time()
        self.registry_kind = gateway.config.registry.kind
        self.registry_ready = False  # set by the runner once the registry delivered every first set
        self.reloads: Counter[str] = Counter()
        self.last_reload: dict[str, object] | None = None
        self.admin_address: str | None = None
        self.exporter = None  # the OTLP span exporter, when tracing exports (its counters become metrics)
        self.messaging = None  # control/messaging.MessagingRuntime, when the site file has messaging:
        self._config_hash = _file_hash(gateway.config.path)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    # --- what the runner reports ----------------------------------------------------------------------------

    def reloaded(self, error: str | None) -> None:
        result = "failed" if error else "ok"
        self.reloads[result] += 1
        self.last_reload = {"result": result, "at": time.time(), "error": error}
        if error is None:
            self._config_hash = _file_hash(self.gateway.config.path)

    # --- AdminSources ---------------------------------------------------------------------------------------

    def metrics(self, openmetrics: bool) -> bytes:
        return generate_openmetrics(self.registry) if openmetrics else generate_latest(self.registry)

    def readiness(self) -> tuple[bool, list[str]]:
        gateway = self.gateway
        reasons = []
        if not gateway.listening:
            reasons.append("the gateway is not listening (starting, or draining after SIGTERM)")
        if not self.registry_ready:
            reasons.append(f"the registry ({self.registry_kind}) has not delivered the providers yet")
        for site in sorted({*gateway.peer_groups, *gateway.bolt_peer_groups}):
            groups = [group for group in (gateway.peer_groups.get(site), gateway.bolt_peer_groups.get(site)) if group]
            down = [group for group in groups if not group.up]
            if down and not self._covered(site):
                errors = "; ".join(sorted({group.last_error for group in down}))
                reasons.append(f"no link up to site {site}: {errors}")
        return not reasons, reasons

    def _covered(self, site: str) -> bool:
        """Every import that `site` serves has another site of its `from:` list with a link up (failover), and
        no message import goes to it: a standby site that is down does not make the gateway unready."""
        config, gateway = self.gateway.config, self.gateway
        if config.messaging is not None and any(item.to == site for item in config.messaging.imports):
            return False
        serving = [item for item in config.imports if site in item.sites]
        return bool(serving) and all(
            any(other != site and _group_up(gateway, item.protocol, other) for other in item.sites)
            for item in serving)

    def status(self) -> dict:
        gateway = self.gateway
        config, snapshot = gateway.config, gateway.snapshot
        ready, reasons = self.readiness()
        now = time.time()
        bound = gateway.bound
        return {
            "site": config.site,
            "version": VERSION,
            "worker": self.worker,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "uptime_s": round(now - self.started_at, 3),
            "ready": ready,
            "not_ready": reasons,
            "config": {"path": str(config.path), "sha256": self._config_hash, "last_reload": self.last_reload},
            "listen": {
                "triple": _text(bound.triple), "bolt": _text(bound.bolt), "peer": _text(bound.peer),
                "admin": self.admin_address,
            },
            "certificate": _certificate_file(str(config.tls.cert)),
            "peers": [self._peer(name) for name in sorted(config.peers)],
            "exports": [self._export(route) for route in snapshot.export_routes],
            "imports": [
                {"service": item.service, "from": item.from_site, "protocol": item.protocol,
                 "link_up": _group_up(gateway, item.protocol, item.from_site),
                 "failover": [{"site": site, "link_up": _group_up(gateway, item.protocol, site)}
                              for site in item.failover],
                 # (with the static registry nothing is published: callers are given our address)
                 "published": None if self.registry_kind == "static"
                 else (item.service, item.protocol) in gateway.published}
                for item in config.imports
            ],
            "messaging": self._messaging(),
            "denials": [
                {"at": denial.at, "peer": denial.peer, "caller_app": denial.caller_app, "service": denial.service,
                 "reason": denial.reason}
                for denial in reversed(gateway.calls.metrics.denials)
            ],
            "counters": self._counters(),
        }

    def _peer(self, name: str) -> dict:
        gateway = self.gateway
        peer = gateway.config.peers[name]
        links = []
        for protocol, groups in (("triple", gateway.peer_groups), ("bolt", gateway.bolt_peer_groups)):
            group = groups.get(name)
            if group is None:
                continue
            for address, pool in zip(peer.endpoints, group.pools):
                links.append(_link(str(address), protocol, pool))
        bundle = gateway.snapshot.peer_cas.get(name, ())
        return {
            "site": name,
            "domain": peer.domain,
            "given_domain": gateway.config.domains.get(name),
            "ca_not_after": min((_iso(certificate.not_valid_after_utc) for certificate in bundle), default=None),
            "links": links,
            "inbound_connections": sum(1 for endpoint in gateway.ingress if endpoint.attributes.get("site") == name),
        }

    def _export(self, route) -> dict:  # noqa: ANN001 - ExportRoute
        gateway = self.gateway
        group = gateway.providers.group(route.pool_key)
        sync = gateway.providers.synced.get(route.pool_key)
        now = time.time()
        return {
            "service": route.service,
            "protocol": route.protocol,
            "registry": sync[0] if sync else ("static" if route.providers else self.registry_kind),
            "providers": [pool.name.removeprefix("provider ") for pool in group.pools] if group else [],
            "providers_up": sum(1 for pool in group.pools if pool.up) if group else 0,
            "synced": bool(sync) and not sync[2],
            "last_sync": sync[1] if sync else None,
            "sync_age_s": round(now - sync[1], 3) if sync else None,
            "allow": sorted(route.allow),
            "shadow_providers": [str(address) for address in route.shadow_providers],
            "ejected": _ejected(group),
            "loadtest": "deny" if route.loadtest_denied else "allow",
        }

    def _messaging(self) -> dict | None:
        """The broker, each import (what crossed, what waits) and each export (what landed)."""
        runtime = self.messaging
        if runtime is None:
            return None
        broker, counters = runtime.broker, self.gateway.calls.message_metrics
        settings = self.gateway.config.messaging or runtime.settings
        pumps = {(pump.item.subject, pump.item.to): pump for pump in runtime.pumps}
        imports = []
        for item in runtime.settings.imports:
            pump = pumps.get((item.subject, item.to))
            numbers = counters.imports.get((item.subject, item.to))
            imports.append({
                "subject": item.subject, "to": item.to, "read_here": pump is not None,
                "stream": pump.stream if pump else item.stream, "consumer": pump.durable if pump else None,
                "link_up": _group_up(self.gateway, "triple", item.to),
                "ready": bool(numbers and numbers.connected),
                "delivered": numbers.delivered if numbers else 0, "duplicates": numbers.duplicates if numbers else 0,
                "redelivered": numbers.redelivered if numbers else 0,
                "dead_lettered": numbers.dead_lettered if numbers else 0, "lag": numbers.lag if numbers else 0,
                "last_error": numbers.last_error if numbers else None,
            })
        stored: Counter[tuple[str, str]] = Counter()
        for (peer, subject, _duplicate), count in counters.stored.items():
            stored[(subject, peer)] += count
        return {
            "broker": {"kind": settings.broker.kind, "url": runtime.url, "connected": broker.connected,
                       "last_error": broker.last_error},
            "imports": imports,
            "exports": [
                {"subject": item.subject, "stream": item.stream, "allow": sorted(item.allow),
                 "stored": {peer: stored[(item.subject, peer)] for peer in sorted(item.allow)}}
                for item in settings.exports
            ],
            "export_streams_error": runtime.export_streams_error,
        }

    def _counters(self) -> dict:
        metrics = self.gateway.calls.metrics
        calls: Counter[str] = Counter()
        for labels, cell in metrics.calls.items():
            calls[labels[5]] += int(cell[0])
        denials = sum(count for (_, decision, _), count in metrics.audit.items() if decision == "deny")
        return {
            "calls": dict(sorted(calls.items())),
            "calls_in_flight": sum(self.gateway.calls_in_flight_by_ingress().values()),
            "denials": denials,
            "reloads": {"ok": self.reloads["ok"], "failed": self.reloads["failed"]},
            "limit_trips": dict(sorted(trips.TRIPS.items())),
        }


def _link(address: str, protocol: str, pool: ConnectionPool) -> dict:
    connections = []
    wall_offset = time.time() - trio.current_time()
    peer_certificate = None
    for endpoint in pool.endpoints:
        chain = endpoint.attributes.get("chain") or ()
        if chain and peer_certificate is None:
            peer_certificate = _with_days_left(_certificate(bytes(chain[0]), pem=False))  # type: ignore[index]
        connections.append({
            "usable": endpoint.usable,
            "streams": len(endpoint.streams),
            "since": round(endpoint.opened_at + wall_offset, 3),
            "rtt_ms": round(endpoint.rtt * 1000, 3) if endpoint.rtt is not None else None,
        })
    rtts = [item["rtt_ms"] for item in connections if item["rtt_ms"] is not None]
    return {
        "endpoint": address,
        "protocol": protocol,
        "up": pool.up,
        "connections_up": sum(1 for item in connections if item["usable"]),
        "connections": pool.size,
        "connecting": pool.connecting,
        "idle": pool.dormant > 0,  # closed for idleness (limits.provider_idle_timeout_ms): dialled on the next call
        "rtt_ms": min(rtts) if rtts else None,
        "last_handshake": max((item["since"] for item in connections), default=None),
        "last_error": None if pool.up else pool.last_error,
        "peer_certificate": peer_certificate,
        "detail": connections,
    }


def _ejected(group) -> list[str]:  # noqa: ANN001 - PoolGroup
    """The providers an outlier ejection keeps from calls now."""
    outliers = group.outliers if group is not None else None
    if outliers is None:
        return []
    now = trio.current_time()
    return [pool.name.removeprefix("provider ") for pool in group.pools if outliers.ejected.get(id(pool), 0) > now]


def _group_up(gateway: Gateway, protocol: str, site: str) -> bool:
    group = (gateway.peer_groups if protocol == "triple" else gateway.bolt_peer_groups).get(site)
    return bool(group and group.up)


# --- certificates (parsed once per distinct file content or DER) ------------------------------------------------


def _certificate_file(path: str) -> dict | None:
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError:
        return None
    return _with_days_left(_certificate(data, pem=True))


def _with_days_left(described: dict | None) -> dict | None:
    """A certificate's description (remembered per certificate) with the days it has left, as of now."""
    if described is None:
        return None
    return {**described, "expires_in_days": round((described["not_after_ts"] - time.time()) / 86400, 2)}


@lru_cache(maxsize=64)
def _certificate(data: bytes, *, pem: bool) -> dict | None:
    """A certificate (PEM or DER) described, once per certificate; None when it cannot be read."""
    try:
        return _describe(x509.load_pem_x509_certificate(data) if pem else x509.load_der_x509_certificate(data))
    except ValueError:
        return None


def _describe(certificate: x509.Certificate) -> dict:
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    not_after = certificate.not_valid_after_utc
    return {
        "subject": certificate.subject.rfc4514_string(),
        "uri": uris[0] if uris else None,
        "not_after": _iso(not_after),
        "not_after_ts": not_after.timestamp(),
    }


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _file_hash(path) -> str | None:  # noqa: ANN001
    try:
        with open(path, "rb") as file:
            return hashlib.sha256(file.read()).hexdigest()
    except OSError:
        return None


def _text(value: object) -> str | None:
    return None if value is None else str(value)


# --- Prometheus --------------------------------------------------------------------------------------------------

_CALL_LABELS = ["ingress", "peer_site", "service", "method", "protocol", "status", "translated", "loadtest"]
_DURATION_LABELS = ["ingress", "peer_site", "service", "protocol", "translated", "loadtest"]
_BUCKET_NAMES = [repr(float(bound)) if bound != int(bound) else f"{bound:.1f}" for bound in BUCKETS] + ["+Inf"]


class _Collector(Collector):
    """Every metric of one gateway, built from its tables at each scrape (prometheus-client writes them)."""

    def __init__(self, status: GatewayStatus) -> None:
        self.status = status

    def collect(self) -> Iterator:
        status = self.status
        gateway = status.gateway
        config, snapshot = gateway.config, gateway.snapshot
        metrics = gateway.calls.metrics
        site = config.site

        yield InfoMetricFamily("interlink_build", "The gateway's version and site.",
                               value={"version": VERSION, "site": site})

        calls = CounterMetricFamily("interlink_calls", "Calls finished, by where they came from and how they ended.",
                                    labels=_CALL_LABELS)
        durations: dict[tuple, list[float]] = {}
        for labels, cell in metrics.calls.items():
            calls.add_metric(list(labels), cell[0])
            ingress, peer, service, _method, protocol, _status, translated, loadtest = labels
            key = (ingress, peer, service, protocol, translated, loadtest)
            total = durations.get(key)
            if total is None:
                durations[key] = list(cell)
            else:
                for index, value in enumerate(cell):
                    total[index] += value
        yield calls
        histogram = HistogramMetricFamily("interlink_call_duration_seconds", "Time from a call's request to its end.",
                                          labels=_DURATION_LABELS)
        for key, cell in durations.items():
            running, buckets = 0, []
            for name, count in zip(_BUCKET_NAMES, cell[2:]):
                running += count
                buckets.append((name, running))
            histogram.add_metric(list(key), buckets, cell[1])
        yield histogram

        in_flight = GaugeMetricFamily("interlink_calls_in_flight", "Calls in flight, by ingress.", labels=["ingress"])
        for ingress, count in gateway.calls_in_flight_by_ingress().items():
            in_flight.add_metric([ingress], count)
        yield in_flight

        link_up = GaugeMetricFamily("interlink_peer_link_up", "1 when at least one connection to that peer gateway "
                                    "is up (per endpoint and protocol).", labels=["peer_site", "endpoint", "protocol"])
        connections = GaugeMetricFamily("interlink_peer_connections", "Connections with peer gateways, by state.",
                                        labels=["peer_site", "state"])
        for name, peer in config.peers.items():
            up = connecting = 0
            for protocol, groups in (("triple", gateway.peer_groups), ("bolt", gateway.bolt_peer_groups)):
                group = groups.get(name)
                if group is None:
                    continue
                for address, pool in zip(peer.endpoints, group.pools):
                    link_up.add_metric([name, str(address), protocol], 1 if pool.up else 0)
                    up += sum(1 for endpoint in pool.endpoints if endpoint.usable)
                    connecting += pool.connecting
            inbound = sum(1 for endpoint in gateway.ingress if endpoint.attributes.get("site") == name)
            connections.add_metric([name, "up"], up)
            connections.add_metric([name, "connecting"], connecting)
            connections.add_metric([name, "inbound"], inbound)
        yield link_up
        yield connections

        audit = CounterMetricFamily("interlink_audit_decisions", "Audit decisions on the peer port.",
                                    labels=["peer_site", "decision", "reason"])
        for (peer, decision, reason), count in metrics.audit.items():
            audit.add_metric([peer, decision, reason], count)
        yield audit

        retries = CounterMetricFamily("interlink_retries", "Calls tried again on another upstream (gateway/retries.py): "
                                      "why = unprocessed (it had not reached one) | idempotent (UNAVAILABLE, a "
                                      "method declared idempotent).", labels=["ingress", "service", "why"])
        for (ingress, service, why), count in metrics.retries.items():
            retries.add_metric([ingress, service, why], count)
        yield retries

        expiry = GaugeMetricFamily("interlink_certificate_expiry_timestamp_seconds",
                                   "When a certificate expires (unix time): ours, our CA, each peer's CA bundle, and "
                                   "the certificates peer gateways presented.", labels=["site", "role"])
        own = _certificate_file(str(config.tls.cert))
        if own:
            expiry.add_metric([site, "gateway"], own["not_after_ts"])
        ca = _certificate_file(str(config.tls.ca))
        if ca:
            expiry.add_metric([site, "ca"], ca["not_after_ts"])
        for name, bundle in snapshot.peer_cas.items():
            if bundle:
                expiry.add_metric([name, "peer_ca"], min(c.not_valid_after_utc for c in bundle).timestamp())
            seen = [_certificate(bytes(chain[0]), pem=False) for chain in _peer_chains(gateway, name)]
            seen = [item for item in seen if item]
            if seen:
                expiry.add_metric([name, "peer_gateway"], min(item["not_after_ts"] for item in seen))
        yield expiry

        providers = GaugeMetricFamily("interlink_registry_providers", "Providers known per export.",
                                      labels=["service", "pool"])
        for route in snapshot.export_routes:
            group = gateway.providers.group(route.pool_key)
            providers.add_metric([route.service, "providers"], len(group.pools) if group else 0)
            if route.shadow_pool_key:
                shadow = gateway.providers.group(route.shadow_pool_key)
                providers.add_metric([route.service, "shadow"], len(shadow.pools) if shadow else 0)
        yield providers
        synced = GaugeMetricFamily("interlink_registry_last_sync_timestamp_seconds",
                                   "When the registry last delivered a provider set (unix time), per registry.",
                                   labels=["registry"])
        latest: dict[str, float] = {}
        for registry, at, _stale in gateway.providers.synced.values():
            latest[registry] = max(at, latest.get(registry, 0.0))
        for registry, at in sorted(latest.items()):
            synced.add_metric([registry], at)
        yield synced

        reloads = CounterMetricFamily("interlink_config_reloads", "Configuration reloads (SIGHUP), by result.",
                                      labels=["result"])
        for result in ("ok", "failed"):
            reloads.add_metric([result], status.reloads[result])
        yield reloads

        limit_trips = CounterMetricFamily("interlink_limit_trips", "Hardening limits tripped, by limit.",
                                          labels=["limit"])
        for limit in trips.LIMITS:
            limit_trips.add_metric([limit], trips.TRIPS[limit])
        yield limit_trips

        yield from _message_metrics(status)

        exporter = status.exporter
        if exporter is not None:
            spans = CounterMetricFamily("interlink_spans", "Spans sent to the OTLP endpoint, by outcome.",
                                        labels=["outcome"])
            spans.add_metric(["exported"], exporter.exported)
            spans.add_metric(["dropped"], exporter.dropped)
            spans.add_metric(["failed"], exporter.failed_spans)
            yield spans


def _message_metrics(status: GatewayStatus) -> Iterator:
    runtime = status.messaging
    if runtime is None:
        return
    counters = status.gateway.calls.message_metrics
    broker = GaugeMetricFamily("interlink_broker_connected", "1 when the gateway's connection to its site's broker "
                               "is up.", labels=["kind"])
    broker.add_metric([runtime.settings.broker.kind], 1 if runtime.broker.connected else 0)
    yield broker
    messages = CounterMetricFamily("interlink_messages", "Messages of each messaging import, by outcome "
                                   "(delivered includes duplicates; redelivered: sent again).",
                                   labels=["subject", "peer_site", "outcome"])
    lag = GaugeMetricFamily("interlink_message_lag", "Messages waiting in our broker for each messaging import.",
                            labels=["subject", "peer_site"])
    for (subject, to), numbers in sorted(counters.imports.items()):
        for outcome in ("delivered", "duplicates", "redelivered", "dead_lettered"):
            messages.add_metric([subject, to, outcome], getattr(numbers, outcome))
        lag.add_metric([subject, to], numbers.lag)
    yield messages
    yield lag
    stored = CounterMetricFamily("interlink_messages_stored", "Messages peers delivered into our broker, per "
                                 "message export (duplicate: it was there already).",
                                 labels=["subject", "peer_site", "duplicate"])
    for (peer, subject, duplicate), count in sorted(counters.stored.items()):
        stored.add_metric([subject, peer, "true" if duplicate else "false"], count)
    yield stored


def _peer_chains(gateway: Gateway, site: str) -> Iterator:
    for groups in (gateway.peer_groups, gateway.bolt_peer_groups):
        group = groups.get(site)
        if group is None:
            continue
        for pool in group.pools:
            for endpoint in pool.endpoints:
                chain = endpoint.attributes.get("chain")
                if chain:
                    yield chain
