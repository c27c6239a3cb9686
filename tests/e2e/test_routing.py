"""Routing stages over an export's providers between real processes (grpcio caller, two demo providers tagged
with zone, unit and weight): weighted 80/20 within ±4 points over 2,000 calls; after a SIGHUP to
[target_zone, unit, nearest, weighted] with the gateway in zone hz-a: the local zone by default, the zone or unit a
call names (x-interlink-target-zone / x-interlink-unit, carried across the link), and spill-over to the other
zone when the local one has no provider up."""

from __future__ import annotations

import copy
import time
from collections import Counter

from interlink.demo import provider as demo_provider
from interlink.demo.client import EchoClient, md_value
from tests.e2e.test_reload import _reload
from tests.e2e.topology import ALLOWED_APP, free_port, two_sites

APP = (("tri-consumer-appname", ALLOWED_APP),)


def test_weighted_then_zone_unit_and_nearest_routing(certs, tmp_path):
    ports = [free_port(), free_port()]
    near = demo_provider.serve(f"127.0.0.1:{ports[0]}", name="hz-a-u00")
    far = demo_provider.serve(f"127.0.0.1:{ports[1]}", name="hz-b-u01")
    providers = [{"address": f"127.0.0.1:{ports[0]}", "zone": "hz-a", "unit": "u00", "weight": 80},
                 {"address": f"127.0.0.1:{ports[1]}", "zone": "hz-b", "unit": "u01", "weight": 20}]
    sites = two_sites(certs, tmp_path, "", name="routing",
                      export_options={"providers": providers, "routing": ["weighted"]})
    try:
        with EchoClient(sites.triple_target) as client:
            def served(extra=(), count=1) -> Counter:
                return Counter(md_value(client.echo("hi", metadata=APP + tuple(extra))[1], "x-served-by")
                               for _ in range(count))

            client.wait_ready()
            served(count=50)  # both providers connected
            weighted = served(count=2000)
            share = weighted["hz-a-u00"] / 2000
            assert 0.76 <= share <= 0.84, weighted

            staged = copy.deepcopy(sites.a.config)
            staged["zone"] = "hz-a"
            staged["exports"][0]["routing"] = ["target_zone", "unit", "nearest", "weighted"]
            _reload(sites.a, staged)
            assert served(count=100) == Counter({"hz-a-u00": 100})  # nearest: the gateway's own zone
            assert served([("x-interlink-target-zone", "hz-b")], 100) == Counter({"hz-b-u01": 100})
            assert served([("x-interlink-unit", "u01")], 100) == Counter({"hz-b-u01": 100})
            assert served([("x-interlink-target-zone", "nowhere")], 50) == Counter({"hz-a-u00": 50})  # skipped

            near.stop(0)  # the local zone has no provider up: spill over to the other
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    if served(count=1) == Counter({"hz-b-u01": 1}):
                        break
                except Exception:  # noqa: BLE001 - a call in flight on the stopped provider
                    pass
                time.sleep(0.05)
            assert served(count=50) == Counter({"hz-b-u01": 50})
    finally:
        sites.stop()
        near.stop(0)
        far.stop(0)


def test_a_reload_changing_weights_under_load_fails_no_call(certs, tmp_path):
    import threading

    ports = [free_port(), free_port()]
    servers = [demo_provider.serve(f"127.0.0.1:{ports[0]}", name="first"),
               demo_provider.serve(f"127.0.0.1:{ports[1]}", name="second")]
    providers = [{"address": f"127.0.0.1:{ports[0]}", "weight": 80},
                 {"address": f"127.0.0.1:{ports[1]}", "weight": 20}]
    sites = two_sites(certs, tmp_path, "", name="reweigh",
                      export_options={"providers": providers, "routing": ["weighted"]})
    try:
        with EchoClient(sites.triple_target) as client:
            client.wait_ready()
            outcomes: list[str] = []
            stop = threading.Event()

            def load() -> None:
                while not stop.is_set():
                    try:
                        outcomes.append(md_value(client.echo("hi", metadata=APP)[1], "x-served-by"))
                    except Exception as exc:  # noqa: BLE001 - any failure is what this test counts
                        outcomes.append(f"failed: {exc}")

            workers = [threading.Thread(target=load) for _ in range(3)]
            for worker in workers:
                worker.start()
            time.sleep(1.0)
            reweighed = copy.deepcopy(sites.a.config)
            reweighed["exports"][0]["providers"][0]["weight"] = 20
            reweighed["exports"][0]["providers"][1]["weight"] = 80
            _reload(sites.a, reweighed)
            after = len(outcomes)
            time.sleep(1.5)
            stop.set()
            for worker in workers:
                worker.join(10)
        failed = [outcome for outcome in outcomes if outcome.startswith("failed")]
        assert not failed, failed[:3]
        later = Counter(outcomes[after:])
        assert sum(later.values()) > 300 and later["second"] / sum(later.values()) > 0.7, later
    finally:
        sites.stop()
        for server in servers:
            server.stop(0)


def test_bolt_callers_route_by_zone_by_user_id_and_by_header_rule(certs, tmp_path, bolt_peers, run_bolt_client):
    """sofa-rpc-node callers and providers over Bolt: the caller's request props become Bolt header keys. GW-A
    (zone hz-a) routes [header rule, target_zone, unit, nearest] over two tagged providers; GW-B maps the caller's
    user id (x-uid) to its unit by the site's unit_rule and stamps it across the link."""
    from tests.conftest import bolt_server_argv, start_process_peer, stop_process

    servers = [start_process_peer(bolt_server_argv(bolt_peers, name=name), name) for name in ("bolt-hz-a", "bolt-hz-b")]
    providers = [{"address": servers[0].target, "zone": "hz-a", "unit": "u00"},
                 {"address": servers[1].target, "zone": "hz-b", "unit": "u01", "group": "canary"}]
    routing = [{"header": "x-release", "values": ["canary"], "group": "canary"}, "target_zone", "unit", "nearest"]
    sites = two_sites(certs, tmp_path, "", name="bolt-routing", protocol="bolt", methods=["whoami"],
                      export_options={"providers": providers, "routing": routing},
                      site_options={"a": {"zone": "hz-a"},
                                    "b": {"unit_rule": {"header": "x-uid", "units": {"u00": "00-49", "u01": "50-99"}}}})
    try:
        def served(props: dict[str, str], count: int = 3) -> Counter:
            results = [run_bolt_client(sites.triple_target, "whoami", app=ALLOWED_APP, props=props) for _ in range(count)]
            assert all(result["ok"] for result in results), results
            return Counter(result["whoami"]["served_by"] for result in results)

        assert served({}) == Counter({"bolt-hz-a": 3})  # nearest: the gateway's own zone
        assert served({"x-interlink-target-zone": "hz-b"}) == Counter({"bolt-hz-b": 3})
        assert served({"x-interlink-unit": "u01"}) == Counter({"bolt-hz-b": 3})
        assert served({"x-uid": "2088000000000077"}) == Counter({"bolt-hz-b": 3})  # shard 77: unit u01
        assert served({"x-uid": "2088000000000012"}) == Counter({"bolt-hz-a": 3})  # shard 12: unit u00
        assert served({"x-release": "canary"}) == Counter({"bolt-hz-b": 3})  # the header rule's group
    finally:
        sites.stop()
        for server in servers:
            assert server.process is not None
            stop_process(server.process)
