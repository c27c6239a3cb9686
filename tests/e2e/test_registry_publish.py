"""Seamless access: the consumer site's gateway publishes each import into its own (embedded) DNS-SD
registry with the gateway's address; a plain DNS client finds it."""

from __future__ import annotations

import trio

from registry_adapters.dnssd import browse
from registry_adapters.model import ServiceKey
from tests.e2e.topology import SERVICE, Gateway, consumer_site, free_port

ZONE = "site-b.interlink.test"


def test_imports_are_published_in_the_embedded_dns(certs, tmp_path):
    triple, peer, dns_port = free_port(), free_port(), free_port()
    config = consumer_site(certs, triple_port=triple, peer_port=peer, provider_peer_port=free_port())
    config["registry"] = {"kind": "dns", "mode": "embedded", "listen": f"127.0.0.1:{dns_port}", "zone": ZONE}
    gateway = Gateway("registry-site-b", config, tmp_path).start()
    try:
        gateway.wait_for_event(lambda e: e.get("event") == "registry.published")
        key = ServiceKey(interface=SERVICE, protocol="tri", version="1.0")
        found = trio.run(browse, ("127.0.0.1", dns_port), key, ZONE)
        assert {(i.host, i.port) for i in found} == {("127.0.0.1", triple)}
        assert trio.run(browse, ("127.0.0.1", dns_port), ServiceKey(interface=SERVICE.lower(), protocol="tri"), ZONE) == frozenset()
    finally:
        gateway.stop()


def test_a_wildcard_listener_needs_an_advertised_address(certs, tmp_path):
    config = consumer_site(certs, triple_port=free_port(), peer_port=free_port(), provider_peer_port=free_port())
    config["listen"]["triple"] = f"0.0.0.0:{free_port()}"
    config["registry"] = {"kind": "dns", "listen": f"127.0.0.1:{free_port()}", "zone": ZONE}
    gateway = Gateway("registry-wildcard", config, tmp_path)
    try:
        gateway.start(timeout=10)
    except RuntimeError as exc:
        assert "registry.advertise: required" in str(exc)
    else:
        raise AssertionError("the gateway started without an address to advertise")
