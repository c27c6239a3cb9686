"""The harness itself, with no attack: these must pass against any working gateway, so that an attack test's
failure is the gateway's, not the harness's. They check the legit load, RSS sampling, the provider's
record (including cancellation), the attackers' request formats (a request they send unreset reaches the
provider) and the observation of a GOAWAY and of a connection's end (seen from both sides)."""

from __future__ import annotations

import time

import grpc

from interlink.demo.client import EchoClient
from tests.hostile import boltattack, h2attack
from tests.hostile.boltattack import BoltReader
from tests.hostile.h2attack import ERROR_NAMES, PROTOCOL_ERROR
from tests.hostile.probes import MIB, holds_connection, wait_until


def test_baseline_legit_traffic_probes_and_provider_record(hostile):
    run = hostile.begin()
    with run.attack():
        time.sleep(3.0)  # no attack: the window is just legit traffic
    run.settle()
    run.expect_legit()
    run.expect_rss()
    run.expect_healthy()
    for stats in run.legit_stats():
        run.expect(stats.calls >= 25, f"legit {stats.name}: only {stats.calls} calls in 3 s + 1 s")
    series = run.rss.series["GW-B"]
    run.expect(len(series.samples) >= 30, f"RSS sampled {len(series.samples)} times in > 4 s (every ~100 ms)")
    run.expect(series.last() > 10 * MIB, f"GW-B RSS {series.last()} B is implausible")
    # The provider saw every legit gRPC call that succeeded, under the id the client sent.
    seen = {r.get("id") for r in hostile.sites.provider_records() if r.get("ev") == "start"}
    ok_ids = {r.ident for r in run.grpc.snapshot() if r.ok}
    run.expect(ok_ids and ok_ids <= seen, f"provider record misses {len(ok_ids - seen)} of {len(ok_ids)} ok calls")
    cpu = run.cpu_during()
    run.note("baseline CPU per second of legit load", {k: round(v / run.window.seconds, 3) for k, v in cpu.items()})
    run.verdict()


def test_recording_provider_sees_cancelled_calls(hostile):
    """Against the provider directly: a call whose caller gave up is recorded as cancelled."""
    provider = hostile.sites.provider
    with EchoClient(provider.target) as client:
        try:
            client.sleep(1500, timeout=0.3, metadata=(("x-attack-id", "harness-deadline"),))
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        else:
            raise AssertionError("sleep(1500) with a 300 ms deadline succeeded")

    def ended():
        return [r for r in hostile.sites.provider_records() if r.get("id") == "harness-deadline" and r["ev"] == "end"]

    records = wait_until(ended, timeout=5)
    assert records and records[0]["cancelled"] is True, hostile.sites.provider_records()


def test_raw_h2_request_reaches_the_provider_and_goaway_is_seen(hostile):
    sites = hostile.sites
    port = sites.triple_port
    authority = sites.triple_target
    # 1. The attackers' request format is a valid call: unreset, it is answered and the provider sees it.
    conn = h2attack.open_h2(port, decode_headers=True)
    headers = h2attack.grpc_request_headers("echo", authority, attack_id="harness-raw-1")
    conn.send(h2attack.request_frames(1, headers, h2attack.echo_message(b"raw")))
    assert conn.pump_until(lambda: conn.reader.stream(1).ended, timeout=10), conn.result()
    assert conn.reader.stream(1).grpc_status == 0, conn.reader.stream(1)
    assert any(r.get("id") == "harness-raw-1" for r in sites.provider_records())
    # The same with Huffman-coded values (the large-header attack's encoding).
    headers = h2attack.grpc_request_headers("echo", authority, attack_id="harness-raw-3", extra=[("x-pad", "ab" * 100)])
    conn.send(h2attack.request_frames(3, headers, h2attack.echo_message(b"raw"), huffman_values=True))
    assert conn.pump_until(lambda: conn.reader.stream(3).ended, timeout=10), conn.result()
    assert conn.reader.stream(3).grpc_status == 0, conn.reader.stream(3)
    # 2. Both sides of a connection's end are visible: GW-B holds it now ...
    assert holds_connection(sites.b.pid, port, conn.local_port)
    # ... and a frame every HTTP/2 endpoint must refuse (DATA on stream 0) gets GOAWAY PROTOCOL_ERROR + close.
    conn.send(h2attack.frame(h2attack.DATA, 0, 0, b"x"))
    end = h2attack.drain(conn, timeout=5)
    assert end.goaway_code == PROTOCOL_ERROR, f"{end} (GOAWAY {ERROR_NAMES.get(end.goaway_code)})"
    assert end.closed, end
    assert wait_until(lambda: not holds_connection(sites.b.pid, port, conn.local_port), timeout=5)
    conn.close()


def test_raw_bolt_frames_are_valid_calls(hostile):
    """The Bolt attackers' frames (built with interlink.wire.bolt + the SOFA Hessian writer) are answered."""
    import socket

    with socket.create_connection(("127.0.0.1", hostile.sites.bolt_port), timeout=5) as sock:
        sock.sendall(boltattack.echo_frame(7, "harness-bolt") + boltattack.big_head_frame(9, 4096))
        reader = BoltReader()
        assert reader.wait_for(sock, 2, timeout=10), reader.frames
    by_id = {f.request_id: f for f in reader.frames}
    assert set(by_id) == {7, 9}
    for frame in by_id.values():
        assert frame.status == 0, frame
    assert b"harness-bolt" in by_id[7].content
    assert b"big-head" in by_id[9].content


def test_fast_huffman_encoder_matches_hpack():
    import os

    from hpack.huffman import HuffmanEncoder
    from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

    reference = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
    for n in (0, 1, 7, 100, 4096):
        value = os.urandom(n)
        assert h2attack.huffman_encode(value) == reference.encode(value)


def test_raw_peer_request_reaches_the_provider(hostile):
    """The peer attackers' TLS connection and request format are accepted by GW-A: unreset, a call is
    served (so "the provider saw none of the reset ones" means something)."""
    from tests.e2e.rawgrpc import mtls_context
    from tests.hostile.attacks import Target

    sites = hostile.sites
    b = sites.certs.site("site-b")
    target = Target(
        port=sites.a_peer_port, authority=sites.b_peer_domain, sni=sites.b_peer_domain, peer=True,
        tls=mtls_context(sites.certs.site("site-a").ca, b.cert, b.key),
    )
    conn = target.open(decode_headers=True)
    conn.send(h2attack.request_frames(1, target.headers("echo", "harness-peer-1"), h2attack.echo_message(b"p")))
    assert conn.pump_until(lambda: conn.reader.stream(1).ended, timeout=10), conn.result()
    assert conn.reader.stream(1).grpc_status == 0, conn.reader.stream(1)
    conn.close()
    assert any(r.get("id") == "harness-peer-1" for r in sites.provider_records())
