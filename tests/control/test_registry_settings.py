"""The site file's `registry:` block: every kind's keys validated with file, line and fix; exports that
leave out `providers:` need a registry that can supply them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from interlink.control.check import check_registry
from interlink.control.registry_sync import RegistryConfigError, registry_settings
from interlink.control.sitefile import load_site
from registry_adapters.model import ServiceKey

BASE = """\
site: site-a
listen: {{triple: 127.0.0.1:50051, bolt: 127.0.0.1:12200, peer: 127.0.0.1:8443}}
tls: {{ca: ca.pem, cert: gw.pem, key: gw.key}}
{registry}
peers:
  site-b: {{endpoints: [127.0.0.1:9443], ca: b.pem, domain: site-a.gw.site-b.test}}
domains: {{site-b: site-b.gw.site-a.test}}
exports:
  - service: com.example.EchoService
    protocol: bolt
    version: "1.0"
    {providers}
    allow: [site-b]
imports:
  - {{service: com.example.OrderService, from: site-b, protocol: bolt}}
"""

WriteSite = Callable[[str, str], Path]


def settings(write_site: WriteSite, registry: str, providers: str = "providers: [127.0.0.1:12201]"):
    config = load_site(write_site("site-a", BASE.format(registry=registry, providers=providers)))
    return config, registry_settings(config)


def test_static_is_the_default_and_needs_providers(write_site):
    config, found = settings(write_site, "")
    assert found.kind == "static" and not found.subscribes
    config = load_site(write_site("site-a", BASE.format(registry="", providers="")))
    with pytest.raises(RegistryConfigError) as error:
        registry_settings(config)
    assert error.value.key == "exports[0]" and error.value.line == 9
    assert "lists no providers" in error.value.detail and "zookeeper" in error.value.detail


def test_zookeeper_settings_and_subscription(write_site):
    _, found = settings(
        write_site, "registry: {kind: zookeeper, address: '127.0.0.1:2181', session_timeout_ms: 6000}", providers=""
    )
    assert found.kind == "zookeeper" and found.subscribes
    assert found.options == {
        "address": "127.0.0.1:2181", "root": "/sofa-rpc", "dubbo_root": "/dubbo", "session_timeout": 6.0
    }


@pytest.mark.parametrize(
    ("registry", "key", "words"),
    [
        ("registry: {kind: zookeeper}", "registry.address", "connect string is required"),
        ("registry: {kind: zookeeper, address: 'zk:x'}", "registry.address", "not host:port"),
        ("registry: {kind: zookeeper, address: 'zk:2181', root: sofa}", "registry.root", "absolute"),
        ("registry: {kind: zookeeper, address: 'zk:2181', session_timeout_ms: 100}", "registry.session_timeout_ms", "out of range"),
        ("registry: {kind: zookeeper, address: 'zk:2181', hosts: x}", "registry.hosts", "unknown key"),
        ("registry: {kind: dns, mode: multicast}", "registry.mode", "not a DNS registry mode"),
        ("registry: {kind: dns, mode: embedded, listen: '127.0.0.1:5353'}", "registry.zone", "zone"),
        ("registry: {kind: dns, mode: external, server: '127.0.0.1:53', zone: a.test}", "registry.tsig_name", "TSIG"),
        ("registry: {kind: dns, mode: external, server: '127.0.0.1:53', zone: a.test, tsig_name: k}", "registry.tsig_secret", "secret"),
        ("registry: {kind: static, advertise: 0.0.0.0}", "registry.advertise", "wildcard"),
    ],
)
def test_bad_registry_blocks_name_key_and_line(write_site, registry, key, words):
    config = load_site(write_site("site-a", BASE.format(registry=registry, providers="providers: [127.0.0.1:1]")))
    problems = check_registry(config)
    assert len(problems) == 1, problems
    assert problems[0].line == 4 and problems[0].message.startswith(f"{key}: ") and words in problems[0].message


def test_tsig_secret_from_a_bind_key_file(write_site, tmp_path):
    (tmp_path / "gw.key.conf").write_text('key "gw" {\n\talgorithm hmac-sha256;\n\tsecret "c2VjcmV0";\n};\n')
    _, found = settings(
        write_site,
        "registry: {kind: dns, mode: external, server: '127.0.0.1:5300', zone: a.test, tsig_name: gw, tsig_file: gw.key.conf}",
        providers="",
    )
    assert found.kind == "dns-external" and found.options["tsig_secret"] == "c2VjcmV0"
    assert found.options["zone"] == "a.test." and found.options["poll_interval"] == 1.0


def test_export_registry_keys_per_flavour():
    from interlink.routes import ExportRoute

    def route(**fields):
        return ExportRoute("S", (), {}, None, **fields)

    assert route(protocol="bolt", version="2.0", unique_id="u").registry_key == ServiceKey("S", "bolt", "u", "2.0")
    assert route(flavour="dubbo", version="1.0.0", group="g").registry_key == ServiceKey("S", "tri", "", "1.0.0", "g")
    assert route(flavour="sofa", unique_id="blue").registry_key == ServiceKey("S", "tri", "blue", "1.0")
