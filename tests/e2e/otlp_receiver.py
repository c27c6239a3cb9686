"""A real OTLP/HTTP trace receiver for tests: what an OpenTelemetry Collector's `otlphttp` receiver does for
POST /v1/traces, and nothing more.

It is an HTTP/1.1 server (standard library, keep-alive, one thread per connection, daemon threads) on
127.0.0.1, port 0. Every request body is decoded with the OpenTelemetry project's own generated messages
(``ExportTraceServiceRequest.FromString``), so a malformed export fails here as it would at a collector
(answered 400 and recorded in ``errors``). Decoded spans are kept as plain dicts::

    {"trace_id": hex, "span_id": hex, "parent_span_id": hex ("" for a root), "name": str, "kind": int,
     "start_ns": int, "end_ns": int, "attributes": {key: value}, "status_code": int, "status_message": str,
     "resource": {key: value}, "scope": str}

Usage (sync, e.g. gateways as subprocesses)::

    with OtlpReceiver() as receiver:
        ...  # point the exporter at receiver.endpoint
        spans = receiver.wait_for(lambda spans: len(spans) >= 3, timeout=5)

From a trio test: ``await receiver.wait_for_async(predicate, timeout)`` (polls, so the trio loop keeps
running). ``fail_next(n)`` answers the next n exports 503 (their spans are not stored);
``close_after_each = True`` closes every connection after its response without announcing it (a collector
that drops idle keep-alive connections).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import trio
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1 import common_pb2

PATH = "/v1/traces"
MAX_BODY = 16 * 1024 * 1024


def any_value(value: common_pb2.AnyValue) -> Any:
    """The Python value of an OTLP AnyValue (None when unset)."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, which)


def attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


def decode(body: bytes) -> list[dict[str, Any]]:
    """The spans of one ExportTraceServiceRequest body, as dicts (see the module docstring)."""
    request = ExportTraceServiceRequest.FromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    {
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "name": span.name,
                        "kind": span.kind,
                        "start_ns": span.start_time_unix_nano,
                        "end_ns": span.end_time_unix_nano,
                        "attributes": attributes(span.attributes),
                        "status_code": span.status.code,
                        "status_message": span.status.message,
                        "resource": resource,
                        "scope": scope_spans.scope.name,
                    }
                )
    return spans


class OtlpReceiver:
    def __init__(self, host: str = "127.0.0.1", *, ssl_context: Any = None) -> None:
        """`ssl_context`: a server-side ssl.SSLContext to serve https instead of http."""
        self.spans: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []  # one per POST: path, content_type, spans, status, connection
        self.errors: list[str] = []  # bodies that did not decode, requests refused as malformed
        self.connections = 0  # TCP connections accepted
        self.close_after_each = False
        self._fail = 0
        self._changed = threading.Condition()
        self._ssl_context = ssl_context
        self._server = ThreadingHTTPServer((host, 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        scheme = "https" if self._ssl_context is not None else "http"
        host = "localhost" if self._ssl_context is not None else "127.0.0.1"
        return f"{scheme}://{host}:{self.port}{PATH}"

    def start(self) -> OtlpReceiver:
        if self._ssl_context is not None:
            self._server.socket = self._ssl_context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="otlp-receiver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- control and inspection ------------------------------------------------------------------------------

    def fail_next(self, count: int) -> None:
        """Answer the next `count` exports 503 Service Unavailable (spans not stored)."""
        with self._changed:
            self._fail = count

    def snapshot(self) -> list[dict[str, Any]]:
        with self._changed:
            return list(self.spans)

    def wait_for(
        self, predicate: Callable[[list[dict[str, Any]]], object], timeout: float = 5.0
    ) -> list[dict[str, Any]]:
        """Block until predicate(spans) is true; returns the spans. TimeoutError (with what arrived) otherwise."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(list(self.spans)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(self._timeout_message(timeout))
                self._changed.wait(left)
            return list(self.spans)

    async def wait_for_async(
        self, predicate: Callable[[list[dict[str, Any]]], object], timeout: float = 5.0
    ) -> list[dict[str, Any]]:
        """wait_for for trio tests: polls every 10 ms so the exporter under test keeps running."""
        with trio.move_on_after(timeout):
            while True:
                spans = self.snapshot()
                if predicate(spans):
                    return spans
                await trio.sleep(0.01)
        raise TimeoutError(self._timeout_message(timeout))

    def _timeout_message(self, timeout: float) -> str:
        return (
            f"OTLP receiver: condition not met within {timeout} s; {len(self.spans)} spans in"
            f" {len(self.requests)} requests, errors={self.errors[-3:]}"
        )

    # -- the HTTP side ---------------------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as collectors do

            def setup(self) -> None:
                super().setup()
                with receiver._changed:
                    receiver.connections += 1
                    self.connection_number = receiver.connections

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet test output
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = self.headers.get("Content-Length")
                if length is None or not length.isdigit() or int(length) > MAX_BODY:
                    self._refuse(411 if length is None else 413, f"bad Content-Length {length!r}")
                    return
                body = self.rfile.read(int(length))
                if self.path != PATH:
                    self._refuse(404, f"POST to {self.path}")
                    return
                content_type = self.headers.get("Content-Type", "")
                if content_type != "application/x-protobuf":
                    self._refuse(415, f"Content-Type {content_type!r}")
                    return
                with receiver._changed:
                    failing = receiver._fail > 0
                    if failing:
                        receiver._fail -= 1
                if failing:
                    self._record(content_type, [], 503)
                    self._answer(503, b"")
                    return
                try:
                    spans = decode(body)
                except Exception as exc:  # noqa: BLE001 - a collector answers 400 to any undecodable body
                    self._refuse(400, f"undecodable body ({len(body)} bytes): {exc}")
                    return
                self._record(content_type, spans, 200)
                self._answer(200, ExportTraceServiceResponse().SerializeToString())

            def _record(self, content_type: str, spans: list[dict[str, Any]], status: int) -> None:
                with receiver._changed:
                    receiver.requests.append(
                        {"path": self.path, "content_type": content_type, "spans": len(spans), "status": status,
                         "connection": self.connection_number, "user_agent": self.headers.get("User-Agent")}
                    )
                    receiver.spans.extend(spans)
                    receiver._changed.notify_all()

            def _refuse(self, status: int, why: str) -> None:
                with receiver._changed:
                    receiver.errors.append(why)
                    receiver._changed.notify_all()
                self.close_connection = True
                self._answer(status, why.encode())

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                if receiver.close_after_each:
                    self.close_connection = True  # closed without a "Connection: close" header

        return Handler
