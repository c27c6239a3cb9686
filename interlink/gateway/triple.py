"""The Triple/gRPC request path, read top to bottom:

    local caller --h2c--> on_local_request:  parse head -> strip identity -> find import -> stamp caller app
                                              -> pooled mTLS stream to the peer gateway (access domain)
    peer gateway --mTLS--> on_peer_request:  access-domain binding (cert site owns :authority and SNI)
                                              -> find export -> ACL (caller site, app, method) -> audit
                                              -> pooled h2c stream to a provider, or, when the
                                                 export's providers speak Bolt, TripleToBolt
                                                 (gateway/translation.py)

Both end in a `Relay` that carries the rest of the call. Errors the gateway makes are Trailers-Only
responses with a gRPC status and a message that says what to do.
"""

from __future__ import annotations

import math

import structlog
import trio

from interlink.gateway.forwarding import Forwarder, authorize_peer_call, refuse, remaining
from interlink.gateway.relay import Relay
from interlink.gateway.translation import TripleToBolt
from interlink.model import Status
from interlink.net.h2link import H2Endpoint, Headers
from interlink.net.pool import PoolGroup
from interlink.wire import grpc

log = structlog.get_logger("interlink.gateway")



class TripleForwarder(Forwarder):
    # --- site B: a local caller calls an imported service ---------------------------------------------

    def on_local_request(self, down: H2Endpoint, stream_id: int, headers: Headers, end_stream: bool) -> None:
        snapshot = self._snapshot()
        fields: dict[str, object] = {"site": snapshot.site, "ingress": "local"}
        head, relay = self._admit(down, stream_id, headers, end_stream, fields, snapshot.default_timeout)
        if head is None:
            return
        route = snapshot.imports.get(head.service)
        if route is None:
            relay.fail(
                Status.UNIMPLEMENTED,
                f"service {head.service} is not imported by site {snapshot.site}; add it under imports: in the site file",
            )
            return
        fields["peer"] = route.peer
        fields["upstream"] = f"site {route.peer}"
        stamps = [(grpc.CALLER_APP, head.consumer_app.encode())] if head.consumer_app else []
        outgoing = grpc.request_headers(
            head, scheme=b"https", authority=route.authority, timeout=remaining(relay.deadline), stamps=stamps
        )
        self._connect(relay, self._peer_group(route.peer), outgoing, end_stream)

    # --- site A: a peer gateway calls one of our exports -----------------------------------------------

    def on_peer_request(self, down: H2Endpoint, stream_id: int, headers: Headers, end_stream: bool) -> None:
        snapshot = self._snapshot()
        peer: str = down.attributes["site"]  # type: ignore[assignment]
        fields: dict[str, object] = {"site": snapshot.site, "ingress": "peer", "peer": peer}
        head, relay = self._admit(down, stream_id, headers, end_stream, fields, snapshot.default_timeout)
        if head is None:
            return
        fields["caller_app"] = head.caller_app
        route = authorize_peer_call(
            snapshot, snapshot.exports, peer, head.service, head.caller_app, head.method, fields,
            down.attributes.get("sni"), head.authority,
        )
        if isinstance(route, tuple):
            relay.fail(*route)
            return
        fields["upstream"] = f"providers of {head.service}"
        if route.protocol == "bolt":
            relay.hand_over()
            fields["translated"] = "triple->bolt"
            TripleToBolt(
                down, stream_id, head, route, peer, fields, self._timers, relay.deadline, end_stream, self._to_bolt
            )
            return
        stamps = [(grpc.CALLER_SITE, peer.encode())]
        if head.caller_app:
            stamps.append((grpc.CALLER_APP, head.caller_app.encode()))
        outgoing = grpc.request_headers(
            head, scheme=b"http", authority=head.authority, timeout=remaining(relay.deadline), stamps=stamps
        )
        self._connect(relay, self._provider_group(route.pool_key), outgoing, end_stream)

    def _to_bolt(self, call: TripleToBolt) -> None:
        """The caller's request is complete: translate it and hand it to a Bolt provider."""
        frame = call.bolt_request()
        if frame is not None:
            self._upstream(
                self._provider_group(call.route.pool_key), call, lambda upstream: call.send(upstream, frame)  # type: ignore[arg-type]
            )

    # --- shared steps ------------------------------------------------------------------------------------

    def _admit(
        self,
        down: H2Endpoint,
        stream_id: int,
        headers: Headers,
        end_stream: bool,
        fields: dict[str, object],
        default_timeout: float,
    ) -> tuple[grpc.RequestHead | None, Relay]:
        """Parse the request head and give the call its Relay (and so its deadline and access log line)."""
        try:
            head = grpc.parse_request_head(headers)
        except grpc.RequestHeadError as exc:
            relay = Relay(down, stream_id, fields, self._timers, math.inf, end_stream)
            refuse(relay, exc.status, exc.message, exc.http_status)
            return None, relay
        fields["service"] = head.service
        fields["method"] = head.method
        fields["caller_app"] = head.consumer_app
        timeout = head.timeout if head.timeout is not None else default_timeout
        deadline = trio.current_time() + timeout
        return head, Relay(down, stream_id, fields, self._timers, deadline, end_stream)

    def _connect(self, relay: Relay, group: PoolGroup | None, headers: Headers, end_stream: bool) -> None:
        self._upstream(group, relay, lambda upstream: relay.connect(upstream, headers, end_stream))  # type: ignore[arg-type]

