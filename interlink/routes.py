"""The types the request path reads, built by `interlink.control.snapshot` (below both, so that the gateway
never imports control): the immutable `Snapshot` of a site — routes, ACLs, TLS contexts — and its routes.

A call uses the snapshot it started with. Everything the per-call path needs is precomputed here (header
bytes, lookups keyed by what arrives on the wire), so that a call does dictionary lookups, not config
interpretation.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Mapping

from cryptography import x509

from interlink.config import AclRule, HeaderStage, HostPort, OutlierConfig, ProviderTags, RetryConfig, SiteConfig
from interlink.net import tls
from interlink.wire import message_link
from registry_adapters.model import ServiceKey


@dataclass(frozen=True, slots=True)
class ImportRoute:
    """A peer's service that our local callers may call."""

    service: str
    peer: str
    authority: bytes  # the access domain the peer gave us: :authority and SNI on the link
    max_in_flight: int | None = None  # circuit breaking (gateway/limits.py)
    failover: tuple[tuple[str, bytes], ...] = ()  # (site, its access domain for us): the next sites in order
    retry: RetryConfig | None = None  # safe retries on another gateway of the peer (gateway/retries.py)


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
    shadow_providers: tuple[HostPort, ...] = ()  # where load-test calls go instead (none: the providers)
    loadtest_denied: bool = False  # load-test calls are refused
    max_in_flight: int | None = None  # circuit breaking (gateway/limits.py)
    outlier: OutlierConfig | None = None  # eject failing providers for a while (net/pool.py Outliers)
    connections: int = 1  # connections to each provider
    routing: tuple[str | HeaderStage, ...] = ()  # routing stages over the providers (net/pool.py Router)
    retry: RetryConfig | None = None  # safe retries on another provider (gateway/retries.py)
    provider_tags: Mapping[HostPort, ProviderTags] = field(default_factory=dict)  # the site file's tags

    # Derived once here, not per call: the names the request path and the registry use.
    bolt_name: str = field(init=False)  # the unique name Bolt callers address it by (and sofa_head_target_service)
    pool_key: str = field(init=False)  # which provider pool group serves it (one per export)
    shadow_pool_key: str | None = field(init=False)  # ... and its load-test calls, with shadow providers
    registry_key: ServiceKey = field(init=False)  # what the registry knows its providers by

    def __post_init__(self) -> None:
        bolt_name = bolt_unique_name(self.service, self.version, self.unique_id)
        object.__setattr__(self, "bolt_name", bolt_name)
        pool_key = f"{self.protocol}:{bolt_name if self.protocol == 'bolt' else self.service}"
        object.__setattr__(self, "pool_key", pool_key)
        object.__setattr__(self, "shadow_pool_key", f"{pool_key}#loadtest" if self.shadow_providers else None)
        object.__setattr__(self, "registry_key", _registry_key(self))


def _registry_key(route: ExportRoute) -> ServiceKey:
    """SOFARPC keys: interface, version, uniqueId; Dubbo keys: interface, version and group."""
    if route.protocol == "bolt":
        return ServiceKey(route.service, "bolt", unique_id=route.unique_id or "", version=route.version or "1.0")
    if route.flavour == "dubbo":
        return ServiceKey(route.service, "tri", version=route.version or "", group=route.group or "")
    return ServiceKey(route.service, "tri", unique_id=route.unique_id or "", version=route.version or "1.0")


@dataclass(frozen=True, slots=True)
class MessageExportRoute:
    """Messages named peers may deliver into our broker (messaging.exports): a MessageLink call whose method
    (the subject) matches `subject` lands in `stream`. Read by the call core and the filters as an export."""

    subject: str  # NATS subject, wildcards allowed
    stream: str
    allow: Mapping[str, AclRule]  # peer site -> producer apps
    service: str = message_link.SERVICE
    protocol: str = "message"
    flavour: str = "grpc"
    loadtest_denied: bool = False
    shadow_pool_key: str | None = None
    max_in_flight: int | None = None


@dataclass(frozen=True)
class MessageExports:
    """The message exports by subject: exact subjects first, then patterns in site-file order."""

    exact: Mapping[str, MessageExportRoute] = field(default_factory=dict)
    patterns: tuple[MessageExportRoute, ...] = ()

    def route(self, subject: str | None) -> MessageExportRoute | None:
        if subject is None:
            return None
        route = self.exact.get(subject)
        if route is None:
            for candidate in self.patterns:
                if message_link.subject_matches(candidate.subject, subject):
                    return candidate
        return route

    def routes(self) -> tuple[MessageExportRoute, ...]:
        return (*self.exact.values(), *self.patterns)


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
    message_exports: MessageExports = MessageExports()

    @property
    def site(self) -> str:
        return self.config.site


def bolt_unique_name(service: str, version: str | None, unique_id: str | None = None) -> str:
    """SOFARPC's service unique name as Bolt callers send it in the `service` header:
    `interface:version[:uniqueId]` (version defaults to 1.0, as in SOFARPC)."""
    name = f"{service}:{version or '1.0'}"
    return f"{name}:{unique_id}" if unique_id else name
