"""Fixtures for the interlink.net tests: site certificates (made as `interlink certs init-site` makes them),
odd certificates the peer link must refuse, and connected TCP sockets on 127.0.0.1.

* ``site_certs`` (session) -- {name: SitePaths}: site-a and site-b and site-c in trust domain "interlink",
  and "elsewhere-b" (a site named site-b in trust domain "elsewhere").
* ``odd_leaf(ca, uri, san=True)`` -- (cert, key) signed by the CA of `ca` (a SitePaths), with `uri` as its
  only URI SAN (None: DNS names only, no site identity; san=False: no subjectAltName extension at all).
* ``tcp_pair()`` -- (client, server) sockets connected over 127.0.0.1, closed after the test.
"""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from interlink.control.certs import SitePaths, init_site


@pytest.fixture(scope="session")
def site_certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SitePaths]:
    root = tmp_path_factory.mktemp("net-certs")
    sites = {name: init_site(name, root / name) for name in ("site-a", "site-b", "site-c")}
    sites["elsewhere-b"] = init_site("site-b", root / "elsewhere-b", trust_domain="elsewhere")
    return sites


@pytest.fixture
def odd_leaf(tmp_path: Path) -> Callable[..., tuple[Path, Path]]:
    counter = iter(range(1_000))

    def make(ca: SitePaths, uri: str | None, *, san: bool = True) -> tuple[Path, Path]:
        ca_cert = x509.load_pem_x509_certificate(ca.ca.read_bytes())
        ca_key = serialization.load_pem_private_key(ca.ca_key.read_bytes(), password=None)
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        names: list[x509.GeneralName] = [x509.DNSName("odd.test")]
        if uri is not None:
            names.append(x509.UniformResourceIdentifier(uri))
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "odd")]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        stem = tmp_path / f"odd-{next(counter)}"
        cert_path, key_path = stem.with_suffix(".pem"), stem.with_suffix(".key")
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return cert_path, key_path

    return make


@pytest.fixture
def tcp_pair() -> Iterator[Callable[[], tuple[socket.socket, socket.socket]]]:
    made: list[socket.socket] = []

    def connect() -> tuple[socket.socket, socket.socket]:
        with socket.create_server(("127.0.0.1", 0)) as server:
            client = socket.create_connection(server.getsockname(), timeout=5)
            accepted, _ = server.accept()
        made.extend((client, accepted))
        return client, accepted

    yield connect
    for sock in made:
        sock.close()
