"""interlink.net.transport: writes that never wait (the kernel takes what it can, the rest waits in the
backlog for the transport's own writer), reads that batch what is waiting, and how a closed or broken pipe
shows itself. TCP and TLS on 127.0.0.1; the in-memory pair where no socket is needed."""

from __future__ import annotations

import errno
import socket
import ssl
import struct

import pytest
import trio

from interlink.net import tls
from interlink.net.transport import (
    MAX_BATCH,
    READ_SIZE,
    SocketTransport,
    TransportClosed,
    describe_os_error,
    memory_transport_pair,
    remote_of,
    tls_handshake,
)

from tests.net.support import eventually

BIG = 8 << 20  # more than a loopback socket pair buffers: part of it must wait in the backlog


class Writer:
    """Starts the transport's writer task when a backlog begins (as Connection.run does), and counts it."""

    def __init__(self, transport, nursery: trio.Nursery) -> None:
        self.started = 0
        self.drained = 0
        transport.spawn_writer = self._spawn
        transport.on_drained = self._on_drained
        self._transport, self._nursery = transport, nursery

    def _spawn(self) -> None:
        self.started += 1
        self._nursery.start_soon(self._transport.run_writer)

    def _on_drained(self) -> None:
        self.drained += 1


async def read_exactly(transport, size: int) -> bytes:
    data = bytearray()
    with trio.fail_after(10):
        while len(data) < size:
            chunk = await transport.receive()
            assert chunk, "end of stream before all bytes arrived"
            data += chunk
    return bytes(data)


def reset_by_peer(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the other side gets an RST, not a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.fixture
async def pair(tcp_pair):
    """(ours, theirs): two SocketTransports connected over 127.0.0.1."""
    client, server = tcp_pair()
    return SocketTransport(server, "ours"), SocketTransport(client, "theirs")


# --- helpers of the module ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "text"),
    [
        (OSError(errno.ECONNRESET, "Connection reset by peer"), "connection reset by the remote side"),
        (OSError(errno.EPIPE, "Broken pipe"), "connection reset by the remote side"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "No route to host"),
        (OSError("just a message"), "just a message"),
        (OSError(), "OSError"),
    ],
)
def test_os_errors_are_described_in_words(error, text):
    assert describe_os_error(error) == text


def test_remote_of_names_the_other_end_and_brackets_ipv6(tcp_pair):
    client, server = tcp_pair()
    assert remote_of(client) == "127.0.0.1:%d" % server.getsockname()[1]
    class SixPeer:  # what an IPv6 socket's getpeername gives, whether or not this host has IPv6
        def getpeername(self):
            return ("::1", 8443, 0, 0)

    assert remote_of(SixPeer()) == "[::1]:8443"  # type: ignore[arg-type]
    client.close()
    assert remote_of(client) == "?"


# --- TCP -----------------------------------------------------------------------------------------------------


async def test_a_write_with_room_is_handed_over_at_once_without_a_writer_task(pair):
    ours, theirs = pair
    async with trio.open_nursery() as nursery:
        writer = Writer(ours, nursery)
        ours.write(b"hello")
        ours.write(b"")  # nothing to send: nothing happens
        assert ours.buffered == 0 and writer.started == 0
        assert await read_exactly(theirs, 5) == b"hello"
    assert ours.remote == theirs.socket.getsockname()[0] + ":%d" % theirs.socket.getsockname()[1]


async def test_what_the_kernel_does_not_take_waits_in_the_backlog_and_one_writer_sends_it(pair):
    ours, theirs = pair
    payload = bytes(range(256)) * (BIG // 256)
    async with trio.open_nursery() as nursery:
        writer = Writer(ours, nursery)
        ours.write(payload[: BIG // 2])
        ours.write(payload[BIG // 2:])  # queued behind the backlog, in order
        assert 0 < ours.buffered <= BIG and writer.started == 1
        assert await read_exactly(theirs, BIG) == payload
        await eventually(lambda: writer.drained)
        assert ours.buffered == 0 and writer.started == 1 and not ours.closed


async def test_close_when_drained_closes_after_the_backlog_is_sent(pair):
    ours, theirs = pair
    async with trio.open_nursery() as nursery:
        writer = Writer(ours, nursery)
        ours.write(b"x" * BIG)
        ours.close_when_drained()
        assert not ours.closed
        assert len(await read_exactly(theirs, BIG)) == BIG
        with trio.fail_after(5):
            assert await theirs.receive() == b""  # then the end of the stream
        assert ours.closed and writer.drained == 0  # closing replaced the drained callback


async def test_close_when_drained_without_backlog_closes_at_once(pair):
    ours, _ = pair
    ours.close_when_drained()
    assert ours.closed and ours.error == ""


async def test_closing_stops_a_writer_waiting_for_room_and_drops_the_backlog(pair):
    ours, _ = pair
    async with trio.open_nursery() as nursery:
        writer = Writer(ours, nursery)
        ours.write(b"x" * BIG)
        await trio.sleep(0.01)  # the writer waits for the socket to become writable
        ours.close()
        ours.close()  # twice is harmless
        assert ours.buffered == 0
    assert writer.drained == 0 and ours._writing is False  # noqa: SLF001 - a later backlog may start a writer again


async def test_receive_returns_empty_bytes_at_the_end_of_the_stream(pair):
    ours, theirs = pair
    theirs.write(b"last")
    theirs.close()
    assert await read_exactly(ours, 4) == b"last"
    with trio.fail_after(5):
        assert await ours.receive() == b""


async def test_receive_on_a_closed_transport_raises_transport_closed(pair):
    ours, _ = pair
    ours.close()
    with pytest.raises(TransportClosed, match="closed"):
        await ours.receive()


async def test_closing_wakes_a_reader_that_waits(pair):
    ours, _ = pair
    async with trio.open_nursery() as nursery:
        raised: list[Exception] = []

        async def reader() -> None:
            try:
                await ours.receive()
            except TransportClosed as exc:
                raised.append(exc)

        nursery.start_soon(reader)
        await trio.sleep(0.01)
        ours.close()
    assert len(raised) == 1


async def test_a_reset_breaks_the_transport_with_the_reason_for_readers(pair):
    ours, theirs = pair
    reset_by_peer(theirs.socket)
    with trio.fail_after(5), pytest.raises(TransportClosed, match="connection reset by the remote side"):
        while True:
            await ours.receive()
    assert ours.closed and ours.error == "connection reset by the remote side"


async def test_a_reset_breaks_the_transport_with_the_reason_for_writers(pair):
    ours, theirs = pair
    reset_by_peer(theirs.socket)
    with trio.fail_after(5):
        while not ours.closed:  # the RST may take a moment to arrive
            ours.write(b"x")
            await trio.sleep(0.005)
    assert ours.error == "send failed: connection reset by the remote side"


async def test_a_reset_while_the_backlog_is_sent_breaks_the_transport(pair):
    ours, theirs = pair
    async with trio.open_nursery() as nursery:
        Writer(ours, nursery)
        ours.write(b"x" * BIG)
        await trio.sleep(0.01)
        reset_by_peer(theirs.socket)
        await eventually(lambda: ours.closed)
    assert ours.error.startswith("send failed")


async def test_drain_sends_the_backlog_before_a_writer_task_exists(pair):
    ours, theirs = pair
    ours.write(b"y" * BIG)  # no spawn_writer yet (as during a TLS handshake)
    assert ours.buffered
    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_exactly, theirs, BIG)
        with trio.fail_after(10):
            await ours.drain()
        assert ours.buffered == 0


async def test_drain_on_a_reset_connection_raises_transport_closed(pair):
    ours, theirs = pair
    ours.write(b"y" * BIG)
    reset_by_peer(theirs.socket)
    with trio.fail_after(5), pytest.raises(TransportClosed, match="send failed"):
        await ours.drain()


async def test_a_read_takes_more_than_one_buffer_when_more_is_waiting(tcp_pair):
    client, server = tcp_pair()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    ours = SocketTransport(server)
    size = 3 * READ_SIZE
    client.sendall(b"z" * size)
    await eventually(lambda: len(server.recv(size, socket.MSG_PEEK)) == size)
    first = await ours.receive()
    assert READ_SIZE < len(first) <= MAX_BATCH  # one receive, several reads of the socket
    assert first + await read_exactly(ours, size - len(first)) == b"z" * size


# --- TLS -----------------------------------------------------------------------------------------------------


@pytest.fixture
async def tls_pair(site_certs, tcp_pair):
    """(ours, theirs): TlsTransports after a real mTLS handshake (site-a serves, site-b dials)."""
    a, b = site_certs["site-a"], site_certs["site-b"]
    server = tls.peer_server_tls(a.cert, a.key, {"site-b": b.ca}, {"b.test": "site-b"})
    client = tls.peer_client_tls(b.cert, b.key, a.ca)
    client_sock, server_sock = tcp_pair()
    done: dict[str, object] = {}

    async def handshake(name, sock, context, server_hostname=None):
        done[name] = await tls_handshake(sock, context, server_side=server_hostname is None,
                                         server_hostname=server_hostname)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(handshake, "ours", server_sock, server.default)
            nursery.start_soon(handshake, "theirs", client_sock, client, "b.test")
    return done["ours"], done["theirs"]


async def test_tls_carries_bytes_both_ways_and_big_writes_go_through_the_backlog(tls_pair):
    ours, theirs = tls_pair
    async with trio.open_nursery() as nursery:
        writer = Writer(theirs, nursery)
        theirs.write(b"q" * BIG)
        assert writer.started == 1
        assert await read_exactly(ours, BIG) == b"q" * BIG
        await eventually(lambda: writer.drained)


async def test_a_tls_read_batch_is_bounded(tls_pair):
    ours, theirs = tls_pair
    ours.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    async with trio.open_nursery() as nursery:
        Writer(theirs, nursery)
        theirs.write(b"m" * (3 * MAX_BATCH))
        await eventually(lambda: theirs.buffered == 0)
    sizes = []
    with trio.fail_after(10):
        while sum(sizes) < 3 * MAX_BATCH:
            sizes.append(len(await ours.receive()))
    assert max(sizes) <= MAX_BATCH + READ_SIZE and sum(sizes) == 3 * MAX_BATCH


async def test_tls_close_notify_delivers_what_came_before_it_then_the_end(tls_pair):
    ours, theirs = tls_pair
    theirs.write(b"last words")
    with pytest.raises(ssl.SSLWantReadError):
        theirs.ssl_object.unwrap()  # queues close_notify; would wait for ours
    theirs._push_outgoing()  # noqa: SLF001 - hand the close_notify to the socket
    with trio.fail_after(5):
        assert await ours.receive() == b"last words"
        assert await ours.receive() == b""


async def test_tls_close_notify_on_an_open_socket_reads_as_the_end_at_once_and_after(tls_pair):
    ours, theirs = tls_pair
    with pytest.raises(ssl.SSLWantReadError):
        theirs.ssl_object.unwrap()
    theirs._push_outgoing()  # noqa: SLF001 - the close_notify alone; the socket stays open (no FIN)
    with trio.fail_after(5):
        assert await ours.receive() == b""
        assert await ours.receive() == b""  # not a wait for bytes that will never come


class _CountingReads:
    """An SSLObject whose reads are counted, and the SSLWantReadErrors they raise."""

    def __init__(self, ssl_object):
        self._ssl_object = ssl_object
        self.reads = self.want_read = 0

    def read(self, size):
        self.reads += 1
        try:
            return self._ssl_object.read(size)
        except ssl.SSLWantReadError:
            self.want_read += 1
            raise

    def __getattr__(self, name):
        return getattr(self._ssl_object, name)


async def test_a_tls_receive_reads_openssl_only_when_it_has_bytes(tls_pair):
    """One read per record that arrived, none to find out that there is nothing: a read with nothing to
    decrypt raises SSLWantReadError, whose message OpenSSL formats (~1 µs, twice per batch otherwise)."""
    ours, theirs = tls_pair
    counting = ours.ssl_object = _CountingReads(ours.ssl_object)
    with trio.fail_after(5):
        for round_ in range(3):
            theirs.write(b"a" * 100)
            theirs.write(b"b" * 100)  # two records, likely one segment
            got = b""
            while len(got) < 200:
                got += await ours.receive()
            assert got == b"a" * 100 + b"b" * 100, round_
    assert counting.want_read == 0 and counting.reads >= 6


async def test_tls_end_of_stream_without_close_notify_reads_as_the_end(tls_pair):
    ours, theirs = tls_pair
    theirs.socket.shutdown(socket.SHUT_WR)  # a FIN, no close_notify
    with trio.fail_after(5):
        assert await ours.receive() == b""


async def test_a_corrupt_tls_record_breaks_the_transport_with_the_tls_reason(tls_pair):
    ours, theirs = tls_pair
    theirs.socket.send(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)  # application data that does not decrypt
    with trio.fail_after(5), pytest.raises(TransportClosed, match="TLS error"):
        await ours.receive()
    assert ours.closed and ours.error.startswith("TLS error")


async def test_a_tls_write_after_shutdown_breaks_the_transport(tls_pair):
    ours, theirs = tls_pair
    with pytest.raises(ssl.SSLWantReadError):
        theirs.ssl_object.unwrap()
    theirs.write(b"after close_notify")
    assert theirs.closed and theirs.error.startswith("TLS error")
    theirs.write(b"ignored")  # a closed transport ignores writes
    ours.close()


async def test_verified_chain_falls_back_to_the_leaf_when_openssl_gives_no_chain(tls_pair):
    ours, theirs = tls_pair
    leaf = ours.getpeercert(binary_form=True)

    class Session:  # what an SSLObject without get_verified_chain looks like
        _sslobj = object()

        @staticmethod
        def getpeercert(binary_form: bool = False):
            return leaf

    ours.ssl_object = Session()
    assert ours.verified_chain() == (leaf,)
    theirs.close()


# --- in memory -----------------------------------------------------------------------------------------------


async def test_closing_a_memory_end_frees_the_writer_of_the_other_end_whose_bytes_vanish():
    """As with a socket whose peer is gone: the writer is not left waiting for room that never comes."""
    a, b = memory_transport_pair(capacity=100)
    async with trio.open_nursery() as nursery:
        writer = Writer(a, nursery)
        a.write(b"w" * 1000)
        await trio.sleep(0.01)  # a's writer waits for b to read
        assert a.buffered == 900
        b.close()
        await eventually(lambda: writer.drained)
    assert a.buffered == 0 and not a.closed
    assert await a.receive() == b""  # a sees the end of the stream
    a.write(b"more")  # and what it writes now vanishes too
    assert a.buffered == 0
