"""The admin endpoint (interlink.control.admin): its routes, and its manners with hostile clients.

The server runs on 127.0.0.1 port 0 in the test's nursery; clients are raw trio sockets driven by an h11
client connection (or by hand-written bytes where the point is bad input). Every wait is bounded.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import h11
import orjson
import pytest
import trio
from structlog.testing import capture_logs

from interlink.control.admin import AdminServer
from tests.control.test_status_view import SAMPLE_STATUS

WAIT = 5.0  # seconds: the longest any step of these tests may take


class FakeSources:
    """AdminSources with settable answers; `failing` names sources that raise."""

    def __init__(self, status: dict | None = None) -> None:
        self.status_document = status if status is not None else SAMPLE_STATUS
        self.ready: tuple[bool, list[str]] = (True, [])
        self.failing: set[str] = set()
        self.metrics_asked: list[bool] = []

    def metrics(self, openmetrics: bool) -> bytes:
        self.metrics_asked.append(openmetrics)
        if "metrics" in self.failing:
            raise RuntimeError("metrics broke")
        if openmetrics:
            return b"# TYPE interlink_calls counter\ninterlink_calls_total 10\n# EOF\n"
        return b"# TYPE interlink_calls_total counter\ninterlink_calls_total 10.0\n"

    def status(self) -> dict:
        if "status" in self.failing:
            raise RuntimeError("status broke")
        return self.status_document

    def readiness(self) -> tuple[bool, list[str]]:
        if "readiness" in self.failing:
            raise RuntimeError("readiness broke")
        return self.ready


@contextmanager
def admin_server_in_thread(sources: object, **options: object) -> Iterator[tuple[str, int]]:
    """An AdminServer on 127.0.0.1 (any free port) in its own thread and trio loop, for clients that block
    (the `interlink status` CLI, Chromium); yields (host, port) and stops the server on exit."""
    started: queue.Queue = queue.Queue()
    handles: dict = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            handles["token"] = trio.lowlevel.current_trio_token()
            handles["scope"] = nursery.cancel_scope
            address = await nursery.start(AdminServer(sources, **options).run, "127.0.0.1", 0)
            started.put(address)

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # seen by the test thread rather than lost in this one
            started.put(exc)

    thread = threading.Thread(target=run, name="admin-server", daemon=True)
    thread.start()
    address = started.get(timeout=WAIT)
    if isinstance(address, BaseException):
        raise address
    try:
        yield address
    finally:
        trio.from_thread.run_sync(handles["scope"].cancel, trio_token=handles["token"])
        thread.join(WAIT)
        assert not thread.is_alive(), "the admin server did not stop"


@pytest.fixture
def sources() -> FakeSources:
    return FakeSources()


async def start(nursery: trio.Nursery, sources: FakeSources, **options: object) -> tuple[str, int]:
    return await nursery.start(AdminServer(sources, **options).run, "127.0.0.1", 0)


@pytest.fixture
async def admin(nursery, sources) -> tuple[str, int]:
    return await start(nursery, sources)


class Client:
    """One keep-alive connection, requests one at a time, through an h11 client."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    async def request(self, method: str, target: str, headers: list[tuple[str, str]] = ()) -> tuple[h11.Response, bytes]:
        if self.h11.our_state is h11.DONE:
            self.h11.start_next_cycle()
        request = h11.Request(method=method, target=target, headers=[("Host", "admin"), *headers])
        await self.stream.send_all(self.h11.send(request) + self.h11.send(h11.EndOfMessage()))
        response, body = None, b""
        with trio.fail_after(WAIT):
            while True:
                event = self.h11.next_event()
                if event is h11.NEED_DATA:
                    self.h11.receive_data(await self.stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    assert response is not None
                    return response, body
                else:
                    raise AssertionError(f"unexpected {event!r}")


async def connect(address: tuple[str, int]) -> Client:
    with trio.fail_after(WAIT):
        return Client(await trio.open_tcp_stream(*address))


async def get(address: tuple[str, int], target: str, method: str = "GET",
              headers: list[tuple[str, str]] = ()) -> tuple[h11.Response, bytes]:
    client = await connect(address)
    async with client.stream:
        return await client.request(method, target, headers)


def header(response: h11.Response, name: str) -> str | None:
    values = [value.decode() for key, value in response.headers if key == name.lower().encode()]
    return ", ".join(values) if values else None


async def read_until_closed(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes (a reset counts as closed)."""
    data = b""
    with trio.fail_after(WAIT):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return data
            if not chunk:
                return data
            data += chunk


# --- routes -----------------------------------------------------------------------------------------------


async def test_healthz_says_ok(admin):
    response, body = await get(admin, "/healthz")
    assert response.status_code == 200 and body == b"ok\n"
    assert header(response, "content-type") == "text/plain; charset=utf-8"
    assert header(response, "cache-control") == "no-store"
    assert header(response, "x-content-type-options") == "nosniff"


async def test_readyz_is_200_when_ready_and_503_with_each_reason_when_not(admin, sources):
    response, body = await get(admin, "/readyz")
    assert (response.status_code, body) == (200, b"ready\n")
    sources.ready = (False, ["no peer link is up", "registry static\nnot synced"])
    response, body = await get(admin, "/readyz")
    assert response.status_code == 503
    assert body == b"not ready: no peer link is up\nnot ready: registry static not synced\n"


async def test_status_is_the_document_as_json_and_a_query_string_is_ignored(admin, sources):
    response, body = await get(admin, "/status?pretty=1")
    assert response.status_code == 200 and header(response, "content-type") == "application/json"
    assert orjson.loads(body) == sources.status_document


async def test_the_page_is_html_without_scripts(admin):
    response, body = await get(admin, "/")
    assert response.status_code == 200
    assert header(response, "content-type") == "text/html; charset=utf-8"
    assert header(response, "content-security-policy") == "default-src 'none'; style-src 'unsafe-inline'"
    page = body.decode()
    assert '<table id="peers">' in page and 'data-peer="site-b"' in page and "<script" not in page


async def test_metrics_are_prometheus_text_unless_openmetrics_is_asked_for(admin, sources):
    response, body = await get(admin, "/metrics")
    assert response.status_code == 200
    assert header(response, "content-type") == "text/plain; version=0.0.4; charset=utf-8"
    assert body.endswith(b"interlink_calls_total 10.0\n")
    accept = "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    response, body = await get(admin, "/metrics", headers=[("Accept", accept)])
    assert header(response, "content-type") == "application/openmetrics-text; version=1.0.0; charset=utf-8"
    assert body.endswith(b"# EOF\n")
    assert sources.metrics_asked == [False, True]


async def test_head_has_the_headers_of_get_and_no_body(admin):
    client = await connect(admin)
    async with client.stream:
        response, body = await client.request("HEAD", "/healthz")
        assert response.status_code == 200 and body == b""
        assert header(response, "content-length") == "3"
        response, body = await client.request("GET", "/healthz")  # the connection is still in step
        assert body == b"ok\n"


async def test_keep_alive_serves_several_requests_on_one_connection(admin):
    client = await connect(admin)
    async with client.stream:
        for target, expected in (("/healthz", 200), ("/nowhere", 404), ("/readyz", 200), ("/status", 200)):
            response, _ = await client.request("GET", target)
            assert response.status_code == expected
            assert header(response, "connection") is None


async def test_unknown_paths_are_404(admin):
    response, body = await get(admin, "/admin/../etc/passwd")
    assert response.status_code == 404 and body.startswith(b"not found")


async def test_other_methods_are_405_with_allow(admin):
    client = await connect(admin)
    async with client.stream:
        response, _ = await client.request("DELETE", "/status")
        assert response.status_code == 405 and header(response, "allow") == "GET, HEAD"
        response, _ = await client.request("GET", "/healthz")  # no body: the connection goes on
        assert response.status_code == 200


async def test_a_post_with_a_body_is_refused_unread_and_the_connection_closed(admin):
    with trio.fail_after(WAIT):
        stream = await trio.open_tcp_stream(*admin)
    async with stream:
        await stream.send_all(b"POST /status HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000)
        reply = await read_until_closed(stream)
    assert reply.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n") and b"\r\nAllow: GET, HEAD\r\n" in reply
    assert b"connection: close" in reply.lower()


async def test_an_http_1_0_client_gets_its_answer_and_a_close(admin):
    with trio.fail_after(WAIT):
        stream = await trio.open_tcp_stream(*admin)
    async with stream:
        await stream.send_all(b"GET /healthz HTTP/1.0\r\n\r\n")
        reply = await read_until_closed(stream)
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"\r\n\r\nok\n")


@pytest.mark.parametrize("source, target", [("status", "/status"), ("status", "/"), ("metrics", "/metrics"),
                                            ("readiness", "/readyz")])
async def test_a_source_that_raises_is_a_500_and_the_server_goes_on(admin, sources, source, target):
    sources.failing.add(source)
    with capture_logs() as events:
        response, body = await get(admin, target)
    assert (response.status_code, body) == (500, b"internal error\n")
    failed = [e for e in events if e["event"] == "admin.source_failed"]
    assert len(failed) == 1 and failed[0]["log_level"] == "error" and failed[0]["exc_info"] is True
    assert b"broke" not in body and b"Traceback" not in body
    sources.failing.clear()
    response, _ = await get(admin, target)
    assert response.status_code == 200


async def test_a_status_document_that_is_not_json_is_a_500(admin, sources):
    sources.status_document = {"site": object()}
    response, body = await get(admin, "/status")
    assert (response.status_code, body) == (500, b"internal error\n")


# --- hostile clients --------------------------------------------------------------------------------------


async def test_an_oversized_request_head_is_431_and_closed(nursery, sources):
    address = await start(nursery, sources, max_request_bytes=4096)
    with trio.fail_after(WAIT):
        stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 20000)  # never finished
        reply = await read_until_closed(stream)
    assert reply.startswith(b"HTTP/1.1 431 ") and b"connection: close" in reply.lower()
    response, _ = await get(address, "/healthz")
    assert response.status_code == 200


@pytest.mark.parametrize("garbage", [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)) + b"\r\n\r\n",  # a TLS ClientHello
    b"GET / HTTP/1.1\r\nHost: a\r\nBad Header Name: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\n\r\n",
    b"\r\n\r\n\r\nHELLO\r\n\r\n",
])
async def test_garbage_is_400_and_closed_without_a_traceback(admin, garbage):
    with trio.fail_after(WAIT):
        stream = await trio.open_tcp_stream(*admin)
    with capture_logs() as events:
        async with stream:
            await stream.send_all(garbage)
            reply = await read_until_closed(stream)
    assert reply.startswith(b"HTTP/1.1 400 ") and b"connection: close" in reply.lower(), reply
    assert [e["event"] for e in events] == ["admin.bad_request"], events
    assert not any("exc_info" in e for e in events)
    response, _ = await get(admin, "/healthz")
    assert response.status_code == 200


async def test_a_slow_client_is_cut_after_the_read_timeout(nursery, sources):
    address = await start(nursery, sources, read_timeout=0.5)
    with trio.fail_after(WAIT):
        stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(b"GET /status HTTP/1.1\r\nHost: a\r\n")  # ... and never the blank line
        began = trio.current_time()
        reply = await read_until_closed(stream)
        waited = trio.current_time() - began
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert 0.4 <= waited < 3.0, waited


async def test_an_idle_keep_alive_connection_is_closed_after_the_read_timeout(nursery, sources):
    address = await start(nursery, sources, read_timeout=0.5)
    client = await connect(address)
    async with client.stream:
        response, _ = await client.request("GET", "/healthz")
        assert response.status_code == 200
        began = trio.current_time()
        assert await read_until_closed(client.stream) == b""  # closed without a word: nothing was asked
        assert 0.4 <= trio.current_time() - began < 3.0


async def test_connections_beyond_the_cap_are_refused_and_the_server_serves_once_they_close(nursery, sources):
    address = await start(nursery, sources, max_connections=2)
    first, second = await connect(address), await connect(address)
    for client in (first, second):  # both are served, hence counted by the server
        response, _ = await client.request("GET", "/healthz")
        assert response.status_code == 200
    with trio.fail_after(WAIT):
        third = await trio.open_tcp_stream(*address)
    async with third:
        try:
            await third.send_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        except trio.BrokenResourceError:
            pass  # already reset by the server
        assert await read_until_closed(third) == b""
    await first.stream.aclose()
    await second.stream.aclose()
    with trio.fail_after(WAIT):  # the server notices the closes on its own time
        while True:
            try:
                response, _ = await get(address, "/healthz")
            except (trio.BrokenResourceError, h11.RemoteProtocolError):
                await trio.sleep(0.02)
                continue
            break
    assert response.status_code == 200


async def test_the_server_stops_when_cancelled_and_frees_its_port(sources):
    async with trio.open_nursery() as nursery:
        address = await start(nursery, sources)
        idle = await connect(address)  # an open connection does not hold the server up
        nursery.cancel_scope.cancel()
    await idle.stream.aclose()
    with pytest.raises(OSError):
        with trio.fail_after(WAIT):
            await trio.open_tcp_stream(*address)


def test_the_server_runs_in_a_thread_for_blocking_clients(sources):
    import urllib.request

    with admin_server_in_thread(sources) as (host, port):
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://{host}:{port}/healthz", timeout=WAIT) as response:
            assert response.read() == b"ok\n"
