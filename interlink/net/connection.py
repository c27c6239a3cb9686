"""What every connection of the gateway shares, whatever it speaks (HTTP/2, Bolt), and the watchdog over them.

- Writes are queued synchronously and flushed by whoever caused them (`FlushQueue`), once per read batch.
  Flushing hands the bytes to each connection's transport, which never waits (interlink.net.transport):
  a reader that serves others never waits on one of them. The call lines the batch made are written just
  before (when `interlink run` holds them: interlink/logs.py hold_call_lines).
- A congested connection (its transport holds `output_limit` bytes the other side has not taken) is not fed
  more: HTTP/2 streams wait for flow control and the drain, Bolt stops reading requests from it. When its
  backlog is sent, `_drained()` resumes them.
- Liveness: a probe (PING, Bolt heartbeat) when an outbound connection has been quiet; no answer in time
  closes it. Inbound connections are judged by the `ConnectionTable`'s watchdog: preface, idle,
  partial-frame and write timeouts, one pass a `TICK` for all of them (no timer per connection).
- Ending: `close()` is synchronous (closing the transport wakes the reader at once); the reader's exit
  tells every open call that the connection is gone, sends what those calls answered, then releases it.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
import structlog
import trio
from mypy_extensions import mypyc_attr

from interlink import logs
from interlink.model import Status
from interlink.net.heap import HeapTrimmer
from interlink.net.transport import Transport, TransportClosed
from interlink.net import trips

log = structlog.get_logger("interlink.net")

TICK = 0.5  # seconds between watchdog passes
CLOSE_LINGER = 1.0  # how long a closing connection may take to send its last bytes


class FlushQueue:
    """Connections written to since the last flush. Shared by all connections of one gateway so that the
    reader (or timer) that caused a write flushes it, once, after its whole batch; the batch's call lines are
    written just before its bytes go out."""

    __slots__ = ("_dirty",)

    def __init__(self) -> None:
        self._dirty: dict[Connection, None] = {}

    def add(self, connection: Connection) -> None:
        self._dirty[connection] = None

    def flush(self) -> None:
        logs.write_held()  # first: a caller that has its answer finds its call's lines written, as before holding
        dirty = self._dirty
        while dirty:
            connection = next(iter(dirty))
            del dirty[connection]
            connection.flush()
        logs.write_held()  # (calls failed while flushing: a transport that broke)


class IdleRule(enum.Enum):
    """When a connection counts as idle (its idle timeout then runs)."""

    NEVER = "never"  # our own pooled connections: kept up by keep-alive probes
    NO_CALLS = "no calls in flight"  # local HTTP/2 callers: control frames do not keep a connection
    NO_FRAMES = "no frames received"  # local Bolt callers (heartbeats count, as Bolt servers do), peer links


@dataclass(frozen=True, slots=True)
class ConnectionPolicy:
    """The timeouts the watchdog applies to one connection (math.inf: none) and its output limit."""

    preface_timeout: float = math.inf
    idle_timeout: float = math.inf
    idle_rule: IdleRule = IdleRule.NEVER
    partial_frame_timeout: float = math.inf
    write_timeout: float = math.inf
    output_limit: int = 1 << 20


OUTBOUND = ConnectionPolicy(partial_frame_timeout=30.0, write_timeout=30.0)


# Subclassed outside the compiled modules (the tests' connections).
@mypyc_attr(allow_interpreted_subclasses=True)
class Connection:
    """Base of H2Endpoint and BoltEndpoint. Subclasses provide `_pending_output()` (bytes to send, or b""),
    `_received(data)` (a read batch), `_send_probe()`, `_fail_open_calls(reason)` and `in_flight`; they set
    `_probe_answered()` when the probe is answered, `preface_done` when the first frame arrived,
    `partial_since` while a frame is incomplete and `idle_since` when their last call ended."""

    __slots__ = (
        "name", "transport", "policy", "closed", "draining", "close_reason", "opened_at", "last_receive",
        "idle_since", "preface_done", "partial_since", "attributes", "_flush_queue", "_probe_outstanding",
        "_probe_sent", "rtt", "__weakref__"
    )

    probe_name = "keep-alive"

    def __init__(self, transport: Transport, flush_queue: FlushQueue, name: str,
                 policy: ConnectionPolicy = OUTBOUND) -> None:
        now = trio.current_time()
        self.name = name
        self.transport = transport
        self.policy = policy
        self.closed = False
        self.draining = False
        self.close_reason = ""
        self.opened_at = now
        self.last_receive = now
        self.idle_since = now
        self.preface_done = False
        self.partial_since: float | None = None
        self.attributes: dict[str, object] = {}  # owner's per-connection facts (peer site, SNI domain ...)
        self._flush_queue = flush_queue
        self._probe_outstanding = False
        self._probe_sent = 0.0
        self.rtt: float | None = None  # seconds from the last answered keep-alive probe to its answer
        transport.on_drained = self._on_drained

    # --- what subclasses provide ------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        raise NotImplementedError

    def _pending_output(self) -> bytes:
        raise NotImplementedError

    def _received(self, data: bytes) -> None:
        raise NotImplementedError

    def _send_probe(self) -> None:
        raise NotImplementedError

    def _fail_open_calls(self, reason: str) -> None:
        raise NotImplementedError

    def _start(self) -> None:
        """Hook: the reader is about to start (HTTP/2 queues its preface and SETTINGS here)."""

    def _resume(self) -> None:
        """Hook: the transport sent its backlog; producers paused by congestion may go on."""

    async def _before_read(self) -> None:
        """Hook, awaited before a read while the connection is congested: wait, if it should not be read from
        now (Bolt callers with answers unread)."""

    @property
    def inbound_calls(self) -> tuple[int, int]:
        """Server side: calls the remote side has open here, and how many it may have."""
        raise NotImplementedError

    def shutdown(self, reason: str) -> None:
        """Hook: close politely (HTTP/2: GOAWAY first); used for idle connections and shedding."""
        self.close(reason)

    # --- state ------------------------------------------------------------------------------------------

    def admission_refusal(self) -> tuple[Status, str] | None:
        """The one admission rule of both protocols, asked before a new inbound call is dispatched: None when
        it may start, else the status and reason it is refused with (HTTP/2 answers REFUSED_STREAM, Bolt an
        error response)."""
        if self.draining:
            return Status.UNAVAILABLE, "the gateway is shutting down; retry on another one"
        open_calls, limit = self.inbound_calls
        if open_calls >= limit:
            return Status.RESOURCE_EXHAUSTED, f"more than {limit} calls in flight on this connection"
        return None

    @property
    def usable(self) -> bool:
        return not self.closed and not self.draining

    @property
    def congested(self) -> bool:
        return self.transport.buffered >= self.policy.output_limit

    @property
    def remote(self) -> str:
        return self.transport.remote

    # --- writing ----------------------------------------------------------------------------------------

    def _mark(self) -> None:
        self._flush_queue.add(self)

    def flush(self) -> None:
        """Hand what is queued to the transport (which never waits)."""
        if not self.closed:
            data = self._pending_output()
            if data:
                self.transport.write(data)

    def _on_drained(self) -> None:
        if not self.closed:
            self._resume()
            self._flush_queue.flush()

    # --- reading ----------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Read until the connection ends; then every call still open learns that it was lost."""
        reason = "closed"
        async with trio.open_nursery() as nursery:
            transport = self.transport
            transport.spawn_writer = lambda: nursery.start_soon(transport.run_writer)
            if transport.buffered:  # e.g. the end of a TLS handshake
                transport._writing = True  # noqa: SLF001
                nursery.start_soon(transport.run_writer)
            try:
                self._start()
                self._flush_queue.flush()
                while not self.closed:
                    if self.congested:
                        await self._before_read()
                    data = await self.transport.receive()
                    if self.closed:
                        break
                    if not data:
                        reason = "connection closed by the remote side"
                        break
                    self.last_receive = trio.current_time()
                    self._received(data)
                    self._flush_queue.flush()
            except TransportClosed as exc:
                reason = f"connection lost: {exc}"
            finally:
                with trio.CancelScope(shield=True):
                    await self._end(reason)
                nursery.cancel_scope.cancel()

    async def keepalive(self, interval: float, timeout: float) -> None:
        """Probe when the connection has been quiet for `interval`; close it if no answer within `timeout`."""
        while not self.closed:
            idle = trio.current_time() - self.last_receive
            if idle < interval:
                await trio.sleep(interval - idle)
                continue
            self._probe_outstanding = True
            self._probe_sent = trio.current_time()
            self._send_probe()
            self._flush_queue.flush()
            with trio.move_on_after(timeout):
                while self._probe_outstanding and not self.closed:
                    await trio.sleep(min(0.05, timeout))
            if self._probe_outstanding and not self.closed:
                self.close(f"no {self.probe_name} acknowledgement within {timeout:g}s")
                return

    def _probe_answered(self) -> None:
        if self._probe_outstanding:
            self._probe_outstanding = False
            self.rtt = trio.current_time() - self._probe_sent

    # --- ending -----------------------------------------------------------------------------------------

    def _hand_all(self) -> None:
        """What is queued now will be handed to the transport (close): none of it counts as never sent."""

    def close(self, reason: str) -> None:
        """Close now: open calls fail, what they and we queued is handed to the transport (best effort),
        and the transport closes (waking the reader)."""
        if self.closed:
            return
        self.close_reason = reason
        self._hand_all()
        self._lost(reason)
        self._flush_queue.flush()
        data = self._pending_output()
        if data:
            self.transport.write(data)
        self.transport.close_when_drained()
        if not self.transport.closed:
            # The last bytes get CLOSE_LINGER to leave; the watchdog's write timeout is the backstop.
            self.policy = _closing(self.policy)

    def _lost(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = self.close_reason or reason
        self._fail_open_calls(self.close_reason)

    async def _end(self, reason: str) -> None:
        """The reader's last act: fail what is open, send what that answered, release the transport."""
        self._lost(self.close_reason or reason)
        self._flush_queue.flush()
        if self.transport.buffered and not self.transport.closed:
            with trio.move_on_after(CLOSE_LINGER):
                while self.transport.buffered and not self.transport.closed:
                    await trio.sleep(0.01)
        self.transport.close()
        self.transport.on_drained = None  # no cycle left between a dead connection and its transport
        self.transport.spawn_writer = None


def _closing(policy: ConnectionPolicy) -> ConnectionPolicy:
    return ConnectionPolicy(
        preface_timeout=policy.preface_timeout, idle_timeout=math.inf, idle_rule=IdleRule.NEVER,
        partial_frame_timeout=math.inf, write_timeout=min(policy.write_timeout, CLOSE_LINGER),
        output_limit=policy.output_limit,
    )


class ConnectionTable:
    """Every live connection of a gateway: the watchdog that applies their timeouts, the counts that
    listeners cap, and the shedding of the oldest idle ones when a listener or the process runs out of room.
    """

    def __init__(self, max_total: int = 1_000_000) -> None:
        self.max_total = max_total  # every connection of the process, inbound and outbound (file descriptors)
        self._connections: dict[Connection, tuple[str, str]] = {}  # -> (group: listener name or "outbound", host)
        self.heap = HeapTrimmer()

    def __len__(self) -> int:
        return len(self._connections)

    def __iter__(self):
        return iter(list(self._connections))

    def add(self, connection: Connection, group: str = "outbound") -> None:
        self._connections[connection] = (group, _host_of(connection.remote))

    def discard(self, connection: Connection) -> None:
        self._connections.pop(connection, None)

    def shed_idle(self, count: int, *, group: str | None = None, remote_host: str | None = None) -> int:
        """Close up to `count` inbound connections with no call in flight, those idle the longest first
        (connections that never finished their preface count as idle since they opened). Returns how many.
        One pass over the connections (no sort for the usual count of 1): a listener at its cap pays O(n)
        per admitted connection, not O(n log n)."""
        candidates = [
            connection for connection, (owner, host) in self._connections.items()
            if owner != "outbound" and (group is None or owner == group) and not connection.closed
            and connection.in_flight == 0 and (remote_host is None or host == remote_host)
        ]
        if count == 1 and candidates:
            chosen = [min(candidates, key=_idle_since)]
        else:
            chosen = sorted(candidates, key=_idle_since)[:count]
        for connection in chosen:
            connection.shutdown("shed: the listener is at its connection limit and this connection was idle longest")
        return len(chosen)

    async def run(self) -> None:
        """The watchdog: every TICK, close the connections past one of their deadlines."""
        while True:
            await trio.sleep(TICK)
            now = trio.current_time()
            self.heap.observe(len(self._connections), now)
            for connection in list(self._connections):
                reason = overdue(connection, now)
                if reason is None:
                    continue
                if connection.closed:  # closing, and its last bytes are not leaving: let it go
                    connection.transport.close()
                    continue
                log.info("connection.timeout", endpoint=connection.name, remote=connection.remote, reason=reason)
                trips.trip(trips.timeout_limit(reason))
                if reason.startswith("idle"):
                    connection.shutdown(reason)
                else:
                    connection.close(reason)


def overdue(connection: Connection, now: float) -> str | None:
    """Why `connection` is past one of its policy's deadlines, or None."""
    policy = connection.policy
    transport = connection.transport
    if transport.buffered and now - transport.last_progress > policy.write_timeout:
        return f"write timeout: the other side took none of {transport.buffered} queued bytes for {policy.write_timeout:g}s"
    if connection.closed:
        return None
    if not connection.preface_done and now - connection.opened_at > policy.preface_timeout:
        return f"preface timeout: no complete first frame within {policy.preface_timeout:g}s"
    partial = connection.partial_since
    if partial is not None and now - partial > policy.partial_frame_timeout:
        return f"partial-frame timeout: a frame begun {now - partial:.1f}s ago is still incomplete"
    rule = policy.idle_rule
    if rule is IdleRule.NO_CALLS:
        if connection.in_flight == 0 and now - connection.idle_since > policy.idle_timeout:
            return f"idle timeout: no call for {policy.idle_timeout:g}s"
    elif rule is IdleRule.NO_FRAMES:
        if now - connection.last_receive > policy.idle_timeout:
            return f"idle timeout: nothing received for {policy.idle_timeout:g}s"
    return None


def _idle_since(connection: Connection) -> float:
    return connection.idle_since if connection.preface_done else connection.opened_at


def _host_of(remote: str) -> str:
    host = remote.rpartition(":")[0]
    return host.strip("[]")
