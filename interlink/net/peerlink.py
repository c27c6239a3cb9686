"""The peer link's handshake and identity: who is on the other end of an mTLS connection between two
gateways, proven by its certificate, before any byte of a call is read or sent.

    accept_peer   server side: TLS (the client's SNI chooses the access domain, and with it the one CA
                  bundle the client certificate must chain to), ALPN h2 or bolt, and the certificate's site
                  must be the site that access domain was given to
    dial_peer     client side: TCP + TLS with SNI = the access domain the peer gave us; the server must
                  select our ALPN and prove, by a certificate chaining to that peer's CA bundle, that it is
                  that site

Refusals carry the reason the audit line gives (never a traceback).
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

import trio

from interlink.config import HostPort
from interlink.net import tls
from interlink.net.transport import TlsHandshakeError, TlsTransport, TransportClosed, tls_handshake


class PeerRefused(Exception):
    """A peer connection that is not let in; the message is the audit line's reason."""


@dataclass(frozen=True)
class PeerLink:
    """An accepted peer connection: its transport, the site its certificate proves, the access domain it
    chose (SNI) and the protocol it speaks (ALPN)."""

    transport: TlsTransport
    site: str
    sni: str
    alpn: str


async def accept_peer(
    sock: socket.socket, server_tls: tls.PeerServerTLS, trust_domain: str, timeout: float, remote: str
) -> PeerLink:
    """Handshake and identify a peer gateway that connected to us; PeerRefused if it is not one we let in."""
    transport = None
    try:
        with trio.fail_after(timeout):
            transport = await tls_handshake(sock, server_tls.default, server_side=True, name=remote)
        alpn = transport.selected_alpn_protocol()
        if alpn not in (tls.ALPN_H2, tls.ALPN_BOLT):
            raise tls.PeerIdentityError(f"ALPN {alpn!r} offered; the peer link speaks h2 or bolt")
        sni = server_tls.domain_of(transport.context)
        owner = server_tls.site_of_domain.get(sni or "")
        if owner is None:  # cannot happen: the SNI callback refuses unknown names
            raise tls.PeerIdentityError("the handshake chose no access domain")
        site = tls.verify_peer_site(transport.getpeercert(binary_form=True), trust_domain, owner)
    except (TlsHandshakeError, TransportClosed, trio.TooSlowError, tls.PeerIdentityError) as exc:
        if transport is not None:
            transport.close()
        raise PeerRefused(_handshake_error(exc, timeout, server_tls)) from None
    return PeerLink(transport, site, sni or "", alpn)


async def dial_peer(
    address: HostPort, context: ssl.SSLContext, domain: str, alpn: str, trust_domain: str, site: str
) -> TlsTransport:
    """TCP + mTLS to one gateway of peer `site`; ConnectionError (the pool retries) when that fails or the
    other end is not that site."""
    sock = await connect_tcp(address)
    try:
        transport = await tls_handshake(sock, context, server_side=False, server_hostname=domain)
    except (TlsHandshakeError, TransportClosed) as exc:
        sock.close()
        raise ConnectionError(f"TLS handshake failed: {exc}") from None
    try:
        if transport.selected_alpn_protocol() != alpn:
            raise tls.PeerIdentityError(f"peer did not select ALPN {alpn} ({transport.selected_alpn_protocol()!r})")
        tls.verify_peer_site(transport.getpeercert(binary_form=True), trust_domain, site)
    except tls.PeerIdentityError as exc:
        transport.close()
        raise ConnectionError(str(exc)) from None
    except BaseException:
        transport.close()
        raise
    return transport


async def connect_tcp(address: HostPort) -> socket.socket:
    """A TCP connection (happy eyeballs, TCP_NODELAY) as a plain non-blocking socket."""
    stream = await trio.open_tcp_stream(address.host, address.port)
    return socket.socket(fileno=stream.socket.detach())


def _handshake_error(exc: BaseException, limit: float, server_tls: tls.PeerServerTLS) -> str:
    """What the audit line says about a refused handshake: the SNI refusal, or OpenSSL's reason with the
    site whose CA bundle the client certificate had to chain to."""
    if isinstance(exc, trio.TooSlowError):
        return f"TLS handshake did not finish within {limit:g}s"
    if isinstance(exc, TlsHandshakeError):
        session = exc.ssl_object
        refusal = getattr(session, "sni_refusal", None)
        if refusal:
            return refusal
        domain = server_tls.domain_of(session.context) if session is not None else None
        if domain is not None:
            return (f"TLS handshake failed: {exc} (SNI {domain}: the client certificate must chain to the CA bundle "
                    "of the site this access domain was given to)")
        return f"TLS handshake failed: {exc}"
    return str(exc) or type(exc).__name__
