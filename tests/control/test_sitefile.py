"""Site file loading: YAML -> frozen dataclasses, and file:line problems that say how to fix them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from interlink.config import (
    AclRule,
    ExportConfig,
    HostPort,
    ImportConfig,
    Listen,
    LoadTestConfig,
    PeerConfig,
    RegistryConfig,
    SiteConfig,
    TlsFiles,
    TracingConfig,
)
from interlink.control.sitefile import (
    Problem,
    SiteFileError,
    binds_overlap,
    check_domain_name,
    load_site,
    parse_host_port,
)

WriteSite = Callable[[str, str], Path]

FULL_SITE = """\
site: site-a
trust_domain: interlink
listen:
  triple: 127.0.0.1:50051
  bolt: 127.0.0.1:12200
  peer: 127.0.0.1:8443
  admin: 127.0.0.1:9901
tls:
  ca: certs/site-a/ca.pem
  cert: certs/site-a/gateway.pem
  key: certs/site-a/gateway.key
registry: {kind: static}
peers:
  site-b:
    endpoints: [127.0.0.1:9443]
    ca: certs/site-b/ca.pem
    domain: site-a.gw.site-b.test
  site-c:
    endpoints: [10.0.0.3:8443, "[fd00::3]:8443"]
    ca: /etc/interlink/site-c-ca.pem
    domain: site-a.gw.site-c.test
    connections: 4
    max_concurrent_streams: 1000
domains:
  site-b: site-b.gw.site-a.test
  site-c: site-c.gw.site-a.test
exports:
  - service: com.example.EchoService
    version: "1.0"
    protocol: triple
    flavour: grpc
    providers: [127.0.0.1:50061]
    timeout_ms: 2000
    allow:
      site-b: {apps: [order-app], methods: [echo, add]}
      site-c: {}
  - service: com.example.BoltService
    protocol: bolt
    providers: [127.0.0.1:12300, 127.0.0.1:12301]
    allow: [site-b, site-c]
imports:
  - service: com.example.PaymentService
    from: site-b
    protocol: bolt
  - service: com.example.StockService
    version: "2.1"
    from: site-c
default_timeout_ms: 15000
"""


def line_of(text: str, needle: str) -> int:
    """1-based line on which `needle` starts in `text` (needle must occur exactly once)."""
    assert text.count(needle) == 1, f"{needle!r} occurs {text.count(needle)} times"
    return text[: text.index(needle)].count("\n") + 1


def load_problems(write_site: WriteSite, text: str) -> list[Problem]:
    with pytest.raises(SiteFileError) as caught:
        load_site(write_site("site-a", text))
    return caught.value.problems


def edited(old: str, new: str) -> str:
    assert FULL_SITE.count(old) == 1, f"{old!r} occurs {FULL_SITE.count(old)} times in FULL_SITE"
    return FULL_SITE.replace(old, new)


# --- valid files ----------------------------------------------------------------------------------------


def test_full_site_file_round_trips_into_the_dataclasses(write_site: WriteSite, tmp_path: Path) -> None:
    path = write_site("site-a", FULL_SITE)

    config = load_site(path)

    assert config == SiteConfig(
        path=path,
        site="site-a",
        trust_domain="interlink",
        listen=Listen(
            triple=HostPort("127.0.0.1", 50051),
            bolt=HostPort("127.0.0.1", 12200),
            peer=HostPort("127.0.0.1", 8443),
            admin=HostPort("127.0.0.1", 9901),
        ),
        tls=TlsFiles(
            ca=tmp_path / "certs/site-a/ca.pem",
            cert=tmp_path / "certs/site-a/gateway.pem",
            key=tmp_path / "certs/site-a/gateway.key",
        ),
        registry=RegistryConfig(kind="static", options={}),
        peers={
            "site-b": PeerConfig(
                name="site-b",
                endpoints=(HostPort("127.0.0.1", 9443),),
                ca=tmp_path / "certs/site-b/ca.pem",
                domain="site-a.gw.site-b.test",
            ),
            "site-c": PeerConfig(
                name="site-c",
                endpoints=(HostPort("10.0.0.3", 8443), HostPort("fd00::3", 8443)),
                ca=Path("/etc/interlink/site-c-ca.pem"),
                domain="site-a.gw.site-c.test",
                connections=4,
                max_concurrent_streams=1000,
            ),
        },
        domains={"site-b": "site-b.gw.site-a.test", "site-c": "site-c.gw.site-a.test"},
        exports=(
            ExportConfig(
                service="com.example.EchoService",
                version="1.0",
                protocol="triple",
                flavour="grpc",
                providers=(HostPort("127.0.0.1", 50061),),
                timeout_ms=2000,
                allow={
                    "site-b": AclRule(apps=frozenset({"order-app"}), methods=frozenset({"echo", "add"})),
                    "site-c": AclRule(apps=None, methods=None),
                },
            ),
            ExportConfig(
                service="com.example.BoltService",
                protocol="bolt",
                providers=(HostPort("127.0.0.1", 12300), HostPort("127.0.0.1", 12301)),
                allow={"site-b": AclRule(), "site-c": AclRule()},
            ),
        ),
        imports=(
            ImportConfig(service="com.example.PaymentService", from_site="site-b", protocol="bolt"),
            ImportConfig(service="com.example.StockService", from_site="site-c", version="2.1"),
        ),
        default_timeout_ms=15000,
    )


def test_lines_name_every_key_by_its_dotted_path(write_site: WriteSite) -> None:
    config = load_site(write_site("site-a", FULL_SITE))

    expected = {
        "site": line_of(FULL_SITE, "site: site-a"),
        "listen.peer": line_of(FULL_SITE, "peer: 127.0.0.1:8443"),
        "tls.key": line_of(FULL_SITE, "key: certs/site-a/gateway.key"),
        "peers.site-b": line_of(FULL_SITE, "  site-b:\n    endpoints"),
        "peers.site-b.domain": line_of(FULL_SITE, "domain: site-a.gw.site-b.test"),
        "peers.site-c.endpoints[1]": line_of(FULL_SITE, '"[fd00::3]:8443"'),
        "domains.site-c": line_of(FULL_SITE, "site-c: site-c.gw.site-a.test"),
        "exports[0]": line_of(FULL_SITE, "service: com.example.EchoService"),
        "exports[0].allow.site-b": line_of(FULL_SITE, "site-b: {apps"),
        "exports[0].allow.site-b.methods": line_of(FULL_SITE, "site-b: {apps"),
        "exports[1].allow.site-c": line_of(FULL_SITE, "allow: [site-b, site-c]"),
        "imports[1].from": line_of(FULL_SITE, "from: site-c"),
        "default_timeout_ms": line_of(FULL_SITE, "default_timeout_ms"),
    }
    assert {key: config.lines.get(key) for key in expected} == expected


def test_minimal_file_takes_the_defaults(write_site: WriteSite, tmp_path: Path) -> None:
    text = "site: solo\nlisten: {triple: 127.0.0.1:50051}\ntls: {ca: ca.pem, cert: gw.pem, key: gw.key}\n"

    config = load_site(write_site("solo", text))

    assert config.trust_domain == "interlink"
    assert config.registry == RegistryConfig()
    assert (config.peers, config.domains, config.exports, config.imports) == ({}, {}, (), ())
    assert config.default_timeout_ms == 30_000
    assert config.tls.cert == tmp_path / "gw.pem"


def test_relative_paths_resolve_against_the_file_not_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf").mkdir()
    site_file = tmp_path / "conf" / "site-a.yaml"
    site_file.write_text(FULL_SITE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    config = load_site("../conf/site-a.yaml")

    assert config.tls.ca.is_absolute()
    assert config.tls.ca.resolve() == tmp_path / "conf/certs/site-a/ca.pem"
    assert config.peers["site-b"].ca.resolve() == tmp_path / "conf/certs/site-b/ca.pem"
    assert config.peers["site-c"].ca == Path("/etc/interlink/site-c-ca.pem")


@pytest.mark.parametrize(
    ("allow_yaml", "expected"),
    [
        ("[site-b]", {"site-b": AclRule()}),
        ("{site-b: {}}", {"site-b": AclRule()}),
        ("{site-b: }", {"site-b": AclRule()}),
        ("{site-b: {apps: [a1, a2]}}", {"site-b": AclRule(apps=frozenset({"a1", "a2"}))}),
        ("{site-b: {methods: [echo]}}", {"site-b": AclRule(methods=frozenset({"echo"}))}),
    ],
)
def test_allow_forms(write_site: WriteSite, allow_yaml: str, expected: dict[str, AclRule]) -> None:
    text = edited("allow: [site-b, site-c]", f"allow: {allow_yaml}")

    config = load_site(write_site("site-a", text))

    assert config.exports[1].allow == expected


def test_registry_keeps_kind_specific_keys_as_options(write_site: WriteSite) -> None:
    text = edited(
        "registry: {kind: static}",
        "registry:\n  kind: zookeeper\n  hosts: [zk1:2181, zk2:2181]\n  root: /sofa-rpc\n  session_timeout_ms: 30000",
    )

    config = load_site(write_site("site-a", text))

    assert config.registry == RegistryConfig(
        kind="zookeeper",
        options={"hosts": ["zk1:2181", "zk2:2181"], "root": "/sofa-rpc", "session_timeout_ms": 30000},
    )


def test_versions_keep_the_text_as_written(write_site: WriteSite) -> None:
    text = edited('version: "2.1"', "version: 2.10")

    config = load_site(write_site("site-a", text))

    assert config.imports[1].version == "2.10"


def test_merge_keys_share_settings(write_site: WriteSite) -> None:
    text = edited(
        "  site-b:\n    endpoints: [127.0.0.1:9443]\n",
        "  site-b:\n    <<: &tuning {connections: 8, max_concurrent_streams: 64}\n    connections: 3\n"
        "    endpoints: [127.0.0.1:9443]\n",
    )

    config = load_site(write_site("site-a", text))

    assert config.peers["site-b"].connections == 3  # own keys override merged ones
    assert config.peers["site-b"].max_concurrent_streams == 64


# --- one problem at a time ------------------------------------------------------------------------------

# (old text, new text, text on the line expected in the problem, fragment of the expected message)
SINGLE_PROBLEMS = {
    "port missing": (
        "endpoints: [127.0.0.1:9443]",
        "endpoints: [127.0.0.1]",
        "endpoints: [127.0.0.1]",
        'peers.site-b.endpoints[0]: "127.0.0.1" has no port; write host:port, e.g. 127.0.0.1:9443',
    ),
    "port too big": (
        "peer: 127.0.0.1:8443",
        "peer: 127.0.0.1:70000",
        "peer: 127.0.0.1:70000",
        'listen.peer: port 70000 in "127.0.0.1:70000" is out of range; use a number from 1 to 65535',
    ),
    "port zero": ("peer: 127.0.0.1:8443", "peer: 127.0.0.1:0", "peer: 127.0.0.1:0", "out of range"),
    "port not a number": (
        "peer: 127.0.0.1:8443",
        "peer: 127.0.0.1:https",
        "peer: 127.0.0.1:https",
        'listen.peer: "https" in "127.0.0.1:https" is not a port number',
    ),
    "ipv6 without brackets": (
        '"[fd00::3]:8443"',
        '"fd00::3:8443"',
        '"fd00::3:8443"',
        'peers.site-c.endpoints[1]: "fd00::3:8443" looks like an IPv6 address; put the address in brackets',
    ),
    "bad ipv4": (
        "10.0.0.3:8443",
        "10.0.0.300:8443",
        "10.0.0.300:8443",
        '"10.0.0.300" is not a valid IPv4 address',
    ),
    "star host": ("peer: 127.0.0.1:8443", "peer: '*:8443'", "peer: '*:8443'", "write 0.0.0.0"),
    "site name upper case": ("site: site-a", "site: Site-A", "site: Site-A", "must be lowercase (try 'site-a')"),
    "site name underscore": ("site: site-a", "site: site_a", "site: site_a", "is not a DNS label"),
    "trust domain": (
        "trust_domain: interlink",
        "trust_domain: Inter Link",
        "trust_domain: Inter Link",
        "trust_domain: trust domain 'Inter Link' is not valid",
    ),
    "domain upper case": (
        "domain: site-a.gw.site-b.test",
        "domain: Site-A.gw.site-b.test",
        "domain: Site-A.gw.site-b.test",
        'peers.site-b.domain: "Site-A.gw.site-b.test" must be lower case; write "site-a.gw.site-b.test"',
    ),
    "domain trailing dot": (
        "domain: site-a.gw.site-b.test",
        "domain: site-a.gw.site-b.test.",
        "domain: site-a.gw.site-b.test.",
        'ends with a dot; write "site-a.gw.site-b.test"',
    ),
    "domain underscore": (
        "site-b: site-b.gw.site-a.test",
        "site-b: site_b.gw.site-a.test",
        "site-b: site_b.gw.site-a.test",
        'domains.site-b: "site_b.gw.site-a.test" is not a valid domain name',
    ),
    "protocol": (
        "protocol: triple",
        "protocol: http",
        "protocol: http",
        'exports[0].protocol: "http" is not one of triple, bolt',
    ),
    "flavour typo": ("flavour: grpc", "flavour: grpcc", "flavour: grpcc", 'did you mean "grpc"?'),
    "flavour on bolt": (
        "    protocol: bolt\n    providers",
        "    protocol: bolt\n    flavour: sofa\n    providers",
        "flavour: sofa",
        "exports[1].flavour: applies only to protocol: triple",
    ),
    "registry kind": (
        "registry: {kind: static}",
        "registry: {kind: etcd}",
        "registry: {kind: etcd}",
        'registry.kind: "etcd" is not one of static, dns, zookeeper',
    ),
    "registry without kind": (
        "registry: {kind: static}",
        "registry: {hosts: [a]}",
        "registry: {hosts: [a]}",
        'registry: missing key "kind"',
    ),
    "allow names a stranger": (
        "allow: [site-b, site-c]",
        "allow: [site-b, site-d]",
        "allow: [site-b, site-d]",
        "exports[1].allow.site-d: site-d may call this export but is not listed under peers",
    ),
    "allow names this site": (
        "allow: [site-b, site-c]",
        "allow: [site-b, site-c, site-a]",
        "allow: [site-b, site-c, site-a]",
        "exports[1].allow.site-a: site-a is this site itself",
    ),
    "allow is text": (
        "allow: [site-b, site-c]",
        "allow: site-b",
        "allow: site-b",
        'exports[1].allow: expected peer sites, got the text "site-b"; write allow: [site-b]',
    ),
    "allow rule key typo": (
        "{apps: [order-app], methods: [echo, add]}",
        "{app: [order-app], methods: [echo, add]}",
        "{app: [order-app]",
        'exports[0].allow.site-b.app: unknown key; did you mean "apps"?',
    ),
    "allow apps empty": (
        "{apps: [order-app], methods: [echo, add]}",
        "{apps: [], methods: [echo, add]}",
        "{apps: []",
        "exports[0].allow.site-b.apps: is empty, so nothing would be allowed",
    ),
    "domains names a stranger": (
        "  site-c: site-c.gw.site-a.test\n",
        "  site-c: site-c.gw.site-a.test\n  site-d: site-d.gw.site-a.test\n",
        "site-d: site-d.gw.site-a.test",
        "domains.site-d: site-d has an access domain but is not listed under peers",
    ),
    "domains repeat a domain": (
        "site-c: site-c.gw.site-a.test",
        "site-c: site-b.gw.site-a.test",
        "site-c: site-b.gw.site-a.test",
        'domains.site-c: "site-b.gw.site-a.test" is already the access domain of site-b',
    ),
    "import from a stranger": (
        "from: site-c",
        "from: site-x",
        "from: site-x",
        "imports[1].from: site-x is imported from but is not listed under peers",
    ),
    "import without from": (
        '    version: "2.1"\n    from: site-c\n',
        '    version: "2.1"\n',
        "service: com.example.StockService",
        'imports[1]: missing key "from"; add from: site-b',
    ),
    "connections zero": (
        "connections: 4",
        "connections: 0",
        "connections: 0",
        "peers.site-c.connections: 0 is out of range; use a number from 1 to 64",
    ),
    "connections too many": ("connections: 4", "connections: 65", "connections: 65", "from 1 to 64"),
    "connections quoted": (
        "connections: 4",
        'connections: "4"',
        'connections: "4"',
        'expected a whole number, got the text "4"; write e.g. connections: 2 (without quotes)',
    ),
    "streams too many": (
        "max_concurrent_streams: 1000",
        "max_concurrent_streams: 100001",
        "max_concurrent_streams: 100001",
        "from 1 to 100000",
    ),
    "default timeout zero": (
        "default_timeout_ms: 15000",
        "default_timeout_ms: 0",
        "default_timeout_ms: 0",
        "default_timeout_ms: 0 is out of range; use a number of at least 1",
    ),
    "export timeout negative": ("timeout_ms: 2000", "timeout_ms: -5", "timeout_ms: -5", "exports[0].timeout_ms"),
    "timeout yes": (
        "default_timeout_ms: 15000",
        "default_timeout_ms: yes",
        "default_timeout_ms: yes",
        "expected a whole number, got the yes/no value yes",
    ),
    "endpoints empty": (
        "endpoints: [127.0.0.1:9443]",
        "endpoints: []",
        "endpoints: []",
        "peers.site-b.endpoints: is empty; list at least one host:port",
    ),
    "endpoints not a list": (
        "endpoints: [127.0.0.1:9443]",
        "endpoints: 127.0.0.1:9443",
        "endpoints: 127.0.0.1:9443",
        'peers.site-b.endpoints: expected a list, got the text "127.0.0.1:9443"',
    ),
    "peer ca empty": (
        "ca: certs/site-b/ca.pem",
        "ca:",
        "    ca:\n    domain: site-a.gw.site-b",
        "peers.site-b.ca: is empty",
    ),
    "listen not a mapping": (
        "listen:\n  triple: 127.0.0.1:50051\n  bolt: 127.0.0.1:12200\n  peer: 127.0.0.1:8443\n"
        "  admin: 127.0.0.1:9901\n",
        "listen: 127.0.0.1:8443\n",
        "listen: 127.0.0.1:8443",
        'listen: expected a mapping of keys, got the text "127.0.0.1:8443"; write e.g. listen: {peer:',
    ),
    "tls key missing": (
        "  key: certs/site-a/gateway.key\n",
        "",
        "tls:",
        'tls: missing key "key"; add key: certs/gateway.key',
    ),
    "unknown key with a close match": (
        "trust_domain: interlink",
        "trust_domian: interlink",
        "trust_domian",
        'trust_domian: unknown key; did you mean "trust_domain"?',
    ),
    "unknown key without a close match": (
        "default_timeout_ms: 15000",
        "default_timeout_ms: 15000\ncolour: blue",
        "colour: blue",
        "colour: unknown key; known keys here are: site, trust_domain, listen",
    ),
    "duplicate key": (
        "  admin: 127.0.0.1:9901\n",
        "  admin: 127.0.0.1:9901\n  peer: 127.0.0.1:8444\n",
        "peer: 127.0.0.1:8444",
        "listen.peer: duplicate key (first at line 6); YAML would silently keep only the last one",
    ),
    "duplicate export": (
        "  - service: com.example.BoltService\n",
        '  - service: com.example.EchoService\n    version: "1.0"\n',
        '  - service: com.example.EchoService\n    version: "1.0"\n    protocol: bolt',
        "exports[1]: com.example.EchoService version 1.0 is already the export at exports[0]",
    ),
    "peer is this site": (
        "domains:\n",
        "  site-a:\n    endpoints: [127.0.0.1:1]\n    ca: a.pem\n    domain: a.test\ndomains:\n",
        "  site-a:\n    endpoints: [127.0.0.1:1]",
        "peers.site-a: a site cannot be its own peer; remove this entry",
    ),
    "listeners collide": (
        "admin: 127.0.0.1:9901",
        "admin: 0.0.0.0:8443",
        "admin: 0.0.0.0:8443",
        "listen.admin: 0.0.0.0:8443 is also used by listen.peer (127.0.0.1:8443); give each listener its own port",
    ),
    "import needs a local listener": (
        "  bolt: 127.0.0.1:12200\n",
        "",
        "    from: site-b\n    protocol: bolt",
        "imports[0]: local callers speak bolt to com.example.PaymentService, but listen.bolt is not set",
    ),
    "exports need a peer listener": (
        "  peer: 127.0.0.1:8443\n",
        "",
        "listen:",
        "listen: has no peer address, but peers must reach this site's exports",
    ),
    "service with a slash": (
        "service: com.example.StockService",
        "service: com.example/StockService",
        "service: com.example/StockService",
        'imports[1].service: "com.example/StockService" must not contain spaces, "/" or ":"',
    ),
}


@pytest.mark.parametrize(("old", "new", "line_text", "message"), SINGLE_PROBLEMS.values(), ids=SINGLE_PROBLEMS.keys())
def test_one_mistake_gives_one_problem_at_its_line(
    write_site: WriteSite, old: str, new: str, line_text: str, message: str
) -> None:
    text = edited(old, new)

    problems = load_problems(write_site, text)

    assert len(problems) == 1, "\n".join(map(str, problems))
    (problem,) = problems
    expected_line = line_of(text, line_text)
    if line_text.startswith("    from: site-b\n"):  # the problem is on the protocol line below
        expected_line += 1
    assert (problem.line, message in problem.message) == (expected_line, True), str(problem)


def test_problem_renders_as_path_line_message(write_site: WriteSite) -> None:
    path = write_site("site-a", edited("endpoints: [127.0.0.1:9443]", "endpoints: [127.0.0.1]"))

    with pytest.raises(SiteFileError) as caught:
        load_site(path)

    assert str(caught.value) == (
        f'{path}:15: peers.site-b.endpoints[0]: "127.0.0.1" has no port; write host:port, e.g. 127.0.0.1:9443'
    )


def test_all_problems_are_collected_in_one_pass_in_line_order(write_site: WriteSite) -> None:
    text = edited("site: site-a", "site: Site-A")
    text = text.replace("connections: 4", "connections: 0").replace("from: site-c", "from: site-x")

    problems = load_problems(write_site, text)

    assert [problem.line for problem in problems] == [
        line_of(text, "site: Site-A"),
        line_of(text, "connections: 0"),
        line_of(text, "from: site-x"),
    ]
    assert str(SiteFileError(problems)).count("\n") == 2


def test_peer_without_access_domain_is_reported_where_it_is_allowed(write_site: WriteSite) -> None:
    text = edited("  site-c: site-c.gw.site-a.test\n", "")

    problems = load_problems(write_site, text)

    assert [(problem.line, problem.message) for problem in problems] == [
        (
            line_of(text, "site-c: {}"),
            "exports[0].allow.site-c: site-c may call this export but has no access domain;"
            " add domains.site-c: e.g. site-c.gw.site-a.example",
        ),
        (
            line_of(text, "allow: [site-b, site-c]"),
            "exports[1].allow.site-c: site-c may call this export but has no access domain;"
            " add domains.site-c: e.g. site-c.gw.site-a.example",
        ),
    ]


def test_duplicate_top_level_section_is_reported_at_the_second_one(write_site: WriteSite) -> None:
    text = FULL_SITE + "domains:\n  site-b: other.test\n"

    problems = load_problems(write_site, text)

    duplicates = [problem for problem in problems if "duplicate key" in problem.message]
    assert [(problem.line, problem.message) for problem in duplicates] == [
        (
            line_of(text, "domains:\n  site-b: other"),
            f"domains: duplicate key (first at line {line_of(FULL_SITE, 'domains:')}); YAML would silently keep"
            " only the last one, so remove or merge one of them",
        )
    ]


def test_missing_top_level_keys_have_no_line(write_site: WriteSite) -> None:
    problems = load_problems(write_site, "trust_domain: interlink\n")

    assert [(problem.line, problem.message) for problem in problems] == [
        (None, 'missing key "site"; add site: site-a'),
        (None, 'missing key "listen"; add listen: {peer: 127.0.0.1:8443}'),
        (None, 'missing key "tls"; add tls: {ca: ca.pem, cert: gateway.pem, key: gateway.key}'),
    ]


def test_listen_needs_a_listener_for_callers_or_peers(write_site: WriteSite) -> None:
    text = "site: solo\nlisten:\n  admin: 127.0.0.1:9901\ntls: {ca: a, cert: b, key: c}\n"

    problems = load_problems(write_site, text)

    assert [(problem.line, problem.message) for problem in problems] == [
        (2, "listen: needs at least one of triple, bolt or peer; add e.g. peer: 127.0.0.1:8443")
    ]


# --- whole-file problems --------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "~\n"])
def test_empty_file_is_refused(write_site: WriteSite, text: str) -> None:
    problems = load_problems(write_site, text)

    assert [(problem.line, problem.message) for problem in problems] == [
        (None, "the file is empty; a site file is a YAML mapping that starts with `site: NAME`")
    ]


@pytest.mark.parametrize(
    ("text", "what"), [("- site: site-a\n", "a list"), ("site-a\n", 'the text "site-a"'), ("42\n", "the int 42")]
)
def test_document_that_is_not_a_mapping_is_refused(write_site: WriteSite, text: str, what: str) -> None:
    problems = load_problems(write_site, text)

    assert [(problem.line, problem.message) for problem in problems] == [
        (1, f"the file holds {what}, not a mapping; a site file is a YAML mapping that starts with `site: NAME`")
    ]


def test_yaml_syntax_error_points_at_its_line(write_site: WriteSite) -> None:
    text = "site: site-a\nlisten:\n  peer: 127.0.0.1:8443\n   bolt: [oops\n"

    problems = load_problems(write_site, text)

    assert len(problems) == 1
    assert problems[0].line == 4
    assert problems[0].message.startswith("YAML syntax error: ")


def test_two_documents_are_refused(write_site: WriteSite) -> None:
    problems = load_problems(write_site, "site: a\n---\nsite: b\n")

    assert len(problems) == 1 and "YAML syntax error" in problems[0].message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SiteFileError) as caught:
        load_site(tmp_path / "nope.yaml")

    assert str(caught.value) == f"{tmp_path / 'nope.yaml'}: no such file; check the path"


# --- the small parsers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9443", HostPort("127.0.0.1", 9443)),
        ("gw1.site-b.example:443", HostPort("gw1.site-b.example", 443)),
        ("localhost:1", HostPort("localhost", 1)),
        ("[::1]:65535", HostPort("::1", 65535)),
        ("[fd00::3]:8443", HostPort("fd00::3", 8443)),
    ],
)
def test_parse_host_port(text: str, expected: HostPort) -> None:
    assert parse_host_port(text) == expected
    assert str(parse_host_port(text)) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("127.0.0.1", '"127.0.0.1" has no port'),
        ("127.0.0.1:", '"127.0.0.1:" has no port; write host:port, e.g. 127.0.0.1:9443'),
        (":8443", '":8443" has no host; write host:port, e.g. 127.0.0.1:8443'),
        ("::1", '"::1" looks like an IPv6 address'),
        ("[::1]", '"[::1]" has no port; write host:port, e.g. [::1]:9443'),
        ("[::1:9443", 'has no closing "]"'),
        ("[10.0.0.1]:80", '"10.0.0.1" is not an IPv6 address'),
        ("host_name:80", "is neither an IP address nor a host name"),
        ("h:65536", "out of range"),
    ],
)
def test_parse_host_port_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=None) as caught:
        parse_host_port(text)

    assert message in str(caught.value)


def test_check_domain_name() -> None:
    assert check_domain_name("site-b.gw.site-a.test") == "site-b.gw.site-a.test"
    for bad in ("-x.test", "x-.test", "a..b", "a" * 64 + ".test", ("a" * 60 + ".") * 5 + "test"):
        with pytest.raises(ValueError):
            check_domain_name(bad)


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("127.0.0.1:80", "127.0.0.1:80", True),
        ("localhost:80", "127.0.0.1:80", True),
        ("0.0.0.0:80", "10.0.0.1:80", True),
        ("[::]:80", "127.0.0.1:80", True),
        ("127.0.0.1:80", "127.0.0.2:80", False),
        ("127.0.0.1:80", "127.0.0.1:81", False),
    ],
)
def test_binds_overlap(a: str, b: str, overlap: bool) -> None:
    assert binds_overlap(parse_host_port(a), parse_host_port(b)) is overlap


# --- tracing, load-test marks and shadow providers ------------------------------------------------------

MARKED_SITE = (
    FULL_SITE.replace(
        "    timeout_ms: 2000\n",
        '    timeout_ms: 2000\n    shadow_providers: [127.0.0.1:50071, "[::1]:50072"]\n    loadtest: allow\n',
    ).replace("    allow: [site-b, site-c]\n", "    allow: [site-b, site-c]\n    loadtest: deny\n")
    + "tracing:\n  otlp_endpoint: http://127.0.0.1:4318/v1/traces\n  sample_ratio: 0.25\n"
    + "loadtest:\n  header: x-load-mark\n  baggage: stress=1\n"
)


def marked(old: str, new: str) -> str:
    assert MARKED_SITE.count(old) == 1, f"{old!r} occurs {MARKED_SITE.count(old)} times in MARKED_SITE"
    return MARKED_SITE.replace(old, new)


def test_tracing_loadtest_and_shadow_providers_load_into_the_dataclasses(write_site: WriteSite) -> None:
    config = load_site(write_site("site-a", MARKED_SITE))

    assert config.tracing == TracingConfig(otlp_endpoint="http://127.0.0.1:4318/v1/traces", sample_ratio=0.25)
    assert config.loadtest == LoadTestConfig(header="x-load-mark", baggage="stress=1")
    assert [(export.shadow_providers, export.loadtest) for export in config.exports] == [
        ((HostPort("127.0.0.1", 50071), HostPort("::1", 50072)), "allow"),
        ((), "deny"),
    ]
    assert config.exports[0].providers == (HostPort("127.0.0.1", 50061),)  # the real providers stay as they were
    expected_lines = {
        "tracing.sample_ratio": line_of(MARKED_SITE, "sample_ratio: 0.25"),
        "loadtest.header": line_of(MARKED_SITE, "header: x-load-mark"),
        "exports[0].shadow_providers[1]": line_of(MARKED_SITE, "shadow_providers: ["),
        "exports[1].loadtest": line_of(MARKED_SITE, "loadtest: deny"),
    }
    assert {key: config.lines.get(key) for key in expected_lines} == expected_lines


def test_without_the_new_keys_the_defaults_apply(write_site: WriteSite) -> None:
    config = load_site(write_site("site-a", FULL_SITE))

    assert config.tracing == TracingConfig(otlp_endpoint=None, sample_ratio=1.0)
    assert config.loadtest == LoadTestConfig(header="x-interlink-loadtest", baggage="mark=T")
    assert {(export.shadow_providers, export.loadtest) for export in config.exports} == {((), "allow")}


@pytest.mark.parametrize("section", ["tracing:\n", "tracing: ~\n", "tracing: {}\n", "loadtest:\n", "loadtest: {}\n"])
def test_empty_tracing_and_loadtest_sections_take_the_defaults(write_site: WriteSite, section: str) -> None:
    config = load_site(write_site("site-a", FULL_SITE + section))

    assert (config.tracing, config.loadtest) == (TracingConfig(), LoadTestConfig())


@pytest.mark.parametrize(
    ("written", "ratio"), [("0", 0.0), ("1", 1.0), ("0.0", 0.0), ("1.0", 1.0), (".5", 0.5), ("0.001", 0.001)]
)
def test_sample_ratio_takes_numbers_from_zero_to_one(write_site: WriteSite, written: str, ratio: float) -> None:
    config = load_site(write_site("site-a", marked("sample_ratio: 0.25", f"sample_ratio: {written}")))

    assert config.tracing.sample_ratio == ratio
    assert type(config.tracing.sample_ratio) is float


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://otel-collector.observability.example/v1/traces",
        "http://[::1]:4318/v1/traces",
        "http://localhost:4318/",
        "http://127.0.0.1:4318/otlp/v1/traces?tenant=gw",
    ],
)
def test_otlp_endpoint_forms(write_site: WriteSite, endpoint: str) -> None:
    text = marked("otlp_endpoint: http://127.0.0.1:4318/v1/traces", f'otlp_endpoint: "{endpoint}"')

    assert load_site(write_site("site-a", text)).tracing.otlp_endpoint == endpoint


# (old text, new text, text on the line expected in the problem, fragment of the expected message)
MARKED_PROBLEMS = {
    "endpoint without scheme": (
        "otlp_endpoint: http://127.0.0.1:4318/v1/traces",
        "otlp_endpoint: 127.0.0.1:4318",
        "otlp_endpoint: 127.0.0.1:4318",
        'tracing.otlp_endpoint: "127.0.0.1:4318" is not a URL; write http://HOST:PORT/PATH,'
        " e.g. http://127.0.0.1:4318/v1/traces",
    ),
    "endpoint over grpc": (
        "otlp_endpoint: http://127.0.0.1:4318/v1/traces",
        "otlp_endpoint: grpc://127.0.0.1:4317",
        "otlp_endpoint: grpc://127.0.0.1:4317",
        'tracing.otlp_endpoint: "grpc://127.0.0.1:4317" uses "grpc://", but spans are exported over OTLP/HTTP'
        " only; write an http:// or https:// URL, e.g. http://127.0.0.1:4318/v1/traces",
    ),
    "endpoint without host": (
        "otlp_endpoint: http://127.0.0.1:4318/v1/traces",
        "otlp_endpoint: http://:4318/v1/traces",
        "otlp_endpoint: http://:4318/v1/traces",
        'tracing.otlp_endpoint: "http://:4318/v1/traces" has no host; write e.g. http://127.0.0.1:4318/v1/traces',
    ),
    "endpoint without path": (
        "otlp_endpoint: http://127.0.0.1:4318/v1/traces",
        "otlp_endpoint: http://127.0.0.1:4318",
        "otlp_endpoint: http://127.0.0.1:4318",
        'tracing.otlp_endpoint: "http://127.0.0.1:4318" has no path; give the full traces URL,'
        " e.g. http://127.0.0.1:4318/v1/traces",
    ),
    "endpoint port not a number": (
        "otlp_endpoint: http://127.0.0.1:4318/v1/traces",
        "otlp_endpoint: http://127.0.0.1:otlp/v1/traces",
        "otlp_endpoint: http://127.0.0.1:otlp/v1/traces",
        'tracing.otlp_endpoint: "http://127.0.0.1:otlp/v1/traces" is not a valid URL',
    ),
    "endpoint bad host": (
        "otlp_endpoint: http://127.0.0.1:4318/v1/traces",
        "otlp_endpoint: http://otel_collector:4318/v1/traces",
        "otlp_endpoint: http://otel_collector:4318/v1/traces",
        'tracing.otlp_endpoint: "otel_collector" in "http://otel_collector:4318/v1/traces" is neither an IP'
        " address nor a host name",
    ),
    "endpoint with a password": (
        "otlp_endpoint: http://127.0.0.1:4318/v1/traces",
        "otlp_endpoint: http://gw:secret@127.0.0.1:4318/v1/traces",
        "otlp_endpoint: http://gw:secret@127.0.0.1:4318/v1/traces",
        "holds a user name or password, which interlink does not send; remove the part before @,"
        " e.g. http://127.0.0.1:4318/v1/traces",
    ),
    "endpoint empty": (
        "otlp_endpoint: http://127.0.0.1:4318/v1/traces",
        "otlp_endpoint:",
        "otlp_endpoint:",
        "tracing.otlp_endpoint: is empty; write e.g. http://127.0.0.1:4318/v1/traces (or remove the key to"
        " export no spans)",
    ),
    "endpoint is a list": (
        "otlp_endpoint: http://127.0.0.1:4318/v1/traces",
        "otlp_endpoint: [http://127.0.0.1:4318/v1/traces]",
        "otlp_endpoint: [http",
        "tracing.otlp_endpoint: expected a single value, got a list; write e.g. http://127.0.0.1:4318/v1/traces",
    ),
    "ratio above one": (
        "sample_ratio: 0.25",
        "sample_ratio: 1.5",
        "sample_ratio: 1.5",
        "tracing.sample_ratio: 1.5 is out of range; use a number from 0.0 to 1.0, e.g. sample_ratio: 0.1",
    ),
    "ratio whole number above one": (
        "sample_ratio: 0.25",
        "sample_ratio: 10",
        "sample_ratio: 10",
        "tracing.sample_ratio: 10 is out of range; use a number from 0.0 to 1.0",
    ),
    "ratio negative": ("sample_ratio: 0.25", "sample_ratio: -0.1", "sample_ratio: -0.1", "-0.1 is out of range"),
    "ratio not a number": ("sample_ratio: 0.25", "sample_ratio: .nan", "sample_ratio: .nan", ".nan is out of range"),
    "ratio quoted": (
        "sample_ratio: 0.25",
        'sample_ratio: "0.25"',
        'sample_ratio: "0.25"',
        'tracing.sample_ratio: expected a number from 0.0 to 1.0, got the text "0.25"; write e.g.'
        " sample_ratio: 0.1 (without quotes)",
    ),
    "ratio as a percentage": (
        "sample_ratio: 0.25",
        "sample_ratio: 25%",
        "sample_ratio: 25%",
        'tracing.sample_ratio: expected a number from 0.0 to 1.0, got the text "25%"; write e.g. sample_ratio: 0.1',
    ),
    "ratio yes": ("sample_ratio: 0.25", "sample_ratio: yes", "sample_ratio: yes", "got the yes/no value yes"),
    "tracing key typo": (
        "sample_ratio: 0.25",
        "sample_rate: 0.25",
        "sample_rate: 0.25",
        'tracing.sample_rate: unknown key; did you mean "sample_ratio"?',
    ),
    "tracing not a mapping": (
        "tracing:\n  otlp_endpoint: http://127.0.0.1:4318/v1/traces\n  sample_ratio: 0.25\n",
        "tracing: http://127.0.0.1:4318/v1/traces\n",
        "tracing: http",
        'tracing: expected a mapping of keys, got the text "http://127.0.0.1:4318/v1/traces"; write e.g.'
        " tracing: {otlp_endpoint: http://127.0.0.1:4318/v1/traces, sample_ratio: 0.1}",
    ),
    "header upper case": (
        "header: x-load-mark",
        "header: X-Load-Mark",
        "header: X-Load-Mark",
        'loadtest.header: "X-Load-Mark" must be lower case (HTTP/2 header names are); write "x-load-mark"',
    ),
    "header pseudo": (
        "header: x-load-mark",
        'header: ":authority"',
        'header: ":authority"',
        'loadtest.header: ":authority" is an HTTP/2 pseudo-header, not a header name of your own;'
        " write e.g. x-interlink-loadtest",
    ),
    "header grpc": (
        "header: x-load-mark",
        "header: grpc-loadtest",
        "header: grpc-loadtest",
        'loadtest.header: "grpc-loadtest": grpc-* headers are reserved for gRPC itself;'
        " write e.g. x-interlink-loadtest",
    ),
    "header underscore": (
        "header: x-load-mark",
        "header: x_load_mark",
        "header: x_load_mark",
        "loadtest.header: \"x_load_mark\" is not a header name; use lower-case letters, digits and '-',"
        " e.g. x-interlink-loadtest",
    ),
    "header of http2 itself": (
        "header: x-load-mark",
        "header: te",
        "header: te",
        'loadtest.header: "te" already means something to HTTP/2, gRPC or tracing; pick a name of your own',
    ),
    "baggage without =": (
        "baggage: stress=1",
        "baggage: stress",
        "baggage: stress",
        'loadtest.baggage: "stress" is not a key=value pair; write e.g. mark=T',
    ),
    "baggage empty key": (
        "baggage: stress=1",
        "baggage: =1",
        "baggage: =1",
        'loadtest.baggage: "=1" has an empty key; write e.g. mark=T',
    ),
    "baggage empty value": (
        "baggage: stress=1",
        "baggage: stress=",
        "baggage: stress=",
        'loadtest.baggage: "stress=" has an empty value; write e.g. stress=T',
    ),
    "baggage two pairs": (
        "baggage: stress=1",
        "baggage: stress=1&mark=T",
        "baggage: stress=1&mark=T",
        'loadtest.baggage: "stress=1&mark=T" holds "&", which separates baggage pairs; give one key=value pair,'
        " e.g. mark=T",
    ),
    "loadtest key typo": (
        "header: x-load-mark",
        "headers: x-load-mark",
        "headers: x-load-mark",
        'loadtest.headers: unknown key; did you mean "header"?',
    ),
    "top-level key typo": ("tracing:\n", "tracng:\n", "tracng:", 'tracng: unknown key; did you mean "tracing"?'),
    "export loadtest typo": (
        "loadtest: deny",
        "loadtest: denied",
        "loadtest: denied",
        'exports[1].loadtest: "denied" is not one of allow, deny; did you mean "deny"?',
    ),
    "export loadtest denied with shadow providers": (
        "    loadtest: allow\n",
        '    loadtest: "deny"\n',
        'loadtest: "deny"',
        "exports[0].loadtest: shadow_providers are never used when load-test calls are denied; remove one of them",
    ),
    "shadow provider without port": (
        "127.0.0.1:50071",
        "127.0.0.1",
        "shadow_providers: [127.0.0.1,",
        'exports[0].shadow_providers[0]: "127.0.0.1" has no port; write host:port, e.g. 127.0.0.1:9443',
    ),
    "shadow providers not a list": (
        'shadow_providers: [127.0.0.1:50071, "[::1]:50072"]',
        "shadow_providers: 127.0.0.1:50071",
        "shadow_providers: 127.0.0.1:50071",
        'exports[0].shadow_providers: expected a list, got the text "127.0.0.1:50071"; write e.g.'
        " shadow_providers: [10.0.0.2:8443]",
    ),
    "shadow providers key typo": (
        "shadow_providers:",
        "shadow_provider:",
        "shadow_provider:",
        'exports[0].shadow_provider: unknown key; did you mean "shadow_providers"?',
    ),
}


@pytest.mark.parametrize(("old", "new", "line_text", "message"), MARKED_PROBLEMS.values(), ids=MARKED_PROBLEMS.keys())
def test_one_tracing_or_loadtest_mistake_gives_one_problem_at_its_line(
    write_site: WriteSite, old: str, new: str, line_text: str, message: str
) -> None:
    text = marked(old, new)

    problems = load_problems(write_site, text)

    assert len(problems) == 1, "\n".join(map(str, problems))
    (problem,) = problems
    assert (problem.line, message in problem.message) == (line_of(text, line_text), True), str(problem)


def test_loadtest_problem_renders_as_path_line_message(write_site: WriteSite) -> None:
    text = marked("header: x-load-mark", "header: X-Load")
    path = write_site("site-a", text)

    with pytest.raises(SiteFileError) as caught:
        load_site(path)

    assert str(caught.value) == (
        f'{path}:{line_of(text, "header: X-Load")}: loadtest.header: "X-Load" must be lower case (HTTP/2 header'
        ' names are); write "x-load"'
    )


def test_shadow_providers_may_be_empty_with_loadtest_deny(write_site: WriteSite) -> None:
    text = marked('shadow_providers: [127.0.0.1:50071, "[::1]:50072"]', "shadow_providers: []")

    config = load_site(write_site("site-a", text.replace("    loadtest: allow\n", "    loadtest: deny\n")))

    assert (config.exports[0].shadow_providers, config.exports[0].loadtest) == ((), "deny")
