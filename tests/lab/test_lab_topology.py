"""site-configs/lab/topology.yaml and the networked lab's site files: one topology, checked once (no root).

Both labs build this topology (interlink lab --netns here, docker compose in tests/test_compose.py), so
the site files must use its addresses, and the loopback lab's files must offer the same services.
"""

from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path

import pytest
import yaml

from interlink.control.sitefile import load_site
from interlink.labnet import (
    INTERCONNECT,
    LAB_NETWORK,
    TOPOLOGY_FILE,
    TopologyError,
    check_site_files,
    load_topology,
)

LAB = TOPOLOGY_FILE.parent


def test_the_topology_loads_and_the_site_files_agree_with_it():
    topology = load_topology()
    assert check_site_files(topology) == []
    assert set(topology.networks) == {INTERCONNECT, "site-a", "site-b"}
    assert all(network.internal for network in topology.networks.values())


def test_addresses_are_in_the_range_reserved_for_network_tests():
    topology = load_topology()
    for network in topology.networks.values():
        assert network.subnet.subnet_of(LAB_NETWORK)
    for node in topology.nodes.values():
        for network, address in node.addresses.items():
            assert address in topology.networks[network].subnet
            assert address.is_private  # 198.18.0.0/15 is never routed on the internet


def test_only_the_gateways_are_on_the_interconnect_and_every_site_has_a_provider_or_consumer():
    topology = load_topology()
    on_interconnect = {name for name, node in topology.nodes.items() if INTERCONNECT in node.addresses}
    assert on_interconnect == {"gateway-a", "gateway-b"}
    for name, node in topology.nodes.items():
        expected = {topology.sites[node.site].network} | ({INTERCONNECT} if node.role == "gateway" else set())
        assert set(node.addresses) == expected, name
    assert topology.nodes_of("site-a", "provider", "triple") and topology.nodes_of("site-a", "provider", "bolt")
    assert topology.nodes_of("site-b", "consumer", "triple") and topology.nodes_of("site-b", "consumer", "bolt")


def test_site_b_registry_is_the_embedded_dns_of_its_gateway():
    topology = load_topology()
    assert topology.sites["site-b"].registry == "gateway-b"
    config = load_site(topology.sites["site-b"].site_file)
    assert config.registry.kind == "dns" and config.registry.options["mode"] == "embedded"


def test_loopback_and_networked_site_files_offer_the_same_triple_service_and_rules():
    """The loopback lab (site-configs/lab/*.yaml) and the networked labs differ in addresses (and Bolt)."""
    for site in ("site-a", "site-b"):
        loopback, networked = load_site(LAB / f"{site}.yaml"), load_site(LAB / "net" / f"{site}.yaml")
        assert networked.domains == loopback.domains
        assert {p: c.domain for p, c in networked.peers.items()} == {p: c.domain for p, c in loopback.peers.items()}
        triple = [(e.service, e.flavour, dict(e.allow)) for e in networked.exports if e.protocol == "triple"]
        assert triple == [(e.service, e.flavour, dict(e.allow)) for e in loopback.exports]
        assert [(i.service, i.from_site) for i in networked.imports if i.protocol == "triple"] == [
            (i.service, i.from_site) for i in loopback.imports
        ]


@pytest.fixture
def lab_copy(tmp_path: Path) -> Path:
    shutil.copy(TOPOLOGY_FILE, tmp_path / "topology.yaml")
    shutil.copytree(LAB / "net", tmp_path / "net")
    return tmp_path / "topology.yaml"


def _edit(path: Path, change) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_a_site_file_that_drifts_from_the_topology_is_reported(lab_copy):
    site_a = lab_copy.parent / "net" / "site-a.yaml"
    site_a.write_text(site_a.read_text().replace("198.18.1.21:50061", "198.18.1.99:50061"))
    problems = check_site_files(load_topology(lab_copy))
    assert any("198.18.1.99 is no triple provider node of site-a" in p for p in problems), problems
    assert any("provider node provider-a (198.18.1.21) serves no export" in p for p in problems), problems


def test_a_peer_endpoint_off_the_interconnect_is_reported(lab_copy):
    site_b = lab_copy.parent / "net" / "site-b.yaml"
    site_b.write_text(site_b.read_text().replace("endpoints: [198.18.0.10:8443]", "endpoints: [198.18.1.10:8443]"))
    problems = check_site_files(load_topology(lab_copy))
    assert any("peers.site-a.endpoints is on 198.18.1.10" in p for p in problems), problems


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["nodes"]["provider-a"]["addresses"].update(interconnect="198.18.0.30"),
            "provider is on site-a only",
        ),
        (lambda d: d["nodes"]["consumer-b"]["addresses"].update({"site-b": "198.18.1.31"}), "not a host address of"),
        (lambda d: d["nodes"]["consumer-b"]["addresses"].update({"site-b": "198.18.2.1"}), ".1 is Docker's"),
        (lambda d: d["networks"]["site-a"].update(subnet="10.1.0.0/24"), "outside 198.18.0.0/15"),
        (lambda d: d["nodes"].update({"a-very-long-node-name": d["nodes"]["consumer-b"]}), "at most 15"),
        (
            lambda d: d["nodes"]["consumer-b-bolt"]["addresses"].update({"site-b": "198.18.2.31"}),
            "already consumer-b's",
        ),
        (lambda d: d["sites"]["site-b"].update(registry="provider-a"), "not a gateway or registry node"),
    ],
    ids=[
        "provider-on-interconnect",
        "wrong-subnet",
        "docker-gateway-address",
        "not-test-range",
        "long-name",
        "duplicate-address",
        "registry-node",
    ],
)
def test_topology_mistakes_are_refused(lab_copy, change, message):
    _edit(lab_copy, change)
    with pytest.raises(TopologyError, match=None) as info:
        load_topology(lab_copy)
    assert message in str(info.value), str(info.value)


def test_subnets_do_not_overlap():
    subnets = [network.subnet for network in load_topology().networks.values()]
    for index, subnet in enumerate(subnets):
        assert not any(subnet.overlaps(other) for other in subnets[index + 1 :])
    assert ipaddress.ip_network("198.18.0.0/15") == LAB_NETWORK
