"""The checks that `interlink lab --netns` prints (`run_netns_lab`) and tests/lab/test_netns_lab.py asserts.

Each check takes a running `NetnsLab` and returns its outcomes (interlink.lab.Outcome): calls across
both gateways, isolation of the sites, a gateway crash and restart, the capture of the interconnect and
plaintext probes of the peer ports.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from interlink.labnet.lab import CONSUMER_APP, NetnsLab
from interlink.labnet.namespaces import LabError, NetnsUnavailable, namespace_names, remove_stale, require_netns
from interlink.labnet.probe import classify_reply, describe_reply
from interlink.labnet.topology import INTERCONNECT, TopologyError, load_topology

log = structlog.get_logger("interlink.lab")

if TYPE_CHECKING:  # interlink.lab imports grpc: only where calls are made, not for a probe or a health check
    from interlink.lab import Outcome

FAIL_FAST_MS = 2000.0


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
        log.error("lab.netns_unavailable", error=str(exc))
        return 1
    for name in remove_stale():
        log.warning("lab.netns_stale_removed", namespace=name, reason="left by a lab that is gone")
    work = Path(tempfile.mkdtemp(prefix="interlink-netns-lab-"))
    outcomes: list = []
    before = namespace_names()
    try:
        with NetnsLab(work, topology) as lab:
            log.info("lab.netns_built", namespaces=lab.namespaces.names())
            for check in NETNS_CHECKS:
                outcomes += check(lab)
    except LabError as exc:
        log.error("lab.netns_failed", error=str(exc), kept=str(work))
        keep = True
        return 1
    except KeyboardInterrupt:
        log.warning("lab.netns_interrupted", removed=True)
        return 130
    finally:
        left = sorted(set(namespace_names()) - set(before))
        if left:
            log.error("lab.netns_left_behind", namespaces=left)
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    title = "interlink lab --netns: site-b consumer -> GW-B -> interconnect (mTLS) -> GW-A -> site-a provider"
    return summary(outcomes, work if keep else None, title=title, noun="checks")
