"""Attacks on what issue 13 added: the admin port (a flood of connections, heads that never end, garbage)
and the metrics (callers choosing service and method names to grow them). Legit gRPC and Bolt traffic runs
through both gateways meanwhile; the contract is the hostile tests' usual one (scenario.Run.verdict)."""

from __future__ import annotations

import re
import socket
import threading
import time
import urllib.error
import urllib.request

import grpc
import pytest

from tests.hostile.probes import MIB, fd_count, wait_until

QUICK = pytest.param("quick", id="quick")
FULL = pytest.param("full", id="full", marks=pytest.mark.slow)
ADMIN_READ_TIMEOUT = 10.0  # interlink/control/admin.py AdminServer's default
ADMIN_MAX_CONNECTIONS = 64


def admin_port(gateway) -> int:
    return gateway.port("admin")


def get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.mark.parametrize("size", [QUICK, FULL])
def test_admin_port_flood_slow_heads_and_garbage(hostile, size):
    """Hundreds of connections that send half a request head a byte at a time, or garbage, or nothing: the
    admin endpoint keeps at most its cap, ends each within its read timeout, answers again once they are
    gone, and the gateway's calls never notice."""
    count = 200 if size == "quick" else 1000
    port = admin_port(hostile.sites.b)
    run = hostile.begin()
    socks: list[socket.socket] = []
    stop = threading.Event()
    ended = [0]

    def dribble() -> None:
        head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 64
        position = 0
        while not stop.is_set() and position < len(head):
            for sock in list(socks):
                try:
                    sock.send(head[position : position + 1])
                except OSError:
                    socks.remove(sock)
                    ended[0] += 1
            position += 1
            stop.wait(0.5)

    with run.attack():
        for index in range(count):
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=2)
            except OSError:
                continue
            if index % 4 == 0:
                sock.send(b"\x16\x03\x01\x02\x00" + b"\x00" * 200 + b"\r\n\r\n")  # garbage: a TLS hello
            socks.append(sock)
        thread = threading.Thread(target=dribble, daemon=True)
        thread.start()
        time.sleep(3.0)
        open_at_gateway = _established(hostile.sites.b.pid, port)
        run.note("admin connections opened / held by the gateway", f"{count} / {open_at_gateway}")
        run.expect(open_at_gateway <= ADMIN_MAX_CONNECTIONS,
                   f"the admin endpoint holds {open_at_gateway} connections (cap {ADMIN_MAX_CONNECTIONS})")
        # every held one ends within the read timeout (plus slack), although it keeps sending
        gone = wait_until(lambda: _established(hostile.sites.b.pid, port) == 0, ADMIN_READ_TIMEOUT + 5)
        run.expect(bool(gone), "attack connections to the admin port outlived the read timeout")
        stop.set()
        thread.join(5)
    for sock in socks:
        sock.close()
    before = run.window.fds0.get("GW-B") or 0
    back = wait_until(lambda: (fd_count(hostile.sites.b.pid) or 0) <= before + 2, 5.0)  # lingering closes: ≤ 1 s
    run.expect(bool(back), f"GW-B holds {fd_count(hostile.sites.b.pid)} fds after the attack (before: {before})")
    run.settle()
    status, body = get(port, "/healthz")
    run.expect(status == 200 and body == b"ok\n", f"/healthz after the attack: {status} {body[:80]!r}")
    status, body = get(port, "/metrics")
    run.expect(status == 200 and b"interlink_calls_total" in body, f"/metrics after the attack: {status}")
    run.expect_legit()
    run.expect_rss()
    run.expect_healthy()
    run.verdict()


@pytest.mark.parametrize("size", [QUICK, FULL])
def test_callers_cannot_grow_the_metrics_with_names(hostile, size):
    """Calls with thousands of distinct method names (to an imported service: they cross to the provider
    site) and service names (refused at GW-B): every call is counted, the series are not."""
    count = 2000 if size == "quick" else 20_000
    run = hostile.begin()
    errors: dict[str, int] = {}
    with run.attack(), grpc.insecure_channel(hostile.sites.triple_target) as channel:
        for index in range(count):
            service = "com.example.EchoService" if index % 2 else f"evil.Service{index}"
            call = channel.unary_unary(f"/{service}/m{index}", request_serializer=None, response_deserializer=None)
            try:
                call(b"", timeout=5, metadata=(("tri-consumer-appname", "order-app"),))
            except grpc.RpcError as error:
                errors[error.code().name] = errors.get(error.code().name, 0) + 1
    run.settle()
    run.note("distinct names sent / refusals", f"{count} / {errors}")
    for gateway in (hostile.sites.b, hostile.sites.a):
        status, body = get(admin_port(gateway), "/metrics")
        text = body.decode()
        series = len(re.findall(r"^interlink_calls_total\{", text, re.M))
        counted = sum(float(value) for value in re.findall(r"^interlink_calls_total\{[^}]*\} (\S+)", text, re.M))
        run.note(f"{gateway.name} /metrics", f"{len(body)} bytes, {series} interlink_calls_total series, {counted:.0f} calls")
        run.expect(status == 200, f"{gateway.name} /metrics: {status}")
        run.expect(series <= 200, f"{gateway.name}: {series} series of interlink_calls_total (callers chose the names)")
        run.expect(len(body) < 1 * MIB, f"{gateway.name}: /metrics is {len(body)} bytes")
        if gateway is hostile.sites.b:
            run.expect(counted >= count, f"GW-B counted {counted:.0f} calls of the {count} sent (and the legit ones)")
    run.expect_legit()
    run.expect_rss()
    run.expect_healthy()
    run.verdict()


def _established(pid: int, port: int) -> int:
    """Connections to `port` the gateway process holds (its sockets whose local port is `port`)."""
    from tests.hostile.probes import socket_inodes, tcp_table

    inodes = socket_inodes(pid)
    return sum(1 for entry in tcp_table() if entry.local_port == port and entry.inode in inodes and entry.state == "ESTABLISHED")
