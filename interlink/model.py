"""The protocol-neutral core: what a call is, whoever speaks it.

Every wire protocol has one adapter to and one from these types (2·N adapters, not N² translators).
Nothing here knows about sockets, HTTP/2 or Bolt frames.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

# A site name is one DNS label; a trust domain a DNS-like name. Lower case only, so that a certificate
# and a site file can never disagree on case.
SITE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
TRUST_DOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,253}[a-z0-9])?")
_SITE_URI = re.compile(r"spiffe://(?P<trust_domain>[^/]+)/site/(?P<site>[^/]+)")


class Status(enum.IntEnum):
    """Call outcome. The numbers are gRPC's (and Dubbo's TriRpcStatus): the lingua franca of the gateway."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling: the site (proven by a certificate or by being local) and the application (claimed by
    the caller at its own site's gateway, stamped by that gateway)."""

    site: str
    app: str | None = None


@dataclass(frozen=True, slots=True)
class SiteIdentity:
    """A site name inside a trust domain, as carried by a gateway certificate's URI SAN."""

    trust_domain: str
    site: str

    @property
    def uri(self) -> str:
        return f"spiffe://{self.trust_domain}/site/{self.site}"

    @classmethod
    def from_uri(cls, uri: str) -> SiteIdentity | None:
        """Parse exactly `spiffe://<trust-domain>/site/<site>`; None for any other shape.

        Strict on purpose: no port, user info, query, fragment, percent-encoding, extra path segments,
        trailing slash or upper case. Whatever it accepts, `.uri` formats back identically."""
        match = _SITE_URI.fullmatch(uri)
        if match is None:
            return None
        trust_domain, site = match["trust_domain"], match["site"]
        if not (TRUST_DOMAIN.fullmatch(trust_domain) and SITE_NAME.fullmatch(site)):
            return None
        return cls(trust_domain, site)


class PayloadKind(enum.Enum):
    """How the body of a call or reply is encoded; the adapters convert between kinds only when the two
    sides differ (wire/triple_wrapper.py), so a protobuf body crosses from Bolt to Triple untouched."""

    PROTOBUF = "protobuf"  # one IDL message (Bolt codec 11 content = gRPC message, byte for byte)
    SOFA_HESSIAN = "sofa-hessian"  # a Bolt codec-1 body: SofaRequest / SofaResponse stream, SOFA dialect
    WRAPPER = "wrapper"  # a Triple TripleRequestWrapper / TripleResponseWrapper message


@dataclass(frozen=True, slots=True)
class Payload:
    kind: PayloadKind
    data: bytes
    serialize: str | None = None  # WRAPPER: the serializeType ("hessian2" SOFA dialect, "hessian4" final)


# Canonical metadata keys: SOFARPC's (case kept), since Bolt header maps are case-sensitive and gRPC metadata
# is not. The Triple adapter maps them to tri-* headers and back (wire/triple_call.py).
TRACE_ID = "rpc_trace_context.sofaTraceId"
RPC_ID = "rpc_trace_context.sofaRpcId"
BIZ_BAGGAGE = "rpc_trace_context.sofaPenAttrs"
SYS_BAGGAGE = "rpc_trace_context.sysPenAttrs"
SAMPLED = "rpc_trace_context.samp"


@dataclass(slots=True)
class Call:
    """One RPC as the gateway sees it. Mutable while the gateway's filters look at it; the wire adapters
    build it and consume it."""

    service: str  # the interface, e.g. com.example.EchoService
    method: str
    protocol: str  # the caller's protocol on the hop where this Call was decoded: "triple" | "bolt"
    caller: Identity | None = None
    deadline: float | None = None  # absolute, in the gateway's monotonic clock
    metadata: dict[str, str] = field(default_factory=dict)  # canonical keys (see TRACE_ID ...), str values
    target_app: str | None = None
    payload: Payload | None = None

    @property
    def label(self) -> str:
        return f"{self.service}/{self.method}"


@dataclass(frozen=True, slots=True)
class Reply:
    status: Status
    message: str = ""
    payload: Payload | None = None  # OK (or a business exception, below): the return value
    metadata: dict[str, str] = field(default_factory=dict)  # response props / trailing metadata
    exception: bool = False  # the payload is a serialized business exception (Dubbo tri-exception-code)


class Refusal(Exception):
    """A call the gateway answers itself, whatever refused it (a malformed head, routing, a filter such as
    the ACL, a limit, a translation that cannot be made): the status, a message that says what was wrong and
    what to do, and for HTTP/2 callers the HTTP status (200 unless the request was not gRPC at all).
    Raised by the wire adapters and filters; the call core turns it into the caller's protocol's error."""

    __slots__ = ("status", "message", "http_status", "kind")

    def __init__(self, status: Status, message: str, http_status: bytes = b"200", kind: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.http_status = http_status
        self.kind = kind  # what refused it, for metrics and audit ("acl", "access_domain" ...); None: the status
