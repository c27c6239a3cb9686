"""interlink.net.tls: the peer link's contexts (SNI chooses the one CA bundle a client must chain to), the
site identity a certificate proves, and `certificate_refusal`, the judgement `interlink check` shares with
the gateway. Handshakes are rehearsed in memory (`rehearse_handshake`), no sockets."""

from __future__ import annotations

import datetime as dt
import ssl

import pytest
import structlog
from cryptography.hazmat.primitives.serialization import Encoding

from interlink.net import tls

DOMAIN_B = "b.access.test"  # the access domain site-a gave to site-b


def server_for_b(site_certs) -> tls.PeerServerTLS:
    """site-a's peer listener, which gave DOMAIN_B to site-b."""
    a, b = site_certs["site-a"], site_certs["site-b"]
    return tls.peer_server_tls(a.cert, a.key, {"site-b": b.ca}, {DOMAIN_B.upper(): "site-b"})


def client_of(paths, trusting) -> ssl.SSLContext:
    return tls.peer_client_tls(paths.cert, paths.key, trusting.ca)


def leaf_der(path) -> bytes:
    return tls.load_certificates(path)[0].public_bytes(Encoding.DER)


def test_a_peer_with_its_sites_certificate_is_identified_by_the_domain_it_chose(site_certs):
    server = server_for_b(site_certs)
    client = client_of(site_certs["site-b"], trusting=site_certs["site-a"])
    seen_by_server, seen_by_client = tls.rehearse_handshake(server.default, client, DOMAIN_B)
    assert tls.verify_peer_site(seen_by_server, "interlink", "site-b") == "site-b"
    assert tls.verify_peer_site(seen_by_client, "interlink", "site-a") == "site-a"
    assert server.site_of_domain == {DOMAIN_B: "site-b"}  # domains are matched case-insensitively
    assert server.domain_of(server.by_domain[DOMAIN_B]) == DOMAIN_B
    assert server.domain_of(server.default) is None


@pytest.mark.parametrize(
    ("sni", "why"),
    [
        (None, "no SNI: the peer link needs SNI = the access domain"),
        ("other.access.test", "SNI other.access.test is not an access domain of this gateway"),
    ],
)
def test_a_handshake_without_a_known_access_domain_is_refused_and_logged(site_certs, sni, why):
    server = server_for_b(site_certs)
    client = client_of(site_certs["site-b"], trusting=site_certs["site-a"])
    with structlog.testing.capture_logs() as logs, pytest.raises(ssl.SSLError):
        tls.rehearse_handshake(server.default, client, sni)
    assert [e["reason"] for e in logs if e["event"] == "peer.sni_refused"] == [why]


def test_a_certificate_of_another_sites_ca_is_refused_for_that_domain(site_certs):
    """site-c's CA is trusted for site-c only: its certificate cannot use site-b's access domain."""
    a, b, c = site_certs["site-a"], site_certs["site-b"], site_certs["site-c"]
    server = tls.peer_server_tls(a.cert, a.key, {"site-b": b.ca, "site-c": c.ca},
                                 {DOMAIN_B: "site-b", "c.access.test": "site-c"})
    intruder = client_of(c, trusting=a)
    with pytest.raises(ssl.SSLError):
        tls.rehearse_handshake(server.default, intruder, DOMAIN_B)
    assert tls.rehearse_handshake(server.default, intruder, "c.access.test")[0] is not None


def test_a_domain_given_to_a_site_without_a_ca_bundle_is_not_served(site_certs):
    a, b = site_certs["site-a"], site_certs["site-b"]
    server = tls.peer_server_tls(a.cert, a.key, {"site-b": b.ca}, {DOMAIN_B: "site-b", "x.test": "site-x"})
    assert set(server.by_domain) == {DOMAIN_B}


def test_the_client_refuses_a_server_outside_the_peers_ca_bundle(site_certs):
    server = server_for_b(site_certs)
    client = client_of(site_certs["site-b"], trusting=site_certs["site-c"])  # expects site-c's CA
    with pytest.raises(ssl.SSLError):
        tls.rehearse_handshake(server.default, client, DOMAIN_B)


def test_a_handshake_cut_short_reports_that_it_did_not_finish(site_certs):
    server = server_for_b(site_certs)
    client = client_of(site_certs["site-b"], trusting=site_certs["site-a"])
    with pytest.raises(ssl.SSLError, match="did not finish"):
        tls.rehearse_handshake(server.default, client, DOMAIN_B, rounds=1)


@pytest.mark.parametrize(
    ("uri", "trust_domain", "site", "error"),
    [
        (None, "interlink", "site-b", "no spiffe"),
        ("https://example.test/site/site-b", "interlink", "site-b", "no spiffe"),
        ("spiffe://interlink/site/site-x", "interlink", "site-b", "names site 'site-x'"),
        ("spiffe://interlink/site/site-b", "elsewhere", "site-b", "trust domain 'interlink'"),
    ],
    ids=["dns-only", "not-spiffe", "other-site", "other-trust-domain"],
)
def test_verify_peer_site_refuses_a_certificate_that_does_not_name_the_expected_site(
    site_certs, odd_leaf, uri, trust_domain, site, error
):
    cert, _ = odd_leaf(site_certs["site-b"], uri)
    with pytest.raises(tls.PeerIdentityError, match=error):
        tls.verify_peer_site(leaf_der(cert), trust_domain, site)


def test_verify_peer_site_refuses_a_peer_without_certificate():
    with pytest.raises(tls.PeerIdentityError, match="no certificate"):
        tls.verify_peer_site(None, "interlink", "site-b")


def test_a_certificate_without_subject_alternative_names_proves_no_site(site_certs, odd_leaf):
    cert, _ = odd_leaf(site_certs["site-b"], None, san=False)
    assert tls.site_identity_of(tls.load_certificates(cert)[0]) is None
    with pytest.raises(tls.PeerIdentityError, match="no spiffe"):
        tls.verify_peer_site(leaf_der(cert), "interlink", "site-b")


def test_load_certificates_reads_every_certificate_of_a_bundle(site_certs, tmp_path):
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(site_certs["site-b"].ca.read_bytes() + site_certs["site-c"].ca.read_bytes())
    assert len(tls.load_certificates(bundle)) == 2


def test_expiring_lists_certificates_within_the_window_with_days_left(site_certs):
    certificate = tls.load_certificates(site_certs["site-b"].cert)[0]
    assert tls.expiring([certificate], days=30) == []  # a fresh leaf has about 397 days
    later = certificate.not_valid_after_utc + dt.timedelta(days=3)
    assert tls.expiring([certificate], days=0, now=later) == [(certificate, -3)]
    soon = certificate.not_valid_after_utc - dt.timedelta(days=10, hours=1)
    assert tls.expiring([certificate], days=30, now=soon) == [(certificate, 10)]


def test_certificate_refusal_accepts_a_sites_own_certificate(site_certs):
    b = site_certs["site-b"]
    assert tls.certificate_refusal(b.cert, b.key, b.ca, site="site-b", trust_domain="interlink") is None


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("other-site", "names site 'site-b', but was presented for site 'site-c'"),
        ("other-ca", "refuses it"),
        ("missing-file", "cannot load it"),
        ("other-trust-domain", "trust domain 'elsewhere'"),
    ],
)
def test_certificate_refusal_names_why_a_peer_would_refuse(site_certs, tmp_path, case, expected):
    b, c = site_certs["site-b"], site_certs["site-c"]
    cert, key, anchors, site = {
        "other-site": (b.cert, b.key, b.ca, "site-c"),
        "other-ca": (b.cert, b.key, c.ca, "site-b"),
        "missing-file": (tmp_path / "nope.pem", b.key, b.ca, "site-b"),
        "other-trust-domain": (site_certs["elsewhere-b"].cert, site_certs["elsewhere-b"].key,
                               site_certs["elsewhere-b"].ca, "site-b"),
    }[case]
    refusal = tls.certificate_refusal(cert, key, anchors, site=site, trust_domain="interlink")
    assert refusal is not None and expected in refusal, refusal
