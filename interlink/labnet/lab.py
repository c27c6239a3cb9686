"""The topology's two sites running in network namespaces: `NetnsLab`.

`NetnsLab` runs the two sites in the namespaces of `Namespaces` (certificates, gateways, demo providers,
a capture of the interconnect), and runs consumers and probes inside them for the checks that
`interlink lab --netns` prints and tests/lab/test_netns_lab.py asserts (checks.py).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from interlink.labnet.capture import Capture, CaptureReport, analyse_capture
from interlink.labnet.namespaces import LabError, Namespaces, _Scoped, _tail, _wait_for
from interlink.labnet.topology import INTERCONNECT, ROOT, Node, Topology, check_site_files, load_topology

PEERS_DIR = ROOT / "tests" / "peers"  # the sofa-rpc-node Bolt demo peers (a source checkout only)
CONSUMER_APP = "order-app"


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


class NetnsLab(_Scoped):
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

    _setup = start

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
