"""Safe retries between real processes (imports[].retry / exports[].retry):

- a provider that refuses every stream (RST_STREAM REFUSED_STREAM: it processed nothing) beside the demo
  provider: with `retry: {attempts: 2, budget_percent: 100}` on the export every call succeeds, each refused one
  on the other provider, once (the refuser saw it once); without, about half of the calls fail (the default
  budget, 20%, would let only a fifth of the calls go again: tests/gateway/test_call_retries.py);
- two GW-A instances behind one GW-B, one of which cannot reach its providers: it refuses with UNAVAILABLE and
  says it forwarded nothing (x-interlink-unprocessed), so GW-B with `retry: {attempts: 2}` sends the call to the
  other GW-A (the methods need not be idempotent); a non-idempotent call answered UNAVAILABLE by the provider
  itself is never sent twice.
"""

from __future__ import annotations

import grpc

from interlink.demo.client import EchoClient
from interlink.net.pool import FIRST_CONNECT_WAIT
from tests.e2e.topology import (
    ALLOWED_APP, METHODS, SERVICE, Gateway, consumer_site, echo_export, free_port, provider_site, two_sites,
)
from tests.e2e.test_broken_provider import BrokenProvider
from tests.e2e.test_outliers import FailingProvider

APP = (("tri-consumer-appname", ALLOWED_APP),)


def outcomes_of(client: EchoClient, count: int, timeout: float = 5) -> list[str]:
    outcomes = []
    for index in range(count):
        try:
            assert client.echo(f"call-{index}", metadata=APP, timeout=timeout)[0] == f"call-{index}"
            outcomes.append("OK")
        except grpc.RpcError as exc:
            outcomes.append(exc.code().name)
    return outcomes


def test_a_stream_refused_by_a_provider_is_served_by_the_other_provider(certs, tmp_path, py_provider):
    refuser = BrokenProvider(refuse_every_stream=True)
    results = {}
    try:
        for retry in (None, {"attempts": 2, "budget_percent": 100}):  # (half the calls are retried: over 20%)
            options = {"providers": [refuser.target, py_provider.target]}
            if retry:
                options["retry"] = retry
            name = "retry-refused" if retry else "no-retry-refused"
            sites = two_sites(certs, tmp_path / name, py_provider.target, name=name, export_options=options)
            try:
                with EchoClient(sites.triple_target) as client:
                    client.wait_ready()
                    refused_before = refuser.refused
                    results[name] = (outcomes_of(client, 60), refuser.refused - refused_before)
                retried = [e for e in sites.a.events() if e.get("event") == "call.retried"]
            finally:
                sites.stop()
        outcomes, refused = results["no-retry-refused"]
        assert 15 <= outcomes.count("UNAVAILABLE") <= 45 and refused == outcomes.count("UNAVAILABLE"), results
        outcomes, refused = results["retry-refused"]
        assert outcomes == ["OK"] * 60, outcomes
        assert 15 <= refused <= 45 and len(retried) == refused  # each refused call went once more, and only once
        assert {e["why"] for e in retried} == {"unprocessed"}
    finally:
        refuser.sock.close()


def test_a_gateway_that_cannot_reach_its_providers_hands_the_call_to_another_gateway(certs, tmp_path, py_provider):
    failing = FailingProvider()  # answers UNAVAILABLE itself: it may have done something, so never retried
    a_ports, b_peer, b_local = [free_port(), free_port()], free_port(), free_port()
    allow = {"site-b": {"apps": [ALLOWED_APP], "methods": METHODS}}
    unreachable = echo_export(f"127.0.0.1:{free_port()}", allow)  # nothing listens there
    a_gateways = [
        Gateway("retry-site-a0", provider_site(certs, peer_port=a_ports[0], consumers={"site-b": b_peer},
                                               exports=[unreachable]), tmp_path),
        Gateway("retry-site-a1", provider_site(certs, peer_port=a_ports[1], consumers={"site-b": b_peer},
                                               exports=[echo_export(py_provider.target, allow)]), tmp_path),
    ]
    b_config = consumer_site(certs, triple_port=b_local, peer_port=b_peer, provider_peer_port=a_ports[0])
    b_config["peers"]["site-a"]["endpoints"] = [f"127.0.0.1:{port}" for port in a_ports]
    b_config["imports"][0]["retry"] = {"attempts": 2, "budget_percent": 100}  # (half of the calls go again)
    b = Gateway("retry-site-b", b_config, tmp_path)
    try:
        for gateway in (*a_gateways, b):
            gateway.start()
        with EchoClient(f"127.0.0.1:{b_local}") as client:
            client.wait_ready()
            # (a call may wait up to FIRST_CONNECT_WAIT at a GW-A that has never reached its providers: a gateway
            # that just started; it is refused after that, and still has time to go to the other GW-A)
            outcomes = outcomes_of(client, 60, timeout=FIRST_CONNECT_WAIT * 2)
        assert outcomes == ["OK"] * 60, outcomes
        refused = [e for e in a_gateways[0].events() if e.get("event") == "call" and e.get("status") == "UNAVAILABLE"]
        retried = [e for e in b.events() if e.get("event") == "call.retried"]
        assert len(refused) >= 15 and len(retried) == len(refused), (len(refused), len(retried))
        assert {e["why"] for e in retried} == {"unprocessed"}
        served = [e for e in b.events() if e.get("event") == "call" and e.get("attempts") == 2]
        assert len(served) == len(retried) and all(e["status"] == "OK" for e in served)
    finally:
        for gateway in (b, *a_gateways):
            gateway.stop()

    # The same GW-B in front of a provider that answers UNAVAILABLE itself: the answer stands, nothing is resent.
    imports = [{"service": SERVICE, "from": "site-a", "protocol": "triple", "retry": {"attempts": 3}}]
    sites = two_sites(certs, tmp_path / "failing", f"127.0.0.1:{failing.port}", name="retry-failing",
                      site_options={"b": {"imports": imports}})
    try:
        with EchoClient(sites.triple_target) as client:
            client.wait_ready()
            assert set(outcomes_of(client, 10)) == {"UNAVAILABLE"}
        assert failing.calls == 10  # each call reached the provider once
        assert not [e for e in sites.b.events() if e.get("event") == "call.retried"]
    finally:
        sites.stop()
        failing.server.stop(0)
