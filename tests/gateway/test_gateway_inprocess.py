"""The real `Gateway` process wiring, in-process: two sites on 127.0.0.1, real sockets, real mTLS.

    h2 / Bolt caller --> GW-B (site-b: local triple + bolt listeners) --mTLS, ALPN h2 | bolt--> GW-A (site-a:
    peer listener) --> h2c echo provider | Bolt echo provider

Certificates come from `interlink.control.certs.init_site` (what `interlink certs init-site` runs), site files
are YAML written to tmp_path, loaded with `load_site` and built with `build_snapshot`, as `interlink run` does.
Site files cannot say port 0 (the loader wants 1..65535), so the listen addresses are set to port 0 on the
loaded config; `Gateway.bound` then tells the ports. Waits are real time, each inside `trio.fail_after`.

The callers and the h2 provider are tests/gateway/harness.py's `H2Peer` / `BoltPeer` on a `SocketTransport`.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import AsyncIterator, Callable

import h2.events
import hyperframe.frame
import pytest
import structlog
import trio
import yaml

from interlink.config import HostPort
from interlink.control.certs import SitePaths, init_site, issue
from interlink.control.sitefile import load_site
from interlink.control.snapshot import build_snapshot
from interlink.gateway.gateway import Gateway
from interlink.net import tls
from interlink.net.peerlink import connect_tcp, dial_peer
from interlink.net.transport import SocketTransport, TlsTransport, TransportClosed
from interlink.routes import Snapshot, bolt_unique_name
from interlink.wire import bolt
from tests.gateway.harness import (
    APP, METHOD, RESPONSE_HEAD, BoltPeer, H2Peer, StreamLog, bolt_outcome, bolt_request, grpc_trailers,
    h2_request_headers,
)

SERVICE = "demo.Echo"  # site-a exports it (h2c provider), site-b imports it for Triple callers
BOLT_SERVICE = "com.example.EchoService"  # site-a exports it (Bolt provider), site-b imports it for Bolt callers
HOLD = "Hold"  # the h2 provider answers this method only when the test releases it
A_FOR_B = "site-b.gw.site-a.test"  # the access domain site-a gave site-b (B's SNI towards A)
B_FOR_A = "site-a.gw.site-b.test"
WAIT = 3.0  # seconds, for anything that should happen at once


# --- sites --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> dict[str, SitePaths]:
    """site-a, site-b and site-c as `interlink certs init-site` makes them; site-b-2: a second gateway
    certificate of site-b (`interlink certs issue`)."""
    root = tmp_path_factory.mktemp("certs")
    made = {name: init_site(name, root / name, ["127.0.0.1"]) for name in ("site-a", "site-b", "site-c")}
    made["site-b-2"] = issue(root / "site-b", "site-b", root / "site-b", ["127.0.0.1"], name="gateway-2")
    return made


def tls_of(paths: SitePaths) -> dict[str, str]:
    return {"ca": str(paths.ca), "cert": str(paths.cert), "key": str(paths.key)}


def site_a(certs, h2_provider: HostPort, bolt_provider: HostPort) -> dict:
    """The provider site: exports both services to site-b's app APP."""
    allow = {"site-b": {"apps": [APP]}}
    return {
        "site": "site-a",
        "listen": {"peer": "127.0.0.1:10003"},
        "tls": tls_of(certs["site-a"]),
        "peers": {"site-b": {"endpoints": ["127.0.0.1:10009"], "ca": str(certs["site-b"].ca), "domain": B_FOR_A}},
        "domains": {"site-b": A_FOR_B},
        "exports": [
            {"service": SERVICE, "protocol": "triple", "providers": [str(h2_provider)], "allow": allow},
            {"service": BOLT_SERVICE, "protocol": "bolt", "providers": [str(bolt_provider)], "allow": allow},
        ],
        "limits": {"handshake_timeout_ms": 200},
    }


def site_b(certs, a_peer: HostPort) -> dict:
    """The consumer site: local Triple and Bolt callers reach site-a's exports."""
    return {
        "site": "site-b",
        "listen": {"triple": "127.0.0.1:10001", "bolt": "127.0.0.1:10002", "peer": "127.0.0.1:10003"},
        "tls": tls_of(certs["site-b"]),
        "peers": {"site-a": {"endpoints": [str(a_peer)], "ca": str(certs["site-a"].ca), "domain": A_FOR_B,
                             "connections": 1}},
        "domains": {"site-a": B_FOR_A},
        "imports": [{"service": SERVICE, "from": "site-a", "protocol": "triple"},
                    {"service": BOLT_SERVICE, "from": "site-a", "protocol": "bolt"}],
    }


def snapshot_of(folder: Path, doc: dict) -> Snapshot:
    """The site file written, loaded and built as `interlink run` does; its listeners moved to port 0."""
    path = folder / f"{doc['site']}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    config = load_site(path)
    listen = config.listen
    zero = {key: replace(address, port=0) for key in ("triple", "bolt", "peer") if (address := getattr(listen, key))}
    return build_snapshot(replace(config, listen=replace(listen, **zero)))


# --- providers and callers ----------------------------------------------------------------------------------


class H2Echo(H2Peer):
    """h2c provider: answers each request with b"echo:" + its messages; HOLD calls wait for `release`."""

    def __init__(self, transport) -> None:
        super().__init__(transport, client_side=False)
        self.held: list[int] = []

    def _record(self, event: h2.events.Event) -> None:
        super()._record(event)
        if isinstance(event, h2.events.StreamEnded):
            if self.stream(event.stream_id).header(b":path").endswith(HOLD.encode()):
                self.held.append(event.stream_id)
            else:
                self.answer(event.stream_id)

    def answer(self, sid: int) -> None:
        self.send_headers(sid, RESPONSE_HEAD)
        for message in self.stream(sid).messages:
            self.send_message(sid, b"echo:" + message)
        self.send_trailers(sid, grpc_trailers(0))


class H2Caller(H2Peer):
    """An h2 client that also records the GOAWAY it gets."""

    def __init__(self, transport) -> None:
        super().__init__(transport, client_side=True)
        # As a gRPC client does, the open streams finish after a GOAWAY (h2 would close the connection, and
        # then fail on the PING of the gateway's two-step GOAWAY).
        self.conn._frame_dispatch_table[hyperframe.frame.GoAwayFrame] = self._goaway_frame
        self.goaway: h2.events.ConnectionTerminated | None = None

    def _goaway_frame(self, frame: hyperframe.frame.GoAwayFrame) -> tuple[list, list]:
        event = h2.events.ConnectionTerminated()
        event.error_code, event.last_stream_id = frame.error_code, frame.last_stream_id
        return [], [event]

    def _record(self, event: h2.events.Event) -> None:
        super()._record(event)
        if isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event

    def start_call(self, method: str = METHOD, payload: bytes = b"ping", **headers) -> int:
        """`headers`: h2_request_headers' options (a peer gateway's call: authority=..., peer=True)."""
        sid = self.open(h2_request_headers(SERVICE, method, **headers))
        self.send_message(sid, payload, end=True)
        return sid

    async def outcome(self, sid: int) -> StreamLog:
        await until(lambda: self.stream(sid).outcome is not None or self.stream(sid).reset is not None or self.closed)
        return self.stream(sid)

    async def call(self, method: str = METHOD, payload: bytes = b"ping", **headers) -> StreamLog:
        return await self.outcome(self.start_call(method, payload, **headers))


async def until(predicate: Callable[[], object], timeout: float = WAIT) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


@dataclass
class Sites:
    """GW-A and GW-B running in one nursery, with their providers; every log line in `logs`."""

    nursery: trio.Nursery
    folder: Path
    logs: list[dict]
    h2_providers: list[H2Echo] = field(default_factory=list)
    gateways: dict[str, Gateway] = field(default_factory=dict)
    ended: dict[str, trio.Event] = field(default_factory=dict)
    docs: dict[str, dict] = field(default_factory=dict)
    transports: list[SocketTransport] = field(default_factory=list)  # the test's ends, closed at the end

    @property
    def a(self) -> Gateway:
        return self.gateways["site-a"]

    @property
    def b(self) -> Gateway:
        return self.gateways["site-b"]

    async def start(self, doc: dict) -> Gateway:
        gateway = Gateway(snapshot_of(self.folder, doc))
        self.docs[doc["site"]], self.ended[doc["site"]] = doc, trio.Event()
        self.gateways[doc["site"]] = await self.nursery.start(self._run, gateway)
        return gateway

    async def _run(self, gateway: Gateway, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await gateway.run(task_status=task_status)
        self.ended[gateway.config.site].set()

    def reload(self, site: str, **changes) -> None:
        """The site file rewritten with `changes` and installed (what SIGHUP does once it passed the checks)."""
        self.gateways[site].install(snapshot_of(self.folder, {**self.docs[site], **changes}))

    def events(self, event: str, **fields) -> list[dict]:
        return [e for e in self.logs if e["event"] == event and all(e.get(k) == v for k, v in fields.items())]

    # --- sockets ---

    async def connect(self, address: HostPort) -> SocketTransport:
        return self._transport(await connect_tcp(address))

    def _transport(self, sock: socket.socket) -> SocketTransport:
        return self.own(SocketTransport(sock))

    def own(self, transport: SocketTransport) -> SocketTransport:
        transport.spawn_writer = lambda: self.nursery.start_soon(transport.run_writer)
        self.transports.append(transport)
        return transport

    async def h2_caller(self) -> H2Caller:
        caller = H2Caller(await self.connect(self.b.bound.triple))
        self.nursery.start_soon(caller.run)
        await until(lambda: caller.settings_seen)
        return caller

    async def bolt_caller(self) -> BoltPeer:
        caller = BoltPeer(await self.connect(self.b.bound.bolt))
        self.nursery.start_soon(caller.run)
        return caller

    async def serve(self, handler) -> HostPort:
        listeners = await self.nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        return HostPort("127.0.0.1", listeners[0].socket.getsockname()[1])

    async def h2_provider(self, stream: trio.SocketStream) -> None:
        provider = H2Echo(self._transport(socket.socket(fileno=stream.socket.detach())))
        self.h2_providers.append(provider)
        await provider.run()

    async def bolt_provider(self, stream: trio.SocketStream) -> None:
        transport = self._transport(socket.socket(fileno=stream.socket.detach()))
        decoder = bolt.BoltDecoder()
        with contextlib.suppress(TransportClosed):
            while data := await transport.receive():
                for frame in decoder.feed(data):
                    if frame.is_heartbeat:
                        transport.write(bolt.encode(bolt.heartbeat_ack(frame)))
                    elif frame.is_request and not frame.is_oneway:
                        answer = bolt.response_for(frame, bolt.ResponseStatus.SUCCESS, bolt.SOFA_RESPONSE_CLASS,
                                                   b"", b"echo:" + frame.content)
                        transport.write(bolt.encode(answer))
        transport.close()

    def release(self) -> None:
        for provider in self.h2_providers:
            held, provider.held = provider.held, []
            for sid in held:
                provider.answer(sid)


@asynccontextmanager
async def two_sites(tmp_path: Path, certs) -> AsyncIterator[Sites]:
    """The providers, then GW-A, then GW-B (whose site file needs GW-A's peer port)."""
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            sites = Sites(nursery, tmp_path, logs)
            h2_address, bolt_address = await sites.serve(sites.h2_provider), await sites.serve(sites.bolt_provider)
            await sites.start(site_a(certs, h2_address, bolt_address))
            await sites.start(site_b(certs, sites.a.bound.peer))
            try:
                yield sites
            finally:
                nursery.cancel_scope.cancel()
                for transport in sites.transports:
                    transport.close()


def links_from_b(sites: Sites) -> list[dict]:
    """GW-A's peer.accepted lines for GW-B's links."""
    return sites.events("peer.accepted", peer="site-b")


# --- calls through both gateways ----------------------------------------------------------------------------


async def test_a_triple_call_goes_through_both_gateways_and_each_writes_one_access_line(tmp_path, certs):
    async with two_sites(tmp_path, certs) as sites:
        bound = sites.b.bound
        assert {bound.triple.port, bound.bolt.port, bound.peer.port}.isdisjoint({0, 10001, 10002, 10003})
        caller = await sites.h2_caller()
        stream = await caller.call(payload=b"hello")
        assert stream.outcome == ("OK", "") and stream.messages == [b"echo:hello"]
        await until(lambda: len(sites.events("call")) == 2)
        (local,), (peer,) = sites.events("call", site="site-b"), sites.events("call", site="site-a")
        assert (local["ingress"], local["status"]) == ("local", "OK")
        assert (peer["ingress"], peer["status"], peer["peer"]) == ("peer", "OK", "site-b")
        (accepted,) = sites.events("peer.accepted", alpn=tls.ALPN_H2)
        assert (accepted["peer"], accepted["sni"]) == ("site-b", A_FOR_B)
        (started,) = sites.events("gateway.started", site="site-b")
        assert started["peers"] == ["site-a"] and started["triple"] == str(sites.b.bound.triple)
        assert sites.a.calls_in_flight == sites.b.calls_in_flight == 0


async def test_a_bolt_call_goes_over_the_bolt_peer_link_and_each_gateway_writes_one_access_line(tmp_path, certs):
    async with two_sites(tmp_path, certs) as sites:
        caller = await sites.bolt_caller()
        caller.send(bolt_request(bolt_unique_name(BOLT_SERVICE, None), content=b"hi", request_id=41))
        await until(lambda: caller.responses)
        (response,) = caller.responses
        assert response.request_id == 41 and bolt_outcome(response) == ("OK", "echo:hi")
        await until(lambda: len(sites.events("call")) == 2)
        (local,), (peer,) = sites.events("call", site="site-b"), sites.events("call", site="site-a")
        assert (local["ingress"], local["status"]) == ("local-bolt", "OK")
        assert (peer["ingress"], peer["status"], peer["peer"]) == ("peer-bolt", "OK", "site-b")
        (accepted,) = sites.events("peer.accepted", alpn=tls.ALPN_BOLT)
        assert accepted["peer"] == "site-b"


async def test_calls_in_flight_counts_a_held_call_at_both_gateways(tmp_path, certs):
    async with two_sites(tmp_path, certs) as sites:
        caller = await sites.h2_caller()
        sid = caller.start_call(HOLD)
        await until(lambda: any(p.held for p in sites.h2_providers))
        assert (sites.b.calls_in_flight, sites.a.calls_in_flight) == (1, 1)
        sites.release()
        assert (await caller.outcome(sid)).outcome == ("OK", "")
        await until(lambda: sites.a.calls_in_flight == sites.b.calls_in_flight == 0)


# --- the peer port's handshake ------------------------------------------------------------------------------


@pytest.mark.parametrize("bundle, reason", [
    ("site-b", "the client certificate must chain to the CA bundle"),  # site-c's own CA is not site-b's
    ("site-b+site-c", "names site 'site-c', but was presented for site 'site-b'"),  # one bundle trusts both CAs
])
async def test_a_peer_with_the_certificate_of_another_site_than_the_domains_owner_is_refused(
        tmp_path, certs, bundle, reason):
    ca = tmp_path / "bundle.pem"
    ca.write_bytes(b"".join(certs[name].ca.read_bytes() for name in bundle.split("+")))
    async with two_sites(tmp_path, certs) as sites:
        peers = {"site-b": {**sites.docs["site-a"]["peers"]["site-b"], "ca": str(ca)}}
        sites.reload("site-a", peers=peers)
        site_c = certs["site-c"]
        context = tls.peer_client_tls(site_c.cert, site_c.key, certs["site-a"].ca)
        with contextlib.suppress(ConnectionError, TransportClosed, tls.PeerIdentityError):
            # site-c uses the access domain site-a gave site-b; TLS 1.3 may let the client finish first
            transport = sites.own(await dial_peer(sites.a.bound.peer, context, A_FOR_B, tls.ALPN_H2, "interlink",
                                                  "site-a"))
            with trio.fail_after(WAIT):
                assert await transport.receive() == b""
        await until(lambda: sites.events("peer.handshake_refused"))
        (refused,) = sites.events("peer.handshake_refused")
        assert reason in refused["error"], refused
        (audit,) = sites.events("audit", site="site-a", decision="deny")
        assert audit["ingress"] == "peer" and reason in audit["reason"]
        assert not sites.events("peer.accepted", peer="site-c")


async def test_a_handshake_that_never_completes_is_cut_by_the_handshake_timeout(tmp_path, certs):
    async with two_sites(tmp_path, certs) as sites:
        started = trio.current_time()
        stream = await trio.open_tcp_stream("127.0.0.1", sites.a.bound.peer.port)
        with trio.fail_after(WAIT):
            assert await stream.receive_some() == b""  # the gateway closed it, we sent nothing
        assert trio.current_time() - started >= 0.15  # ... after handshake_timeout_ms: 200, not at once
        (refused,) = sites.events("peer.handshake_refused")
        assert refused["error"] == "TLS handshake did not finish within 0.2s"
        assert sites.events("audit", decision="deny", reason=refused["error"], ingress="peer")
        await stream.aclose()


async def test_a_malformed_request_on_the_peer_port_is_audited(tmp_path, certs):
    async with two_sites(tmp_path, certs) as sites:
        transport = sites.own(await dial_peer(sites.a.bound.peer, sites.b.snapshot.client_tls["site-a"], A_FOR_B,
                                              tls.ALPN_H2, "interlink", "site-a"))
        peer = H2Peer(transport, client_side=True)
        peer.conn.config.validate_outbound_headers = False
        sites.nursery.start_soon(peer.run)
        sid = peer.open([(b":method", b"POST"), (b":scheme", b"https"), (b":authority", A_FOR_B.encode())], end=True)
        await until(lambda: peer.stream(sid).reset is not None)
        (audit,) = sites.events("audit", site="site-a", stream_id=sid)
        assert (audit["decision"], audit["peer"], audit["ingress"]) == ("deny", "site-b", "peer")
        assert audit["reason"] == "malformed request headers: request lacks :path"


# --- reloads ------------------------------------------------------------------------------------------------


async def test_an_acl_change_applies_to_new_calls_while_a_call_in_flight_finishes(tmp_path, certs):
    async with two_sites(tmp_path, certs) as sites:
        caller = await sites.h2_caller()
        held = caller.start_call(HOLD)
        await until(lambda: any(p.held for p in sites.h2_providers))
        only_other_app = {"site-b": {"apps": ["other-app"]}}
        exports = [{**export, "allow": only_other_app} for export in sites.docs["site-a"]["exports"]]
        sites.reload("site-a", exports=exports)
        assert sites.events("config.reloaded", site="site-a")
        denied = await caller.call()
        assert denied.outcome[0] == "PERMISSION_DENIED"
        sites.release()
        assert (await caller.outcome(held)).outcome == ("OK", "")
        assert [e["decision"] for e in sites.events("audit", site="site-a")] == ["allow", "deny"]
        assert not sites.events("peer.revoked")  # the trust did not change: the peer links stay


def _with_peer_ca(doc: dict, certs) -> dict:
    return {"peers": {"site-b": {**doc["peers"]["site-b"], "ca": str(certs["site-c"].ca)}}}


def _without_site_b(doc: dict, certs) -> dict:
    peer = {"endpoints": ["127.0.0.1:10009"], "ca": str(certs["site-c"].ca), "domain": "site-a.gw.site-c.test"}
    return {"peers": {"site-c": peer}, "domains": {"site-c": "site-c.gw.site-a.test"},
            "exports": [{**export, "allow": ["site-c"]} for export in doc["exports"]]}


@pytest.mark.parametrize("change, reason", [
    (_with_peer_ca, "its certificate no longer chains to the CA bundle of peers.site-b.ca"),
    (lambda doc, certs: {"domains": {"site-b": "renamed.gw.site-a.test"}}, "its access domain is no longer configured"),
    (_without_site_b, "site site-b is no longer a peer"),
], ids=["peer-ca", "access-domain", "peer-removed"])
async def test_a_reload_that_withdraws_a_peers_trust_closes_its_live_connections(tmp_path, certs, change, reason):
    async with two_sites(tmp_path, certs) as sites:
        await until(lambda: len(links_from_b(sites)) == 2)  # GW-B dials one h2 and one Bolt link
        assert (await (await sites.h2_caller()).call()).outcome == ("OK", "")
        sites.reload("site-a", **change(sites.docs["site-a"], certs))
        revoked = sites.events("peer.revoked", peer="site-b")
        assert len(revoked) == 2 and {e["reason"] for e in revoked} == {reason}
        audits = sites.events("audit", site="site-a", decision="deny", peer="site-b")
        assert len(audits) == 2 and audits[0]["reason"] == f"connection closed after reload: {reason}"
        await until(lambda: len(sites.events("peer.closed", peer="site-b")) == 2)
        assert {e["reason"] for e in sites.events("peer.closed")} == {f"no longer trusted: {reason}"}


@pytest.mark.parametrize("own_cert, replaced", [("site-b", False), ("site-b-2", True)])
async def test_our_peer_links_are_replaced_only_when_our_certificate_changed_and_no_call_fails(
        tmp_path, certs, own_cert, replaced):
    async with two_sites(tmp_path, certs) as sites:
        await until(lambda: len(links_from_b(sites)) == 2)
        caller = await sites.h2_caller()
        held = caller.start_call(HOLD)
        await until(lambda: any(p.held for p in sites.h2_providers))
        sites.reload("site-b", tls=tls_of(certs[own_cert]))
        if replaced:  # a new link per pool is dialled; the old one finishes the held call
            await until(lambda: len(links_from_b(sites)) == 4)
        else:
            await trio.sleep(0.2)
            assert len(links_from_b(sites)) == 2
        sites.release()
        assert (await caller.outcome(held)).outcome == ("OK", "")
        assert (await caller.call()).outcome == ("OK", "")
        if replaced:  # the old links close once their calls are done
            await until(lambda: len(sites.events("peer.closed", peer="site-b")) == 2)
        else:
            assert not sites.events("peer.closed")
        assert not sites.events("peer.revoked")


async def test_a_handshake_under_way_during_a_reload_that_removes_the_peers_ca_serves_no_call(tmp_path, certs):
    async with two_sites(tmp_path, certs) as sites:
        site_b = certs["site-b"]
        context = tls.peer_client_tls(site_b.cert, site_b.key, certs["site-a"].ca)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        session = context.wrap_bio(incoming, outgoing, server_hostname=A_FOR_B)
        stream = await trio.open_tcp_stream("127.0.0.1", sites.a.bound.peer.port)
        with trio.fail_after(WAIT):  # TLS 1.3: the server's flight read, our certificate not sent yet
            while True:
                try:
                    session.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await stream.send_all(outgoing.read())
                    incoming.write(await stream.receive_some())
        sites.reload("site-a", **_with_peer_ca(sites.docs["site-a"], certs))  # site-b's CA is gone
        transport = sites.own(TlsTransport(socket.socket(fileno=stream.socket.detach()), session, incoming, outgoing))
        caller = H2Caller(transport)  # its first write sends our certificate, then the HTTP/2 preface
        sites.nursery.start_soon(caller.run)
        answer = await caller.call(authority=A_FOR_B.encode(), peer=True)
        assert answer.outcome != ("OK", ""), "a peer whose CA was removed got a call through"


# --- ending -------------------------------------------------------------------------------------------------


async def test_drain_sends_goaway_waits_for_the_call_in_flight_and_stops(tmp_path, certs):
    async with two_sites(tmp_path, certs) as sites:
        caller, bolt_caller = await sites.h2_caller(), await sites.bolt_caller()
        held = caller.start_call(HOLD)
        await until(lambda: any(p.held for p in sites.h2_providers))
        sites.nursery.start_soon(sites.b.drain, WAIT)
        await until(lambda: caller.goaway is not None)
        (draining,) = sites.events("gateway.draining", site="site-b")
        assert (draining["calls_in_flight"], draining["grace"]) == (1, WAIT)
        with pytest.raises(OSError):  # the listeners are closed
            await connect_tcp(sites.b.bound.triple)
        bolt_caller.send(bolt_request(bolt_unique_name(BOLT_SERVICE, None), request_id=5))  # Bolt has no GOAWAY
        await until(lambda: bolt_caller.responses)
        assert bolt_outcome(bolt_caller.responses[0]) == (
            "UNAVAILABLE", "interlink UNAVAILABLE: the gateway is shutting down; retry on another one")
        assert not sites.ended["site-b"].is_set() and sites.b.calls_in_flight == 1
        sites.release()
        assert (await caller.outcome(held)).outcome == ("OK", "")
        with trio.fail_after(WAIT):
            await sites.ended["site-b"].wait()
        (stopped,) = sites.events("gateway.stopped", site="site-b")
        assert stopped["abandoned_calls"] == 0


async def test_drain_gives_up_on_calls_still_in_flight_after_the_grace(tmp_path, certs):
    async with two_sites(tmp_path, certs) as sites:
        caller = await sites.h2_caller()
        caller.start_call(HOLD)
        await until(lambda: any(p.held for p in sites.h2_providers))
        started = trio.current_time()
        with trio.fail_after(WAIT):
            await sites.b.drain(0.3)
            await sites.ended["site-b"].wait()
        assert trio.current_time() - started >= 0.3
        (stopped,) = sites.events("gateway.stopped", site="site-b")
        assert stopped["abandoned_calls"] == 1


async def test_stop_ends_the_gateway_and_its_listeners(tmp_path, certs):
    async with two_sites(tmp_path, certs) as sites:
        Gateway(sites.a.snapshot).stop()  # not running: nothing to stop
        caller = await sites.h2_caller()
        assert (await caller.call()).outcome == ("OK", "")
        sites.b.stop()
        with trio.fail_after(WAIT):
            await sites.ended["site-b"].wait()
        for address in (sites.b.bound.triple, sites.b.bound.bolt, sites.b.bound.peer):
            with pytest.raises(OSError):
                await connect_tcp(address)
        await until(lambda: caller.closed)
        assert not sites.ended["site-a"].is_set()
