"""Listening sockets that keep serving whatever their callers do.

- A cap on the connections of each listener and of each source address. A new connection beyond a cap
  takes the place of the connection that has been idle longest (no call in flight), if there is one;
  otherwise it is closed at once. A listener full of idle connections therefore never locks new callers out.
- An accept loop that outlives the process's file-descriptor limit: on EMFILE/ENFILE (or ENOBUFS/ENOMEM) it
  sheds the longest-idle connections, backs off briefly and goes on, with one log event per episode
  (`listener.accept_failed`, with counts), never a traceback per attempt.
- Accepted sockets are non-blocking with TCP_NODELAY; the handler gets the plain socket and owns it.
"""

from __future__ import annotations

import errno
import resource
import socket
from typing import Awaitable, Callable

import structlog
import trio

from interlink.net.connection import ConnectionTable
from interlink.net import trips

log = structlog.get_logger("interlink.net.listener")

ACCEPT_BATCH = 64  # connections accepted per wake-up, so one busy listener does not starve the rest
BACKLOG = 1024
LOG_EVERY = 10.0  # seconds: refusals and accept failures are summed up in one event at most this often
_OUT_OF_ROOM = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_SHED_ON_EMFILE = 16
FD_RESERVE = 64  # descriptors kept for upstream connections, registries, logs, when capping by the fd limit

Handler = Callable[[socket.socket], Awaitable[None]]


def raise_fd_limit() -> int:
    """Raise the soft file-descriptor limit to the hard one (as Go and nginx's worker_rlimit_nofile do);
    returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise OSError(exc.errno, f"cannot listen on {where}: {exc.strerror}") from exc
    return sock


class _Tally:
    """Counts of one kind of trouble, logged at most every LOG_EVERY seconds."""

    def __init__(self, event: str, listener: str) -> None:
        self.event = event
        self.listener = listener
        self.count = 0
        self.total = 0
        self._last = -LOG_EVERY

    def add(self, **fields: object) -> None:
        self.count += 1
        self.total += 1
        now = trio.current_time()
        if now - self._last >= LOG_EVERY:
            log.warning(self.event, listener=self.listener, count=self.count, total=self.total, **fields)
            self._last = now
            self.count = 0


class Listener:
    """One listening socket, its caps, and the accept loop (`serve`)."""

    def __init__(self, name: str, sock: socket.socket, table: ConnectionTable, *, max_connections: int,
                 max_per_source: int) -> None:
        self.name = name
        self.socket = sock
        self.table = table
        self.max_connections = max_connections
        self.max_per_source = max_per_source
        self.active = 0
        self._by_source: dict[str, int] = {}
        self._refused = _Tally("listener.refused", name)
        self._shed = _Tally("listener.shed", name)
        self._accept_failed = _Tally("listener.accept_failed", name)

    @property
    def address(self) -> tuple[str, int]:
        return self.socket.getsockname()[:2]

    async def serve(self, handler: Handler, nursery: trio.Nursery) -> None:
        """Accept until cancelled; each connection runs `handler` in `nursery` (the gateway's, so that
        closing the listener on drain does not cut calls in flight)."""
        sock = self.socket
        try:
            while True:
                await trio.lowlevel.wait_readable(sock)
                for _ in range(ACCEPT_BATCH):
                    try:
                        conn, address = sock.accept()
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        if exc.errno in _OUT_OF_ROOM:
                            await self._out_of_room(exc)
                            break
                        continue  # ECONNABORTED and friends: that one caller is gone, the next may not be
                    self._admit(conn, address[0], handler, nursery)
                await trio.lowlevel.checkpoint()
        finally:
            if sock.fileno() != -1:
                trio.lowlevel.notify_closing(sock)
            sock.close()

    async def _out_of_room(self, exc: OSError) -> None:
        shed = self.table.shed_idle(_SHED_ON_EMFILE)
        self._accept_failed.add(error=exc.strerror or str(exc), shed_idle_connections=shed,
                                connections=len(self.table))
        await trio.sleep(0.02 if shed else 0.25)

    def _admit(self, conn: socket.socket, host: str, handler: Handler, nursery: trio.Nursery) -> None:
        full = None
        if self.active >= self.max_connections:
            full, shed = f"the listener has {self.active} connections (limits.max_connections {self.max_connections})", \
                self.table.shed_idle(1, group=self.name)
        elif self._by_source.get(host, 0) >= self.max_per_source:
            full, shed = (f"{host} has {self._by_source[host]} connections (limits.max_connections_per_source "
                          f"{self.max_per_source})"), self.table.shed_idle(1, group=self.name, remote_host=host)
        elif len(self.table) >= self.table.max_total:
            full, shed = (f"the process has {len(self.table)} connections, as many as its file-descriptor limit "
                          "allows"), self.table.shed_idle(1)
        if full is not None:
            if not shed:  # every connection is busy: the newcomer is the one turned away
                self._refused.add(reason=full, remote=host)
                trips.trip(trips.CONNECTION_CAP)
                conn.close()
                return
            self._shed.add(reason=f"{full}: the longest-idle connection made room")
            trips.trip(trips.CONNECTION_SHED)
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not TCP (tests), or already reset
        conn.setblocking(False)
        self.active += 1
        self._by_source[host] = self._by_source.get(host, 0) + 1
        nursery.start_soon(self._run, conn, host, handler)

    async def _run(self, conn: socket.socket, host: str, handler: Handler) -> None:
        try:
            await handler(conn)
        except Exception:  # a bug while serving one connection ends that connection, never the gateway
            log.exception("connection.crashed", listener=self.name, remote=host)
        finally:
            if conn.fileno() != -1:
                trio.lowlevel.notify_closing(conn)
                conn.close()
            self.active -= 1
            left = self._by_source[host] - 1
            if left:
                self._by_source[host] = left
            else:
                del self._by_source[host]
