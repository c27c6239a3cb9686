"""TLS for the peer link: mutual authentication, ALPN, SNI, and reading a peer's site identity.

Trust model (see certs/README.md): every site has its own CA; a gateway certificate names its site in a
URI SAN `spiffe://<trust-domain>/site/<site>`. We believe a peer's site name only if its certificate chains
to the CA bundle we configured *for that site* — a certificate from site C's CA claiming to be site B is
refused even though we trust site C's CA for site C. A bundle may hold several CAs (old and new during a
CA rotation) and may anchor at an intermediate; certificate files may carry intermediates after the leaf.

`certificate_refusal` is the one judgement of a certificate used by `interlink check` and by the gateway
at start and reload: a handshake rehearsed in memory with the very contexts the peer link uses.
"""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import structlog
from cryptography import x509
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
    context.load_cert_chain(cert, key)  # the file may carry intermediates after the leaf: they are sent
    context.verify_mode = ssl.CERT_REQUIRED
    # A trust anchor may be an intermediate CA (a site CA under a company root): trust it as given.
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    # No session tickets on the server side: every connection proves its client certificate afresh.
    context.options |= ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context


@dataclass(frozen=True)
class PeerServerTLS:
    """Server side of the peer link: one SSLContext per access domain, chosen by SNI, each trusting only the
    CA bundle of the site that domain belongs to.

    So OpenSSL proves, during the handshake, that the client certificate chains (through whatever
    intermediates it sends) to *that site's* trust anchors; a certificate of another site's CA fails the
    handshake even though we trust that CA for its own site. A handshake without SNI, or with an SNI that
    is not one of our access domains, is refused. `site_of` tells which site the handshake was for.
    """

    default: ssl.SSLContext
    by_domain: Mapping[str, ssl.SSLContext]
    site_of_domain: Mapping[str, str]

    def domain_of(self, context: ssl.SSLContext) -> str | None:
        for domain, candidate in self.by_domain.items():
            if candidate is context:
                return domain
        return None


def peer_server_tls(
    cert: Path, key: Path, site_cas: Mapping[str, Path], domain_sites: Mapping[str, str],
    alpn: Iterable[str] = (ALPN_H2,),
) -> PeerServerTLS:
    """`site_cas`: peer site -> its CA bundle file; `domain_sites`: access domain we gave -> that site."""
    protocols = list(alpn)

    def make(cafile: Path | None) -> ssl.SSLContext:
        context = _base_context(ssl.PROTOCOL_TLS_SERVER, cert, key)
        if cafile is not None:
            context.load_verify_locations(cafile=str(cafile))
        context.set_alpn_protocols(protocols)
        return context

    by_site = {site: make(path) for site, path in site_cas.items()}
    by_domain = {domain.lower(): by_site[site] for domain, site in domain_sites.items() if site in by_site}
    default = make(None)  # trusts nobody: only reached when SNI chose no context, and then refused

    def choose_by_sni(ssl_object: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> int | None:
        chosen = by_domain.get(server_name.lower()) if server_name else None
        if chosen is None:
            why = "no SNI: the peer link needs SNI = the access domain" if not server_name else (
                f"SNI {server_name} is not an access domain of this gateway")
            ssl_object.sni_refusal = why  # type: ignore[attr-defined]  # read back for the audit line
            log.warning("peer.sni_refused", sni=server_name, reason=why)
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        ssl_object.context = chosen
        return None

    default.sni_callback = choose_by_sni
    return PeerServerTLS(default, by_domain, {domain.lower(): site for domain, site in domain_sites.items()})


def peer_client_tls(cert: Path, key: Path, peer_ca: Path, alpn: Iterable[str] = (ALPN_H2,)) -> ssl.SSLContext:
    """Client side of the peer link. The server must chain to the peer's CA bundle (OpenSSL checks that in
    the handshake); its *site* (not its host name: we dial by access domain, which the server certificate
    does not carry) is checked after the handshake with `verify_peer_site`."""
    context = _base_context(ssl.PROTOCOL_TLS_CLIENT, cert, key)
    context.check_hostname = False
    context.load_verify_locations(cafile=str(peer_ca))
    context.set_alpn_protocols(list(alpn))
    return context


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


def verify_peer_site(der: bytes | None, trust_domain: str, expected_site: str) -> str:
    """The site a peer's certificate proves, when it is `expected_site`; else PeerIdentityError.

    The handshake already proved that the certificate chains to `expected_site`'s CA bundle (each peer site
    has its own SSLContext, see PeerServerTLS and peer_client_tls); here the certificate must also *name*
    that site, in our trust domain."""
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
    if identity.site != expected_site:
        raise PeerIdentityError(
            f"the peer certificate names site {identity.site!r}, but was presented for site {expected_site!r}"
        )
    return identity.site


def load_certificates(path: Path) -> list[x509.Certificate]:
    """Every certificate of a PEM file (a CA bundle, or a leaf followed by its intermediates)."""
    return x509.load_pem_x509_certificates(Path(path).read_bytes())


def rehearse_handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, sni: str, rounds: int = 20
) -> tuple[bytes | None, bytes | None]:
    """Run a TLS handshake between two contexts in memory, exactly as two gateways would on the wire
    (same OpenSSL, same trust stores, same chain and validity rules, same SNI selection), so that
    `interlink check` and a starting gateway judge certificates the way the peer link will. Returns the
    (client certificate the server saw, server certificate the client saw), DER; raises ssl.SSLError with
    OpenSSL's reason when either side refuses."""
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    server_side = server.wrap_bio(s_in, s_out, server_side=True)
    client_side = client.wrap_bio(c_in, c_out, server_side=False, server_hostname=sni)
    done = {"server": False, "client": False}
    for _ in range(rounds):
        for name, side in (("client", client_side), ("server", server_side)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        if c_out.pending:
            s_in.write(c_out.read())
        if s_out.pending:
            c_in.write(s_out.read())
        if done["server"] and done["client"]:
            # TLS 1.3: the server judges the client certificate when it reads the client's Finished.
            try:
                server_side.read(1)
            except ssl.SSLWantReadError:
                pass
            return server_side.getpeercert(binary_form=True), client_side.getpeercert(binary_form=True)
    raise ssl.SSLError("the handshake did not finish")


def expiring(certificates: Iterable[x509.Certificate], days: int, now: dt.datetime | None = None) -> list[tuple[x509.Certificate, int]]:
    """(certificate, whole days left) for those that expire within `days` (or already have)."""
    now = now or dt.datetime.now(dt.UTC)
    out = []
    for certificate in certificates:
        left = certificate.not_valid_after_utc - now
        if left <= dt.timedelta(days=days):
            out.append((certificate, left.days))
    return out


def certificate_refusal(cert: Path, key: Path, anchors: Path, *, site: str, trust_domain: str) -> str | None:
    """Why a peer gateway that trusts `anchors` for `site` would refuse the certificate `cert` (with its
    intermediates) and `key` on the peer link, or None when it would accept it. The one test behind both
    `interlink check` and a gateway's start and reload: a real handshake in memory (OpenSSL's chain,
    validity and key-usage rules) followed by the same identity check the gateway makes."""
    try:
        server = _base_context(ssl.PROTOCOL_TLS_SERVER, cert, key)
        server.load_verify_locations(cafile=str(anchors))
        client = _base_context(ssl.PROTOCOL_TLS_CLIENT, cert, key)
        client.check_hostname = False
        client.load_verify_locations(cafile=str(anchors))
        seen_by_server, _ = rehearse_handshake(server, client, "rehearsal.interlink.invalid")
        verify_peer_site(seen_by_server, trust_domain, site)
    except ssl.SSLError as exc:
        detail = getattr(exc, "verify_message", None) or exc.reason or str(exc)
        return f"a peer that trusts {anchors} refuses it: {detail}"
    except (OSError, ValueError) as exc:
        return f"cannot load it: {exc}"
    except PeerIdentityError as exc:
        return str(exc)
    return None
