"""The gateway's admin endpoint: metrics, health, readiness and status over plain HTTP/1.1.

Routes (GET and HEAD only; a query string is ignored):

    /metrics   Prometheus text 0.0.4, or OpenMetrics 1.0.0 when the Accept header asks for it
    /healthz   200 "ok": the process serves
    /readyz    200 "ready", or 503 with one "not ready: REASON" line per reason
    /status    the status document as JSON
    /          the status document as a small HTML page (interlink.control.status_view)

The admin port may face hostile or broken clients, so the server holds itself to the house's limits:
HTTP/1.1 is parsed by h11 (sans-I/O), one request at a time per connection with keep-alive; a cap on the
connections (beyond it a new connection is closed at once); a cap on a request's head (431); a deadline
for reading each request, which also closes idle keep-alive connections; a deadline for writing each
response; request bodies refused. Bad input gets a 4xx and a closed connection, never a traceback; a
source that raises gets a 500 and the server goes on.

The gateway supplies what is served through `AdminSources`; this module knows nothing of how it is
gathered.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from http import HTTPStatus
from typing import Callable, Protocol

import h11
import orjson
import structlog
import trio

from interlink.control.status_view import render_html
from interlink.net.listener import bind

log = structlog.get_logger("interlink.admin")

RECEIVE_BYTES = 16384  # one read from a client; h11 buffers at most max_request_bytes of an unfinished head
LINGER_SECONDS = 1.0  # after an error reply: how long unread request bytes are drained before closing
LINGER_BYTES = 65536  # ... and how many of them at most
ACCEPT_BACKOFF_SECONDS = 0.1  # out of file descriptors: wait this long before accepting again
_OUT_OF_ROOM = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

# Written out rather than taken from prometheus_client: its CONTENT_TYPE_LATEST became text format 1.0.0
# in 0.2x, while AdminSources.metrics(openmetrics=False) produces the 0.0.4 text format.
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
JSON = "application/json"
HTML = "text/html; charset=utf-8"
# The page is static HTML with inline CSS: no scripts, no frames, no fetches.
HTML_POLICY = "default-src 'none'; style-src 'unsafe-inline'"
ALLOWED_METHODS = "GET, HEAD"


class AdminSources(Protocol):
    """What the gateway serves on its admin port."""

    def metrics(self, openmetrics: bool) -> bytes:
        """The metrics exposition: Prometheus text 0.0.4, or OpenMetrics 1.0.0 when `openmetrics`."""
        ...

    def status(self) -> dict:
        """The status document (JSON-serialisable); see interlink.control.status_view for its shape."""
        ...

    def readiness(self) -> tuple[bool, list[str]]:
        """(ready, the reasons it is not)."""
        ...


@dataclass(frozen=True, slots=True)
class AdminResponse:
    status: int
    content_type: str
    body: bytes
    extra_headers: tuple[tuple[str, str], ...] = ()


class AdminServer:
    """Serves `sources` over HTTP/1.1 until cancelled.

    `run(host, port)` binds and serves; `serve(sock)` serves a listening socket bound elsewhere (e.g. before
    the worker processes are forked).
    """

    def __init__(
        self,
        sources: AdminSources,
        *,
        max_connections: int = 64,
        read_timeout: float = 10.0,
        max_request_bytes: int = 16384,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        if read_timeout <= 0:
            raise ValueError(f"read_timeout must be positive, not {read_timeout}")
        if max_request_bytes < 256:
            raise ValueError(f"max_request_bytes must be at least 256, not {max_request_bytes}")
        self.sources = sources
        self.max_connections = max_connections
        self.read_timeout = read_timeout
        self.write_timeout = read_timeout
        self.max_request_bytes = max_request_bytes
        self.active_connections = 0
        self._routes: dict[bytes, Callable[[list[tuple[bytes, bytes]]], AdminResponse]] = {
            b"/metrics": self._metrics,
            b"/healthz": self._healthz,
            b"/readyz": self._readyz,
            b"/status": self._status_json,
            b"/": self._status_page,
        }

    async def run(
        self,
        host: str,
        port: int,
        *,
        reuse_port: bool = False,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on host:port (port 0: any free port) and serve until cancelled; `task_status.started`
        gets the bound (host, port)."""
        await self.serve(bind(host, port, reuse_port=reuse_port), task_status=task_status)

    async def serve(
        self,
        listen_socket: socket.socket,
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve connections accepted on `listen_socket` (bound and listening; this takes ownership and
        closes it) until cancelled."""
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(listen_socket))
        host, port = listen_socket.getsockname()[:2]
        async with listener:
            async with trio.open_nursery() as nursery:
                log.info("admin.listening", address=f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
                task_status.started((host, port))
                while True:
                    try:
                        stream = await listener.accept()
                    except OSError as exc:
                        if exc.errno not in _OUT_OF_ROOM:
                            raise
                        log.warning("admin.accept_failed", error=exc.strerror or str(exc))
                        await trio.sleep(ACCEPT_BACKOFF_SECONDS)
                        continue
                    if self.active_connections >= self.max_connections:
                        log.debug("admin.connection_refused", connections=self.active_connections,
                                  max_connections=self.max_connections)
                        await _abort(stream)
                        continue
                    self.active_connections += 1
                    nursery.start_soon(self._connection, stream)

    async def _connection(self, stream: trio.SocketStream) -> None:
        try:
            await AdminConnection(self, stream).serve()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        except Exception:  # a bug while serving one connection ends that connection, never the server
            log.exception("admin.connection_crashed")
        finally:
            self.active_connections -= 1
            await _abort(stream)

    # --- routes ------------------------------------------------------------------------------------------

    def respond(self, method: str, target: bytes, headers: list[tuple[bytes, bytes]]) -> AdminResponse:
        """The response to one request; a source that raises makes a 500 (logged), never an exception."""
        if method not in ("GET", "HEAD"):
            return AdminResponse(405, TEXT, b"method not allowed; use GET or HEAD\n", (("Allow", ALLOWED_METHODS),))
        path = target.split(b"?", 1)[0]
        route = self._routes.get(path)
        if route is None:
            return AdminResponse(404, TEXT, b"not found; try /metrics, /healthz, /readyz, /status or /\n")
        try:
            return route(headers)
        except Exception:
            log.exception("admin.source_failed", path=path.decode("ascii", "replace"))
            return AdminResponse(500, TEXT, b"internal error\n")

    def _metrics(self, headers: list[tuple[bytes, bytes]]) -> AdminResponse:
        accept = b",".join(value for name, value in headers if name == b"accept").lower()
        openmetrics = b"application/openmetrics-text" in accept
        body = bytes(self.sources.metrics(openmetrics))
        return AdminResponse(200, OPENMETRICS_CONTENT_TYPE if openmetrics else PROMETHEUS_CONTENT_TYPE, body)

    def _healthz(self, headers: list[tuple[bytes, bytes]]) -> AdminResponse:
        return AdminResponse(200, TEXT, b"ok\n")

    def _readyz(self, headers: list[tuple[bytes, bytes]]) -> AdminResponse:
        ready, reasons = self.sources.readiness()
        if ready:
            return AdminResponse(200, TEXT, b"ready\n")
        lines = "".join(f"not ready: {_one_line(reason)}\n" for reason in reasons) or "not ready\n"
        return AdminResponse(503, TEXT, lines.encode("utf-8", "replace"))

    def _status_json(self, headers: list[tuple[bytes, bytes]]) -> AdminResponse:
        return AdminResponse(200, JSON, orjson.dumps(self.sources.status(), option=orjson.OPT_INDENT_2) + b"\n")

    def _status_page(self, headers: list[tuple[bytes, bytes]]) -> AdminResponse:
        page = render_html(self.sources.status())
        return AdminResponse(200, HTML, page.encode("utf-8", "replace"), (("Content-Security-Policy", HTML_POLICY),))


class AdminConnection:
    """One client connection: requests read and answered one at a time until either side closes."""

    def __init__(self, server: AdminServer, stream: trio.SocketStream) -> None:
        self.server = server
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=server.max_request_bytes)
        self.received_any = False  # bytes of the current request have arrived (for 408 against idle close)

    async def serve(self) -> None:
        while True:
            self.received_any = False
            try:
                request = None
                with trio.move_on_after(self.server.read_timeout):
                    request = await self._read_request()
                    if request is None:
                        return  # closed between requests
            except h11.RemoteProtocolError as exc:
                log.debug("admin.bad_request", error=str(exc), status=exc.error_status_hint)
                await self._refuse(exc.error_status_hint, f"bad request: {exc}\n")
                return
            if request is None:  # the read deadline passed
                if self.received_any:
                    log.debug("admin.read_timeout", seconds=self.server.read_timeout)
                    await self._refuse(408, "request not received in time\n")
                return
            if not await self._answer(request):
                return
            self.h11.start_next_cycle()

    async def _read_request(self) -> h11.Request | None:
        """The next request, with its (empty) body read; None if the client closed before starting one."""
        request = None
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                data = await self.stream.receive_some(RECEIVE_BYTES)
                if data:
                    self.received_any = True
                self.h11.receive_data(data)  # b"" is end of stream: h11 says ConnectionClosed or raises
                continue
            if isinstance(event, h11.Request):
                request = event
                if _has_body(event):
                    return event  # refused unread (_answer closes the connection)
                continue
            if isinstance(event, h11.EndOfMessage):
                return request
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None
            # h11.Data of a body announced as empty cannot happen; anything else ends the connection
            return None

    async def _answer(self, request: h11.Request) -> bool:
        """Send the response; False when the connection must close afterwards."""
        method = request.method.decode("ascii", "replace")
        if _has_body(request) and method in ("GET", "HEAD"):
            response = AdminResponse(400, TEXT, b"request bodies are not accepted\n")
        else:
            response = self.server.respond(method, request.target, list(request.headers))
        log.debug("admin.request", method=method, target=request.target.decode("ascii", "replace")[:200],
                  status=response.status)
        if _has_body(request):  # the body stays unread: the connection cannot carry another request
            await self._send(response, head_only=method == "HEAD", close=True)
            await self._linger()
            return False
        await self._send(response, head_only=method == "HEAD", close=False)
        # h11 says MUST_CLOSE when the client asked for it (Connection: close, HTTP/1.0 without keep-alive)
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

    async def _refuse(self, status: int, message: str) -> None:
        """Answer an unusable request with `status` if the protocol still allows a response, then close."""
        if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            try:
                await self._send(AdminResponse(status, TEXT, message.encode("utf-8", "replace")[:512]),
                                 head_only=False, close=True)
            except h11.LocalProtocolError:
                return
        await self._linger()

    async def _send(self, response: AdminResponse, *, head_only: bool, close: bool) -> None:
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            *response.extra_headers,
        ]
        if close:
            headers.append(("Connection", "close"))
        reason = HTTPStatus(response.status).phrase.encode("ascii")
        data = self.h11.send(h11.Response(status_code=response.status, headers=headers, reason=reason))
        if not head_only and response.body:
            data += self.h11.send(h11.Data(data=response.body))
        data += self.h11.send(h11.EndOfMessage())
        with trio.move_on_after(self.server.write_timeout) as scope:
            await self.stream.send_all(data)
        if scope.cancelled_caught:
            log.debug("admin.write_timeout", seconds=self.server.write_timeout)
            raise trio.BrokenResourceError("the client did not read the response in time")

    async def _linger(self) -> None:
        """Close our side, then drain what the client still sends for a moment, so that closing with
        unread bytes does not reset the connection before the client has read our reply."""
        try:
            await self.stream.send_eof()
            drained = 0
            with trio.move_on_after(LINGER_SECONDS):
                while drained < LINGER_BYTES:
                    data = await self.stream.receive_some(RECEIVE_BYTES)
                    if not data:
                        break
                    drained += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


def _has_body(request: h11.Request) -> bool:
    for name, value in request.headers:
        if name == b"transfer-encoding":
            return True
        if name == b"content-length" and value.strip() != b"0":
            return True
    return False


def _one_line(reason: object) -> str:
    return " ".join(str(reason).split())


async def _abort(stream: trio.SocketStream) -> None:
    with trio.CancelScope(shield=True):
        try:
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
