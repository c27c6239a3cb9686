"""Message interop end to end: a real nats-server (JetStream) per site, both gateways as real processes, nats-py
as the producers and consumers. A message published in site B's broker lands in site A's stream, once, in
order, whatever happens to the gateways and the destination broker meanwhile; a message A refuses for good is
dead-lettered in B with its reason."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request

import pytest

from tests.e2e.messaging import PRODUCER_APP, message_sites, publish, read_stream, stream_count, wait_for_count

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def sites(certs, tmp_path, nats_servers):
    server_a, server_b = nats_servers(), nats_servers()
    sites = message_sites(certs, tmp_path, server_a.url, server_b.url, name="messages")
    sites.servers = (server_a, server_b)
    yield sites
    sites.stop()


def _admin_json(port: int, path: str = "/status") -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return json.loads(response.read())


def _admin_text(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return response.read().decode()


def test_a_message_crosses_with_its_headers_ids_and_trace(sites):
    headers = {"Interlink-App": PRODUCER_APP, "order-kind": "express",
               "traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01", "Nats-Msg-Id": "producer-own-id"}
    publish(sites.url_b, "orders.created", [b'{"order": 1}'], headers)

    assert wait_for_count(sites.url_a, "ORDERS", 1, timeout=15) == 1
    (message,) = read_stream(sites.url_a, "ORDERS")
    assert (message.subject, message.data) == ("orders.created", b'{"order": 1}')
    assert message.headers["order-kind"] == "express"
    assert message.headers["Interlink-Origin-Site"] == "site-b"
    assert message.headers["Interlink-Caller-App"] == PRODUCER_APP
    origin_stream = sites.b.wait_for_event(lambda e: e.get("event") == "messages.import_ready"
                                           and e.get("subject") == "orders.created")["stream"]
    assert message.headers["Nats-Msg-Id"] == f"site-b:{origin_stream}:1"  # ours, not the producer's
    assert message.headers["traceparent"].startswith(f"00-{TRACE_ID}-")  # the consumer continues the trace
    # both hops logged it as a call of that trace; A audited it
    crossed = sites.b.wait_for_event(lambda e: e.get("event") == "call" and e.get("ingress") == "messages")
    served = sites.a.wait_for_event(lambda e: e.get("event") == "call" and e.get("ingress") == "peer")
    audit = sites.a.wait_for_event(lambda e: e.get("event") == "audit")
    assert crossed["status"] == served["status"] == "OK", (crossed, served)  # at once: A's streams were ready
    assert crossed["trace_id"] == served["trace_id"] == TRACE_ID
    assert served["method"] == "orders.created" and served["caller_app"] == PRODUCER_APP
    assert (audit["decision"], audit["peer"]) == ("allow", "site-b")

    status_b, status_a = _admin_json(sites.admin_b), _admin_json(sites.admin_a)
    orders = next(item for item in status_b["messaging"]["imports"] if item["subject"] == "orders.created")
    assert (orders["delivered"], orders["dead_lettered"], orders["ready"]) == (1, 0, True)
    assert status_b["messaging"]["broker"]["connected"] is True
    assert status_a["messaging"]["exports"][0]["stored"] == {"site-b": 1}
    metrics = _admin_text(sites.admin_b, "/metrics")
    assert 'interlink_messages_total{outcome="delivered",peer_site="site-a",subject="orders.created"} 1.0' in metrics


def test_refused_messages_are_dead_lettered_with_their_reason_and_the_rest_flow(sites):
    publish(sites.url_b, "payments.settled", [b"not exported"], {"Interlink-App": PRODUCER_APP})
    publish(sites.url_b, "orders.created", [b"wrong app"], {"Interlink-App": "intruder-app"})
    publish(sites.url_b, "orders.created", [b"right app"], {"Interlink-App": PRODUCER_APP})
    publish(sites.url_b, "audit.login", [b"any app"])

    assert wait_for_count(sites.url_b, "INTERLINK_DEAD", 2, timeout=15) == 2
    dead = {message.data: message for message in read_stream(sites.url_b, "INTERLINK_DEAD")}
    assert dead[b"not exported"].subject == "interlink.dead.payments.settled"
    assert dead[b"not exported"].headers["Interlink-Dead-Letter-Status"] == "UNIMPLEMENTED"
    assert dead[b"not exported"].headers["Interlink-Dead-Letter-Reason"] == \
        "subject payments.settled is not exported by site site-a"
    assert dead[b"wrong app"].headers["Interlink-Dead-Letter-Status"] == "PERMISSION_DENIED"
    assert dead[b"wrong app"].headers["Interlink-Dead-Letter-Reason"] == \
        "app intruder-app of site site-b may not call subject orders.created"
    assert dead[b"wrong app"].headers["Interlink-Dead-Letter-Peer"] == "site-a"

    assert wait_for_count(sites.url_a, "ORDERS", 1, timeout=15) == 1
    assert wait_for_count(sites.url_a, "AUDIT", 1, timeout=15) == 1
    assert [m.data for m in read_stream(sites.url_a, "ORDERS")] == [b"right app"]
    denials = [e for e in sites.a.events() if e.get("event") == "audit" and e.get("decision") == "deny"]
    assert sorted(e["reason"] for e in denials) == [
        "app intruder-app of site site-b may not call subject orders.created",
        "subject payments.settled is not exported by site site-a",
    ]
    time.sleep(1.0)  # dead letters are not sent again
    assert stream_count(sites.url_b, "INTERLINK_DEAD") == 2
    assert len([e for e in sites.a.events() if e.get("event") == "audit" and e.get("decision") == "deny"]) == 2


def _check_exactly_once_in_order(url: str, stream: str, total: int) -> None:
    received = read_stream(url, stream)
    numbers = [int(message.data.split(b":")[1]) for message in received]
    assert len(received) == total, f"{len(received)} messages in {stream}, {total} published"
    assert numbers == list(range(total)), "lost, duplicated or out of order"
    assert len({message.headers["Nats-Msg-Id"] for message in received}) == total


def test_messages_survive_both_gateways_killed_and_restarted(sites):
    """10,000 messages published in B while GW-A and then GW-B are SIGKILLed and restarted: A's stream ends with
    each exactly once, in order."""
    total = 10_000
    payloads = [b"order:%d:" % index + b"x" * 100 for index in range(total)]
    producer = threading.Thread(target=publish, args=(sites.url_b, "orders.created", payloads,
                                                      {"Interlink-App": PRODUCER_APP}), kwargs={"chunk": 200})
    producer.start()
    try:
        assert wait_for_count(sites.url_a, "ORDERS", 1_500, timeout=60) >= 1_500
        sites.a.kill()
        time.sleep(1.0)
        sites.a.start()
        killed_b_at = wait_for_count(sites.url_a, "ORDERS", 5_000, timeout=60)
        assert killed_b_at >= 5_000
        sites.b.kill()
        time.sleep(1.0)
        sites.b.start()
    finally:
        producer.join(120)
    assert not producer.is_alive()
    assert wait_for_count(sites.url_a, "ORDERS", total, timeout=90) == total
    time.sleep(2.0)  # nothing more arrives (a duplicate would show here)
    _check_exactly_once_in_order(sites.url_a, "ORDERS", total)


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def test_a_paused_destination_broker_delays_messages_but_loses_none(sites):
    """Site A's broker stopped (SIGSTOP) for 10 s while B's producers keep publishing: nothing is lost or doubled,
    and neither gateway's memory grows with the backlog (it waits in B's broker)."""
    server_a = sites.servers[0]
    total = 3_000
    payloads = [b"order:%d:" % index + b"y" * 1000 for index in range(total)]
    publish(sites.url_b, "orders.created", payloads[:500], {"Interlink-App": PRODUCER_APP})
    assert wait_for_count(sites.url_a, "ORDERS", 500, timeout=30) == 500
    rss_before = {gateway.name: _rss_kib(gateway.process.pid) for gateway in (sites.a, sites.b)}
    server_a.pause()
    try:
        publish(sites.url_b, "orders.created", payloads[500:], {"Interlink-App": PRODUCER_APP})
        time.sleep(10)
        rss_paused = {gateway.name: _rss_kib(gateway.process.pid) for gateway in (sites.a, sites.b)}
    finally:
        server_a.resume()
    assert wait_for_count(sites.url_a, "ORDERS", total, timeout=60) == total
    _check_exactly_once_in_order(sites.url_a, "ORDERS", total)
    for name, before in rss_before.items():
        # 2,500 KiB-sized messages waited meanwhile: held by B's broker, not by the gateways (at most one window)
        assert rss_paused[name] - before < 16 * 1024, (name, before, rss_paused[name])
    redelivered = next(item for item in _admin_json(sites.admin_b)["messaging"]["imports"]
                       if item["subject"] == "orders.created")["redelivered"]
    assert redelivered > 0  # they were held and sent again, not dropped
    assert os.path.exists(f"/proc/{sites.a.process.pid}")


def test_a_hostile_peer_cannot_forge_origins_ids_or_bodies(sites, certs):
    """Site B's certificate, but not site B's gateway: what it sends is believed only as far as the certificate
    goes (origin site, de-duplication id), and what cannot be a message is refused without reaching the broker."""
    from interlink.wire import message_link
    from tests.e2e.rawgrpc import call, grpc_request_headers, mtls_context
    from tests.e2e.topology import access_domain

    b = certs.site("site-b")
    context = mtls_context(certs.site("site-a").ca, b.cert, b.key)
    domain = access_domain("site-b", "site-a")
    port = int(sites.a.config["listen"]["peer"].rsplit(":", 1)[1])
    headers = grpc_request_headers("/interlink.messaging.v1.MessageLink/orders.created", domain,
                                   extra=[("x-interlink-caller-app", PRODUCER_APP)])

    def deliver(body: bytes):
        return call("127.0.0.1", port, headers, body, context=context, sni=domain)

    forged = message_link.Delivery(
        data=b"forged", headers=(("Interlink-Origin-Site", "site-c"), ("Nats-Msg-Id", "site-c:OUT:1"),
                                 ("Nats-Expected-Last-Sequence", "99"), ("kind", "x")),
        message_id="site-c:OUT:1", origin_site="site-c", origin_stream="OUT", origin_sequence=1)
    result = deliver(message_link.encode_delivery(forged))
    assert result.grpc_status == 0, result.grpc_message
    malformed = deliver(b"\xff" * 40)
    assert (malformed.grpc_status, malformed.grpc_message.startswith("malformed Delivery")) == (3, True)
    huge = deliver(message_link.encode_delivery(
        message_link.Delivery(b"z" * 12_000, (), "x", "site-b", "OUT", 2)))
    assert huge.grpc_status == 3 and "exceeds site site-a's limit" in huge.grpc_message

    (stored,) = read_stream(sites.url_a, "ORDERS")
    assert stored.data == b"forged"
    assert stored.headers["Interlink-Origin-Site"] == "site-b"  # the certificate's site, not the claim
    assert stored.headers["Nats-Msg-Id"] == "site-b:OUT:1"
    assert "Nats-Expected-Last-Sequence" not in stored.headers and stored.headers["kind"] == "x"
    # the gateway kept serving: a real message from B still crosses
    publish(sites.url_b, "orders.created", [b"after"], {"Interlink-App": PRODUCER_APP})
    assert wait_for_count(sites.url_a, "ORDERS", 2, timeout=15) == 2
