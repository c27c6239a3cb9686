"""interlink.net.peerlink over real mTLS on 127.0.0.1: who a peer gateway is (its certificate, for the access
domain it chose by SNI), and the audit reason when it is refused. Both sides are the functions the gateway
uses (`accept_peer`, `dial_peer`); odd clients are plain sockets."""

from __future__ import annotations

import dataclasses
import socket
import ssl

import pytest
import trio

from interlink.config import HostPort
from interlink.net import tls
from interlink.net.listener import bind
from interlink.net.peerlink import PeerLink, PeerRefused, accept_peer, connect_tcp, dial_peer

DOMAIN_B = "b.access.test"
TRUST_DOMAIN = "interlink"


@pytest.fixture
def server_tls(site_certs) -> tls.PeerServerTLS:
    """site-a's peer listener: DOMAIN_B was given to site-b, "c.access.test" to site-c."""
    a, b, c = site_certs["site-a"], site_certs["site-b"], site_certs["site-c"]
    return tls.peer_server_tls(a.cert, a.key, {"site-b": b.ca, "site-c": c.ca},
                               {DOMAIN_B: "site-b", "c.access.test": "site-c"}, alpn=(tls.ALPN_H2, tls.ALPN_BOLT))


@pytest.fixture
def listening():
    sock = bind("127.0.0.1", 0)
    yield sock
    sock.close()


def client_context(cert, key, trusting, alpn=tls.ALPN_H2) -> ssl.SSLContext:
    return tls.peer_client_tls(cert, key, trusting.ca, alpn=(alpn,))


async def serve_one(listening: socket.socket, server_tls: tls.PeerServerTLS, timeout: float = 5.0):
    """Accept one connection and run accept_peer on it: the PeerLink, or the PeerRefused."""
    await trio.lowlevel.wait_readable(listening)
    sock, address = listening.accept()
    try:
        return await accept_peer(sock, server_tls, TRUST_DOMAIN, timeout, f"{address[0]}:{address[1]}")
    except PeerRefused as exc:
        return exc


async def dial_and_accept(listening, server_tls, context, *, sni=DOMAIN_B, alpn=tls.ALPN_H2, site="site-a"):
    """(what accept_peer gave, what dial_peer gave or raised) for one connection between the two."""
    results: dict[str, object] = {}

    async def server() -> None:
        results["server"] = await serve_one(listening, server_tls)

    address = HostPort("127.0.0.1", listening.getsockname()[1])
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server)
            try:
                results["client"] = await dial_peer(address, context, sni, alpn, TRUST_DOMAIN, site)
            except Exception as exc:  # noqa: BLE001 - the test looks at which one
                results["client"] = exc
    return results["server"], results["client"]


def close_all(*things: object) -> None:
    for thing in things:
        transport = getattr(thing, "transport", thing)
        if hasattr(transport, "close"):
            transport.close()


@pytest.mark.parametrize("alpn", [tls.ALPN_H2, tls.ALPN_BOLT])
async def test_a_peer_is_accepted_as_the_site_its_certificate_proves_and_bytes_flow(
    site_certs, server_tls, listening, alpn
):
    b = site_certs["site-b"]
    link, transport = await dial_and_accept(listening, server_tls, client_context(b.cert, b.key, site_certs["site-a"], alpn),
                                            alpn=alpn)
    try:
        assert isinstance(link, PeerLink), link
        assert (link.site, link.sni, link.alpn) == ("site-b", DOMAIN_B, alpn)
        assert transport.selected_alpn_protocol() == alpn and transport.version() == "TLSv1.3"
        assert link.transport.context is server_tls.by_domain[DOMAIN_B]
        # The chain OpenSSL verified: site-b's leaf, then site-b's CA (the trust anchor).
        chain = link.transport.verified_chain()
        assert chain[0] == link.transport.getpeercert(binary_form=True) and len(chain) == 2
        transport.write(b"hello from site-b")
        link.transport.write(b"hello from site-a")
        with trio.fail_after(5):
            assert await link.transport.receive() == b"hello from site-b"
            assert await transport.receive() == b"hello from site-a"
    finally:
        close_all(link, transport)


async def test_an_sni_that_is_no_access_domain_is_refused_and_the_dialler_gets_a_connection_error(
    site_certs, server_tls, listening
):
    b = site_certs["site-b"]
    refused, failed = await dial_and_accept(listening, server_tls, client_context(b.cert, b.key, site_certs["site-a"]),
                                            sni="unknown.access.test")
    assert isinstance(refused, PeerRefused) and str(refused) == "SNI unknown.access.test is not an access domain of this gateway"
    assert isinstance(failed, ConnectionError) and str(failed).startswith("TLS handshake failed")


async def test_a_client_certificate_of_another_sites_ca_is_refused_naming_the_domain(site_certs, server_tls, listening):
    c = site_certs["site-c"]  # trusted, but for c.access.test only
    refused, transport = await dial_and_accept(listening, server_tls, client_context(c.cert, c.key, site_certs["site-a"]))
    close_all(transport)
    assert isinstance(refused, PeerRefused)
    assert f"(SNI {DOMAIN_B}: the client certificate must chain to the CA bundle" in str(refused)


async def test_a_client_certificate_naming_another_site_is_refused(site_certs, server_tls, listening, odd_leaf):
    cert, key = odd_leaf(site_certs["site-b"], "spiffe://interlink/site/site-x")  # signed by site-b's own CA
    refused, transport = await dial_and_accept(listening, server_tls, client_context(cert, key, site_certs["site-a"]))
    close_all(transport)
    assert isinstance(refused, PeerRefused) and "names site 'site-x'" in str(refused)


async def test_a_peer_offering_neither_h2_nor_bolt_is_refused_on_both_sides(site_certs, server_tls, listening):
    b = site_certs["site-b"]
    refused, failed = await dial_and_accept(
        listening, server_tls, client_context(b.cert, b.key, site_certs["site-a"], "http/1.1"), alpn="http/1.1")
    assert isinstance(refused, PeerRefused) and "ALPN None offered" in str(refused)
    assert isinstance(failed, ConnectionError) and "did not select ALPN http/1.1" in str(failed)


async def test_the_dialler_refuses_a_gateway_that_is_not_the_site_it_dialled(site_certs, server_tls, listening):
    b = site_certs["site-b"]
    link, failed = await dial_and_accept(listening, server_tls, client_context(b.cert, b.key, site_certs["site-a"]),
                                         site="site-c")
    close_all(link)
    assert isinstance(failed, ConnectionError) and "names site 'site-a'" in str(failed)


async def test_the_dialler_refuses_a_server_outside_the_peers_ca_bundle(site_certs, server_tls, listening):
    b = site_certs["site-b"]
    refused, failed = await dial_and_accept(listening, server_tls, client_context(b.cert, b.key, site_certs["site-c"]))
    assert isinstance(failed, ConnectionError) and "TLS handshake failed" in str(failed)
    assert isinstance(refused, PeerRefused)


async def raw_client(listening: socket.socket, send: bytes | None, close: bool) -> socket.socket:
    client = await connect_tcp(HostPort("127.0.0.1", listening.getsockname()[1]))
    if send is not None:
        client.send(send)
    if close:
        client.close()
    return client


@pytest.mark.parametrize(
    ("send", "close", "reason"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False, "TLS handshake failed: "),
        (None, True, "the other side closed the connection during the TLS handshake"),
    ],
    ids=["plain-text", "gone"],
)
async def test_a_client_that_does_not_speak_tls_is_refused_with_the_reason(server_tls, listening, send, close, reason):
    client = await raw_client(listening, send, close)
    with trio.fail_after(5):
        refused = await serve_one(listening, server_tls)
    client.close()
    assert isinstance(refused, PeerRefused) and str(refused).startswith(reason), refused
    assert "SNI" not in str(refused)


async def test_a_client_that_never_finishes_the_handshake_is_refused_after_the_timeout(server_tls, listening, autojump_clock):
    client = await raw_client(listening, None, close=False)  # connects, then says nothing
    refused = await serve_one(listening, server_tls, timeout=7)
    client.close()
    assert isinstance(refused, PeerRefused) and str(refused) == "TLS handshake did not finish within 7s"


async def test_connect_tcp_gives_a_plain_socket_connected_to_the_address(listening):
    sock = await connect_tcp(HostPort("127.0.0.1", listening.getsockname()[1]))
    try:
        assert sock.getpeername() == listening.getsockname()
        assert sock.type == socket.SOCK_STREAM
    finally:
        sock.close()


async def test_an_access_domain_that_belongs_to_no_site_lets_nobody_in(site_certs, server_tls, listening):
    """Defence in depth: were the SNI map and the site map ever to disagree, the handshake is refused."""
    b = site_certs["site-b"]
    orphaned = dataclasses.replace(server_tls, site_of_domain={})
    refused, transport = await dial_and_accept(listening, orphaned, client_context(b.cert, b.key, site_certs["site-a"]))
    close_all(transport)
    assert isinstance(refused, PeerRefused) and str(refused) == "the handshake chose no access domain"
