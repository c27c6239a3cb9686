"""A capture of the interconnect, and the check that it carried nothing but TLS between the gateways.

`Capture` runs tcpdump on a network's bridge; `analyse_capture` reads the pcap file (`read_pcap`),
reassembles each direction of each TCP connection and checks that it is a sequence of TLS records
(`tls_problem`), gateway to gateway, to or from a peer port, and notes the SNI and ALPN of every
ClientHello (`client_hello`).
"""

from __future__ import annotations

import shutil
import signal
import socket
import struct
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from interlink.labnet.namespaces import LabError, Namespaces, _wait_for

TLS_CONTENT_TYPES = {20: "change_cipher_spec", 21: "alert", 22: "handshake", 23: "application_data"}
TLS_MAX_RECORD = 2**14 + 2048  # TLSCiphertext limit


@dataclass
class Segment:
    src: tuple[str, int]
    dst: tuple[str, int]
    seq: int
    syn: bool
    payload: bytes


@dataclass
class CaptureReport:
    """What crossed a network: the violations of "TLS only, gateway to gateway, peer port only", and a summary."""

    problems: list[str] = field(default_factory=list)
    connections: int = 0
    payload_bytes: int = 0
    client_hellos: list[tuple[str | None, tuple[str, ...]]] = field(default_factory=list)  # (SNI, ALPN offered)

    @property
    def alpn_seen(self) -> set[str]:
        return {protocol for _, offered in self.client_hellos for protocol in offered}


def read_pcap(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(ethertype, L3 bytes) of each Ethernet frame of a classic pcap file; a cut-off last record is skipped."""
    if len(data) < 24:
        return
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError("not a pcap file")
    (linktype,) = struct.unpack_from(endian + "I", data, 20)
    if linktype != 1:
        raise ValueError(f"pcap link type {linktype}, expected Ethernet (1)")
    offset = 24
    while offset + 16 <= len(data):
        _, _, included, _ = struct.unpack_from(endian + "IIII", data, offset)
        offset += 16
        frame = data[offset : offset + included]
        offset += included
        if len(frame) < included or len(frame) < 14:
            return
        (ethertype,) = struct.unpack_from("!H", frame, 12)
        yield ethertype, frame[14:]


def _tcp_segment(packet: bytes) -> Segment | str:
    """A TCP segment of an IPv4 packet, or a description of a packet that is not TCP."""
    version_ihl, _, total = packet[0], packet[1], struct.unpack_from("!H", packet, 2)[0]
    ihl = (version_ihl & 0x0F) * 4
    protocol = packet[9]
    src, dst = socket.inet_ntoa(packet[12:16]), socket.inet_ntoa(packet[16:20])
    if protocol != 6:
        return f"IPv4 protocol {protocol} {src} -> {dst}"
    tcp = packet[ihl:total]
    sport, dport, seq = struct.unpack_from("!HHI", tcp, 0)
    data_offset = (tcp[12] >> 4) * 4
    flags = tcp[13]
    return Segment((src, sport), (dst, dport), seq, bool(flags & 0x02), bytes(tcp[data_offset:]))


def _stream(segments: list[Segment]) -> bytes:
    """The in-order bytes of one direction of a connection, up to the first gap."""
    start = next((s.seq + 1 for s in segments if s.syn), None)
    data = [s for s in segments if s.payload]
    if not data:
        return b""
    if start is None:
        start = min(s.seq for s in data)
    out = bytearray()
    position = start
    for segment in sorted(data, key=lambda s: (s.seq - start) % 2**32):
        offset = (position - segment.seq) % 2**32
        if offset > 2**31:  # a gap before this segment: stop at what is known
            break
        out += segment.payload[offset:] if offset < len(segment.payload) else b""
        position = (start + len(out)) % 2**32
    return bytes(out)


def tls_problem(stream: bytes) -> str | None:
    """None if `stream` is a sequence of TLS records (the last may be cut off), else what is wrong."""
    offset = 0
    while offset + 5 <= len(stream):
        content_type, major, minor, length = (
            stream[offset],
            stream[offset + 1],
            stream[offset + 2],
            struct.unpack_from("!H", stream, offset + 3)[0],
        )
        if content_type not in TLS_CONTENT_TYPES or major != 3 or not 1 <= minor <= 4 or length > TLS_MAX_RECORD:
            return f"not a TLS record at byte {offset}: {stream[offset : offset + 16]!r}"
        offset += 5 + length
    if 0 < len(stream) - offset < 5 and stream[offset] not in TLS_CONTENT_TYPES:
        return f"not a TLS record at byte {offset}: {stream[offset:]!r}"
    return None


def client_hello(stream: bytes) -> tuple[str | None, tuple[str, ...]] | None:
    """(SNI, ALPN protocols offered) of the ClientHello that starts `stream`, or None."""
    try:
        if stream[0] != 22 or stream[5] != 1:
            return None
        body = stream[9 : 9 + int.from_bytes(stream[6:9], "big")]
        offset = 2 + 32  # client version, random
        offset += 1 + body[offset]  # session id
        offset += 2 + int.from_bytes(body[offset : offset + 2], "big")  # cipher suites
        offset += 1 + body[offset]  # compression methods
        end = offset + 2 + int.from_bytes(body[offset : offset + 2], "big")
        offset += 2
        sni, alpn = None, ()
        while offset + 4 <= end:
            kind, length = struct.unpack_from("!HH", body, offset)
            value = body[offset + 4 : offset + 4 + length]
            offset += 4 + length
            if kind == 0 and len(value) > 5:  # server_name: list length, type 0, name length, name
                sni = value[5 : 5 + int.from_bytes(value[3:5], "big")].decode("ascii", "replace")
            elif kind == 16:  # application_layer_protocol_negotiation
                names, at = [], 2
                while at < len(value):
                    names.append(value[at + 1 : at + 1 + value[at]].decode("ascii", "replace"))
                    at += 1 + value[at]
                alpn = tuple(names)
        return sni, alpn
    except (IndexError, struct.error):
        return None


def analyse_capture(
    data: bytes, gateways: Iterable[str], peer_ports: Iterable[int], ignore: Iterable[tuple[str, int]] = ()
) -> CaptureReport:
    """Check that a capture holds nothing but ARP and TLS between `gateways` to or from a `peer_port`.

    Connections with an endpoint in `ignore` (our own plaintext probes) are left out.
    """
    gateways, peer_ports, ignore = set(gateways), set(peer_ports), set(ignore)
    report = CaptureReport()
    flows: dict[tuple[tuple[str, int], tuple[str, int]], list[Segment]] = {}
    for ethertype, packet in read_pcap(data):
        if ethertype == 0x0806:  # ARP
            continue
        if ethertype != 0x0800:
            report.problems.append(f"ethertype 0x{ethertype:04x} (not IPv4 or ARP)")
            continue
        segment = _tcp_segment(packet)
        if isinstance(segment, str):
            report.problems.append(segment)
            continue
        if segment.src in ignore or segment.dst in ignore:
            continue
        if segment.src[0] not in gateways or segment.dst[0] not in gateways:
            report.problems.append(f"TCP {segment.src} -> {segment.dst}: not between gateways")
            continue
        if segment.src[1] not in peer_ports and segment.dst[1] not in peer_ports:
            report.problems.append(f"TCP {segment.src} -> {segment.dst}: not to or from a peer port")
            continue
        flows.setdefault((segment.src, segment.dst), []).append(segment)
    for (src, dst), segments in flows.items():
        stream = _stream(segments)
        report.payload_bytes += len(stream)
        problem = tls_problem(stream)
        if problem is not None:
            report.problems.append(f"{src[0]}:{src[1]} -> {dst[0]}:{dst[1]}: {problem}")
        if dst[1] in peer_ports and stream:  # client to server, and more than a refused SYN
            report.connections += 1
            hello = client_hello(stream)
            if hello is not None:
                report.client_hellos.append(hello)
    return report


class Capture:
    """tcpdump on a network's bridge, written to a pcap file until `stop()`."""

    def __init__(self, namespaces: Namespaces, network: str, path: Path) -> None:
        self.namespaces, self.network, self.path = namespaces, network, path
        self.process: subprocess.Popen | None = None
        self._err = path.with_suffix(".log")

    def start(self, timeout: float = 10.0) -> None:
        tcpdump = shutil.which("tcpdump")
        if tcpdump is None:
            raise LabError("tcpdump is not installed")
        with open(self.path, "wb") as out, open(self._err, "wb") as err:
            self.process = self.namespaces.spawn(
                self.network, [tcpdump, "-i", "br0", "-n", "-U", "-s", "0", "-w", "-"], stdout=out, stderr=err
            )
        _wait_for(self._err, lambda line: "listening on" in line, [self.process], timeout, "tcpdump")

    def snapshot(self) -> bytes:
        return self.path.read_bytes()

    def stop(self) -> bytes:
        if self.process is not None:
            Namespaces.stop(self.process, signal.SIGINT, timeout=5)
        return self.snapshot()
