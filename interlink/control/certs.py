"""Per-site certificate authority and gateway certificates (`interlink certs`).

Each site has its own CA. A gateway certificate carries the site identity as a URI SAN,
`spiffe://<trust_domain>/site/<site>`, plus the gateway's DNS names and IP addresses. A peer believes that
identity only when the certificate chains to the CA it pinned for that very site (see certs/README.md).

Files are written atomically (temporary file in the same folder, then rename), so a crash never leaves a
half-written key behind; private keys are created with mode 0600 and are never readable by anyone else,
not even for an instant.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TypedDict

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from interlink.model import SITE_NAME, TRUST_DOMAIN, SiteIdentity

__all__ = [
    "CertError",
    "CertSummary",
    "SitePaths",
    "check_site_name",
    "check_trust_domain",
    "describe",
    "init_site",
    "issue",
    "parse_site_identity",
    "site_identity_uri",
]

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
CERT_MODE = 0o644
KEY_MODE = 0o600
DIR_MODE = 0o700
CLOCK_SKEW = dt.timedelta(minutes=5)  # not-before is backdated by this much
ORGANIZATION = "interlink"

# Site names and trust domains follow the model's rules (one definition, used by certificates and peers).
_DNS_LABEL = SITE_NAME
_TRUST_DOMAIN = TRUST_DOMAIN
_MAX_COMMON_NAME = 64  # X.520 upper bound; cryptography refuses longer common names


class CertError(Exception):
    """A certificate could not be created or read; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class SitePaths:
    ca: Path  # the site's CA certificate (give this to peers)
    ca_key: Path  # the site's CA private key (keep it off the gateways if you can)
    cert: Path  # the gateway certificate (leaf only)
    key: Path  # the gateway private key


class CertSummary(TypedDict):
    subject: str
    issuer: str
    uris: list[str]
    dns_names: list[str]
    ip_addresses: list[str]
    not_before: dt.datetime
    not_after: dt.datetime
    days_left: int  # whole days until not_after; negative once expired


# --- identity -------------------------------------------------------------------------------------------


def check_site_name(site: str) -> str:
    """Return `site` if it is a valid site name (one DNS label), else raise CertError."""
    if _DNS_LABEL.fullmatch(site):
        return site
    if site.lower() != site and _DNS_LABEL.fullmatch(site.lower()):
        raise CertError(f"site name {site!r} must be lowercase (try {site.lower()!r})")
    raise CertError(
        f"site name {site!r} is not a DNS label: use 1 to 63 lowercase letters, digits and '-',"
        " starting and ending with a letter or digit (e.g. 'site-a')"
    )


def check_trust_domain(trust_domain: str) -> str:
    """Return `trust_domain` if it is a valid SPIFFE trust domain name, else raise CertError."""
    if _TRUST_DOMAIN.fullmatch(trust_domain):
        return trust_domain
    raise CertError(
        f"trust domain {trust_domain!r} is not valid: use 1 to 255 lowercase letters, digits, '.', '-'"
        " and '_', starting and ending with a letter or digit (e.g. 'interlink' or 'corp.example')"
    )


def site_identity_uri(trust_domain: str, site: str) -> str:
    """The URI SAN that names a site: `spiffe://<trust_domain>/site/<site>`."""
    return f"spiffe://{check_trust_domain(trust_domain)}/site/{check_site_name(site)}"


def parse_site_identity(uri: str) -> tuple[str, str] | None:
    """(trust_domain, site) for a URI of exactly the shape `spiffe://TD/site/NAME`, else None.

    Strict on purpose: no port, user info, query, fragment, percent-encoding, extra path segments,
    trailing slash or upper case. Whatever it accepts, `site_identity_uri` formats back identically.
    """
    identity = SiteIdentity.from_uri(uri)
    return None if identity is None else (identity.trust_domain, identity.site)


def _split_names(
    dns_names: Sequence[str],
) -> tuple[list[str], list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    """Split --dns values into host names (lowercased) and IP addresses, dropping repeats."""
    if isinstance(dns_names, str):  # a lone string would be split into characters
        raise CertError(f"dns_names must be a list of names, not the string {dns_names!r}")
    hosts: list[str] = []
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for entry in dns_names:
        try:
            ip = ipaddress.ip_address(entry)
        except ValueError:
            host = _check_host_name(entry)
            if host not in hosts:
                hosts.append(host)
        else:
            if ip not in ips:
                ips.append(ip)
    return hosts, ips


def _check_host_name(name: str) -> str:
    host = name.lower()
    labels = host.split(".")
    if labels[0] == "*" and len(labels) > 2:  # a wildcard may only be the whole leftmost label
        labels = labels[1:]
    if len(host) <= 253 and all(_DNS_LABEL.fullmatch(label) for label in labels):
        return host
    hint = " (leave out the trailing dot)" if host.endswith(".") else ""
    raise CertError(
        f"--dns {name!r} is neither an IP address nor a host name{hint}: use dot-separated labels of"
        " letters, digits and '-' (e.g. 'gw1.site-a.example'), optionally starting with '*.'"
    )


def _check_days(days: int, what: str) -> None:
    if days < 1:
        raise CertError(f"{what} must be at least 1 day, got {days}")


# --- issuing --------------------------------------------------------------------------------------------


def init_site(
    name: str,
    out_dir: Path,
    dns_names: Sequence[str] = (),
    trust_domain: str = "interlink",
    *,
    ca_days: int = 3650,
    leaf_days: int = 397,
) -> SitePaths:
    """Create a new site CA in `out_dir` (ca.pem, ca.key) and a first gateway certificate with it.

    Refuses to touch an existing CA: a site's CA is what its peers pinned, replacing it by accident would
    cut every link.
    """
    out_dir = Path(out_dir)
    identity = site_identity_uri(trust_domain, name)
    _split_names(dns_names)  # refuse bad names before anything is written
    _check_days(ca_days, "ca_days")
    _check_days(leaf_days, "leaf_days")
    ca_cert_path, ca_key_path = out_dir / CA_CERT_FILE, out_dir / CA_KEY_FILE
    for existing in (ca_cert_path, ca_key_path):
        if existing.exists():
            raise CertError(_ca_exists_message(existing))

    _make_private_dir(out_dir)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _build_ca(name, identity, ca_key, ca_days)
    # Key first: if we stop between the two, a rerun still refuses (ca.key exists) rather than leave a
    # CA certificate whose key is lost.
    for path, data, mode in (
        (ca_key_path, _key_pem(ca_key), KEY_MODE),
        (ca_cert_path, ca_cert.public_bytes(serialization.Encoding.PEM), CERT_MODE),
    ):
        try:
            _write_atomic(path, data, mode, replace=False)
        except FileExistsError as exc:  # created by someone else since the check above
            raise CertError(_ca_exists_message(path)) from exc
    return issue(out_dir, name, out_dir, dns_names, trust_domain, days=leaf_days)


def issue(
    ca_dir: Path,
    site: str,
    out_dir: Path,
    dns_names: Sequence[str] = (),
    trust_domain: str = "interlink",
    *,
    days: int = 397,
    name: str = "gateway",
) -> SitePaths:
    """Issue a gateway certificate `<name>.pem` + `<name>.key` in `out_dir`, signed by the CA in `ca_dir`.

    An existing `<name>.pem`/`<name>.key` pair is replaced (that is how a gateway certificate is rotated):
    each file atomically, the key first and the certificate a moment later, so reload the gateway only
    after this returns.
    """
    ca_dir, out_dir = Path(ca_dir), Path(out_dir)
    identity = site_identity_uri(trust_domain, site)
    hosts, ips = _split_names(dns_names)
    _check_days(days, "days")
    if not _DNS_LABEL.fullmatch(name) or name == "ca":
        raise CertError(
            f"--name {name!r} is not usable as a file name here: use lowercase letters, digits and '-'"
            " (e.g. 'gateway-2'), and not 'ca'"
        )

    ca_cert_path, ca_key_path = ca_dir / CA_CERT_FILE, ca_dir / CA_KEY_FILE
    ca_cert, ca_key = _load_ca(ca_cert_path, ca_key_path)
    _check_ca_identity(ca_cert, ca_cert_path, identity)

    now = dt.datetime.now(dt.timezone.utc)
    ca_expiry = ca_cert.not_valid_after_utc
    if ca_expiry <= now:
        raise CertError(f"the CA in {ca_cert_path} expired on {ca_expiry:%Y-%m-%d}; rotate it")
    # A leaf cannot be valid longer than its CA: end it with the CA rather than issue a certificate that
    # fails verification in its last months.
    not_after = min(now + dt.timedelta(days=days), ca_expiry)

    key = ec.generate_private_key(ec.SECP256R1())
    common_name = _common_name(hosts[0] if hosts else f"{site} gateway", fallback=site)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity)]
    sans += [x509.DNSName(host) for host in hosts]
    sans += [x509.IPAddress(ip) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_id(ca_cert, ca_key), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    _make_private_dir(out_dir)
    cert_path, key_path = out_dir / f"{name}.pem", out_dir / f"{name}.key"
    _write_atomic(key_path, _key_pem(key), KEY_MODE, replace=True)
    _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), CERT_MODE, replace=True)
    return SitePaths(ca=ca_cert_path, ca_key=ca_key_path, cert=cert_path, key=key_path)


def describe(cert_path: Path, *, now: dt.datetime | None = None) -> CertSummary:
    """What an operator wants to know about a certificate file (the first certificate in it)."""
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    except OSError as exc:
        raise CertError(f"cannot read certificate {cert_path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise CertError(f"{cert_path} does not hold a PEM certificate: {exc}") from exc
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    now = now or dt.datetime.now(dt.timezone.utc)
    return CertSummary(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        uris=san.get_values_for_type(x509.UniformResourceIdentifier),
        dns_names=san.get_values_for_type(x509.DNSName),
        ip_addresses=[str(ip) for ip in san.get_values_for_type(x509.IPAddress)],
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        days_left=(cert.not_valid_after_utc - now).days,
    )


# --- building blocks ------------------------------------------------------------------------------------


def _build_ca(site: str, identity: str, key: ec.EllipticCurvePrivateKey, days: int) -> x509.Certificate:
    subject = _name(_common_name(f"interlink {site} CA", fallback=site))
    now = dt.datetime.now(dt.timezone.utc)
    public_key = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False)
        # Names the site this CA belongs to, so that `issue` can refuse to sign another site's identity.
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=False
        )
        .sign(key, hashes.SHA256())
    )


def _load_ca(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
    except FileNotFoundError as exc:
        raise CertError(
            f"{exc.filename} not found: --ca must be the folder made by `interlink certs init-site`"
        ) from exc
    except OSError as exc:
        raise CertError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise CertError(f"{cert_path} does not hold a PEM certificate: {exc}") from exc
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError as exc:
        raise CertError(f"{key_path} is encrypted; interlink needs an unencrypted PKCS8 key") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CertError(f"{key_path} does not hold a PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{key_path} is not an EC key; interlink CAs use EC P-256")
    if key.public_key() != cert.public_key():
        raise CertError(f"{key_path} is not the key of {cert_path}")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise CertError(f"{cert_path} is not a CA certificate (BasicConstraints CA:true missing)")
    return cert, key


def _check_ca_identity(ca_cert: x509.Certificate, ca_cert_path: Path, identity: str) -> None:
    """Refuse to sign a site identity with another site's CA (a CA without a site URI is not checked)."""
    try:
        san = ca_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return
    own = [uri for uri in san.get_values_for_type(x509.UniformResourceIdentifier) if parse_site_identity(uri)]
    if own and identity not in own:
        raise CertError(
            f"the CA in {ca_cert_path} belongs to {own[0]}, not {identity}: issue with that site's CA,"
            " or fix --site/--trust-domain"
        )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        ]
    )


def _common_name(preferred: str, *, fallback: str) -> str:
    # The CN is informational (identity lives in the SAN) but X.520 caps it at 64 characters.
    return preferred if len(preferred) <= _MAX_COMMON_NAME else fallback[:_MAX_COMMON_NAME]


def _key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _authority_key_id(
    ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
) -> x509.AuthorityKeyIdentifier:
    # Copy the CA's own key identifier when it has one: path building matches AKI against SKI.
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _ca_exists_message(path: Path) -> str:
    return (
        f"{path} already exists: this folder already holds a site CA and init-site never replaces one."
        " To add a gateway of that site use `interlink certs issue --ca "
        f"{path.parent} ...`; to create a new site choose another --out"
    )


# --- files ----------------------------------------------------------------------------------------------


def _make_private_dir(path: Path) -> None:
    """Create `path` with mode 0700 if it does not exist (an existing folder keeps its mode)."""
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise CertError(f"{path} exists and is not a folder") from exc
    except OSError as exc:
        raise CertError(f"cannot create {path}: {exc.strerror}") from exc


def _write_atomic(path: Path, data: bytes, mode: int, *, replace: bool) -> None:
    """Write `data` to `path` via a temporary file in the same folder.

    The temporary file is created with `mode` (and set to exactly `mode` before any byte is written, so a
    restrictive umask cannot lock the owner out), flushed to disk, then renamed into place. With
    replace=False an existing `path` is never touched and FileExistsError is raised.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, mode)
        try:
            with os.fdopen(fd, "wb") as file:
                os.fchmod(file.fileno(), mode)
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            if replace:
                os.replace(tmp, path)
            else:
                os.link(tmp, path)  # fails if `path` exists, unlike rename
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)
    except FileExistsError:
        raise
    except OSError as exc:
        raise CertError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
