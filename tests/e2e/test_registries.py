"""Seamless access through real registries: the provider site's gateway follows its registry for the
providers, the consumer site's gateway publishes its imports there, and callers use nothing but their own
site's registry.

    ZooKeeper  sofa-rpc-node server --registers in--> ZK-A <--subscribes-- GW-A
               sofa-rpc-node client --discovers GW-B in--> ZK-B <--publishes-- GW-B
    BIND9      provider SRV/TXT in zone A (RFC 2136 + TSIG) <--follows-- GW-A;  GW-B --publishes--> zone B
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import dns.message
import dns.query
import dns.rdatatype
import dns.tsigkeyring
import dns.update
import pytest

from registry_adapters import dnssd
from registry_adapters.model import Instance, ServiceKey
from tests.conftest import Peer, bolt_server_argv, pick_free_port, start_process_peer, stop_process
from tests.e2e.topology import ALLOWED_APP, TwoSites, two_sites
from tests.servers.bind9 import start_bind9

SERVICE = "com.example.EchoService"


def _providers_event(sites: TwoSites, count: int, timeout: float = 10.0) -> dict:
    return sites.a.wait_for_event(
        lambda e: e.get("event") == "registry.providers" and len(e.get("providers", [])) == count, timeout=timeout
    )


def _zk_provider(node: str, zk_address: str, port: int = 0) -> Peer:
    return start_process_peer(
        [*bolt_server_argv(node, listen=f"127.0.0.1:{port}", name="zk-provider"), "--zk", zk_address], "zk-provider"
    )


# --- ZooKeeper: SOFARPC tree on both sides ---------------------------------------------------------------


@pytest.fixture
def zk_sites(certs, tmp_path, zk, own_zookeeper, bolt_peers) -> Iterator[tuple[TwoSites, Peer]]:
    provider = _zk_provider(bolt_peers, zk.address)
    sites = two_sites(
        certs, tmp_path, "", name="zk", protocol="bolt", methods=["echo", "add", "whoami"],
        export_options={"providers": []},
        site_options={
            "a": {"registry": {"kind": "zookeeper", "address": zk.address, "session_timeout_ms": 4000}},
            "b": {"registry": {"kind": "zookeeper", "address": own_zookeeper.address, "session_timeout_ms": 4000}},
        },
    )
    yield sites, provider
    sites.stop()
    if provider.process is not None:
        stop_process(provider.process)


def test_sofa_rpc_node_peers_meet_through_both_gateways_by_zookeeper(zk_sites, own_zookeeper, run_bolt_client):
    sites, provider = zk_sites
    seen = _providers_event(sites, 1)
    assert seen["providers"] == [provider.target]
    # The client knows only site B's ZooKeeper; it finds GW-B there, published as an ordinary provider.
    result = run_bolt_client("", "echo", app=ALLOWED_APP, args=["via zk"], extra_args=["--zk", own_zookeeper.address])
    assert (result["ok"], result["result"]) == (True, "via zk"), result
    assert result["providers"] == [sites.triple_target]
    whoami = run_bolt_client("", "whoami", app=ALLOWED_APP, extra_args=["--zk", own_zookeeper.address])
    assert whoami["whoami"]["headers"]["x-interlink-caller-site"] == "site-b"


def test_provider_gone_fails_fast_and_its_return_heals(zk_sites, zk, own_zookeeper, run_bolt_client, bolt_peers):
    sites, provider = zk_sites
    _providers_event(sites, 1)
    assert provider.process is not None
    provider.process.kill()  # SIGKILL: its ephemeral node goes when its session expires (<= 6 s here)
    provider.process.wait()
    started = time.monotonic()
    _providers_event(sites, 0, timeout=15)
    vanished = time.monotonic() - started
    assert vanished < 8, vanished
    failed = run_bolt_client(sites.triple_target, "echo", app=ALLOWED_APP, args=["x"], timeout_ms=3000)
    assert failed["ok"] is False and "none is known" in failed["error"]["message"], failed
    assert failed["elapsed_ms"] < 1000, failed  # fails fast, does not hang until the timeout
    again = _zk_provider(bolt_peers, zk.address)
    try:
        _providers_event(sites, 1)
        healed = run_bolt_client(sites.triple_target, "echo", app=ALLOWED_APP, args=["back"])
        assert (healed["ok"], healed["result"]) == (True, "back"), healed
    finally:
        assert again.process is not None
        stop_process(again.process)


def test_a_killed_gateways_publication_vanishes_with_its_session(zk_sites, own_zookeeper):
    sites, _ = zk_sites
    path = f"/sofa-rpc/{SERVICE}/providers"
    with _zk_client(own_zookeeper) as client:
        assert len(client.get_children(path)) == 1
        sites.b.kill()
        deadline = time.monotonic() + 10
        while client.get_children(path) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.get_children(path) == []


def test_graceful_stop_withdraws_at_once(zk_sites, own_zookeeper):
    sites, _ = zk_sites
    path = f"/sofa-rpc/{SERVICE}/providers"
    with _zk_client(own_zookeeper) as client:
        assert len(client.get_children(path)) == 1
        assert sites.b.stop() == 0
        assert client.get_children(path) == []


# --- BIND9: RFC 2136 + TSIG on both sides ------------------------------------------------------------------


@contextmanager
def _zk_client(server) -> Iterator:
    client = server.client()
    try:
        yield client
    finally:
        client.stop()
        client.close()


def _register(server, key: ServiceKey, instance: Instance, label: str) -> None:
    """What a provider's own registration does: one signed UPDATE with its DNS-SD records."""
    keyring = dns.tsigkeyring.from_text({server.key_name: (server.key_algorithm, server.key_secret)})
    update = dns.update.UpdateMessage(server.zone, keyring=keyring, keyalgorithm=server.key_algorithm)
    for record in dnssd.records_for(key, instance, server.zone, label, ttl=5):
        update.replace(record.name, record.ttl, record.rdtype, record.text) if record.rdtype in (
            dns.rdatatype.SRV, dns.rdatatype.TXT, dns.rdatatype.A
        ) else update.add(record.name, record.ttl, record.rdtype, record.text)
    response = dns.query.tcp(update, server.address[0], port=server.address[1], timeout=2)
    assert response.rcode() == 0, response


@pytest.fixture
def dns_sites(certs, tmp_path, bolt_peers, bolt_server) -> Iterator[tuple[TwoSites, object, object]]:
    zone_a = start_bind9(tmp_path / "bind-a", zone="site-a.interlink.test")
    zone_b = start_bind9(tmp_path / "bind-b", zone="site-b.interlink.test")

    def registry(server) -> dict:
        return {
            "kind": "dns", "mode": "external", "server": server.server, "zone": server.zone,
            "tsig_name": server.key_name, "tsig_secret": server.key_secret, "ttl": 5, "poll_interval_ms": 200,
        }

    _register(zone_a, ServiceKey(SERVICE), Instance("127.0.0.1", bolt_server.port), "provider-1")
    sites = two_sites(
        certs, tmp_path / "sites", "", name="dns", protocol="bolt", methods=["echo", "whoami"],
        export_options={"providers": []},
        site_options={"a": {"registry": registry(zone_a)}, "b": {"registry": registry(zone_b)}},
    )
    yield sites, zone_a, zone_b
    sites.stop()
    zone_a.stop()
    zone_b.stop()


def test_gateways_publish_and_follow_srv_records_in_bind(dns_sites, run_bolt_client, bolt_peers):
    sites, zone_a, zone_b = dns_sites
    _providers_event(sites, 1)
    # A plain resolver in site B sees GW-B as the provider of the import.
    query = dns.message.make_query(dnssd.browse_name(ServiceKey(SERVICE), zone_b.zone), "PTR")
    answer = dns.query.udp(query, zone_b.address[0], port=zone_b.address[1], timeout=2)
    instances = [rr.target for rrset in answer.answer for rr in rrset]
    assert len(instances) == 1
    srv = dns.query.udp(dns.message.make_query(instances[0], "SRV"), zone_b.address[0], port=zone_b.address[1], timeout=2)
    assert [rr.port for rrset in srv.answer for rr in rrset] == [int(sites.triple_target.rsplit(":", 1)[1])]
    assert run_bolt_client(sites.triple_target, "echo", app=ALLOWED_APP, args=["dns"])["result"] == "dns"
    # The provider moves: GW-A follows the SRV change; calls go to the new port.
    moved = start_process_peer(bolt_server_argv(bolt_peers, name="moved"), "moved")
    try:
        _register(zone_a, ServiceKey(SERVICE), Instance("127.0.0.1", moved.port), "provider-1")
        assert _providers_event(sites, 1)["providers"] != [] and sites.a.wait_for_event(
            lambda e: e.get("event") == "registry.providers" and e.get("providers") == [moved.target]
        )
        whoami = run_bolt_client(sites.triple_target, "whoami", app=ALLOWED_APP)
        assert whoami["whoami"]["served_by"] == "moved", whoami
    finally:
        assert moved.process is not None
        stop_process(moved.process)
    # Graceful stop withdraws GW-B's records.
    assert sites.b.stop() == 0
    gone = dns.query.udp(query, zone_b.address[0], port=zone_b.address[1], timeout=2)
    assert not gone.answer


def test_an_unreachable_registry_stops_the_start_with_the_reason(certs, tmp_path):
    import yaml

    closed = pick_free_port()
    own = certs.site("site-a")
    site = {
        "site": "site-a",
        "listen": {"peer": f"127.0.0.1:{pick_free_port()}"},
        "tls": {"ca": str(own.ca), "cert": str(own.cert), "key": str(own.key)},
        "registry": {"kind": "zookeeper", "address": f"127.0.0.1:{closed}", "session_timeout_ms": 4000},
    }
    path = tmp_path / "site-a.yaml"
    path.write_text(yaml.safe_dump(site))
    done = subprocess.run(
        [sys.executable, "-m", "interlink", "run", "-c", str(path)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1, done
    assert f"registry: cannot connect to ZooKeeper at 127.0.0.1:{closed}" in done.stderr, done.stderr


def test_two_gateways_of_one_site_publish_apart_and_withdraw_only_their_own(zk_sites, own_zookeeper, tmp_path):
    """Several GW-B instances publish the same import, each its own record (its own address): one's graceful stop
    or crash never withdraws the other's."""
    import copy

    from tests.e2e.topology import Gateway, free_port

    sites, _ = zk_sites
    config = copy.deepcopy(sites.b.config)
    config["listen"] = {**config["listen"], "bolt": f"127.0.0.1:{free_port()}", "peer": f"127.0.0.1:{free_port()}"}
    second = Gateway("zk-site-b2", config, tmp_path).start()
    path = f"/sofa-rpc/{SERVICE}/providers"
    try:
        with _zk_client(own_zookeeper) as client:
            deadline = time.monotonic() + 10
            while len(client.get_children(path)) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            both = client.get_children(path)
            assert len(both) == 2
            assert sites.b.stop() == 0
            (left,) = client.get_children(path)
            assert config["listen"]["bolt"].replace(":", "%3A") in left  # the second instance's own record
            second.kill()
            deadline = time.monotonic() + 10
            while client.get_children(path) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert client.get_children(path) == []
    finally:
        second.stop()
