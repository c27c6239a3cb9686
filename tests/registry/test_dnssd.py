"""DNS-SD naming vectors, records and the embedded responder + browse client on loopback."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator

import dns.asyncquery
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from registry_adapters.dnssd import (
    EmbeddedResponder,
    browse,
    browse_name,
    host_name,
    instance_name,
    records_for,
    service_domain,
    service_type,
)
from registry_adapters.model import Instance, InstanceSet, ServiceKey

ZONE = "site-a.interlink.test"
ECHO = ServiceKey("com.example.EchoService")
T = dns.rdatatype.RdataType

# --------------------------------------------------------------------------- naming vectors


def test_model_meta_not_identity() -> None:
    a = Instance("127.0.0.1", 1, meta={"x": "1"})
    b = Instance("127.0.0.1", 1, meta={"x": "2"})
    assert a == b and hash(a) == hash(b)
    assert InstanceSet(ECHO, frozenset({a}), "1", False).instances == frozenset({b})


def test_service_domain_example() -> None:
    assert service_domain(ECHO, ZONE).to_text() == "com.example.echoservice.svc.site-a.interlink.test."


def test_service_domain_unique_id() -> None:
    key = ServiceKey("com.example.EchoService", unique_id="Blue")
    assert service_domain(key, ZONE).to_text() == "com.example.echoservice.uid-blue.svc." + ZONE + "."


@pytest.mark.parametrize(
    "interface",
    ["com.example." + "A" * 64, ".".join(["pkg"] * 70), "com..Empty"],
)
def test_service_domain_hashed_fallback(interface: str) -> None:
    name = service_domain(ServiceKey(interface), ZONE)
    first = name.labels[0].decode()
    assert first.startswith("h-") and len(first) == 2 + 26
    assert set(first[2:]) <= set("abcdefghijklmnopqrstuvwxyz234567")
    assert name.labels[1:] == dns.name.from_text("svc." + ZONE).labels
    assert service_domain(ServiceKey(interface), ZONE) == name  # deterministic
    assert service_domain(ServiceKey(interface + "x"), ZONE) != name


def test_service_type() -> None:
    assert service_type("bolt").to_text() == "_bolt._tcp"
    assert service_type("tri").to_text() == "_tri._tcp"
    with pytest.raises(ValueError):
        service_type("http")


def test_instance_name_escapes_one_label() -> None:
    name = instance_name(ECHO, ZONE, "127.0.0.1:8080")
    assert name.labels[0] == b"127.0.0.1:8080"
    assert name.to_text() == (
        r"127\.0\.0\.1:8080._bolt._tcp.com.example.echoservice.svc.site-a.interlink.test."
    )
    assert dns.name.from_text(name.to_text()) == name  # round trip through text
    assert instance_name(ServiceKey("a.B", protocol="tri"), ZONE, "gw-1").to_text() == (
        "gw-1._tri._tcp.a.b.svc.site-a.interlink.test."
    )
    with pytest.raises(ValueError):
        instance_name(ECHO, ZONE, "x" * 64)


def test_host_name() -> None:
    assert host_name("127.0.0.1", ZONE).to_text() == "ip-127-0-0-1.hosts.site-a.interlink.test."
    assert host_name("::1", ZONE).labels[0].startswith(b"ip6-")


def test_records_for() -> None:
    inst = Instance("127.0.0.1", 12200, weight=7, meta={"serialization": "hessian2"})
    records = records_for(ECHO, inst, ZONE, "127.0.0.1:12200", site="site-a")
    by_type = {(r.name.to_text(), r.rdtype): r for r in records}
    iname = instance_name(ECHO, ZONE, "127.0.0.1:12200")
    domain = "com.example.echoservice.svc.site-a.interlink.test."
    assert [r.rdtype for r in records] == [T.PTR, T.SRV, T.TXT, T.A, T.PTR]
    assert by_type[("_bolt._tcp." + domain, T.PTR)].text == iname.to_text()
    srv = by_type[(iname.to_text(), T.SRV)]
    assert (srv.ttl, srv.text) == (10, "0 7 12200 ip-127-0-0-1.hosts.site-a.interlink.test.")
    txt = by_type[(iname.to_text(), T.TXT)]
    assert txt.ttl == 10
    assert txt.text == (
        '"txtvers=1" "interface=com.example.EchoService" "uniqueId=" "version=1.0" "group=SOFA"'
        ' "protocol=bolt" "serialization=hessian2" "site=site-a" "gw=site-a"'
    )
    a = by_type[("ip-127-0-0-1.hosts.site-a.interlink.test.", T.A)]
    assert (a.ttl, a.text) == (300, "127.0.0.1")
    enum = by_type[("_services._dns-sd._udp." + domain, T.PTR)]
    assert enum.text == "_bolt._tcp." + domain
    no_site = records_for(ECHO, Instance("127.0.0.1", 1), ZONE, "x")[2].text
    assert "site=" not in no_site and "gw=" not in no_site
    with pytest.raises(ValueError):
        records_for(ECHO, Instance("127.0.0.1", 1, meta={"interface": "x"}), ZONE, "x")


# --------------------------------------------------------------------------- responder


@pytest.fixture
async def responder() -> AsyncIterator[tuple[EmbeddedResponder, tuple[str, int]]]:
    server = EmbeddedResponder(ZONE, tcp_read_timeout=1.0)
    async with trio.open_nursery() as nursery:
        addr = await nursery.start(server.run)
        yield server, addr
        nursery.cancel_scope.cancel()


async def ask(
    addr: tuple[str, int], name: str | dns.name.Name, rdtype: T, *, tcp: bool = False
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    if tcp:
        return await dns.asyncquery.tcp(query, addr[0], timeout=2, port=addr[1])
    return await dns.asyncquery.udp(query, addr[0], timeout=2, port=addr[1])


def soa_serial(response: dns.message.Message) -> int:
    (rrset,) = [r for r in response.answer if r.rdtype == T.SOA]
    return int(next(iter(rrset)).serial)


def endpoint(i: int) -> tuple[Instance, str]:
    inst = Instance("127.0.0.1", 20000 + i, weight=10 + i, meta={"appName": f"app{i}"})
    return inst, f"127.0.0.1:{20000 + i}"


async def test_publish_browse_unpublish(responder: tuple[EmbeddedResponder, tuple[str, int]]) -> None:
    server, addr = responder
    serials = [soa_serial(await ask(addr, ZONE, T.SOA))]
    published = [endpoint(i) for i in range(3)]
    for inst, label in published:
        server.publish(ECHO, inst, label)
        serials.append(soa_serial(await ask(addr, ZONE, T.SOA)))
    found = await browse(addr, ECHO, ZONE)
    assert found == frozenset(inst for inst, _ in published)
    by_port = {i.port: i for i in found}
    for inst, _ in published:
        assert by_port[inst.port].weight == inst.weight
        assert by_port[inst.port].host == "127.0.0.1"
        assert dict(by_port[inst.port].meta) == dict(inst.meta)

    server.unpublish(ECHO, published[1][1])
    serials.append(soa_serial(await ask(addr, ZONE, T.SOA, tcp=True)))
    assert await browse(addr, ECHO, ZONE) == frozenset({published[0][0], published[2][0]})
    assert serials == sorted(set(serials)) and len(serials) == 5
    assert server.serial == serials[-1]

    server.unpublish(ECHO, "no-such-label")  # no change, no bump
    assert server.serial == serials[-1]
    server.unpublish(ECHO, published[0][1])
    server.unpublish(ECHO, published[2][1])
    assert await browse(addr, ECHO, ZONE) == frozenset()
    # enumeration PTR and host A went with the last instance
    assert (await ask(addr, "ip-127-0-0-1.hosts." + ZONE, T.A)).rcode() == dns.rcode.NXDOMAIN


async def test_site_marker_and_srv_additional(
    responder: tuple[EmbeddedResponder, tuple[str, int]],
) -> None:
    server, addr = responder
    inst, label = endpoint(0)
    server.publish(ECHO, inst, label, site="site-a")
    (found,) = await browse(addr, ECHO, ZONE)
    assert found.meta["gw"] == "site-a" and found.meta["site"] == "site-a"
    srv = await ask(addr, instance_name(ECHO, ZONE, label), T.SRV)
    assert srv.flags & dns.flags.AA
    assert [(r.name, r.rdtype) for r in srv.additional] == [(host_name("127.0.0.1", ZONE), T.A)]
    enum = await ask(addr, "_services._dns-sd._udp." + service_domain(ECHO, ZONE).to_text(), T.PTR)
    assert [rd.target for rd in enum.answer[0]] == [browse_name(ECHO, ZONE)]


async def test_negative_answers(responder: tuple[EmbeddedResponder, tuple[str, int]]) -> None:
    server, addr = responder
    inst, label = endpoint(0)
    server.publish(ECHO, inst, label)

    nx = await ask(addr, "nope." + ZONE, T.A)
    assert nx.rcode() == dns.rcode.NXDOMAIN and nx.flags & dns.flags.AA
    assert not nx.answer and [r.rdtype for r in nx.authority] == [T.SOA]

    iname = instance_name(ECHO, ZONE, label)
    nodata = await ask(addr, iname, T.A)
    assert nodata.rcode() == dns.rcode.NOERROR and nodata.flags & dns.flags.AA
    assert not nodata.answer and [r.rdtype for r in nodata.authority] == [T.SOA]

    # an empty non-terminal exists: NODATA, not NXDOMAIN
    ent = await ask(addr, "svc." + ZONE, T.A)
    assert ent.rcode() == dns.rcode.NOERROR and not ent.answer

    refused = await ask(addr, "example.org", T.A)
    assert refused.rcode() == dns.rcode.REFUSED and not refused.flags & dns.flags.AA
    refused_tcp = await ask(addr, "example.org", T.SOA, tcp=True)
    assert refused_tcp.rcode() == dns.rcode.REFUSED


async def test_large_ptr_set_truncates_and_browse_uses_tcp(
    responder: tuple[EmbeddedResponder, tuple[str, int]],
) -> None:
    server, addr = responder
    published = [endpoint(i) for i in range(60)]
    for inst, label in published:
        server.publish(ECHO, inst, label)
    stype = browse_name(ECHO, ZONE)
    udp = await ask(addr, stype, T.PTR)
    assert udp.flags & dns.flags.TC and not udp.answer
    edns = dns.message.make_query(stype, T.PTR, use_edns=0, payload=1232)
    udp_edns = await dns.asyncquery.udp(edns, addr[0], timeout=2, port=addr[1])
    assert udp_edns.flags & dns.flags.TC
    big = dns.message.make_query(stype, T.PTR, use_edns=0, payload=8192)
    udp_big = await dns.asyncquery.udp(big, addr[0], timeout=2, port=addr[1])
    assert not udp_big.flags & dns.flags.TC and len(udp_big.answer[0]) == 60
    tcp = await ask(addr, stype, T.PTR, tcp=True)
    assert len(tcp.answer[0]) == 60
    assert await browse(addr, ECHO, ZONE) == frozenset(inst for inst, _ in published)


async def test_garbage_does_not_stop_responder(
    responder: tuple[EmbeddedResponder, tuple[str, int]],
) -> None:
    server, addr = responder
    udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with udp:
        await udp.sendto(b"\x00garbage\xff" * 3, addr)
        await udp.sendto(b"", addr)
        await udp.sendto(b"\x12", addr)
    # framed garbage: the connection is closed at once
    stream = await trio.open_tcp_stream(*addr)
    async with stream:
        await stream.send_all(struct.pack("!H", 9) + b"xxxxxxxxx")
        with trio.fail_after(0.5):
            assert await stream.receive_some(100) == b""
    # unframed junk and a peer stopping mid-message: closed after the read timeout
    for payload in (b"\xff" * 1000, b"\x00\x40abc"):
        stream = await trio.open_tcp_stream(*addr)
        async with stream:
            await stream.send_all(payload)
            with trio.fail_after(3):
                assert await stream.receive_some(100) == b""
    assert (await ask(addr, ZONE, T.SOA)).rcode() == dns.rcode.NOERROR
    assert (await ask(addr, ZONE, T.SOA, tcp=True)).rcode() == dns.rcode.NOERROR
    assert server.serial == 1


async def test_idle_tcp_connection_times_out(
    responder: tuple[EmbeddedResponder, tuple[str, int]],
) -> None:
    _, addr = responder
    stream = await trio.open_tcp_stream(*addr)
    async with stream:
        with trio.fail_after(3):
            assert await stream.receive_some(100) == b""


async def test_interfaces_differing_in_case_kept_apart(
    responder: tuple[EmbeddedResponder, tuple[str, int]],
) -> None:
    server, addr = responder
    upper = ServiceKey("com.example.EchoService")
    lower = ServiceKey("com.example.echoservice")
    assert service_domain(upper, ZONE) == service_domain(lower, ZONE)  # one DNS name
    server.publish(upper, Instance("127.0.0.1", 1001), "127.0.0.1:1001")
    server.publish(lower, Instance("127.0.0.1", 1002), "127.0.0.1:1002")
    assert await browse(addr, upper, ZONE) == frozenset({Instance("127.0.0.1", 1001)})
    assert await browse(addr, lower, ZONE) == frozenset({Instance("127.0.0.1", 1002)})


async def test_unique_id_services_are_separate(
    responder: tuple[EmbeddedResponder, tuple[str, int]],
) -> None:
    server, addr = responder
    blue = ServiceKey("com.example.EchoService", unique_id="blue")
    server.publish(ECHO, Instance("127.0.0.1", 1), "a")
    server.publish(blue, Instance("127.0.0.1", 2), "a")
    assert await browse(addr, blue, ZONE) == frozenset({Instance("127.0.0.1", 2)})
    assert await browse(addr, ECHO, ZONE) == frozenset({Instance("127.0.0.1", 1)})
    server.publish(ECHO, Instance("127.0.0.1", 3), "a")  # republish same label replaces
    assert await browse(addr, ECHO, ZONE) == frozenset({Instance("127.0.0.1", 3)})


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600) | st.binary(min_size=12, max_size=12).map(lambda h: h + b"\x00" * 8))
def test_respond_never_raises(wire: bytes) -> None:
    server = EmbeddedResponder(ZONE)
    server.publish(ECHO, Instance("127.0.0.1", 1), "a")
    for over_tcp in (False, True):
        reply = server.respond(wire, over_tcp=over_tcp)
        assert reply is None or dns.message.from_wire(reply).flags & dns.flags.QR


async def test_tcp_connections_are_bounded() -> None:
    server = EmbeddedResponder(ZONE, max_tcp_connections=2, tcp_read_timeout=0.5)
    async with trio.open_nursery() as nursery:
        addr = await nursery.start(server.run)
        idle = [await trio.open_tcp_stream(*addr) for _ in range(2)]
        await trio.sleep(0.1)
        start = trio.current_time()
        # the third connection is served only once an idle one times out
        assert (await ask(addr, ZONE, T.SOA, tcp=True)).rcode() == dns.rcode.NOERROR
        assert trio.current_time() - start >= 0.3
        for stream in idle:
            await stream.aclose()
        nursery.cancel_scope.cancel()
