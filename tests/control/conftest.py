"""Fixtures for the control-plane tests: throwaway site CAs, gateway certificates and site files.

Normal certificates come from `interlink.control.certs.init_site`, exactly as users make them. The odd
ones the checker must refuse (a leaf naming another site, an RSA chain, an expired leaf) are built here
with `cryptography` directly, because `interlink certs` rightly refuses to make them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from interlink.control.certs import SitePaths, init_site

KeyKind = Literal["ec", "rsa"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@pytest.fixture
def make_site_certs(tmp_path: Path) -> Callable[..., SitePaths]:
    """make_site_certs("site-a") -> SitePaths under tmp_path/certs/site-a (CA + gateway cert and key)."""

    def make(name: str, trust_domain: str = "interlink") -> SitePaths:
        return init_site(name, tmp_path / "certs" / name, trust_domain=trust_domain)

    return make


@pytest.fixture
def write_site(tmp_path: Path) -> Callable[[str, str], Path]:
    """write_site("site-a", text) -> tmp_path/site-a.yaml holding `text`."""

    def write(name: str, text: str) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def make_ca() -> Callable[..., tuple[Path, Path]]:
    """make_ca(out_dir, key_kind="rsa") -> (ca.pem, ca.key), a self-signed CA outside `interlink certs`."""
    return write_ca


@pytest.fixture
def make_leaf() -> Callable[..., tuple[Path, Path]]:
    """make_leaf(ca_pem, ca_key, out_dir, uri=..., ...) -> (cert, key), signed by that CA."""
    return write_leaf


def write_ca(out_dir: Path, key_kind: KeyKind = "ec", common_name: str = "test CA") -> tuple[Path, Path]:
    key = _new_key(key_kind)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return _write_pair(out_dir, "ca", cert, key)


def write_leaf(
    ca_pem: Path,
    ca_key_pem: Path,
    out_dir: Path,
    *,
    uri: str,
    name: str = "gateway",
    key_kind: KeyKind = "ec",
    not_after: dt.datetime | None = None,
) -> tuple[Path, Path]:
    ca_cert = x509.load_pem_x509_certificate(ca_pem.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_pem.read_bytes(), password=None)
    assert isinstance(ca_key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey))
    key = _new_key(key_kind)
    now = dt.datetime.now(dt.UTC)
    not_after = not_after or now + dt.timedelta(days=30)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(now, not_after) - dt.timedelta(days=1))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _write_pair(out_dir, name, cert, key)


def _new_key(key_kind: KeyKind) -> PrivateKey:
    if key_kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _write_pair(out_dir: Path, stem: str, cert: x509.Certificate, key: PrivateKey) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out_dir / f"{stem}.pem", out_dir / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path
