"""The lab's topology: `site-configs/lab/topology.yaml`, and its agreement with the site files it names.

The file names the networks (subnets of 198.18.0.0/15) and the nodes on them; docker-compose.yml builds
the same topology with containers, namespaces.py with network namespaces. `load_topology` reads it and
lists every problem; `check_site_files` checks the site files against it (addresses, ports, peers,
registry).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]  # the checkout: interlink/labnet/topology.py
TOPOLOGY_FILE = ROOT / "site-configs" / "lab" / "topology.yaml"
LAB_NETWORK = ipaddress.ip_network("198.18.0.0/15")  # RFC 2544: reserved for network testing
INTERCONNECT = "interconnect"
ROLES = ("gateway", "provider", "consumer", "registry")
PROTOCOLS = ("triple", "bolt")
IFNAMSIZ = 15  # longest Linux interface name


class TopologyError(Exception):
    """The topology file is not valid; the message lists every problem."""


@dataclass(frozen=True)
class Network:
    name: str
    subnet: ipaddress.IPv4Network
    internal: bool  # no way out of the lab (Docker: `internal: true`; netns: no default route anyway)
    tag: str  # one letter: namespaces ilab-<tag>-<run>[-<node>]


@dataclass(frozen=True)
class Node:
    name: str
    site: str
    role: str
    addresses: Mapping[str, ipaddress.IPv4Address]  # network -> address
    protocol: str | None = None  # providers and consumers: triple | bolt

    def address(self, network: str) -> str:
        return str(self.addresses[network])


@dataclass(frozen=True)
class LabSite:
    name: str
    network: str
    site_file: Path
    registry: str  # "static", or the node that serves the site's registry


@dataclass(frozen=True)
class Topology:
    path: Path
    networks: Mapping[str, Network]
    sites: Mapping[str, LabSite]
    nodes: Mapping[str, Node]

    def gateway(self, site: str) -> Node:
        return next(node for node in self.nodes.values() if node.site == site and node.role == "gateway")

    def nodes_of(self, site: str, role: str, protocol: str | None = None) -> list[Node]:
        return [
            node
            for node in self.nodes.values()
            if node.site == site and node.role == role and (protocol is None or node.protocol == protocol)
        ]

    def tag_of(self, node: Node) -> str:
        return self.networks[self.sites[node.site].network].tag


def load_topology(path: str | Path | None = None) -> Topology:
    """Read and check the topology file; raise TopologyError listing every problem."""
    path = Path(path or TOPOLOGY_FILE)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise TopologyError(f"{path}: {exc}") from None
    problems: list[str] = []

    def problem(where: str, text: str) -> None:
        problems.append(f"{path}: {where}: {text}")

    networks: dict[str, Network] = {}
    for name, spec in (data.get("networks") or {}).items():
        try:
            subnet = ipaddress.IPv4Network(spec["subnet"])
        except (KeyError, TypeError, ValueError) as exc:
            problem(f"networks.{name}.subnet", f"an IPv4 subnet is required ({exc})")
            continue
        if not subnet.subnet_of(LAB_NETWORK):  # type: ignore[arg-type]
            problem(f"networks.{name}.subnet", f"{subnet} is outside {LAB_NETWORK}, the range reserved for tests")
        tag = str(spec.get("tag", ""))
        if not re.fullmatch(r"[a-z]", tag):
            problem(f"networks.{name}.tag", "one lowercase letter is required (it names the namespaces)")
        if len(name) > IFNAMSIZ:
            problem(f"networks.{name}", f"names an interface: at most {IFNAMSIZ} characters")
        networks[name] = Network(name, subnet, bool(spec.get("internal", False)), tag)
    if INTERCONNECT not in networks:
        problem("networks", f"an `{INTERCONNECT}` network is required")
    tags = [network.tag for network in networks.values()]
    if len(set(tags)) != len(tags):
        problem("networks", "every network needs a tag of its own")

    sites: dict[str, LabSite] = {}
    for name, spec in (data.get("sites") or {}).items():
        network = spec.get("network")
        if network not in networks or network == INTERCONNECT:
            problem(f"sites.{name}.network", f"{network!r} is not a site network of this topology")
        site_file = (path.parent / str(spec.get("site_file", ""))).resolve()
        if not site_file.is_file():
            problem(f"sites.{name}.site_file", f"{site_file} does not exist")
        sites[name] = LabSite(name, network, site_file, str(spec.get("registry", "static")))

    nodes: dict[str, Node] = {}
    seen: dict[ipaddress.IPv4Address, str] = {}
    for name, spec in (data.get("nodes") or {}).items():
        where = f"nodes.{name}"
        if len(name) > IFNAMSIZ or not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name):
            problem(
                where, f"a node name is at most {IFNAMSIZ} lowercase letters, digits and '-' (it names an interface)"
            )
        site, role, protocol = spec.get("site"), spec.get("role"), spec.get("protocol")
        if site not in sites:
            problem(f"{where}.site", f"{site!r} is not one of the sites {sorted(sites)}")
        if role not in ROLES:
            problem(f"{where}.role", f"{role!r} is not one of {', '.join(ROLES)}")
        if role in ("provider", "consumer") and protocol not in PROTOCOLS:
            problem(f"{where}.protocol", f"a {role} needs a protocol: {' or '.join(PROTOCOLS)}")
        addresses: dict[str, ipaddress.IPv4Address] = {}
        for network, text in (spec.get("addresses") or {}).items():
            if network not in networks:
                problem(f"{where}.addresses", f"no network {network!r}")
                continue
            try:
                address = ipaddress.IPv4Address(text)
            except ValueError:
                problem(f"{where}.addresses.{network}", f"{text!r} is not an IPv4 address")
                continue
            subnet = networks[network].subnet
            if address not in subnet or address in (subnet.network_address, subnet[1], subnet.broadcast_address):
                problem(f"{where}.addresses.{network}", f"{address} is not a host address of {subnet} (.1 is Docker's)")
            if address in seen:
                problem(f"{where}.addresses.{network}", f"{address} is already {seen[address]}'s")
            seen[address] = name
            addresses[network] = address
        own = sites[site].network if site in sites else None
        if own is not None and own not in addresses:
            problem(f"{where}.addresses", f"a node of {site} must be on its network {own}")
        expected = {own, INTERCONNECT} if role == "gateway" else {own}
        if own is not None and set(addresses) != expected:
            problem(
                f"{where}.addresses", f"a {role} is on {' and '.join(sorted(expected))} only, not {sorted(addresses)}"
            )
        nodes[name] = Node(name, site, role, addresses, protocol)

    for site in sites.values():
        gateways = [node for node in nodes.values() if node.site == site.name and node.role == "gateway"]
        if len(gateways) != 1:
            problem(f"sites.{site.name}", f"needs exactly one gateway node, has {len(gateways)}")
        if site.registry != "static":
            node = nodes.get(site.registry)
            if node is None or node.site != site.name or node.role not in ("gateway", "registry"):
                problem(
                    f"sites.{site.name}.registry", f"{site.registry!r} is not a gateway or registry node of the site"
                )
    if problems:
        raise TopologyError("\n".join(problems))
    return Topology(path, networks, sites, nodes)


def check_site_files(topology: Topology) -> list[str]:
    """Problems between the topology and the site files it names (addresses, ports, peers, registry)."""
    from interlink.control.registry_sync import RegistryConfigError, embedded_dns
    from interlink.control.sitefile import SiteFileError, load_site

    problems: list[str] = []
    configs = {}
    for site in topology.sites.values():
        try:
            configs[site.name] = load_site(site.site_file)
        except SiteFileError as exc:
            problems.append(str(exc))

    def expect(where: str, what: str, host: str, wanted: str, node: str, network: str) -> None:
        if host != wanted:
            problems.append(f"{where}: {what} is on {host}, but {node}'s address on {network} is {wanted}")

    for name, config in configs.items():
        site = topology.sites[name]
        gateway = topology.gateway(name)
        where = os.path.relpath(site.site_file, topology.path.parent)
        if config.site != name:
            problems.append(f"{where}: site is {config.site}, the topology says {name}")
        if config.listen.peer is not None:
            expect(
                where, "listen.peer", config.listen.peer.host, gateway.address(INTERCONNECT), gateway.name, INTERCONNECT
            )
        for key in ("triple", "bolt", "admin"):
            address = getattr(config.listen, key)
            if address is not None:
                expect(where, f"listen.{key}", address.host, gateway.address(site.network), gateway.name, site.network)
        try:
            dns = embedded_dns(config)
        except RegistryConfigError as exc:
            problems.append(str(exc))
            dns = None
        if site.registry == "static" and config.registry.kind != "static":
            problems.append(f"{where}: registry is {config.registry.kind}, the topology says static")
        elif site.registry != "static":
            registry = topology.nodes[site.registry]
            if registry.role == "gateway" and dns is None:
                problems.append(f"{where}: the topology says {registry.name} serves the registry (embedded DNS-SD)")
            if dns is not None:
                expect(
                    where,
                    "registry.listen",
                    dns.listen.host,
                    registry.address(site.network),
                    registry.name,
                    site.network,
                )
        for peer_name, peer in config.peers.items():
            if peer_name not in topology.sites:
                problems.append(f"{where}: peers.{peer_name} is not a site of the topology")
                continue
            peer_gateway = topology.gateway(peer_name)
            peer_listen = configs.get(peer_name) and configs[peer_name].listen.peer
            for endpoint in peer.endpoints:
                expect(
                    where,
                    f"peers.{peer_name}.endpoints",
                    endpoint.host,
                    peer_gateway.address(INTERCONNECT),
                    peer_gateway.name,
                    INTERCONNECT,
                )
                if peer_listen and endpoint.port != peer_listen.port:
                    problems.append(
                        f"{where}: peers.{peer_name} port {endpoint.port}, but its gateway listens on {peer_listen}"
                    )
        served: set[str] = set()
        for index, export in enumerate(config.exports):
            nodes = {node.address(site.network): node for node in topology.nodes_of(name, "provider", export.protocol)}
            for provider in export.providers:
                if provider.host not in nodes:
                    problems.append(
                        f"{where}: exports[{index}].providers: {provider.host} is no {export.protocol} provider node "
                        f"of {name} (those are {', '.join(sorted(nodes)) or 'none'})"
                    )
                served.add(provider.host)
        for node in topology.nodes_of(name, "provider"):
            if node.address(site.network) not in served:
                problems.append(f"{where}: provider node {node.name} ({node.address(site.network)}) serves no export")
    return problems
