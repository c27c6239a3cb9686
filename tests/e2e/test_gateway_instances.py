"""Several gateways per site: two GW-A processes (separate ports, the same site's certificate) listed as site
A's endpoints in site B's file share the calls; one is SIGKILLed under steady load: only calls in flight on it
fail (UNAVAILABLE), every later call succeeds (>= 99.5% over the run), and it takes calls again once restarted.
Once with grpcio callers over Triple, once with sofa-rpc-node callers and provider over Bolt; and each again with
the import's methods declared idempotent (retry): then the calls in flight on the killed one go to the other one,
and none fails."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from interlink.demo.client import EchoClient
from tests.e2e.topology import (
    ALLOWED_APP, METHODS, Gateway, consumer_site, echo_export, free_port, provider_site,
)
from tests.hostile.legit import BoltLoad

APP = (("tri-consumer-appname", ALLOWED_APP),)
RETRY = {"attempts": 2, "idempotent_methods": ["*"]}  # every method idempotent: tried again after a lost link
RETRIES = pytest.mark.parametrize("retry", [None, RETRY], ids=["no-retry", "idempotent-retry"])


@RETRIES
def test_two_gateways_of_one_site_share_calls_and_survive_one_killed(certs, tmp_path, py_provider, retry):
    a_ports, b_peer, b_local = [free_port(), free_port()], free_port(), free_port()
    export = echo_export(py_provider.target, {"site-b": {"apps": [ALLOWED_APP], "methods": METHODS}})
    a_gateways = [Gateway(f"instances-site-a{index}", provider_site(certs, peer_port=port, consumers={"site-b": b_peer},
                                                                  exports=[export]), tmp_path)
                  for index, port in enumerate(a_ports)]
    b_config = consumer_site(certs, triple_port=b_local, peer_port=b_peer, provider_peer_port=a_ports[0])
    b_config["peers"]["site-a"]["endpoints"] = [f"127.0.0.1:{port}" for port in a_ports]
    if retry:
        b_config["imports"][0]["retry"] = retry
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
        retried = [e for e in b.events() if e.get("event") == "call.retried"]
        print(f"grpc instances (retry {bool(retry)}): {len(outcomes)} calls, {len(failed)} failed, {len(retried)} retried")
        assert len(outcomes) > 1000, len(outcomes)
        if retry:  # what was in flight on the killed one went to the other one
            assert failed == [] and all(e["why"] == "idempotent" for e in retried), (failed, retried)
        assert set(failed) <= {"UNAVAILABLE"}, set(failed)
        assert len(failed) <= 0.005 * len(outcomes), (len(failed), len(outcomes))
        assert all(outcome == "OK" for outcome in outcomes[killed_at + 50:]), "calls failed after the kill settled"
        assert _served(a_gateways[0]) > served_before  # the restarted instance takes calls again
    finally:
        for gateway in (b, *a_gateways):
            gateway.stop()


@RETRIES
def test_two_bolt_gateways_of_one_site_share_calls_and_survive_one_killed(certs, tmp_path, bolt_server, bolt_peers,
                                                                         run_bolt_client, retry):
    """The same with sofa-rpc-node callers and provider: Bolt callers -> GW-B's local Bolt port -> two GW-A
    (ALPN bolt links) -> the Bolt provider. The caller's calls are started on schedule (200/s), so the kill
    shows as failed calls, not as a pause."""
    a_ports, b_peer, b_local = [free_port(), free_port()], free_port(), free_port()
    export = echo_export(bolt_server.target, {"site-b": {"apps": [ALLOWED_APP], "methods": ["echo"]}}, protocol="bolt")
    export["version"] = "1.0"
    a_gateways = [Gateway(f"instances-bolt-site-a{index}", provider_site(certs, peer_port=port,
                                                                       consumers={"site-b": b_peer}, exports=[export]),
                          tmp_path)
                  for index, port in enumerate(a_ports)]
    b_config = consumer_site(certs, triple_port=b_local, peer_port=b_peer, provider_peer_port=a_ports[0],
                             protocol="bolt")
    b_config["peers"]["site-a"]["endpoints"] = [f"127.0.0.1:{port}" for port in a_ports]
    if retry:
        b_config["imports"][0]["retry"] = retry
    b = Gateway("instances-bolt-site-b", b_config, tmp_path)
    target = f"127.0.0.1:{b_local}"
    load = BoltLoad(bolt_peers, target, rate=200, timeout_ms=3000, prefix="instances-bolt")
    try:
        for gateway in (*a_gateways, b):
            gateway.start()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # both links up: both instances have served a call
            warm = run_bolt_client(target, "echo", app=ALLOWED_APP, count=20, concurrency=2)
            assert warm["errors"] == 0, warm
            if all(_served(gateway) for gateway in a_gateways):
                break
        assert all(_served(gateway) for gateway in a_gateways), [_served(gateway) for gateway in a_gateways]

        load.start()
        assert load.ready.wait(15), load.stderr_tail
        time.sleep(1.5)
        a_gateways[0].kill()
        killed_at = time.monotonic()
        served_before = _served(a_gateways[0])
        time.sleep(2.0)
        a_gateways[0].start()
        time.sleep(2.5)
        load.stop()
        calls = sorted(load.snapshot(), key=lambda call: call.start)
        served_after = _served(a_gateways[0])
        retried = [e for e in b.events() if e.get("event") == "call.retried"]
    finally:
        load.stop()
        for gateway in (b, *a_gateways):
            gateway.stop()
    failed = [call for call in calls if not call.ok]
    kinds = {(call.code, (call.error or "")[:100]) for call in failed}
    late = [call for call in calls if call.start > killed_at + 0.5]
    # Shown with a failure (and with -s): what the run looked like.
    print(f"bolt instances: {len(calls)} calls, {len(failed)} failed {kinds}, {len(late)} started after the kill "
          f"settled, GW-A #0 served {served_before} -> {served_after}, {len(retried)} retried (retry {bool(retry)})")
    if retry:
        assert failed == [] and all(e["why"] == "idempotent" for e in retried), (kinds, retried)
    assert load.done is not None and load.done["outstanding"] == 0, (load.done, load.stderr_tail)
    assert len(calls) == load.done["issued"], (len(calls), load.done)
    assert len(calls) > 600, len(calls)
    assert len(late) > 300, len(late)  # the restart and the 2.5 s after it are measured too
    assert all("UNAVAILABLE" in (call.error or "") for call in failed), kinds  # the lost link, nothing else
    assert len(failed) <= 0.005 * len(calls), (len(failed), len(calls), kinds)
    assert all(call.ok for call in late), [(call.ident, call.code, call.error) for call in late if not call.ok]
    assert served_after > served_before + 20, (served_before, served_after)  # the restarted instance takes calls


def _served(gateway: Gateway) -> int:
    return sum(1 for e in gateway.events() if e.get("event") == "call" and e.get("status") == "OK")
