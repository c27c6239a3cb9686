"""Free ports for the servers and gateways the tests start, picked below the kernel's ephemeral port range.

Binding port 0 finds a port that is free now in the ephemeral range (net.ipv4.ip_local_port_range,
32768-60999 by default), the range every outgoing connection also takes its local port from. Between that
check and the server's own bind, a connection of another process (a gateway dialling ZooKeeper, a Java
server's own clients, a DNS query) can take the port, and the server fails to start with EADDRINUSE: seen in
CI, a gateway that exited at start because its peer port had been taken. Ports below the ephemeral range are
never handed to connections: they are picked at random from the 12,000 below it, checked free, and not handed
out twice by one test process.
"""

from __future__ import annotations

import random
import socket

_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
_SPAN = 12_000
_TRIES = 200

_handed: set[int] = set()  # this process's picks: the first may not be bound yet when the next is asked for
_random = random.Random()


def _ephemeral_low() -> int:
    try:
        with open(_RANGE_FILE) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


_HIGH = _ephemeral_low() - 1
_LOW = max(1024, _HIGH - _SPAN)


def free_port(host: str = "127.0.0.1", *, tcp: bool = True, udp: bool = False) -> int:
    """A port free on `host` now for TCP (and UDP with `udp`, or UDP alone with `tcp=False`), below the
    ephemeral range; from the ephemeral range (port 0) only if that has no room (a custom range starting
    below 2048) or none of its tries was free."""
    if _HIGH - _LOW >= 1000:
        for _ in range(_TRIES):
            port = _random.randint(_LOW, _HIGH)
            if port not in _handed and _is_free(host, port, tcp=tcp, udp=udp):
                _handed.add(port)
                return port
    for _ in range(_TRIES):
        port = _bound_by_the_kernel(host, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
        if port not in _handed and _is_free(host, port, tcp=tcp, udp=udp):
            _handed.add(port)
            return port
    raise RuntimeError(f"no free port on {host}")


def _is_free(host: str, port: int, *, tcp: bool, udp: bool) -> bool:
    kinds = ([socket.SOCK_STREAM] if tcp else []) + ([socket.SOCK_DGRAM] if udp else [])
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def _bound_by_the_kernel(host: str, kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
