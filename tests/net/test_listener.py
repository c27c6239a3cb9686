"""Listener: connection caps with shedding of the longest-idle connection, and an accept loop that outlives
EMFILE. Real sockets on loopback (the listener's job is sockets)."""

from __future__ import annotations

import errno
import os
import resource
import socket

import pytest
import structlog
import trio

from interlink.net import listener as listener_module

from interlink.net.connection import Connection, ConnectionTable, FlushQueue
from interlink.net.listener import Listener, bind, raise_fd_limit
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


# --- binding, the fd limit, failures while accepting or serving ----------------------------------------------


def test_bind_names_the_address_it_cannot_listen_on(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}: ") as caught:
            bind("127.0.0.1", port)
    assert caught.value.errno == errno.EADDRINUSE


def test_bind_brackets_an_ipv6_address_in_its_error(monkeypatch):
    """Whether or not this host has IPv6: the socket is replaced by one whose bind fails as a taken port's."""

    class TakenPort(socket.socket):
        def bind(self, address):
            raise OSError(errno.EADDRINUSE, "Address already in use")

    monkeypatch.setattr(listener_module.socket, "socket", lambda family, kind: TakenPort(socket.AF_INET, kind))
    with pytest.raises(OSError, match=r"cannot listen on \[::1\]:8443: Address already in use") as caught:
        bind("::1", 8443)
    assert caught.value.errno == errno.EADDRINUSE


def test_two_listeners_may_share_a_port_with_reuse_port():
    first = bind("127.0.0.1", 0, reuse_port=True)
    with first, bind("127.0.0.1", first.getsockname()[1], reuse_port=True) as second:
        assert second.getsockname() == first.getsockname() and not second.getblocking()


@pytest.mark.parametrize(
    ("soft", "hard", "expected"),
    [(1024, 4096, 4096), (4096, 4096, 4096), (1024, resource.RLIM_INFINITY, 1 << 20)],
    ids=["below-hard", "at-hard", "unlimited"],
)
def test_raise_fd_limit_raises_the_soft_limit_to_the_hard_one(monkeypatch, soft, hard, expected):
    set_to: list[tuple[int, int]] = []
    monkeypatch.setattr(listener_module.resource, "getrlimit", lambda kind: (soft, hard))
    monkeypatch.setattr(listener_module.resource, "setrlimit", lambda kind, limits: set_to.append(limits))
    assert raise_fd_limit() == expected
    assert set_to == ([] if soft == hard else [(expected, hard)])


def test_raise_fd_limit_keeps_the_soft_limit_when_it_may_not_be_raised(monkeypatch):
    def refuse(kind, limits):
        raise ValueError("not allowed")

    monkeypatch.setattr(listener_module.resource, "getrlimit", lambda kind: (1024, 4096))
    monkeypatch.setattr(listener_module.resource, "setrlimit", refuse)
    assert raise_fd_limit() == 1024


class FlakySocket(ExhaustedSocket):
    """A listening socket whose accept() fails `failures` times with `code` (a caller that gave up)."""

    def __init__(self, sock: socket.socket, failures: int, code: int) -> None:
        super().__init__(sock, failures)
        self.code = code

    def accept(self):
        if self.failures:
            self.failures -= 1
            raise OSError(self.code, os.strerror(self.code))
        return self._sock.accept()


async def test_an_aborted_connection_while_accepting_does_not_stop_the_next_one():
    table, queue = ConnectionTable(), FlushQueue()
    sock = FlakySocket(bind("127.0.0.1", 0), failures=0, code=errno.ECONNABORTED)
    listener = Listener("triple", sock, table, max_connections=10, max_per_source=10)
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listener.serve, handler_for(table, queue, calls=0), nursery)
            sock.failures = 3
            client = socket.create_connection(("127.0.0.1", listener.address[1]))
            with trio.fail_after(5):
                while len(table) < 1:
                    await trio.sleep(0.01)
            assert sock.failures == 0 and listener.active == 1
            client.close()
            nursery.cancel_scope.cancel()
    assert not [e for e in logs if e["event"] == "listener.accept_failed"]  # not an out-of-room episode


async def test_the_process_wide_cap_sheds_an_idle_connection_of_any_listener():
    table, queue = ConnectionTable(max_total=1), FlushQueue()
    listener = Listener("triple", bind("127.0.0.1", 0), table, max_connections=10, max_per_source=10)
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listener.serve, handler_for(table, queue, calls=0), nursery)
            first = socket.create_connection(("127.0.0.1", listener.address[1]))
            await trio.sleep(0.05)
            second = socket.create_connection(("127.0.0.1", listener.address[1]))
            assert await trio.to_thread.run_sync(closed_by_server, first)
            for client in (first, second):
                client.close()
            nursery.cancel_scope.cancel()
    assert any(e["event"] == "listener.shed" and "file-descriptor limit" in e["reason"] for e in logs)


async def test_a_handler_that_crashes_ends_its_connection_only_and_frees_its_place():
    table = ConnectionTable()
    listener = Listener("triple", bind("127.0.0.1", 0), table, max_connections=10, max_per_source=10)
    served = 0

    async def handle(sock: socket.socket) -> None:
        nonlocal served
        served += 1
        if served == 1:
            await trio.sleep_forever()  # the first connection stays, so the source count goes to 2 and back
        raise RuntimeError("bug while serving")

    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listener.serve, handle, nursery)
            staying = socket.create_connection(("127.0.0.1", listener.address[1]))
            with trio.fail_after(5):
                while served != 1:
                    await trio.sleep(0.01)
            crashing = socket.create_connection(("127.0.0.1", listener.address[1]))
            assert await trio.to_thread.run_sync(closed_by_server, crashing)
            with trio.fail_after(5):
                while listener.active != 1:
                    await trio.sleep(0.01)
            assert listener._by_source == {"127.0.0.1": 1}  # noqa: SLF001
            for client in (staying, crashing):
                client.close()
            nursery.cancel_scope.cancel()
    assert [e["event"] for e in logs].count("connection.crashed") == 1
    assert listener.active == 0 and listener._by_source == {}  # noqa: SLF001
