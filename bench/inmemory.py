"""One gateway's CPU per call (gRPC, Bolt, translated), in memory: no sockets, no other processes, a few µs of noise.

    .venv/bin/python -m bench.inmemory [--role peer|local] [--caller triple|bolt] [--upstream triple|bolt]
                                       [--concurrency 64] [--calls 5000] [--rounds 12] [--log-level info]

For A/B comparisons of a change on the call path (bench/run.sh's numbers move by ±10% between runs of the
same tree: two gateways, the load generator and the provider share two cores and take turns). One `CallCore`
with its endpoints as `interlink run` has them (tests/gateway/harness.py's world: an H2Endpoint or BoltEndpoint
on the caller's side, a PoolGroup of one endpoint to the upstream), the access and audit lines rendered as
configured by `interlink.logs` and written to /dev/null, a batch's lines in one write as `interlink run` writes
them. The caller and the upstream are raw endpoints (HTTP/2
of interlink.wire.h2conn, or Bolt frames; no call core): the caller keeps `--concurrency` unary 100-byte calls
in flight, the upstream answers each with a 100-byte message (HTTP/2: a head, the message and OK trailers);
any other outcome stops the run.

- `--role peer`: the gateway's peer port (a call from site-a's gateway to an export, then to a provider);
  with `--upstream` other than `--caller`, the call is translated there;
- `--role local`: its local ingress (a local caller to an import, then to the peer's gateway).

Prints the minimum, first quartile and median over `--rounds` rounds of `--calls` calls each, in µs of
process CPU per call; the caller and the upstream are included (about 5-10 µs of it). Compare two trees by
running it from each tree's root (`cd TREE && python -m bench.inmemory`), alternating, several times.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import trio

from interlink import logs
from interlink.routes import bolt_unique_name
from interlink.wire import bolt, grpc, h2conn, hpack
from interlink.wire.h2frames import FloodBudget
from tests.gateway import harness

_HEAD = [(b":status", b"200"), (b"content-type", b"application/grpc")]
_TRAILERS = [(b"grpc-status", b"0")]
_MESSAGE = grpc.encode_message(b"\x0a\x64" + b"x" * 100)  # EchoRequest / EchoReply{message = 100 bytes}


class RawPeer:
    """The caller or the upstream: an h2conn connection on the test's end of a memory transport (it takes the
    place of the harness's h2-package peer, whose own cost would drown the gateway's)."""

    def __init__(self, transport, *, client_side: bool, max_concurrent_streams: int | None = None) -> None:  # noqa: ARG002
        self.transport = transport
        self.conn = h2conn.H2Connection(client_side=client_side, budget=FloodBudget(1 << 30, 1 << 30, 0.0),
                                        max_concurrent_streams=1024)
        if not client_side:  # the upstream reads no request header: it does not pay for decoding them either
            self.conn.decoder = _Undecoded()
        self.conn.initiate()
        self.settings_seen = False
        self.answered = 0
        self.answer = trio.Event()
        self.flush()

    def flush(self) -> None:
        data = self.conn.take_output()
        if data:
            self.transport.write(data)

    async def run(self) -> None:
        await harness.read_until_closed(self, self._received)

    def _received(self, data: bytes) -> None:
        conn = self.conn
        for event in conn.receive(data, trio.current_time()):
            if event[0] == h2conn.DATA:
                stream_id, _, flow_length, end = event[1:]
                conn.acknowledge(stream_id, flow_length)
                if end and not conn.client_side:  # a whole request: answer it
                    conn.send_headers(stream_id, _HEAD)
                    conn.send_data(stream_id, _MESSAGE)
                    conn.send_headers(stream_id, _TRAILERS, end_stream=True)
            elif event[0] == h2conn.TRAILERS and event[2] == _TRAILERS:
                self.answered += 1
                self.answer.set()
            elif event[0] in (h2conn.RESPONSE, h2conn.TRAILERS, h2conn.RESET) and (event[0] != h2conn.RESPONSE or event[3]):
                raise RuntimeError(f"a call failed: {event}")  # a refusal (Trailers-Only), an error status, a reset
        self.settings_seen = True
        self.flush()


class _Undecoded(hpack.HeaderBlockDecoder):
    """The raw upstream's HPACK decoder: every request head reads as one field. The gateway's encoder is
    stateless (no dynamic table), so skipping its blocks loses nothing; decoding them would charge the gateway
    for the upstream's work, and unevenly: a request with a per-call field before its traceparent (a
    translated call's SOFATracer id) misses the decoder's caches and cost the raw upstream ~15 µs."""

    def decode(self, data: bytes, raw: bool = True) -> list[tuple[bytes, bytes]]:  # noqa: ARG002
        return [(b":method", b"POST")]


class RawBoltPeer:
    """A Bolt caller or provider on the test's end of a memory transport: the provider answers each request
    with a 100-byte SofaResponse; the caller counts successful responses (anything else stops the run)."""

    def __init__(self, transport) -> None:
        self.transport = transport
        self.decoder = bolt.BoltDecoder()
        self.answered = 0
        self.answer = trio.Event()
        self.next_id = 1

    async def run(self) -> None:
        await harness.read_until_closed(self, self._received)

    def _received(self, data: bytes) -> None:
        out = []
        for frame in self.decoder.feed(data):
            if frame.is_heartbeat:
                if frame.is_request:
                    out.append(bolt.encode(bolt.heartbeat_ack(frame)))
            elif frame.is_request:
                out.append(bolt.encode(bolt.response_for(frame, 0, bolt.SOFA_RESPONSE_CLASS, b"", _MESSAGE[5:])))
            elif frame.status == bolt.ResponseStatus.SUCCESS:
                self.answered += 1
                self.answer.set()
            else:
                raise RuntimeError(f"a call failed: {harness.bolt_outcome(frame)}")
        if out:
            self.transport.write(b"".join(out))


async def _measure(role: str, caller_protocol: str, upstream: str, concurrency: int, calls: int,
                   rounds: int) -> list[float]:
    harness.H2Peer = RawPeer  # type: ignore[misc, assignment]
    harness.BoltPeer = RawBoltPeer  # type: ignore[misc, assignment]
    async with trio.open_nursery() as nursery:
        world = harness.World(
            nursery, ingress=role, caller="h2" if caller_protocol == "triple" else "bolt",
            upstream="h2" if upstream == "triple" else "bolt", snapshot=harness.make_snapshot(), group="pool",
            connect="ok", sni=harness.DOMAIN, site=harness.PEER, provider_streams=None, upstream_max_pending=1024,
            caller_max_pending=1024,
        )
        await world.start(True)
        caller = world.caller
        service = harness.TRIPLE if upstream == "triple" else harness.BOLT  # (translated when they differ)
        if caller_protocol == "triple":
            headers = harness.h2_request_headers(service, authority=harness.DOMAIN if role == "peer" else b"localhost")

            def send() -> None:
                stream_id = caller.conn.open_stream(headers)
                caller.conn.send_data(stream_id, _MESSAGE, end_stream=True)
        else:
            name = bolt_unique_name(service, None)

            def send() -> None:
                caller.next_id += 1
                caller.transport.write(bolt.encode(harness.bolt_request(
                    name, content=_MESSAGE[5:], link=role == "peer", request_id=caller.next_id)))

        async def burst() -> None:
            target = caller.answered + concurrency
            for _ in range(concurrency):
                send()
            if caller_protocol == "triple":
                caller.flush()
            while caller.answered < target:
                caller.answer = trio.Event()
                with trio.fail_after(10):
                    await caller.answer.wait()

        for _ in range(max(1, 2000 // concurrency)):  # warm-up: caches, first connection
            await burst()
        # The rounds run without the cycle collector: a real gateway's calls make no cycles and leave it idle
        # (counted with gc.callbacks in bench/run.sh's gateways: ~105 collections at start, at most 8 over a
        # cell's ~80,000 calls), but this one process also holds the caller, the upstream and the test harness,
        # whose in-flight objects made it collect a large heap: ~16 µs of a translated call's 82, none of it
        # the gateway's.
        gc.collect()
        gc.disable()
        try:
            results = []
            for _ in range(rounds):
                started, done = time.process_time(), 0
                while done < calls:
                    await burst()
                    done += concurrency
                results.append((time.process_time() - started) / done * 1e6)
        finally:
            gc.enable()
        nursery.cancel_scope.cancel()
    return sorted(results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inmemory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=("peer", "local"), default="peer")
    parser.add_argument("--caller", choices=("triple", "bolt"), default="triple", help="the caller's protocol")
    parser.add_argument("--upstream", choices=("triple", "bolt"), default=None,
                        help="the upstream's protocol (default: the caller's; another one on the peer role: translated)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--calls", type=int, default=5000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--log-level", default="info", help="interlink.logs level (warning: no access/audit lines)")
    opts = parser.parse_args(argv)
    sink = open(os.devnull, "w")  # noqa: SIM115 - open for the whole run
    logs.configure(opts.log_level, stream=sink)
    logs.hold_call_lines(True)  # as `interlink run` writes them: a batch's lines in one write
    upstream = opts.upstream or opts.caller
    if upstream != opts.caller and opts.role != "peer":
        parser.error("translation happens on the peer role (the providers' gateway) only")
    results = trio.run(_measure, opts.role, opts.caller, upstream, opts.concurrency, opts.calls, opts.rounds)
    shape = opts.caller if upstream == opts.caller else f"{opts.caller}->{upstream}"
    print(f"{opts.role} {shape} c={opts.concurrency}: min {results[0]:.1f} q1 {results[len(results) // 4]:.1f} "
          f"median {results[len(results) // 2]:.1f} µs CPU per call ({opts.rounds} rounds of {opts.calls})")
    sink.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
