"""TLS for the peer link: mutual authentication, ALPN, SNI, and reading a peer's site identity.

Trust model (see certs/README.md): every site has its own CA; a gateway certificate names its site in a
URI SAN `spiffe://<trust-domain>/site/<site>`. We believe a peer's site name only if its certificate was
issued by the CA we configured *for that site* — a certificate from site C's CA claiming to be site B is
refused even though we trust site C's CA for site C.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtensionOID

from interlink.model import SiteIdentity

log = structlog.get_logger("interlink.net.tls")

ALPN_H2 = "h2"
ALPN_BOLT = "bolt"  # SOFA Bolt over the peer link (interlink's own ALPN id)


class PeerIdentityError(Exception):
    """A peer certificate that verified against our CAs but does not prove a site identity we accept."""


def _base_context(purpose: int, cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_REQUIRED
    # No session tickets on the server side: every connection proves its client certificate afresh.
    context.options |= ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION
    return context


@dataclass(frozen=True)
class PeerServerTLS:
    """Server side of the peer link: one SSLContext per access domain, chosen by SNI.

    All contexts trust the same peer CAs; which one the handshake ended on tells us the SNI the client
    asked for (`domain_of`), so that each request can be checked against the client certificate's site.
    """

    default: ssl.SSLContext
    by_domain: Mapping[str, ssl.SSLContext]

    def domain_of(self, context: ssl.SSLContext) -> str | None:
        for domain, candidate in self.by_domain.items():
            if candidate is context:
                return domain
        return None


def peer_server_tls(
    cert: Path, key: Path, peer_cas: Iterable[Path], domains: Iterable[str], alpn: Iterable[str] = (ALPN_H2,)
) -> PeerServerTLS:
    cas = list(peer_cas)
    protocols = list(alpn)

    def make() -> ssl.SSLContext:
        context = _base_context(ssl.PROTOCOL_TLS_SERVER, cert, key)
        for ca in cas:
            context.load_verify_locations(cafile=str(ca))
        context.set_alpn_protocols(protocols)
        return context

    by_domain = {domain.lower(): make() for domain in domains}
    default = make()

    def choose_by_sni(ssl_object: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> int | None:
        if server_name is None:
            return None
        chosen = by_domain.get(server_name.lower())
        if chosen is None:
            log.warning("peer.sni_refused", sni=server_name, reason="not an access domain of this gateway")
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        ssl_object.context = chosen
        return None

    default.sni_callback = choose_by_sni
    return PeerServerTLS(default, by_domain)


def peer_client_tls(cert: Path, key: Path, peer_ca: Path, alpn: Iterable[str] = (ALPN_H2,)) -> ssl.SSLContext:
    """Client side of the peer link. The server is verified against the peer's CA; its *site* (not its host
    name: we dial by access domain, which the server certificate does not carry) is checked after the
    handshake with `verify_peer_site`."""
    context = _base_context(ssl.PROTOCOL_TLS_CLIENT, cert, key)
    context.check_hostname = False
    context.load_verify_locations(cafile=str(peer_ca))
    context.set_alpn_protocols(list(alpn))
    return context


def load_certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def site_identity_of(certificate: x509.Certificate) -> SiteIdentity | None:
    try:
        san = certificate.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        identity = SiteIdentity.from_uri(uri)
        if identity is not None:
            return identity
    return None


def verify_peer_site(
    der: bytes | None, trust_domain: str, site_cas: Mapping[str, x509.Certificate]
) -> str:
    """Return the site proven by a peer's (already chain-verified) certificate, or raise PeerIdentityError.

    The certificate must name a site we peer with, in our trust domain, and be issued directly by the CA
    configured for that very site.
    """
    if not der:
        raise PeerIdentityError("the peer sent no certificate")
    certificate = x509.load_der_x509_certificate(der)
    identity = site_identity_of(certificate)
    if identity is None:
        raise PeerIdentityError("the peer certificate has no spiffe://<trust-domain>/site/<site> URI SAN")
    if identity.trust_domain != trust_domain:
        raise PeerIdentityError(
            f"the peer certificate is for trust domain {identity.trust_domain!r}, we are in {trust_domain!r}"
        )
    ca = site_cas.get(identity.site)
    if ca is None:
        raise PeerIdentityError(f"the peer certificate names site {identity.site!r}, which is not a peer of ours")
    try:
        certificate.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise PeerIdentityError(
            f"the peer certificate claims site {identity.site!r} but was not issued by that site's CA"
        ) from exc
    return identity.site
