"""Typed site configuration: what one site file says, validated once at load.

The YAML loader lives in `interlink.control.sitefile`; this module only defines the shapes, so that the
gateway, the checker and the tests share one vocabulary. It sits below both `control/` (which reads and
checks site files) and `gateway/` (which is wired from them): layers point down only. Everything is frozen:
a snapshot built from a `SiteConfig` can never be changed underneath an in-flight call.
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
    expiry_warning_days: int = 30  # certificates (ours, peers' CAs) that expire sooner are logged


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
class TracingConfig:
    """`tracing:` — trace ids are always propagated and logged; spans are exported only with an endpoint."""

    otlp_endpoint: str | None = None  # OTLP/HTTP traces URL, e.g. http://127.0.0.1:4318/v1/traces
    sample_ratio: float = 1.0  # share of traces whose spans are exported (decided by the trace id)


@dataclass(frozen=True, slots=True)
class LoadTestConfig:
    """`loadtest:` — what marks a call as load-test traffic (SOFAGW's traffic mark), on either protocol."""

    header: str = "x-interlink-loadtest"  # gRPC header / Bolt header-map key; value 1 or true marks the call
    baggage: str = "mark=T"  # SOFATracer system-baggage pair (Triple tri-trace-sys-baggage, Bolt sysPenAttrs)


@dataclass(frozen=True, slots=True)
class AclRule:
    """Who in one peer site may call an export. None means "any"."""

    apps: frozenset[str] | None = None
    methods: frozenset[str] | None = None
    rate: float | None = None  # calls a second each app of that peer may make (token bucket); None: no limit
    burst: float = 1.0  # ... and how many it may save up
    rate_per_method: bool = False  # one bucket per (app, method) instead of per app

    def permits(self, app: str | None, method: str) -> bool:
        if self.apps is not None and app not in self.apps:
            return False
        return self.methods is None or method in self.methods


@dataclass(frozen=True, slots=True)
class ProviderTags:
    """Where a provider runs and its share, for routing (`providers: [{address, zone, unit, weight}]`, or what a
    registry says: SOFARPC URL parameters zone / unit / weight, DNS-SD SRV weight and TXT zone / unit)."""

    zone: str | None = None
    unit: str | None = None
    weight: int = 100
    group: str | None = None  # a named provider group (canary, gold, ...), chosen by `header` routing stages


ROUTING_STAGES = ("target_zone", "unit", "nearest", "weighted")


@dataclass(frozen=True, slots=True)
class HeaderStage:
    """A `header` routing stage: `{header: x-release, values: [canary], group: canary}` — a call whose header
    `header` has one of `values` goes to the providers of `group` (skipped when that group has none up)."""

    header: str  # lower-case, as HTTP/2 carries it (a Bolt key is compared the same way)
    values: frozenset[str]
    group: str


@dataclass(frozen=True, slots=True)
class UnitRule:
    """`unit_rule` — a caller's unit from a user id (SOFA LDC style) when it names none in x-interlink-unit: the
    id's last two digits (00-99) fall in one unit's ranges, e.g. `{header: x-uid, units: {u00: "00-49",
    u01: "50-99"}}`."""

    header: str
    units: tuple[str | None, ...]  # 100 entries: the unit of each shard 00..99 (None: no unit)

    def unit_of(self, uid: bytes) -> str | None:
        if len(uid) < 2 or not uid[-2:].isdigit():
            return None
        return self.units[int(uid[-2:])]


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """`imports[].retry` / `exports[].retry` — safe retries on another upstream: only calls known not to have
    reached one (refused stream, GOAWAY above it, connection lost before it was written, a gateway's refusal made
    before forwarding), and for `idempotent_methods` also calls answered UNAVAILABLE; within the deadline and
    within the budget (retries at most `budget_percent` of the calls over the last 10 s, at least 10)."""

    attempts: int = 2  # tries in all, the first included
    budget_percent: int = 20
    idempotent_methods: tuple[str, ...] = ()  # method names; "Get*" matches a prefix, "*" every method

    def idempotent(self, method: str | None) -> bool:
        if method is None:
            return False
        for pattern in self.idempotent_methods:
            if pattern == method or (pattern.endswith("*") and method.startswith(pattern[:-1])):
                return True
        return False


@dataclass(frozen=True, slots=True)
class OutlierConfig:
    """`exports[].outlier` — passive health: a provider that fails `consecutive_failures` calls in a row takes no
    calls for `eject_s`, as long as no more than `max_ejected_percent` of the export's providers are ejected."""

    consecutive_failures: int = 5
    eject_s: float = 30.0
    max_ejected_percent: int = 50


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
    # Load-test calls (LoadTestConfig marks them): sent to these providers instead, when there are any...
    shadow_providers: tuple[HostPort, ...] = ()
    loadtest: str = "allow"  # ... and refused (FAILED_PRECONDITION) with "deny"; unmarked calls never go there
    max_in_flight: int | None = None  # calls in flight at this gateway; beyond it, fail fast (RESOURCE_EXHAUSTED)
    outlier: OutlierConfig | None = None  # eject failing providers for a while (None: never)
    connections: int = 1  # connections the gateway keeps to each provider
    provider_tags: Mapping[HostPort, ProviderTags] = field(default_factory=dict)  # providers: written as mappings
    routing: tuple[str | HeaderStage, ...] = ()  # ordered stages (ROUTING_STAGES, HeaderStage); none: round robin
    retry: RetryConfig | None = None  # safe retries on another provider (None: never)


@dataclass(frozen=True, slots=True)
class ImportConfig:
    service: str
    from_site: str  # YAML key "from" (its first site, when it lists several)
    protocol: str = "triple"  # how our local callers speak to it
    version: str | None = None
    max_in_flight: int | None = None  # calls in flight at this gateway; beyond it, fail fast (RESOURCE_EXHAUSTED)
    failover: tuple[str, ...] = ()  # "from: [site-a, site-c]": the sites after the first, in order
    retry: RetryConfig | None = None  # safe retries on another gateway of the peer (None: never)

    @property
    def sites(self) -> tuple[str, ...]:
        """Every site it is imported from, the preferred first."""
        return (self.from_site, *self.failover)


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """`messaging.broker` — this site's message broker (the gateway's only way to its producers/consumers)."""

    kind: str = "nats"  # NATS JetStream (broker_adapters/nats.py)
    url: str = "nats://127.0.0.1:4222"


@dataclass(frozen=True, slots=True)
class MessageImportConfig:
    """`messaging.imports[]` — our producers publish `subject` to our broker; the gateway carries it to `to`."""

    subject: str  # a NATS subject; `*` and `>` wildcards carry every subject they match
    to: str  # the peer site that receives it (it must export the subject to us)
    stream: str | None = None  # the stream that keeps it until it crossed (None: the one that captures the
    #                            subject, or one the gateway creates)
    max_in_flight: int = 256  # messages sent and not yet acknowledged by the peer, per import


@dataclass(frozen=True, slots=True)
class MessageExportConfig:
    """`messaging.exports[]` — what named peers may deliver into our broker, and where it lands."""

    subject: str  # a NATS subject (wildcards allowed); the message keeps the subject it was published to
    stream: str  # the JetStream stream of our broker it lands in (created when missing)
    allow: Mapping[str, AclRule] = field(default_factory=dict)  # peer site -> producer apps


@dataclass(frozen=True, slots=True)
class MessagingConfig:
    """`messaging:` — message interop between this site's broker and the peers' (README "Messages")."""

    broker: BrokerConfig = BrokerConfig()
    imports: tuple[MessageImportConfig, ...] = ()
    exports: tuple[MessageExportConfig, ...] = ()
    max_message_bytes: int = 1 << 20  # larger messages are dead-lettered, never sent
    ack_wait_ms: int = 30_000  # a message read and not acknowledged is redelivered after this
    delivery_timeout_ms: int = 10_000  # one crossing (peer gateway + its broker), then it is tried again
    dead_letter_prefix: str = "interlink.dead"  # refused messages: <prefix>.<subject>, stream INTERLINK_DEAD


@dataclass(frozen=True, slots=True)
class Limits:
    """What one caller or peer may cost the gateway (site file `limits:`; README "Limits" has the table).

    Time limits are in seconds here (milliseconds in the site file). Listener limits apply to each listener
    (local h2c, local Bolt, peer); `peer_*` values apply to the peer listener and the peer links instead.
    """

    # connections, per listener
    max_connections: int = 10_000  # lowered at start to what the process's file-descriptor limit allows
    max_connections_per_source: int = 1_000  # per remote IP address
    # timeouts
    handshake_timeout: float = 5.0  # TLS handshake on the peer port
    preface_timeout: float = 5.0  # connect -> HTTP/2 preface + SETTINGS, or a first complete Bolt frame
    idle_timeout: float = 20.0  # local h2c: no call in flight; local Bolt: no frame (heartbeats count)
    peer_idle_timeout: float = 300.0  # peer port: no frame at all (peer gateways PING every 10 s)
    partial_frame_timeout: float = 10.0  # a frame or header block begun and not finished
    write_timeout: float = 20.0  # bytes queued for a connection that takes none of them
    provider_idle_timeout: float = 3600.0  # a provider connection without a call this long is closed (dialled
    #                                        again when a call needs it)
    # HTTP/2
    max_concurrent_streams: int = 100  # per local connection (peers: peers.<site>.max_concurrent_streams)
    initial_window: int = 65_535 + 1  # local connections: receive window per stream (64 KiB)
    connection_window: int = 1 << 20  # local connections: receive window per connection
    peer_initial_window: int = 1 << 20  # peer links (long fat pipes)
    peer_connection_window: int = 16 << 20
    max_header_list_bytes: int = 64 * 1024
    premature_reset_streams: int = 500  # streams a connection opens before the reset ratio is judged
    premature_reset_window: float = 1.0  # a stream the client resets within this, unanswered, is premature
    control_frame_burst: int = 1_000  # control / empty frames a connection may send at once ...
    control_frames_per_second: int = 100  # ... and on average (useful frames earn more)
    # Bolt
    bolt_max_frame_bytes: int = 8 << 20  # SOFARPC's own default payload limit
    bolt_max_pending: int = 1_000  # calls in flight per local Bolt connection
    # buffers
    connection_output_bytes: int = 1 << 20  # queued for one connection before its producers pause
    partial_frame_budget_bytes: int = 24 << 20  # process-wide: frames being received, all connections


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
    limits: Limits = Limits()
    tracing: TracingConfig = TracingConfig()
    loadtest: LoadTestConfig = LoadTestConfig()
    messaging: MessagingConfig | None = None  # no message interop without it
    zone: str | None = None  # where this gateway runs (routing stage `nearest`)
    unit: str | None = None  # its unit: the routing stage `unit` uses it for calls that name none
    unit_rule: UnitRule | None = None  # a caller's unit from its user id, when it names none
    # YAML location of each key, e.g. lines["peers.site-b.domain"] == 17, for cross-file errors.
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)
