"""Load one site file (YAML) into a `SiteConfig`, with `file:line` in every error.

The file is composed into a YAML node tree (not constructed into plain dicts) so that every key and value
keeps its line, duplicate keys can be seen, and scalars can be read as the text the user typed
(`version: 1.10` stays "1.10"). The reader walks that tree once, collects every problem it finds and
raises them together as a `SiteFileError`; each message says what is wrong and how to fix it.

Checks that need other files (certificates, peers' site files) live in `interlink.control.check`.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import urllib.parse
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from interlink.control.certs import CertError, check_site_name, check_trust_domain
from interlink.wire import message_link
from interlink.config import (
    ROUTING_STAGES,
    AclRule,
    BrokerConfig,
    ExportConfig,
    HeaderStage,
    HostPort,
    ImportConfig,
    Limits,
    Listen,
    LoadTestConfig,
    MessageExportConfig,
    MessageImportConfig,
    MessagingConfig,
    OutlierConfig,
    PeerConfig,
    ProviderTags,
    RegistryConfig,
    RetryConfig,
    SiteConfig,
    TlsFiles,
    TracingConfig,
    UnitRule,
)

__all__ = [
    "FLAVOURS",
    "PROTOCOLS",
    "REGISTRY_KINDS",
    "Problem",
    "SiteFileError",
    "binds_overlap",
    "canonical_host",
    "check_domain_name",
    "listen_addresses",
    "load_site",
    "parse_host_port",
]

PROTOCOLS = ("triple", "bolt")
FLAVOURS = ("grpc", "sofa", "dubbo")
CODECS = ("hessian2", "protobuf")
REGISTRY_KINDS = ("static", "dns", "zookeeper")

SITE_KEYS = (
    "site",
    "trust_domain",
    "listen",
    "tls",
    "registry",
    "peers",
    "domains",
    "exports",
    "imports",
    "default_timeout_ms",
    "limits",
    "tracing",
    "loadtest",
    "messaging",
    "zone",
    "unit",
    "unit_rule",
)
LISTEN_KEYS = ("triple", "bolt", "peer", "admin")
TLS_KEYS = ("ca", "cert", "key", "expiry_warning_days")
PEER_KEYS = (
    "endpoints", "ca", "domain", "connections", "max_concurrent_streams", "keepalive_interval_ms", "keepalive_timeout_ms"
)
EXPORT_KEYS = (
    "service", "version", "protocol", "flavour", "codec", "unique_id", "group", "providers", "allow", "timeout_ms",
    "shadow_providers", "loadtest", "max_in_flight", "outlier", "connections", "routing", "retry",
)
PROVIDER_KEYS = ("address", "zone", "unit", "weight", "group")
HEADER_STAGE_KEYS = ("header", "values", "group")
_HEADER_STAGE_EXAMPLE = "{header: x-release, values: [canary], group: canary}"
RETRY_KEYS = ("attempts", "budget_percent", "idempotent_methods")
UNIT_RULE_KEYS = ("header", "units")
_UNIT_RULE_EXAMPLE = '{header: x-uid, units: {u00: "00-49", u01: "50-99"}}'
OUTLIER_KEYS = ("consecutive_failures", "eject_s", "max_ejected_percent")
IMPORT_KEYS = ("service", "from", "protocol", "version", "max_in_flight", "retry")
ACL_KEYS = ("apps", "methods", "rate", "burst", "per_method")
_RATE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*/\s*(s|sec|second|m|min|minute)")
_RATE_EXAMPLE = "200/s"
TRACING_KEYS = ("otlp_endpoint", "sample_ratio")
LOADTEST_KEYS = ("header", "baggage")
LOADTEST_MODES = ("allow", "deny")  # exports[].loadtest
MESSAGING_KEYS = ("broker", "imports", "exports", "max_message_bytes", "ack_wait_ms", "delivery_timeout_ms",
                  "dead_letter_prefix")
BROKER_KEYS = ("kind", "url")
BROKER_KINDS = ("nats",)
MESSAGE_IMPORT_KEYS = ("subject", "to", "stream", "max_in_flight")
MESSAGE_EXPORT_KEYS = ("subject", "stream", "allow")
_STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NATS_URL_EXAMPLE = "nats://127.0.0.1:4222"

# limits: site-file key -> (Limits field, scale from the file's unit, lowest, highest). Keys ending in _ms
# are milliseconds in the file and seconds in Limits.
_MIB = 1 << 20
LIMIT_KEYS: dict[str, tuple[str, float, int, int]] = {
    "max_connections": ("max_connections", 1, 1, 1_000_000),
    "max_connections_per_source": ("max_connections_per_source", 1, 1, 1_000_000),
    "handshake_timeout_ms": ("handshake_timeout", 0.001, 100, 600_000),
    "preface_timeout_ms": ("preface_timeout", 0.001, 100, 600_000),
    "idle_timeout_ms": ("idle_timeout", 0.001, 1_000, 86_400_000),
    "peer_idle_timeout_ms": ("peer_idle_timeout", 0.001, 1_000, 86_400_000),
    "partial_frame_timeout_ms": ("partial_frame_timeout", 0.001, 100, 600_000),
    "write_timeout_ms": ("write_timeout", 0.001, 100, 600_000),
    "provider_idle_timeout_ms": ("provider_idle_timeout", 0.001, 1_000, 86_400_000),
    "max_concurrent_streams": ("max_concurrent_streams", 1, 1, 100_000),
    "initial_window_bytes": ("initial_window", 1, 1_024, (1 << 31) - 1),
    "connection_window_bytes": ("connection_window", 1, 65_535, (1 << 31) - 1),
    "peer_initial_window_bytes": ("peer_initial_window", 1, 1_024, (1 << 31) - 1),
    "peer_connection_window_bytes": ("peer_connection_window", 1, 65_535, (1 << 31) - 1),
    "max_header_list_bytes": ("max_header_list_bytes", 1, 1_024, 16 * _MIB),
    "premature_reset_streams": ("premature_reset_streams", 1, 2, 1_000_000),
    "premature_reset_window_ms": ("premature_reset_window", 0.001, 1, 600_000),
    "control_frame_burst": ("control_frame_burst", 1, 10, 10_000_000),
    "control_frames_per_second": ("control_frames_per_second", 1, 1, 10_000_000),
    "bolt_max_frame_bytes": ("bolt_max_frame_bytes", 1, 1_024, 1 << 30),
    "bolt_max_pending": ("bolt_max_pending", 1, 1, 1_000_000),
    "connection_output_bytes": ("connection_output_bytes", 1, 16 * 1_024, 1 << 30),
    "partial_frame_budget_bytes": ("partial_frame_budget_bytes", 1, _MIB, 1 << 34),
}

MAX_CONNECTIONS = 64
MAX_CONCURRENT_STREAMS = 100_000

_TAG_NULL = "tag:yaml.org,2002:null"
_TAG_INT = "tag:yaml.org,2002:int"
_TAG_FLOAT = "tag:yaml.org,2002:float"
_TAG_MERGE = "tag:yaml.org,2002:merge"
_HOST_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_IPV4_LOOKALIKE = re.compile(r"[0-9.]+")
_NAME_TEXT = re.compile(r"[^\s/:]+")  # service names and versions end up in :path and Bolt unique names
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::"})
_HEADER_NAME = re.compile(r"[a-z0-9-]+")  # what loadtest.header may be: a lower-case HTTP/2 header name
# Header names that already mean something to HTTP/2, gRPC or trace propagation: never a load-test mark.
_TAKEN_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "host",
    "content-type", "content-length", "user-agent", "traceparent", "tracestate",
})
_OTLP_EXAMPLE = "http://127.0.0.1:4318/v1/traces"
_MARK_EXAMPLE = "x-interlink-loadtest"
_BAGGAGE_EXAMPLE = "mark=T"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in a site file, where it is, and how to fix it."""

    file: Path
    line: int | None  # 1-based; None when the problem has no single place (e.g. a missing top-level key)
    message: str

    def __str__(self) -> str:
        place = str(self.file) if self.line is None else f"{self.file}:{self.line}"
        return f"{place}: {self.message}"


class SiteFileError(Exception):
    """A site file could not be loaded; `problems` lists everything found in one pass."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(problems)
        self.problems = problems

    def __str__(self) -> str:
        return "\n".join(str(problem) for problem in self.problems)


# --- public helpers shared with the checker and the CLI ------------------------------------------------


def parse_host_port(text: str) -> HostPort:
    """`host:port` or `[ipv6]:port` as a HostPort; ValueError says what is wrong and how to write it."""
    text = text.strip()
    if not text:
        raise ValueError("is empty; write host:port, e.g. 127.0.0.1:9443")
    if text.startswith("["):
        host, port_text = _split_bracketed(text)
    else:
        host, port_text = _split_plain(text)
    port = _parse_port(port_text, text)
    return HostPort(host, port)


def check_domain_name(text: str) -> str:
    """Return `text` if it is a lower-case DNS name (e.g. an access domain), else raise ValueError."""
    if text.endswith("."):
        raise ValueError(f'"{text}" ends with a dot; write "{text.rstrip(".")}"')
    if text != text.lower() and _is_domain_name(text.lower()):
        raise ValueError(f'"{text}" must be lower case; write "{text.lower()}"')
    if not _is_domain_name(text):
        raise ValueError(
            f'"{text}" is not a valid domain name; use dot-separated labels of 1 to 63 lower-case letters,'
            " digits and '-', each starting and ending with a letter or digit (e.g. site-b.gw.site-a.example)"
        )
    return text


def listen_addresses(listen: Listen) -> list[tuple[str, HostPort]]:
    """The configured listen addresses as (key, address), e.g. ("peer", 127.0.0.1:8443)."""
    named = (("triple", listen.triple), ("bolt", listen.bolt), ("peer", listen.peer), ("admin", listen.admin))
    return [(key, address) for key, address in named if address is not None]


def binds_overlap(a: HostPort, b: HostPort) -> bool:
    """True if two listeners on one host could not both bind: same port and same or wildcard address."""
    if a.port != b.port:
        return False
    host_a, host_b = canonical_host(a.host), canonical_host(b.host)
    return host_a == host_b or host_a in _WILDCARD_HOSTS or host_b in _WILDCARD_HOSTS


def canonical_host(host: str) -> str:
    """A listen or endpoint host in one spelling, so that "localhost", "127.0.0.1" (and "::1", "0:0::1")
    compare equal."""
    host = host.lower()
    if host == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


# --- loading --------------------------------------------------------------------------------------------


def load_site(path: str | Path) -> SiteConfig:
    """Read and validate one site file; raise SiteFileError listing every problem found."""
    site_path = Path(path)
    reader = _SiteFileReader(site_path)
    root = _compose(site_path, reader)
    config = _read_site(reader, root) if root is not None else None
    if reader.problems or config is None:
        problems = sorted(reader.problems, key=lambda problem: problem.line or 0)  # stable: same line keeps order
        raise SiteFileError(problems or [Problem(site_path, None, "the site file is not valid")])
    return config


def _compose(path: Path, reader: _SiteFileReader) -> Node | None:
    try:
        text = path.expanduser().read_text(encoding="utf-8")
    except FileNotFoundError:
        reader.report(None, "", "no such file; check the path")
        return None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        reader.report(None, "", f"cannot read the file ({reason}); it must be a readable UTF-8 YAML file")
        return None
    try:
        root = yaml.compose(text, Loader=_SiteLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        detail = " ".join(part for part in (exc.context, exc.problem) if part)
        reader.report(
            line, "", f"YAML syntax error: {detail}; fix the YAML at this line (check indentation and quotes)"
        )
        return None
    except yaml.YAMLError as exc:
        reader.report(None, "", f"YAML syntax error: {exc}")
        return None
    except RecursionError:
        # PyYAML composes nested collections recursively: a few thousand `[` or `{a: ` raised RecursionError
        # out of load_site (found by tests/fuzz/test_fuzz_sitefile.py).
        reader.report(None, "", "the YAML is nested too deeply; a site file needs only a few levels")
        return None
    if root is None or _is_null(root):
        reader.report(None, "", "the file is empty; a site file is a YAML mapping that starts with `site: NAME`")
        return None
    return root


MAX_FLOW_NESTING = 64  # levels of [...] / {...} inside one another; a site file needs three or four


class _SiteLoader(yaml.SafeLoader):
    """SafeLoader that refuses flow collections nested deeper than MAX_FLOW_NESTING.

    PyYAML's scanner keeps one "possible simple key" per open flow level and walks all of them for every
    token, so its time grows with the square of the nesting: a single line of 2000 `[` took 1-2.5 s to
    refuse (found by tests/fuzz/test_fuzz_sitefile.py). The refusal is a ScannerError, reported with its line.
    """

    def fetch_flow_collection_start(self, TokenClass):  # noqa: N803 - PyYAML's signature
        if self.flow_level >= MAX_FLOW_NESTING:
            raise yaml.scanner.ScannerError(
                None, None, f"[ and {{ nested deeper than {MAX_FLOW_NESTING} levels", self.get_mark()
            )
        super().fetch_flow_collection_start(TokenClass)


def _read_site(r: _SiteFileReader, root: Node) -> SiteConfig | None:
    if not isinstance(root, MappingNode):
        r.report(
            root,
            "",
            f"the file holds {_describe(root)}, not a mapping; a site file is a YAML mapping that starts"
            " with `site: NAME`",
        )
        return None
    fields = r.mapping(
        root,
        "",
        "a site file that starts with `site: site-a`",
        known=SITE_KEYS,
        required={
            "site": "site: site-a",
            "listen": "listen: {peer: 127.0.0.1:8443}",
            "tls": "tls: {ca: ca.pem, cert: gateway.pem, key: gateway.key}",
        },
    )
    if fields is None:
        return None
    site = r.site_name(fields["site"], "site") if "site" in fields else None
    optional: dict[str, object] = {}
    if "trust_domain" in fields:
        optional["trust_domain"] = r.trust_domain(fields["trust_domain"], "trust_domain")
    if "default_timeout_ms" in fields:
        optional["default_timeout_ms"] = r.integer(fields["default_timeout_ms"], "default_timeout_ms", 1, None, 30_000)
    if "limits" in fields:
        optional["limits"] = _read_limits(r, fields["limits"])
    if "tracing" in fields:
        optional["tracing"] = _read_tracing(r, fields["tracing"])
    if "loadtest" in fields:
        optional["loadtest"] = _read_loadtest(r, fields["loadtest"])
    for key in ("zone", "unit"):
        if key in fields:
            optional[key] = r.name_text(fields[key], key, "hz-a" if key == "zone" else "u00")
    if "unit_rule" in fields:
        optional["unit_rule"] = _read_unit_rule(r, "unit_rule", fields["unit_rule"])
    listen = _read_listen(r, fields["listen"]) if "listen" in fields else None
    tls = _read_tls(r, fields["tls"]) if "tls" in fields else None

    registry = _read_registry(r, fields.get("registry"))
    peers = _read_peers(r, fields.get("peers"), site)
    names = _KnownNames(site, frozenset(peers) if peers is not None else None)
    domains = _read_domains(r, fields.get("domains"), names)
    names = _KnownNames(site, names.peers, frozenset(domains) if domains is not None else None)
    exports = _read_exports(r, fields.get("exports"), names)
    imports = _read_imports(r, fields.get("imports"), names)
    messaging = _read_messaging(r, fields["messaging"], names) if "messaging" in fields else None
    if listen is not None:
        _check_listen_use(r, listen, exports, imports, domains)
        if messaging is not None and messaging.exports and listen.peer is None:
            r.report(r.line_of("messaging.exports", None), "messaging.exports",
                     "peers deliver messages through listen.peer, which is not set; add peer: 0.0.0.0:8443")

    if "messaging" in fields:
        optional["messaging"] = messaging
    if r.problems:
        return None
    assert site is not None and listen is not None and tls is not None and registry is not None
    assert peers is not None and domains is not None and exports is not None and imports is not None
    return SiteConfig(
        path=r.path,
        site=site,
        listen=listen,
        tls=tls,
        registry=registry,
        peers=_present(peers),
        domains=_present(domains),
        exports=tuple(_present_items(exports)),
        imports=tuple(_present_items(imports)),
        lines=dict(r.lines),
        **optional,  # type: ignore[arg-type]  # validated above; absent keys keep the dataclass defaults
    )


@dataclass(frozen=True, slots=True)
class _KnownNames:
    """Names that later sections may refer to; None when that section itself was broken."""

    site: str | None
    peers: frozenset[str] | None
    domains: frozenset[str] | None = None


# --- sections -------------------------------------------------------------------------------------------


def _read_listen(r: _SiteFileReader, node: Node) -> Listen | None:
    fields = r.mapping(node, "listen", "listen: {peer: 127.0.0.1:8443}", known=LISTEN_KEYS)
    if fields is None:
        return None
    addresses = {key: r.host_port(value, f"listen.{key}") for key, value in fields.items()}
    if not any(key in fields for key in ("triple", "bolt", "peer")):
        r.report(
            r.line_of("listen", node),
            "listen",
            "needs at least one of triple, bolt or peer; add e.g. peer: 127.0.0.1:8443",
        )
        return None
    if any(address is None for address in addresses.values()):
        return None
    listen = Listen(**addresses)
    _check_listen_collisions(r, listen)
    return listen


def _check_listen_collisions(r: _SiteFileReader, listen: Listen) -> None:
    seen: list[tuple[str, HostPort]] = []
    for key, address in listen_addresses(listen):
        for other_key, other in seen:
            if binds_overlap(address, other):
                r.report(
                    r.lines.get(f"listen.{key}"),
                    f"listen.{key}",
                    f"{address} is also used by listen.{other_key} ({other}); give each listener its own port",
                )
        seen.append((key, address))


def _check_listen_use(
    r: _SiteFileReader,
    listen: Listen,
    exports: list[ExportConfig | None] | None,
    imports: list[ImportConfig | None] | None,
    domains: Mapping[str, str | None] | None,
) -> None:
    """Sections that need a listener must have it: peers reach exports on listen.peer, and so on."""
    if listen.peer is None and (exports or domains):
        r.report(
            r.line_of("listen", None),
            "listen",
            "has no peer address, but peers must reach this site's exports and domains through it;"
            " add peer: 0.0.0.0:8443 (or another host:port)",
        )
    for index, imported in enumerate(imports or ()):
        if imported is not None and getattr(listen, imported.protocol) is None:
            where = f"imports[{index}].protocol"
            r.report(
                r.line_of(where, None) or r.line_of(f"imports[{index}]", None),
                f"imports[{index}]",
                f"local callers speak {imported.protocol} to {imported.service}, but listen.{imported.protocol}"
                f" is not set; add listen.{imported.protocol}: 127.0.0.1:PORT or change the protocol",
            )


def _read_tls(r: _SiteFileReader, node: Node) -> TlsFiles | None:
    fields = r.mapping(
        node,
        "tls",
        "tls: {ca: ca.pem, cert: gateway.pem, key: gateway.key}",
        known=TLS_KEYS,
        required={"ca": "ca: certs/ca.pem", "cert": "cert: certs/gateway.pem", "key": "key: certs/gateway.key"},
    )
    if fields is None:
        return None
    ca, cert, key = (r.file_path(fields[key], f"tls.{key}") if key in fields else None for key in ("ca", "cert", "key"))
    days = 30
    if "expiry_warning_days" in fields:
        days = r.integer(fields["expiry_warning_days"], "tls.expiry_warning_days", 0, 3650, 30)  # type: ignore[assignment]
    if ca is None or cert is None or key is None or days is None:
        return None
    return TlsFiles(ca=ca, cert=cert, key=key, expiry_warning_days=days)


def _read_limits(r: _SiteFileReader, node: Node) -> Limits | None:
    """`limits:` — every key optional; values in the file's units (ms, bytes), ranges checked."""
    if _is_null(node):
        return Limits()
    fields = r.mapping(node, "limits", "limits: {idle_timeout_ms: 20000, max_connections: 10000}", known=LIMIT_KEYS)
    if fields is None:
        return None
    values: dict[str, object] = {}
    for key, value in fields.items():
        name, scale, low, high = LIMIT_KEYS[key]
        number = r.integer(value, f"limits.{key}", low, high, round(getattr(Limits(), name) / scale))
        values[name] = number * scale if number is not None and scale != 1 else number
    if None in values.values():
        return None
    return Limits(**values)  # type: ignore[arg-type]


def _read_tracing(r: _SiteFileReader, node: Node) -> TracingConfig | None:
    """`tracing:` — both keys optional; spans are exported only when otlp_endpoint is set."""
    if _is_null(node):
        return TracingConfig()
    fields = r.mapping(
        node, "tracing", f"tracing: {{otlp_endpoint: {_OTLP_EXAMPLE}, sample_ratio: 0.1}}", known=TRACING_KEYS
    )
    if fields is None:
        return None
    values: dict[str, object] = {}
    if "otlp_endpoint" in fields:
        values["otlp_endpoint"] = r.otlp_endpoint(fields["otlp_endpoint"], "tracing.otlp_endpoint")
    if "sample_ratio" in fields:
        values["sample_ratio"] = r.ratio(fields["sample_ratio"], "tracing.sample_ratio", 0.1)
    if None in values.values():
        return None
    return TracingConfig(**values)  # type: ignore[arg-type]


def _read_loadtest(r: _SiteFileReader, node: Node) -> LoadTestConfig | None:
    """`loadtest:` — what marks a call as load-test traffic; both keys optional."""
    if _is_null(node):
        return LoadTestConfig()
    fields = r.mapping(
        node, "loadtest", f"loadtest: {{header: {_MARK_EXAMPLE}, baggage: {_BAGGAGE_EXAMPLE}}}", known=LOADTEST_KEYS
    )
    if fields is None:
        return None
    values: dict[str, str | None] = {}
    if "header" in fields:
        values["header"] = r.mark_header(fields["header"], "loadtest.header")
    if "baggage" in fields:
        values["baggage"] = r.baggage_pair(fields["baggage"], "loadtest.baggage")
    if None in values.values():
        return None
    return LoadTestConfig(**values)  # type: ignore[arg-type]


def _read_messaging(r: _SiteFileReader, node: Node, names: _KnownNames) -> MessagingConfig | None:
    """`messaging:` — this site's broker, what our producers send to peers (imports), what peers may deliver
    to us (exports)."""
    example = f"messaging: {{broker: {{kind: nats, url: {_NATS_URL_EXAMPLE}}}, imports: [{{subject: orders.created, to: site-a}}]}}"
    fields = r.mapping(node, "messaging", example, known=MESSAGING_KEYS,
                       required={"broker": f"broker: {{kind: nats, url: {_NATS_URL_EXAMPLE}}}"})
    if fields is None:
        return None
    values: dict[str, object] = {}
    broker = _read_broker(r, fields["broker"]) if "broker" in fields else None
    for key, low, high, example_value in (("max_message_bytes", 1, 64 * _MIB, 1 << 20),
                                          ("ack_wait_ms", 1_000, 3_600_000, 30_000),
                                          ("delivery_timeout_ms", 100, 600_000, 10_000)):
        if key in fields:
            values[key] = r.integer(fields[key], f"messaging.{key}", low, high, example_value)
    if "dead_letter_prefix" in fields:
        values["dead_letter_prefix"] = r.subject(fields["dead_letter_prefix"], "messaging.dead_letter_prefix",
                                                 wildcards=False)
    imports = _read_message_imports(r, fields.get("imports"), names)
    exports = _read_message_exports(r, fields.get("exports"), names)
    if broker is None or imports is None or exports is None or None in values.values():
        return None
    if "ack_wait_ms" in values and "delivery_timeout_ms" in values and values["ack_wait_ms"] <= values["delivery_timeout_ms"]:  # type: ignore[operator]
        r.report(r.lines.get("messaging.ack_wait_ms"), "messaging.ack_wait_ms",
                 "must be longer than delivery_timeout_ms, or the broker redelivers messages still crossing")
    settings = MessagingConfig(broker=broker, imports=tuple(imports), exports=tuple(exports), **values)  # type: ignore[arg-type]
    dead = f"{settings.dead_letter_prefix}.>"
    for index, item in enumerate(imports):
        if message_link.subjects_overlap(item.subject, dead):
            where = f"messaging.imports[{index}].subject"
            r.report(r.lines.get(where), where, f"{item.subject} also matches the dead-letter subjects ({dead}): "
                     "refused messages would be sent again; narrow the subject or change dead_letter_prefix")
    return settings


def _read_broker(r: _SiteFileReader, node: Node) -> BrokerConfig | None:
    fields = r.mapping(node, "messaging.broker", f"broker: {{kind: nats, url: {_NATS_URL_EXAMPLE}}}",
                       known=BROKER_KEYS, required={"kind": "kind: nats", "url": f"url: {_NATS_URL_EXAMPLE}"})
    if fields is None:
        return None
    kind = r.choice(fields["kind"], "messaging.broker.kind", BROKER_KINDS) if "kind" in fields else None
    url = r.nats_url(fields["url"], "messaging.broker.url") if "url" in fields else None
    if kind is None or url is None:
        return None
    return BrokerConfig(kind=kind, url=url)


def _read_message_imports(r: _SiteFileReader, node: Node | None, names: _KnownNames) -> list[MessageImportConfig] | None:
    if node is None or _is_null(node):
        return []
    items = r.sequence(node, "messaging.imports", "imports: [{subject: orders.created, to: site-a}]")
    if items is None:
        return None
    imports: list[MessageImportConfig | None] = []
    for where, item in items:
        fields = r.mapping(item, where, "{subject: orders.created, to: site-a}", known=MESSAGE_IMPORT_KEYS,
                           required={"subject": "subject: orders.created", "to": "to: site-a (a peer)"})
        if fields is None:
            imports.append(None)
            continue
        subject = r.subject(fields["subject"], f"{where}.subject", wildcards=True) if "subject" in fields else None
        to = r.site_name(fields["to"], f"{where}.to") if "to" in fields else None
        if to is not None:
            r.require_peer(to, f"{where}.to", names, "receives messages")
        values: dict[str, object] = {}
        if "stream" in fields:
            values["stream"] = r.stream_name(fields["stream"], f"{where}.stream")
        if "max_in_flight" in fields:
            values["max_in_flight"] = r.integer(fields["max_in_flight"], f"{where}.max_in_flight", 1, 10_000, 256)
        if subject is None or to is None or None in values.values():
            imports.append(None)
            continue
        imports.append(MessageImportConfig(subject=subject, to=to, **values))  # type: ignore[arg-type]
    seen: dict[tuple[str, str], int] = {}
    for index, entry in enumerate(imports):
        if entry is None:
            continue
        first = seen.setdefault((entry.subject, entry.to), index)
        if first != index:
            where = f"messaging.imports[{index}]"
            r.report(r.lines.get(where), where, f"subject {entry.subject} to {entry.to} is already imported at "
                     f"messaging.imports[{first}]; remove one")
    return None if None in imports else imports  # type: ignore[return-value]


def _read_message_exports(r: _SiteFileReader, node: Node | None, names: _KnownNames) -> list[MessageExportConfig] | None:
    if node is None or _is_null(node):
        return []
    example = "exports: [{subject: orders.created, stream: ORDERS, allow: {site-b: {apps: [order-app]}}}]"
    items = r.sequence(node, "messaging.exports", example)
    if items is None:
        return None
    exports: list[MessageExportConfig | None] = []
    for where, item in items:
        fields = r.mapping(item, where, "{subject: orders.created, stream: ORDERS, allow: [site-b]}",
                           known=MESSAGE_EXPORT_KEYS,
                           required={"subject": "subject: orders.created", "stream": "stream: ORDERS",
                                     "allow": "allow: {site-b: {apps: [order-app]}}"})
        if fields is None:
            exports.append(None)
            continue
        subject = r.subject(fields["subject"], f"{where}.subject", wildcards=True) if "subject" in fields else None
        stream = r.stream_name(fields["stream"], f"{where}.stream") if "stream" in fields else None
        allow = _read_allow(r, f"{where}.allow", fields["allow"], names) if "allow" in fields else None
        if allow is not None:
            for peer, rule in allow.items():
                if rule.methods is not None:
                    at = f"{where}.allow.{peer}.methods"
                    r.report(r.lines.get(at), at, "messages have no methods; allow apps only (or export another subject)")
        if subject is None or stream is None or allow is None:
            exports.append(None)
            continue
        exports.append(MessageExportConfig(subject=subject, stream=stream, allow=allow))
    seen: dict[str, int] = {}
    for index, entry in enumerate(exports):
        if entry is None:
            continue
        first = seen.setdefault(entry.subject, index)
        if first != index:
            where = f"messaging.exports[{index}]"
            r.report(r.lines.get(where), where, f"subject {entry.subject} is already exported at "
                     f"messaging.exports[{first}]; remove one")
    return None if None in exports else exports  # type: ignore[return-value]


def _check_rate(text: str) -> float:
    text = text.strip().lower()
    match = _RATE.fullmatch(text)
    if match is not None:
        number, unit = float(match.group(1)), match.group(2)
        rate = number if unit.startswith("s") else number / 60
    elif _is_number_text(text):
        rate = float(text)
    else:
        raise ValueError(f"write calls per second or minute, e.g. {_RATE_EXAMPLE} or 3000/min")
    if not 0 < rate <= 1_000_000:
        raise ValueError(f"must be more than 0 and at most 1000000/s, e.g. {_RATE_EXAMPLE}")
    return rate


def _check_nats_url(text: str) -> str:
    """nats://[user:password@]host:port (the port may be left out: 4222)."""
    parsed = urllib.parse.urlsplit(text)
    if parsed.scheme != "nats":
        raise ValueError(f"use a nats:// URL, e.g. {_NATS_URL_EXAMPLE}")
    try:
        port = parsed.port
    except ValueError:
        raise ValueError(f"the port is not a number from 1 to 65535, e.g. {_NATS_URL_EXAMPLE}") from None
    if not parsed.hostname or parsed.path not in ("", "/") or parsed.query or parsed.fragment:
        raise ValueError(f"write nats://host:port, e.g. {_NATS_URL_EXAMPLE}")
    if port == 0:
        raise ValueError("the port is not a number from 1 to 65535")
    return text


def _check_subject(text: str, *, wildcards: bool) -> str:
    problem = message_link.subject_problem(text, wildcards=wildcards)
    if problem is not None:
        raise ValueError(f"not a NATS subject for message interop: {problem}; e.g. orders.created"
                         + (" or orders.>" if wildcards else ""))
    return text


def _check_stream_name(text: str) -> str:
    if not _STREAM_NAME.fullmatch(text):
        raise ValueError("a JetStream stream name is 1 to 64 letters, digits, _ or -; e.g. ORDERS")
    return text


def _read_registry(r: _SiteFileReader, node: Node | None) -> RegistryConfig | None:
    if node is None or _is_null(node):
        return RegistryConfig()
    fields = r.mapping(node, "registry", "registry: {kind: static}", required={"kind": "kind: static"})
    if fields is None:
        return None
    kind = r.choice(fields["kind"], "registry.kind", REGISTRY_KINDS) if "kind" in fields else None
    options = {key: r.plain_value(value, f"registry.{key}") for key, value in fields.items() if key != "kind"}
    if kind is None:
        return None
    return RegistryConfig(kind=kind, options=options)


def _read_peers(r: _SiteFileReader, node: Node | None, site: str | None) -> dict[str, PeerConfig | None] | None:
    if node is None or _is_null(node):
        return {}
    example = "peers: {site-b: {endpoints: [10.0.0.2:8443], ca: site-b-ca.pem, domain: site-a.gw.site-b.example}}"
    fields = r.mapping(node, "peers", example)
    if fields is None:
        return None
    peers: dict[str, PeerConfig | None] = {}
    for name, value in fields.items():
        where = f"peers.{name}"
        if r.validated(name, r.lines.get(where), where, check_site_name) is None:
            peers[name] = None
            continue
        if name == site:
            r.report(r.lines.get(where), where, "a site cannot be its own peer; remove this entry")
        peers[name] = _read_peer(r, name, value)
    return peers


def _read_peer(r: _SiteFileReader, name: str, node: Node) -> PeerConfig | None:
    where = f"peers.{name}"
    fields = r.mapping(
        node,
        where,
        f"{name}: {{endpoints: [10.0.0.2:8443], ca: {name}-ca.pem, domain: ACCESS-DOMAIN}}",
        known=PEER_KEYS,
        required={
            "endpoints": "endpoints: [HOST:PORT] (the peer's gateways)",
            "ca": f"ca: certs/{name}/ca.pem (the peer's CA certificate)",
            "domain": f"domain: ACCESS-DOMAIN (the access domain {name} gave this site)",
        },
    )
    if fields is None:
        return None
    endpoints = (
        r.host_port_list(fields["endpoints"], f"{where}.endpoints", required=True) if "endpoints" in fields else None
    )
    ca = r.file_path(fields["ca"], f"{where}.ca") if "ca" in fields else None
    domain = r.domain_name(fields["domain"], f"{where}.domain") if "domain" in fields else None
    optional: dict[str, int | None] = {}
    if "connections" in fields:
        optional["connections"] = r.integer(fields["connections"], f"{where}.connections", 1, MAX_CONNECTIONS, 2)
    if "max_concurrent_streams" in fields:
        optional["max_concurrent_streams"] = r.integer(
            fields["max_concurrent_streams"], f"{where}.max_concurrent_streams", 1, MAX_CONCURRENT_STREAMS, 256
        )
    for key, example in (("keepalive_interval_ms", 10_000), ("keepalive_timeout_ms", 5_000)):
        if key in fields:
            optional[key] = r.integer(fields[key], f"{where}.{key}", 100, 3_600_000, example)
    if endpoints is None or ca is None or domain is None or None in optional.values():
        return None
    return PeerConfig(name=name, endpoints=tuple(endpoints), ca=ca, domain=domain, **optional)  # type: ignore[arg-type]


def _read_domains(r: _SiteFileReader, node: Node | None, names: _KnownNames) -> dict[str, str | None] | None:
    if node is None or _is_null(node):
        return {}
    fields = r.mapping(node, "domains", "domains: {site-b: site-b.gw.site-a.example}")
    if fields is None:
        return None
    domains: dict[str, str | None] = {}
    owner_of: dict[str, str] = {}
    for peer, value in fields.items():
        where = f"domains.{peer}"
        r.require_peer(peer, where, names, "has an access domain")
        domain = r.domain_name(value, where)
        domains[peer] = domain
        if domain is None:
            continue
        if domain in owner_of:
            r.report(
                r.lines.get(where),
                where,
                f'"{domain}" is already the access domain of {owner_of[domain]} (line'
                f" {r.lines.get(f'domains.{owner_of[domain]}')}); give each peer its own domain",
            )
        else:
            owner_of[domain] = peer
    return domains


def _read_exports(r: _SiteFileReader, node: Node | None, names: _KnownNames) -> list[ExportConfig | None] | None:
    if node is None or _is_null(node):
        return []
    items = r.sequence(node, "exports", "exports: [{service: com.example.EchoService, allow: [site-b]}]")
    if items is None:
        return None
    exports = [_read_export(r, where, item, names) for where, item in items]
    _report_repeats(r, "exports", exports, "export")
    return exports


def _read_export(r: _SiteFileReader, where: str, node: Node, names: _KnownNames) -> ExportConfig | None:
    fields = r.mapping(
        node,
        where,
        "{service: com.example.EchoService, protocol: triple, providers: [127.0.0.1:50061], allow: [site-b]}",
        known=EXPORT_KEYS,
        required={"service": "service: com.example.EchoService"},
    )
    if fields is None:
        return None
    service = (
        r.name_text(fields["service"], f"{where}.service", "com.example.EchoService") if "service" in fields else None
    )
    if service == message_link.SERVICE:
        r.report(r.lines.get(f"{where}.service"), f"{where}.service",
                 "is the gateways' own message service; export messages under messaging.exports instead")
        service = None
    values: dict[str, object] = {}
    if "version" in fields:
        values["version"] = r.name_text(fields["version"], f"{where}.version", '"1.0"')
    protocol = r.choice(fields["protocol"], f"{where}.protocol", PROTOCOLS) if "protocol" in fields else "triple"
    if "protocol" in fields:
        values["protocol"] = protocol
    if "flavour" in fields:
        values["flavour"] = r.choice(fields["flavour"], f"{where}.flavour", FLAVOURS)
        if protocol == "bolt":
            r.report(
                r.lines.get(f"{where}.flavour"),
                f"{where}.flavour",
                "applies only to protocol: triple (Bolt providers have no flavour); remove it",
            )
    for key, applies, hint in _FLAVOUR_KEYS:
        if key not in fields:
            continue
        values[key] = r.name_text(fields[key], f"{where}.{key}", hint) if key != "codec" else r.choice(
            fields[key], f"{where}.codec", CODECS
        )
        if not applies(protocol, values.get("flavour", "grpc")):
            r.report(r.lines.get(f"{where}.{key}"), f"{where}.{key}", _FLAVOUR_KEY_HELP[key])
    if "providers" in fields:
        read = _read_providers(r, f"{where}.providers", fields["providers"])
        values["providers"] = tuple(read[0]) if read is not None else None
        if read is not None and read[1]:
            values["provider_tags"] = read[1]
    if "routing" in fields:
        values["routing"] = _read_routing(r, f"{where}.routing", fields["routing"])
    if "allow" in fields:
        values["allow"] = _read_allow(r, f"{where}.allow", fields["allow"], names)
    if "timeout_ms" in fields:
        values["timeout_ms"] = r.integer(fields["timeout_ms"], f"{where}.timeout_ms", 1, None, 5000)
    if "shadow_providers" in fields:
        shadow = r.host_port_list(fields["shadow_providers"], f"{where}.shadow_providers", required=False)
        values["shadow_providers"] = tuple(shadow) if shadow is not None else None
    if "max_in_flight" in fields:
        values["max_in_flight"] = r.integer(fields["max_in_flight"], f"{where}.max_in_flight", 1, 1_000_000, 1000)
    if "outlier" in fields:
        values["outlier"] = _read_outlier(r, f"{where}.outlier", fields["outlier"])
    if "connections" in fields:
        values["connections"] = r.integer(fields["connections"], f"{where}.connections", 1, 64, 2)
    if "retry" in fields:
        values["retry"] = _read_retry(r, f"{where}.retry", fields["retry"])
    if "loadtest" in fields:
        values["loadtest"] = r.choice(fields["loadtest"], f"{where}.loadtest", LOADTEST_MODES)
        if values["loadtest"] == "deny" and values.get("shadow_providers"):
            r.report(
                r.lines.get(f"{where}.loadtest"),
                f"{where}.loadtest",
                "shadow_providers are never used when load-test calls are denied; remove one of them",
            )
    if service is None or None in values.values():
        return None
    return ExportConfig(service=service, **values)  # type: ignore[arg-type]


# Keys that describe how the providers of an export are addressed, and for which protocol/flavour they mean
# something (PROTOCOLS.md 2.2: tri-service-version is the uniqueId for SOFA and the version for Dubbo).
_FLAVOUR_KEYS: tuple[tuple[str, Callable[[str, str], bool], str], ...] = (
    ("codec", lambda protocol, flavour: protocol == "bolt", "protobuf"),
    ("unique_id", lambda protocol, flavour: protocol == "bolt" or flavour == "sofa", "blue"),
    ("group", lambda protocol, flavour: protocol == "triple" and flavour == "dubbo", "default"),
)
_FLAVOUR_KEY_HELP = {
    "codec": "applies only to protocol: bolt (the body codec the Bolt providers accept); remove it",
    "unique_id": "applies to protocol: bolt or flavour: sofa (the SOFA uniqueId); remove it",
    "group": "applies only to flavour: dubbo (the Dubbo service group); remove it",
}


def _read_allow(r: _SiteFileReader, where: str, node: Node, names: _KnownNames) -> dict[str, AclRule] | None:
    if isinstance(node, SequenceNode):
        rules = _read_allow_list(r, where, node)
    elif isinstance(node, MappingNode):
        rules = _read_allow_mapping(r, where, node)
    else:
        r.report(
            node,
            where,
            f"expected peer sites, got {_describe(node)}; write allow: [site-b] (all apps and methods) or"
            " allow: {site-b: {apps: [order-app], methods: [echo]}}",
        )
        return None
    if rules is None:
        return None
    for peer in rules:
        peer_where = f"{where}.{peer}"
        is_peer = r.require_peer(peer, peer_where, names, "may call this export")
        if is_peer and names.domains is not None and peer not in names.domains:
            r.report(
                r.lines.get(peer_where),
                peer_where,
                f"{peer} may call this export but has no access domain; add domains.{peer}:"
                f" e.g. {peer}.gw.{names.site or 'this-site'}.example",
            )
    if any(rule is None for rule in rules.values()):
        return None
    return {peer: rule for peer, rule in rules.items() if rule is not None}


def _read_allow_list(r: _SiteFileReader, where: str, node: SequenceNode) -> dict[str, AclRule | None] | None:
    rules: dict[str, AclRule | None] = {}
    broken = False
    for index, item in enumerate(node.value):
        item_where = f"{where}[{index}]"
        peer = r.site_name(item, item_where)
        if peer is None:
            broken = True
            continue
        if peer in rules:
            r.report(item, item_where, f"{peer} is listed twice; remove one")
            continue
        r.lines[f"{where}.{peer}"] = _line(item)
        rules[peer] = AclRule()
    return None if broken else rules


def _read_allow_mapping(r: _SiteFileReader, where: str, node: MappingNode) -> dict[str, AclRule | None] | None:
    fields = r.mapping(node, where, "allow: {site-b: {apps: [order-app]}}")
    if fields is None:
        return None
    rules: dict[str, AclRule | None] = {}
    broken = False
    for peer, value in fields.items():
        peer_where = f"{where}.{peer}"
        if r.validated(peer, r.lines.get(peer_where), peer_where, check_site_name) is None:
            broken = True
            continue
        rules[peer] = _read_acl_rule(r, peer_where, value)
    return None if broken else rules


def _read_acl_rule(r: _SiteFileReader, where: str, node: Node) -> AclRule | None:
    if _is_null(node):
        return AclRule()
    fields = r.mapping(node, where, "{apps: [order-app], methods: [echo], rate: 200/s, burst: 50} or {} for all",
                       known=ACL_KEYS)
    if fields is None:
        return None
    apps = r.name_set(fields["apps"], f"{where}.apps", "apps") if "apps" in fields else None
    methods = r.name_set(fields["methods"], f"{where}.methods", "methods") if "methods" in fields else None
    if ("apps" in fields and apps is None) or ("methods" in fields and methods is None):
        return None
    limits: dict[str, object] = {}
    if "rate" in fields:
        limits["rate"] = r.rate(fields["rate"], f"{where}.rate")
        limits["burst"] = max(1.0, limits["rate"] or 1.0)  # type: ignore[arg-type]  # one second's worth
    for key in ("burst", "per_method"):
        if key in fields and "rate" not in fields:
            r.report(r.lines.get(f"{where}.{key}"), f"{where}.{key}", f"{key} applies to a rate; add rate: "
                     f"{_RATE_EXAMPLE} or remove it")
            return None
    if "burst" in fields:
        limits["burst"] = r.integer(fields["burst"], f"{where}.burst", 1, 1_000_000, 50)
    if "per_method" in fields:
        limits["rate_per_method"] = r.boolean(fields["per_method"], f"{where}.per_method")
    if None in limits.values():
        return None
    return AclRule(apps=apps, methods=methods, **limits)  # type: ignore[arg-type]


def _read_imports(r: _SiteFileReader, node: Node | None, names: _KnownNames) -> list[ImportConfig | None] | None:
    if node is None or _is_null(node):
        return []
    items = r.sequence(node, "imports", "imports: [{service: com.example.PaymentService, from: site-b}]")
    if items is None:
        return None
    imports = [_read_import(r, where, item, names) for where, item in items]
    _report_repeats(r, "imports", imports, "import")
    return imports


def _read_import(r: _SiteFileReader, where: str, node: Node, names: _KnownNames) -> ImportConfig | None:
    fields = r.mapping(
        node,
        where,
        "{service: com.example.PaymentService, from: site-b, protocol: bolt}",
        known=IMPORT_KEYS,
        required={"service": "service: com.example.PaymentService", "from": "from: site-b (a peer)"},
    )
    if fields is None:
        return None
    service = (
        r.name_text(fields["service"], f"{where}.service", "com.example.PaymentService")
        if "service" in fields
        else None
    )
    sites = _read_import_sites(r, f"{where}.from", fields["from"], names) if "from" in fields else None
    from_site = sites[0] if sites else None
    values: dict[str, object] = {}
    if sites and len(sites) > 1:
        values["failover"] = tuple(sites[1:])
    if "protocol" in fields:
        values["protocol"] = r.choice(fields["protocol"], f"{where}.protocol", PROTOCOLS)
    if "version" in fields:
        values["version"] = r.name_text(fields["version"], f"{where}.version", '"1.0"')
    if "max_in_flight" in fields:
        values["max_in_flight"] = r.integer(fields["max_in_flight"], f"{where}.max_in_flight", 1, 1_000_000, 1000)  # type: ignore[assignment]
    if "retry" in fields:
        values["retry"] = _read_retry(r, f"{where}.retry", fields["retry"])  # type: ignore[assignment]
    if service is None or from_site is None or None in values.values():
        return None
    return ImportConfig(service=service, from_site=from_site, **values)  # type: ignore[arg-type]


def _read_providers(r: _SiteFileReader, where: str, node: Node) -> tuple[list[HostPort], dict[HostPort, ProviderTags]] | None:
    """`providers: [10.0.0.21:50061, {address: 10.0.0.22:50061, zone: hz-b, unit: u01, weight: 20}]`."""
    items = r.sequence(node, where, "providers: [10.0.0.21:50061, {address: 10.0.0.22:50061, zone: hz-b, weight: 20}]")
    if items is None:
        return None
    addresses: list[HostPort] = []
    tags: dict[HostPort, ProviderTags] = {}
    broken = False
    for item_where, item in items:
        if not isinstance(item, MappingNode):
            address = r.host_port(item, item_where)
            broken |= address is None
            if address is not None:
                addresses.append(address)
            continue
        fields = r.mapping(item, item_where, "{address: 10.0.0.22:50061, zone: hz-b, unit: u01, weight: 20}",
                           known=PROVIDER_KEYS, required={"address": "address: 10.0.0.22:50061"})
        if fields is None:
            broken = True
            continue
        address = r.host_port(fields["address"], f"{item_where}.address") if "address" in fields else None
        values: dict[str, object] = {}
        for key in ("zone", "unit", "group"):
            if key in fields:
                values[key] = r.name_text(fields[key], f"{item_where}.{key}", "hz-a" if key != "group" else "canary")
        if "weight" in fields:
            values["weight"] = r.integer(fields["weight"], f"{item_where}.weight", 0, 10_000, 100)
        if address is None or None in values.values():
            broken = True
            continue
        addresses.append(address)
        tags[address] = ProviderTags(**values)  # type: ignore[arg-type]
    return None if broken else (addresses, tags)


def _read_routing(r: _SiteFileReader, where: str, node: Node) -> tuple[str | HeaderStage, ...] | None:
    """`routing: [target_zone, unit, nearest, {header: x-release, values: [canary], group: canary}, weighted]`."""
    items = r.sequence(node, where, "routing: [target_zone, unit, nearest, weighted]")
    if items is None:
        return None
    stages: list[str | HeaderStage | None] = []
    for item_where, item in items:
        if isinstance(item, MappingNode):
            stages.append(_read_header_stage(r, item_where, item))
        else:
            stages.append(r.choice(item, item_where, ROUTING_STAGES))
    if None in stages:
        return None
    named = [stage for stage in stages if isinstance(stage, str)]
    if len(set(named)) != len(named):
        r.report(node, where, "names a stage twice; list each once, in the order they narrow the providers")
        return None
    return tuple(stages)  # type: ignore[arg-type]


def _read_header_stage(r: _SiteFileReader, where: str, node: Node) -> HeaderStage | None:
    """`{header: x-release, values: [canary], group: canary}`: calls whose header has one of the values go to the
    providers tagged `group: canary`."""
    fields = r.mapping(node, where, _HEADER_STAGE_EXAMPLE, known=HEADER_STAGE_KEYS,
                       required={"header": "header: x-release", "values": "values: [canary]", "group": "group: canary"})
    if fields is None or len(fields) < len(HEADER_STAGE_KEYS):
        return None
    header = r.routing_header(fields["header"], f"{where}.header")
    group = r.name_text(fields["group"], f"{where}.group", "canary")
    items = r.sequence(fields["values"], f"{where}.values", "values: [canary, beta]")
    values = [r.text(item, item_where, "canary") for item_where, item in items or ()]
    if items is not None and not items:
        r.report(fields["values"], f"{where}.values", "is empty; list the header values that choose the group")
        return None
    if header is None or group is None or items is None or None in values:
        return None
    return HeaderStage(header, frozenset(values), group)  # type: ignore[arg-type]


def _read_unit_rule(r: _SiteFileReader, where: str, node: Node) -> UnitRule | None:
    """`unit_rule: {header: x-uid, units: {u00: "00-49", u01: "50-99"}}`: a caller's unit from the last two digits
    of its user id, when it names none in x-interlink-unit (LDC-style sharding: 100 shards over the units)."""
    fields = r.mapping(node, where, _UNIT_RULE_EXAMPLE, known=UNIT_RULE_KEYS,
                       required={"header": "header: x-uid", "units": 'units: {u00: "00-49", u01: "50-99"}'})
    if fields is None or len(fields) < len(UNIT_RULE_KEYS):
        return None
    header = r.routing_header(fields["header"], f"{where}.header")
    units = r.mapping(fields["units"], f"{where}.units", 'units: {u00: "00-49", u01: "50-99"}')
    if header is None or units is None:
        return None
    shards: list[str | None] = [None] * 100
    broken = False
    for unit, ranges_node in units.items():
        unit_where = f"{where}.units.{unit}"
        ranges = r.text(ranges_node, unit_where, '"00-49" or "00-19, 60-79"')
        if not _NAME_TEXT.fullmatch(unit):
            r.report(ranges_node, unit_where, f'unit "{unit}" must not contain spaces, "/" or ":"; write e.g. u00')
            broken = True
            continue
        if ranges is None:
            broken = True
            continue
        for part in ranges.split(","):
            low, _, high = part.strip().partition("-")
            high = high or low
            if not (low.isdigit() and high.isdigit() and int(low) <= int(high) <= 99):
                r.report(ranges_node, unit_where, f'"{part.strip()}" is not a range of shards 00-99; write e.g. "00-49"')
                broken = True
                continue
            for shard in range(int(low), int(high) + 1):
                if shards[shard] is not None and shards[shard] != unit:
                    r.report(ranges_node, unit_where, f"shard {shard:02d} is already unit {shards[shard]}'s; "
                             "each shard belongs to one unit")
                    broken = True
                    break
                shards[shard] = unit
    return None if broken else UnitRule(header, tuple(shards))


def _read_retry(r: _SiteFileReader, where: str, node: Node) -> RetryConfig | None:
    """`retry: {attempts: 2, budget_percent: 20, idempotent_methods: [Get*, Echo]}`; every key optional."""
    if _is_null(node):
        return RetryConfig()
    fields = r.mapping(node, where, "retry: {attempts: 2, idempotent_methods: [Get*]}", known=RETRY_KEYS)
    if fields is None:
        return None
    values: dict[str, object] = {}
    if "attempts" in fields:
        values["attempts"] = r.integer(fields["attempts"], f"{where}.attempts", 1, 5, 2)
    if "budget_percent" in fields:
        values["budget_percent"] = r.integer(fields["budget_percent"], f"{where}.budget_percent", 1, 100, 20)
    if "idempotent_methods" in fields:
        items = r.sequence(fields["idempotent_methods"], f"{where}.idempotent_methods", "idempotent_methods: [Get*, Echo]")
        methods = [r.name_text(item, item_where, "GetOrder or Get*") for item_where, item in items or ()]
        values["idempotent_methods"] = None if items is None or None in methods else tuple(methods)
    if None in values.values():
        return None
    return RetryConfig(**values)  # type: ignore[arg-type]


def _read_outlier(r: _SiteFileReader, where: str, node: Node) -> OutlierConfig | None:
    """`outlier: {consecutive_failures: 5, eject_s: 30, max_ejected_percent: 50}`; every key optional."""
    if _is_null(node):
        return OutlierConfig()
    fields = r.mapping(node, where, "outlier: {consecutive_failures: 5, eject_s: 30, max_ejected_percent: 50}",
                       known=OUTLIER_KEYS)
    if fields is None:
        return None
    values: dict[str, object] = {}
    for key, low, high, example in (("consecutive_failures", 1, 10_000, 5), ("eject_s", 1, 86_400, 30),
                                    ("max_ejected_percent", 0, 100, 50)):
        if key in fields:
            values[key] = r.integer(fields[key], f"{where}.{key}", low, high, example)
    if None in values.values():
        return None
    return OutlierConfig(**values)  # type: ignore[arg-type]


def _read_import_sites(r: _SiteFileReader, where: str, node: Node, names: _KnownNames) -> list[str] | None:
    """`from: site-a`, or an ordered list `from: [site-a, site-c]` (failover: the next one serves while no link
    to the ones before it is up)."""
    if isinstance(node, SequenceNode):
        items = r.sequence(node, where, "from: [site-a, site-c]")
        if items is None:
            return None
        if not items:
            r.report(node, where, "is empty; name the peer(s) it is imported from, e.g. from: [site-a, site-c]")
            return None
        sites = [r.site_name(item, item_where) for item_where, item in items]
    else:
        sites = [r.site_name(node, where)]
        items = [(where, node)]
    if any(site is None for site in sites):
        return None
    seen: set[str] = set()
    for (item_where, item), site in zip(items, sites):
        assert site is not None
        if site in seen:
            r.report(item, item_where, f"{site} is listed twice; remove one")
            return None
        seen.add(site)
        r.lines.setdefault(item_where, _line(item))
        if not r.require_peer(site, item_where, names, "is imported from"):
            return None
    return sites  # type: ignore[return-value]


def _report_repeats(
    r: _SiteFileReader, section: str, entries: list[ExportConfig | None] | list[ImportConfig | None], noun: str
) -> None:
    """An export or import names a service (and version) once; a second entry would be ambiguous."""
    first_index: dict[tuple[str, str | None], int] = {}
    for index, entry in enumerate(entries):
        if entry is None:
            continue
        identity = (entry.service, entry.version)
        if identity not in first_index:
            first_index[identity] = index
            continue
        first = first_index[identity]
        version = f" version {entry.version}" if entry.version is not None else ""
        r.report(
            r.lines.get(f"{section}[{index}]"),
            f"{section}[{index}]",
            f"{entry.service}{version} is already the {noun} at {section}[{first}] (line"
            f" {r.lines.get(f'{section}[{first}]')}); merge the two entries into one",
        )


# --- the node reader ------------------------------------------------------------------------------------


class _SiteFileReader:
    """Reads typed values out of YAML nodes, recording each key's line and each problem found."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.folder = path.expanduser().absolute().parent  # relative paths in the file start here
        self.problems: list[Problem] = []
        self.lines: dict[str, int] = {}
        self._constructor = SafeConstructor()

    def report(self, at: Node | int | None, where: str, message: str) -> None:
        line = _line(at) if isinstance(at, Node) else at
        self.problems.append(Problem(self.path, line, f"{where}: {message}" if where else message))

    def line_of(self, where: str, node: Node | None) -> int | None:
        """The line of key `where`, else of `node`."""
        if where in self.lines:
            return self.lines[where]
        return _line(node) if node is not None else None

    # structure

    def mapping(
        self,
        node: Node,
        where: str,
        example: str,
        *,
        known: Collection[str] | None = None,
        required: Mapping[str, str] | None = None,
    ) -> dict[str, Node] | None:
        """Key -> value node of a mapping, minus unknown keys (reported). `required` maps key -> example."""
        if not isinstance(node, MappingNode):
            self.report(node, where, f"expected a mapping of keys, got {_describe(node)}; write e.g. {example}")
            return None
        entries = self._entries(node, where)
        fields: dict[str, Node] = {}
        for key, (key_node, value_node) in entries.items():
            key_where = _join(where, key)
            self.lines[key_where] = _line(key_node)
            if known is not None and key not in known:
                self.report(key_node, key_where, _unknown_key_message(key, known))
            else:
                fields[key] = value_node
        for key, key_example in (required or {}).items():
            if key not in entries:
                line = self.line_of(where, node) if where else None
                self.report(line, where, f'missing key "{key}"; add {key_example}')
        return fields

    def _entries(self, node: MappingNode, where: str) -> dict[str, tuple[Node, Node]]:
        first_line: dict[str, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _TAG_MERGE:
                continue
            if not isinstance(key_node, ScalarNode):
                self.report(key_node, where, f"a key must be a plain name, not {_describe(key_node)}")
                continue
            key = key_node.value
            if key in first_line:
                self.report(
                    key_node,
                    _join(where, key),
                    f"duplicate key (first at line {first_line[key]}); YAML would silently keep only the"
                    " last one, so remove or merge one of them",
                )
            else:
                first_line[key] = _line(key_node)
        entries: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in self._merged(node, where).value:
            if isinstance(key_node, ScalarNode) and key_node.tag != _TAG_MERGE:
                entries[key_node.value] = (key_node, value_node)  # the last one wins, as in YAML
        return entries

    def _merged(self, node: MappingNode, where: str) -> MappingNode:
        """The mapping with `<<: *anchor` merge keys expanded (own keys override merged ones)."""
        if not any(key_node.tag == _TAG_MERGE for key_node, _ in node.value):
            return node
        copy = MappingNode(node.tag, list(node.value), node.start_mark, node.end_mark, node.flow_style)
        try:
            self._constructor.flatten_mapping(copy)
        except ConstructorError as exc:
            self.report(exc.problem_mark.line + 1 if exc.problem_mark else node, where, f"{exc.problem}")
            return node
        except RecursionError:  # a chain of thousands of anchors, each merging the previous one (fuzzing)
            self.report(node, where, "merge keys (<<) nested too deeply; merge a mapping that has no merge keys")
            return node
        return copy

    def sequence(self, node: Node, where: str, example: str) -> list[tuple[str, Node]] | None:
        """(dotted path, node) for each item of a list, e.g. ("exports[0]", node)."""
        if not isinstance(node, SequenceNode):
            self.report(node, where, f"expected a list, got {_describe(node)}; write e.g. {example}")
            return None
        items = []
        for index, item in enumerate(node.value):
            item_where = f"{where}[{index}]"
            self.lines[item_where] = _line(item)
            items.append((item_where, item))
        return items

    # scalars

    def text(self, node: Node, where: str, example: str) -> str | None:
        """The scalar as typed (no YAML number or boolean conversion)."""
        if not isinstance(node, ScalarNode):
            self.report(node, where, f"expected a single value, got {_describe(node)}; write e.g. {example}")
            return None
        if _is_null(node) or not node.value.strip():
            self.report(node, where, f"is empty; write e.g. {example}")
            return None
        return str(node.value)

    def validated(self, value: str, line: int | None, where: str, check: Callable[[str], T]) -> T | None:
        """check(value), or None after reporting the check's message (ValueError or CertError)."""
        try:
            return check(value)
        except (ValueError, CertError) as exc:
            self.report(line, where, str(exc))
            return None

    def _checked_text(self, node: Node, where: str, example: str, check: Callable[[str], T]) -> T | None:
        value = self.text(node, where, example)
        return None if value is None else self.validated(value, _line(node), where, check)

    def site_name(self, node: Node, where: str) -> str | None:
        return self._checked_text(node, where, "site-a", check_site_name)

    def trust_domain(self, node: Node, where: str) -> str | None:
        return self._checked_text(node, where, "interlink", check_trust_domain)

    def domain_name(self, node: Node, where: str) -> str | None:
        return self._checked_text(node, where, "site-b.gw.site-a.example", check_domain_name)

    def host_port(self, node: Node, where: str) -> HostPort | None:
        return self._checked_text(node, where, "127.0.0.1:9443", parse_host_port)

    def name_text(self, node: Node, where: str, example: str) -> str | None:
        def check(value: str) -> str:
            if not _NAME_TEXT.fullmatch(value):
                raise ValueError(f'"{value}" must not contain spaces, "/" or ":"; write e.g. {example}')
            return value

        return self._checked_text(node, where, example, check)

    def file_path(self, node: Node, where: str) -> Path | None:
        value = self.text(node, where, "certs/ca.pem (relative to this file's folder)")
        if value is None:
            return None
        try:
            return self.folder / Path(value).expanduser()
        except (RuntimeError, ValueError) as exc:
            # Path.expanduser raises RuntimeError for `~nosuchuser/...` and ValueError for a NUL byte in
            # `~...` (both escaped load_site before; found by tests/fuzz/test_fuzz_sitefile.py).
            self.report(node, where, f'cannot expand "~" in "{value}" ({exc}); write the path without "~"')
            return None

    def choice(self, node: Node, where: str, options: Collection[str]) -> str | None:
        def check(value: str) -> str:
            if value in options:
                return value
            close = difflib.get_close_matches(value.lower(), options, n=1)
            hint = f'did you mean "{close[0]}"?' if close else "use one of those"
            raise ValueError(f'"{value}" is not one of {", ".join(options)}; {hint}')

        return self._checked_text(node, where, " | ".join(options), check)

    def integer(self, node: Node, where: str, low: int, high: int | None, example: int) -> int | None:
        leaf = where.rsplit(".", 1)[-1]
        if not (isinstance(node, ScalarNode) and node.tag == _TAG_INT):
            unquoted = " (without quotes)" if isinstance(node, ScalarNode) and node.value.strip().isdigit() else ""
            self.report(
                node, where, f"expected a whole number, got {_describe(node)}; write e.g. {leaf}: {example}{unquoted}"
            )
            return None
        try:
            value = int(self._constructor.construct_object(node))
        except (ValueError, IndexError, ConstructorError):
            # `!!int abc` / `!!int ''` carry the int tag but no number (ValueError, IndexError), a decimal
            # beyond Python's 4300-digit conversion limit raises ValueError, and a node whose construction
            # failed before (e.g. as a registry option) raises ConstructorError. All escaped load_site before
            # (found by tests/fuzz/test_fuzz_sitefile.py). Start the constructor afresh, as in plain_value.
            self._constructor = SafeConstructor()
            self.report(node, where, f"expected a whole number, got {_short(node.value)}; write e.g. {leaf}: {example}")
            return None
        if value < low or (high is not None and value > high):
            allowed = f"from {low} to {high}" if high is not None else f"of at least {low}"
            # A hex or sexagesimal number can exceed the 4300 digits str() will print (ValueError).
            shown = value if value.bit_length() <= 64 else _short(node.value)
            self.report(node, where, f"{shown} is out of range; use a number {allowed}")
            return None
        return value

    def ratio(self, node: Node, where: str, example: float) -> float | None:
        """A number from 0.0 to 1.0 (the YAML whole numbers 0 and 1 too), as a float."""
        leaf = where.rsplit(".", 1)[-1]
        wanted = "expected a number from 0.0 to 1.0"
        if not (isinstance(node, ScalarNode) and node.tag in (_TAG_FLOAT, _TAG_INT)):
            hint = ""
            if isinstance(node, ScalarNode) and _is_number_text(node.value):
                # "0.5" in quotes, or 1e-1 (YAML 1.1 reads an exponent without a "." as text)
                hint = " (without quotes)" if node.style in ("'", '"') else " (a plain decimal; YAML reads this as text)"
            self.report(node, where, f"{wanted}, got {_describe(node)}; write e.g. {leaf}: {example}{hint}")
            return None
        try:
            value = self._constructor.construct_object(node)
        except (ValueError, IndexError, ConstructorError):
            # `!!float abc` / `!!int ''` carry a number tag but no number (as in integer()): start afresh.
            self._constructor = SafeConstructor()
            self.report(node, where, f"{wanted}, got {_short(node.value)}; write e.g. {leaf}: {example}")
            return None
        if not 0 <= value <= 1:  # NaN (.nan) is refused here too
            shown = node.value if len(node.value) <= 40 else _short(node.value)
            self.report(node, where, f"{shown} is out of range; use a number from 0.0 to 1.0, e.g. {leaf}: {example}")
            return None
        return float(value)

    def otlp_endpoint(self, node: Node, where: str) -> str | None:
        return self._checked_text(
            node, where, f"{_OTLP_EXAMPLE} (or remove the key to export no spans)", _check_otlp_endpoint
        )

    def subject(self, node: Node, where: str, *, wildcards: bool) -> str | None:
        return self._checked_text(node, where, "orders.created", lambda text: _check_subject(text, wildcards=wildcards))

    def rate(self, node: Node, where: str) -> float | None:
        """Calls a second: `200/s`, `3000/min`, or a plain number (a second)."""
        return self._checked_text(node, where, _RATE_EXAMPLE, _check_rate)

    def boolean(self, node: Node, where: str) -> bool | None:
        value = self.text(node, where, "true")
        if value is None:
            return None
        if value.lower() in ("true", "yes", "on"):
            return True
        if value.lower() in ("false", "no", "off"):
            return False
        self.report(node, where, f"{_short(value)} is not true or false; write per_method: true")
        return None

    def nats_url(self, node: Node, where: str) -> str | None:
        return self._checked_text(node, where, _NATS_URL_EXAMPLE, _check_nats_url)

    def stream_name(self, node: Node, where: str) -> str | None:
        return self._checked_text(node, where, "ORDERS", _check_stream_name)

    def mark_header(self, node: Node, where: str) -> str | None:
        return self._checked_text(node, where, _MARK_EXAMPLE, _check_mark_header)

    def routing_header(self, node: Node, where: str) -> str | None:
        """A header of the callers' own that a routing rule reads (lower case, as HTTP/2 carries it)."""
        return self._checked_text(node, where, "x-release", _check_routing_header)

    def baggage_pair(self, node: Node, where: str) -> str | None:
        return self._checked_text(node, where, _BAGGAGE_EXAMPLE, _check_baggage_pair)

    def host_port_list(self, node: Node, where: str, *, required: bool) -> list[HostPort] | None:
        items = self.sequence(node, where, f"{where.rsplit('.', 1)[-1]}: [10.0.0.2:8443]")
        if items is None:
            return None
        if required and not items:
            self.report(node, where, "is empty; list at least one host:port, e.g. [10.0.0.2:8443]")
            return None
        addresses = [self.host_port(item, item_where) for item_where, item in items]
        if any(address is None for address in addresses):
            return None
        return _present_items(addresses)

    def name_set(self, node: Node, where: str, noun: str) -> frozenset[str] | None:
        items = self.sequence(node, where, f"{noun}: [name-1, name-2]")
        if items is None:
            return None
        if not items:
            self.report(
                node, where, f"is empty, so nothing would be allowed; list {noun}, or remove the key to allow all"
            )
            return None
        names = [self.text(item, item_where, "a name") for item_where, item in items]
        if any(name is None for name in names):
            return None
        return frozenset(_present_items(names))

    def plain_value(self, node: Node, where: str) -> object:
        """A registry option as ordinary Python data (the registry adapter validates it)."""
        try:
            return self._constructor.construct_object(node, deep=True)
        except ConstructorError as exc:
            self.report(node, where, f"cannot read this value: {exc.problem}")
        except (ValueError, KeyError, AttributeError, IndexError, TypeError, OverflowError, RecursionError) as exc:
            # What PyYAML's SafeConstructor lets escape for explicitly tagged scalars that do not parse
            # (`!!bool maybe` KeyError, `!!timestamp soon` AttributeError, `!!float x` / `!!int y` ValueError)
            # and for alias chains deeper than the recursion limit (found by tests/fuzz/test_fuzz_sitefile.py).
            self.report(node, where, f"cannot read this value ({type(exc).__name__}: {_short(str(exc))})")
        # A failed construction leaves the constructor mid-way (nodes marked as being constructed), which
        # would turn a later alias of the same node into a spurious error: start afresh.
        self._constructor = SafeConstructor()
        return None

    def require_peer(self, name: str, where: str, names: _KnownNames, role: str) -> bool:
        """True if `name` is one of our peers; otherwise report it (unless the peers section is broken)."""
        if names.peers is None or name in names.peers:
            return True
        if name == names.site:
            message = f"{name} is this site itself; only peers can be named here"
        else:
            close = difflib.get_close_matches(name, sorted(names.peers), n=1)
            hint = f'did you mean "{close[0]}"? Otherwise ' if close else ""
            message = f"{name} {role} but is not listed under peers; {hint}add peers.{name} (endpoints, ca, domain)"
        self.report(self.lines.get(where), where, message)
        return False


# --- small pieces ---------------------------------------------------------------------------------------


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _short(text: str, limit: int = 40) -> str:
    """`text` quoted, cut to `limit` characters (a value can be thousands of digits long)."""
    return f'"{text}"' if len(text) <= limit else f'"{text[:limit]}..." ({len(text)} characters)'


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _TAG_NULL


def _describe(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    kind = node.tag.rsplit(":", 1)[-1]
    if kind == "null":
        return "nothing"
    if kind == "str":
        return f'the text "{node.value}"'
    if kind == "bool":
        return f"the yes/no value {node.value}"
    return f"the {kind} {node.value}"


def _unknown_key_message(key: str, known: Collection[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f'unknown key; did you mean "{close[0]}"?'
    return f"unknown key; known keys here are: {', '.join(known)}"


def _is_number_text(text: str) -> bool:
    """True for text that reads as a number ("0.5", "1"), e.g. a number written in quotes."""
    try:
        float(text)
    except ValueError:
        return False
    return text.strip().lower() not in ("nan", "inf", "-inf", "+inf", "infinity", "-infinity", "+infinity")


def _check_otlp_endpoint(text: str) -> str:
    """An OTLP/HTTP traces URL: http:// or https://, a host, a path. The checks below say in the site file's
    words what is wrong; the exporter's own parse (interlink.net.otlp.parse_endpoint) has the last word, so a
    file this accepts is one the exporter takes."""
    if any(char.isspace() for char in text):
        raise ValueError(f"{_short(text)} must not contain spaces; write e.g. {_OTLP_EXAMPLE}")
    scheme, separator, _ = text.partition("://")
    if not separator:
        example = f"http://{text}/v1/traces" if _looks_like_host_port(text) else _OTLP_EXAMPLE
        raise ValueError(f"{_short(text)} is not a URL; write http://HOST:PORT/PATH, e.g. {example}")
    if scheme.lower() not in ("http", "https"):
        raise ValueError(
            f"{_short(text)} uses {_short(scheme + '://')}, but spans are exported over OTLP/HTTP only;"
            f" write an http:// or https:// URL, e.g. {_OTLP_EXAMPLE}"
        )
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as exc:  # a bracketed host that is no IPv6 address, a port that is no number or too big
        raise ValueError(f"{_short(text)} is not a valid URL ({exc}); write e.g. {_OTLP_EXAMPLE}") from None
    host = parts.hostname
    if not host:
        raise ValueError(f"{_short(text)} has no host; write e.g. {_OTLP_EXAMPLE}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"{_short(text)} holds a user name or password, which interlink does not send; remove the part"
            f" before @, e.g. {scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
        )
    if _IPV4_LOOKALIKE.fullmatch(host) and not _is_ipv4(host):
        raise ValueError(f'"{host}" in {_short(text)} is not a valid IPv4 address (four numbers 0-255, e.g. 10.0.0.2)')
    if not _is_ipv6(host) and not _is_ipv4(host) and not _is_domain_name(host):
        raise ValueError(
            f'"{host}" in {_short(text)} is neither an IP address nor a host name; write e.g. {_OTLP_EXAMPLE}'
        )
    if port == 0:
        raise ValueError(f"port 0 in {_short(text)} is out of range; use a number from 1 to 65535")
    if parts.fragment:
        raise ValueError(f"{_short(text)} ends in a #fragment, which is never sent; remove it")
    if not parts.path:
        raise ValueError(f"{_short(text)} has no path; give the full traces URL, e.g. {text.rstrip('/')}/v1/traces")
    from interlink.net.otlp import parse_endpoint  # (here: OpenTelemetry's messages load only when tracing exports)

    parse_endpoint(text)
    return text


def _looks_like_host_port(text: str) -> bool:
    try:
        parse_host_port(text)
    except ValueError:
        return False
    return True


def _check_mark_header(text: str) -> str:
    """loadtest.header: a lower-case HTTP/2 header name of the user's own (also a Bolt header-map key)."""
    return _check_header_name(text, _MARK_EXAMPLE)


def _check_routing_header(text: str) -> str:
    """What a routing rule reads (a header rule, unit_rule): a header of the caller's own, never one of the keys
    gateways set (x-interlink-*: a caller's are dropped at the local ingress)."""
    if text.lower().startswith("x-interlink-"):
        raise ValueError(f'"{text}": x-interlink-* keys are the gateways\' own; name a header of your callers, '
                         "e.g. x-release")
    return _check_header_name(text, "x-release")


def _check_header_name(text: str, example: str) -> str:
    if text.startswith(":"):
        raise ValueError(f'"{text}" is an HTTP/2 pseudo-header, not a header name of your own; write e.g. {example}')
    if text.lower().startswith("grpc-"):
        raise ValueError(f'"{text}": grpc-* headers are reserved for gRPC itself; write e.g. {example}')
    if text != text.lower() and _HEADER_NAME.fullmatch(text.lower()):
        raise ValueError(f'"{text}" must be lower case (HTTP/2 header names are); write "{text.lower()}"')
    if not _HEADER_NAME.fullmatch(text):
        raise ValueError(f"{_short(text)} is not a header name; use lower-case letters, digits and '-', e.g. {example}")
    if text in _TAKEN_HEADERS:
        raise ValueError(
            f'"{text}" already means something to HTTP/2, gRPC or tracing; pick a name of your own, e.g. {example}'
        )
    return text


def _check_baggage_pair(text: str) -> str:
    """loadtest.baggage: one SOFATracer baggage pair `key=value` (pairs are joined with "&" on the wire)."""
    if any(char.isspace() for char in text):
        squeezed = "".join(text.split())
        raise ValueError(f'{_short(text)} must not contain spaces; write e.g. {squeezed or _BAGGAGE_EXAMPLE}')
    if "&" in text:
        raise ValueError(
            f'{_short(text)} holds "&", which separates baggage pairs; give one key=value pair, e.g. {_BAGGAGE_EXAMPLE}'
        )
    key, equals, value = text.partition("=")
    if not equals:
        raise ValueError(f"{_short(text)} is not a key=value pair; write e.g. {_BAGGAGE_EXAMPLE}")
    if not key:
        raise ValueError(f"{_short(text)} has an empty key; write e.g. {_BAGGAGE_EXAMPLE}")
    if not value:
        raise ValueError(f"{_short(text)} has an empty value; write e.g. {key}=T")
    if "=" in value:
        raise ValueError(f'{_short(text)} holds more than one "="; write one key=value pair, e.g. {_BAGGAGE_EXAMPLE}')
    return text


def _present(mapping: Mapping[str, T | None]) -> dict[str, T]:
    return {key: value for key, value in mapping.items() if value is not None}


def _present_items(items: list[T | None]) -> list[T]:
    return [item for item in items if item is not None]


def _split_bracketed(text: str) -> tuple[str, str]:
    host, closed, rest = text[1:].partition("]")
    if not closed:
        raise ValueError(f'"{text}" has no closing "]"; write an IPv6 address as [::1]:9443')
    if not rest.startswith(":"):
        raise ValueError(f'"{text}" has no port; write host:port, e.g. [{host}]:9443')
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise ValueError(f'"{host}" is not an IPv6 address; only IPv6 addresses go in brackets') from None
    return host, rest[1:]


def _split_plain(text: str) -> tuple[str, str]:
    host, colon, port_text = text.rpartition(":")
    if not colon:
        raise ValueError(f'"{text}" has no port; write host:port, e.g. {text}:9443')
    if ":" in host:
        example = f"[{host}]:{port_text}" if _is_ipv6(host) and port_text.isdigit() else "[::1]:9443"
        raise ValueError(
            f'"{text}" looks like an IPv6 address; put the address in brackets and the port after them, e.g. {example}'
        )
    if not host:
        raise ValueError(f'"{text}" has no host; write host:port, e.g. 127.0.0.1{text}')
    _check_host(host, text)
    return host, port_text


def _check_host(host: str, text: str) -> None:
    if host == "*":
        raise ValueError(f'"{text}": "*" is not an address; write 0.0.0.0 to listen on every address')
    if _IPV4_LOOKALIKE.fullmatch(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f'"{host}" is not a valid IPv4 address (four numbers 0-255, e.g. 10.0.0.2)') from None
        return
    if ":" in host or not _is_domain_name(host.lower()):
        raise ValueError(
            f'"{host}" is neither an IP address nor a host name; write e.g. 10.0.0.2 or gw1.site-b.example'
        )


def _parse_port(port_text: str, text: str) -> int:
    if not port_text:
        raise ValueError(f'"{text}" has no port; write host:port, e.g. {text}9443')
    if not port_text.isdigit():
        raise ValueError(f'"{port_text}" in "{text}" is not a port number; use a number from 1 to 65535')
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f'port {port} in "{text}" is out of range; use a number from 1 to 65535')
    return port


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _is_domain_name(text: str) -> bool:
    return 0 < len(text) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in text.split("."))
