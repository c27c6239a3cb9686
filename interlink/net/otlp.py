"""OTLP/HTTP (protobuf) span export, in trio: one gateway hop becomes one `SpanRecord`, batches of them go
to an OpenTelemetry collector as `ExportTraceServiceRequest`s over one keep-alive HTTP/1.1 connection.

Why not the OpenTelemetry SDK: its BatchSpanProcessor runs its own thread and exports with `requests`, and
its per-call span objects cost tens of µs; our process is one trio nursery tree held to a few tens of µs
per call. So the call path does only this: the gateway's one exit builds a frozen `SpanRecord` (a tuple of
values it has already computed) and calls `SpanExporter.submit`, which appends it to a bounded list (about
0.1 µs; when the list is full the span is dropped and counted, never waited for). Only the OTLP wire
messages come from the OpenTelemetry project (`opentelemetry-proto`, generated protobuf code).

`SpanExporter.run` is the one task that exports (start it in the gateway's nursery):

* every `interval` seconds, or as soon as `max_batch` spans wait, it takes up to `max_batch` spans, encodes
  them (one ResourceSpans with service.name and the resource attributes, one ScopeSpans "interlink"; a
  checkpoint every 64 spans, as encoding costs a few µs a span) and POSTs them (Content-Type
  application/x-protobuf); a backlog is drained batch after batch;
* HTTP/1.1 is h11 (sans-I/O) over a trio stream (TCP, or TLS for https://); one connection is kept alive and
  replaced when it breaks; a kept-alive connection that the collector closed while idle (no answer at all)
  is retried once on a fresh one; each export (connect, send, answer) runs under `fail_after(timeout)`,
  and at most 64 KiB of answer is read (more closes the connection);
* a non-2xx answer, a connection error or a timeout drops that batch (counted in `failed_spans`: spans are
  not kept for a retry, so memory stays bounded by `max_queue`), logs `otlp.export_failed` once per streak
  of failures and `otlp.export_recovered` when one succeeds again, and backs off exponentially (2, 4, 8 ...
  times `interval`, at least a Retry-After the collector sent, at most 30 s);
* exports are shielded from cancellation (each is bounded by its own `timeout`): cutting one would lose
  the batch, or duplicate it at the collector if resent. On cancellation (the gateway stops), after the
  export under way if any, it makes one last attempt, shielded and bounded by `timeout`, to send what is
  queued, then closes the connection: stopping takes at most 2 x `timeout`.

Counters (plain ints, for metrics): `exported`, `dropped` (queue full), `failed_spans` (export failed, span
invalid, or still queued when the final flush ran out of time). Once `run` has returned, every submitted
span is in exactly one of them.
"""

from __future__ import annotations

import math
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11
import structlog
import trio
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

log = structlog.get_logger("interlink.otlp")

MAX_RESPONSE_BYTES = 64 * 1024  # an export answer is a few bytes (partial success at most)
MAX_HEADER_BYTES = 16 * 1024
MAX_BACKOFF = 30.0
ENCODE_SLICE = 64  # spans encoded between two checkpoints (~0.25 ms with a few attributes each)
SCOPE_NAME = "interlink"
CONTENT_TYPE = "application/x-protobuf"
USER_AGENT = "interlink-otlp"

_STATUS_OK = trace_pb2.Status.STATUS_CODE_OK
_STATUS_ERROR = trace_pb2.Status.STATUS_CODE_ERROR


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """One finished gateway hop; everything already computed, cheap to build."""

    trace_id: bytes  # 16 bytes
    span_id: bytes  # 8 bytes
    parent_span_id: bytes  # 8 bytes, or b"" for a root span
    name: str  # e.g. "com.example.EchoService/echo"
    kind: int  # trace_pb2.Span.SpanKind: 2 SERVER (peer ingress / provider side), 3 CLIENT, ...; exported as given
    start_ns: int  # unix epoch nanoseconds
    end_ns: int
    status_ok: bool
    status_message: str  # "" when ok
    attributes: tuple[tuple[str, str | int | float | bool], ...]


class ExportError(Exception):
    """One export attempt failed (the message is what `otlp.export_failed` logs)."""


class _NoAnswer(ExportError):
    """The connection ended before any byte of an answer: on a reused keep-alive connection, the collector
    most likely closed it while idle, and one retry on a fresh connection is safe."""


# -- encoding -----------------------------------------------------------------------------------------------


def _set_value(value: common_pb2.AnyValue, python: object) -> None:
    kind = type(python)
    if kind is str:
        value.string_value = python
    elif kind is bool:  # before int: bool is an int
        value.bool_value = python
    elif kind is int:
        if -(1 << 63) <= python < (1 << 63):
            value.int_value = python
        else:
            value.string_value = str(python)  # int64 on the wire; keep the digits rather than fail
    elif kind is float:
        value.double_value = python
    elif isinstance(python, bool):
        value.bool_value = bool(python)
    elif isinstance(python, int):
        value.int_value = int(python)
    elif isinstance(python, float):
        value.double_value = float(python)
    else:
        value.string_value = str(python)


def _resource(service_name: str, resource_attributes: dict[str, str] | None) -> resource_pb2.Resource:
    resource = resource_pb2.Resource()
    merged = {"service.name": service_name, **(resource_attributes or {})}
    for key, python in merged.items():
        kv = resource.attributes.add()
        kv.key = key
        _set_value(kv.value, python)
    return resource


def _add_span(spans: Any, record: SpanRecord) -> None:
    """Append `record` to a repeated Span field; ValueError/TypeError (and nothing added) when the record is
    not exportable."""
    if len(record.trace_id) != 16 or len(record.span_id) != 8 or len(record.parent_span_id) not in (0, 8):
        raise ValueError(
            f"span {record.name!r}: ids must be 16/8/(0 or 8) bytes, got"
            f" {len(record.trace_id)}/{len(record.span_id)}/{len(record.parent_span_id)}"
        )
    span = spans.add()
    try:
        span.trace_id = record.trace_id
        span.span_id = record.span_id
        span.parent_span_id = record.parent_span_id
        span.name = record.name
        span.kind = record.kind
        span.start_time_unix_nano = record.start_ns
        span.end_time_unix_nano = record.end_ns
        for key, python in record.attributes:
            kv = span.attributes.add()
            kv.key = key
            _set_value(kv.value, python)
        if record.status_ok:
            span.status.code = _STATUS_OK
        else:
            span.status.code = _STATUS_ERROR
            span.status.message = record.status_message
    except BaseException:
        del spans[-1]
        raise


class _Request:
    """One ExportTraceServiceRequest being built: one ResourceSpans, one ScopeSpans "interlink"."""

    def __init__(self, resource: resource_pb2.Resource) -> None:
        self.message = ExportTraceServiceRequest()
        resource_spans = self.message.resource_spans.add()
        resource_spans.resource.CopyFrom(resource)
        scope_spans = resource_spans.scope_spans.add()
        scope_spans.scope.name = SCOPE_NAME
        self.spans = scope_spans.spans
        self.invalid = 0
        self.first_error = ""

    def add(self, records: list[SpanRecord]) -> None:
        for record in records:
            try:
                _add_span(self.spans, record)
            except (TypeError, ValueError, AttributeError) as exc:
                self.invalid += 1
                self.first_error = self.first_error or str(exc)


def encode(records: list[SpanRecord], resource: resource_pb2.Resource) -> tuple[bytes, int, str]:
    """(ExportTraceServiceRequest bytes, number of invalid records left out, the first one's error)."""
    request = _Request(resource)
    request.add(records)
    return request.message.SerializeToString(), request.invalid, request.first_error


# -- HTTP/1.1 -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Endpoint:
    scheme: str
    host: str  # for connecting and TLS server_hostname
    port: int
    authority: str  # the Host header
    target: str  # path + query


def parse_endpoint(endpoint: str) -> _Endpoint:
    """Check an OTLP/HTTP traces URL (e.g. http://127.0.0.1:4318/v1/traces); ValueError saying what is wrong."""
    if not isinstance(endpoint, str) or not endpoint.strip():
        raise ValueError(f"OTLP endpoint must be a URL like http://127.0.0.1:4318/v1/traces, got {endpoint!r}")
    parts = urlsplit(endpoint.strip())
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"OTLP endpoint {endpoint!r}: scheme must be http or https, got {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError(f"OTLP endpoint {endpoint!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"OTLP endpoint {endpoint!r}: credentials in the URL are not supported")
    if parts.fragment:
        raise ValueError(f"OTLP endpoint {endpoint!r}: a #fragment has no meaning here")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"OTLP endpoint {endpoint!r}: bad port ({exc})") from None
    if not parts.path:
        raise ValueError(
            f"OTLP endpoint {endpoint!r} has no path: give the full traces URL, usually ending in /v1/traces"
        )
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    return _Endpoint(parts.scheme, parts.hostname, port, parts.netloc, target)


class _Http:
    """One keep-alive HTTP/1.1 client connection (h11 over a trio stream), reopened when it breaks."""

    def __init__(self, endpoint: _Endpoint, ssl_context: ssl.SSLContext | None) -> None:
        self.endpoint = endpoint
        self.ssl_context = ssl_context
        self._stream: trio.abc.Stream | None = None
        self._conn: h11.Connection | None = None
        self._used = False  # the current connection has carried a full exchange already

    async def post(self, body: bytes, headers: list[tuple[str, str]]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """(status, headers, body) of one POST. Raises ExportError; the caller bounds it in time."""
        reused = self._stream is not None and self._used
        try:
            return await self._exchange(body, headers)
        except _NoAnswer:
            if not reused:
                raise
        return await self._exchange(body, headers)  # the kept-alive connection had gone stale: once more

    async def _exchange(
        self, body: bytes, headers: list[tuple[str, str]]
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        if self._stream is None:
            await self._connect()
        stream, conn = self._stream, self._conn
        assert stream is not None and conn is not None
        answered = False  # any byte of an answer arrived
        try:
            request = h11.Request(method="POST", target=self.endpoint.target, headers=headers)
            data = conn.send(request) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
            await stream.send_all(data)
            status, response_headers, chunks, size = 0, [], [], 0
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    chunk = await stream.receive_some(MAX_RESPONSE_BYTES)
                    answered = answered or bool(chunk)
                    conn.receive_data(chunk)  # b"" is the end of the stream
                elif isinstance(event, h11.Response):
                    status, response_headers = event.status_code, list(event.headers)
                elif isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > MAX_RESPONSE_BYTES:
                        raise ExportError(f"HTTP {status}: answer longer than {MAX_RESPONSE_BYTES} bytes")
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise ExportError("connection closed in the middle of the answer")
                # InformationalResponse (1xx): skip
        except BaseException as exc:
            await self.close()  # its state is unknown now; never reuse it
            if isinstance(exc, ExportError) or not isinstance(exc, Exception):  # incl. trio.Cancelled
                raise
            if not answered and isinstance(
                exc, (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError)
            ):
                raise _NoAnswer(f"connection closed before an answer ({_describe(exc)})") from None
            raise ExportError(_describe(exc)) from None
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self._used = True
        else:  # "Connection: close", HTTP/1.0, ...
            await self.close()
        return status, response_headers, b"".join(chunks)

    async def _connect(self) -> None:
        endpoint = self.endpoint
        where = f"{endpoint.host}:{endpoint.port}"
        try:
            stream: trio.abc.Stream = await trio.open_tcp_stream(endpoint.host, endpoint.port)  # sets TCP_NODELAY
        except OSError as exc:  # refused, unreachable, name not found
            raise ExportError(f"cannot connect to {where}: {_describe(exc)}") from None
        if self.ssl_context is not None:
            tls = trio.SSLStream(stream, self.ssl_context, server_hostname=endpoint.host, https_compatible=True)
            try:
                await tls.do_handshake()
            except BaseException as exc:
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(stream)
                if isinstance(exc, (trio.BrokenResourceError, OSError)):
                    cause = exc.__cause__ if exc.__cause__ is not None else exc
                    raise ExportError(f"TLS handshake with {where} failed: {_describe(cause)}") from None
                raise
            stream = tls
        self._stream = stream
        self._conn = h11.Connection(our_role=h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
        self._used = False

    async def close(self) -> None:
        stream, self._stream, self._conn = self._stream, None, None
        if stream is not None:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)  # returns at once: no graceful TLS close_notify wait


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _retry_after(headers: list[tuple[bytes, bytes]]) -> float:
    for name, value in headers:
        if name == b"retry-after":
            try:
                seconds = float(value)
            except ValueError:
                return 0.0  # an HTTP date: ignore, the exponential backoff applies
            return min(max(seconds, 0.0), MAX_BACKOFF) if math.isfinite(seconds) else 0.0
    return 0.0


# -- the exporter -------------------------------------------------------------------------------------------


class SpanExporter:
    """Batches `SpanRecord`s and exports them to an OTLP/HTTP collector; see the module docstring."""

    def __init__(
        self,
        endpoint: str,
        *,
        service_name: str,
        resource_attributes: dict[str, str] | None = None,
        max_queue: int = 2048,
        max_batch: int = 512,
        interval: float = 1.0,
        timeout: float = 5.0,
    ) -> None:
        self.endpoint = endpoint
        self._target = parse_endpoint(endpoint)
        if not service_name:
            raise ValueError("service_name must not be empty (it is the OTLP resource's service.name)")
        for name, number in (("max_queue", max_queue), ("max_batch", max_batch)):
            if not isinstance(number, int) or number < 1:
                raise ValueError(f"{name} must be a positive integer, got {number!r}")
        for name, seconds in (("interval", interval), ("timeout", timeout)):
            if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {seconds!r}")
        self.service_name = service_name
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.interval = float(interval)
        self.timeout = float(timeout)
        # The client TLS context for https:// endpoints (system CAs); replace it or load more CAs before run().
        https = self._target.scheme == "https"
        self.ssl_context: ssl.SSLContext | None = ssl.create_default_context() if https else None
        self.exported = 0
        self.dropped = 0
        self.failed_spans = 0
        self._queue: list[SpanRecord] = []
        self._wakeup = trio.Event()  # set by submit() when a full batch waits
        self._resource = _resource(service_name, resource_attributes)
        self._headers = [
            ("Host", self._target.authority),
            ("Content-Type", CONTENT_TYPE),
            ("User-Agent", USER_AGENT),
        ]
        self._failures = 0  # length of the current failure streak (batches)
        self._streak_spans = 0
        self._retry_after = 0.0
        self._http: _Http | None = None

    # -- the call path ---------------------------------------------------------------------------------------

    def submit(self, span: SpanRecord) -> None:
        """Queue one finished span. Never blocks, never raises: a full queue drops it (counted in `dropped`)."""
        queue = self._queue
        if len(queue) < self.max_queue:
            queue.append(span)
            if len(queue) == self.max_batch:
                try:
                    self._wakeup.set()
                except Exception:  # noqa: BLE001 - never into the call path; the interval timer still runs
                    pass
        else:
            self.dropped += 1

    # -- the export task -------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._http = _Http(self._target, self.ssl_context)
        task_status.started()
        try:
            await self._loop()
        finally:
            await self._final_flush()

    async def _loop(self) -> None:
        while True:
            if len(self._queue) < self.max_batch:
                self._wakeup = trio.Event()
                with trio.move_on_after(self.interval):
                    await self._wakeup.wait()
            if not self._queue:
                continue
            if not await self._export_one():
                await trio.sleep(self._backoff())
            else:
                await trio.lowlevel.checkpoint()  # a backlog: drain it, but let the gateway run in between

    def _take(self) -> list[SpanRecord]:
        queue, n = self._queue, self.max_batch
        if len(queue) <= n:
            self._queue = []
            return queue
        batch = queue[:n]
        del queue[:n]
        return batch

    async def _export_one(self) -> bool:
        """Export one batch from the queue; False when it failed (the batch is dropped and counted)."""
        batch = self._take()
        # Shielded: a cancellation waits for the export under way (bounded by its own fail_after(timeout))
        # rather than cut it, which would lose the batch or, resent, duplicate it at the collector.
        with trio.CancelScope(shield=True):
            return await self._export(batch)

    async def _export(self, batch: list[SpanRecord]) -> bool:
        assert self._http is not None
        # About 1 µs a span plus 0.7 µs an attribute (upb): encode a slice at a time, letting the gateway run
        # in between, rather than hold the event loop for milliseconds per batch.
        request = _Request(self._resource)
        for start in range(0, len(batch), ENCODE_SLICE):
            if start:
                await trio.lowlevel.checkpoint()
            request.add(batch[start : start + ENCODE_SLICE])
        body, invalid = request.message.SerializeToString(), request.invalid
        if invalid:
            self.failed_spans += invalid
            log.warning("otlp.invalid_spans", count=invalid, error=request.first_error)
        sent = len(batch) - invalid
        if not sent:
            return True
        headers = [*self._headers, ("Content-Length", str(len(body)))]
        try:
            with trio.fail_after(self.timeout):
                status, response_headers, answer = await self._http.post(body, headers)
        except trio.TooSlowError:
            await self._http.close()
            return self._failed(sent, f"no answer within {self.timeout} s")
        except ExportError as exc:
            return self._failed(sent, str(exc))
        except Exception as exc:  # noqa: BLE001 - the exporter must never take the gateway down
            await self._http.close()
            return self._failed(sent, f"unexpected {_describe(exc)}")
        if not 200 <= status < 300:
            self._retry_after = _retry_after(response_headers)
            return self._failed(sent, f"HTTP {status}")
        rejected = _rejected_spans(answer)
        self.exported += sent - rejected
        self.failed_spans += rejected
        if self._failures:
            log.info("otlp.export_recovered", endpoint=self.endpoint, failed_batches=self._failures,
                     failed_spans=self._streak_spans)
            self._failures = self._streak_spans = 0
        return True

    def _failed(self, spans: int, error: str) -> bool:
        self.failed_spans += spans
        if not self._failures:
            log.warning("otlp.export_failed", endpoint=self.endpoint, error=error, spans=spans)
        self._failures += 1
        self._streak_spans += spans
        return False

    def _backoff(self) -> float:
        delay = min(self.interval * 2 ** min(self._failures, 32), MAX_BACKOFF)
        delay, self._retry_after = max(delay, self._retry_after), 0.0
        return delay

    async def _final_flush(self) -> None:
        """Shielded, bounded by `timeout`: send what is queued, then close."""
        sending = 0  # spans of a batch the deadline cut (they may or may not have reached the collector)
        with trio.CancelScope(shield=True, deadline=trio.current_time() + self.timeout):
            while self._queue and self._http is not None:
                batch = self._take()
                sending = len(batch)
                ok = await self._export(batch)  # not _export_one: its shield would hide this scope's deadline
                sending = 0
                if not ok:
                    break
        leftover = len(self._queue) + sending
        if leftover:
            self.failed_spans += leftover
            log.warning("otlp.final_flush_incomplete", endpoint=self.endpoint, spans=leftover)
        self._queue = []
        if self._http is not None:
            await self._http.close()


def _rejected_spans(answer: bytes) -> int:
    """The partial-success count of an ExportTraceServiceResponse (0 for an empty or unreadable answer)."""
    if not answer:
        return 0
    try:
        return max(0, ExportTraceServiceResponse.FromString(answer).partial_success.rejected_spans)
    except Exception:  # noqa: BLE001 - a 2xx is a success; a garbled body does not change that
        return 0
