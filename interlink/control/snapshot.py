"""The immutable view of a site that the request path reads: routes, ACLs, TLS contexts.

Built once from a validated `SiteConfig` (and again on reload); a call uses the snapshot it started with.
Everything the per-call path needs is precomputed here (header bytes, lookups keyed by what arrives on the
wire), so that a call does dictionary lookups, not config interpretation.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Callable, Mapping

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from interlink.control.config import AclRule, ExportConfig, HostPort, ImportConfig, PeerConfig, SiteConfig
from interlink.net import tls
from registry_adapters.model import ServiceKey


class SnapshotError(Exception):
    """The site file was valid YAML but cannot be served (unreadable certificate, key mismatch ...)."""


@dataclass(frozen=True, slots=True)
class ImportRoute:
    """A peer's service that our local callers may call."""

    service: str
    peer: str
    authority: bytes  # the access domain the peer gave us: :authority and SNI on the link


@dataclass(frozen=True, slots=True)
class ExportRoute:
    """One of our services, exposed to named peer sites. A call reaches it in its caller's protocol; when
    that is not `protocol` (how our providers speak), the gateway translates (gateway/translation.py)."""

    service: str
    providers: tuple[HostPort, ...]
    allow: Mapping[str, AclRule]  # peer site -> rule
    timeout: float | None  # default deadline (s) when the caller sets none
    protocol: str = "triple"  # triple | bolt
    flavour: str = "grpc"  # triple: grpc | sofa | dubbo
    codec: str = "hessian2"  # bolt: hessian2 | protobuf
    version: str | None = None
    unique_id: str | None = None
    group: str | None = None

    # Derived once here, not per call: the names the request path and the registry use.
    bolt_name: str = field(init=False)  # the unique name Bolt callers address it by (and sofa_head_target_service)
    pool_key: str = field(init=False)  # which provider pool group serves it (one per export)
    registry_key: ServiceKey = field(init=False)  # what the registry knows its providers by

    def __post_init__(self) -> None:
        bolt_name = bolt_unique_name(self.service, self.version, self.unique_id)
        object.__setattr__(self, "bolt_name", bolt_name)
        object.__setattr__(self, "pool_key", f"{self.protocol}:{bolt_name if self.protocol == 'bolt' else self.service}")
        object.__setattr__(self, "registry_key", _registry_key(self))


def _registry_key(route: ExportRoute) -> ServiceKey:
    """SOFARPC keys: interface, version, uniqueId; Dubbo keys: interface, version and group."""
    if route.protocol == "bolt":
        return ServiceKey(route.service, "bolt", unique_id=route.unique_id or "", version=route.version or "1.0")
    if route.flavour == "dubbo":
        return ServiceKey(route.service, "tri", version=route.version or "", group=route.group or "")
    return ServiceKey(route.service, "tri", unique_id=route.unique_id or "", version=route.version or "1.0")


@dataclass(frozen=True)
class Snapshot:
    config: SiteConfig
    imports: Mapping[str, ImportRoute]  # Triple: service -> route
    exports: Mapping[str, ExportRoute]  # as Triple callers address them: service -> route (any provider protocol)
    bolt_imports: Mapping[str, ImportRoute]  # Bolt: unique name (interface:version[:uniqueId]) -> route
    bolt_exports: Mapping[str, ExportRoute]  # as Bolt callers address them: unique name -> route
    export_routes: tuple[ExportRoute, ...]  # every export once, in site-file order
    peer_of_domain: Mapping[bytes, str]  # access domain we gave -> the only site that may use it
    domain_of_peer: Mapping[str, bytes]
    peer_cas: Mapping[str, tuple[x509.Certificate, ...]]  # peer site -> its CA bundle
    peer_anchors: Mapping[str, frozenset[bytes]]  # peer site -> its CA bundle, DER (to re-judge live connections)
    own_identity: bytes  # our certificate file + key file, to tell whether a reload changed them
    server_tls: tls.PeerServerTLS | None
    client_tls: Mapping[str, ssl.SSLContext]  # peer site -> context for dialing it (ALPN h2)
    client_tls_bolt: Mapping[str, ssl.SSLContext]  # peer site -> context for dialing it (ALPN bolt)
    default_timeout: float

    @property
    def site(self) -> str:
        return self.config.site


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
            item.service: _import_route(item, config.peers[item.from_site])
            for item in config.imports
            if item.protocol == "triple"
        },
        exports=_by_caller_protocol(export_routes, "triple", lambda route: route.service),
        bolt_imports={
            bolt_unique_name(item.service, item.version): _import_route(item, config.peers[item.from_site])
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
    )


def bolt_unique_name(service: str, version: str | None, unique_id: str | None = None) -> str:
    """SOFARPC's service unique name as Bolt callers send it in the `service` header:
    `interface:version[:uniqueId]` (version defaults to 1.0, as in SOFARPC)."""
    name = f"{service}:{version or '1.0'}"
    return f"{name}:{unique_id}" if unique_id else name


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


def _import_route(item: ImportConfig, peer: PeerConfig) -> ImportRoute:
    return ImportRoute(service=item.service, peer=peer.name, authority=peer.domain.lower().encode())


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
    )
