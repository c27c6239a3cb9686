"""Demo provider: a plain grpcio server for ``com.example.EchoService`` (interlink/demo/echo.proto).

It is the "real" provider behind a gateway in the lab and in the end-to-end tests. The Node
peer ``tests/peers/grpcjs_server.js`` implements exactly the same semantics, so a test can
run against either:

* ``echo``  -- reply = request; initial metadata ``x-served-by: <name>``; trailing metadata:
  every request key starting with ``x-echo-`` (all values, text or ``-bin``), ``x-caller-app``
  (= request ``x-interlink-caller-app``, only when present) and ``x-saw-keys`` (comma-joined
  sorted request metadata keys, without transport headers, see ``TRANSPORT_KEYS``).
* ``add``   -- sum = a + b (wrapping like int32).
* ``fail``  -- INVALID_ARGUMENT with details = request message (trailers-only response).
* ``sleep`` -- trailing ``x-deadline-ms`` (remaining ms at call start, or ``none``), sleeps
  ``ms`` (wakes up early when the call is cancelled / times out), returns the request.
* ``count`` -- ``a`` replies with sum = 1..a; ``sum`` -- sum of a + b over the stream;
  ``chat``  -- one reply per request, sent as soon as the request arrives.

Library use: ``serve(address, name) -> grpc.Server`` (started) or ``start(address, name) ->
(server, port)`` when binding port 0. Program: ``python -m interlink.demo.provider --listen
127.0.0.1:50061 --name x``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from concurrent import futures

import grpc

from interlink.demo.echo import MAX_MESSAGE_BYTES, load

log = logging.getLogger(__name__)

DEFAULT_NAME = "demo-provider"

# Request metadata keys that are transport / library plumbing rather than caller metadata;
# they are left out of ``x-saw-keys``.
TRANSPORT_KEYS = frozenset(
    {"grpc-accept-encoding", "accept-encoding", "user-agent", "content-type", "te", "grpc-timeout"}
)

# grpcio reports "no deadline" as a deadline far in the future; anything beyond this is none.
_NO_DEADLINE_S = 10 * 365 * 24 * 3600.0

SERVER_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # grpcio enables SO_REUSEPORT by default: a second provider on a busy port would then
    # "succeed" and silently share the port. Fail loudly instead.
    ("grpc.so_reuseport", 0),
)


def _int32(value: int) -> int:
    """Wrap to a signed 32-bit integer (what grpc-js / protobufjs do on overflow)."""
    return ((value + 2**31) % 2**32) - 2**31


def _deadline_ms(context: grpc.ServicerContext) -> str:
    remaining = context.time_remaining()
    if remaining is None or remaining > _NO_DEADLINE_S:
        return "none"
    return str(max(0, int(remaining * 1000)))


def _echo_trailers(metadata: Iterable[tuple[str, str | bytes]]) -> list[tuple[str, str | bytes]]:
    trailing: list[tuple[str, str | bytes]] = []
    caller_app = None
    keys = set()
    for key, value in metadata:
        if key.startswith("x-echo-"):
            trailing.append((key, value))
        if key == "x-interlink-caller-app" and caller_app is None:
            caller_app = value
        if not key.startswith(":") and key not in TRANSPORT_KEYS:
            keys.add(key)
    if caller_app is not None:
        trailing.append(("x-caller-app", caller_app))
    trailing.append(("x-saw-keys", ",".join(sorted(keys))))
    return trailing


def _servicer_class():
    echo_pb2, echo_pb2_grpc = load()

    class EchoServicer(echo_pb2_grpc.EchoServiceServicer):
        def __init__(self, name: str) -> None:
            self.name = name

        def echo(self, request, context):
            context.send_initial_metadata((("x-served-by", self.name),))
            context.set_trailing_metadata(_echo_trailers(context.invocation_metadata()))
            return echo_pb2.EchoReply(message=request.message)

        def add(self, request, context):
            return echo_pb2.AddReply(sum=_int32(request.a + request.b))

        def fail(self, request, context):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)

        def sleep(self, request, context):
            context.set_trailing_metadata((("x-deadline-ms", _deadline_ms(context)),))
            done = threading.Event()
            # The callback runs when the RPC terminates (finished, cancelled, deadline).
            if context.add_callback(done.set):
                done.wait(max(0, request.ms) / 1000.0)
            return echo_pb2.SleepRequest(ms=request.ms)

        def count(self, request, context) -> Iterator:
            for i in range(1, request.a + 1):
                if not context.is_active():
                    return
                yield echo_pb2.AddReply(sum=i)

        def sum(self, request_iterator, context):
            total = 0
            for request in request_iterator:
                total += request.a + request.b
            return echo_pb2.AddReply(sum=_int32(total))

        def chat(self, request_iterator, context) -> Iterator:
            for request in request_iterator:
                yield echo_pb2.EchoReply(message=request.message)

    return EchoServicer, echo_pb2_grpc


def start(
    address: str, name: str = DEFAULT_NAME, max_workers: int = 32
) -> tuple[grpc.Server, int]:
    """Start a provider on ``address`` (``host:port``, port 0 = pick one); return (server, port).

    Streaming calls hold a worker thread each, so ``max_workers`` bounds concurrent calls.
    """
    servicer_cls, echo_pb2_grpc = _servicer_class()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=f"provider-{name}"),
        options=SERVER_OPTIONS,
    )
    echo_pb2_grpc.add_EchoServiceServicer_to_server(servicer_cls(name), server)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"demo provider cannot listen on {address}: {exc}") from exc
    if not port:
        raise OSError(f"demo provider cannot listen on {address}")
    server.start()
    log.debug("demo provider %s listening on %s (port %d)", name, address, port)
    return server, port


def serve(address: str, name: str = DEFAULT_NAME, max_workers: int = 32) -> grpc.Server:
    """Start a provider on ``address`` and return the started server (the caller stops it)."""
    return start(address, name, max_workers)[0]


def _listen_text(address: str, port: int) -> str:
    host = address.rsplit(":", 1)[0] if ":" in address else address
    return f"{host}:{port}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m interlink.demo.provider",
        description="Demo gRPC provider for com.example.EchoService (grpcio).",
    )
    parser.add_argument("--listen", default="127.0.0.1:50061", help="host:port (port 0 = any)")
    parser.add_argument("--name", default=DEFAULT_NAME, help="sent as x-served-by")
    parser.add_argument("--max-workers", type=int, default=32)
    args = parser.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server, port = start(args.listen, args.name, args.max_workers)
    except OSError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    # The one stdout line test harnesses wait for (a protocol with them, not a log line).
    sys.stdout.write(f"listening on {_listen_text(args.listen, port)}\n")
    sys.stdout.flush()
    while not stop.wait(0.5):
        pass
    server.stop(grace=1.0).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
