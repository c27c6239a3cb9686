"""tests/ports.py: free ports below the ephemeral range, so that no outgoing connection takes them."""

from __future__ import annotations

import socket

from tests import ports


def test_ports_are_free_below_the_ephemeral_range_and_never_handed_twice():
    picked = [ports.free_port() for _ in range(50)]
    assert len(set(picked)) == len(picked)
    assert all(1024 <= port < ports._ephemeral_low() for port in picked)  # noqa: SLF001
    for port in picked[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_taken_port_is_never_picked(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        tries = iter([port, port, port + 1, port + 2, port + 3])  # the taken one first, twice

        class Draws:
            @staticmethod
            def randint(low, high):
                return next(tries)

        monkeypatch.setattr(ports, "_random", Draws)
        monkeypatch.setattr(ports, "_LOW", port)
        monkeypatch.setattr(ports, "_HIGH", port + 1000)
        picked = ports.free_port()
    assert picked != port and port < picked <= port + 3


def test_udp_ports_are_free_for_both_or_udp_alone():
    both = ports.free_port(udp=True)
    udp_only = ports.free_port(tcp=False, udp=True)
    for port, kinds in ((both, (socket.SOCK_STREAM, socket.SOCK_DGRAM)), (udp_only, (socket.SOCK_DGRAM,))):
        for kind in kinds:
            with socket.socket(socket.AF_INET, kind) as s:
                s.bind(("127.0.0.1", port))
