"""Building the `Snapshot` (interlink/routes.py) the request path reads, from a validated `SiteConfig`: once at
start and again on every reload. Certificates are judged here as the peer link will judge them."""

from __future__ import annotations

import ssl
from typing import Callable

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from interlink.config import ExportConfig, ImportConfig, PeerConfig, SiteConfig
from interlink.net import tls
from interlink.routes import ExportRoute, ImportRoute, MessageExportRoute, MessageExports, Snapshot, bolt_unique_name


log = structlog.get_logger("interlink.control")


class SnapshotError(Exception):
    """The site file was valid YAML but cannot be served (unreadable certificate, key mismatch ...)."""


def build_snapshot(config: SiteConfig) -> Snapshot:
    peer_cas = {name: _load_ca(peer) for name, peer in config.peers.items()}
    server_tls = None
    client_tls: dict[str, ssl.SSLContext] = {}
    client_tls_bolt: dict[str, ssl.SSLContext] = {}
    refusal = tls.certificate_refusal(
        config.tls.cert, config.tls.key, config.tls.ca, site=config.site, trust_domain=config.trust_domain
    )
    if refusal is not None:
        raise SnapshotError(
            f"{config.path}: tls.cert {config.tls.cert}: {refusal}; peers would refuse this gateway. Run "
            "`interlink check` on the site file for the details, or issue a new certificate with `interlink certs issue`"
        )
    try:
        if config.listen.peer is not None:
            server_tls = tls.peer_server_tls(
                config.tls.cert,
                config.tls.key,
                {name: peer.ca for name, peer in config.peers.items()},
                {domain: peer for peer, domain in config.domains.items()},
                alpn=(tls.ALPN_H2, tls.ALPN_BOLT),
            )
        for name, peer in config.peers.items():
            client_tls[name] = tls.peer_client_tls(config.tls.cert, config.tls.key, peer.ca)
            client_tls_bolt[name] = tls.peer_client_tls(config.tls.cert, config.tls.key, peer.ca, alpn=(tls.ALPN_BOLT,))
    except (OSError, ssl.SSLError) as exc:
        raise SnapshotError(
            f"{config.path}: cannot load TLS files (tls.cert {config.tls.cert}, tls.key {config.tls.key}): {exc}; "
            "run `interlink check` on the site file, or create them with `interlink certs init-site`"
        ) from exc
    export_routes = [_export_route(item, config) for item in config.exports]
    return Snapshot(
        config=config,
        imports={
            item.service: _import_route(item, config)
            for item in config.imports
            if item.protocol == "triple"
        },
        exports=_by_caller_protocol(export_routes, "triple", lambda route: route.service),
        bolt_imports={
            bolt_unique_name(item.service, item.version): _import_route(item, config)
            for item in config.imports
            if item.protocol == "bolt"
        },
        bolt_exports=_by_caller_protocol(export_routes, "bolt", lambda route: route.bolt_name),
        export_routes=tuple(export_routes),
        peer_of_domain={domain.lower().encode(): peer for peer, domain in config.domains.items()},
        domain_of_peer={peer: domain.lower().encode() for peer, domain in config.domains.items()},
        peer_cas=peer_cas,
        peer_anchors={
            name: frozenset(certificate.public_bytes(serialization.Encoding.DER) for certificate in bundle)
            for name, bundle in peer_cas.items()
        },
        own_identity=_read(config.tls.cert) + b"\0" + _read(config.tls.key),
        server_tls=server_tls,
        client_tls=client_tls,
        client_tls_bolt=client_tls_bolt,
        default_timeout=config.default_timeout_ms / 1000,
        message_exports=_message_exports(config),
    )


def _message_exports(config: SiteConfig) -> MessageExports:
    if config.messaging is None:
        return MessageExports()
    routes = [MessageExportRoute(item.subject, item.stream, item.allow) for item in config.messaging.exports]
    exact = {route.subject: route for route in routes if "*" not in route.subject and ">" not in route.subject}
    return MessageExports(exact, tuple(route for route in routes if route.subject not in exact))


def _by_caller_protocol(
    routes: list[ExportRoute], protocol: str, key: Callable[[ExportRoute], str]
) -> dict[str, ExportRoute]:
    """Exports as callers of `protocol` address them: every export is reachable in both protocols (the
    other one translated); where two exports share a key, the one whose providers speak it natively wins."""
    table: dict[str, ExportRoute] = {}
    for route in sorted(routes, key=lambda route: route.protocol == protocol):
        table[key(route)] = route
    return table


def _read(path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _load_ca(peer: PeerConfig) -> tuple[x509.Certificate, ...]:
    try:
        return tuple(tls.load_certificates(peer.ca))
    except (OSError, ValueError) as exc:
        raise SnapshotError(f"peers.{peer.name}.ca: cannot read CA certificate {peer.ca}: {exc}") from exc


def _import_route(item: ImportConfig, config: SiteConfig) -> ImportRoute:
    peer = config.peers[item.from_site]
    failover = tuple((site, config.peers[site].domain.lower().encode()) for site in item.failover)
    return ImportRoute(service=item.service, peer=peer.name, authority=peer.domain.lower().encode(),
                       max_in_flight=item.max_in_flight, failover=failover, retry=item.retry)


def _export_route(item: ExportConfig, config: SiteConfig) -> ExportRoute:
    timeout_ms = item.timeout_ms if item.timeout_ms is not None else config.default_timeout_ms
    return ExportRoute(
        service=item.service,
        providers=item.providers,
        allow=dict(item.allow),
        timeout=timeout_ms / 1000,
        protocol=item.protocol,
        flavour=item.flavour,
        codec=item.codec,
        version=item.version,
        unique_id=item.unique_id,
        group=item.group,
        shadow_providers=item.shadow_providers,
        loadtest_denied=item.loadtest == "deny",
        max_in_flight=item.max_in_flight,
        outlier=item.outlier,
        connections=item.connections,
        routing=item.routing,
        retry=item.retry,
        provider_tags=dict(item.provider_tags),
    )


def log_expiring_certificates(snapshot: Snapshot) -> None:
    """A certificate of ours, or a CA we trust for a peer, that expires within tls.expiry_warning_days."""
    config = snapshot.config
    days = config.tls.expiry_warning_days
    try:
        own = tls.load_certificates(config.tls.cert)
    except (OSError, ValueError):
        own = []
    checks = [("tls.cert", str(config.tls.cert), own)] + [
        (f"peers.{name}.ca", str(config.peers[name].ca), list(bundle)) for name, bundle in snapshot.peer_cas.items()
    ]
    for key, path, certificates in checks:
        for certificate, left in tls.expiring(certificates, days):
            log.warning(
                "tls.certificate_expiring", key=key, path=path, subject=certificate.subject.rfc4514_string(),
                not_after=certificate.not_valid_after_utc.isoformat(), days_left=left, warning_days=days,
            )


def restart_needed(old: SiteConfig, new: SiteConfig) -> list[str]:
    """What a reload cannot change in place (the sockets the gateway owns and the pools it keeps): listen
    addresses, dialled peers, imports, the registry, registry-followed exports, `limits:`, and the messaging
    broker and imports (their consumers run from start to stop; message exports and their ACLs reload)."""
    def dialled(config: SiteConfig) -> dict[str, tuple]:
        imported = {site for item in config.imports for site in item.sites}
        if config.messaging is not None:
            imported |= {item.to for item in config.messaging.imports}
        return {
            name: (peer.endpoints, peer.connections, peer.max_concurrent_streams, peer.domain)
            for name, peer in config.peers.items()
            if name in imported
        }

    def imports(config: SiteConfig) -> set[tuple[str, str, str]]:
        return {(i.service, i.sites, i.protocol) for i in config.imports}

    def followed(config: SiteConfig) -> set[tuple[str, str | None, str]]:  # exports whose providers the registry gives
        return {(e.service, e.version, e.protocol) for e in config.exports if not e.providers}

    checks = [
        ("site", old.site != new.site),
        ("listen addresses", old.listen != new.listen),
        ("dialled peers (endpoints, connections, streams, domain)", dialled(old) != dialled(new)),
        ("imports", imports(old) != imports(new)),
        ("registry", old.registry != new.registry),
        ("exports that follow the registry (no providers: list)", followed(old) != followed(new)),
        ("limits", old.limits != new.limits),
        ("messaging broker or imports", _messaging_sources(old) != _messaging_sources(new)),
    ]
    return [what for what, differs in checks if differs]


def _messaging_sources(config: SiteConfig) -> tuple:
    messaging = config.messaging
    if messaging is None:
        return ()
    return (messaging.broker, messaging.imports, messaging.max_message_bytes, messaging.ack_wait_ms,
            messaging.delivery_timeout_ms, messaging.dead_letter_prefix)
