"""interlink.net.otlp against a real OTLP/HTTP receiver (tests/e2e/otlp_receiver.py decodes every export with
opentelemetry-proto), a collector that is down, one that never answers, and hand-written HTTP answers."""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Iterator

import pytest
import structlog
import trio
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.proto.trace.v1 import trace_pb2

from interlink.control.certs import init_site
from interlink.net.otlp import SpanExporter, SpanRecord
from tests.e2e.otlp_receiver import OtlpReceiver

SERVER, CLIENT = trace_pb2.Span.SPAN_KIND_SERVER, trace_pb2.Span.SPAN_KIND_CLIENT
OK, ERROR = trace_pb2.Status.STATUS_CODE_OK, trace_pb2.Status.STATUS_CODE_ERROR


def span(n: int = 0, **changes: object) -> SpanRecord:
    fields = dict(
        trace_id=(n + 1).to_bytes(16, "big"),
        span_id=(n + 1).to_bytes(8, "big"),
        parent_span_id=b"",
        name=f"com.example.EchoService/echo{n}",
        kind=SERVER,
        start_ns=1_700_000_000_000_000_000 + n,
        end_ns=1_700_000_000_000_500_000 + n,
        status_ok=True,
        status_message="",
        attributes=(("n", n),),
    )
    fields.update(changes)
    return SpanRecord(**fields)  # type: ignore[arg-type]


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def events(logs: list[dict], name: str) -> list[dict]:
    return [entry for entry in logs if entry["event"] == name]


async def test_spans_arrive_decoded_exactly(receiver: OtlpReceiver) -> None:
    trace_id, root_id, child_id = os.urandom(16), os.urandom(8), os.urandom(8)
    attributes = (
        ("rpc.service", "com.example.EchoService"),
        ("peer.site", "site-b"),
        ("bytes", 1234),
        ("negative", -(2**63)),
        ("ratio", 0.25),
        ("retried", False),
        ("cross_site", True),
        ("one", 1),  # an int, not the bool True
    )
    root = SpanRecord(trace_id, root_id, b"", "com.example.EchoService/echo", SERVER,
                      1_700_000_000_123_456_789, 1_700_000_000_125_000_000, True, "", attributes)
    child = SpanRecord(trace_id, child_id, root_id, "com.example.EchoService/echo", CLIENT,
                       1_700_000_000_124_000_000, 1_700_000_000_124_900_000, False, "DEADLINE_EXCEEDED: 5 ms", ())
    exporter = SpanExporter(receiver.endpoint, service_name="interlink-gw", interval=0.05,
                            resource_attributes={"interlink.site": "site-a", "host.name": "gw-1"})
    async with trio.open_nursery() as nursery:
        await nursery.start(exporter.run)
        exporter.submit(root)
        exporter.submit(child)
        spans = await receiver.wait_for_async(lambda spans: len(spans) >= 2)
        nursery.cancel_scope.cancel()
    resource = {"service.name": "interlink-gw", "interlink.site": "site-a", "host.name": "gw-1"}
    assert spans == [
        {"trace_id": trace_id.hex(), "span_id": root_id.hex(), "parent_span_id": "",
         "name": "com.example.EchoService/echo", "kind": SERVER,
         "start_ns": 1_700_000_000_123_456_789, "end_ns": 1_700_000_000_125_000_000,
         "attributes": {"rpc.service": "com.example.EchoService", "peer.site": "site-b", "bytes": 1234,
                        "negative": -(2**63), "ratio": 0.25, "retried": False, "cross_site": True, "one": 1},
         "status_code": OK, "status_message": "", "resource": resource, "scope": "interlink"},
        {"trace_id": trace_id.hex(), "span_id": child_id.hex(), "parent_span_id": root_id.hex(),
         "name": "com.example.EchoService/echo", "kind": CLIENT,
         "start_ns": 1_700_000_000_124_000_000, "end_ns": 1_700_000_000_124_900_000, "attributes": {},
         "status_code": ERROR, "status_message": "DEADLINE_EXCEEDED: 5 ms", "resource": resource,
         "scope": "interlink"},
    ]
    assert type(spans[0]["attributes"]["one"]) is int and type(spans[0]["attributes"]["cross_site"]) is bool
    assert receiver.requests[0]["content_type"] == "application/x-protobuf"
    assert receiver.errors == []
    assert (exporter.exported, exporter.dropped, exporter.failed_spans) == (2, 0, 0)


async def test_a_backlog_goes_in_batches_over_one_kept_alive_connection(receiver: OtlpReceiver) -> None:
    exporter = SpanExporter(receiver.endpoint, service_name="gw", max_batch=100, interval=0.05)
    async with trio.open_nursery() as nursery:
        await nursery.start(exporter.run)
        for n in range(1000):
            exporter.submit(span(n))
            if n % 250 == 0:
                await trio.sleep(0)
        spans = await receiver.wait_for_async(lambda spans: len(spans) >= 1000)
        nursery.cancel_scope.cancel()
    assert sorted(s["attributes"]["n"] for s in spans) == list(range(1000))
    sizes = [request["spans"] for request in receiver.requests]
    assert len(sizes) >= 10 and max(sizes) <= 100 and sum(sizes) == 1000
    assert {request["connection"] for request in receiver.requests} == {1}
    assert (exporter.exported, exporter.dropped, exporter.failed_spans) == (1000, 0, 0)


async def test_a_full_batch_is_sent_before_the_interval(receiver: OtlpReceiver) -> None:
    exporter = SpanExporter(receiver.endpoint, service_name="gw", max_batch=5, interval=30)
    async with trio.open_nursery() as nursery:
        await nursery.start(exporter.run)
        for n in range(5):
            exporter.submit(span(n))
        await receiver.wait_for_async(lambda spans: len(spans) == 5, timeout=2)
        nursery.cancel_scope.cancel()


async def test_the_queue_is_bounded_and_drops_are_counted(receiver: OtlpReceiver) -> None:
    exporter = SpanExporter(receiver.endpoint, service_name="gw", max_queue=10, interval=0.05)
    for n in range(50):
        exporter.submit(span(n))
    assert exporter.dropped == 40
    async with trio.open_nursery() as nursery:
        await nursery.start(exporter.run)
        spans = await receiver.wait_for_async(lambda spans: len(spans) >= 10)
        await trio.sleep(0.15)  # nothing more arrives
        nursery.cancel_scope.cancel()
    assert [s["attributes"]["n"] for s in spans] == list(range(10))
    assert len(receiver.spans) == 10
    assert (exporter.exported, exporter.dropped, exporter.failed_spans) == (10, 40, 0)


async def test_failed_exports_are_dropped_counted_and_logged_once(receiver: OtlpReceiver) -> None:
    receiver.fail_next(2)
    exporter = SpanExporter(receiver.endpoint, service_name="gw", interval=0.05)
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(exporter.run)
            for n, batch in enumerate(((0, 1, 2), (3,), (4, 5))):
                for i in batch:
                    exporter.submit(span(i))
                with trio.fail_after(5):
                    while len(receiver.requests) < n + 1:
                        await trio.sleep(0.01)
            spans = await receiver.wait_for_async(lambda spans: len(spans) >= 2)
            nursery.cancel_scope.cancel()
    assert [request["status"] for request in receiver.requests] == [503, 503, 200]
    assert [s["attributes"]["n"] for s in spans] == [4, 5]
    assert (exporter.exported, exporter.dropped, exporter.failed_spans) == (2, 0, 4)
    failed, recovered = events(logs, "otlp.export_failed"), events(logs, "otlp.export_recovered")
    assert len(failed) == 1 and failed[0]["error"] == "HTTP 503" and failed[0]["log_level"] == "warning"
    assert len(recovered) == 1 and recovered[0]["failed_batches"] == 2 and recovered[0]["failed_spans"] == 4
    assert logs.index(failed[0]) < logs.index(recovered[0])


async def test_a_collector_that_is_down_costs_bounded_memory_and_raises_nothing() -> None:
    exporter = SpanExporter(f"http://127.0.0.1:{closed_port()}/v1/traces", service_name="gw",
                            max_queue=50, max_batch=20, interval=0.01, timeout=0.5)
    submitted = 0
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(exporter.run)
            with trio.move_on_after(0.5):
                while True:
                    for _ in range(20):
                        exporter.submit(span(submitted))
                        submitted += 1
                    assert len(exporter._queue) <= 50
                    await trio.sleep(0.005)
            nursery.cancel_scope.cancel()
    assert exporter.exported == 0 and exporter.failed_spans > 0 and exporter.dropped > 0
    assert exporter.exported + exporter.dropped + exporter.failed_spans == submitted
    failed = events(logs, "otlp.export_failed")
    assert len(failed) == 1 and "cannot connect" in failed[0]["error"], failed
    assert not events(logs, "otlp.export_recovered")


async def test_a_collector_that_never_answers_is_timed_out_and_does_not_hold_shutdown() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections complete in the backlog; nobody ever reads or answers
    try:
        exporter = SpanExporter(f"http://127.0.0.1:{silent.getsockname()[1]}/v1/traces", service_name="gw",
                                interval=0.01, timeout=0.3)
        with structlog.testing.capture_logs() as logs:
            async with trio.open_nursery() as nursery:
                await nursery.start(exporter.run)
                exporter.submit(span(1))
                with trio.fail_after(3):
                    while not exporter.failed_spans:
                        await trio.sleep(0.01)
                exporter.submit(span(2))
                exporter.submit(span(3))
                started = trio.current_time()
                nursery.cancel_scope.cancel()
            assert trio.current_time() - started < 1.0  # the final flush is bounded by timeout
    finally:
        silent.close()
    assert events(logs, "otlp.export_failed")[0]["error"] == "no answer within 0.3 s"
    assert exporter.exported == 0 and exporter.failed_spans == 3


async def test_cancellation_flushes_what_is_queued(receiver: OtlpReceiver) -> None:
    exporter = SpanExporter(receiver.endpoint, service_name="gw", interval=60, max_batch=3)
    async with trio.open_nursery() as nursery:
        await nursery.start(exporter.run)
        for n in range(7):  # two full batches go at once, one span waits for the interval
            exporter.submit(span(n))
        await receiver.wait_for_async(lambda spans: len(spans) >= 6)
        assert len(exporter._queue) == 1
        nursery.cancel_scope.cancel()
    assert sorted(s["attributes"]["n"] for s in receiver.spans) == list(range(7))
    assert (exporter.exported, exporter.failed_spans) == (7, 0)


async def test_an_idle_connection_the_collector_closed_is_replaced_without_a_failure(receiver: OtlpReceiver) -> None:
    receiver.close_after_each = True  # closes each connection after its answer, unannounced
    exporter = SpanExporter(receiver.endpoint, service_name="gw", interval=0.02)
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(exporter.run)
            for n in range(3):
                exporter.submit(span(n))
                await receiver.wait_for_async(lambda spans, n=n: len(spans) == n + 1)
                await trio.sleep(0.05)  # the close reaches us while the connection is idle
            nursery.cancel_scope.cancel()
    assert (exporter.exported, exporter.failed_spans) == (3, 0)
    assert not events(logs, "otlp.export_failed")
    assert [request["connection"] for request in receiver.requests] == [1, 2, 3]


async def test_invalid_spans_are_counted_and_the_rest_exported(receiver: OtlpReceiver) -> None:
    exporter = SpanExporter(receiver.endpoint, service_name="gw", interval=0.02)
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(exporter.run)
            exporter.submit(span(1))
            exporter.submit(span(2, trace_id=b"short"))
            exporter.submit(span(3, attributes=(("bad", "\ud800"),)))  # not encodable as UTF-8
            exporter.submit(span(4))
            await receiver.wait_for_async(lambda spans: len(spans) >= 2)
            nursery.cancel_scope.cancel()
    assert [s["attributes"]["n"] for s in receiver.spans] == [1, 4]
    assert (exporter.exported, exporter.failed_spans) == (2, 2)
    assert events(logs, "otlp.invalid_spans")[0]["count"] == 2


async def canned_server(nursery: trio.Nursery, answer: bytes, *, delay: float = 0.0,
                        received: list[bytes] | None = None) -> int:
    """An HTTP server on 127.0.0.1 that reads one request per connection (appended to `received`), writes
    `answer` as is after `delay` seconds and closes."""

    async def handle(stream: trio.SocketStream) -> None:
        data = b""
        with trio.move_on_after(5):
            while b"\r\n\r\n" not in data:
                data += await stream.receive_some(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
                         .split(b":")[1])
            while len(body) < length:
                body += await stream.receive_some(65536)
            if received is not None:
                received.append(body)
            await trio.sleep(delay)
            await stream.send_all(answer)
        await stream.aclose()

    listeners = await nursery.start(trio.serve_tcp, handle, 0)
    return listeners[0].socket.getsockname()[1]


def canned(status: str, body: bytes, *headers: str, chunked: bool = False) -> bytes:
    if chunked:
        payload = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
        headers += ("Transfer-Encoding: chunked",)
    else:
        payload = body
        headers += (f"Content-Length: {len(body)}",)
    return f"HTTP/1.1 {status}\r\n".encode() + "".join(h + "\r\n" for h in headers).encode() + b"\r\n" + payload


@pytest.mark.parametrize(
    ("answer", "exported", "failed", "error"),
    [
        pytest.param(canned("200 OK", b"x" * 70_000), 0, 2, "HTTP 200: answer longer than 65536 bytes", id="oversized"),
        pytest.param(canned("200 OK", ExportTraceServiceResponse(partial_success={"rejected_spans": 1})
                            .SerializeToString(), chunked=True), 1, 1, None, id="partial-success-chunked"),
        pytest.param(canned("400 Bad Request", b"no"), 0, 2, "HTTP 400", id="400"),
        pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n", 0, 2, "RemoteProtocolError", id="not-http"),
    ],
)
async def test_answers_from_the_wire(answer: bytes, exported: int, failed: int, error: str | None) -> None:
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            port = await canned_server(nursery, answer)
            exporter = SpanExporter(f"http://127.0.0.1:{port}/v1/traces", service_name="gw", interval=0.02)
            await nursery.start(exporter.run)
            exporter.submit(span(1))
            exporter.submit(span(2))
            with trio.fail_after(5):
                while exporter.exported + exporter.failed_spans < 2:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert (exporter.exported, exporter.failed_spans) == (exported, failed)
    failures = events(logs, "otlp.export_failed")
    if error is None:
        assert not failures
    else:
        assert len(failures) == 1 and error in failures[0]["error"]


async def test_stopping_waits_for_the_export_under_way_instead_of_cutting_it() -> None:
    received: list[bytes] = []
    async with trio.open_nursery() as nursery:
        port = await canned_server(nursery, canned("200 OK", b""), delay=0.3, received=received)
        exporter = SpanExporter(f"http://127.0.0.1:{port}/v1/traces", service_name="gw", interval=0.01, timeout=2)
        async with trio.open_nursery() as gateway:
            await gateway.start(exporter.run)
            exporter.submit(span(1))
            with trio.fail_after(5):
                while not received:
                    await trio.sleep(0.01)
            exporter.submit(span(2))  # queued behind the export under way: goes in the final flush
            gateway.cancel_scope.cancel()
        nursery.cancel_scope.cancel()
    assert len(received) == 2  # each batch once: none cut and resent
    assert (exporter.exported, exporter.failed_spans) == (2, 0)


async def test_a_retry_after_from_the_collector_stretches_the_backoff() -> None:
    received: list[bytes] = []
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            port = await canned_server(nursery, canned("503 Service Unavailable", b"", "Retry-After: 0.4"),
                                       received=received)
            exporter = SpanExporter(f"http://127.0.0.1:{port}/v1/traces", service_name="gw", interval=0.01)
            await nursery.start(exporter.run)
            exporter.submit(span(1))
            with trio.fail_after(5):
                while exporter.failed_spans < 1:
                    await trio.sleep(0.005)
                first = trio.current_time()
                exporter.submit(span(2))
                while len(received) < 2:
                    await trio.sleep(0.005)
            waited = trio.current_time() - first
            nursery.cancel_scope.cancel()
    assert 0.3 < waited < 2, waited  # without Retry-After: 2 x interval = 0.02 s
    assert len(events(logs, "otlp.export_failed")) == 1


@pytest.fixture(scope="module")
def tls_site(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    return init_site("otlp", tmp_path_factory.mktemp("otlp-tls"), ["localhost"])


async def test_https_endpoint_verifies_the_collector(tls_site) -> None:  # noqa: ANN001
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(tls_site.cert, tls_site.key)
    with OtlpReceiver(ssl_context=server_context) as receiver:
        untrusting = SpanExporter(receiver.endpoint, service_name="gw", interval=0.02)
        trusting = SpanExporter(receiver.endpoint, service_name="gw", interval=0.02)
        trusting.ssl_context.load_verify_locations(tls_site.ca)
        with structlog.testing.capture_logs() as logs:
            async with trio.open_nursery() as nursery:
                for exporter in (untrusting, trusting):
                    await nursery.start(exporter.run)
                    exporter.submit(span(1))
                await receiver.wait_for_async(lambda spans: len(spans) == 1)
                with trio.fail_after(5):
                    while not untrusting.failed_spans:
                        await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
    assert receiver.endpoint.startswith("https://localhost:")
    assert (trusting.exported, trusting.failed_spans) == (1, 0)
    assert untrusting.exported == 0
    [failed] = events(logs, "otlp.export_failed")
    assert "TLS handshake" in failed["error"] and "CERTIFICATE_VERIFY_FAILED" in failed["error"]


@pytest.mark.parametrize(
    "endpoint",
    ["", "127.0.0.1:4318/v1/traces", "ftp://127.0.0.1/v1/traces", "http:///v1/traces",
     "http://127.0.0.1:99999/v1/traces", "http://127.0.0.1:port/v1/traces", "http://127.0.0.1:4318", "http://user:secret@127.0.0.1:4318/v1/traces",
     "grpc://127.0.0.1:4317"],
)
def test_an_invalid_endpoint_is_refused_with_a_clear_message(endpoint: str) -> None:
    with pytest.raises(ValueError, match="OTLP endpoint"):
        SpanExporter(endpoint, service_name="gw")


@pytest.mark.parametrize("bad", [{"max_queue": 0}, {"max_batch": 0}, {"interval": 0}, {"timeout": -1},
                                 {"service_name": ""}])
def test_invalid_settings_are_refused(bad: dict) -> None:
    settings = {"service_name": "gw", **bad}
    with pytest.raises(ValueError):
        SpanExporter("http://127.0.0.1:4318/v1/traces", **settings)


def test_submit_never_raises_or_blocks_outside_trio() -> None:
    exporter = SpanExporter("http://127.0.0.1:4318/v1/traces", service_name="gw", max_queue=3, max_batch=2)
    for n in range(5):
        exporter.submit(span(n))  # the second one sets the wakeup event, with nobody waiting
    assert len(exporter._queue) == 3 and exporter.dropped == 2
