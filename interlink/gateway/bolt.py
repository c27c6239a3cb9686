"""The SOFA Bolt request path, read top to bottom:

    local caller --Bolt--> on_local_request:  service header -> find import -> caller app and method
                                              (header, else a partial read of the SofaRequest head)
                                              -> strip x-interlink-* -> stamp app + method
                                              -> pooled mTLS Bolt connection to the peer (ALPN bolt,
                                                 SNI = access domain), fresh request id
    peer gateway --mTLS Bolt--> on_peer_request: SNI is the access domain we gave the cert's site
                                              -> find export -> ACL (site, app, method) -> audit
                                              -> pooled Bolt connection to a provider, or, when the
                                                 export's providers speak Triple, translated once here
                                                 (_to_triple, gateway/translation.py)

A Bolt call stays Bolt across the link and the body is never deserialized (only the SofaRequest head is
read, when the header lacks the method or app). Upstream, calls always travel as Bolt V1 (what SOFARPC
speaks, and what a Java provider pins per connection); the response goes back to each caller in the
protocol version, switch and CRC setting of its own request.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Callable

import structlog
import trio

from interlink.routes import ExportRoute, Snapshot
from interlink.gateway import translation
from interlink.gateway.forwarding import Forwarder, authorize_peer_call, log_call, refuse, remaining_ms
from interlink.gateway.relay import DeadlineTimers
from interlink.model import Status
from interlink.net.boltlink import BoltEndpoint
from interlink.net.h2link import H2Endpoint
from interlink.net.pool import PoolGroup
from interlink.wire import bolt, bolt_call, sofarpc
from interlink.wire.hessian2 import HessianError
from interlink.wire.triple_call import TranslationRefused

log = structlog.get_logger("interlink.gateway")

# Header-map keys the gateways assert on the link; whatever a local caller sends under the prefix is dropped.
GATEWAY_KEY_PREFIX = b"x-interlink-"
CALLER_APP = b"x-interlink-caller-app"
CALLER_SITE = b"x-interlink-caller-site"
METHOD = b"x-interlink-method"
STATUS = b"x-interlink-status"  # on responses the gateway made itself: the status, for the next hop's log
RESPONSE_ERROR = b"sofa_head_response_error"  # Java SOFARPC marks error responses with it

SERVICE_KEYS = (b"service", b"sofa_head_target_service")
METHOD_KEY = b"sofa_head_method_name"
APP_KEY = b"app"

def error_response(request: bolt.BoltFrame, status: Status, message: str) -> bytes:
    """A gateway-made error, as SOFARPC clients understand it best (wire/bolt_call.error_frame)."""
    return bolt.encode(bolt_call.error_frame(request, status, f"interlink {status.name}: {message}"))


def response_status(response: bolt.BoltFrame) -> str:
    """For the access log, without reading the body: a status a gateway stamped, else the Bolt status, else
    Java's error mark in the header."""
    stamped = bolt.header_get(response.header, STATUS) if response.header else None
    if stamped:
        return stamped.decode("ascii", "replace")
    if response.status != bolt.ResponseStatus.SUCCESS:
        return bolt.ResponseStatus(response.status).name
    if response.header and bolt.header_get(response.header, RESPONSE_ERROR) == b"true":
        return "APPLICATION_ERROR"
    return "OK"


class BoltCallRelay:
    """One forwarded Bolt call, waiting on its upstream connection for the response."""

    __slots__ = (
        "down", "request", "log_fields", "started", "deadline", "cancel_up", "done", "upstream_group", "_timers", "_timer",
    )

    def __init__(
        self, down: BoltEndpoint, request: bolt.BoltFrame, log_fields: dict[str, object], timers: DeadlineTimers,
        deadline: float,
    ) -> None:
        self.down = down
        self.request = request
        self.log_fields = log_fields
        self.started = time.perf_counter()
        self.deadline = deadline
        self.cancel_up: Callable[[], None] | None = None  # forget/reset the upstream request when giving up
        self.done = False
        self.upstream_group: PoolGroup | None = None  # whose fair share this call holds
        self._timers = timers
        self._timer = timers.add(deadline, self) if deadline != math.inf else None  # type: ignore[arg-type]
        down.call_started(request.request_id, self)

    def forwarded(self) -> None:
        """The request went upstream: keep only what answering needs (ids, versions, codec), not its body."""
        request = self.request  # this call's own decoded frame: nobody else holds it
        request.content = request.header = b""
        request.raw = None

    def on_response(self, frame: bolt.BoltFrame) -> None:
        if self.done:
            return
        try:
            status = response_status(frame)
        except bolt.BoltProtocolError:
            status = "MALFORMED_RESPONSE_HEADER"
        self.answer(_answer_as_request(frame, self.request), status)

    def answer(self, data: bytes, status: str, message: str = "") -> None:
        """The response (already under the caller's request id) goes back; the call is complete."""
        if not self.done:
            self.down.write(data)
            self._finish(status, message)

    def on_connection_lost(self, reason: str) -> None:
        where = self.log_fields.get("upstream", "upstream")
        self.fail(Status.UNAVAILABLE, f"connection to {where} lost: {reason}")

    def deadline_passed(self) -> None:
        if not self.done:
            if self.cancel_up is not None:
                self.cancel_up()
            self.fail(Status.DEADLINE_EXCEEDED, "deadline exceeded at the gateway")

    def caller_gone(self, reason: str) -> None:
        """The caller's connection ended, or its gateway cancelled the call: drop it upstream, answer nothing."""
        if self.done:
            return
        if self.cancel_up is not None:
            self.cancel_up()
            self.cancel_up = None
        self._finish("CANCELLED", reason)

    def sent_oneway(self) -> None:
        """A oneway call is complete once forwarded: nothing comes back, and nothing is kept for it."""
        self._finish("OK", "")

    def fail(self, status: Status, message: str) -> None:
        if self.done:
            return
        if not self.request.is_oneway:
            self.down.write(error_response(self.request, status, message))
        self._finish(status.name, message)

    def _finish(self, status: str, message: str) -> None:
        self.done = True
        self.down.call_ended(self.request.request_id, self)
        if self.upstream_group is not None:
            self.upstream_group.release(self.down)
            self.upstream_group = None
        if self._timer is not None:
            self._timers.cancel(self._timer)
            self._timer = None
        log_call(status, self.started, message, self.log_fields)


class BoltForwarder(Forwarder):
    # --- site B: a local caller calls an imported service ----------------------------------------------

    def on_local_request(self, down: BoltEndpoint, request: bolt.BoltFrame) -> None:
        snapshot = self._snapshot()
        fields: dict[str, object] = {"site": snapshot.site, "ingress": "local-bolt"}
        call = self._admit(down, request, fields, snapshot)
        if call is not None:
            self._answer_malformed(call, self._route_local, call, snapshot)

    def _route_local(self, call: BoltCallRelay, snapshot: Snapshot) -> None:
        request, fields = call.request, call.log_fields
        service = str(fields["service"])
        route = snapshot.bolt_imports.get(service)
        if route is None:
            refuse(
                call,
                Status.UNIMPLEMENTED,
                f"service {service} is not imported by site {snapshot.site}; add it under imports: with protocol: bolt",
            )
            return
        method, app = _method_and_app(request)
        fields.update(method=method, caller_app=app, peer=route.peer, upstream=f"site {route.peer}")
        stamps = {CALLER_APP: app.encode() if app else None, METHOD: method.encode() if method else None}
        self._forward(call, self._peer_group(route.peer), stamps)

    # --- site A: a peer gateway calls one of our exports -----------------------------------------------

    def on_peer_request(self, down: BoltEndpoint, request: bolt.BoltFrame) -> None:
        snapshot = self._snapshot()
        peer: str = down.attributes["site"]  # type: ignore[assignment]
        fields: dict[str, object] = {"site": snapshot.site, "ingress": "peer-bolt", "peer": peer}
        call = self._admit(down, request, fields, snapshot)
        if call is not None:
            self._answer_malformed(call, self._route_peer, call, snapshot, peer, down.attributes.get("sni"))

    def _route_peer(self, call: BoltCallRelay, snapshot: Snapshot, peer: str, sni: object) -> None:
        request, fields = call.request, call.log_fields
        service = str(fields["service"])
        app = _text(bolt.header_get(request.header, CALLER_APP))
        method = _text(bolt.header_get(request.header, METHOD))
        if method is None:  # not stamped (a peer gateway that did not read it): read it ourselves
            method, _ = _method_and_app(request)
        fields.update(method=method, caller_app=app)
        route = authorize_peer_call(snapshot, snapshot.bolt_exports, peer, service, app, method or "", fields, sni)
        if isinstance(route, tuple):
            call.fail(*route)
            return
        fields["upstream"] = f"providers of {service}"
        if route.protocol == "triple":
            self._to_triple(call, route, peer, app)
            return
        stamps = {CALLER_SITE: peer.encode(), CALLER_APP: app.encode() if app else None, METHOD: None}
        self._forward(call, self._provider_group(route.pool_key), stamps)

    def _to_triple(self, call: BoltCallRelay, route: ExportRoute, peer: str, app: str | None) -> None:
        """A Bolt call to providers that speak Triple: translated here, once (gateway/translation.py)."""
        call.log_fields["translated"] = "bolt->triple"
        try:
            headers, message, serialize = translation.bolt_to_triple_request(call, route, peer, app)
        except TranslationRefused as exc:
            call.fail(exc.status, exc.message)
            return
        except translation.TRANSLATION_ERRORS as exc:
            call.fail(Status.INTERNAL, f"cannot translate the request to Triple: {exc}")
            return
        upstream = translation.TripleUpstream(call, serialize)

        def send(connection: H2Endpoint) -> None:
            upstream.start(connection, headers, message)
            if call.request.is_oneway:
                call.sent_oneway()
            else:
                call.forwarded()

        self._upstream(self._provider_group(route.pool_key), call, send)  # type: ignore[arg-type]

    # --- shared steps ------------------------------------------------------------------------------------

    @staticmethod
    def _answer_malformed(call: BoltCallRelay, route: Callable[..., None], *args: object) -> None:
        """A request whose header map or SofaRequest head cannot be read gets a codec error, alone: the
        frame itself was well formed, so the connection and the other calls on it carry on."""
        try:
            route(*args)
        except (bolt.BoltProtocolError, HessianError) as exc:
            refuse(call, Status.INTERNAL, f"malformed request: {exc}")

    def _admit(
        self, down: BoltEndpoint, request: bolt.BoltFrame, fields: dict[str, object], snapshot: Snapshot
    ) -> BoltCallRelay | None:
        if request.cmdcode != bolt.CMD_RPC_REQUEST or not request.is_request:
            log.debug("bolt.unexpected_frame", endpoint=down.name, cmdcode=request.cmdcode, type=request.type)
            return None
        timeout = request.timeout / 1000 if request.timeout > 0 else snapshot.default_timeout
        call = BoltCallRelay(down, request, fields, self._timers, trio.current_time() + timeout)
        try:
            service = _service_of(request)
        except bolt.BoltProtocolError as exc:
            refuse(call, Status.INTERNAL, f"malformed header map: {exc}")
            return None
        fields["service"] = service
        if service is None:
            refuse(call, Status.UNIMPLEMENTED, "the request has no service header (interface:version)")
            return None
        if down.draining:
            refuse(call, Status.UNAVAILABLE, "the gateway is shutting down; retry on another one")
            return None
        if down.calls > down.max_pending:  # this call is counted already
            refuse(call, Status.RESOURCE_EXHAUSTED, f"more than {down.max_pending} calls in flight on this connection")
            return None
        return call

    def _forward(self, call: BoltCallRelay, group: PoolGroup | None, stamps: dict[bytes, bytes | None]) -> None:
        self._upstream(group, call, lambda upstream: self._send(call, upstream, stamps))  # type: ignore[arg-type]

    def _send(self, call: BoltCallRelay, upstream: BoltEndpoint, stamps: dict[bytes, bytes | None]) -> None:
        request = call.request
        outgoing = _upstream_frame(request, stamps, remaining_ms(call.deadline))
        if request.is_oneway:
            upstream.send_request(outgoing, bolt.encode(outgoing), None)
            call.sent_oneway()
            return
        up_id = upstream.send_request(outgoing, bolt.encode(outgoing), call)
        call.cancel_up = lambda: upstream.forget(up_id)
        call.forwarded()

def _service_of(request: bolt.BoltFrame) -> str | None:
    for key in SERVICE_KEYS:
        value = bolt.header_get(request.header, key)
        if value:
            return _text(value)
    return None


_HEADS = sofarpc.RequestHeadCache()


def _method_and_app(request: bolt.BoltFrame) -> tuple[str | None, str | None]:
    """Method and caller app from the header (Java SOFARPC sends them), else from the SofaRequest head in
    the body (sofa-rpc-node with hessian2 sends only `service`) — never the arguments."""
    method = _text(bolt.header_get(request.header, METHOD_KEY))
    app = _text(bolt.header_get(request.header, APP_KEY))
    if (method is None or app is None) and request.codec == bolt.CODEC_HESSIAN2:
        head = _HEADS.read(request.content)
        method = method or head.method_name
        app = app or sofarpc.caller_app(head)
    return method, app


def _upstream_frame(request: bolt.BoltFrame, stamps: dict[bytes, bytes | None], timeout_ms: int) -> bolt.BoltFrame:
    """The request as it travels upstream: V1, identity keys replaced by ours, timeout reduced."""
    outgoing = copy.copy(request)
    outgoing.proto, outgoing.ver1, outgoing.switch, outgoing.has_crc = bolt.PROTO_V1, 0, 0, False
    outgoing.raw = None
    updates = dict(stamps)
    header = request.header
    if GATEWAY_KEY_PREFIX in header and header.count(GATEWAY_KEY_PREFIX) > sum(
        1 for key in updates if bolt.header_get(header, key) is not None
    ):  # keys under our prefix that we do not set ourselves (a caller's, or unknown): drop them all
        for key in bolt.decode_header_map(header):
            encoded = key.encode()
            if encoded.startswith(GATEWAY_KEY_PREFIX) and encoded not in updates:
                updates[encoded] = None
    outgoing.header = bolt.header_set(request.header, updates)
    outgoing.timeout = timeout_ms
    return outgoing


def _answer_as_request(response: bolt.BoltFrame, request: bolt.BoltFrame) -> bytes:
    """The upstream response, under the caller's request id and in the caller's protocol version."""
    if request.proto == response.proto == bolt.PROTO_V1 and response.raw is not None:
        return bolt.patch_request_id(response.raw, request.request_id)
    answer = copy.copy(response)
    answer.proto, answer.ver1, answer.switch = request.proto, request.ver1, request.switch
    answer.has_crc = request.has_crc
    answer.request_id = request.request_id
    answer.raw = None
    return bolt.encode(answer)


def _text(value: bytes | None) -> str | None:
    return value.decode("utf-8", "replace") if value else None
