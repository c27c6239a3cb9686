"""Site CA and gateway certificates: contents, file modes, refusals, identities, and a real mTLS handshake."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import stat
from pathlib import Path
from typing import TypeVar

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given
from hypothesis import strategies as st

from interlink.control.certs import (
    CertError,
    SitePaths,
    describe,
    init_site,
    issue,
    parse_site_identity,
    site_identity_uri,
)

SITE_NAMES = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True)
TRUST_DOMAINS = st.from_regex(r"[a-z0-9]([a-z0-9._-]{0,60}[a-z0-9])?", fullmatch=True)
E = TypeVar("E", bound=x509.ExtensionType)


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def ext(cert: x509.Certificate, kind: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(kind)


def ec_public_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def file_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def site_a(tmp_path_factory: pytest.TempPathFactory) -> SitePaths:
    out = tmp_path_factory.mktemp("certs") / "site-a"
    return init_site("site-a", out, ["gw.site-a.test", "gw2.site-a.test", "127.0.0.1", "::1"])


@pytest.fixture(scope="module")
def site_b(tmp_path_factory: pytest.TempPathFactory) -> SitePaths:
    return init_site("site-b", tmp_path_factory.mktemp("certs") / "site-b", ["gw.site-b.test"])


# --- what the files hold --------------------------------------------------------------------------------


def test_ca_is_a_constrained_self_signed_p256_ca(site_a: SitePaths) -> None:
    ca = load_cert(site_a.ca)
    assert ec_public_key(ca).curve.name == "secp256r1"
    ca.verify_directly_issued_by(ca)
    assert ca.subject == ca.issuer
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "interlink site-a CA"
    assert ca.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "interlink"

    basic = ext(ca, x509.BasicConstraints)
    assert basic.critical and basic.value == x509.BasicConstraints(ca=True, path_length=0)
    usage = ext(ca, x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    ski = x509.SubjectKeyIdentifier.from_public_key(ca.public_key())
    assert ext(ca, x509.SubjectKeyIdentifier).value == ski

    ca_key = serialization.load_pem_private_key(site_a.ca_key.read_bytes(), password=None)
    assert ca_key.public_key() == ca.public_key()
    assert ca.not_valid_after_utc - ca.not_valid_before_utc == dt.timedelta(days=3650, minutes=5)


def test_leaf_is_signed_by_the_ca_and_carries_the_site_identity(site_a: SitePaths) -> None:
    ca, leaf = load_cert(site_a.ca), load_cert(site_a.cert)
    leaf.verify_directly_issued_by(ca)  # issuer name matches and the ECDSA signature checks out
    ec_public_key(ca).verify(leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))

    san = ext(leaf, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://interlink/site/site-a"]
    assert san.get_values_for_type(x509.DNSName) == ["gw.site-a.test", "gw2.site-a.test"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gw.site-a.test"

    assert list(ext(leaf, x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ]
    usage = ext(leaf, x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert not (usage.value.key_cert_sign or usage.value.crl_sign or usage.value.key_encipherment)
    basic = ext(leaf, x509.BasicConstraints)
    assert basic.critical and basic.value.ca is False
    aki = ext(leaf, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ext(ca, x509.SubjectKeyIdentifier).value.digest
    assert ext(leaf, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(
        leaf.public_key()
    )

    key = serialization.load_pem_private_key(site_a.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert key.public_key() == leaf.public_key()


def test_leaf_validity_is_backdated_for_clock_skew(site_a: SitePaths) -> None:
    leaf = load_cert(site_a.cert)
    now = dt.datetime.now(dt.timezone.utc)
    skew = now - leaf.not_valid_before_utc
    assert dt.timedelta(minutes=4) < skew < dt.timedelta(minutes=6)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == dt.timedelta(days=397, minutes=5)


def test_files_are_pem_in_the_expected_formats(site_a: SitePaths) -> None:
    assert site_a.cert.read_bytes().count(b"-----BEGIN CERTIFICATE-----") == 1  # leaf only, no CA
    for key_path in (site_a.key, site_a.ca_key):
        assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS8, unencrypted


def test_keys_are_0600_certs_0644_and_a_new_folder_0700(site_a: SitePaths) -> None:
    assert file_mode(site_a.key) == 0o600
    assert file_mode(site_a.ca_key) == 0o600
    assert file_mode(site_a.cert) == 0o644
    assert file_mode(site_a.ca) == 0o644
    assert file_mode(site_a.cert.parent) == 0o700
    assert sorted(p.name for p in site_a.cert.parent.iterdir()) == [
        "ca.key",
        "ca.pem",
        "gateway.key",
        "gateway.pem",
    ]  # no temporary files left behind


def test_key_modes_hold_under_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        paths = init_site("site-u", tmp_path / "u")
    finally:
        os.umask(old)
    assert file_mode(paths.key) == 0o600 and file_mode(paths.ca_key) == 0o600
    assert file_mode(paths.cert) == 0o644
    assert file_mode(tmp_path / "u") == 0o700


def test_defaults_without_dns_names_and_custom_trust_domain(tmp_path: Path) -> None:
    paths = init_site("edge-7", tmp_path / "e", trust_domain="corp.example", ca_days=30, leaf_days=7)
    leaf = load_cert(paths.cert)
    san = ext(leaf, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://corp.example/site/edge-7"]
    assert san.get_values_for_type(x509.DNSName) == []
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "edge-7 gateway"
    summary = describe(paths.cert)
    assert summary["days_left"] in (6, 7)


def test_long_site_names_fit_the_common_name_limit(tmp_path: Path) -> None:
    site = "s" * 63
    paths = init_site(site, tmp_path / "long")
    assert load_cert(paths.ca).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == site
    assert parse_site_identity(describe(paths.cert)["uris"][0]) == ("interlink", site)


def test_describe_reports_names_and_expiry(site_a: SitePaths) -> None:
    leaf = load_cert(site_a.cert)
    summary = describe(site_a.cert, now=leaf.not_valid_after_utc - dt.timedelta(days=10, hours=1))
    assert summary["subject"] == "O=interlink,CN=gw.site-a.test"
    assert summary["issuer"] == "O=interlink,CN=interlink site-a CA"
    assert summary["uris"] == ["spiffe://interlink/site/site-a"]
    assert summary["dns_names"] == ["gw.site-a.test", "gw2.site-a.test"]
    assert summary["ip_addresses"] == ["127.0.0.1", "::1"]
    assert summary["not_before"] == leaf.not_valid_before_utc
    assert summary["not_after"] == leaf.not_valid_after_utc
    assert summary["days_left"] == 10
    assert describe(site_a.cert, now=leaf.not_valid_after_utc + dt.timedelta(days=2))["days_left"] < 0


def test_describe_explains_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(CertError, match="cannot read certificate"):
        describe(tmp_path / "missing.pem")
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(CertError, match="does not hold a PEM certificate"):
        describe(tmp_path / "junk.pem")


# --- issuing more gateways, and refusals ----------------------------------------------------------------


def test_init_site_never_overwrites_a_ca(tmp_path: Path) -> None:
    paths = init_site("site-a", tmp_path / "a")
    before = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    with pytest.raises(CertError, match=r"ca\.pem already exists.*interlink certs issue.*--out"):
        init_site("site-a", tmp_path / "a")
    paths.ca.unlink()  # a lone ca.key is still a CA we must not replace
    with pytest.raises(CertError, match=r"ca\.key already exists"):
        init_site("site-a", tmp_path / "a")
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()} == {
        name: data for name, data in before.items() if name != "ca.pem"
    }


def test_issue_a_second_gateway_of_the_same_site(site_a: SitePaths, tmp_path: Path) -> None:
    second = issue(site_a.ca.parent, "site-a", tmp_path / "gw2", ["gw3.site-a.test"], name="gateway-2")
    assert second.ca == site_a.ca and second.ca_key == site_a.ca_key
    assert second.cert == tmp_path / "gw2" / "gateway-2.pem"
    assert second.key == tmp_path / "gw2" / "gateway-2.key"
    assert file_mode(second.key) == 0o600 and file_mode(second.cert) == 0o644

    first_leaf, second_leaf = load_cert(site_a.cert), load_cert(second.cert)
    second_leaf.verify_directly_issued_by(load_cert(site_a.ca))
    assert second_leaf.serial_number != first_leaf.serial_number
    assert second_leaf.public_key() != first_leaf.public_key()
    assert second.key.read_bytes() != site_a.key.read_bytes()
    assert describe(second.cert)["uris"] == describe(site_a.cert)["uris"]  # same site identity
    assert describe(second.cert)["dns_names"] == ["gw3.site-a.test"]


def test_issue_replaces_a_gateway_cert_for_rotation(tmp_path: Path) -> None:
    paths = init_site("site-r", tmp_path / "r", ["gw.site-r.test"])
    old_cert, old_key = paths.cert.read_bytes(), paths.key.read_bytes()
    again = issue(tmp_path / "r", "site-r", tmp_path / "r", ["gw.site-r.test"])
    assert again == paths
    assert paths.cert.read_bytes() != old_cert and paths.key.read_bytes() != old_key
    assert file_mode(paths.key) == 0o600


def test_issue_refuses_another_sites_identity(site_a: SitePaths, tmp_path: Path) -> None:
    with pytest.raises(CertError, match="belongs to spiffe://interlink/site/site-a"):
        issue(site_a.ca.parent, "site-b", tmp_path / "x")
    with pytest.raises(CertError, match="belongs to"):
        issue(site_a.ca.parent, "site-a", tmp_path / "x", trust_domain="other")
    assert not (tmp_path / "x").exists()


def test_issue_refuses_to_clobber_the_ca_files(site_a: SitePaths) -> None:
    with pytest.raises(CertError, match="not 'ca'"):
        issue(site_a.ca.parent, "site-a", site_a.ca.parent, name="ca")


def test_issue_explains_a_missing_or_broken_ca(site_a: SitePaths, tmp_path: Path) -> None:
    with pytest.raises(CertError, match=r"ca\.pem not found.*init-site"):
        issue(tmp_path / "nowhere", "site-a", tmp_path / "out")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "ca.pem").write_bytes(site_a.ca.read_bytes())
    other_key = ec.generate_private_key(ec.SECP256R1())
    (broken / "ca.key").write_bytes(
        other_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(CertError, match="is not the key of"):
        issue(broken, "site-a", tmp_path / "out")
    # a gateway certificate is not a CA
    (broken / "ca.pem").write_bytes(site_a.cert.read_bytes())
    (broken / "ca.key").write_bytes(site_a.key.read_bytes())
    with pytest.raises(CertError, match="not a CA certificate"):
        issue(broken, "site-a", tmp_path / "out")


@pytest.mark.parametrize(
    "bad",
    ["", "Site-A", "site_a", "-site", "site-", "site.a", "site a", "s" * 64, "sité", "site/a", "a\n"],
)
def test_bad_site_names_are_refused(bad: str, tmp_path: Path) -> None:
    with pytest.raises(CertError, match="site name"):
        init_site(bad, tmp_path / "x")
    with pytest.raises(CertError, match="site name"):
        site_identity_uri("interlink", bad)
    assert not (tmp_path / "x").exists()  # nothing written before validation


def test_uppercase_site_name_gets_a_hint(tmp_path: Path) -> None:
    with pytest.raises(CertError, match="must be lowercase.*'site-a'"):
        init_site("Site-A", tmp_path / "x")


@pytest.mark.parametrize("bad", ["", "Interlink", "a/b", "td:8080", ".td", "td.", "t d", "x" * 256])
def test_bad_trust_domains_are_refused(bad: str, tmp_path: Path) -> None:
    with pytest.raises(CertError, match="trust domain"):
        init_site("site-a", tmp_path / "x", trust_domain=bad)


@pytest.mark.parametrize("bad", ["", "gw..test", "gw.test.", "-gw.test", "gw_1.test", "*.test", "a.*.test"])
def test_bad_dns_names_are_refused_before_anything_is_written(bad: str, tmp_path: Path) -> None:
    with pytest.raises(CertError, match="--dns"):
        init_site("site-a", tmp_path / "x", ["ok.test", bad])
    assert not (tmp_path / "x").exists()


def test_dns_names_are_lowercased_and_deduplicated_and_wildcards_allowed(tmp_path: Path) -> None:
    names = ["GW.Site-W.test", "gw.site-w.test", "*.site-w.test", "10.0.0.1"]
    paths = init_site("site-w", tmp_path / "w", names)
    assert describe(paths.cert)["dns_names"] == ["gw.site-w.test", "*.site-w.test"]
    assert describe(paths.cert)["ip_addresses"] == ["10.0.0.1"]


def test_a_string_instead_of_a_list_of_names_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CertError, match="list of names"):
        init_site("site-a", tmp_path / "x", "gw.site-a.test")


def test_an_output_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("")
    with pytest.raises(CertError, match="exists and is not a folder"):
        init_site("site-a", tmp_path / "taken")


@pytest.mark.parametrize("days", [0, -1])
def test_non_positive_lifetimes_are_refused(days: int, tmp_path: Path) -> None:
    with pytest.raises(CertError, match="at least 1 day"):
        init_site("site-a", tmp_path / "x", leaf_days=days)


# --- site identity URIs ---------------------------------------------------------------------------------


def test_site_identity_uri_shape() -> None:
    assert site_identity_uri("interlink", "site-a") == "spiffe://interlink/site/site-a"
    assert site_identity_uri("corp.example", "b2") == "spiffe://corp.example/site/b2"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("spiffe://interlink/site/site-a", ("interlink", "site-a")),
        ("spiffe://corp.example/site/0", ("corp.example", "0")),
        ("spiffe://td_1/site/a-b", ("td_1", "a-b")),
    ],
)
def test_parse_site_identity_accepts(uri: str, expected: tuple[str, str]) -> None:
    assert parse_site_identity(uri) == expected


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "spiffe://interlink/site/",
        "spiffe://interlink/site/site-a/",
        "spiffe://interlink/site/site-a/extra",
        "spiffe://interlink/sites/site-a",
        "spiffe://interlink/ns/default/sa/site-a",
        "spiffe://interlink/site-a",
        "spiffe:///site/site-a",
        "spiffe://interlink:443/site/site-a",
        "spiffe://user@interlink/site/site-a",
        "spiffe://interlink/site/site-a?x=1",
        "spiffe://interlink/site/site-a#frag",
        "spiffe://interlink/site/site%2Da",
        "spiffe://interlink/site/Site-A",
        "spiffe://Interlink/site/site-a",
        "SPIFFE://interlink/site/site-a",
        "https://interlink/site/site-a",
        "spiffe://interlink//site/site-a",
        "spiffe://interlink/site/site-a\n",
        " spiffe://interlink/site/site-a",
        "spiffe://interlink/site/-a",
        "spiffe://interlink/site/" + "s" * 64,
    ],
)
def test_parse_site_identity_rejects(uri: str) -> None:
    assert parse_site_identity(uri) is None


@given(trust_domain=TRUST_DOMAINS, site=SITE_NAMES)
def test_site_identity_round_trip(trust_domain: str, site: str) -> None:
    assert parse_site_identity(site_identity_uri(trust_domain, site)) == (trust_domain, site)


@given(st.one_of(st.text(), st.builds(lambda s: "spiffe://" + s, st.text())))
def test_whatever_parses_formats_back_identically(uri: str) -> None:
    parsed = parse_site_identity(uri)
    if parsed is not None:
        assert site_identity_uri(*parsed) == uri


# --- a real mutual TLS 1.3 handshake between two sites --------------------------------------------------


def server_context(own: SitePaths, trusted_peer_ca: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT  # what newer Pythons turn on by default
    ctx.load_cert_chain(own.cert, own.key)
    ctx.load_verify_locations(trusted_peer_ca)
    return ctx


def client_context(own: SitePaths, trusted_peer_ca: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + hostname check
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.load_cert_chain(own.cert, own.key)
    ctx.load_verify_locations(trusted_peer_ca)
    return ctx


def uri_sans(peer_der: bytes) -> list[str]:
    cert = x509.load_der_x509_certificate(peer_der)
    return ext(cert, x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)


@pytest.mark.parametrize("server_hostname", ["gw.site-a.test", "127.0.0.1"])
async def test_mutual_tls_13_between_two_sites(
    site_a: SitePaths, site_b: SitePaths, server_hostname: str
) -> None:
    # site-a serves and trusts site-b's CA; site-b connects and trusts site-a's CA.
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    seen: dict[str, str | list[str] | None] = {}

    async def serve_one() -> None:
        tcp = await listener.accept()
        tls = trio.SSLStream(tcp, server_context(site_a, site_b.ca), server_side=True)
        await tls.do_handshake()
        seen["server_version"] = tls.version()
        seen["client_uris"] = uri_sans(tls.getpeercert(binary_form=True))
        await tls.send_all(b"hello site-b")
        await tls.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_one)
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            tls = trio.SSLStream(tcp, client_context(site_b, site_a.ca), server_hostname=server_hostname)
            await tls.do_handshake()
            assert tls.version() == "TLSv1.3"
            assert await tls.receive_some() == b"hello site-b"
            peer = tls.getpeercert()
            server_uris = uri_sans(tls.getpeercert(binary_form=True))
            await tls.aclose()
        await listener.aclose()

    assert seen["server_version"] == "TLSv1.3"
    assert seen["client_uris"] == ["spiffe://interlink/site/site-b"]
    assert server_uris == ["spiffe://interlink/site/site-a"]
    assert parse_site_identity(server_uris[0]) == ("interlink", "site-a")
    assert ("URI", "spiffe://interlink/site/site-a") in peer["subjectAltName"]


async def test_a_client_from_an_untrusted_site_ca_is_refused(
    site_a: SitePaths, site_b: SitePaths, tmp_path: Path
) -> None:
    # Anyone can make a CA of their own that calls itself site-b; site-a trusts only site-b's real CA.
    impostor = init_site("site-b", tmp_path / "impostor", ["gw.site-b.test"])
    assert describe(impostor.cert)["uris"] == describe(site_b.cert)["uris"]

    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    server_error: list[BaseException] = []

    async def serve_one() -> None:
        tcp = await listener.accept()
        tls = trio.SSLStream(tcp, server_context(site_a, site_b.ca), server_side=True)
        try:
            await tls.do_handshake()
        except trio.BrokenResourceError as exc:
            server_error.append(exc)
        await tcp.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_one)
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            tls = trio.SSLStream(tcp, client_context(impostor, site_a.ca), server_hostname="gw.site-a.test")
            # In TLS 1.3 the client finishes its handshake before the server checks its certificate;
            # the refusal shows up on the first read.
            try:
                await tls.do_handshake()
                assert await tls.receive_some() == b""
            except trio.BrokenResourceError:
                pass
            await tcp.aclose()
        await listener.aclose()

    assert len(server_error) == 1
    cause = server_error[0].__cause__
    assert isinstance(cause, ssl.SSLError) and "certificate verify failed" in str(cause)
