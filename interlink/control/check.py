"""`interlink check`: site files against their certificates and against each other.

`load_site` already validated each file on its own. Here we open the files it points at (this site's CA,
certificate and key, each peer's CA) and compare the files given together: two sites that name each other
as peers must agree on access domains and trust anchors, every import must match an export that allows
us, and listeners must not fight over a port. Every problem carries the `file:line` of the key to fix;
when the other side of a disagreement is in another file, the message names its `file:line` too.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from interlink.control.certs import parse_site_identity, site_identity_uri
from interlink.config import ExportConfig, HostPort, ImportConfig, MessageImportConfig, SiteConfig
from interlink.control.sitefile import Problem, SiteFileError, canonical_host, listen_addresses, load_site
from interlink.net.tls import certificate_refusal
from interlink.wire import message_link

__all__ = ["check_between", "check_certificates", "check_files", "check_shadow_providers"]

MAX_CHAIN_LENGTH = 4  # intermediates we follow from tls.cert up to tls.ca

T = TypeVar("T")


def check_files(paths: list[Path]) -> list[Problem]:
    """Every problem in these site files, alone and against each other; empty when all is well."""
    problems: list[Problem] = []
    sites: list[SiteConfig] = []
    for path in _distinct(paths):
        try:
            sites.append(load_site(path))
        except SiteFileError as exc:
            problems.extend(exc.problems)
    for site in sites:
        problems.extend(check_certificates(site))
        problems.extend(check_registry(site))
        problems.extend(check_shadow_providers(site))
    problems.extend(check_between(sites))
    return problems


def _distinct(paths: list[Path]) -> list[Path]:
    """The paths in order, each file once (the same file given twice would collide with itself)."""
    seen: set[Path] = set()
    distinct = []
    for path in paths:
        resolved = Path(path).expanduser().resolve()
        if resolved not in seen:
            seen.add(resolved)
            distinct.append(Path(path))
    return distinct


# --- one site and its files -----------------------------------------------------------------------------


def check_registry(site: SiteConfig) -> list[Problem]:
    """The `registry:` block: keys known for its kind, addresses, and exports that need a registry."""
    from interlink.control.registry_sync import RegistryConfigError, registry_settings

    try:
        registry_settings(site)
    except RegistryConfigError as exc:
        return [Problem(site.path, exc.line, f"{exc.key}: {exc.detail}")]
    return []


def check_shadow_providers(site: SiteConfig) -> list[Problem]:
    """Load-test calls go to an export's shadow_providers, real calls to its providers: never the same one."""
    problems: list[Problem] = []
    for index, export in enumerate(site.exports):
        real: dict[tuple[str, int], int] = {}  # (host, port) -> index of its first entry in providers
        for provider_index, address in enumerate(export.providers):
            real.setdefault((canonical_host(address.host), address.port), provider_index)
        for shadow_index, shadow in enumerate(export.shadow_providers):
            provider_index = real.get((canonical_host(shadow.host), shadow.port))
            if provider_index is None:
                continue
            key = f"exports[{index}].shadow_providers[{shadow_index}]"
            provider_key = f"exports[{index}].providers[{provider_index}]"
            provider_line = site.lines.get(provider_key)
            where = f"{provider_key} (line {provider_line})" if provider_line is not None else provider_key
            problems.append(
                Problem(
                    site.path,
                    site.lines.get(key) or site.lines.get(f"exports[{index}]"),
                    f"{key}: {shadow} is also {where}, but a shadow provider must not also serve real calls;"
                    " give load-test calls providers of their own, or remove it from one of the lists",
                )
            )
    return problems


class _UnusableFile(Exception):
    """A certificate or key file that cannot be used; the message says why and hints at the fix."""


def check_certificates(site: SiteConfig) -> list[Problem]:
    """This site's CA, certificate and key (present, matching, naming this site) and its peers' CAs."""
    problems: list[Problem] = []

    def report(key: str, message: str) -> None:
        problems.append(Problem(site.path, site.lines.get(key), f"{key}: {message}"))

    hint = _tls_hint(site)
    ca_certs = _load(report, "tls.ca", site.tls.ca, _read_certificates, hint)
    chain = _load(report, "tls.cert", site.tls.cert, _read_certificates, hint)
    key = _load(report, "tls.key", site.tls.key, _read_private_key, hint)

    if ca_certs is not None:
        for message in _ca_problems(ca_certs[0]):
            report("tls.ca", f"{site.tls.ca} {message}")
    if chain is not None:
        leaf = chain[0]
        for message in _validity_problems(leaf):
            report("tls.cert", f"{site.tls.cert} {message}; issue a new one with `interlink certs issue`")
        identity_problem = _identity_problem(leaf, site)
        if identity_problem is not None:
            report("tls.cert", identity_problem)
        if ca_certs is not None and not _chains_to(leaf, chain[1:], ca_certs):
            report(
                "tls.cert",
                f"{site.tls.cert} was not issued by the CA in tls.ca ({site.tls.ca}); use a gateway"
                " certificate signed by this site's CA (`interlink certs issue --ca DIR ...`), or point"
                " tls.ca at the CA that signed it",
            )
        if key is not None and not _key_matches(key, leaf):
            report(
                "tls.key",
                f"{site.tls.key} is not the private key of the certificate in tls.cert ({site.tls.cert});"
                " use the key that was created together with that certificate",
            )
    if not problems:
        # The judgement the gateway itself makes at start and reload (a rehearsed peer-link handshake):
        # whatever the checks above missed, check never says ok to a certificate the gateway refuses.
        refusal = certificate_refusal(site.tls.cert, site.tls.key, site.tls.ca, site=site.site,
                                      trust_domain=site.trust_domain)
        if refusal is not None:
            report("tls.cert", f"{site.tls.cert}: {refusal}")

    for name, peer in site.peers.items():
        peer_hint = f"copy {name}'s ca.pem here or fix the path"
        peer_certs = _load(report, f"peers.{name}.ca", peer.ca, _read_certificates, peer_hint)
        for certificate in peer_certs or ():  # a bundle may hold several CAs (a CA rotation)
            for message in _ca_problems(certificate):
                subject = f" ({certificate.subject.rfc4514_string()})" if len(peer_certs or ()) > 1 else ""
                report(f"peers.{name}.ca", f"{peer.ca}{subject} {message}")
    return problems


def _load(report: Callable[[str, str], None], key: str, path: Path, read: Callable[[Path], T], hint: str) -> T | None:
    """read(path), or None after reporting why the file cannot be used."""
    try:
        return read(path)
    except _UnusableFile as exc:
        report(key, f"{exc}; {hint}")
        return None


def _tls_hint(site: SiteConfig) -> str:
    """How to make a missing or broken tls file: a new site CA, or a new certificate from the existing one."""
    if site.tls.ca.is_file():
        command = f"interlink certs issue --ca {site.tls.ca.parent} --site {site.site} --out {site.tls.cert.parent}"
    else:
        command = f"interlink certs init-site {site.site} --out {site.tls.ca.parent}"
    if site.trust_domain != "interlink":
        command += f" --trust-domain {site.trust_domain}"
    return f"make it with `{command}` or fix the path"


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise _UnusableFile(f"{path} does not exist")
    if not path.is_file():
        raise _UnusableFile(f"{path} is not a file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _UnusableFile(f"{path} cannot be read ({exc.strerror or exc})") from None


def _read_certificates(path: Path) -> list[x509.Certificate]:
    """All PEM certificates in a file, the first one being the one that matters."""
    data = _read_bytes(path)
    if b"PRIVATE KEY-----" in data:
        raise _UnusableFile(f"{path} holds a private key, not a certificate (are cert and key swapped?)")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise _UnusableFile(f"{path} does not hold a PEM certificate (-----BEGIN CERTIFICATE-----)") from None


def _read_private_key(path: Path) -> PrivateKeyTypes:
    data = _read_bytes(path)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise _UnusableFile(f"{path} is encrypted; interlink needs an unencrypted PEM key") from None
    except (ValueError, UnsupportedAlgorithm):
        if b"BEGIN CERTIFICATE" in data:
            raise _UnusableFile(f"{path} holds a certificate, not a private key (are cert and key swapped?)") from None
        raise _UnusableFile(f"{path} does not hold a PEM private key (-----BEGIN PRIVATE KEY-----)") from None


def _ca_problems(ca: x509.Certificate) -> list[str]:
    problems = _validity_problems(ca)
    try:
        is_ca = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = True  # an old-style root without extensions; signature checks still apply
    if not is_ca:
        problems.append("is not a CA certificate (BasicConstraints CA:false); point it at the site's ca.pem")
    return problems


def _validity_problems(cert: x509.Certificate) -> list[str]:
    now = dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc <= now:
        return [f"expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"]
    if cert.not_valid_before_utc > now:
        return [f"is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (check the clock)"]
    return []


def _identity_problem(leaf: x509.Certificate, site: SiteConfig) -> str | None:
    """None if the certificate carries this site's URI SAN, else what is wrong with it."""
    expected = site_identity_uri(site.trust_domain, site.site)
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if expected in uris:
        return None
    trust_flag = f" --trust-domain {site.trust_domain}" if site.trust_domain != "interlink" else ""
    fix = f"issue one with `interlink certs issue --ca DIR --site {site.site}{trust_flag} --out DIR2`"
    identities = [uri for uri in uris if parse_site_identity(uri) is not None]
    if identities:
        return (
            f"{site.tls.cert} names {identities[0]} but this file is for site {site.site} ({expected});"
            f" use this site's own certificate, or {fix}"
        )
    return f"{site.tls.cert} has no URI SAN {expected}, so peers cannot tell which site it is; {fix}"


def _chains_to(leaf: x509.Certificate, intermediates: list[x509.Certificate], anchors: list[x509.Certificate]) -> bool:
    """True if `leaf` was signed by an anchor, directly or through intermediates from the cert file."""
    current, remaining = leaf, list(intermediates)
    for _ in range(MAX_CHAIN_LENGTH + 1):
        if any(_issued_by(current, anchor) for anchor in anchors):
            return True
        parent = next((cert for cert in remaining if _issued_by(current, cert)), None)
        if parent is None:
            return False
        remaining.remove(parent)
        current = parent
    return False


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Issuer name matches and the signature verifies with the issuer's key (EC, RSA or Ed25519)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _key_matches(key: PrivateKeyTypes, cert: x509.Certificate) -> bool:
    def spki(public_key: object) -> bytes:
        return public_key.public_bytes(  # type: ignore[attr-defined, no-any-return]
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    return spki(key.public_key()) == spki(cert.public_key())


# --- files against each other ---------------------------------------------------------------------------


def check_between(sites: list[SiteConfig]) -> list[Problem]:
    """Problems between site files that are checked together (each already loaded on its own)."""
    problems = list(_repeated_sites(sites))
    for ours in sites:
        for theirs in sites:
            if theirs is not ours and theirs.site in ours.peers:
                problems.extend(_check_peering(ours, theirs))
    problems.extend(_listen_collisions(sites))
    return problems


def _at(site: SiteConfig, key: str) -> str:
    """`file:line` of a key, for naming the other side of a disagreement."""
    line = site.lines.get(key)
    return f"{site.path}:{line}" if line is not None else str(site.path)


def _problem(site: SiteConfig, key: str, message: str, *, line_key: str | None = None) -> Problem:
    line = site.lines.get(line_key or key)
    return Problem(site.path, line, f"{key}: {message}")


def _repeated_sites(sites: list[SiteConfig]) -> Iterator[Problem]:
    first_file: dict[str, SiteConfig] = {}
    for site in sites:
        if site.site in first_file:
            yield _problem(
                site,
                "site",
                f"{site.site} is also the site of {_at(first_file[site.site], 'site')}; give each site one"
                " file, or check these files separately",
            )
        else:
            first_file[site.site] = site


def _check_peering(ours: SiteConfig, theirs: SiteConfig) -> Iterator[Problem]:
    """`ours` lists `theirs` as a peer: check what `ours` says against `theirs`' own file."""
    if ours.site not in theirs.peers:
        yield _problem(
            ours,
            f"peers.{theirs.site}",
            f"{theirs.site} ({theirs.path}) does not list {ours.site} under peers; add peers.{ours.site}"
            f" (endpoints, ca, domain) to {theirs.path}",
        )
    else:
        yield from _check_access_domain(ours, theirs)
        yield from _check_peer_endpoints(ours, theirs)
    yield from _check_peer_ca(ours, theirs)
    for index, imported in enumerate(ours.imports):
        if theirs.site in imported.sites:
            yield from _check_import(ours, index, imported, theirs)
    if ours.messaging is not None:
        for index, item in enumerate(ours.messaging.imports):
            if item.to == theirs.site:
                yield from _check_message_import(ours, index, item, theirs)


def _check_access_domain(ours: SiteConfig, theirs: SiteConfig) -> Iterator[Problem]:
    """The domain we give them (our `domains`) is the one they use to call us (their `peers.<us>.domain`)."""
    used_key = f"peers.{ours.site}.domain"
    used = theirs.peers[ours.site].domain
    given = ours.domains.get(theirs.site)
    if given is None:
        yield Problem(
            ours.path,
            ours.lines.get("domains") or ours.lines.get(f"peers.{theirs.site}"),
            f"domains has no entry for {theirs.site}, but {_at(theirs, used_key)}: {used_key} is {used};"
            f" add domains.{theirs.site}: {used}",
        )
    elif given != used:
        yield _problem(
            ours,
            f"domains.{theirs.site}",
            f"is {given} but {_at(theirs, used_key)}: {used_key} is {used}; they must be the same string",
        )


def _check_peer_endpoints(ours: SiteConfig, theirs: SiteConfig) -> Iterator[Problem]:
    """On loopback (one machine, no NAT) their endpoints for us must include our listen.peer port."""
    listen = ours.listen.peer
    endpoints = theirs.peers[ours.site].endpoints
    if listen is None or not _is_local(listen.host) or not all(_is_loopback(e.host) for e in endpoints):
        return
    if any(endpoint.port == listen.port for endpoint in endpoints):
        return
    key = f"peers.{ours.site}.endpoints"
    yield _problem(
        theirs,
        key,
        f"{', '.join(map(str, endpoints))} does not reach {ours.site}, which listens for peers on"
        f" {_at(ours, 'listen.peer')}: listen.peer {listen}; use that port",
    )


def _check_peer_ca(ours: SiteConfig, theirs: SiteConfig) -> Iterator[Problem]:
    """The CA we pinned for them is the CA that signs their gateways (files that cannot be read were
    reported by check_certificates already)."""
    pinned_path = ours.peers[theirs.site].ca
    try:
        pinned = {cert.public_bytes(serialization.Encoding.DER) for cert in _read_certificates(pinned_path)}
        actual = [cert.public_bytes(serialization.Encoding.DER) for cert in _read_certificates(theirs.tls.ca)]
    except _UnusableFile:
        return
    key = f"peers.{theirs.site}.ca"
    if not any(der in pinned for der in actual):
        yield _problem(
            ours,
            key,
            f"{pinned_path} is not {theirs.site}'s CA: {_at(theirs, 'tls.ca')}: tls.ca is {theirs.tls.ca},"
            " a different certificate; copy that file here",
        )
        return
    # What our gateway will do with their certificate on the peer link (the same judgement, rehearsed).
    refusal = certificate_refusal(theirs.tls.cert, theirs.tls.key, pinned_path, site=theirs.site,
                                  trust_domain=ours.trust_domain)
    if refusal is not None:
        yield _problem(
            ours,
            key,
            f"{theirs.site}'s gateway certificate ({_at(theirs, 'tls.cert')}: {theirs.tls.cert}) would be refused: "
            f"{refusal}; add the CA that issued it to {pinned_path}",
        )


def _check_import(ours: SiteConfig, index: int, imported: ImportConfig, theirs: SiteConfig) -> Iterator[Problem]:
    """An import must match an export of the peer (same service and version) that allows us."""
    key = f"imports[{index}]"
    same_service = [(i, export) for i, export in enumerate(theirs.exports) if export.service == imported.service]
    if not same_service:
        yield _problem(
            ours,
            key,
            f"{theirs.site} ({theirs.path}) exports no service {imported.service}; add it to {theirs.site}'s"
            f" exports with allow: [{ours.site}], or fix the service name",
        )
        return
    matches = [(i, export) for i, export in same_service if export.version == imported.version]
    if not matches:
        offered = ", ".join(_version_text(export.version) for _, export in same_service)
        yield _problem(
            ours,
            key,
            f"{theirs.site} exports {imported.service} as {offered}, not {_version_text(imported.version)}"
            f" ({_at(theirs, f'exports[{same_service[0][0]}]')}); set imports[{index}].version to match",
        )
        return
    if not any(ours.site in export.allow for _, export in matches):
        export_index, export = matches[0]
        yield _problem(
            ours,
            key,
            f"{theirs.site}'s export of {_export_name(export)} ({_at(theirs, f'exports[{export_index}]')})"
            f" does not allow {ours.site}; add {ours.site} to exports[{export_index}].allow in {theirs.path}",
        )


def _check_message_import(ours: SiteConfig, index: int, item: MessageImportConfig,
                          theirs: SiteConfig) -> Iterator[Problem]:
    """Messages sent to a peer must be exported there to us, or every one of them is dead-lettered. A wildcard
    import is fine when some export of theirs overlaps it (what it does not cover is dead-lettered)."""
    key = f"messaging.imports[{index}]"
    exports = theirs.messaging.exports if theirs.messaging is not None else ()
    overlapping = [(i, export) for i, export in enumerate(exports)
                   if message_link.subjects_overlap(export.subject, item.subject)]
    if not overlapping:
        yield _problem(ours, key, f"{theirs.site} ({theirs.path}) exports no messages of subject {item.subject}, so "
                       f"every one would be dead-lettered; add it to {theirs.site}'s messaging.exports with allow: "
                       f"[{ours.site}], or fix the subject")
    elif not any(ours.site in export.allow for _, export in overlapping):
        export_index = overlapping[0][0]
        yield _problem(ours, key, f"{theirs.site}'s messaging.exports[{export_index}] ("
                       f"{_at(theirs, f'messaging.exports[{export_index}]')}) does not allow {ours.site}; add "
                       f"{ours.site} to its allow in {theirs.path}")


def _version_text(version: str | None) -> str:
    return f"version {version}" if version is not None else "no version"


def _export_name(export: ExportConfig) -> str:
    return f"{export.service} {export.version}" if export.version is not None else export.service


def _listen_collisions(sites: list[SiteConfig]) -> Iterator[Problem]:
    """Listeners of different files on the very same address and port cannot both bind.

    Only identical addresses count: two files that both listen on 0.0.0.0:8443 are normally two machines,
    but two that both say 127.0.0.1:8443 (or 10.0.0.5:8443) are on one.
    """
    for later_index, later in enumerate(sites):
        for earlier in sites[:later_index]:
            for later_key, later_address in listen_addresses(later.listen):
                for earlier_key, earlier_address in listen_addresses(earlier.listen):
                    if _same_address(later_address, earlier_address):
                        yield _problem(
                            later,
                            f"listen.{later_key}",
                            f"{later_address} is also {_at(earlier, f'listen.{earlier_key}')}:"
                            f" listen.{earlier_key}; gateways on one host need different ports",
                        )


def _same_address(a: HostPort, b: HostPort) -> bool:
    host_a, host_b = canonical_host(a.host), canonical_host(b.host)
    return a.port == b.port and host_a == host_b and host_a not in ("0.0.0.0", "::")


def _is_loopback(host: str) -> bool:
    host = canonical_host(host)
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_local(host: str) -> bool:
    """A listen host that accepts loopback connections: a loopback address or a wildcard."""
    return _is_loopback(host) or canonical_host(host) in ("0.0.0.0", "::")
