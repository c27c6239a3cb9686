"""The byte pipes under every connection: TCP and TLS on non-blocking sockets, and an in-memory pair for tests.

Why not trio's streams: a relay's reader writes to *other* connections (a provider's answers go to the
peer link, the link's to the callers). With `await stream.send_all()` the reader waits whenever one of
those sockets is full, so one caller that does not read stalls everyone behind the same reader. Here
`write()` is synchronous and never waits: it hands the bytes to the kernel at once (`socket.send` on the
non-blocking socket, one system call, no task switch), and whatever the kernel does not take goes to this
transport's backlog, which its own writer task (`run_writer`, started by the owner's `spawn_writer` when a
backlog begins and ending when it is sent) sends as the socket becomes writable. So:

- the common case (the socket has room) costs one `send` and no wake-up at all;
- a full socket stalls only its own backlog; `buffered` tells producers to pause (HTTP/2 flow control and
  Bolt reading stop feeding a congested connection), `last_progress` tells the watchdog how long the other
  side has taken nothing (write timeout), and `on_drained` resumes the producers;
- TLS runs on memory BIOs (`ssl.SSLObject`): encryption is synchronous too, ciphertext takes the same path.

`receive()` reads what is there (up to `MAX_BATCH` when more keeps coming), so that a read batch sees a
request and its reset together; it raises `TransportClosed` when the transport was closed or broke, and
returns b"" at end of stream.
"""

from __future__ import annotations

import errno
import socket
import ssl
from typing import Callable

import trio

try:
    from _ssl import ENCODING_DER as _DER
except ImportError:  # pragma: no cover - every CPython has it
    _DER = 2

READ_SIZE = 256 * 1024
MAX_BATCH = 1024 * 1024  # at most this much is read in one go when the socket keeps delivering

# One read buffer for every socket of the process (trio runs one task at a time, and a read is copied out
# before the next await): a read allocates only the bytes it got, never a READ_SIZE block per read, so
# reading big does not churn the allocator (and what it frees can go back to the system).
_READ_BUFFER = bytearray(READ_SIZE)
_READ_VIEW = memoryview(_READ_BUFFER)


class TransportClosed(Exception):
    """The transport was closed (by us) or broke; the message says why."""


class TlsHandshakeError(Exception):
    """The TLS handshake failed; the message is OpenSSL's reason (e.g. CERTIFICATE_VERIFY_FAILED).
    `ssl_object` is the failed session (its `context` tells which SNI context was chosen)."""

    def __init__(self, reason: str, ssl_object: ssl.SSLObject | None = None) -> None:
        super().__init__(reason)
        self.ssl_object = ssl_object


def describe_os_error(exc: OSError) -> str:
    if exc.errno in (errno.ECONNRESET, errno.EPIPE):
        return "connection reset by the remote side"
    return exc.strerror or str(exc) or type(exc).__name__


class Transport:
    """Bookkeeping shared by every transport: the backlog of bytes the other side has not taken yet."""

    __slots__ = (
        "name", "closed", "error", "last_progress", "on_drained", "remote", "_backlog", "spawn_writer",
        "_writing", "_close_when_drained"
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False
        self.error = ""  # why the transport broke ("" after a plain close)
        self.last_progress = trio.current_time()  # the other side last took bytes (or the backlog began)
        self.on_drained: Callable[[], None] | None = None  # the backlog has just been sent whole
        self.remote = ""
        self._backlog = bytearray()
        self.spawn_writer: Callable[[], None] | None = None  # starts run_writer (set by the connection's reader)
        self._writing = False
        self._close_when_drained = False

    @property
    def buffered(self) -> int:
        """Bytes accepted by `write` that the other side has not taken yet."""
        return len(self._backlog)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Hand `data` to the other side now, as far as it takes it; the rest waits in the backlog."""
        if self.closed or not data:
            return
        if self._backlog:
            self._queue(data)
            return
        taken = self._send_now(data)
        if 0 <= taken < len(data):
            self._queue(memoryview(data)[taken:])

    def _send_now(self, data: bytes | bytearray | memoryview) -> int:
        """What the other side takes of `data` without waiting (-1: the transport broke)."""
        raise NotImplementedError

    async def receive(self) -> bytes:
        raise NotImplementedError

    async def run_writer(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def close_when_drained(self) -> None:
        """Close once the backlog is sent (at once when there is none)."""
        if not self._backlog:
            self.close()
        else:
            self._close_when_drained = True

    def _broken(self, reason: str) -> None:
        if not self.closed:
            self.error = reason
            self.close()

    def _queue(self, data: bytes | bytearray | memoryview) -> None:
        if not self._backlog:
            self.last_progress = trio.current_time()  # the write timeout counts from here
        self._backlog += data
        if not self._writing and self.spawn_writer is not None:
            self._writing = True  # a task only while there is a backlog: most connections never need one
            self.spawn_writer()

    def _drained(self) -> None:
        if self._close_when_drained:
            self.close()
        elif self.on_drained is not None:
            self.on_drained()


def remote_of(sock: socket.socket) -> str:
    """`host:port` of the other end ("?" when the socket is already gone)."""
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class SocketTransport(Transport):
    """TCP on a non-blocking socket."""

    __slots__ = ("socket", "_emptied")

    def __init__(self, sock: socket.socket, name: str = "") -> None:
        super().__init__(name)
        sock.setblocking(False)
        self.socket = sock
        self.remote = remote_of(sock)
        self._emptied = False  # the last read took all there was: the next one waits for readability first

    # --- writing --------------------------------------------------------------------------------------

    def _send_now(self, data: bytes | bytearray | memoryview) -> int:
        try:
            return self.socket.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            self._broken(f"send failed: {describe_os_error(exc)}")
            return -1

    async def run_writer(self) -> None:
        """Send the backlog as the socket takes it; ends when it is sent (or the transport closed)."""
        sock = self.socket
        try:
            while self._backlog and not self.closed:
                try:
                    await trio.lowlevel.wait_writable(sock)
                except (trio.ClosedResourceError, OSError):
                    return
                try:
                    sent = sock.send(self._backlog)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    self._broken(f"send failed: {describe_os_error(exc)}")
                    return
                del self._backlog[:sent]
                self.last_progress = trio.current_time()
        finally:
            self._writing = False
        if not self.closed:
            self._drained()

    async def drain(self) -> None:
        """Wait until the backlog is sent (used before the writer task runs: TLS handshakes)."""
        while self._backlog and not self.closed:
            await trio.lowlevel.wait_writable(self.socket)
            try:
                sent = self.socket.send(self._backlog)
            except BlockingIOError:
                continue
            except OSError as exc:
                self._broken(f"send failed: {describe_os_error(exc)}")
                raise TransportClosed(self.error) from None
            del self._backlog[:sent]
            self.last_progress = trio.current_time()

    # --- reading --------------------------------------------------------------------------------------

    async def _receive_raw(self) -> bytes:
        sock = self.socket
        waited = False
        while True:
            if self.closed:
                raise TransportClosed(self.error or "closed")
            if self._emptied:
                # The last read took everything the socket held, so a recv now would almost always fail
                # (EAGAIN): wait until there is something first. (One system call and one exception less
                # per read; data that is already there wakes the wait at once.)
                try:
                    await trio.lowlevel.wait_readable(sock)
                except (trio.ClosedResourceError, OSError):
                    raise TransportClosed(self.error or "closed") from None
                waited = True
                self._emptied = False
            try:
                size = sock.recv_into(_READ_VIEW)
            except BlockingIOError:
                self._emptied = True
                continue
            except OSError as exc:
                self._broken(describe_os_error(exc))
                raise TransportClosed(self.error) from None
            data = _READ_VIEW[:size].tobytes()
            if size == READ_SIZE:
                data = self._read_more(data)
            else:
                self._emptied = True
            if not waited:
                # Yield once per read even when data was waiting: a busy connection must not starve the
                # others. (A read that waited has yielded already: a second yield would be a second wake-up.)
                await trio.lowlevel.checkpoint()
            return data

    receive = _receive_raw  # TCP reads are the raw reads (TLS decrypts them: TlsTransport.receive)

    def _read_more(self, first: bytes) -> bytes:
        """More of what is already waiting, up to MAX_BATCH, without waiting."""
        chunks = [first]
        total = len(first)
        while total < MAX_BATCH:
            try:
                size = self.socket.recv_into(_READ_VIEW)
            except (BlockingIOError, OSError):
                break  # nothing more now; a real error shows on the next receive
            if not size:
                break  # end of stream: the next receive returns b""
            chunks.append(_READ_VIEW[:size].tobytes())
            total += size
            if size < READ_SIZE:
                break
        return b"".join(chunks)

    # --- ending ---------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close now (the backlog is dropped); wakes a reader or writer waiting on the socket."""
        if self.closed:
            return
        self.closed = True
        self._backlog.clear()
        if self.socket.fileno() != -1:
            trio.lowlevel.notify_closing(self.socket)
        self.socket.close()


class TlsTransport(SocketTransport):
    """TLS on memory BIOs over a non-blocking socket. Build one with `tls_handshake`."""

    __slots__ = ("ssl_object", "_incoming", "_outgoing", "_close_notified")

    def __init__(self, sock: socket.socket, ssl_object: ssl.SSLObject, incoming: ssl.MemoryBIO,
                 outgoing: ssl.MemoryBIO, name: str = "") -> None:
        super().__init__(sock, name)
        self.ssl_object = ssl_object
        self._incoming = incoming
        self._outgoing = outgoing
        self._close_notified = False  # the remote's close_notify was read: every later read is the end

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed or not data:
            return
        view = memoryview(data)
        try:
            while view:
                written = self.ssl_object.write(view)
                view = view[written:]
        except ssl.SSLError as exc:
            self._broken(f"TLS error: {exc.reason or exc}")
            return
        self._push_outgoing()

    def _push_outgoing(self) -> None:
        if self._outgoing.pending:
            SocketTransport.write(self, self._outgoing.read())

    async def receive(self) -> bytes:
        # OpenSSL is read only when it has bytes to decrypt (in the incoming BIO or its own buffer): a read with
        # none raises SSLWantReadError, with a message OpenSSL formats (~1.1 µs), at the start and at the end of
        # every batch.
        chunks: list[bytes] = []
        total = 0
        ssl_object, incoming = self.ssl_object, self._incoming
        while not self._close_notified:
            if incoming.pending or ssl_object.pending():
                try:
                    chunk = ssl_object.read(READ_SIZE)
                except ssl.SSLWantReadError:  # a record not complete yet, or TLS messages without data
                    chunk = None
                except ssl.SSLZeroReturnError:
                    chunk = b""
                except ssl.SSLError as exc:
                    self._broken(f"TLS error: {exc.reason or exc}")
                    raise TransportClosed(self.error) from None
                if chunk == b"":  # close_notify (CPython reads it as b""): what came before it, then b"" for good
                    self._close_notified = True
                    break
                if chunk is not None:
                    chunks.append(chunk)
                    total += len(chunk)
                    if total >= MAX_BATCH:
                        break
                    continue
            if chunks:
                break  # all that arrived is read
            raw = await self._receive_raw()
            if not raw:
                return b""  # end of stream (with or without close_notify)
            incoming.write(raw)
        self._push_outgoing()  # post-handshake messages (key updates) the read produced
        return b"".join(chunks) if len(chunks) != 1 else chunks[0]

    # what the gateway asks of a TLS connection after the handshake
    @property
    def context(self) -> ssl.SSLContext:
        return self.ssl_object.context

    def selected_alpn_protocol(self) -> str | None:
        return self.ssl_object.selected_alpn_protocol()

    def getpeercert(self, binary_form: bool = True) -> bytes | None:
        return self.ssl_object.getpeercert(binary_form=binary_form)  # type: ignore[return-value]

    def version(self) -> str | None:
        return self.ssl_object.version()

    def verified_chain(self) -> tuple[bytes, ...]:
        """The peer's certificate chain as OpenSSL verified it (leaf first, trust anchor last), DER. Kept per
        connection so that a reload can tell which live connections a new trust bundle no longer covers.
        (Public in Python 3.13 as SSLObject.get_verified_chain; the same method of the C object before.)"""
        getter = getattr(self.ssl_object, "get_verified_chain", None) or getattr(
            self.ssl_object._sslobj, "get_verified_chain", None  # noqa: SLF001
        )
        if getter is None:
            leaf = self.getpeercert(binary_form=True)
            return (leaf,) if leaf else ()
        return tuple(certificate.public_bytes(_DER) for certificate in getter() or ())


async def tls_handshake(
    sock: socket.socket, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None,
    name: str = "",
) -> TlsTransport:
    """A TLS handshake on `sock`; the caller bounds it in time. Raises TlsHandshakeError or TransportClosed."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    ssl_object = context.wrap_bio(incoming, outgoing, server_side=server_side, server_hostname=server_hostname)
    transport = TlsTransport(sock, ssl_object, incoming, outgoing, name)
    try:
        while True:
            try:
                ssl_object.do_handshake()
                break
            except ssl.SSLWantReadError:
                transport._push_outgoing()
                await transport.drain()
                raw = await transport._receive_raw()
                if not raw:
                    raise TransportClosed("the other side closed the connection during the TLS handshake") from None
                incoming.write(raw)
            except ssl.SSLError as exc:
                transport._push_outgoing()  # the alert, so the other side learns why
                try:
                    transport.socket.send(transport._backlog)
                except OSError:
                    pass
                detail = getattr(exc, "verify_message", None) or exc.reason or str(exc)
                raise TlsHandshakeError(detail, ssl_object) from None
        transport._push_outgoing()
        await transport.drain()
    except BaseException:
        transport.close()
        raise
    return transport


# --- in memory, for tests ---------------------------------------------------------------------------------


class MemoryTransport(Transport):
    """One end of an in-memory pipe (`memory_transport_pair`) whose other end takes at most `capacity`
    unread bytes, like a socket buffer: beyond that, writes go to the backlog until the other end reads."""

    __slots__ = ("capacity", "other", "_inbound", "_readable", "_eof", "_space")

    def __init__(self, name: str, capacity: int) -> None:
        super().__init__(name)
        self.capacity = capacity
        self.other: MemoryTransport | None = None
        self._inbound = bytearray()
        self._readable = trio.Event()
        self._eof = False
        self._space: trio.Event | None = None

    def _send_now(self, data: bytes | bytearray | memoryview) -> int:
        other = self.other
        if other is None or other.closed:
            return len(data)  # like a socket whose peer is gone: the bytes vanish
        room = max(0, other.capacity - len(other._inbound))
        taken = min(room, len(data))
        if taken:
            other._inbound += data[:taken]
            other._readable.set()
        return taken

    async def run_writer(self) -> None:
        try:
            while self._backlog and not self.closed:
                taken = self._send_now(self._backlog)
                if taken:
                    del self._backlog[:taken]
                    self.last_progress = trio.current_time()
                else:
                    assert self.other is not None
                    await self.other._space_freed()
        finally:
            self._writing = False
        if not self.closed:
            self._drained()

    async def _space_freed(self) -> None:
        self._space = trio.Event()
        await self._space.wait()

    async def receive(self) -> bytes:
        waited = False
        while not self._inbound:
            if self.closed:
                raise TransportClosed(self.error or "closed")
            if self._eof:
                return b""
            self._readable = trio.Event()
            await self._readable.wait()
            waited = True
        data = bytes(self._inbound)
        self._inbound.clear()
        if self._space is not None:
            self._space.set()
        if not waited:  # yield once per read, as SocketTransport does
            await trio.lowlevel.checkpoint()
        return data

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._backlog.clear()
        self._readable.set()
        if self._space is not None:
            self._space.set()
        other = self.other
        if other is not None:
            other._eof = True
            other._readable.set()
            if other._space is not None:
                other._space.set()


def memory_transport_pair(capacity: int = 256 * 1024) -> tuple[MemoryTransport, MemoryTransport]:
    """Two connected in-memory transports, each end buffering at most `capacity` unread bytes."""
    a, b = MemoryTransport("memory-a", capacity), MemoryTransport("memory-b", capacity)
    a.other, b.other = b, a
    a.remote, b.remote = "memory:b", "memory:a"
    return a, b
