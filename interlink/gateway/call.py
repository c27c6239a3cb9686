"""The call core: one protocol-neutral object per call, whatever the protocols on either side.

    downstream leg (H2 | Bolt) -> GatewayCall.start:
        admit      read the head once (a malformed one is refused), set the deadline
        identify   who calls: a local caller (our site, the app it names) or a peer gateway (the site its
                   certificate proves, the app its gateway stamped); the trace this hop is a span of (W3C
                   traceparent, else SOFATracer ids, else a new trace) and the load-test mark
        route      local: the import (-> that peer's gateways); peer: the export (-> our providers)
        filter     the snapshot's chain (peer port: access domain, then export ACL; audited either way)
        codec      passthrough, or translation when the export's providers speak the other protocol (a
                   Triple request is then collected whole first: forward waits for request_complete)
        forward    build the upstream request (stamping identity, the mark, and our traceparent last), choose
                   an upstream connection (the routing stages of its export, the caller's fair share of it;
                   shadow providers for marked calls), open the upstream leg
    ... the legs carry the rest (h2legs.py, boltlegs.py) and report the outcome:
        answered / reply / fail / upstream_failed / caller_gone / deadline_passed
       (a failed try that certainly reached no upstream, or an idempotent one, may go again to another:
        retried, gateway/retries.py)
    -> _finish, exactly once: status, access line, metrics, span (when sampled and exported), filters' end
       hooks, timer cleared, upstream released, both legs released.

A call's progress is its `state` (CallState), not a set of flags. Every call uses the snapshot (routes,
ACLs, filters) it started with.
"""

from __future__ import annotations

import enum
import math
import time
from typing import TYPE_CHECKING, Callable, Union

import structlog
import trio

from interlink import logs
from interlink.gateway import retries, translation
from interlink.gateway.boltlegs import BoltDownstream, BoltUpstream, upstream_frame
from interlink.gateway.deadlines import DeadlineTimers
from interlink.gateway.filters import Filter, FilterChains
from interlink.gateway.limits import CallLimits
from interlink.gateway.h2legs import H2Downstream, H2Upstream
from interlink.gateway.messages import BrokerPublish, MessageMetrics, OrderGuard, StoreWaiter
from interlink.gateway.metrics import CallMetrics
from interlink.model import RPC_ID, SYS_BAGGAGE, TRACE_ID, Identity, Refusal, Reply, Status
from interlink.net import trips
from interlink.net.connection import FlushQueue
from interlink.net.pool import FIRST_CONNECT_WAIT, PoolGroup
from interlink.routes import ExportRoute, ImportRoute, MessageExportRoute, Snapshot
from interlink.wire import bolt, bolt_call, grpc, link_headers, message_link, tracecontext

if TYPE_CHECKING:
    from broker_adapters.base import Broker
    from interlink.config import MessagingConfig, RetryConfig
    from interlink.net.boltlink import BoltEndpoint
    from interlink.net.h2link import H2Endpoint, Headers
    from interlink.net.otlp import SpanExporter

access_log = logs.CallLog("interlink.access")
audit_log = logs.CallLog("interlink.audit")
log = structlog.get_logger("interlink.gateway")

Downstream = Union[H2Downstream, BoltDownstream]
Upstream = Union[H2Upstream, BoltUpstream, BrokerPublish]


class Ingress(enum.Enum):
    LOCAL = "local"  # our site's callers, calling what we import from a peer
    PEER = "peer"  # a peer gateway, calling what we export


# The access line's `ingress` field, per ingress and caller protocol (part of the log contract). Keyed by
# protocol, one table per ingress: an Enum member hashes in Python code, a str in C.
_LOCAL_INGRESS_NAME = {"triple": "local", "bolt": "local-bolt"}
_PEER_INGRESS_NAME = {"triple": "peer", "bolt": "peer-bolt"}


class CallState(enum.Enum):
    ADMITTED = "admitted"  # routed and filtered, or still on its way there (a translated request arriving)
    WAITING = "waiting"  # waiting for a first upstream connection (a gateway that just started)
    FORWARDED = "forwarded"  # the request went upstream; the response is awaited or being relayed
    ANSWERING = "answering"  # the answer is complete at the gateway, waiting for the caller's window
    DONE = "done"  # the one exit ran

# The same values as names: on the per-call path an enum attribute lookup costs ~100 ns, a global ~5 ns.
ADMITTED, WAITING, FORWARDED, ANSWERING, DONE = CallState
LOCAL, PEER = Ingress


class CallCore:
    """What every call shares: the snapshot and its filter chains, the upstream pools, timers, flushing,
    and the nursery that waits for first connections. The endpoints' request callbacks live here."""

    def __init__(
        self,
        snapshot: Snapshot,
        peer_group: Callable[[str, str], PoolGroup | None],
        provider_group: Callable[[str], PoolGroup | None],
        timers: DeadlineTimers,
        flush_queue: FlushQueue,
        nursery: trio.Nursery | None = None,
        spans: SpanExporter | None = None,
    ) -> None:
        """`peer_group(protocol, site)`: the pools to a peer's gateways for calls in that protocol;
        `provider_group(pool_key)`: the pools to an export's providers; `spans`: where sampled calls' spans
        go (tracing: otlp_endpoint), or None."""
        self.peer_group = peer_group
        self.provider_group = provider_group
        self.timers = timers
        self.flush_queue = flush_queue
        self.nursery = nursery
        self.metrics = CallMetrics()
        self.spans = spans
        # Message interop (gateway/messages.py): our broker, set by the runner when the site file has messaging:.
        self.broker: Broker | None = None
        self.message_metrics = MessageMetrics()
        self.order_guard = OrderGuard()
        self._stored_waiters: dict[str, StoreWaiter] = {}  # per destination stream (from the site file)
        self.limits = CallLimits()  # calls in flight per service, token buckets (kept across reloads)
        self.retry_budgets = retries.RetryBudgets()  # per service with a retry policy (kept across reloads)
        # When a list: every call made is appended (the tests' in-memory world; the module is compiled, so its
        # classes cannot be replaced from outside).
        self.made: list[GatewayCall] | None = None
        self.install(snapshot)

    def install(self, snapshot: Snapshot) -> None:
        """New calls use `snapshot` (and its filters); calls in flight keep theirs."""
        self.chains, self.snapshot = FilterChains.of(snapshot, self.limits), snapshot
        self.metrics.install(snapshot)
        config = snapshot.config
        self.messaging: MessagingConfig | None = config.messaging
        # Spans of a trace are exported when its id falls under the ratio: the same choice on every gateway.
        self.sample_below = int(config.tracing.sample_ratio * 0x1_0000_0000)
        marks = config.loadtest
        header = marks.header.encode()
        self.loadtest_header = None if header == link_headers.LOADTEST else header  # (the default is read always)
        self.loadtest_baggage = marks.baggage.encode()

    def stored_waiter(self, stream: str) -> StoreWaiter:
        """The one task that awaits a message stream's broker answers (started on first use)."""
        waiter = self._stored_waiters.get(stream)
        if waiter is None:
            waiter = self._stored_waiters[stream] = StoreWaiter(self.flush_queue.flush)
            assert self.nursery is not None
            self.nursery.start_soon(waiter.run)
        return waiter

    def audit(self, decision: str, fields: dict[str, object], reason: str, kind: str = "") -> None:
        """One audit line (every call on the peer port, every refused peer connection), counted."""
        audit_log.line("audit", {"decision": decision, "reason": reason or None}, fields)
        peer = fields.get("peer")
        self.metrics.decided(peer, decision, kind)
        if decision == "deny":
            self.metrics.denied(peer, fields.get("caller_app"), fields.get("service"), reason)

    def export_span(self, call: GatewayCall, status: str, message: str, seconds: float) -> None:
        """One sampled call as one span (each gateway hop is one; the caller's span is its parent)."""
        from interlink.net.otlp import SpanRecord  # (loaded once the exporter is; a gateway without one never does)

        fields = call.log_fields
        end = time.time_ns()
        attributes = [(f"interlink.{key}", value) for key, value in fields.items()
                      if isinstance(value, (str, bool)) and key not in ("trace_id", "span_id")]
        attributes.append(("rpc.system", "grpc" if call.down.protocol == "triple" else "sofarpc"))
        assert self.spans is not None
        self.spans.submit(SpanRecord(
            trace_id=bytes.fromhex(call.trace_id), span_id=bytes.fromhex(call.span_id),  # type: ignore[arg-type]
            parent_span_id=bytes.fromhex(call.parent_span_id) if call.parent_span_id else b"",
            name=f"{call.service}/{call.method}", kind=2, start_ns=end - int(seconds * 1e9), end_ns=end,
            status_ok=status == "OK", status_message=message if status == "OK" else f"{status}: {message}",
            attributes=tuple(attributes),
        ))

    # --- the endpoints' request callbacks ---------------------------------------------------------------

    def on_local_h2(self, endpoint: H2Endpoint, stream_id: int, headers: Headers, end_stream: bool) -> None:
        GatewayCall(self, LOCAL, H2Downstream(endpoint, stream_id, headers, end_stream)).start()

    def on_peer_h2(self, endpoint: H2Endpoint, stream_id: int, headers: Headers, end_stream: bool) -> None:
        GatewayCall(self, PEER, H2Downstream(endpoint, stream_id, headers, end_stream)).start()

    def on_local_bolt(self, endpoint: BoltEndpoint, request: bolt.BoltFrame) -> None:
        GatewayCall(self, LOCAL, BoltDownstream(endpoint, request)).start()

    def on_peer_bolt(self, endpoint: BoltEndpoint, request: bolt.BoltFrame) -> None:
        GatewayCall(self, PEER, BoltDownstream(endpoint, request)).start()

    def on_local_bolt_refused(self, endpoint: BoltEndpoint, request_id: int, status: Status, reason: str) -> None:
        self._refused_at_admission(LOCAL, endpoint, status, reason)

    def on_peer_bolt_refused(self, endpoint: BoltEndpoint, request_id: int, status: Status, reason: str) -> None:
        self._refused_at_admission(PEER, endpoint, status, reason)

    def _refused_at_admission(self, ingress: Ingress, endpoint: BoltEndpoint, status: Status, reason: str) -> None:
        """A Bolt request its connection did not admit (draining, too many calls in flight; it was answered
        there): still one access line, and audited on the peer port. (HTTP/2 refuses such streams with
        REFUSED_STREAM before they are requests.)"""
        fields: dict[str, object] = {"site": self.snapshot.site, "ingress": _ingress_name(ingress, "bolt")}
        if ingress is PEER:
            fields["peer"] = endpoint.attributes.get("site")
            self.audit("deny", fields, reason, status.name.lower())
        access_log.line("call", {"status": status.name, "ms": 0.0, "error": reason}, fields)
        self.metrics.observe(fields["ingress"], fields.get("peer"), "", None, "bolt", status.name, None, False, 0.0)  # type: ignore[arg-type]


class GatewayCall:
    """One call, from its caller's request to the one exit. See the module docstring for the phases."""

    __slots__ = (
        "core", "ingress", "down", "up", "snapshot", "chain", "caller_site", "caller_app", "service", "method", "authority", "route",
        "log_fields", "deadline", "started", "state", "serialize", "upstream_name", "_group", "_timer",
        "_answer", "_authorized", "trace_id", "span_id", "parent_span_id", "trace_flags", "loadtest", "holds_slot",
        "_connection", "retry", "attempts", "_reached", "_wants",
    )

    def __init__(self, core: CallCore, ingress: Ingress, down: Downstream) -> None:
        snapshot = core.snapshot
        if core.made is not None:
            core.made.append(self)
        self.core = core
        self.ingress = ingress
        self.down = down
        self.up: Upstream | None = None
        self.snapshot = snapshot
        self.chain = core.chains
        self.caller_site = ""  # who calls (identify): the site, proven by a certificate or by being local,
        self.caller_app: str | None = None  # and the app, as the caller's own site's gateway says
        self.service = ""
        self.method: str | None = None
        self.authority: bytes | None = None  # HTTP/2 :authority (checked against the access domain)
        self.route: ImportRoute | ExportRoute | None = None
        self.log_fields: dict[str, object] = {"site": snapshot.site, "ingress": _ingress_name(ingress, down.protocol)}
        self.deadline = math.inf
        self.started = time.perf_counter()
        self.state = ADMITTED
        self.serialize: str | None = None  # a translated call's wrapper serializeType (its answer is written in it)
        self.upstream_name = "upstream"
        self._group: PoolGroup | None = None  # whose fair share this call holds
        self._connection: object = None  # ... on which of its connections (outlier ejection counts by its pool)
        self._timer: list | None = None
        self._answer = ("UNKNOWN", "")  # status and message of an answer still being written (ANSWERING)
        self._authorized = ingress is LOCAL  # peer calls are audited until they pass the filters
        self.trace_id: str | None = None  # W3C trace id (32 hex digits), once the head is read (identify)
        self.span_id = ""  # this hop's span
        self.parent_span_id: str | None = None  # the caller's span, when it sent a traceparent
        self.trace_flags = tracecontext.SAMPLED
        self.loadtest = False  # marked as load-test traffic
        self.holds_slot = False  # counted in its service's max_in_flight (gateway/limits.py)
        self.retry: RetryConfig | None = None  # its route's retry policy (gateway/retries.py), once forwarded
        self.attempts = 1  # tries so far
        self._reached = False  # an earlier try may have reached an upstream (it failed after being sent)
        self._wants: tuple | None = None  # (router, what the call wants of its stages): read once (Router.wants)
        down.attach(self)

    @property
    def caller(self) -> Identity:
        return Identity(self.caller_site, self.caller_app)

    # --- the phases -------------------------------------------------------------------------------------

    def start(self) -> None:
        try:
            self._admit(trio.current_time())
            self._identify()
            self._route()
            self._filter()
            self._choose_codec()
            if self._request_pending():
                return  # a translated Triple request: forwarded once its one message is complete
            self._forward(trio.current_time())  # read again: the next hop is given what is left after our work
        except Refusal as refusal:
            self.fail(refusal.status, refusal.message, refusal.http_status, refusal.kind)
        except bolt_call.UNREADABLE as exc:  # a header map that can be scanned but not rewritten
            self.fail(Status.INTERNAL, f"malformed request: {exc}")

    def _admit(self, now: float) -> None:
        down = self.down
        if isinstance(down, H2Downstream):
            if self.ingress is PEER:
                self.log_fields["peer"] = down.endpoint.attributes["site"]  # type: ignore[union-attr]
            head = down.read_head()
            timeout = head.timeout
            self.service, self.method, self.authority = head.service, head.method, head.authority
        else:
            if self.ingress is PEER:
                self.log_fields["peer"] = down.endpoint.attributes["site"]
            bolt_head = down.read_head(from_link=self.ingress is PEER)
            timeout = bolt_head.timeout
            self.service, self.method = bolt_head.service or "", bolt_head.method
        self.log_fields["service"] = self.service
        self.deadline = now + (timeout if timeout is not None else self.snapshot.default_timeout)
        self._timer = self.core.timers.add(self.deadline, self)

    def _identify(self) -> None:
        down = self.down
        head: grpc.RequestHead | bolt_call.BoltRequestHead | None
        if isinstance(down, H2Downstream):
            head = down.head
            assert head is not None
            app = head.consumer_app if self.ingress is LOCAL else head.caller_app
            traceparent = down.traceparent
        else:
            head = down.head
            assert head is not None
            app = head.app
            traceparent = head.traceparent
        self.caller_site = str(down.endpoint.attributes["site"]) if self.ingress is PEER else self.snapshot.site  # type: ignore[union-attr]
        self.caller_app = app
        fields = self.log_fields
        fields["method"] = self.method
        fields["caller_app"] = app
        # The trace this hop is a span of: the caller's W3C context, else its SOFATracer id, else a new trace
        # (wire/tracecontext.py).
        sofa_trace_id = head.sofa_trace_id
        if traceparent is None and sofa_trace_id is None:
            fields["trace_id"], fields["span_id"] = self.trace_id, self.span_id = tracecontext.new_trace_and_span()
        else:
            self._continue_trace(traceparent, sofa_trace_id)
            fields["trace_id"], fields["span_id"] = self.trace_id, self.span_id
        if head.loadtest_mark is not None or head.sys_baggage is not None or self.core.loadtest_header is not None:
            if self._marked(head):
                self.loadtest = fields["loadtest"] = True

    def _continue_trace(self, traceparent: bytes | None, sofa_trace_id: bytes | None) -> None:
        context = tracecontext.parse_traceparent(traceparent) if traceparent is not None else None
        if context is not None:
            self.trace_id, self.parent_span_id, self.trace_flags = context
            self.span_id = tracecontext.new_span_id()
            return
        trace_id = tracecontext.trace_id_of_sofa(sofa_trace_id) if sofa_trace_id is not None else None
        if trace_id is None:
            self.trace_id, self.span_id = tracecontext.new_trace_and_span()
        else:
            self.trace_id, self.span_id = trace_id, tracecontext.new_span_id()

    def _marked(self, head: grpc.RequestHead | bolt_call.BoltRequestHead) -> bool:
        """Load-test traffic: the mark header (ours, or the one the site file names) says 1 or true, or the
        SOFATracer system baggage holds the mark pair."""
        mark = head.loadtest_mark
        if mark is not None:
            return mark.lower() in _TRUE
        core = self.core
        baggage = head.sys_baggage
        if baggage is not None and tracecontext.baggage_has(baggage, core.loadtest_baggage):
            return True
        custom = core.loadtest_header
        if custom is None:
            return False
        if isinstance(head, grpc.RequestHead):
            return any(name == custom and value.lower() in _TRUE for name, value in head.metadata)
        request = self.down.request  # type: ignore[union-attr]
        value = bolt.header_get(request.header, custom) if request.header else None
        return value is not None and value.lower() in _TRUE

    def _route(self) -> None:
        snapshot, fields, protocol = self.snapshot, self.log_fields, self.down.protocol
        if self.ingress is LOCAL:
            route = (snapshot.imports if protocol == "triple" else snapshot.bolt_imports).get(self.service)
            if route is None:
                how = "" if protocol == "triple" else " with protocol: bolt"
                raise Refusal(Status.UNIMPLEMENTED, f"service {self.service} is not imported by site {snapshot.site}; "
                              f"add it under imports:{how} in the site file")
            self.route = route
            fields["peer"] = route.peer
            self.upstream_name = fields["upstream"] = f"site {route.peer}"  # type: ignore[assignment]
        else:  # a missing export is refused by the filters, after the access-domain check
            route = (snapshot.exports if protocol == "triple" else snapshot.bolt_exports).get(self.service)  # type: ignore[assignment]
            if route is None and self.service == message_link.SERVICE and protocol == "triple":
                route = snapshot.message_exports.route(self.method)  # type: ignore[assignment]  # a message's subject
            self.route = route

    def _filter(self) -> None:
        for item in self.chain.local if self.ingress is LOCAL else self.chain.peer:
            item.on_request(self)
        if not self._authorized:
            self._authorized = True
            self.core.audit("allow", self.log_fields, "")

    def _choose_codec(self) -> None:
        """Calls cross the peer link in their caller's protocol; at the export, translation when the
        providers speak the other one."""
        route = self.route
        if isinstance(route, ExportRoute):
            self.upstream_name = self.log_fields["upstream"] = f"providers of {self.service}"  # type: ignore[assignment]
            if route.protocol != self.down.protocol:
                self.log_fields["translated"] = f"{self.down.protocol}->{route.protocol}"
                if isinstance(self.down, H2Downstream):
                    self.down.collect()
        elif isinstance(route, MessageExportRoute):  # the broker takes the one Delivery whole
            self.upstream_name = self.log_fields["upstream"] = f"stream {route.stream}"  # type: ignore[assignment]
            self.down.collect()  # type: ignore[union-attr]

    def _request_pending(self) -> bool:
        down = self.down
        return isinstance(down, H2Downstream) and down.collector is not None and not down.caller_ended

    def request_complete(self) -> None:
        """A translated Triple request's last byte arrived: forward it."""
        if self.state is ADMITTED and self.up is None:
            try:
                self._forward(trio.current_time())
            except Refusal as refusal:
                self.fail(refusal.status, refusal.message, refusal.http_status, refusal.kind)

    def _forward(self, now: float) -> None:
        """Build the upstream request (the next hop's timeout is what is left at `now`), then choose an upstream
        connection for it."""
        route, down = self.route, self.down
        if isinstance(route, MessageExportRoute):
            self._publish(route)
            return
        assert route is not None
        retry = self.retry = route.retry
        if retry is not None:
            self.core.retry_budgets.of(self.ingress.value, route.service).called(now)
        group, authority = self._upstream_group(route)
        if isinstance(route, ImportRoute):
            stamps = self._stamps(to_peer=True)
            self.up = self._passthrough(stamps, now, authority)
        else:
            stamps = self._stamps(to_peer=False)
            self.up = (self._passthrough(stamps, now, None) if route.protocol == down.protocol
                       else self._translate(route, stamps, now))
        self._choose_upstream(group, now)
        if isinstance(down, BoltDownstream):
            down.forwarded()  # (after the choice: routing stages may read the caller's header map)

    def _upstream_group(self, route: ImportRoute | ExportRoute) -> tuple[PoolGroup | None, bytes | None]:
        """The pools the call goes to, and (an import) the access domain of the site they reach."""
        if isinstance(route, ImportRoute):
            return self._peer_site(route)
        shadow = route.shadow_pool_key if self.loadtest else None  # never for an unmarked call
        if shadow is not None:
            self.upstream_name = self.log_fields["upstream"] = f"shadow providers of {self.service}"
        return self.core.provider_group(shadow or route.pool_key), None

    def _peer_site(self, route: ImportRoute) -> tuple[PoolGroup | None, bytes]:
        """Where an import's call goes: its first site, unless no link to it is up and a later site of its
        `from:` list has one (failover, in order); then that site (the access line names it)."""
        core, protocol = self.core, self.down.protocol
        group = core.peer_group(protocol, route.peer)
        if not route.failover or (group is not None and group.up):
            return group, route.authority
        for site, authority in route.failover:
            candidate = core.peer_group(protocol, site)
            if candidate is not None and candidate.up:
                fields = self.log_fields
                fields["peer"] = site
                self.upstream_name = fields["upstream"] = f"site {site}"  # type: ignore[assignment]
                return candidate, authority
        return group, route.authority

    def _publish(self, route: MessageExportRoute) -> None:
        """A message from a peer: into our broker (gateway/messages.py); answered once it is stored."""
        broker = self.core.broker
        if broker is None:
            raise Refusal(Status.UNAVAILABLE, f"site {self.snapshot.site} has no messaging.broker running")
        self.up = BrokerPublish(self, route)
        self.state = FORWARDED
        self.up.open(broker)

    def _stamps(self, *, to_peer: bool) -> list[tuple[bytes, bytes | None]]:
        """The keys this gateway sets on the upstream request: who calls (link_headers.identity_stamps), the
        trace context with this hop as the parent, and the load-test mark (removed when not marked). Towards
        providers, what SOFA applications look for, when the call carries none of its own: the mark in its
        SOFATracer system baggage, and (SOFA Triple providers) the trace as SOFATracer ids. (A translated call
        gets its SOFATracer ids in its Call: _translate.)"""
        stamps = link_headers.identity_stamps(self.caller_site, self.caller_app, to_peer=to_peer)
        stamps.append((link_headers.LOADTEST, b"1" if self.loadtest else None))
        head = self.down.head
        if to_peer:  # the caller's routing hints, for the providers' gateway (net/pool.py Router)
            zone = head.target_zone  # type: ignore[union-attr]
            unit = head.unit if self.snapshot.config.unit_rule is None else self._unit()  # type: ignore[union-attr]
            if zone:
                stamps.append((link_headers.TARGET_ZONE, zone.encode()))
            if unit:
                stamps.append((link_headers.UNIT, unit.encode()))
        else:
            route: ExportRoute = self.route  # type: ignore[assignment]
            head = self.down.head
            if self.loadtest and head.sys_baggage is None:  # type: ignore[union-attr]
                stamps.append((_SYS_BAGGAGE_KEY[route.protocol], self.core.loadtest_baggage))
            if route.flavour == "sofa" and route.protocol == "triple" and isinstance(head, grpc.RequestHead) \
                    and head.sofa_trace_id is None:  # a SOFA Triple provider joins the trace as SOFATracer sees it
                trace_id = self.trace_id.encode()  # type: ignore[union-attr]
                stamps += [(name, trace_id) for name in tracecontext.TRIPLE_TRACE_ID]
                stamps += [(name, b"0") for name in tracecontext.TRIPLE_RPC_ID]
        # last: the next hop finds the rest of the head in its caches (grpc.read_request_head, hpack, bolt_call)
        stamps.append((tracecontext.TRACEPARENT,
                       tracecontext.format_traceparent(self.trace_id, self.span_id, self.trace_flags)))  # type: ignore[arg-type]
        return stamps

    def _passthrough(self, stamps: list[tuple[bytes, bytes | None]], now: float, authority: bytes | None) -> Upstream:
        """Same protocol on both sides: the request travels as it came, with our link headers (towards a peer,
        `authority` is the access domain that peer gave us)."""
        down = self.down
        if isinstance(down, H2Downstream):
            head = down.head
            assert head is not None
            to_peer = authority is not None
            headers = grpc.request_headers(
                head, scheme=b"https" if to_peer else b"http", authority=authority if to_peer else head.authority,  # type: ignore[arg-type]
                timeout=_remaining(self.deadline, now), stamps=[(k, v) for k, v in stamps if v is not None],
            )
            up = H2Upstream(self, headers, replay=self.retry is not None)
            up.source, down.source = down, up
            if down.caller_ended:
                up.out.end = True
            return up
        method = self.method.encode() if self.method and isinstance(self.route, ImportRoute) else None
        updates = dict(stamps)
        updates[link_headers.METHOD] = method
        timeout_ms = _remaining_ms(self.deadline, now)
        frame = upstream_frame(down.request, down.head, updates, timeout_ms)  # type: ignore[arg-type]
        return BoltUpstream(self, frame, translated=False)

    def _translate(self, route: ExportRoute, stamps: list[tuple[bytes, bytes | None]], now: float) -> Upstream:
        """The providers speak the other protocol: through Call (gateway/translation.py)."""
        down = self.down
        call = down.to_call(route, self.deadline)  # the request as a Call (Refusal if it cannot be read)
        # The caller the ACL judged; a Bolt request's own app claim fills in only when no app was stamped.
        call.caller = Identity(self.caller_site, self.caller_app or (call.caller.app if call.caller else None))
        if TRACE_ID not in call.metadata:  # a SOFA provider joins the trace as SOFATracer sees traces
            call.metadata[TRACE_ID] = self.trace_id  # type: ignore[assignment]
            call.metadata.setdefault(RPC_ID, "0")
        if isinstance(down, H2Downstream):
            frame, self.serialize = translation.bolt_request(call, route, stamps, _remaining_ms(self.deadline, now))
            return BoltUpstream(self, frame, translated=True)
        timeout = _remaining(self.deadline, now)
        headers, message, self.serialize = translation.triple_request(call, route, stamps, timeout)
        return H2Upstream(self, headers, message, replay=self.retry is not None)

    def _choose_upstream(self, group: PoolGroup | None, now: float, avoid: object = None) -> None:
        """The least-loaded usable connection of `group` (another pool than `avoid` when there is one: a retry).
        Full -> RESOURCE_EXHAUSTED; down -> UNAVAILABLE at once; never connected yet but connecting (a gateway
        that just started) -> wait for that first connection, within the deadline."""
        if group is None or not group.pools:
            raise Refusal(Status.UNAVAILABLE, "no upstream is configured for it" if group is None
                          else f"{group.name}: none is known (none configured, or the registry lists none)")
        if self.deadline <= now:
            raise Refusal(Status.DEADLINE_EXCEEDED, "the deadline passed before the call could be forwarded")
        upstream = group.pick(avoid) if group.router is None else self._routed_pick(group, avoid)
        if upstream is not None:
            self._dispatch(group, upstream)
        elif group.waking and self.core.nursery is not None:  # a provider closed for idleness is being dialled
            self.state = WAITING
            self.core.nursery.start_soon(self._when_ready, group)
        elif group.up:
            trips.trip(trips.UPSTREAM_FULL)
            raise Refusal(Status.RESOURCE_EXHAUSTED,
                          f"all connections to {group.name} are at their concurrent call limit; retry later")
        elif (group.connecting or group.first_connect_pending) and self.core.nursery is not None:
            self.state = WAITING
            self.core.nursery.start_soon(self._when_ready, group)
        else:
            raise Refusal(Status.UNAVAILABLE, f"{group.name} is unreachable: {group.last_error}")

    def _routed_pick(self, group: PoolGroup, avoid: object = None) -> object:
        """The export's routing stages choose (net/pool.py Router) by what the call wants of them: its zone, its
        unit, its headers — read once (a retry or a reload's new stages read them again only if they can)."""
        router = group.router
        wants = self._wants
        if wants is None or wants[0] is not router:
            head = self.down.head
            header = self._header if router.headers else None  # type: ignore[union-attr]
            unit = head.unit if self.snapshot.config.unit_rule is None else self._unit()  # type: ignore[union-attr]
            wants = self._wants = (router, router.wants(head.target_zone, unit, header))  # type: ignore[union-attr]
        return group.pick_routed(wants[1], avoid)

    def _unit(self) -> str | None:
        """The caller's unit: x-interlink-unit, else the one its user id falls in (the site's unit_rule)."""
        head = self.down.head
        unit = head.unit  # type: ignore[union-attr]
        rule = self.snapshot.config.unit_rule
        if unit is None and rule is not None:
            uid = self._header(rule.header)
            unit = rule.unit_of(uid.encode()) if uid else None
        return unit

    def _header(self, name: str) -> str | None:
        """A caller's header (gRPC metadata, or a Bolt header map key) by lower-case name, for the routing stages."""
        down = self.down
        key = name.encode()
        if isinstance(down, H2Downstream):
            for item, value in down.head.metadata:  # type: ignore[union-attr]
                if item == key:
                    return value.decode("ascii", "replace")
            return None
        header = down.request.header
        value = bolt.header_get(header, key) if header else None
        if value is not None:
            return value.decode("utf-8", "replace")
        props = bolt_call.request_props(down.request, down.head)  # type: ignore[arg-type]  # sofa-rpc-node: only there
        prop = props.get(name) if props is not None else None
        return prop if isinstance(prop, str) else None

    async def _when_ready(self, group: PoolGroup) -> None:
        if group.first_connect_pending:  # a gateway (or upstream) that just started: through its first retries
            with trio.move_on_at(min(self.deadline, group.first_wait_until())):
                await group.wait_ready()
        else:  # a reconnect, or a provider waking up: only while that attempt lasts
            with trio.move_on_at(min(self.deadline, trio.current_time() + FIRST_CONNECT_WAIT)):
                await group.wait_settled()
        if self.state is WAITING:
            upstream = group.pick() if group.router is None else self._routed_pick(group)
            if self.deadline <= trio.current_time():
                self.fail(Status.DEADLINE_EXCEEDED, "the deadline passed before the call could be forwarded")
            elif upstream is None:
                self.fail(Status.UNAVAILABLE, f"{group.name} is unreachable: {group.last_error}")
            else:
                try:
                    self._dispatch(group, upstream)
                except Refusal as refusal:
                    self.fail(refusal.status, refusal.message, kind=refusal.kind)
        self.core.flush_queue.flush()

    def _dispatch(self, group: PoolGroup, connection: object) -> None:
        """One caller connection may hold only its fair share of an upstream's call slots."""
        if not group.acquire(self.down.endpoint):
            trips.trip(trips.UPSTREAM_SHARE)
            raise Refusal(Status.RESOURCE_EXHAUSTED,
                          f"this connection already has its share ({group.share()}) of the calls to {group.name} "
                          "in flight; retry later or spread calls over more connections")
        self._group, self._connection = group, connection
        self.state = FORWARDED
        oneway = self.down.oneway
        self.up.open(connection)  # type: ignore[union-attr, arg-type]
        if oneway:  # complete once forwarded: nothing comes back
            self.answered(Status.OK)

    # --- outcomes (reported by the legs and the timers) --------------------------------------------------

    def answered(self, status: Status | str) -> None:
        """The answer went to the caller whole."""
        self._finish(status if isinstance(status, str) else status.name, "")

    def answering(self, status: Status, message: str = "") -> None:
        """The answer is complete here; its last bytes wait for the caller's window (answer_sent)."""
        if self.state is DONE:
            return
        self.state = ANSWERING
        self._answer = (status.name, message)

    def answer_sent(self) -> None:
        if self.state is ANSWERING:
            self._finish(*self._answer)

    def reply(self, reply: Reply) -> None:
        """A translated call's answer, from the upstream leg."""
        if self.state is DONE:
            return
        if reply.status is Status.UNAVAILABLE and self.retry is not None and \
                self.retried("UNAVAILABLE", reply.message, unprocessed=False):
            return
        down = self.down
        if isinstance(down, H2Downstream):
            status = Status.INTERNAL if reply.status == Status.OK and reply.payload is None else reply.status
            if down.answer(reply, translation.response_content_type(self.route)):  # type: ignore[arg-type]
                self._finish(status.name, reply.message)
            else:
                self.answering(status, reply.message)
        else:
            self._finish(*down.answer(reply))

    def fail(self, status: Status, message: str, http_status: bytes = b"200", kind: str | None = None) -> None:
        """End the call with a gateway-made error, whatever its state (upstream given up, caller answered).
        `kind`: what refused it (Refusal.kind), for the audit counters."""
        if self.state is DONE:
            return
        if self.up is not None:
            self.up.cancel()
        if not self._authorized:  # every refusal on the peer port is audited
            self.core.audit("deny", self.log_fields, message, kind or status.name.lower())
        # Refused before any upstream could have seen it: the caller's gateway may try another of ours.
        unprocessed = status is Status.UNAVAILABLE and (self.state is ADMITTED or self.state is WAITING) \
            and not self._reached
        self.down.answer_error(Refusal(status, message, http_status), unprocessed)
        self._finish(status.name, message)

    def upstream_failed(self, status: Status, message: str, unprocessed: bool = False) -> None:
        """The upstream leg ended under the call (reset, connection lost): tried again elsewhere when it may be
        (`unprocessed`: the upstream certainly never saw it; gateway/retries.py), else the caller gets the error."""
        if self.retry is not None and self.retried(status.name, message, unprocessed):
            return
        self.fail(status, message)

    def unavailable_answer(self, message: str, refused_unprocessed: bool) -> bool:
        """The upstream answered UNAVAILABLE (nothing relayed yet): True when the call was sent again instead.
        `refused_unprocessed`: the answer says it was refused before forwarding (link_headers.UNPROCESSED),
        believed only from a peer gateway (our imports' upstream), never from a provider."""
        return self.retried("UNAVAILABLE", message, refused_unprocessed and self.ingress is LOCAL)

    def retried(self, status: str, message: str, unprocessed: bool) -> bool:
        """Send the call again, to another upstream of its group, if it may go (gateway/retries.py): True when
        it went (or failed for good on the way: no upstream left); False leaves the outcome to the caller."""
        policy, up, route = self.retry, self.up, self.route
        if (self.state is not FORWARDED or policy is None or up is None or isinstance(up, BrokerPublish)
                or not retries.may_retry(policy, self.attempts, status, unprocessed, self.method)
                or not up.replayable()):
            return False
        now = trio.current_time()
        if self.deadline - now < retries.MIN_TIME_LEFT:
            return False
        core = self.core
        if not core.retry_budgets.of(self.ingress.value, route.service).spend(now, policy.budget_percent):  # type: ignore[union-attr]
            retries.over_budget(self.service, self.upstream_name)
            return False
        avoid = getattr(self._connection, "attributes", {}).get("pool")
        self._give_back(failed=True)  # the failed try gives back its slot and counts against its upstream
        why = "unprocessed" if unprocessed else "idempotent"
        self._reached |= not unprocessed
        self.attempts += 1
        fields = self.log_fields
        fields["attempts"] = self.attempts
        core.metrics.retried(fields["ingress"], self.service, why)  # type: ignore[arg-type]
        log.info("call.retried", service=self.service, method=self.method, upstream=self.upstream_name, why=why,
                 error=message, attempt=self.attempts, trace_id=self.trace_id)
        self.state = ADMITTED
        try:
            group, authority = self._upstream_group(route)  # type: ignore[arg-type]
            if isinstance(up, BoltUpstream):
                self.up = up.again(_remaining_ms(self.deadline, now))
            else:
                self.up = up.again(_retimed(up.headers, authority, _remaining(self.deadline, now)))
            self._choose_upstream(group, now, avoid)
        except Refusal as refusal:
            self.fail(refusal.status, refusal.message, refusal.http_status, refusal.kind)
        return True

    def _give_back(self, failed: bool | None) -> None:
        """The try on `_connection` is over: its fair-share slot goes back to the group, and (outlier ejection)
        it counts for or against that upstream (`failed` None: neither, the caller's own ending)."""
        group = self._group
        if group is not None:
            if group.outliers is not None and failed is not None:
                group.outcome(self._connection, failed)  # type: ignore[arg-type]
            group.release(self.down.endpoint)
            self._group = self._connection = None

    def caller_gone(self, reason: str) -> None:
        """The caller reset its stream, or its connection ended: drop the call upstream, answer nothing."""
        if self.state is DONE:
            return
        if self.up is not None:
            self.up.cancel()
        self._finish(Status.CANCELLED.name, reason, caller_alive=False)

    def deadline_passed(self) -> None:
        self._timer = None
        self.fail(Status.DEADLINE_EXCEEDED, "deadline exceeded at the gateway")

    # --- the one exit --------------------------------------------------------------------------------------

    def _finish(self, status: str, message: str, caller_alive: bool = True) -> None:
        if self.state is DONE:
            return
        self.state = DONE
        down, up = self.down, self.up
        if self._timer is not None:
            self.core.timers.cancel(self._timer)
            self._timer = None
        if self._group is not None:
            self._give_back(None if status in _NEUTRAL else status in _UPSTREAM_FAILURES)
        if up is not None:
            up.release()
        down.release(caller_alive)
        seconds = time.perf_counter() - self.started
        fields = self.log_fields
        if message:
            access_log.line("call", {"status": status, "ms": round(seconds * 1000, 3), "error": message}, fields)
        else:
            access_log.line("call", {"status": status, "ms": round(seconds * 1000, 3)}, fields)
        core = self.core
        core.metrics.observe(fields["ingress"], fields.get("peer"), self.service, self.method, down.protocol, status,  # type: ignore[arg-type]
                             fields.get("translated"), self.loadtest, seconds)
        trace_id = self.trace_id
        if (core.spans is not None and trace_id is not None and self.trace_flags & tracecontext.SAMPLED
                and int(trace_id[24:], 16) < core.sample_below):
            core.export_span(self, status, message, seconds)
        for item in self.chain.local_finish if self.ingress is LOCAL else self.chain.peer_finish:
            _observe(item, self, status, message)
        # The legs point back at the call: unlinked here, the call and its legs are freed by reference
        # counting as soon as the last caller lets go, never left for the cyclic garbage collector.
        down.call = None
        if up is not None:
            up.call = None


def _ingress_name(ingress: Ingress, protocol: str) -> str:
    return (_LOCAL_INGRESS_NAME if ingress is LOCAL else _PEER_INGRESS_NAME)[protocol]


def _observe(item: Filter, call: GatewayCall, status: str, message: str) -> None:
    try:
        item.on_finish(call, status, message)
    except Exception:  # one broken observer must not break the call's exit
        structlog.get_logger("interlink.gateway").exception("filter.finish_failed", filter=type(item).__name__)


_TRUE = frozenset({b"1", b"true"})
# Outlier ejection (exports[].outlier): how a call's end counts against the provider that had it. Failures of
# the provider or its connection count; the caller's own ending (gone, out of time) counts neither way; any
# other answer, errors of the application included, shows a working provider.
_UPSTREAM_FAILURES = frozenset({
    "UNAVAILABLE", "INTERNAL", "UNKNOWN", "DATA_LOSS",
    "SERVER_EXCEPTION", "SERVER_THREADPOOL_BUSY", "ERROR_COMM", "CONNECTION_CLOSED", "CODEC_EXCEPTION", "ERROR",
})
_NEUTRAL = frozenset({"CANCELLED", "DEADLINE_EXCEEDED", "TIMEOUT"})
# Where providers of each protocol read SOFATracer system baggage.
_SYS_BAGGAGE_KEY = {"triple": tracecontext.TRIPLE_SYS_BAGGAGE, "bolt": SYS_BAGGAGE.encode()}


def _retimed(headers: Headers, authority: bytes | None, timeout: float | None) -> Headers:
    """A request's HEADERS for another try: the time left as its grpc-timeout, and (an import failing over to
    another site) that site's access domain as its :authority."""
    retimed = []
    for name, value in headers:
        if name == b"grpc-timeout" and timeout is not None:
            value = grpc.format_timeout(timeout)
        elif name == b":authority" and authority is not None:
            value = authority
        retimed.append((name, value))
    return retimed


def _remaining(deadline: float, now: float) -> float | None:
    """Seconds left at `now` until `deadline` (None: no deadline), for the next hop's grpc-timeout."""
    return None if deadline == math.inf else max(deadline - now, 0.0)


def _remaining_ms(deadline: float, now: float) -> int:
    """The same as a Bolt timeout: whole milliseconds, at least 1; -1 for none."""
    return -1 if deadline == math.inf else max(1, int((deadline - now) * 1000))
