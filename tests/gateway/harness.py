"""One in-memory world around the call core: a caller, a gateway's `CallCore`, an upstream. No sockets.

    caller (h2 client or Bolt frames, driven by the test)
        -- memory transport -- H2Endpoint / BoltEndpoint (server side, on_request = core.on_local_* / on_peer_*)
    CallCore (snapshot from `make_snapshot`, DeadlineTimers, one FlushQueue)
        -- PoolGroup(ConnectionPool(size=1)) -- H2Endpoint(client_side) / BoltEndpoint
        -- memory transport -- provider (h2 server or Bolt frames, driven by the test)

On local ingress the upstream plays the peer site's gateway (so its Bolt endpoint is a `link=True` one),
on peer ingress it plays our providers. Every GatewayCall made is recorded (`world.calls`), every log
line captured (`world.logs`). Tests run on trio's MockClock (pytest-trio's `autojump_clock`
fixture, which a test must name as an argument): waits are bounded by `fail_after` in virtual time and
cost nothing.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import structlog
import trio

from interlink.config import AclRule, Listen, SiteConfig, TlsFiles
from interlink.gateway import call as call_module
from interlink.gateway.call import CallCore, CallState
from interlink.gateway.deadlines import DeadlineTimers
from interlink.net.boltlink import BoltEndpoint
from interlink.net.connection import FlushQueue
from interlink.net.h2link import H2Endpoint
from interlink.net.pool import ConnectionPool, PoolGroup
from interlink.net.transport import TransportClosed, memory_transport_pair
from interlink.routes import ExportRoute, ImportRoute, Snapshot, bolt_unique_name
from interlink.wire import bolt, bolt_call, grpc, link_headers

Headers = list[tuple[bytes, bytes]]

SITE = "site-b"  # the gateway under test
PEER = "site-a"  # the other site
DOMAIN = b"b.for-a.example"  # the access domain we gave site-a: its SNI and :authority on our peer port
PEER_DOMAIN = b"a.for-b.example"  # the access domain site-a gave us: the authority of our imports
APP = "shop"  # the calling application

TRIPLE = "demo.Echo"  # served by Triple providers (Bolt callers reach it translated, as demo.Echo:1.0)
BOLT = "com.example.EchoService"  # served by Bolt providers, protobuf codec (Triple callers: translated)
PRIVATE = "demo.Private"  # exported to site-a for app `shop`, method `Allowed` only
FOR_C = "demo.ForC"  # exported, but to site-c only
HESSIAN = "com.example.HessianService"  # Bolt providers, hessian2 codec (Triple callers: wrapper messages)
SOFA = "demo.SofaEcho"  # SOFARPC Triple providers (flavour sofa: Bolt hessian2 callers translate to wrappers)
METHOD = "Say"
CANCEL = h2.errors.ErrorCodes.CANCEL


# --- the snapshot ----------------------------------------------------------------------------------------


def export(service: str, protocol: str = "triple", allow: dict[str, AclRule] | None = None, **options) -> ExportRoute:
    return ExportRoute(service=service, providers=(), allow={PEER: AclRule()} if allow is None else allow,
                       timeout=None, protocol=protocol, **options)


DEFAULT_EXPORTS = (
    export(TRIPLE),
    export(BOLT, "bolt", codec="protobuf"),
    export(PRIVATE, allow={PEER: AclRule(apps=frozenset({APP}), methods=frozenset({"Allowed"}))}),
    export(FOR_C, allow={"site-c": AclRule()}),
    export(HESSIAN, "bolt"),
    export(SOFA, flavour="sofa"),
)
DEFAULT_IMPORTS = ((ImportRoute(TRIPLE, PEER, PEER_DOMAIN), "triple"), (ImportRoute(BOLT, PEER, PEER_DOMAIN), "bolt"))


def make_snapshot(
    exports: tuple[ExportRoute, ...] = DEFAULT_EXPORTS,
    imports: tuple[tuple[ImportRoute, str], ...] = DEFAULT_IMPORTS,
    domains: dict[str, bytes] | None = None,
    default_timeout: float = 30.0,
) -> Snapshot:
    """A Snapshot as control/snapshot.py builds it, without TLS: exports reachable in both protocols (the
    native one wins a shared key), imports per caller protocol."""
    domains = {PEER: DOMAIN} if domains is None else domains

    def by_caller(protocol: str, key: Callable[[ExportRoute], str]) -> dict[str, ExportRoute]:
        return {key(route): route for route in sorted(exports, key=lambda route: route.protocol == protocol)}

    config = SiteConfig(path=Path("site-b.yaml"), site=SITE, listen=Listen(),
                        tls=TlsFiles(Path("ca.pem"), Path("gw.pem"), Path("gw.key")))
    return Snapshot(
        config=config,
        imports={route.service: route for route, protocol in imports if protocol == "triple"},
        exports=by_caller("triple", lambda route: route.service),
        bolt_imports={bolt_unique_name(route.service, None): route for route, protocol in imports if protocol == "bolt"},
        bolt_exports=by_caller("bolt", lambda route: route.bolt_name),
        export_routes=tuple(exports),
        peer_of_domain={domain: peer for peer, domain in domains.items()},
        domain_of_peer=dict(domains),
        peer_cas={}, peer_anchors={}, own_identity=b"", server_tls=None, client_tls={}, client_tls_bolt={},
        default_timeout=default_timeout,
    )


# --- the test's h2 side (a caller, or a provider) ----------------------------------------------------------


@dataclass
class StreamLog:
    """What one side saw of one stream."""

    headers: list[Headers] = field(default_factory=list)  # every HEADERS block, in order
    data: bytes = b""
    ended: bool = False
    reset: int | None = None

    @property
    def messages(self) -> list[bytes]:
        return [message.data for message in grpc.MessageDecoder().feed(self.data)]

    def header(self, name: bytes) -> bytes | None:
        return next((value for block in self.headers for key, value in block if key == name), None)

    @property
    def outcome(self) -> tuple[str, str] | None:
        """(grpc status name, grpc-message) from trailers or Trailers-Only; None before they came."""
        for block in reversed(self.headers):
            status = grpc.status_of(block)
            if status is not None:
                text = next((grpc.decode_grpc_message(v) for k, v in block if k == b"grpc-message"), "")
                return status.name, text
        return None


async def read_until_closed(peer, received: Callable[[bytes], None]) -> None:
    """A test peer's reader: every read batch to `received`, until the transport ends; then `peer.closed`."""
    while True:
        try:
            data = await peer.transport.receive()
        except TransportClosed:
            break
        if not data:
            break
        received(data)
    peer.closed = True


class H2Peer:
    """h2 itself on the test's end of a memory transport: sends with flow control, records what it sees,
    and acknowledges received DATA unless `reading` is False (a stalled reader)."""

    def __init__(self, transport, *, client_side: bool, max_concurrent_streams: int | None = None) -> None:
        self.transport = transport
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=client_side, header_encoding=None))
        self.conn.initiate_connection()
        if max_concurrent_streams is not None:
            self.conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams})
        self.streams: dict[int, StreamLog] = {}
        self.requests: list[int] = []  # streams opened by the other side, in order
        self.settings_seen = False
        self.closed = False
        self.reading = True
        self._unacked: list[tuple[int, int]] = []
        self._out: dict[int, dict] = {}  # stream -> {"data": bytearray, "end": bool, "trailers": Headers | None}
        self.flush()

    def stream(self, sid: int) -> StreamLog:
        return self.streams.setdefault(sid, StreamLog())

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.transport.write(data)

    async def run(self) -> None:
        await read_until_closed(self, self._received)

    def _received(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            self._record(event)
        self._pump()
        self.flush()

    def _record(self, event: h2.events.Event) -> None:
        if isinstance(event, (h2.events.RequestReceived, h2.events.ResponseReceived, h2.events.TrailersReceived)):
            self.stream(event.stream_id).headers.append(list(event.headers))
            if isinstance(event, h2.events.RequestReceived):
                self.requests.append(event.stream_id)
        elif isinstance(event, h2.events.DataReceived):
            self.stream(event.stream_id).data += event.data
            self._unacked.append((event.stream_id, event.flow_controlled_length))
            if self.reading:
                self.read()
        elif isinstance(event, h2.events.StreamEnded):
            self.stream(event.stream_id).ended = True
        elif isinstance(event, h2.events.StreamReset):
            self.stream(event.stream_id).reset = event.error_code
            self._out.pop(event.stream_id, None)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.settings_seen = True

    def read(self) -> None:
        """Acknowledge what arrived (the application consumed it): the other side may send as much again."""
        self.reading = True
        unacked, self._unacked = self._unacked, []
        for sid, length in unacked:
            if length:
                self.conn.acknowledge_received_data(length, sid)
        self.flush()

    # --- sending ---

    def open(self, headers: Headers, end: bool = False) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, headers, end_stream=end)
        self.stream(sid)
        self.flush()
        return sid

    def send_headers(self, sid: int, headers: Headers, end: bool = False) -> None:
        self.conn.send_headers(sid, headers, end_stream=end)
        self.flush()

    def send_data(self, sid: int, data: bytes, end: bool = False) -> None:
        entry = self._out.setdefault(sid, {"data": bytearray(), "end": False, "trailers": None})
        entry["data"] += data
        entry["end"] = entry["end"] or end
        self._pump()
        self.flush()

    def send_message(self, sid: int, payload: bytes, end: bool = False) -> None:
        self.send_data(sid, grpc.encode_message(payload), end)

    def send_trailers(self, sid: int, trailers: Headers) -> None:
        entry = self._out.setdefault(sid, {"data": bytearray(), "end": False, "trailers": None})
        entry["trailers"] = trailers
        self._pump()
        self.flush()

    def reset(self, sid: int, code: int = CANCEL) -> None:
        self._out.pop(sid, None)
        self.conn.reset_stream(sid, code)
        self.flush()

    def _pump(self) -> None:
        for sid, entry in list(self._out.items()):
            data, closing = entry["data"], entry["end"] and entry["trailers"] is None
            try:
                while data:
                    room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
                    if room <= 0:
                        break
                    chunk = bytes(data[:room])
                    del data[:room]
                    self.conn.send_data(sid, chunk, end_stream=closing and not data)
                    if closing and not data:
                        closing = False  # END_STREAM went with the last chunk
                if data:
                    continue
                if entry["trailers"] is not None:
                    self.conn.send_headers(sid, entry["trailers"], end_stream=True)
                elif closing:
                    self.conn.end_stream(sid)
            except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError):
                pass
            del self._out[sid]


# --- the test's Bolt side ---------------------------------------------------------------------------------


class BoltPeer:
    """Bolt frames on the test's end of a memory transport; heartbeats are answered."""

    def __init__(self, transport) -> None:
        self.transport = transport
        self.decoder = bolt.BoltDecoder()
        self.frames: list[bolt.BoltFrame] = []
        self.closed = False

    async def run(self) -> None:
        await read_until_closed(self, self._received)

    def _received(self, data: bytes) -> None:
        for frame in self.decoder.feed(data):
            if frame.is_heartbeat and frame.is_request:
                self.transport.write(bolt.encode(bolt.heartbeat_ack(frame)))
            else:
                self.frames.append(frame)

    def send(self, frame: bolt.BoltFrame) -> None:
        self.transport.write(bolt.encode(frame))

    @property
    def requests(self) -> list[bolt.BoltFrame]:
        return [frame for frame in self.frames if frame.is_request and bolt_call.cancelled_id(frame) is None]

    @property
    def cancels(self) -> list[int]:
        return [rid for rid in map(bolt_call.cancelled_id, self.frames) if rid is not None]

    @property
    def responses(self) -> list[bolt.BoltFrame]:
        return [frame for frame in self.frames if frame.is_response]


def bolt_request(
    service: str, method: str | None = METHOD, *, content: bytes = b"ping-0", timeout_ms: int = 30_000,
    app: str | None = APP, link: bool = False, oneway: bool = False, request_id: int = 7,
    codec: int = bolt.CODEC_PROTOBUF, extra: dict[str, str] | None = None,
) -> bolt.BoltFrame:
    """A Bolt request as a local caller sends it (`app` header) or a calling gateway (link stamps)."""
    header = {"service": service}
    if method:
        header[link_headers.METHOD.decode() if link else "sofa_head_method_name"] = method
    if app:
        header[link_headers.CALLER_APP_TEXT if link else "app"] = app
    header.update(extra or {})
    return bolt.BoltFrame(
        bolt.PROTO_V1, bolt.TYPE_ONEWAY if oneway else bolt.TYPE_REQUEST, bolt.CMD_RPC_REQUEST, request_id, codec,
        timeout=timeout_ms, class_name=bolt.SOFA_REQUEST_CLASS, header=bolt.encode_header_map(header), content=content,
    )


def bolt_outcome(frame: bolt.BoltFrame) -> tuple[str, str]:
    """A Bolt answer as (status name, text): a gateway's stamped status, else the Bolt status, else OK."""
    stamped = bolt.header_get(frame.header, link_headers.STATUS) if frame.header else None
    if stamped:
        status = stamped.decode()
    elif frame.status != bolt.ResponseStatus.SUCCESS:
        status = bolt.ResponseStatus(frame.status).name
    else:
        status = "OK"
    return status, frame.content.decode("utf-8", "replace")


def h2_request_headers(service: str, method: str = METHOD, *, authority: bytes = b"localhost:9000",
                       timeout: bytes | None = None, app: str | None = APP, peer: bool = False,
                       extra: Headers = ()) -> Headers:
    headers = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", f"/{service}/{method}".encode()),
               (b":authority", authority), (b"content-type", b"application/grpc"), (b"te", b"trailers")]
    if timeout is not None:
        headers.append((b"grpc-timeout", timeout))
    if app:
        headers.append((link_headers.CALLER_APP if peer else b"tri-consumer-appname", app.encode()))
    return headers + list(extra)


RESPONSE_HEAD = [(b":status", b"200"), (b"content-type", b"application/grpc")]


def grpc_trailers(status: int = 0, message: str = "") -> Headers:
    trailers = [(b"grpc-status", str(status).encode())]
    return trailers + [(b"grpc-message", message.encode())] if message else trailers


# --- the world --------------------------------------------------------------------------------------------


async def wait_until(predicate: Callable[[], object], timeout: float = 60.0) -> None:
    """Poll in virtual time (MockClock): bounded by `timeout` virtual seconds."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


class World:
    def __init__(self, nursery: trio.Nursery, *, ingress: str, caller: str, upstream: str, snapshot: Snapshot,
                 group: str, connect: str, sni: bytes | None, site: str, provider_streams: int | None,
                 upstream_max_pending: int, caller_max_pending: int, upstreams: int = 1) -> None:
        self.nursery = nursery
        self.ingress, self.caller_protocol, self.upstream_protocol = ingress, caller, upstream
        self.flush = FlushQueue()
        self.timers = DeadlineTimers(self.flush)
        self.logs: list[dict] = []
        self.calls: list[call_module.GatewayCall] = []
        self.providers: list[H2Peer | BoltPeer] = []
        self.upstream_endpoints: list[H2Endpoint | BoltEndpoint] = []
        self.connect_gate = trio.Event()
        if connect != "gated":
            self.connect_gate.set()
        self._connect_mode = connect
        self._provider_streams = provider_streams
        self._upstream_max_pending = upstream_max_pending
        # `upstreams` addresses (two gateways of the peer, two providers): pool i's provider is by_pool[i]
        self.by_pool: list[list[H2Peer | BoltPeer]] = [[] for _ in range(upstreams)]
        self.pools = [ConnectionPool(f"{upstream}-upstream" + (f"-{index}" if index else ""), self._connector(index),
                                     size=1, keepalive_interval=1e6, backoff_initial=1e4, backoff_max=1e4)
                      for index in range(upstreams)]
        self.pool = self.pools[0]
        name = f"site {PEER}" if ingress == "local" else "providers"
        self.group: PoolGroup | None = {"pool": PoolGroup(name, list(self.pools)), "empty": PoolGroup(name, []),
                                        "none": None}[group]
        self.group_requests: list[tuple] = []
        self.core = CallCore(snapshot, self._peer_group, self._provider_group, self.timers, self.flush, nursery)
        self.core.made = self.calls
        ours, theirs = memory_transport_pair()
        suffix = "h2" if caller == "h2" else "bolt"
        on_request = getattr(self.core, f"on_{ingress}_{suffix}")
        if caller == "h2":
            self.caller_endpoint: H2Endpoint | BoltEndpoint = H2Endpoint(
                ours, client_side=False, flush_queue=self.flush, on_request=on_request, name="caller")
            self.caller: H2Peer | BoltPeer = H2Peer(theirs, client_side=True)
        else:
            self.caller_endpoint = BoltEndpoint(ours, flush_queue=self.flush, on_request=on_request, name="caller",
                                                on_refused=getattr(self.core, f"on_{ingress}_bolt_refused"),
                                                link=ingress == "peer", max_pending=caller_max_pending)
            self.caller = BoltPeer(theirs)
        if ingress == "peer":
            self.caller_endpoint.attributes["site"] = site
            if sni is not None:
                self.caller_endpoint.attributes["sni"] = sni.decode()

    # --- wiring ---

    def _peer_group(self, protocol: str, site: str) -> PoolGroup | None:
        self.group_requests.append((protocol, site))
        return self.group

    def _provider_group(self, pool_key: str) -> PoolGroup | None:
        self.group_requests.append((pool_key,))
        return self.group

    def _connector(self, index: int):
        async def connect():
            endpoint = await self._connect()
            self.by_pool[index].append(self.providers[-1])
            return endpoint

        return connect

    async def _connect(self):
        await self.connect_gate.wait()
        if self._connect_mode == "refused":
            raise OSError("connection refused")
        ours, theirs = memory_transport_pair()
        if self.upstream_protocol == "h2":
            endpoint = H2Endpoint(ours, client_side=True, flush_queue=self.flush, name="upstream")
            provider: H2Peer | BoltPeer = H2Peer(theirs, client_side=False, max_concurrent_streams=self._provider_streams)
        else:
            endpoint = BoltEndpoint(ours, flush_queue=self.flush, name="upstream", link=self.ingress == "local",
                                    max_pending=self._upstream_max_pending)
            provider = BoltPeer(theirs)
        self.upstream_endpoints.append(endpoint)
        self.providers.append(provider)
        self.nursery.start_soon(provider.run)
        return endpoint

    async def start(self, wait_ready: bool) -> None:
        self.nursery.start_soon(self.timers.run)
        for pool in self.pools:
            self.nursery.start_soon(pool.run)
        self.nursery.start_soon(self.caller_endpoint.run)
        self.nursery.start_soon(self.caller.run)
        if isinstance(self.caller, H2Peer):
            await wait_until(lambda: self.caller.settings_seen)
        if self._connect_mode == "gated":  # the pool's first attempt is under way (and waits for the gate)
            await wait_until(lambda: self.pool.connecting)
        if wait_ready and self.group is not None and self.group.pools:
            await wait_until(lambda: all(pool.up for pool in self.pools) and len(self.providers) == len(self.pools)
                             and (self.upstream_protocol == "bolt" or all(p.settings_seen for p in self.providers)))

    # --- what happened ---

    @property
    def provider(self) -> H2Peer | BoltPeer:
        return self.providers[0]

    def access(self) -> list[dict]:
        return [entry for entry in self.logs if entry["event"] == "call"]

    def audits(self) -> list[dict]:
        return [entry for entry in self.logs if entry["event"] == "audit"]

    def assert_clean(self) -> None:
        """Nothing of any call is left anywhere: state, timers, fair shares, endpoint tables."""
        assert self.calls and all(call.state is CallState.DONE for call in self.calls), [c.state for c in self.calls]
        assert len(self.timers) == 0
        if self.group is not None:
            assert self.group.holders == {} and self.group.held == 0
        endpoint = self.caller_endpoint
        assert endpoint.streams == {}
        if isinstance(endpoint, BoltEndpoint):
            assert endpoint.inbound == {} and endpoint.calls == 0
        for upstream in self.upstream_endpoints:
            assert upstream.streams == {}
            if isinstance(upstream, BoltEndpoint):
                assert upstream.inbound == {} and upstream.calls == 0


@asynccontextmanager
async def open_world(
    ingress: str = "local", caller: str = "h2", upstream: str | None = None, *, snapshot: Snapshot | None = None,
    group: str = "pool", connect: str = "ok", sni: bytes | None = DOMAIN, site: str = PEER,
    provider_streams: int | None = None, upstream_max_pending: int = 1024, caller_max_pending: int = 1024,
    wait_ready: bool = True, upstreams: int = 1,
) -> AsyncIterator[World]:
    """`connect`: ok | gated (the first connection waits for `world.connect_gate`) | refused."""
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            world = World(nursery, ingress=ingress, caller=caller, upstream=upstream or caller,
                          snapshot=snapshot or make_snapshot(), group=group, connect=connect, sni=sni, site=site,
                          provider_streams=provider_streams, upstream_max_pending=upstream_max_pending,
                          caller_max_pending=caller_max_pending, upstreams=upstreams)
            world.logs = logs
            await world.start(wait_ready and connect == "ok")
            yield world
            nursery.cancel_scope.cancel()
