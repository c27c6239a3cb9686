"""`check_files`: site files against their certificates and against each other."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest

from interlink.control.certs import SitePaths, issue
from interlink.control.check import check_files
from interlink.control.sitefile import Problem

WriteSite = Callable[[str, str], Path]
MakeSiteCerts = Callable[..., SitePaths]
MakeCertPair = Callable[..., tuple[Path, Path]]  # -> (certificate, key)

SITE_A = """\
site: site-a
listen:
  triple: 127.0.0.1:50051
  bolt: 127.0.0.1:12200
  peer: 127.0.0.1:8443
tls: {ca: certs/site-a/ca.pem, cert: certs/site-a/gateway.pem, key: certs/site-a/gateway.key}
peers:
  site-b:
    endpoints: [127.0.0.1:9443]
    ca: certs/site-b/ca.pem
    domain: site-a.gw.site-b.test
domains:
  site-b: site-b.gw.site-a.test
exports:
  - service: com.example.EchoService
    version: "1.0"
    providers: [127.0.0.1:50061]
    allow:
      site-b: {apps: [order-app]}
imports:
  - service: com.example.PaymentService
    from: site-b
    protocol: bolt
"""

SITE_B = """\
site: site-b
listen:
  triple: 127.0.0.1:50052
  bolt: 127.0.0.1:12201
  peer: 127.0.0.1:9443
tls: {ca: certs/site-b/ca.pem, cert: certs/site-b/gateway.pem, key: certs/site-b/gateway.key}
peers:
  site-a:
    endpoints: [127.0.0.1:8443]
    ca: certs/site-a/ca.pem
    domain: site-b.gw.site-a.test
domains:
  site-a: site-a.gw.site-b.test
exports:
  - service: com.example.PaymentService
    protocol: bolt
    providers: [127.0.0.1:12300]
    allow: [site-a]
imports:
  - service: com.example.EchoService
    version: "1.0"
    from: site-a
"""

LONELY_SITE_B = """\
site: site-b
listen: {triple: 127.0.0.1:50052}
tls: {ca: certs/site-b/ca.pem, cert: certs/site-b/gateway.pem, key: certs/site-b/gateway.key}
"""


@pytest.fixture
def certs(make_site_certs: MakeSiteCerts) -> dict[str, SitePaths]:
    """CAs and gateway certificates for site-a and site-b under tmp_path/certs/."""
    return {name: make_site_certs(name) for name in ("site-a", "site-b")}


def line_of(text: str, needle: str) -> int:
    assert text.count(needle) == 1, f"{needle!r} occurs {text.count(needle)} times"
    return text[: text.index(needle)].count("\n") + 1


def replaced(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times"
    return text.replace(old, new)


def lines_and_messages(problems: list[Problem]) -> list[tuple[Path, int | None, str]]:
    return [(problem.file, problem.line, problem.message) for problem in problems]


# --- all well -------------------------------------------------------------------------------------------


def test_a_good_pair_has_no_problems(certs: dict[str, SitePaths], write_site: WriteSite) -> None:
    paths = [write_site("site-a", SITE_A), write_site("site-b", SITE_B)]

    assert check_files(paths) == []


def test_one_good_file_alone_has_no_problems(certs: dict[str, SitePaths], write_site: WriteSite) -> None:
    assert check_files([write_site("site-a", SITE_A)]) == []


def test_the_same_file_twice_does_not_collide_with_itself(certs: dict[str, SitePaths], write_site: WriteSite) -> None:
    path = write_site("site-a", SITE_A)

    assert check_files([path, path]) == []


def test_rsa_ca_and_certificate_are_accepted(
    certs: dict[str, SitePaths], write_site: WriteSite, tmp_path: Path, make_ca: MakeCertPair, make_leaf: MakeCertPair
) -> None:
    ca_pem, ca_key = make_ca(tmp_path / "rsa", key_kind="rsa")
    make_leaf(ca_pem, ca_key, tmp_path / "rsa", uri="spiffe://interlink/site/site-a", key_kind="rsa")
    text = replaced(
        SITE_A,
        "tls: {ca: certs/site-a/ca.pem, cert: certs/site-a/gateway.pem, key: certs/site-a/gateway.key}",
        "tls: {ca: rsa/ca.pem, cert: rsa/gateway.pem, key: rsa/gateway.key}",
    )

    assert check_files([write_site("site-a", text)]) == []


# --- one site and its certificates ----------------------------------------------------------------------


def test_certificate_naming_another_site_is_refused(
    certs: dict[str, SitePaths], write_site: WriteSite, tmp_path: Path, make_leaf: MakeCertPair
) -> None:
    site_a = certs["site-a"]
    make_leaf(site_a.ca, site_a.ca_key, tmp_path / "wrong", uri="spiffe://interlink/site/site-b")
    text = replaced(
        SITE_A,
        "cert: certs/site-a/gateway.pem, key: certs/site-a/gateway.key",
        "cert: wrong/gateway.pem, key: wrong/gateway.key",
    )
    path = write_site("site-a", text)

    problems = check_files([path])

    assert lines_and_messages(problems) == [
        (
            path,
            line_of(text, "tls:"),
            f"tls.cert: {tmp_path / 'wrong/gateway.pem'} names spiffe://interlink/site/site-b but this file is for"
            " site site-a (spiffe://interlink/site/site-a); use this site's own certificate, or issue one with"
            " `interlink certs issue --ca DIR --site site-a --out DIR2`",
        )
    ]


def test_certificate_of_another_trust_domain_is_refused(certs: dict[str, SitePaths], write_site: WriteSite) -> None:
    text = "trust_domain: corp.example\n" + SITE_A
    path = write_site("site-a", text)

    problems = check_files([path])

    assert len(problems) == 1
    assert problems[0].line == line_of(text, "tls:")
    assert "names spiffe://interlink/site/site-a but this file is for site site-a" in problems[0].message
    assert "--trust-domain corp.example" in problems[0].message


def test_key_that_does_not_match_the_certificate_is_refused(
    certs: dict[str, SitePaths], write_site: WriteSite, tmp_path: Path
) -> None:
    issue(tmp_path / "certs/site-a", "site-a", tmp_path / "other", name="gateway-2")
    text = SITE_A.replace("key: certs/site-a/gateway.key}", "key: other/gateway-2.key}")
    path = write_site("site-a", text)

    problems = check_files([path])

    assert lines_and_messages(problems) == [
        (
            path,
            line_of(text, "tls:"),
            f"tls.key: {tmp_path / 'other/gateway-2.key'} is not the private key of the certificate in tls.cert"
            f" ({tmp_path / 'certs/site-a/gateway.pem'}); use the key that was created together with that"
            " certificate",
        )
    ]


def test_certificate_from_another_ca_is_refused(certs: dict[str, SitePaths], write_site: WriteSite) -> None:
    text = SITE_A.replace("tls: {ca: certs/site-a/ca.pem", "tls: {ca: certs/site-b/ca.pem")

    problems = check_files([write_site("site-a", text)])

    assert len(problems) == 1
    assert problems[0].message.startswith("tls.cert: ")
    assert "was not issued by the CA in tls.ca" in problems[0].message


def test_rsa_certificate_from_another_rsa_ca_is_refused(
    certs: dict[str, SitePaths], write_site: WriteSite, tmp_path: Path, make_ca: MakeCertPair, make_leaf: MakeCertPair
) -> None:
    make_ca(tmp_path / "rsa", key_kind="rsa")
    other_pem, other_key = make_ca(tmp_path / "rsa-other", key_kind="rsa")  # same subject name, other key
    make_leaf(other_pem, other_key, tmp_path / "rsa", uri="spiffe://interlink/site/site-a", key_kind="rsa")
    text = replaced(
        SITE_A,
        "tls: {ca: certs/site-a/ca.pem, cert: certs/site-a/gateway.pem, key: certs/site-a/gateway.key}",
        "tls: {ca: rsa/ca.pem, cert: rsa/gateway.pem, key: rsa/gateway.key}",
    )

    problems = check_files([write_site("site-a", text)])

    assert [problem.message.split(" was not issued by")[0] for problem in problems] == [
        f"tls.cert: {tmp_path / 'rsa/gateway.pem'}"
    ]


def test_expired_certificate_is_refused(
    certs: dict[str, SitePaths], write_site: WriteSite, tmp_path: Path, make_leaf: MakeCertPair
) -> None:
    site_a = certs["site-a"]
    yesterday = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    make_leaf(site_a.ca, site_a.ca_key, tmp_path / "old", uri="spiffe://interlink/site/site-a", not_after=yesterday)
    text = replaced(
        SITE_A,
        "cert: certs/site-a/gateway.pem, key: certs/site-a/gateway.key",
        "cert: old/gateway.pem, key: old/gateway.key",
    )

    problems = check_files([write_site("site-a", text)])

    assert len(problems) == 1
    assert f"{tmp_path / 'old/gateway.pem'} expired on {yesterday:%Y-%m-%d}" in problems[0].message


def test_missing_tls_file_names_the_command_that_makes_it(
    certs: dict[str, SitePaths], write_site: WriteSite, tmp_path: Path
) -> None:
    text = SITE_A.replace("ca: certs/site-a/ca.pem", "ca: certs/site-a/missing.pem")
    path = write_site("site-a", text)

    problems = check_files([path])

    assert lines_and_messages(problems) == [
        (
            path,
            line_of(text, "tls:"),
            f"tls.ca: {tmp_path / 'certs/site-a/missing.pem'} does not exist; make it with"
            f" `interlink certs init-site site-a --out {tmp_path / 'certs/site-a'}` or fix the path",
        )
    ]


def test_swapped_certificate_and_key_are_named(certs: dict[str, SitePaths], write_site: WriteSite) -> None:
    text = SITE_A.replace(
        "cert: certs/site-a/gateway.pem, key: certs/site-a/gateway.key",
        "cert: certs/site-a/gateway.key, key: certs/site-a/gateway.pem",
    )

    problems = check_files([write_site("site-a", text)])

    assert [problem.message.split(": ")[0] for problem in problems] == ["tls.cert", "tls.key"]
    assert all("(are cert and key swapped?)" in problem.message for problem in problems)


def test_missing_and_unparsable_peer_ca(certs: dict[str, SitePaths], write_site: WriteSite, tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    text = SITE_A.replace("ca: certs/site-b/ca.pem", "ca: junk.pem")
    path = write_site("site-a", text)

    problems = check_files([path])

    assert lines_and_messages(problems) == [
        (
            path,
            line_of(text, "ca: junk.pem"),
            f"peers.site-b.ca: {tmp_path / 'junk.pem'} does not hold a PEM certificate"
            " (-----BEGIN CERTIFICATE-----); copy site-b's ca.pem here or fix the path",
        )
    ]


# --- files against each other ---------------------------------------------------------------------------


def test_mismatched_access_domain_names_both_places(certs: dict[str, SitePaths], write_site: WriteSite) -> None:
    text_b = replaced(SITE_B, "domain: site-b.gw.site-a.test", "domain: b.gw.site-a.test")
    path_a, path_b = write_site("site-a", SITE_A), write_site("site-b", text_b)

    problems = check_files([path_a, path_b])

    line_a = line_of(SITE_A, "site-b: site-b.gw.site-a.test")
    line_b = line_of(text_b, "domain: b.gw.site-a.test")
    assert [str(problem) for problem in problems] == [
        f"{path_a}:{line_a}: domains.site-b: is site-b.gw.site-a.test but {path_b}:{line_b}:"
        " peers.site-a.domain is b.gw.site-a.test; they must be the same string"
    ]


def test_peer_must_list_us_back(certs: dict[str, SitePaths], write_site: WriteSite) -> None:
    path_a, path_b = write_site("site-a", SITE_A), write_site("site-b", LONELY_SITE_B)

    problems = check_files([path_a, path_b])

    assert lines_and_messages(problems)[0] == (
        path_a,
        line_of(SITE_A, "  site-b:\n    endpoints"),
        f"peers.site-b: site-b ({path_b}) does not list site-a under peers; add peers.site-a (endpoints, ca,"
        f" domain) to {path_b}",
    )


def test_pinned_peer_ca_must_be_the_peers_own_ca(
    certs: dict[str, SitePaths], make_site_certs: MakeSiteCerts, write_site: WriteSite, tmp_path: Path
) -> None:
    make_site_certs("site-c")
    text_a = SITE_A.replace("ca: certs/site-b/ca.pem", "ca: certs/site-c/ca.pem")
    path_a, path_b = write_site("site-a", text_a), write_site("site-b", SITE_B)

    problems = check_files([path_a, path_b])

    assert lines_and_messages(problems) == [
        (
            path_a,
            line_of(text_a, "ca: certs/site-c/ca.pem"),
            f"peers.site-b.ca: {tmp_path / 'certs/site-c/ca.pem'} is not site-b's CA: {path_b}:"
            f"{line_of(SITE_B, 'tls:')}: tls.ca is {tmp_path / 'certs/site-b/ca.pem'}, a different certificate;"
            " copy that file here",
        )
    ]


def test_import_needs_an_export_of_that_service(certs: dict[str, SitePaths], write_site: WriteSite) -> None:
    text_b = SITE_B.replace("service: com.example.PaymentService", "service: com.example.PayService")
    path_a, path_b = write_site("site-a", SITE_A), write_site("site-b", text_b)

    problems = check_files([path_a, path_b])

    assert lines_and_messages(problems) == [
        (
            path_a,
            line_of(SITE_A, "  - service: com.example.PaymentService"),
            f"imports[0]: site-b ({path_b}) exports no service com.example.PaymentService; add it to site-b's"
            " exports with allow: [site-a], or fix the service name",
        )
    ]


def test_import_needs_the_exported_version(certs: dict[str, SitePaths], write_site: WriteSite) -> None:
    text_b = SITE_B.replace('version: "1.0"', 'version: "2.0"')
    path_a, path_b = write_site("site-a", SITE_A), write_site("site-b", text_b)

    problems = check_files([path_a, path_b])

    assert lines_and_messages(problems) == [
        (
            path_b,
            line_of(text_b, "  - service: com.example.EchoService"),
            f"imports[0]: site-a exports com.example.EchoService as version 1.0, not version 2.0"
            f" ({path_a}:{line_of(SITE_A, '  - service: com.example.EchoService')}); set imports[0].version"
            " to match",
        )
    ]


def test_import_needs_an_export_that_allows_us(certs: dict[str, SitePaths], write_site: WriteSite) -> None:
    text_b = SITE_B.replace("allow: [site-a]", "allow: {}")
    path_a, path_b = write_site("site-a", SITE_A), write_site("site-b", text_b)

    problems = check_files([path_a, path_b])

    assert lines_and_messages(problems) == [
        (
            path_a,
            line_of(SITE_A, "  - service: com.example.PaymentService"),
            f"imports[0]: site-b's export of com.example.PaymentService ({path_b}:"
            f"{line_of(text_b, '  - service: com.example.PaymentService')}) does not allow site-a; add site-a to"
            f" exports[0].allow in {path_b}",
        )
    ]


def test_listeners_of_two_files_on_one_address_collide(certs: dict[str, SitePaths], write_site: WriteSite) -> None:
    text_b = SITE_B.replace("bolt: 127.0.0.1:12201", "bolt: localhost:12200")
    path_a, path_b = write_site("site-a", SITE_A), write_site("site-b", text_b)

    problems = check_files([path_a, path_b])

    assert lines_and_messages(problems) == [
        (
            path_b,
            line_of(text_b, "bolt: localhost:12200"),
            f"listen.bolt: localhost:12200 is also {path_a}:{line_of(SITE_A, 'bolt: 127.0.0.1:12200')}:"
            " listen.bolt; gateways on one host need different ports",
        )
    ]


def test_wildcard_listeners_of_two_files_may_be_two_machines(
    certs: dict[str, SitePaths], write_site: WriteSite
) -> None:
    text_a = SITE_A.replace("listen:\n", "listen:\n  admin: 0.0.0.0:9901\n")
    text_b = SITE_B.replace("listen:\n", "listen:\n  admin: 0.0.0.0:9901\n")

    assert check_files([write_site("site-a", text_a), write_site("site-b", text_b)]) == []


def test_loopback_endpoints_must_reach_the_peer_listener(certs: dict[str, SitePaths], write_site: WriteSite) -> None:
    text_b = SITE_B.replace("endpoints: [127.0.0.1:8443]", "endpoints: [127.0.0.1:8444]")
    path_a, path_b = write_site("site-a", SITE_A), write_site("site-b", text_b)

    problems = check_files([path_a, path_b])

    assert lines_and_messages(problems) == [
        (
            path_b,
            line_of(text_b, "endpoints: [127.0.0.1:8444]"),
            f"peers.site-a.endpoints: 127.0.0.1:8444 does not reach site-a, which listens for peers on"
            f" {path_a}:{line_of(SITE_A, 'peer: 127.0.0.1:8443')}: listen.peer 127.0.0.1:8443; use that port",
        )
    ]


def test_two_files_for_one_site(certs: dict[str, SitePaths], write_site: WriteSite) -> None:
    copy = SITE_A.replace("127.0.0.1:", "127.0.0.2:").replace(
        "endpoints: [127.0.0.2:9443]", "endpoints: [10.0.0.2:9443]"
    )
    path_a, path_copy = write_site("site-a", SITE_A), write_site("site-a-copy", copy)

    problems = check_files([path_a, path_copy])

    assert lines_and_messages(problems) == [
        (
            path_copy,
            1,
            f"site: site-a is also the site of {path_a}:1; give each site one file, or check these files separately",
        )
    ]


def test_site_file_problems_are_collected_with_the_rest(certs: dict[str, SitePaths], write_site: WriteSite) -> None:
    broken = write_site("broken", "site: broken\nlisten: {peer: 127.0.0.1}\ntls: {ca: a, cert: b, key: c}\n")
    text_a = SITE_A.replace("ca: certs/site-b/ca.pem", "ca: certs/site-b/nope.pem")
    path_a = write_site("site-a", text_a)

    problems = check_files([broken, path_a])

    assert [(problem.file, problem.line) for problem in problems] == [
        (broken, 2),
        (path_a, line_of(text_a, "nope.pem")),
    ]


# --- shadow providers -----------------------------------------------------------------------------------


def test_shadow_providers_of_their_own_are_fine(certs: dict[str, SitePaths], write_site: WriteSite) -> None:
    text = replaced(
        SITE_A,
        "    providers: [127.0.0.1:50061]\n",
        "    providers: [127.0.0.1:50061]\n    shadow_providers: [127.0.0.1:50071]\n",
    )

    assert check_files([write_site("site-a", text)]) == []


def test_shadow_provider_that_also_serves_real_calls_is_refused(
    certs: dict[str, SitePaths], write_site: WriteSite
) -> None:
    text = replaced(
        SITE_A,
        "    providers: [127.0.0.1:50061]\n",
        "    providers: [127.0.0.1:50061]\n    shadow_providers:\n      - 127.0.0.1:50071\n      - localhost:50061\n",
    )
    path = write_site("site-a", text)

    problems = check_files([path])

    assert lines_and_messages(problems) == [
        (
            path,
            line_of(text, "- localhost:50061"),
            "exports[0].shadow_providers[1]: localhost:50061 is also exports[0].providers[0] (line"
            f" {line_of(text, 'providers: [127.0.0.1:50061]')}), but a shadow provider must not also serve real"
            " calls; give load-test calls providers of their own, or remove it from one of the lists",
        )
    ]


MESSAGES_A = """\
messaging:
  broker: {kind: nats, url: "nats://127.0.0.1:4222"}
  imports:
    - subject: "stock.>"
      to: site-b
"""
MESSAGES_B = """\
messaging:
  broker: {kind: nats, url: "nats://127.0.0.1:4223"}
  exports:
    - subject: stock.changed
      stream: STOCK
      allow: [site-a]
"""


def test_message_imports_match_a_message_export_that_allows_us(certs: dict[str, SitePaths],
                                                                 write_site: WriteSite) -> None:
    path_a, path_b = write_site("site-a", SITE_A + MESSAGES_A), write_site("site-b", SITE_B + MESSAGES_B)
    assert check_files([path_a, path_b]) == []  # a wildcard import that some export overlaps


@pytest.mark.parametrize("edit, words", [
    (("subject: stock.changed", "subject: orders.created"), "site-b ({b}) exports no messages of subject stock.>, "
     "so every one would be dead-lettered; add it to site-b's messaging.exports with allow: [site-a], or fix the subject"),
    (("allow: [site-a]", "allow: {}"), "site-b's messaging.exports[0] ({b}:{line}) does not allow site-a; add site-a "
     "to its allow in {b}"),
])
def test_message_imports_nothing_would_take_are_reported(certs: dict[str, SitePaths], write_site: WriteSite,
                                                          edit: tuple[str, str], words: str) -> None:
    text_a, text_b = SITE_A + MESSAGES_A, SITE_B + MESSAGES_B.replace(*edit)
    path_a, path_b = write_site("site-a", text_a), write_site("site-b", text_b)

    problems = check_files([path_a, path_b])

    expected = words.format(b=path_b, line=line_of(text_b, "  exports:\n    - subject") + 1)
    assert lines_and_messages(problems) == [
        (path_a, line_of(text_a, '    - subject: "stock.>"'), f"messaging.imports[0]: {expected}")]
