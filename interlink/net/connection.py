"""What every multiplexed connection of the gateway shares, whatever it speaks (HTTP/2, Bolt).

- Writes are queued synchronously and flushed by whoever caused them (`FlushQueue`), once per read batch;
  a send already in progress picks up what was added meanwhile (no writer task, no extra wake-up). The task
  that flushes may be sending for other connections (a provider's reader sends the answers it read to the
  peer link), so a send is never cut by that task's cancellation: a TLS stream whose send was cancelled
  halfway is broken for good. Sends are bounded by SEND_TIMEOUT instead (then the connection is closed).
- Liveness: a probe (PING, Bolt heartbeat) when the connection has been quiet; no answer in time closes it.
- Ending: `close()` is synchronous (it shuts the socket so the reader wakes at once); the reader's exit
  tells every open call that the connection is gone, sends what those calls answered, then closes.
"""

from __future__ import annotations

import trio

SEND_TIMEOUT = 30.0  # a connection that takes no bytes for this long is closed


class FlushQueue:
    """Connections written to since the last flush. Shared by all connections of one gateway so that the
    reader that caused a write flushes it."""

    __slots__ = ("_dirty",)

    def __init__(self) -> None:
        self._dirty: dict[Connection, None] = {}

    def add(self, connection: Connection) -> None:
        self._dirty[connection] = None

    async def flush(self) -> None:
        while self._dirty:
            connection = next(iter(self._dirty))
            del self._dirty[connection]
            with trio.CancelScope(shield=True):  # see the module docstring
                await connection.flush()


def describe_io_error(exc: BaseException) -> str:
    """trio wraps the OS or TLS error that broke a stream; name that one."""
    cause = exc.__cause__ or exc.__context__
    for candidate in (exc, cause):
        if candidate is not None and str(candidate):
            return str(candidate)
    return type(cause or exc).__name__


IO_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class Connection:
    """Base of H2Endpoint and BoltEndpoint. Subclasses provide `_pending_output()` (bytes to send, or b""),
    `_send_probe()` and `_fail_open_calls(reason)`; they set `_probe_outstanding = False` when the probe is
    answered and `last_receive` on every read."""

    def __init__(self, stream: trio.abc.Stream, flush_queue: FlushQueue, name: str) -> None:
        self.name = name
        self.closed = False
        self.draining = False
        self.close_reason = ""
        self.last_receive = trio.current_time()
        self.attributes: dict[str, object] = {}  # owner's per-connection facts (peer site, SNI domain ...)
        self._stream = stream
        self._flush_queue = flush_queue
        self._sending = False
        self._probe_outstanding = False

    @property
    def usable(self) -> bool:
        return not self.closed and not self.draining

    def _pending_output(self) -> bytes:
        raise NotImplementedError

    def _send_probe(self) -> None:
        raise NotImplementedError

    def _fail_open_calls(self, reason: str) -> None:
        raise NotImplementedError

    def _after_flush(self) -> None:
        """Hook: called when everything queued has been sent."""

    def _mark(self) -> None:
        self._flush_queue.add(self)

    async def flush(self) -> None:
        if self._sending or self.closed:
            return
        self._sending = True
        try:
            while data := self._pending_output():
                with trio.move_on_after(SEND_TIMEOUT) as stalled:
                    await self._stream.send_all(data)
                if stalled.cancelled_caught:
                    self.close(f"the other side took no data for {SEND_TIMEOUT:g}s")
                    return
            self._after_flush()
        except IO_ERRORS as exc:
            self._lost(f"send failed: {describe_io_error(exc)}")
        finally:
            self._sending = False

    async def keepalive(self, interval: float, timeout: float) -> None:
        """Probe when the connection has been quiet for `interval`; close it if no answer within `timeout`."""
        while not self.closed:
            idle = trio.current_time() - self.last_receive
            if idle < interval:
                await trio.sleep(interval - idle)
                continue
            self._probe_outstanding = True
            self._send_probe()
            await self._flush_queue.flush()
            with trio.move_on_after(timeout):
                while self._probe_outstanding and not self.closed:
                    await trio.sleep(min(0.05, timeout))
            if self._probe_outstanding and not self.closed:
                self.close(f"no {self.probe_name} acknowledgement within {timeout:g}s")
                await self._flush_queue.flush()
                return

    probe_name = "keep-alive"

    def close(self, reason: str) -> None:
        """Close now: open calls fail, and shutting the socket wakes the reader at once."""
        if not self.closed:
            self.close_reason = reason
            self._lost(reason)
            transport = getattr(self._stream, "transport_stream", self._stream)
            sock = getattr(transport, "socket", None)
            if sock is not None:
                try:
                    sock.shutdown(2)  # SHUT_RDWR
                except OSError:
                    pass

    def _lost(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = self.close_reason or reason
        self._fail_open_calls(self.close_reason)

    async def _end(self, reason: str) -> None:
        """The reader's last act: fail what is open, send what that answered, close the stream."""
        self._lost(self.close_reason or reason)
        with trio.CancelScope(shield=True):
            with trio.move_on_after(1):
                await self._flush_queue.flush()
            with trio.move_on_after(1):
                try:
                    await self._stream.aclose()
                except IO_ERRORS:
                    pass  # already broken or closed: nothing left to release gracefully
