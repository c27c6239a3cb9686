"""The peer port of GW-A as an attacker sees it: only mTLS with a certificate of a site we peer with, and
only the access domain we gave *that* site."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from interlink.model import Status
from tests.e2e import rawgrpc
from tests.e2e.topology import ALLOWED_APP, SERVICE, TwoSites, access_domain

ECHO_HI = b"\x0a\x02hi"  # EchoRequest{message: "hi"}
STAMPED_APP = [("x-interlink-caller-app", ALLOWED_APP)]


def _peer_call(sites: TwoSites, certs, site: str, *, sni: str, authority: str, ca_site: str = "site-a", cert=None):
    paths = certs.site(site)
    context = rawgrpc.mtls_context(certs.site(ca_site).ca, *(cert or (paths.cert, paths.key)))
    headers = rawgrpc.grpc_request_headers(f"/{SERVICE}/echo", authority, STAMPED_APP)
    return rawgrpc.call("127.0.0.1", sites.a_peer_port, headers, ECHO_HI, context=context, sni=sni)


def test_site_b_with_its_own_domain_is_served(py_sites, certs):
    domain = access_domain("site-b", "site-a")
    result = _peer_call(py_sites, certs, "site-b", sni=domain, authority=domain)
    assert result.grpc_status == Status.OK, result


def test_site_c_cannot_use_site_b_domain(py_sites, certs):
    """Site C has a certificate site A trusts, but site B's access domain is served only to certificates
    that chain to site B's CA: the handshake fails, and the refusal is audited without naming site B."""
    b_domain = access_domain("site-b", "site-a")
    result = _peer_call(py_sites, certs, "site-c", sni=b_domain, authority=b_domain)
    assert result.grpc_status is None and result.closed, result
    event = py_sites.a.wait_for_event(
        lambda e: e.get("event") == "audit" and e.get("decision") == "deny" and b_domain in (e.get("reason") or "")
    )
    assert "site-b" not in event["reason"].replace(b_domain, "")


def test_site_c_cannot_switch_authority_on_its_own_connection(py_sites, certs):
    result = _peer_call(
        py_sites, certs, "site-c", sni=access_domain("site-c", "site-a"), authority=access_domain("site-b", "site-a")
    )
    assert result.grpc_status == Status.PERMISSION_DENIED, result


def test_site_c_on_its_own_domain_gets_only_what_was_exported_to_it(py_sites, certs):
    domain = access_domain("site-c", "site-a")
    result = _peer_call(py_sites, certs, "site-c", sni=domain, authority=domain)
    assert result.grpc_status == Status.PERMISSION_DENIED, result
    assert "not exported to site site-c" in result.grpc_message


def test_untrusted_ca_is_refused_at_the_handshake(py_sites, certs):
    domain = access_domain("site-b", "site-a")
    result = _peer_call(py_sites, certs, "site-d", sni=domain, authority=domain)
    assert result.grpc_status is None and result.closed, result
    py_sites.a.wait_for_event(lambda e: e.get("event") == "peer.handshake_refused")


def test_trusted_ca_claiming_another_site_is_refused(py_sites, certs, tmp_path):
    """Site C's CA signs a certificate that says "site-b": we only believe site-b from site B's CA."""
    forged = _forge_leaf(certs.site("site-c"), "site-b", tmp_path)
    domain = access_domain("site-b", "site-a")
    result = _peer_call(py_sites, certs, "site-c", sni=domain, authority=domain, cert=forged)
    assert result.grpc_status is None and result.closed, result
    py_sites.a.wait_for_event(
        lambda e: e.get("event") == "peer.handshake_refused" and "must chain to the CA bundle" in e.get("error", "")
    )


def test_no_client_certificate_is_refused(py_sites, certs):
    domain = access_domain("site-b", "site-a")
    context = rawgrpc.mtls_context(certs.site("site-a").ca, None, None)
    headers = rawgrpc.grpc_request_headers(f"/{SERVICE}/echo", domain)
    result = rawgrpc.call("127.0.0.1", py_sites.a_peer_port, headers, ECHO_HI, context=context, sni=domain)
    assert result.grpc_status is None and result.closed, result


def test_unknown_sni_is_refused(py_sites, certs):
    paths = certs.site("site-b")
    context = rawgrpc.mtls_context(certs.site("site-a").ca, paths.cert, paths.key)
    with pytest.raises(ssl.SSLError):  # an unrecognized_name alert or a plain close
        rawgrpc.open_socket("127.0.0.1", py_sites.a_peer_port, context, "internal.site-a.test", 5)
    py_sites.a.wait_for_event(
        lambda e: e.get("event") == "peer.sni_refused" and e.get("sni") == "internal.site-a.test"
    )


@pytest.mark.parametrize(
    "payload",
    [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"],
    ids=["http1", "h2c-preface"],
)
def test_plain_tcp_and_h2c_are_refused(py_sites, payload):
    with socket.create_connection(("127.0.0.1", py_sites.a_peer_port), timeout=5) as sock:
        sock.sendall(payload)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    assert b"HTTP" not in received and b"grpc" not in received  # at most a TLS alert, then close


def _forge_leaf(issuer, claimed_site: str, folder: Path) -> tuple[Path, Path]:
    ca_cert = x509.load_pem_x509_certificate(issuer.ca.read_bytes())
    ca_key = serialization.load_pem_private_key(issuer.ca_key.read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{claimed_site} gateway")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://interlink/site/{claimed_site}")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = folder / "forged.pem", folder / "forged.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path
