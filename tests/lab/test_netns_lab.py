"""The two-site lab in network namespaces (root): site B reaches site A only through the two gateways.

One lab per module (`netns_lab`, about 3 s to start); the checks are the ones `interlink lab --netns`
prints (interlink/labnet/), each asserted here with its details. Every namespace, veth and process is
created and removed by the lab itself; traffic stays on 198.18.0.0/15 inside the namespaces.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from interlink.labnet import (
    FAIL_FAST_MS,
    INTERCONNECT,
    Namespaces,
    check_bolt,
    check_gateway_restart,
    check_interconnect_capture,
    check_isolation,
    check_peer_ports_plaintext,
    check_triple,
    load_topology,
    namespace_names,
)
from tests.lab.netns_state import root_links


def assert_all_ok(outcomes) -> None:
    failed = [f"{o.name}: expected {o.expected}, got {o.got} ({o.detail})" for o in outcomes if not o.ok]
    assert not failed, "\n".join(failed)


def test_namespaces_are_named_per_site_and_run(netns_lab):
    run = netns_lab.namespaces.run_id
    names = set(namespace_names())
    assert {f"ilab-a-{run}", f"ilab-b-{run}", f"ilab-x-{run}"} <= names
    assert {f"ilab-a-{run}-gateway-a", f"ilab-a-{run}-provider-a", f"ilab-b-{run}-consumer-b"} <= names
    # A gateway is dual-homed: one interface on its site network, one on the interconnect, no default route.
    links = netns_lab.namespaces.run("gateway-a", ["ip", "-o", "-4", "addr", "show"], check=True).stdout
    assert "site-a" in links and INTERCONNECT in links
    routes = netns_lab.namespaces.run("gateway-a", ["ip", "route"], check=True).stdout
    assert "default" not in routes and routes.count("proto kernel") == 2, routes


def test_triple_consumer_in_b_finds_the_import_and_gets_answers_from_a(netns_lab):
    outcomes = check_triple(netns_lab)
    assert_all_ok(outcomes)
    assert any("registry lookup" in o.name for o in outcomes)
    echo = next(o for o in outcomes if "echo" in o.name)
    # Served by site A's provider; the caller app was stamped by the gateways, not sent by the consumer.
    assert "served by site-a-echo" in echo.detail and "order-app" in echo.detail, echo.detail
    # Both gateways saw the call: GW-B forwarded it, GW-A's peer ingress allowed it for site-b.
    assert any(
        e.get("method") == "echo" and e.get("status") == "OK" for e in netns_lab.gateway_events("site-b", "call")
    )
    audit = netns_lab.gateway_events("site-a", "audit")
    assert any(
        e.get("method") == "echo" and e.get("peer") == "site-b" and e.get("decision") == "allow" for e in audit
    ), audit[-3:]


def test_bolt_consumer_in_b_gets_answers_from_a(netns_lab, bolt_peers):
    assert netns_lab.bolt is not None
    assert_all_ok(check_bolt(netns_lab))


def test_b_cannot_reach_a_except_through_the_gateways(netns_lab):
    outcomes = check_isolation(netns_lab)
    assert_all_ok(outcomes)
    direct = [o for o in outcomes if "consumer-b -> provider-a " in o.name]
    assert direct and all(o.got == "no route" for o in direct)


def test_peer_ports_speak_only_tls(netns_lab):
    outcomes = check_peer_ports_plaintext(netns_lab)
    assert_all_ok(outcomes)
    assert {o.name.rsplit(", ", 1)[1] for o in outcomes} == {"h2c preface", "HTTP/1.1 GET"}


def test_killing_gateway_a_fails_calls_fast_and_they_recover_after_restart(netns_lab, bolt_peers):
    outcomes = check_gateway_restart(netns_lab)
    assert_all_ok(outcomes)
    killed = next(o for o in outcomes if o.name.endswith("killed: triple call"))
    assert killed.ms < FAIL_FAST_MS and "unreachable" in killed.detail, killed
    assert any(o.name.endswith("restarted: bolt call") for o in outcomes)


def test_interconnect_carried_only_tls_between_the_gateways(netns_lab, tcpdump_ready, bolt_peers):
    # Traffic of both kinds has crossed by now in this module; make sure of it whatever order tests run in.
    assert netns_lab.call_triple("add", discover=False, wait=10.0)[-1]["status"] == "OK"
    assert netns_lab.call_bolt_until_ok("echo", "x")["ok"]
    outcomes = check_interconnect_capture(netns_lab)
    assert_all_ok(outcomes)
    report = netns_lab.interconnect_report()
    assert report.connections >= 2 and report.payload_bytes > 0
    assert {"h2", "bolt"} <= report.alpn_seen
    # The access domain site A gave site B is what GW-B names in SNI.
    assert {sni for sni, _ in report.client_hellos} == {"site-b.gw.site-a.lab"}


def test_teardown_after_a_failure_leaves_nothing(netns_ready):
    topology = load_topology()
    with pytest.raises(RuntimeError, match="boom"):
        with Namespaces(topology) as namespaces:
            sleeper = namespaces.spawn("consumer-b", ["sleep", "600"])
            assert set(namespaces.names()) <= set(namespace_names())
            raise RuntimeError("boom")
    assert sleeper.poll() is not None
    assert not set(namespaces.names()) & set(namespace_names())
    assert root_links() == netns_ready.links


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_removes_namespaces_and_processes(netns_ready, sig):
    before = namespace_names()
    hold = subprocess.Popen(
        [sys.executable, "-m", "interlink.labnet", "hold", "--sleeper"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        state = json.loads(hold.stdout.readline() or "{}")
        assert state.get("namespaces"), hold.stderr.read() if hold.poll() is not None else "no state line"
        assert set(state["namespaces"]) <= set(namespace_names())
        hold.send_signal(sig)
        assert hold.wait(20) == 130
    finally:
        if hold.poll() is None:
            hold.kill()
            hold.wait()
    assert namespace_names() == before
    assert root_links() == netns_ready.links
    deadline = time.monotonic() + 5
    while any(_running(pid) for pid in state["pids"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_running(pid) for pid in state["pids"]), "a process started in the lab still runs"


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_interlink_lab_netns_runs_every_check_and_leaves_nothing(netns_ready):
    before, links = namespace_names(), root_links()  # the module's lab may be running meanwhile
    done = subprocess.run(
        [sys.executable, "-m", "interlink", "lab", "--netns"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "checks, all as expected" in done.stdout
    for must in ("registry lookup", "bolt echo", "no route", "UNAVAILABLE, fast", "TLS only", "no HTTP"):
        assert must in done.stdout, must
    assert namespace_names() == before and root_links() == links
