"""Attacks on GW-B's local Bolt ingress, from a local SOFARPC caller of site B (issue 10's table)."""

from __future__ import annotations

import pytest

from tests.hostile import attacks
from tests.hostile.probes import MIB

QUICK = pytest.param("quick", id="quick")
FULL = pytest.param("full", id="full", marks=pytest.mark.slow)
SIZES = [QUICK, FULL]


@pytest.mark.parametrize("size", SIZES)
def test_distinct_1mib_sofarequest_heads(hostile, size):
    count = 100 if size == "quick" else 800
    run = hostile.begin()
    with run.attack():
        result = attacks.bolt_big_heads(hostile.sites.bolt_port, count=count, pad_bytes=1 * MIB, budget=120.0)
    run.settle()
    run.note("1 MiB heads sent / answered / echoed OK", f"{result.sent} / {result.answered} / {result.ok}; "
             f"errors {result.errors[:2]}")
    run.expect(result.sent >= count * 0.9, f"only {result.sent} of {count} heads could be sent")
    run.expect_legit()
    run.expect_rss()
    run.expect_healthy()
    run.verdict()


OVERSIZE_CLOSE_WITHIN = 2.0  # "as soon as the header is read": seconds from connect to close


def test_frames_above_the_maximum_are_refused_at_the_header(hostile):
    max_frame = hostile.limit("bolt_max_frame_bytes")
    declared, send = 15 * MIB + 512 * 1024, 15 * MIB  # above our maximum, below e4f6452's 16 MiB
    assert declared > max_frame
    run = hostile.begin()
    with run.attack():
        conns = attacks.bolt_partial_frames(hostile.sites.bolt_port, conns=20, declared=declared, send=send, hold=3.0)
    run.settle()
    quick = [c for c in conns if c.end.closed and c.end.ended - c.opened <= OVERSIZE_CLOSE_WITHIN]
    lifetimes = sorted(round(c.end.ended - c.opened, 2) for c in conns if c.end.ended is not None)
    run.note("20 x 15 MiB of a 15.5 MiB frame", f"{len(quick)} closed within {OVERSIZE_CLOSE_WITHIN} s; "
             f"bytes accepted per connection up to {max(c.bytes_sent for c in conns) / MIB:.1f} MiB; "
             f"ends {sorted({c.end.how for c in conns})}; lifetimes {lifetimes[:3]}..{lifetimes[-3:]}")
    run.expect(
        len(quick) == len(conns),
        f"{len(conns) - len(quick)} of {len(conns)} connections announcing a {declared / MIB:.1f} MiB frame (max "
        f"{max_frame // MIB} MiB) were not closed within {OVERSIZE_CLOSE_WITHIN} s",
    )
    run.expect_legit()
    run.expect_rss()
    run.expect_healthy()
    run.verdict()


@pytest.mark.parametrize("size", SIZES)
def test_frames_below_the_maximum_that_stall(hostile, size):
    partial = hostile.limit_s("partial_frame_timeout_ms")
    slack = 1.0
    declared, send = 6 * MIB, 5 * MIB
    assert declared < hostile.limit("bolt_max_frame_bytes")
    run = hostile.begin()
    with run.attack():
        conns = attacks.bolt_partial_frames(
            hostile.sites.bolt_port, conns=20, declared=declared, send=send, hold=partial + slack + 2.0
        )
    run.settle()

    def in_time(c: attacks.PartialFrameConn) -> bool:
        if not c.end.closed:
            return False
        return c.stalled_at is None or c.end.ended - c.stalled_at <= partial + slack

    good = [c for c in conns if in_time(c)]
    cut_early = [c for c in conns if c.stalled_at is None]
    run.note("20 x 5 MiB of a 6 MiB frame, then silence", f"{len(good)} closed in time ({len(cut_early)} of them "
             f"before the whole 5 MiB was taken); ends {sorted({c.end.how for c in conns})}")
    run.expect(
        len(good) == len(conns),
        f"{len(conns) - len(good)} of {len(conns)} stalled frames were not closed within the partial-frame "
        f"timeout + {slack:.0f} s ({partial + slack:.1f} s)",
    )
    run.expect_legit()
    run.expect_rss()
    run.expect_healthy()
    run.verdict()


@pytest.mark.parametrize("size", SIZES)
def test_ten_thousand_pipelined_calls_never_read(hostile, size):
    write_timeout = hostile.limit_s("write_timeout_ms")
    idle = hostile.limit_s("idle_timeout_ms")
    slack = 3.0
    run = hostile.begin()
    with run.attack():
        result = attacks.bolt_pipeline_never_read(
            hostile.sites.bolt_port, hostile.sites.b.pid, calls=10_000, arg_bytes=1024, send_budget=15.0,
            observe=max(write_timeout, idle) + slack + 3.0,
        )
    run.settle()
    released = "never" if result.released_after is None else f"{result.released_after:.2f} s"
    run.note("pipelined calls", f"{result.frames_sent} frames ({result.bytes_sent / MIB:.1f} MiB) taken by the socket; "
             f"GW-B let go of the connection: {released} after the last byte was taken")
    bound = max(write_timeout, idle) + slack
    run.expect(
        result.released_after is not None and result.released_after <= bound,
        f"GW-B still held the non-reading Bolt caller {bound + 3:.0f} s after it last took a byte (write timeout "
        f"{write_timeout:.0f} s, idle {idle:.0f} s, + {slack:.0f} s)" if result.released_after is None else
        f"GW-B let go of the non-reading Bolt caller only after {result.released_after:.1f} s (max {bound:.1f} s)",
    )
    run.expect_legit()
    run.expect_rss()
    run.expect_healthy()
    run.verdict()
