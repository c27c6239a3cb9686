"""A grpcio provider of the demo EchoService that records every call it receives (the hostile tests' witness).

    python -m tests.hostile.provider --listen 127.0.0.1:0 --record calls.jsonl [--name NAME]

prints ``listening on HOST:PORT`` once serving (the protocol of tests/conftest.py ``start_process_peer``) and
appends one JSON line per call event to ``--record``:

    {"ev": "start", "m": "echo", "id": "<x-attack-id or null>", "t": <time.monotonic()>}
    {"ev": "end",   "m": "echo", "id": ..., "t": ..., "cancelled": <bool>}

``t`` is CLOCK_MONOTONIC, shared by every process of this machine, so a test can compare it with its own
``time.monotonic()`` (e.g. "the provider started this call after its caller had given up"). ``cancelled``
is true when the RPC was no longer active when the handler finished (the caller or a gateway cancelled
it, or its deadline passed). Semantics are those of interlink/demo/provider.py (echo returns the message,
sleep waits ``ms`` or until the RPC ends, count/sum/chat stream); limits are raised so that 1 MiB echoes and
48 KB header values reach the handler. Exit 0 on SIGTERM / SIGINT.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from concurrent import futures
from typing import Any

import grpc

from interlink.demo.echo import load

MAX_MESSAGE = 16 * 1024 * 1024
SERVER_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_metadata_size", 1024 * 1024),
    ("grpc.so_reuseport", 0),
)


class Recorder:
    def __init__(self, path: str) -> None:
        self._file = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives with the process
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            self._file.write(line)

    def close(self) -> None:
        with self._lock:
            self._file.close()


def _attack_id(context: grpc.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "x-attack-id":
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


def make_servicer(recorder: Recorder):
    echo_pb2, echo_pb2_grpc = load()

    class RecordingEcho(echo_pb2_grpc.EchoServiceServicer):
        def _start(self, method: str, context) -> tuple[str, str | None]:
            ident = _attack_id(context)
            recorder.write({"ev": "start", "m": method, "id": ident, "t": time.monotonic()})
            return method, ident

        def _end(self, started: tuple[str, str | None], context) -> None:
            method, ident = started
            recorder.write(
                {"ev": "end", "m": method, "id": ident, "t": time.monotonic(), "cancelled": not context.is_active()}
            )

        def echo(self, request, context):
            started = self._start("echo", context)
            try:
                return echo_pb2.EchoReply(message=request.message)
            finally:
                self._end(started, context)

        def add(self, request, context):
            started = self._start("add", context)
            try:
                return echo_pb2.AddReply(sum=((request.a + request.b + 2**31) % 2**32) - 2**31)
            finally:
                self._end(started, context)

        def fail(self, request, context):
            started = self._start("fail", context)
            try:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            finally:
                self._end(started, context)

        def sleep(self, request, context):
            started = self._start("sleep", context)
            try:
                done = threading.Event()
                if context.add_callback(done.set):  # runs when the RPC ends (finished, cancelled, deadline)
                    done.wait(max(0, min(request.ms, 60_000)) / 1000.0)
                return echo_pb2.SleepRequest(ms=request.ms)
            finally:
                self._end(started, context)

        def count(self, request, context):
            started = self._start("count", context)
            try:
                for i in range(1, min(request.a, 100_000) + 1):
                    if not context.is_active():
                        return
                    yield echo_pb2.AddReply(sum=i)
            finally:
                self._end(started, context)

        def sum(self, request_iterator, context):
            started = self._start("sum", context)
            try:
                total = 0
                for request in request_iterator:
                    total += request.a + request.b
                return echo_pb2.AddReply(sum=((total + 2**31) % 2**32) - 2**31)
            finally:
                self._end(started, context)

        def chat(self, request_iterator, context):
            started = self._start("chat", context)
            try:
                for request in request_iterator:
                    yield echo_pb2.EchoReply(message=request.message)
            finally:
                self._end(started, context)

    return RecordingEcho(), echo_pb2_grpc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.hostile.provider")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--record", required=True, help="JSON lines file, appended to")
    parser.add_argument("--max-workers", type=int, default=64)
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    recorder = Recorder(args.record)
    servicer, echo_pb2_grpc = make_servicer(recorder)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.max_workers, thread_name_prefix="recording-provider"),
        options=SERVER_OPTIONS,
    )
    echo_pb2_grpc.add_EchoServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(args.listen)
    if not port:
        sys.stderr.write(f"recording provider: cannot listen on {args.listen}\n")
        return 1
    server.start()
    host = args.listen.rsplit(":", 1)[0]
    sys.stdout.write(f"listening on {host}:{port}\n")
    sys.stdout.flush()
    while not stop.wait(0.2):
        pass
    server.stop(grace=0.5).wait(2)
    recorder.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
