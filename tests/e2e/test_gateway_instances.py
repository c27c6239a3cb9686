"""Several gateways per site: two GW-A processes (separate ports, the same site's certificate) listed as site
A's endpoints in site B's file share the calls; one is SIGKILLed under steady load: only calls in flight on it
fail (UNAVAILABLE), every later call succeeds (>= 99.5% over the run), and it takes calls again once restarted."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from interlink.demo.client import EchoClient
from tests.e2e.topology import (
    ALLOWED_APP, METHODS, Gateway, consumer_site, echo_export, free_port, provider_site,
)

APP = (("tri-consumer-appname", ALLOWED_APP),)


def test_two_gateways_of_one_site_share_calls_and_survive_one_killed(certs, tmp_path, py_provider):
    a_ports, b_peer, b_local = [free_port(), free_port()], free_port(), free_port()
    export = echo_export(py_provider.target, {"site-b": {"apps": [ALLOWED_APP], "methods": METHODS}})
    a_gateways = [Gateway(f"instances-site-a{index}", provider_site(certs, peer_port=port, consumers={"site-b": b_peer},
                                                                  exports=[export]), tmp_path)
                  for index, port in enumerate(a_ports)]
    b_config = consumer_site(certs, triple_port=b_local, peer_port=b_peer, provider_peer_port=a_ports[0])
    b_config["peers"]["site-a"]["endpoints"] = [f"127.0.0.1:{port}" for port in a_ports]
    b = Gateway("instances-site-b", b_config, tmp_path)
    try:
        for gateway in (*a_gateways, b):
            gateway.start()
        with EchoClient(f"127.0.0.1:{b_local}") as client:
            client.wait_ready()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # both links up: both instances have served a call
                client.echo("warm", metadata=APP)
                if all(_served(gateway) for gateway in a_gateways):
                    break
            assert all(_served(gateway) for gateway in a_gateways)

            outcomes: list[str] = []
            lock = threading.Lock()
            stop = threading.Event()

            def load() -> None:
                while not stop.is_set():
                    try:
                        client.echo("hi", metadata=APP, timeout=5)
                        outcome = "OK"
                    except grpc.RpcError as exc:
                        outcome = exc.code().name
                    with lock:
                        outcomes.append(outcome)

            with ThreadPoolExecutor(4) as pool:
                workers = [pool.submit(load) for _ in range(4)]
                time.sleep(1.5)
                a_gateways[0].kill()
                killed_at = len(outcomes)
                time.sleep(2.0)
                served_before = _served(a_gateways[0])
                a_gateways[0].start()
                time.sleep(2.5)
                stop.set()
                for worker in workers:
                    worker.result()
        failed = [outcome for outcome in outcomes if outcome != "OK"]
        assert len(outcomes) > 1000, len(outcomes)
        assert set(failed) <= {"UNAVAILABLE"}, set(failed)
        assert len(failed) <= 0.005 * len(outcomes), (len(failed), len(outcomes))
        assert all(outcome == "OK" for outcome in outcomes[killed_at + 50:]), "calls failed after the kill settled"
        assert _served(a_gateways[0]) > served_before  # the restarted instance takes calls again
    finally:
        for gateway in (b, *a_gateways):
            gateway.stop()


def _served(gateway: Gateway) -> int:
    return sum(1 for e in gateway.events() if e.get("event") == "call" and e.get("status") == "OK")
