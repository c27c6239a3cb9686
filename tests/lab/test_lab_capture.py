"""The interconnect check of the netns lab, on captures made up here (no root): what it accepts and refuses.

`analyse_capture` must accept real TLS between the gateways' peer ports, however TCP cut it up, and flag
anything else: plaintext on the peer port, another port, another host, another protocol. The ClientHellos
are real ones, made by Python's ssl module.
"""

from __future__ import annotations

import socket
import ssl
import struct

import pytest

from interlink.labnet import analyse_capture, classify_reply, client_hello, probe, tls_problem

GW_A, GW_B = "198.18.0.10", "198.18.0.20"
PEER_PORT = 8443


def hello_bytes(sni: str, alpn: list[str]) -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def tls_record(content_type: int, body: bytes) -> bytes:
    return bytes([content_type, 3, 3]) + struct.pack("!H", len(body)) + body


def frame(
    src: tuple[str, int], dst: tuple[str, int], seq: int, payload: bytes = b"", flags: int = 0x18, protocol: int = 6
) -> bytes:
    if protocol == 6:
        l4 = struct.pack("!HHIIBBHHH", src[1], dst[1], seq, 0, 5 << 4, flags, 65535, 0, 0) + payload
    else:
        l4 = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(l4),
        0,
        0,
        64,
        protocol,
        0,
        socket.inet_aton(src[0]),
        socket.inet_aton(dst[0]),
    )
    return b"\x02\x00\x00\x00\x00\x01" + b"\x02\x00\x00\x00\x00\x02" + b"\x08\x00" + ip + l4


def arp_frame() -> bytes:
    return b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x06" + bytes(28)


def pcap(*frames: bytes, cut: int = 0) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)
    for data in frames:
        out += struct.pack("<IIII", 0, 0, len(data), len(data)) + data
    return out[: len(out) - cut] if cut else out


def connection(
    payload_to_server: bytes, payload_to_client: bytes, client_port: int = 40000, split: int = 0
) -> list[bytes]:
    client, server = (GW_B, client_port), (GW_A, PEER_PORT)
    frames = [frame(client, server, 999, flags=0x02), frame(server, client, 4999, flags=0x12)]
    pieces = [payload_to_server[:split], payload_to_server[split:]] if split else [payload_to_server]
    seq = 1000
    for piece in reversed(pieces):  # out of order on purpose: reassembly sorts by sequence number
        offset = sum(len(p) for p in pieces[: pieces.index(piece)])
        frames.append(frame(client, server, seq + offset, piece))
    frames.append(frame(server, client, 5000, payload_to_client))
    return frames


def test_tls_between_the_gateways_passes_and_the_client_hello_is_read():
    hello = hello_bytes("site-b.gw.site-a.lab", ["bolt"])
    to_server = hello + tls_record(23, b"\x00" * 300)
    to_client = tls_record(22, b"\x02" + bytes(60)) + tls_record(23, b"\x01" * 40)
    report = analyse_capture(pcap(arp_frame(), *connection(to_server, to_client, split=7)), [GW_A, GW_B], [PEER_PORT])
    assert report.problems == []
    assert report.connections == 1 and report.payload_bytes == len(to_server) + len(to_client)
    assert report.client_hellos == [("site-b.gw.site-a.lab", ("bolt",))]
    assert client_hello(hello_bytes("x.lab", ["h2"])) == ("x.lab", ("h2",))


def test_a_capture_cut_in_the_middle_of_a_record_still_passes():
    to_server = hello_bytes("a.lab", ["h2"]) + tls_record(23, b"\x00" * 500)
    data = pcap(*connection(to_server, tls_record(22, bytes(10))))
    assert analyse_capture(data, [GW_A, GW_B], [PEER_PORT]).problems == []
    assert tls_problem(to_server[:-100]) is None  # the last record is incomplete, not wrong


def test_plaintext_h2c_on_the_peer_port_is_flagged():
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    report = analyse_capture(pcap(*connection(preface, b"")), [GW_A, GW_B], [PEER_PORT])
    assert len(report.problems) == 1 and "not a TLS record at byte 0" in report.problems[0]


def test_tls_followed_by_plaintext_is_flagged():
    stream = hello_bytes("a.lab", ["h2"]) + b"GET / HTTP/1.1\r\n\r\n"
    assert "not a TLS record" in tls_problem(stream)


def test_other_ports_hosts_and_protocols_are_flagged():
    frames = [
        frame((GW_B, 40001), (GW_A, 50051), 1, b"x"),  # not the peer port
        frame(("198.18.0.30", 40002), (GW_A, PEER_PORT), 1, b"x"),  # not a gateway
        frame((GW_B, 5353), (GW_A, 53), 0, b"q", protocol=17),  # UDP
    ]
    report = analyse_capture(pcap(*frames), [GW_A, GW_B], [PEER_PORT])
    assert len(report.problems) == 3, report.problems
    assert "not to or from a peer port" in report.problems[0]
    assert "not between gateways" in report.problems[1]
    assert "IPv4 protocol 17" in report.problems[2]


def test_probe_connections_are_left_out_and_a_cut_off_last_frame_is_ignored():
    probe_flow = connection(b"GET / HTTP/1.1\r\n\r\n", b"", client_port=41000)
    report = analyse_capture(pcap(*probe_flow, cut=10), [GW_A, GW_B], [PEER_PORT], ignore=[(GW_B, 41000)])
    assert report.problems == [] and report.connections == 0


def test_replies_to_plaintext_probes_are_classified():
    assert classify_reply({"connect": "connected", "reply": b"HTTP/1.1 400 Bad Request\r\n".hex()}) == "HTTP reply"
    assert classify_reply({"connect": "connected", "reply": "000000040000000000"}) == "h2 SETTINGS"
    assert classify_reply({"connect": "connected", "reply": "", "closed": True}) == "no HTTP"
    assert classify_reply({"connect": "connected", "reply": "15030300020232"}) == "no HTTP"  # a TLS alert
    assert classify_reply({"connect": "no route"}) == "no route"


def test_probe_tells_connected_from_refused():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        result = probe(f"127.0.0.1:{port}")
        assert result["connect"] == "connected" and result["local"][0] == "127.0.0.1"
    assert probe(f"127.0.0.1:{port}")["connect"] == "refused"
