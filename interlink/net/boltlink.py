"""SOFA Bolt connections over trio streams, built for relaying.

One `BoltEndpoint` is one connection. Its reader decodes every complete frame of a read, answers
heartbeats itself (they are hop-by-hop, never forwarded), hands requests (server side) to the owner's
callback and matches responses (client side) to the calls waiting for them by request id; then it
flushes every connection written to (`FlushQueue`, shared with the HTTP/2 endpoints).

Client side, the endpoint owns request ids: `send_request` stamps a fresh id into the frame and keeps
`id -> BoltCall` until the response, the connection's end, or `forget` (a caller's deadline passed).
A response for an id nobody waits for any more (late, or for a oneway call) is an orphan and is dropped.
"""

from __future__ import annotations

from typing import Callable, Protocol

import structlog
import trio

from interlink.net.connection import IO_ERRORS, Connection, FlushQueue, describe_io_error
from interlink.wire import bolt

log = structlog.get_logger("interlink.net.bolt")

READ_SIZE = 256 * 1024
MAX_REQUEST_ID = 0x7FFFFFFF


class BoltCall(Protocol):
    """What a client-side endpoint tells the owner of one request it sent."""

    def on_response(self, frame: bolt.BoltFrame) -> None: ...
    def on_connection_lost(self, reason: str) -> None: ...


RequestCallback = Callable[["BoltEndpoint", bolt.BoltFrame], None]


class BoltEndpoint(Connection):
    """One Bolt connection. `run()` is its reader; the owner runs it in a nursery."""

    probe_name = "heartbeat"

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        flush_queue: FlushQueue,
        on_request: RequestCallback | None = None,
        max_pending: int = 1024,
        max_frame_size: int = 16 * 1024 * 1024,
        name: str = "",
    ) -> None:
        super().__init__(stream, flush_queue, name)
        self.streams: dict[int, BoltCall] = {}  # request id -> call (client side); the name matches H2Endpoint
        self.in_flight = 0  # server side: requests taken and not answered yet (kept by the owner)
        self.max_pending = max_pending
        self._on_request = on_request
        self._decoder = bolt.BoltDecoder(max_frame_size=max_frame_size)
        self._out: list[bytes] = []
        self._next_id = 0

    # --- state for pools ---------------------------------------------------------------------------------

    def has_capacity(self) -> bool:
        return self.usable and len(self.streams) < self.max_pending

    # --- writing -------------------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.closed:
            self._out.append(data)
            self._mark()

    def send_request(self, frame: bolt.BoltFrame, raw: bytes, call: BoltCall | None) -> int:
        """Send a request under a fresh id of this connection; `call` waits for the response (None for a
        oneway request: nothing waits, whatever comes back is an orphan)."""
        request_id = self._fresh_id()
        self.write(bolt.patch_request_id(raw, request_id) if frame.request_id != request_id else raw)
        if call is not None:
            self.streams[request_id] = call
        return request_id

    def _fresh_id(self) -> int:
        self._next_id = self._next_id + 1 if self._next_id < MAX_REQUEST_ID else 1
        return self._next_id

    def forget(self, request_id: int) -> None:
        """The caller gave up (deadline, its connection ended): a late response will be dropped."""
        self.streams.pop(request_id, None)

    def _pending_output(self) -> bytes:
        if not self._out:
            return b""
        data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out.clear()
        return data

    # --- reading -------------------------------------------------------------------------------------------

    async def run(self) -> None:
        reason = "closed"
        try:
            while not self.closed:
                data = await self._stream.receive_some(READ_SIZE)
                if not data:
                    reason = "connection closed by the remote side"
                    break
                self.last_receive = trio.current_time()
                try:
                    frames = self._decoder.feed(data)
                except bolt.BoltProtocolError as exc:
                    # Answer what was complete before the bad bytes; the rest cannot be framed: close.
                    for frame in exc.frames or ():
                        self._dispatch(frame)
                    reason = f"Bolt protocol error from the remote side: {exc}"
                    log.warning("bolt.protocol_error", endpoint=self.name, error=str(exc))
                    await self._flush_queue.flush()  # while this connection still counts as open
                    break
                for frame in frames:
                    self._dispatch(frame)
                await self._flush_queue.flush()
        except IO_ERRORS as exc:
            reason = f"connection lost: {describe_io_error(exc)}"
        finally:
            await self._end(reason)

    def _dispatch(self, frame: bolt.BoltFrame) -> None:
        if frame.is_heartbeat:
            if frame.is_request:
                self.write(bolt.encode(bolt.heartbeat_ack(frame)))
            else:
                self._probe_outstanding = False
            return
        try:
            if frame.is_response:
                call = self.streams.pop(frame.request_id, None)
                if call is None:
                    # Late (the caller gave up) or an answer to a oneway call (sofa-rpc-node answers those).
                    log.info("bolt.orphan_response", endpoint=self.name, request_id=frame.request_id)
                    return
                call.on_response(frame)
            elif self._on_request is not None:
                self._on_request(self, frame)
        except Exception:  # a bug in one call must not take the connection (and every other call) down
            log.exception("bolt.handler_failed", endpoint=self.name, request_id=frame.request_id)

    # --- liveness and ending ------------------------------------------------------------------------------

    def _send_probe(self) -> None:
        self.write(bolt.encode(bolt.heartbeat(self._fresh_id())))

    def goaway(self) -> None:
        """Bolt has no GOAWAY: stop taking new requests (they get an error) and let the open calls finish."""
        self.draining = True

    def _fail_open_calls(self, reason: str) -> None:
        calls, self.streams = self.streams, {}
        for call in calls.values():
            try:
                call.on_connection_lost(reason)
            except Exception:
                log.exception("bolt.handler_failed", endpoint=self.name)
