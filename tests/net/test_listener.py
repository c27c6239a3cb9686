"""Listener: connection caps with shedding of the longest-idle connection, and an accept loop that outlives
EMFILE. Real sockets on loopback (the listener's job is sockets)."""

from __future__ import annotations

import errno
import socket

import structlog
import trio

from interlink.net.connection import Connection, ConnectionTable, FlushQueue
from interlink.net.listener import Listener, bind
from interlink.net.transport import SocketTransport


class Held(Connection):
    """A connection that only sits there (idle, or busy when `calls` is set)."""

    def __init__(self, transport, queue, calls: int) -> None:
        super().__init__(transport, queue, "held")
        self.calls = calls
        self.preface_done = True

    @property
    def in_flight(self) -> int:
        return self.calls

    def _pending_output(self) -> bytes:
        return b""

    def _received(self, data: bytes) -> None:
        pass

    def _send_probe(self) -> None:
        pass

    def _fail_open_calls(self, reason: str) -> None:
        pass


def handler_for(table: ConnectionTable, queue: FlushQueue, calls: int):
    async def handle(sock: socket.socket) -> None:
        connection = Held(SocketTransport(sock), queue, calls)
        table.add(connection, "triple")
        try:
            await connection.run()
        finally:
            table.discard(connection)

    return handle


def closed_by_server(client: socket.socket) -> bool:
    client.settimeout(2)
    try:
        return client.recv(1) == b""
    except (ConnectionResetError, TimeoutError):
        return False


async def test_a_full_listener_sheds_its_longest_idle_connection_for_a_new_one():
    table, queue = ConnectionTable(), FlushQueue()
    listener = Listener("triple", bind("127.0.0.1", 0), table, max_connections=2, max_per_source=100)
    port = listener.address[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listener.serve, handler_for(table, queue, calls=0), nursery)
        first = socket.create_connection(("127.0.0.1", port))
        await trio.sleep(0.05)
        second = socket.create_connection(("127.0.0.1", port))
        await trio.sleep(0.05)
        third = socket.create_connection(("127.0.0.1", port))
        await trio.sleep(0.1)
        assert await trio.to_thread.run_sync(closed_by_server, first)  # idle longest: shed
        assert len(table) == 2
        for client in (first, second, third):
            client.close()
        nursery.cancel_scope.cancel()


async def test_a_listener_full_of_busy_connections_refuses_the_next_one():
    table, queue = ConnectionTable(), FlushQueue()
    listener = Listener("triple", bind("127.0.0.1", 0), table, max_connections=2, max_per_source=100)
    port = listener.address[1]
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listener.serve, handler_for(table, queue, calls=1), nursery)
            busy = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
            await trio.sleep(0.1)
            late = socket.create_connection(("127.0.0.1", port))
            assert await trio.to_thread.run_sync(closed_by_server, late)
            assert len(table) == 2 and listener.active == 2
            for client in busy + [late]:
                client.close()
            nursery.cancel_scope.cancel()
    assert any(e["event"] == "listener.refused" and "max_connections" in e["reason"] for e in logs)


async def test_the_per_source_cap_counts_each_address_alone():
    table, queue = ConnectionTable(), FlushQueue()
    listener = Listener("triple", bind("127.0.0.1", 0), table, max_connections=100, max_per_source=1)
    port = listener.address[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listener.serve, handler_for(table, queue, calls=1), nursery)
        first = socket.create_connection(("127.0.0.1", port))
        await trio.sleep(0.05)
        again = socket.create_connection(("127.0.0.1", port))  # same source, busy first: refused
        other = socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0))
        await trio.sleep(0.1)
        assert await trio.to_thread.run_sync(closed_by_server, again)
        assert len(table) == 2
        for client in (first, again, other):
            client.close()
        nursery.cancel_scope.cancel()


class ExhaustedSocket:
    """A listening socket whose accept() fails with EMFILE `failures` times (the process is out of fds)."""

    def __init__(self, sock: socket.socket, failures: int) -> None:
        self._sock = sock
        self.failures = failures

    def accept(self):
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return self._sock.accept()

    def __getattr__(self, name):
        return getattr(self._sock, name)


async def test_emfile_sheds_idle_connections_and_logs_once_not_a_traceback_per_attempt():
    table, queue = ConnectionTable(), FlushQueue()
    sock = ExhaustedSocket(bind("127.0.0.1", 0), failures=0)
    port = sock.getsockname()[1]
    listener = Listener("triple", sock, table, max_connections=100, max_per_source=100)
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listener.serve, handler_for(table, queue, calls=0), nursery)
            idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
            await trio.sleep(0.1)
            sock.failures = 5
            newcomer = socket.create_connection(("127.0.0.1", port))
            with trio.fail_after(5):
                while sock.failures:
                    await trio.sleep(0.02)
            await trio.sleep(0.3)
            # the idle ones were shed to make room; the newcomer is served
            assert all([await trio.to_thread.run_sync(closed_by_server, client) for client in idle])
            for client in idle + [newcomer]:
                client.close()
            nursery.cancel_scope.cancel()
    failures = [e for e in logs if e["event"] == "listener.accept_failed"]
    assert len(failures) == 1 and failures[0]["shed_idle_connections"] >= 1
    assert not any(e.get("exc_info") for e in logs)
