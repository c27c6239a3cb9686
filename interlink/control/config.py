"""Typed site configuration: what one site file says, validated once at load.

The YAML loader lives in `interlink.control.sitefile`; this module only defines the shapes, so that the
gateway, the checker and the tests share one vocabulary. Everything is frozen: a snapshot built from a
`SiteConfig` can never be changed underneath an in-flight call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Listen:
    triple: HostPort | None = None  # local callers, gRPC/Triple over h2c
    bolt: HostPort | None = None  # local callers, SOFA Bolt
    peer: HostPort | None = None  # peer gateways, mTLS
    admin: HostPort | None = None  # metrics, health, status


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca: Path  # this site's CA certificate
    cert: Path  # this gateway's certificate (SAN spiffe://<trust_domain>/site/<site>)
    key: Path


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    kind: str = "static"
    options: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PeerConfig:
    name: str
    endpoints: tuple[HostPort, ...]
    ca: Path  # trust anchor for this peer's gateway certificates
    domain: str  # the access domain this peer gave *us*: we use it when we call them
    connections: int = 2  # long-lived mTLS connections per endpoint
    max_concurrent_streams: int = 256  # per connection, on our side of the link
    keepalive_interval_ms: int = 10_000  # PING a connection that has been quiet this long
    keepalive_timeout_ms: int = 5_000  # ... and close it (failing its calls) if no ACK comes back in time


@dataclass(frozen=True, slots=True)
class AclRule:
    """Who in one peer site may call an export. None means "any"."""

    apps: frozenset[str] | None = None
    methods: frozenset[str] | None = None

    def permits(self, app: str | None, method: str) -> bool:
        if self.apps is not None and app not in self.apps:
            return False
        return self.methods is None or method in self.methods


@dataclass(frozen=True, slots=True)
class ExportConfig:
    service: str
    protocol: str = "triple"  # how our providers speak: triple | bolt
    version: str | None = None
    flavour: str = "grpc"  # triple only: grpc (IDL protobuf) | sofa (SOFARPC Triple) | dubbo (Dubbo 3 Triple)
    codec: str = "hessian2"  # bolt only: the body codec its providers take from translated Triple calls
    unique_id: str | None = None  # SOFA uniqueId (bolt, or triple flavour sofa: sent as tri-service-version)
    group: str | None = None  # Dubbo group (triple flavour dubbo: tri-service-group)
    providers: tuple[HostPort, ...] = ()
    allow: Mapping[str, AclRule] = field(default_factory=dict)  # peer site -> rule
    timeout_ms: int | None = None  # default deadline when the caller sets none


@dataclass(frozen=True, slots=True)
class ImportConfig:
    service: str
    from_site: str  # YAML key "from"
    protocol: str = "triple"  # how our local callers speak to it
    version: str | None = None


@dataclass(frozen=True, slots=True)
class SiteConfig:
    path: Path  # the site file (relative paths inside it were resolved against its folder)
    site: str
    listen: Listen
    tls: TlsFiles
    trust_domain: str = "interlink"
    registry: RegistryConfig = RegistryConfig()
    peers: Mapping[str, PeerConfig] = field(default_factory=dict)
    domains: Mapping[str, str] = field(default_factory=dict)  # peer site -> access domain we gave it
    exports: tuple[ExportConfig, ...] = ()
    imports: tuple[ImportConfig, ...] = ()
    default_timeout_ms: int = 30_000  # deadline for calls that carry none
    # YAML location of each key, e.g. lines["peers.site-b.domain"] == 17, for cross-file errors.
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)
