"""Attacks from an authenticated peer on GW-A's peer port (mTLS with site-b's certificate, SNI and :authority
= the access domain site A gave site B), and GW-A frozen (SIGSTOP) under load. Legit traffic keeps flowing
through the real GW-B meanwhile."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.e2e.rawgrpc import mtls_context
from tests.hostile import attacks
from tests.hostile.attacks import Target
from tests.hostile.h2attack import (
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    echo_message,
    error_name,
    frame,
    header_block,
)
from tests.hostile.probes import parse_lines, wait_until
from tests.hostile.scenario import expect_calm_goaway

QUICK = pytest.param("quick", id="quick")
FULL = pytest.param("full", id="full", marks=pytest.mark.slow)
SIZES = [QUICK, FULL]


def peer_target(hostile) -> Target:
    sites = hostile.sites
    b = sites.certs.site("site-b")
    context = mtls_context(sites.certs.site("site-a").ca, b.cert, b.key)
    return Target(
        port=sites.a_peer_port, authority=sites.b_peer_domain, tls=context, sni=sites.b_peer_domain, peer=True
    )


def audit_denials(run) -> list[dict]:
    """GW-A's audit deny lines since the attack began (also while it is still running)."""
    offset = run.window.log0["GW-A"]
    events = parse_lines(run.sites.a.log_lines(offset))
    return [e for e in events if e.get("event") == "audit" and e.get("decision") == "deny"]


def test_peer_request_with_two_authorities_is_refused_and_audited(hostile):
    target = peer_target(hostile)
    run = hostile.begin()
    with run.attack():
        conn = target.open(decode_headers=True)
        headers = target.headers("echo", "dup-authority")
        headers.insert(4, (":authority", "site-c.gw.site-a.test"))  # a second :authority, another tenant's domain
        request = frame(HEADERS, END_HEADERS, 1, header_block(headers)) + frame(DATA, END_STREAM, 1, echo_message(b"x"))
        conn.send(request)
        stream = conn.reader.stream(1)
        conn.pump_until(lambda: stream.ended or stream.reset is not None or not conn.open, timeout=5)
        end = conn.result()
        conn.close()
        wait_until(lambda: audit_denials(run), timeout=2.0)  # written with the refusal, if at all
    run.settle()
    status = stream.header(b":status")
    grpc_status = stream.grpc_status
    refused = (
        stream.reset is not None
        or end.goaway_code not in (None, 0)
        or (status not in (None, b"200"))
        or (grpc_status not in (None, 0))
    )
    run.note("answer", f":status {status}, grpc-status {grpc_status} {stream.header(b'grpc-message')}, "
             f"RST {stream.reset}, GOAWAY {error_name(end.goaway_code)}, connection {end.how}")
    run.expect(refused, f"GW-A did not refuse a request with two :authority headers ({run.facts['answer']})")
    run.expect(not run.provider_calls("dup-authority"), "the provider received the request with two :authority headers")
    denials = audit_denials(run)
    run.note("GW-A audit denials", denials[:2])
    run.expect(bool(denials), "GW-A wrote no audit line {\"event\":\"audit\",\"decision\":\"deny\"} for the refusal")
    run.expect_legit()
    run.expect_healthy()
    run.verdict()


PEER_FLOODS = ("ping", "settings")


@pytest.mark.parametrize("kind", PEER_FLOODS)
@pytest.mark.parametrize("size", SIZES)
def test_peer_control_frame_flood(hostile, size, kind):
    seconds = 1.0 if size == "quick" else 10.0
    run = hostile.begin()
    with run.attack():
        result = attacks.flood(peer_target(hostile), kind, seconds=seconds)
    run.settle()
    expect_calm_goaway(run, result, f"peer {kind} flood")
    run.note("frames sent", result.units)
    share = run.cpu_during()["GW-A"] / max(run.window.seconds, 1e-6)
    run.note("GW-A CPU share during the flood", f"{share:.2f} of a core")
    denials = audit_denials(run)
    run.expect(bool(denials), f"GW-A wrote no audit deny line for the peer it cut ({kind} flood)")
    run.expect_legit()
    run.expect_rss()
    run.expect_healthy()
    run.verdict()


@pytest.mark.parametrize("size", SIZES)
def test_peer_rapid_reset(hostile, size):
    burst, sustain = (3000, 2.0) if size == "quick" else (20_000, 15.0)
    prefix = f"peer-rr-{size}"
    run = hostile.begin()
    with run.attack():
        result = attacks.rapid_reset(peer_target(hostile), prefix=prefix, burst=burst, sustain_seconds=sustain)
    run.settle()
    expect_calm_goaway(run, result, "peer rapid reset")
    seen = run.provider_calls(prefix)
    tolerance = max(5, result.units // 200)
    run.note("reset streams sent / seen by the provider", f"{result.units} / {len(seen)} (tolerance {tolerance})")
    run.expect(len(seen) <= tolerance, f"the provider ran {len(seen)} of the {result.units} calls the peer had reset")
    run.expect(bool(audit_denials(run)), "GW-A wrote no audit deny line for the peer it cut (rapid reset)")
    run.expect_legit()
    run.expect_rss()
    run.expect_healthy()
    run.verdict()


GAVE_UP_MARGIN = 0.2  # a provider may start a call this long after its caller gave up (in-flight race)


def test_frozen_provider_gateway_does_not_run_abandoned_calls(hostile):
    """SIGSTOP GW-A for 5 s under load, then SIGCONT: calls whose callers gave up meanwhile must not run."""
    sites = hostile.sites
    run = hostile.begin()
    with run.attack():
        time.sleep(1.0)
        t_stop = time.monotonic()
        os.kill(sites.a.pid, signal.SIGSTOP)
        try:
            time.sleep(5.0)
        finally:
            os.kill(sites.a.pid, signal.SIGCONT)
        t_cont = time.monotonic()
        time.sleep(4.0)
    run.settle()
    starts: dict[str, float] = {}
    for record in sites.provider_records():
        if record.get("ev") == "start" and record.get("id"):
            starts.setdefault(record["id"], record["t"])
    gave_up = [r for r in run.grpc.snapshot() if not r.ok and r.latency is not None]
    late = []
    for r in gave_up:
        started = starts.get(r.ident)
        if started is not None and started > r.end + GAVE_UP_MARGIN:
            late.append((r.ident, round(started - r.end, 2)))
    run.note("frozen", f"{t_cont - t_stop:.1f} s; legit gRPC calls that gave up: {len(gave_up)} "
             f"({sorted({r.code for r in gave_up})}); of those the provider ran later: {len(late)} {late[:3]}")
    run.expect(bool(gave_up), "no legit call gave up while GW-A was frozen: the freeze did not bite")
    run.expect(not late, f"the provider ran {len(late)} call(s) after their callers had given up, e.g. {late[:3]} "
                         "(id, seconds after the caller's deadline)")
    # Once GW-A runs again (2 s to recover), legit calls succeed again.
    run.expect_legit(t0=t_cont + 2.0, t1=run.window.t1)
    run.expect_rss()
    run.expect_healthy()
    run.verdict()
