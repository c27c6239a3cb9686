"""The two-site lab on Linux network namespaces: `interlink lab --netns` and the tests in tests/lab.

`site-configs/lab/topology.yaml` names the networks (subnets of 198.18.0.0/15) and the nodes on them;
docker-compose.yml builds the same topology with containers. Here every network is a bridge in a
namespace of its own, and every node is a namespace with one veth per network it is on (the interface is
named after the network, its peer on the bridge after the node):

    ilab-x-<run>                        bridge of the interconnect (tag x)
    ilab-a-<run>, ilab-b-<run>          bridges of the site networks
    ilab-a-<run>-gateway-a, ...         one per node; gateway-a has two interfaces, site-a and interconnect

No link is ever created in the caller's own namespace, nothing forwards (the gateways are dual-homed
hosts with IP forwarding off) and each namespace has only the routes of its own subnets: a node reaches
exactly the networks it is on. IPv6 is off in the lab's namespaces, so the interconnect carries nothing but
ARP and what the gateways send each other.

`Namespaces` builds and removes the namespaces and runs processes in them; everything is removed on exit,
on an exception, on Ctrl-C and on SIGTERM: the processes first (by process group, then whatever else still
runs in a namespace), then the namespaces, which take their veths and bridges with them. `NetnsLab` runs
the two sites in them (certificates, gateways, demo providers, a capture of the interconnect) and the
checks that `interlink lab --netns` prints and tests/lab/test_netns_lab.py asserts.

`python -m interlink.labnet probe HOST:PORT [--send h2c|http1] [--expect connected]` is the TCP probe
the checks run inside a namespace and the compose health checks run in the containers (one JSON line:
connected / no route / refused / timeout, and what came back). `python -m interlink.labnet hold` builds
just the namespaces and keeps them until Ctrl-C, to look around (`ip netns exec ilab-b-<run>-consumer-b
bash`).
"""

from __future__ import annotations

import argparse
import atexit
import errno
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:  # interlink.lab imports grpc: only where calls are made, not for a probe or a health check
    from interlink.lab import Outcome

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGY_FILE = ROOT / "site-configs" / "lab" / "topology.yaml"
PEERS_DIR = ROOT / "tests" / "peers"  # the sofa-rpc-node Bolt demo peers (a source checkout only)
LAB_NETWORK = ipaddress.ip_network("198.18.0.0/15")  # RFC 2544: reserved for network testing
INTERCONNECT = "interconnect"
ROLES = ("gateway", "provider", "consumer", "registry")
PROTOCOLS = ("triple", "bolt")
IFNAMSIZ = 15  # longest Linux interface name
CONSUMER_APP = "order-app"
FAIL_FAST_MS = 2000.0


class TopologyError(Exception):
    """The topology file is not valid; the message lists every problem."""


class NetnsUnavailable(Exception):
    """This machine cannot build the lab (not root, no `ip`, no namespaces); the message says why."""


class LabError(Exception):
    """The lab could not be started; the message says what failed and where its logs are."""


# --- topology ---------------------------------------------------------------------------------------------


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


# --- namespaces --------------------------------------------------------------------------------------------

_RUN_LETTERS = itertools.cycle("abcdefghijklmnopqrstuvwxyz")
_STALE = re.compile(r"^ilab-[a-z]-(?P<pid>\d+)[a-z](?:-|$)")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {done.stderr.strip() or f'exit {done.returncode}'}")
    return done


def namespace_names() -> list[str]:
    """The network namespaces `ip netns list` shows, in its order."""
    done = _ip("netns", "list")
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def require_netns() -> None:
    """Raise NetnsUnavailable unless this process can build the lab."""
    if sys.platform != "linux":
        raise NetnsUnavailable("network namespaces need Linux")
    if os.geteuid() != 0:
        raise NetnsUnavailable("the netns lab needs root (it creates network namespaces and veth pairs)")
    if shutil.which("ip") is None:
        raise NetnsUnavailable("`ip` (iproute2) is not installed")
    try:
        namespace_names()
    except (LabError, OSError) as exc:
        raise NetnsUnavailable(f"`ip netns list` failed: {exc}") from None


def remove_stale() -> list[str]:
    """Remove lab namespaces left by a lab process that no longer runs (one killed with SIGKILL)."""
    removed = []
    for name in namespace_names():
        match = _STALE.match(name)
        if match is None or _alive(int(match["pid"])):
            continue
        _kill_namespace_pids(name)
        if _ip("netns", "del", name, check=False).returncode == 0:
            removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_namespace_pids(name: str) -> None:
    for text in _ip("netns", "pids", name, check=False).stdout.split():
        try:
            os.kill(int(text), signal.SIGKILL)
        except (ValueError, ProcessLookupError):
            pass


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


class Namespaces:
    """The topology's networks and nodes as network namespaces; `close()` (or leaving `with`) removes all.

    `spawn(where, argv)` starts a process inside the namespace of a node (or of a network's bridge) in a
    process group of its own; `run(where, argv)` runs one to completion.
    """

    def __init__(self, topology: Topology, run: str | None = None) -> None:
        self.topology = topology
        self.run_id = run or f"{os.getpid()}{next(_RUN_LETTERS)}"
        self.of_network = {name: f"ilab-{net.tag}-{self.run_id}" for name, net in topology.networks.items()}
        self.of_node = {
            name: f"ilab-{topology.tag_of(node)}-{self.run_id}-{name}" for name, node in topology.nodes.items()
        }
        self.processes: list[subprocess.Popen] = []
        self._created: list[str] = []
        self._closed = False
        self._saved_handlers: dict[int, Any] = {}

    def __enter__(self) -> Namespaces:
        try:
            self.create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def names(self) -> list[str]:
        return [*self.of_network.values(), *self.of_node.values()]

    def namespace(self, where: str) -> str:
        """The namespace of a node or of a network's bridge."""
        return self.of_node.get(where) or self.of_network[where]

    def create(self) -> None:
        require_netns()
        self._trap_signals()
        atexit.register(self.close)
        existing = set(namespace_names())
        clash = [name for name in self.names() if name in existing]
        if clash:
            raise LabError(f"namespace(s) {', '.join(clash)} already exist; remove them with `ip netns del`")
        for hub in self.of_network.values():
            self._add_namespace(hub)
            # No multicast snooping: the bridge itself would send IGMP reports onto the network.
            _ip("-n", hub, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
            _ip("-n", hub, "link", "set", "br0", "up")
        for name, node in self.topology.nodes.items():
            namespace = self.of_node[name]
            self._add_namespace(namespace)
            for network, address in node.addresses.items():
                hub = self.of_network[network]
                prefix = self.topology.networks[network].subnet.prefixlen
                _ip("-n", hub, "link", "add", name, "type", "veth", "peer", "name", network, "netns", namespace)
                _ip("-n", hub, "link", "set", name, "master", "br0", "up")
                _ip("-n", namespace, "addr", "add", f"{address}/{prefix}", "dev", network)
                _ip("-n", namespace, "link", "set", network, "up")

    def _add_namespace(self, name: str) -> None:
        self._created.append(name)  # first: an interrupt right after `ip netns add` must not leak it
        _ip("netns", "add", name)
        # IPv6 off before any link exists (no router solicitations, MLD, DAD on the lab's networks).
        self.run(
            name,
            ["sh", "-c", "for f in all default; do echo 1 > /proc/sys/net/ipv6/conf/$f/disable_ipv6; done"],
            check=True,
        )
        _ip("-n", name, "link", "set", "lo", "up")

    def argv(self, where: str, argv: Iterable[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(where), *argv]

    def spawn(self, where: str, argv: Iterable[str], *, log: Path | None = None, **popen: Any) -> subprocess.Popen:
        """Start `argv` in a namespace, in a process group of its own (so Ctrl-C reaches only us)."""
        if self._closed:
            raise LabError("the lab's namespaces are already removed")
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "ab") as out:
                process = subprocess.Popen(
                    self.argv(where, argv),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    **popen,
                )
        else:
            process = subprocess.Popen(
                self.argv(where, argv), stdin=subprocess.DEVNULL, start_new_session=True, **popen
            )
        self.processes.append(process)
        return process

    def run(
        self, where: str, argv: Iterable[str], *, timeout: float = 60.0, check: bool = False, **kwargs: Any
    ) -> subprocess.CompletedProcess:
        namespace = self.of_node.get(where) or self.of_network.get(where) or where
        done = subprocess.run(
            ["ip", "netns", "exec", namespace, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            **kwargs,
        )
        if check and done.returncode != 0:
            raise LabError(f"in {namespace}: {' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
        return done

    @staticmethod
    def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 3.0) -> int | None:
        """Signal the process group, wait, then SIGKILL it; returns the exit code."""
        if process.poll() is None:
            try:
                os.killpg(process.pid, sig)
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        try:
            os.killpg(process.pid, signal.SIGKILL)  # whatever the group still holds
        except (ProcessLookupError, PermissionError):
            pass
        try:
            return process.wait(5)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        """Stop every process, then remove every namespace (and so every veth and bridge). Idempotent."""
        if self._closed:
            return
        self._closed = True
        interrupts = self._hold_interrupts()
        try:
            for process in reversed(self.processes):
                self.stop(process, timeout=2.0)
            existing = set(namespace_names()) if self._created else set()
            for name in reversed(self._created):
                if name not in existing:
                    continue
                _kill_namespace_pids(name)
                for _ in range(3):
                    if _ip("netns", "del", name, check=False).returncode == 0:
                        break
                    time.sleep(0.1)
        finally:
            atexit.unregister(self.close)
            self._restore_signals(interrupts)

    def _trap_signals(self) -> None:
        """While the lab exists, SIGINT (even if inherited as ignored, as by `cmd &`), SIGTERM and SIGHUP
        raise KeyboardInterrupt, so the `finally` and `with` blocks that remove everything run."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._saved_handlers[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._saved_handlers[sig] = signal.signal(sig, _raise_interrupt)

    def _hold_interrupts(self) -> dict[int, Any]:
        """A second Ctrl-C (or a SIGTERM) must not cut the cleanup short."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

    def _restore_signals(self, held: dict[int, Any]) -> None:
        for sig, handler in held.items():
            signal.signal(sig, self._saved_handlers.get(sig, handler))  # as before the lab
        self._saved_handlers.clear()


# --- capture of the interconnect --------------------------------------------------------------------------

TLS_CONTENT_TYPES = {20: "change_cipher_spec", 21: "alert", 22: "handshake", 23: "application_data"}
TLS_MAX_RECORD = 2**14 + 2048  # TLSCiphertext limit


@dataclass
class Segment:
    src: tuple[str, int]
    dst: tuple[str, int]
    seq: int
    syn: bool
    payload: bytes


@dataclass
class CaptureReport:
    """What crossed a network: the violations of "TLS only, gateway to gateway, peer port only", and a summary."""

    problems: list[str] = field(default_factory=list)
    connections: int = 0
    payload_bytes: int = 0
    client_hellos: list[tuple[str | None, tuple[str, ...]]] = field(default_factory=list)  # (SNI, ALPN offered)

    @property
    def alpn_seen(self) -> set[str]:
        return {protocol for _, offered in self.client_hellos for protocol in offered}


def read_pcap(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(ethertype, L3 bytes) of each Ethernet frame of a classic pcap file; a cut-off last record is skipped."""
    if len(data) < 24:
        return
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError("not a pcap file")
    (linktype,) = struct.unpack_from(endian + "I", data, 20)
    if linktype != 1:
        raise ValueError(f"pcap link type {linktype}, expected Ethernet (1)")
    offset = 24
    while offset + 16 <= len(data):
        _, _, included, _ = struct.unpack_from(endian + "IIII", data, offset)
        offset += 16
        frame = data[offset : offset + included]
        offset += included
        if len(frame) < included or len(frame) < 14:
            return
        (ethertype,) = struct.unpack_from("!H", frame, 12)
        yield ethertype, frame[14:]


def _tcp_segment(packet: bytes) -> Segment | str:
    """A TCP segment of an IPv4 packet, or a description of a packet that is not TCP."""
    version_ihl, _, total = packet[0], packet[1], struct.unpack_from("!H", packet, 2)[0]
    ihl = (version_ihl & 0x0F) * 4
    protocol = packet[9]
    src, dst = socket.inet_ntoa(packet[12:16]), socket.inet_ntoa(packet[16:20])
    if protocol != 6:
        return f"IPv4 protocol {protocol} {src} -> {dst}"
    tcp = packet[ihl:total]
    sport, dport, seq = struct.unpack_from("!HHI", tcp, 0)
    data_offset = (tcp[12] >> 4) * 4
    flags = tcp[13]
    return Segment((src, sport), (dst, dport), seq, bool(flags & 0x02), bytes(tcp[data_offset:]))


def _stream(segments: list[Segment]) -> bytes:
    """The in-order bytes of one direction of a connection, up to the first gap."""
    start = next((s.seq + 1 for s in segments if s.syn), None)
    data = [s for s in segments if s.payload]
    if not data:
        return b""
    if start is None:
        start = min(s.seq for s in data)
    out = bytearray()
    position = start
    for segment in sorted(data, key=lambda s: (s.seq - start) % 2**32):
        offset = (position - segment.seq) % 2**32
        if offset > 2**31:  # a gap before this segment: stop at what is known
            break
        out += segment.payload[offset:] if offset < len(segment.payload) else b""
        position = (start + len(out)) % 2**32
    return bytes(out)


def tls_problem(stream: bytes) -> str | None:
    """None if `stream` is a sequence of TLS records (the last may be cut off), else what is wrong."""
    offset = 0
    while offset + 5 <= len(stream):
        content_type, major, minor, length = (
            stream[offset],
            stream[offset + 1],
            stream[offset + 2],
            struct.unpack_from("!H", stream, offset + 3)[0],
        )
        if content_type not in TLS_CONTENT_TYPES or major != 3 or not 1 <= minor <= 4 or length > TLS_MAX_RECORD:
            return f"not a TLS record at byte {offset}: {stream[offset : offset + 16]!r}"
        offset += 5 + length
    if 0 < len(stream) - offset < 5 and stream[offset] not in TLS_CONTENT_TYPES:
        return f"not a TLS record at byte {offset}: {stream[offset:]!r}"
    return None


def client_hello(stream: bytes) -> tuple[str | None, tuple[str, ...]] | None:
    """(SNI, ALPN protocols offered) of the ClientHello that starts `stream`, or None."""
    try:
        if stream[0] != 22 or stream[5] != 1:
            return None
        body = stream[9 : 9 + int.from_bytes(stream[6:9], "big")]
        offset = 2 + 32  # client version, random
        offset += 1 + body[offset]  # session id
        offset += 2 + int.from_bytes(body[offset : offset + 2], "big")  # cipher suites
        offset += 1 + body[offset]  # compression methods
        end = offset + 2 + int.from_bytes(body[offset : offset + 2], "big")
        offset += 2
        sni, alpn = None, ()
        while offset + 4 <= end:
            kind, length = struct.unpack_from("!HH", body, offset)
            value = body[offset + 4 : offset + 4 + length]
            offset += 4 + length
            if kind == 0 and len(value) > 5:  # server_name: list length, type 0, name length, name
                sni = value[5 : 5 + int.from_bytes(value[3:5], "big")].decode("ascii", "replace")
            elif kind == 16:  # application_layer_protocol_negotiation
                names, at = [], 2
                while at < len(value):
                    names.append(value[at + 1 : at + 1 + value[at]].decode("ascii", "replace"))
                    at += 1 + value[at]
                alpn = tuple(names)
        return sni, alpn
    except (IndexError, struct.error):
        return None


def analyse_capture(
    data: bytes, gateways: Iterable[str], peer_ports: Iterable[int], ignore: Iterable[tuple[str, int]] = ()
) -> CaptureReport:
    """Check that a capture holds nothing but ARP and TLS between `gateways` to or from a `peer_port`.

    Connections with an endpoint in `ignore` (our own plaintext probes) are left out.
    """
    gateways, peer_ports, ignore = set(gateways), set(peer_ports), set(ignore)
    report = CaptureReport()
    flows: dict[tuple[tuple[str, int], tuple[str, int]], list[Segment]] = {}
    for ethertype, packet in read_pcap(data):
        if ethertype == 0x0806:  # ARP
            continue
        if ethertype != 0x0800:
            report.problems.append(f"ethertype 0x{ethertype:04x} (not IPv4 or ARP)")
            continue
        segment = _tcp_segment(packet)
        if isinstance(segment, str):
            report.problems.append(segment)
            continue
        if segment.src in ignore or segment.dst in ignore:
            continue
        if segment.src[0] not in gateways or segment.dst[0] not in gateways:
            report.problems.append(f"TCP {segment.src} -> {segment.dst}: not between gateways")
            continue
        if segment.src[1] not in peer_ports and segment.dst[1] not in peer_ports:
            report.problems.append(f"TCP {segment.src} -> {segment.dst}: not to or from a peer port")
            continue
        flows.setdefault((segment.src, segment.dst), []).append(segment)
    for (src, dst), segments in flows.items():
        stream = _stream(segments)
        report.payload_bytes += len(stream)
        problem = tls_problem(stream)
        if problem is not None:
            report.problems.append(f"{src[0]}:{src[1]} -> {dst[0]}:{dst[1]}: {problem}")
        if dst[1] in peer_ports and stream:  # client to server, and more than a refused SYN
            report.connections += 1
            hello = client_hello(stream)
            if hello is not None:
                report.client_hellos.append(hello)
    return report


class Capture:
    """tcpdump on a network's bridge, written to a pcap file until `stop()`."""

    def __init__(self, namespaces: Namespaces, network: str, path: Path) -> None:
        self.namespaces, self.network, self.path = namespaces, network, path
        self.process: subprocess.Popen | None = None
        self._err = path.with_suffix(".log")

    def start(self, timeout: float = 10.0) -> None:
        tcpdump = shutil.which("tcpdump")
        if tcpdump is None:
            raise LabError("tcpdump is not installed")
        with open(self.path, "wb") as out, open(self._err, "wb") as err:
            self.process = self.namespaces.spawn(
                self.network, [tcpdump, "-i", "br0", "-n", "-U", "-s", "0", "-w", "-"], stdout=out, stderr=err
            )
        _wait_for(self._err, lambda line: "listening on" in line, [self.process], timeout, "tcpdump")

    def snapshot(self) -> bytes:
        return self.path.read_bytes()

    def stop(self) -> bytes:
        if self.process is not None:
            Namespaces.stop(self.process, signal.SIGINT, timeout=5)
        return self.snapshot()


# --- the two sites in namespaces --------------------------------------------------------------------------


def _wait_for(
    path: Path, predicate: Callable[[str], bool], processes: list[subprocess.Popen], timeout: float, what: str
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and any(predicate(line) for line in path.read_text(errors="replace").splitlines()):
            return
        dead = [p for p in processes if p.poll() is not None]
        if dead:
            raise LabError(f"{what} exited with {dead[0].returncode}; see {path}:\n{_tail(path)}")
        time.sleep(0.05)
    raise LabError(f"{what} not ready within {timeout:.0f} s; see {path}:\n{_tail(path)}")


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def _json_event(event: str) -> Callable[[str], bool]:
    def matches(line: str) -> bool:
        try:
            return json.loads(line).get("event") == event
        except (ValueError, AttributeError):
            return False

    return matches


def bolt_peers() -> tuple[str, Path] | None:
    """(node, tests/peers) when the sofa-rpc-node demo peers are installed, else None."""
    node = shutil.which("node")
    if node is None or not (PEERS_DIR / "node_modules" / "sofa-rpc-node").is_dir():
        return None
    return node, PEERS_DIR


class NetnsLab:
    """The topology's two sites running in network namespaces.

    `start()` (or entering `with`) checks the site files against the topology, makes certificates in
    `work`, builds the namespaces, starts a capture of the interconnect, the demo providers and both
    gateways; `close()` removes everything. The methods run consumers and probes inside the namespaces.
    """

    def __init__(
        self, work: Path, topology: Topology | None = None, *, bolt: bool = True, capture: bool = True
    ) -> None:
        self.topology = topology or load_topology()
        self.work = Path(work)
        self.logs = self.work / "logs"
        self.bolt = bolt_peers() if bolt else None
        self.want_capture = capture
        self.namespaces = Namespaces(self.topology)
        self.capture: Capture | None = None
        self.configs: dict[str, Any] = {}  # site -> SiteConfig of the copy in `work`
        self.site_files: dict[str, Path] = {}
        self.gateways: dict[str, subprocess.Popen] = {}  # node -> process
        self.probe_endpoints: set[tuple[str, int]] = set()  # our plaintext probes, left out of the capture check

    def __enter__(self) -> NetnsLab:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- setup

    def start(self) -> None:
        from interlink.control.sitefile import load_site
        from interlink.lab import prepare_sites

        problems = check_site_files(self.topology)
        if problems:
            raise LabError("the site files do not match the topology:\n" + "\n".join(problems))
        sources = {name: site.site_file for name, site in self.topology.sites.items()}
        names = {  # certificate SANs; peers check the site identity (URI SAN), not these
            name: [f"gw.{name}.lab", *map(str, self.topology.gateway(name).addresses.values())]
            for name in self.topology.sites
        }
        files, problems = prepare_sites(sources, self.work, names)
        if problems:
            raise LabError("\n".join(problems))
        self.site_files = files
        self.configs = {name: load_site(path) for name, path in files.items()}
        self.namespaces.create()
        if self.want_capture and shutil.which("tcpdump"):
            self.capture = Capture(self.namespaces, INTERCONNECT, self.work / "interconnect.pcap")
            self.capture.start()
        waits = [self._start_provider(node) for node in self.topology.nodes.values() if node.role == "provider"]
        waits += [self._start_gateway(self.topology.gateway(site)) for site in self.topology.sites]
        for wait in waits:
            if wait is not None:
                wait()

    def _start_provider(self, node: Node) -> Callable[[], None] | None:
        listen = self.provider_listen(node)
        log = self.logs / f"{node.name}.log"
        if node.protocol == "bolt":
            if self.bolt is None:
                return None
            node_exe, peers = self.bolt
            argv = [node_exe, str(peers / "bolt_server.js"), "--listen", listen, "--name", f"{node.site}-bolt"]
        else:
            argv = [sys.executable, "-m", "interlink.demo.provider", "--listen", listen, "--name", f"{node.site}-echo"]
        process = self.namespaces.spawn(node.name, argv, log=log, cwd=ROOT)
        return lambda: _wait_for(log, lambda line: line.startswith("listening on"), [process], 30, node.name)

    def _start_gateway(self, node: Node) -> Callable[[], None]:
        log = self.logs / f"{node.name}.log"
        offset = log.stat().st_size if log.exists() else 0
        argv = [sys.executable, "-m", "interlink", "run", "-c", str(self.site_files[node.site])]
        process = self.namespaces.spawn(node.name, argv, log=log, cwd=ROOT)
        self.gateways[node.name] = process

        started = _json_event("gateway.started")

        def wait() -> None:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise LabError(f"{node.name} exited with {process.returncode}; see {log}:\n{_tail(log)}")
                text = log.read_bytes()[offset:].decode(errors="replace")  # this start's lines only
                if any(started(line) for line in text.splitlines()):
                    return
                time.sleep(0.05)
            raise LabError(f"{node.name} did not start within 30 s; see {log}:\n{_tail(log)}")

        return wait

    def provider_listen(self, node: Node) -> str:
        address = node.address(self.topology.sites[node.site].network)
        for export in self.configs[node.site].exports:
            for provider in export.providers:
                if provider.host == address and export.protocol == node.protocol:
                    return str(provider)
        raise LabError(f"no export of {node.site} names provider node {node.name}")

    def close(self) -> None:
        self.namespaces.close()

    # -- what runs inside

    def consumer(self, protocol: str, site: str | None = None) -> Node:
        sites = [site] if site else list(self.topology.sites)
        return next(n for s in sites for n in self.topology.nodes_of(s, "consumer", protocol))

    def config_of(self, node: Node) -> Any:
        return self.configs[node.site]

    def call_triple(
        self, *cases: str, wait: float = 0.0, discover: bool = True, timeout: float = 5.0, node: Node | None = None
    ) -> list[dict[str, Any]]:
        """`interlink lab call --json` in a Triple consumer's namespace: its JSON lines."""
        from interlink.control.registry_sync import embedded_dns

        node = node or self.consumer("triple")
        config = self.config_of(node)
        argv = [sys.executable, "-m", "interlink", "lab", "call", "--json", "--app", CONSUMER_APP]
        argv += ["--timeout", str(timeout), "--wait", str(wait)]
        dns = embedded_dns(config)
        if discover and dns is not None:
            argv += ["--registry", str(dns.listen), "--zone", dns.zone]
        else:
            argv += ["--target", str(config.listen.triple)]
        for case in cases:
            argv += ["--case", case]
        done = self.namespaces.run(node.name, argv, timeout=wait + timeout * max(1, len(cases)) + 30, cwd=ROOT)
        lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        if not lines:
            raise LabError(f"interlink lab call printed nothing (exit {done.returncode}): {done.stderr.strip()}")
        return lines

    def call_bolt(self, case: str, *args: Any, timeout_ms: int = 3000, node: Node | None = None) -> dict[str, Any]:
        """One call of tests/peers/bolt_client.js in a Bolt consumer's namespace: its JSON line."""
        if self.bolt is None:
            raise LabError("the Bolt demo peers are not installed (bash scripts/setup.sh --test)")
        node = node or self.consumer("bolt")
        node_exe, peers = self.bolt
        argv = [node_exe, str(peers / "bolt_client.js"), "--target", str(self.config_of(node).listen.bolt)]
        argv += ["--case", case, "--app", CONSUMER_APP, "--timeout-ms", str(timeout_ms)]
        for arg in args:
            argv += ["--arg", str(arg)]
        done = self.namespaces.run(node.name, argv, timeout=timeout_ms / 1000 + 30)
        if done.returncode != 0 or not done.stdout.strip():
            raise LabError(f"bolt_client.js exit {done.returncode}: {done.stderr.strip()}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def call_bolt_until_ok(self, case: str, *args: Any, within: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while True:
            result = self.call_bolt(case, *args)
            if result.get("ok") or time.monotonic() > deadline:
                return result
            time.sleep(0.2)

    def probe(self, node: str, target: str, send: str | None = None, timeout: float = 2.0) -> dict[str, Any]:
        """`python -m interlink.labnet probe` in a node's namespace: its JSON result."""
        argv = [sys.executable, "-m", "interlink.labnet", "probe", target, "--timeout", str(timeout)]
        if send:
            argv += ["--send", send]
        done = self.namespaces.run(node, argv, timeout=timeout + 30, cwd=ROOT)
        result = json.loads(done.stdout)
        if result.get("local"):
            self.probe_endpoints.add(tuple(result["local"]))  # type: ignore[arg-type]
        return result

    def sysctl(self, node: str, key: str) -> str:
        path = "/proc/sys/" + key.replace(".", "/")
        return self.namespaces.run(node, ["cat", path], check=True).stdout.strip()

    def kill_gateway(self, site: str) -> None:
        """SIGKILL: a crash, no drain."""
        node = self.topology.gateway(site)
        Namespaces.stop(self.gateways[node.name], signal.SIGKILL)

    def restart_gateway(self, site: str) -> None:
        node = self.topology.gateway(site)
        old = self.gateways[node.name]
        Namespaces.stop(old)
        self.namespaces.processes.remove(old)
        self._start_gateway(node)()

    def gateway_events(self, site: str, event: str) -> list[dict[str, Any]]:
        log = self.logs / f"{self.topology.gateway(site).name}.log"
        out = []
        for line in log.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("event") == event:
                out.append(entry)
        return out

    def interconnect_report(self) -> CaptureReport | None:
        if self.capture is None:
            return None
        gateways = [self.topology.gateway(site).address(INTERCONNECT) for site in self.topology.sites]
        ports = [config.listen.peer.port for config in self.configs.values() if config.listen.peer]
        return analyse_capture(self.capture.snapshot(), gateways, ports, self.probe_endpoints)


# --- the checks: `interlink lab --netns` prints them, tests/lab asserts them ------------------------------


def check_triple(lab: NetnsLab) -> list[Outcome]:
    """Site B's Triple consumer finds the import in its registry and calls site A's provider across."""
    from interlink.lab import Outcome

    consumer = lab.consumer("triple")
    lines = lab.call_triple("echo", "add", "count", "chat", wait=15.0)
    outcomes = []
    for line in lines:
        if "discovered" in line:
            expected = str(lab.config_of(consumer).listen.triple)
            outcomes.append(
                Outcome(
                    f"{consumer.name}: registry lookup of the import",
                    expected,
                    line["discovered"] or "nothing",
                    line["ms"],
                    line.get("registry", ""),
                )
            )
        else:
            outcomes.append(
                Outcome(
                    f"{consumer.name}: triple {line['case']} via both gateways",
                    "OK",
                    line["status"],
                    line["ms"],
                    line.get("detail", ""),
                )
            )
    return outcomes


def check_bolt(lab: NetnsLab) -> list[Outcome]:
    """Site B's Bolt consumer (sofa-rpc-node) calls site A's Bolt provider across; the gateways stamp who calls."""
    from interlink.lab import Outcome

    if lab.bolt is None:  # shown, but not a failure: install them with bash scripts/setup.sh --test
        return [Outcome("bolt calls (sofa-rpc-node peers not installed)", "SKIPPED", "SKIPPED", 0.0)]
    consumer = lab.consumer("bolt")
    outcomes = []
    started = time.perf_counter()
    echo = lab.call_bolt_until_ok("echo", "hello from site-b")
    got = "OK" if echo.get("ok") and echo.get("result") == "hello from site-b" else json.dumps(echo)[:80]
    outcomes.append(
        Outcome(f"{consumer.name}: bolt echo via both gateways", "OK", got, (time.perf_counter() - started) * 1000)
    )
    add = lab.call_bolt("add", 40, 2)
    outcomes.append(
        Outcome(
            f"{consumer.name}: bolt add 40 + 2",
            "OK",
            "OK" if add.get("result") == 42 else json.dumps(add)[:80],
            float(add.get("elapsed_ms", 0)),
        )
    )
    whoami = lab.call_bolt("whoami")
    seen = json.loads(whoami["result"]) if whoami.get("ok") else {}
    headers = seen.get("headers", {})
    stamped = f"{headers.get('x-interlink-caller-site')}/{headers.get('x-interlink-caller-app')}"
    outcomes.append(
        Outcome(
            f"{consumer.name}: bolt caller as the provider sees it",
            f"{consumer.site}/{CONSUMER_APP}",
            stamped,
            float(whoami.get("elapsed_ms", 0)),
        )
    )
    return outcomes


def _reach(result: dict[str, Any]) -> str:
    return result["connect"]


def check_isolation(lab: NetnsLab) -> list[Outcome]:
    """Nothing routes between the sites: site B's nodes cannot reach site A's except through the gateways."""
    from interlink.lab import Outcome

    topology = lab.topology
    outcomes = []
    consumer = lab.consumer("triple")
    own_gateway = topology.gateway(consumer.site)
    config_b = lab.config_of(consumer)
    started = time.perf_counter()
    result = lab.probe(consumer.name, str(config_b.listen.triple))
    outcomes.append(
        Outcome(
            f"{consumer.name} -> its own gateway {config_b.listen.triple}",
            "connected",
            _reach(result),
            (time.perf_counter() - started) * 1000,
        )
    )
    for site in topology.sites:
        if site == consumer.site:
            continue
        network = topology.sites[site].network
        for provider in topology.nodes_of(site, "provider"):
            if provider.protocol == "bolt" and lab.bolt is None:
                continue
            target = lab.provider_listen(provider)
            for source in (consumer, own_gateway):
                started = time.perf_counter()
                result = lab.probe(source.name, target)
                outcomes.append(
                    Outcome(
                        f"{source.name} -> {provider.name} {target} directly",
                        "no route",
                        _reach(result),
                        (time.perf_counter() - started) * 1000,
                        result.get("error", ""),
                    )
                )
        gateway = topology.gateway(site)
        for address in (gateway.address(network), gateway.address(INTERCONNECT)):
            target = f"{address}:{lab.configs[site].listen.peer.port}"
            started = time.perf_counter()
            result = lab.probe(consumer.name, target)
            outcomes.append(
                Outcome(
                    f"{consumer.name} -> {gateway.name} {target}",
                    "no route",
                    _reach(result),
                    (time.perf_counter() - started) * 1000,
                    result.get("error", ""),
                )
            )
    for site in topology.sites:
        gateway = topology.gateway(site)
        outcomes.append(
            Outcome(
                f"{gateway.name}: IP forwarding",
                "off",
                "off" if lab.sysctl(gateway.name, "net.ipv4.ip_forward") == "0" else "ON",
                0.0,
            )
        )
    return outcomes


def classify_reply(result: dict[str, Any]) -> str:
    """What a plaintext client got from a peer port: 'no HTTP' is the only good answer."""
    if result["connect"] != "connected":
        return result["connect"]
    reply = bytes.fromhex(result.get("reply", ""))
    if reply.startswith(b"HTTP/"):
        return "HTTP reply"
    if len(reply) >= 9 and reply[3] == 4 and int.from_bytes(reply[:3], "big") % 6 == 0:
        return "h2 SETTINGS"  # an h2c server answers the preface with a SETTINGS frame
    return "no HTTP"


def describe_reply(result: dict[str, Any]) -> str:
    reply = bytes.fromhex(result.get("reply", ""))
    if not reply:
        return f"closed after {result.get('ms', 0):.0f} ms, nothing sent back" if result.get("closed") else "no reply"
    if reply[:1] == b"\x15":
        return f"TLS alert record ({len(reply)} bytes), then {'closed' if result.get('closed') else 'open'}"
    return f"{len(reply)} bytes: {reply[:24]!r}"


def check_peer_ports_plaintext(lab: NetnsLab) -> list[Outcome]:
    """A plain TCP client on the interconnect gets no HTTP out of a peer port: it speaks only TLS."""
    from interlink.lab import Outcome

    outcomes = []
    sites = list(lab.topology.sites)
    for site, other in zip(sites, sites[1:] + sites[:1], strict=True):
        target = str(lab.configs[site].listen.peer)
        source = lab.topology.gateway(other).name
        for send, label in (("h2c", "h2c preface"), ("http1", "HTTP/1.1 GET")):
            started = time.perf_counter()
            result = lab.probe(source, target, send=send)
            outcomes.append(
                Outcome(
                    f"{source} -> {lab.topology.gateway(site).name} peer port {target}, {label}",
                    "no HTTP",
                    classify_reply(result),
                    (time.perf_counter() - started) * 1000,
                    describe_reply(result),
                )
            )
    return outcomes


def check_interconnect_capture(lab: NetnsLab) -> list[Outcome]:
    """Everything the capture saw on the interconnect was TLS between the gateways on the peer ports."""
    from interlink.lab import Outcome

    report = lab.interconnect_report()
    if report is None:
        return [Outcome("interconnect capture (tcpdump not installed)", "SKIPPED", "SKIPPED", 0.0)]
    got = "TLS only" if not report.problems else report.problems[0]
    alpn = ", ".join(f"{p} x{sum(p in o for _, o in report.client_hellos)}" for p in sorted(report.alpn_seen))
    snis = ", ".join(sorted({sni or "-" for sni, _ in report.client_hellos}))
    outcomes = [
        Outcome(
            "interconnect: only TLS between the gateways' peer ports",
            "TLS only",
            got,
            0.0,
            f"{report.connections} connections, {report.payload_bytes} bytes; ALPN {alpn or 'none'}; "
            f"SNI {snis or 'none'}",
        )
    ]
    wanted = {"h2"} | ({"bolt"} if lab.bolt is not None else set())
    outcomes.append(
        Outcome(
            "interconnect: links seen (ALPN in ClientHellos)",
            ", ".join(sorted(wanted)),
            ", ".join(sorted(report.alpn_seen & wanted)) or "none",
            0.0,
        )
    )
    return outcomes


def check_gateway_restart(lab: NetnsLab, site: str = "site-a") -> list[Outcome]:
    """The provider site's gateway crashes: calls fail fast with UNAVAILABLE, and work again after a restart."""
    from interlink.lab import Outcome

    gateway = lab.topology.gateway(site).name
    outcomes = []
    lab.call_triple("add", discover=False, wait=10.0)  # the link is up before the crash
    lab.kill_gateway(site)
    line = lab.call_triple("add", discover=False)[-1]
    fast = line["ms"] < FAIL_FAST_MS
    outcomes.append(
        Outcome(
            f"{gateway} killed: triple call",
            "UNAVAILABLE, fast",
            f"{line['status']}, {'fast' if fast else 'slow'}",
            line["ms"],
            line.get("detail", ""),
        )
    )
    if lab.bolt is not None:
        result = lab.call_bolt("echo", "while down")
        fast = float(result.get("elapsed_ms", 1e9)) < FAIL_FAST_MS
        error = (result.get("error") or {}).get("message", "")
        outcomes.append(
            Outcome(
                f"{gateway} killed: bolt call",
                "error, fast",
                f"{'OK' if result.get('ok') else 'error'}, {'fast' if fast else 'slow'}",
                float(result.get("elapsed_ms", 0)),
                error[:100],
            )
        )
    started = time.perf_counter()
    lab.restart_gateway(site)
    line = lab.call_triple("add", discover=False, wait=15.0)[-1]
    outcomes.append(
        Outcome(
            f"{gateway} restarted: triple call",
            "OK",
            line["status"],
            (time.perf_counter() - started) * 1000,
            line.get("detail", ""),
        )
    )
    if lab.bolt is not None:
        started = time.perf_counter()
        result = lab.call_bolt_until_ok("echo", "back again")
        outcomes.append(
            Outcome(
                f"{gateway} restarted: bolt call",
                "OK",
                "OK" if result.get("ok") else "error",
                (time.perf_counter() - started) * 1000,
            )
        )
    return outcomes


NETNS_CHECKS = (
    check_triple,
    check_bolt,
    check_isolation,
    check_gateway_restart,
    check_interconnect_capture,  # after the restart: the new links must be TLS too
    check_peer_ports_plaintext,  # our own plaintext probes are left out of the capture check
)


def run_netns_lab(keep: bool = False) -> int:
    """`interlink lab --netns`: build the topology in namespaces, run every check, print the table."""
    from interlink.lab import summary

    try:
        require_netns()
        topology = load_topology()
    except (NetnsUnavailable, TopologyError) as exc:
        print(f"interlink lab --netns: {exc}", file=sys.stderr)
        return 1
    for name in remove_stale():
        print(f"interlink lab --netns: removed {name}, left by a lab that is gone", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="interlink-netns-lab-"))
    outcomes: list = []
    before = namespace_names()
    try:
        with NetnsLab(work, topology) as lab:
            print(f"interlink lab --netns: namespaces {', '.join(lab.namespaces.names())}")
            for check in NETNS_CHECKS:
                outcomes += check(lab)
    except LabError as exc:
        print(f"interlink lab --netns: {exc}", file=sys.stderr)
        keep = True
        return 1
    except KeyboardInterrupt:
        print("interlink lab --netns: interrupted; everything removed", file=sys.stderr)
        return 130
    finally:
        left = sorted(set(namespace_names()) - set(before))
        if left:
            print(f"interlink lab --netns: namespaces left behind: {', '.join(left)}", file=sys.stderr)
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    title = "interlink lab --netns: site-b consumer -> GW-B -> interconnect (mTLS) -> GW-A -> site-a provider"
    return summary(outcomes, work if keep else None, title=title, noun="checks")


# --- probe: a plain TCP client, run inside a namespace ----------------------------------------------------

PROBE_PAYLOADS = {
    "h2c": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000"),  # preface + SETTINGS
    "http1": b"GET / HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n",
}
_CONNECT_ERRORS = {
    errno.ENETUNREACH: "no route",
    errno.EHOSTUNREACH: "no route",
    errno.ECONNREFUSED: "refused",
    errno.ETIMEDOUT: "timeout",
}


def probe(target: str, send: str | None = None, timeout: float = 2.0) -> dict[str, Any]:
    host, _, port = target.rpartition(":")
    started = time.perf_counter()
    result: dict[str, Any] = {"target": target}
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect((host, int(port)))
        except socket.timeout:
            result.update(connect="timeout", error="connect timed out")
            return result
        except OSError as exc:
            result.update(connect=_CONNECT_ERRORS.get(exc.errno or 0, "error"), error=exc.strerror or str(exc))
            return result
        result.update(connect="connected", local=list(sock.getsockname()))
        if send:
            reply, closed = b"", False
            try:
                sock.sendall(PROBE_PAYLOADS[send])
                while len(reply) < 65536:
                    chunk = sock.recv(65536)
                    if not chunk:
                        closed = True
                        break
                    reply += chunk
            except socket.timeout:
                pass
            except OSError as exc:  # reset
                closed = True
                result["error"] = exc.strerror or str(exc)
            result.update(reply=reply.hex(), closed=closed)
        return result
    finally:
        sock.close()
        result["ms"] = (time.perf_counter() - started) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interlink.labnet", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    probe_cmd = commands.add_parser("probe", help="TCP connect (and optionally send plaintext); one JSON line")
    probe_cmd.add_argument("target", help="HOST:PORT")
    probe_cmd.add_argument("--send", choices=sorted(PROBE_PAYLOADS))
    probe_cmd.add_argument("--timeout", type=float, default=2.0)
    probe_cmd.add_argument(
        "--expect",
        choices=["connected", "no route", "refused", "timeout"],
        help="exit 1 unless the connect ended so (for health checks)",
    )
    hold = commands.add_parser("hold", help="build the topology's namespaces, print them, wait for Ctrl-C/SIGTERM")
    hold.add_argument("--topology", type=Path, default=None)
    hold.add_argument("--sleeper", action="store_true", help="also start `sleep` in every node (tests)")
    args = parser.parse_args(argv)
    if args.command == "probe":
        result = probe(args.target, args.send, args.timeout)
        print(json.dumps(result), flush=True)
        return 0 if args.expect is None or result["connect"] == args.expect else 1
    with Namespaces(load_topology(args.topology)) as namespaces:
        if args.sleeper:
            for node in namespaces.topology.nodes:
                namespaces.spawn(node, ["sleep", "600"])
        print(
            json.dumps({"namespaces": namespaces.names(), "pids": [process.pid for process in namespaces.processes]}),
            flush=True,
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
