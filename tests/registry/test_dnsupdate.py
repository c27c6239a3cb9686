"""The external DNS registry (RFC 2136 + TSIG) against a real BIND9 on loopback (tests/servers/bind9.py).

What is checked with plain dnspython queries, not with the adapter's own reader: the records a publication
consists of (names, rdata and TTL as `dnssd.records_for` says, the same as the embedded responder serves),
withdrawal, the removal of a crashed run's records at the next start (and of nothing else), re-assertion.
The subscription side: first set, changes by polling and by NOTIFY, the loop guard, malformed entries,
stale/fresh across a server stop and restart, TTL-bounded caching; and errors that say what is wrong.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import dns.asyncquery
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdatatype
import dns.tsig
import dns.update
import pytest
import structlog
import trio

from registry_adapters import dnsupdate
from registry_adapters.base import GATEWAY_MARK, RegistryError, without_gateways
from registry_adapters.dnssd import (
    EmbeddedResponder,
    browse,
    browse_name,
    endpoint_label,
    enumeration_name,
    host_name,
    instance_meta,
    instance_name,
    records_for,
)
from registry_adapters.dnsupdate import DnsUpdateRegistry
from registry_adapters.model import Instance, InstanceSet, ServiceKey
from tests.servers.bind9 import Bind9Server

T = dns.rdatatype.RdataType
ECHO = ServiceKey("com.example.EchoService")
PAY = ServiceKey("com.example.PaymentService", protocol="tri")
ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- helpers


def registry(bind9: Bind9Server, **kwargs: object) -> DnsUpdateRegistry:
    options: dict[str, object] = dict(site="site-a", poll_interval=1.0, timeout=1.0)
    options.update(kwargs)
    return DnsUpdateRegistry(bind9.server, bind9.zone, bind9.key_name, bind9.key_secret, **options)  # type: ignore[arg-type]


async def ask(bind9: Bind9Server, name: str | dns.name.Name, rdtype: T) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, use_edns=0, payload=1232)
    response, _ = await dns.asyncquery.udp_with_fallback(query, bind9.host, port=bind9.port, timeout=2)
    return response


def rrset_of(response: dns.message.Message, name: dns.name.Name, rdtype: T):  # noqa: ANN201
    for rrset in response.answer:
        if rrset.name == name and rrset.rdtype == rdtype:
            return rrset
    return None


async def serial(bind9: Bind9Server) -> int:
    return int(next(iter(rrset_of(await ask(bind9, bind9.zone, T.SOA), dns.name.from_text(bind9.zone), T.SOA))).serial)


async def raw_update(bind9: Bind9Server, update: dns.update.UpdateMessage) -> None:
    """Another TSIG-signed writer (an nsupdate, another publisher) changing the zone behind the adapter."""
    response = await dns.asyncquery.tcp(update, bind9.host, port=bind9.port, timeout=2)
    assert response.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(response.rcode())


def new_update(bind9: Bind9Server) -> dns.update.UpdateMessage:
    key = dns.tsig.Key(bind9.key_name, bind9.key_secret, bind9.key_algorithm)
    return dns.update.UpdateMessage(bind9.zone, keyring=key)


async def publish_provider(bind9: Bind9Server, key: ServiceKey, instance: Instance, **kwargs: object) -> None:
    """A plain provider's publication (no gateway marker), written with the same naming."""
    update = new_update(bind9)
    label = endpoint_label(instance.host, instance.port)
    update.delete(instance_name(key, bind9.zone, label))
    for record in records_for(key, instance, bind9.zone, label, **kwargs):  # type: ignore[arg-type]
        update.add(record.name, record.ttl, dns.rdata.from_text("IN", record.rdtype, record.text))
    await raw_update(bind9, update)


@asynccontextmanager
async def subscribed(reg: DnsUpdateRegistry, key: ServiceKey) -> AsyncIterator[AsyncIterator[InstanceSet]]:
    """The subscription as one iterator (a LatestValue is an iterable)."""
    async with reg.subscribe(key) as channel:
        sets = aiter(channel)
        try:
            yield sets
        finally:
            await sets.aclose()  # type: ignore[attr-defined]


async def next_set(sets: AsyncIterator[InstanceSet], timeout: float = 5.0) -> InstanceSet:
    with trio.fail_after(timeout):
        return await sets.__anext__()


async def wait_for(sets: AsyncIterator[InstanceSet], predicate, timeout: float = 5.0) -> InstanceSet:  # noqa: ANN001
    with trio.fail_after(timeout):
        async for item in sets:
            if predicate(item):
                return item
    raise AssertionError("subscription ended")


def endpoints(instance_set: InstanceSet) -> set[tuple[str, int]]:
    return {(i.host, i.port) for i in instance_set.instances}


# --------------------------------------------------------------------------- naming shared with dnssd


def test_endpoint_labels_and_the_loop_guard_spelling() -> None:
    assert endpoint_label("127.0.0.1", 12200) == "127.0.0.1:12200"
    assert endpoint_label("::1", 12200) == "[::1]:12200"
    long = endpoint_label("gateway-" + "x" * 80 + ".example", 12200)
    assert long.startswith("h-") and long.endswith(":12200") and len(long.encode()) <= 63
    # meta[GATEWAY_MARK] is written as TXT gw= (once), and read back as both gw and GATEWAY_MARK
    marked = Instance("127.0.0.1", 1, meta={GATEWAY_MARK: "site-b"})
    (txt,) = [r.text for r in records_for(ECHO, marked, "z.test", "a") if r.rdtype == T.TXT]
    assert '"gw=site-b"' in txt and "interlink.gw" not in txt
    (txt,) = [r.text for r in records_for(ECHO, marked, "z.test", "a", "site-a", gateway_id="gw-1") if r.rdtype == T.TXT]
    assert txt.endswith('"site=site-a" "gw=site-a" "gwid=gw-1"') and "site-b" not in txt
    assert instance_meta({"interface": "x", "gw": "site-a", "appName": "a"}) == {
        "gw": "site-a", GATEWAY_MARK: "site-a", "appName": "a"
    }
    assert without_gateways(frozenset({Instance("h", 1, meta=instance_meta({"gw": "s"})), Instance("h", 2)})) == {
        Instance("h", 2)
    }


# --------------------------------------------------------------------------- publishing


async def test_publish_writes_dnssd_records_that_embedded_and_external_agree_on(bind9: Bind9Server) -> None:
    instance = Instance("127.0.0.1", 12200, weight=7, meta={"appName": "gw-app", GATEWAY_MARK: "site-a"})
    async with registry(bind9, ttl=45) as reg:
        before = await serial(bind9)
        started = trio.current_time()
        publication = await reg.publish(ECHO, instance)
        publish_ms = (trio.current_time() - started) * 1000
        assert publication.liveness == "reassert(30s)"
        assert await serial(bind9) == before + 1  # one UPDATE, applied atomically

        label = endpoint_label("127.0.0.1", 12200)
        assert label == "127.0.0.1:12200"
        expected = records_for(ECHO, instance, bind9.zone, label, "site-a", gateway_id="site-a", ttl=45)
        iname = instance_name(ECHO, bind9.zone, label)
        assert publication.handle == iname
        assert {(r.name, r.rdtype) for r in expected} == {
            (browse_name(ECHO, bind9.zone), T.PTR),
            (iname, T.SRV),
            (iname, T.TXT),
            (host_name("127.0.0.1", bind9.zone), T.A),
            (enumeration_name(ECHO, bind9.zone), T.PTR),
        }
        txt = next(r for r in expected if r.rdtype == T.TXT).text
        assert '"gw=site-a"' in txt and '"gwid=site-a"' in txt and '"interface=com.example.EchoService"' in txt
        assert "interlink.gw" not in txt  # the loop guard is spelled gw= in DNS

        # a plain resolver sees exactly these records, with the configured TTL (host addresses keep 300 s)
        embedded = EmbeddedResponder(bind9.zone)
        embedded.publish(ECHO, instance, label, "site-a", gateway_id="site-a")
        async with trio.open_nursery() as nursery:
            embedded_addr = await nursery.start(embedded.run)
            for record in expected:
                got = rrset_of(await ask(bind9, record.name, record.rdtype), record.name, record.rdtype)
                assert got is not None, record
                want = dns.rdata.from_text("IN", record.rdtype, record.text)
                assert set(got) == {want}, record
                assert got.ttl == (300 if record.rdtype == T.A else 45)
                query = dns.message.make_query(record.name, record.rdtype)
                served = await dns.asyncquery.udp(query, embedded_addr[0], port=embedded_addr[1], timeout=2)
                assert set(rrset_of(served, record.name, record.rdtype)) == {want}, record

            # the same browse code reads both servers, and the adapter's subscription agrees
            from_bind = await browse(bind9.address, ECHO, bind9.zone)
            from_embedded = await browse(embedded_addr, ECHO, bind9.zone)
            nursery.cancel_scope.cancel()
        assert from_bind == from_embedded == {instance}
        (found,) = from_bind
        assert found.weight == 7 and found.meta["appName"] == "gw-app" and found.meta[GATEWAY_MARK] == "site-a"
        assert dict(next(iter(from_embedded)).meta) == dict(found.meta)
        async with subscribed(reg, ECHO) as sets:
            first = await next_set(sets)
        assert first.instances == from_bind and not first.stale and first.revision == str(before + 1)
        assert dict(next(iter(first.instances)).meta) == dict(found.meta)

        # idempotent: publishing the same thing again changes nothing (BIND does not even bump the serial)
        again = await reg.publish(ECHO, instance)
        assert again == publication and await serial(bind9) == before + 1
    print(f"named ready in {bind9.started_in * 1000:.0f} ms; publish (TSIG UPDATE over TCP) {publish_ms:.1f} ms")


async def test_unpublish_and_close_withdraw(bind9: Bind9Server) -> None:
    gateway = Instance("127.0.0.1", 12200)
    async with registry(bind9) as reg:
        echo = await reg.publish(ECHO, gateway)
        await reg.publish(PAY, gateway)
        await reg.publish(ECHO, Instance("127.0.0.1", 12201))
        assert len(await browse(bind9.address, ECHO, bind9.zone)) == 2

        await reg.unpublish(echo)
        iname = instance_name(ECHO, bind9.zone, "127.0.0.1:12200")
        assert (await ask(bind9, iname, T.SRV)).rcode() == dns.rcode.NXDOMAIN
        assert endpoints_of(await browse(bind9.address, ECHO, bind9.zone)) == {("127.0.0.1", 12201)}
        ptrs = rrset_of(await ask(bind9, browse_name(ECHO, bind9.zone), T.PTR), browse_name(ECHO, bind9.zone), T.PTR)
        assert [rd.target for rd in ptrs] == [instance_name(ECHO, bind9.zone, "127.0.0.1:12201")]
        # the enumeration PTR stays while an instance of the type is left
        assert rrset_of(await ask(bind9, enumeration_name(ECHO, bind9.zone), T.PTR), enumeration_name(ECHO, bind9.zone), T.PTR)
        await reg.unpublish(echo)  # twice: nothing to do
    # graceful close withdrew the rest, enumeration PTRs included
    for key in (ECHO, PAY):
        assert await browse(bind9.address, key, bind9.zone) == frozenset()
        for name in (browse_name(key, bind9.zone), enumeration_name(key, bind9.zone)):
            assert rrset_of(await ask(bind9, name, T.PTR), name, T.PTR) is None
    # the host's address record is shared by every instance on that address and stays
    host = host_name("127.0.0.1", bind9.zone)
    assert rrset_of(await ask(bind9, host, T.A), host, T.A) is not None


def endpoints_of(instances: frozenset[Instance]) -> set[tuple[str, int]]:
    return {(i.host, i.port) for i in instances}


async def test_close_withdraws_even_when_cancelled(bind9: Bind9Server) -> None:
    with trio.move_on_after(5) as scope:
        async with registry(bind9) as reg:
            await reg.publish(ECHO, Instance("127.0.0.1", 12200))
            scope.cancel()  # the gateway is being shut down: leaving the adapter still withdraws
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert await browse(bind9.address, ECHO, bind9.zone) == frozenset()


CRASHING_GATEWAY = """
import sys, trio
from registry_adapters.dnsupdate import DnsUpdateRegistry
from registry_adapters.model import Instance, ServiceKey
server, zone, name, secret = sys.argv[1:5]
async def main():
    async with DnsUpdateRegistry(server, zone, name, secret, site="site-a") as reg:
        await reg.publish(ServiceKey("com.example.EchoService"), Instance("127.0.0.1", 12200))
        await reg.publish(ServiceKey("com.example.PaymentService", protocol="tri"), Instance("127.0.0.1", 12300))
        print("PUBLISHED", flush=True)
        await trio.sleep_forever()
trio.run(main)
"""


async def test_next_start_removes_a_crashed_runs_records_and_nothing_else(bind9: Bind9Server) -> None:
    # a gateway of site-a publishes, then dies without withdrawing (SIGKILL)
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", CRASHING_GATEWAY, bind9.server, bind9.zone, bind9.key_name, bind9.key_secret],
        stdout=subprocess.PIPE, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        with trio.fail_after(20):
            output = b""
            while b"PUBLISHED" not in output:
                chunk = await process.stdout.receive_some(4096)  # type: ignore[union-attr]
                assert chunk, f"the crashing gateway exited {await process.wait()}"
                output += chunk
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
    assert endpoints_of(await browse(bind9.address, ECHO, bind9.zone)) == {("127.0.0.1", 12200)}

    # what must survive: a plain provider, another site's gateway, another gateway of the same site
    await publish_provider(bind9, ECHO, Instance("127.0.0.1", 20001))
    await publish_provider(bind9, ECHO, Instance("127.0.0.1", 20002), site="site-b", gateway_id="site-b")
    async with registry(bind9, gateway_id="site-a-gw2") as sibling:
        await sibling.publish(ECHO, Instance("127.0.0.1", 20003))
        sibling._owned.clear()  # leave its record behind on close, as if it were still running elsewhere

    with structlog.testing.capture_logs() as logs:
        async with registry(bind9) as reg:
            assert endpoints_of(await browse(bind9.address, ECHO, bind9.zone)) == {
                ("127.0.0.1", 20001), ("127.0.0.1", 20002), ("127.0.0.1", 20003)
            }
            assert await browse(bind9.address, PAY, bind9.zone) == frozenset()
            for name in (browse_name(PAY, bind9.zone), enumeration_name(PAY, bind9.zone)):
                assert rrset_of(await ask(bind9, name, T.PTR), name, T.PTR) is None
            # and it publishes afresh
            await reg.publish(ECHO, Instance("127.0.0.1", 12200))
            assert ("127.0.0.1", 12200) in endpoints_of(await browse(bind9.address, ECHO, bind9.zone))
    removed = [e for e in logs if e["event"] == "registry.dns.leftovers_removed"]
    assert removed and removed[0]["found"] == 2 and removed[0]["removed"] == 2


async def test_withdraw_leaves_what_someone_else_rewrote(bind9: Bind9Server) -> None:
    """Deletes are guarded by 'the TXT is still what we wrote': an instance another writer re-published
    under the same name (here: the same endpoint, other metadata) is not ours to delete any more."""
    instance = Instance("127.0.0.1", 12200)
    async with registry(bind9) as reg:
        publication = await reg.publish(ECHO, instance)
        await publish_provider(bind9, ECHO, Instance("127.0.0.1", 12200, meta={"appName": "someone-else"}))
        await reg.unpublish(publication)
        (left,) = await browse(bind9.address, ECHO, bind9.zone)
        assert left.meta["appName"] == "someone-else"


async def test_publications_are_reasserted(bind9: Bind9Server) -> None:
    async with registry(bind9, reassert_interval=0.2) as reg:
        await reg.publish(ECHO, Instance("127.0.0.1", 12200))
        update = new_update(bind9)  # someone (an operator, a janitor) deletes it behind our back
        iname = instance_name(ECHO, bind9.zone, "127.0.0.1:12200")
        update.delete(iname)
        update.delete(browse_name(ECHO, bind9.zone))
        await raw_update(bind9, update)
        assert await browse(bind9.address, ECHO, bind9.zone) == frozenset()
        with trio.fail_after(3):
            while not await browse(bind9.address, ECHO, bind9.zone):
                await trio.sleep(0.05)


# --------------------------------------------------------------------------- subscribing


async def test_subscribe_follows_changes_by_polling(bind9: Bind9Server) -> None:
    await publish_provider(bind9, ECHO, Instance("127.0.0.1", 20001))
    async with registry(bind9, poll_interval=1.0) as reg, subscribed(reg, ECHO) as sets:
        first = await next_set(sets)
        assert endpoints(first) == {("127.0.0.1", 20001)} and not first.stale
        assert first.revision == str(await serial(bind9))

        # the provider moves to another port (its SRV changes) and a second instance appears
        update = new_update(bind9)
        iname = instance_name(ECHO, bind9.zone, "127.0.0.1:20001")
        update.replace(iname, 30, dns.rdata.from_text("IN", "SRV", f"0 100 20011 {host_name('127.0.0.1', bind9.zone)}"))
        await raw_update(bind9, update)
        changed_at = trio.current_time()
        moved = await wait_for(sets, lambda s: endpoints(s) == {("127.0.0.1", 20011)}, timeout=3)
        port_change_s = trio.current_time() - changed_at
        assert moved.revision == str(await serial(bind9)) and int(moved.revision) > int(first.revision)

        await publish_provider(bind9, ECHO, Instance("127.0.0.1", 20002))
        added_at = trio.current_time()
        await wait_for(sets, lambda s: endpoints(s) == {("127.0.0.1", 20011), ("127.0.0.1", 20002)}, timeout=3)
        added_s = trio.current_time() - added_at
    assert port_change_s < 1.5 and added_s < 1.5
    print(f"polling (1 s): port change seen after {port_change_s * 1000:.0f} ms, new instance after {added_s * 1000:.0f} ms")


async def test_subscribe_reacts_to_notify_at_once(bind9: Bind9Server) -> None:
    await publish_provider(bind9, ECHO, Instance("127.0.0.1", 20001))
    listen = f"127.0.0.1:{bind9.notify_port}"
    async with registry(bind9, poll_interval=60.0, notify_listen=listen) as reg, subscribed(reg, ECHO) as sets:
        assert reg.notify_address == ("127.0.0.1", bind9.notify_port)
        assert endpoints(await next_set(sets)) == {("127.0.0.1", 20001)}
        seen = []
        for port in (20002, 20003, 20004):
            await publish_provider(bind9, ECHO, Instance("127.0.0.1", port))
            changed_at = trio.current_time()
            await wait_for(sets, lambda s, port=port: ("127.0.0.1", port) in endpoints(s), timeout=2)
            seen.append(trio.current_time() - changed_at)
    assert max(seen) < 0.5  # polling alone would take a minute here
    print("NOTIFY: change seen after " + ", ".join(f"{s * 1000:.0f}" for s in seen) + " ms")


async def test_notify_is_answered(bind9: Bind9Server) -> None:
    """RFC 1996: each NOTIFY gets a response (or BIND keeps re-sending it); only for our zone, only from
    the configured server's address (here both are 127.0.0.1)."""
    async with registry(bind9, poll_interval=60.0, notify_listen="127.0.0.1:0") as reg:
        assert reg.notify_address is not None and reg.notify_address[1] != 0
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        with sock:
            await sock.bind(("127.0.0.1", 0))
            for zone, rcode in ((bind9.zone, dns.rcode.NOERROR), ("other.test", dns.rcode.NOTAUTH)):
                notify = dns.message.make_query(zone, T.SOA)
                notify.flags = dns.flags.AA  # (the opcode lives in the flags word: set it after)
                notify.set_opcode(dns.opcode.NOTIFY)
                await sock.sendto(notify.to_wire(), reg.notify_address)
                with trio.fail_after(2):
                    data, _ = await sock.recvfrom(4096)
                answer = dns.message.from_wire(data)
                assert answer.id == notify.id and answer.flags & dns.flags.QR
                assert answer.opcode() == dns.opcode.NOTIFY and answer.rcode() == rcode


async def test_gateway_publications_are_dropped_by_the_loop_guard(bind9: Bind9Server) -> None:
    await publish_provider(bind9, ECHO, Instance("127.0.0.1", 20001))
    async with registry(bind9) as reg:
        await reg.publish(ECHO, Instance("127.0.0.1", 12200, meta={GATEWAY_MARK: "site-a"}))
        async with subscribed(reg, ECHO) as sets:
            current = await next_set(sets)
    assert endpoints(current) == {("127.0.0.1", 20001), ("127.0.0.1", 12200)}
    assert {(i.host, i.port) for i in without_gateways(current.instances)} == {("127.0.0.1", 20001)}


async def test_malformed_instances_are_logged_and_skipped(bind9: Bind9Server, monkeypatch: pytest.MonkeyPatch) -> None:
    zone = bind9.zone
    await publish_provider(bind9, ECHO, Instance("127.0.0.1", 20001))
    browse_ptr = browse_name(ECHO, zone)
    update = new_update(bind9)
    broken = {
        "no-txt": None,
        "no-address": "0 1 20003 nowhere.hosts." + zone + ".",
        "no-interface": "0 1 20004 " + host_name("127.0.0.1", zone).to_text(),
        "root-target": "0 1 20005 .",
    }
    for label, srv in broken.items():
        name = instance_name(ECHO, zone, label)
        update.add(browse_ptr, 30, dns.rdata.from_text("IN", "PTR", name.to_text()))
        if label == "no-txt":
            update.add(name, 30, dns.rdata.from_text("IN", "SRV", "0 1 20002 " + host_name("127.0.0.1", zone).to_text()))
            continue
        update.add(name, 30, dns.rdata.from_text("IN", "SRV", srv))
        txt = '"txtvers=1" "protocol=bolt"' if label == "no-interface" else '"txtvers=1" "interface=com.example.EchoService"'
        update.add(name, 30, dns.rdata.from_text("IN", "TXT", txt))
    # the same DNS name, another (case-sensitive) interface: not malformed, just not ours
    other = instance_name(ECHO, zone, "other-case")
    update.add(browse_ptr, 30, dns.rdata.from_text("IN", "PTR", other.to_text()))
    update.add(other, 30, dns.rdata.from_text("IN", "SRV", "0 1 20006 " + host_name("127.0.0.1", zone).to_text()))
    update.add(other, 30, dns.rdata.from_text("IN", "TXT", '"interface=com.example.echoservice"'))
    await raw_update(bind9, update)

    with structlog.testing.capture_logs() as logs:
        monkeypatch.setattr(dnsupdate, "log", structlog.get_logger("interlink.registry"))
        async with registry(bind9) as reg, subscribed(reg, ECHO) as sets:
            current = await next_set(sets)
    assert endpoints(current) == {("127.0.0.1", 20001)}
    bad = {e["name"].split(".", 1)[0]: e["reason"] for e in logs if e["event"] == "registry.dns.bad_entry"}
    assert set(bad) == set(broken), bad
    assert "no TXT" in bad["no-txt"] or "without TXT" in bad["no-txt"]
    assert "no A/AAAA" in bad["no-address"] and "interface=" in bad["no-interface"] and "'.'" in bad["root-target"]


async def test_server_stop_makes_the_set_stale_and_restart_fresh(bind9: Bind9Server) -> None:
    await publish_provider(bind9, ECHO, Instance("127.0.0.1", 20001))
    async with registry(bind9, poll_interval=0.2) as reg, subscribed(reg, ECHO) as sets:
        first = await next_set(sets)
        assert endpoints(first) == {("127.0.0.1", 20001)} and reg.health().connected

        await trio.to_thread.run_sync(bind9.stop)
        stopped_at = trio.current_time()
        stale = await next_set(sets, timeout=3)
        stale_s = trio.current_time() - stopped_at
        assert stale.stale and stale.instances == first.instances and stale.revision == first.revision
        health = reg.health()
        assert not health.connected and health.stale_since is not None and health.errors >= 1
        assert bind9.server in (health.last_error or "")

        await trio.to_thread.run_sync(bind9.start)
        fresh = await next_set(sets, timeout=3)
        assert not fresh.stale and endpoints(fresh) == {("127.0.0.1", 20001)}  # the zone kept it (journal)
        assert reg.health().connected and reg.health().stale_since is None

        # and it follows changes again
        await publish_provider(bind9, ECHO, Instance("127.0.0.1", 20002))
        await wait_for(sets, lambda s: len(s.instances) == 2 and not s.stale, timeout=3)
    print(f"stale {stale_s * 1000:.0f} ms after named stopped")


async def test_empty_set_first_and_no_duplicates(bind9: Bind9Server) -> None:
    async with registry(bind9, poll_interval=0.1) as reg, subscribed(reg, ECHO) as sets:
        first = await next_set(sets)
        assert first.instances == frozenset() and not first.stale
        # an unrelated change moves the serial but not this set: nothing is sent
        await publish_provider(bind9, PAY, Instance("127.0.0.1", 20001))
        with trio.move_on_after(0.5) as idle:
            await sets.__anext__()
        assert idle.cancelled_caught


async def test_answers_are_reused_within_their_ttl(bind9: Bind9Server, monkeypatch: pytest.MonkeyPatch) -> None:
    await publish_provider(bind9, ECHO, Instance("127.0.0.1", 20001), ttl=2)
    asked: list[tuple[str, str]] = []
    real_query = DnsUpdateRegistry._query

    async def counting(self: DnsUpdateRegistry, name: dns.name.Name, rdtype: T) -> dns.message.Message:
        asked.append((name.to_text(), rdtype.name))
        return await real_query(self, name, rdtype)

    monkeypatch.setattr(DnsUpdateRegistry, "_query", counting)
    async with registry(bind9, poll_interval=0.1) as reg, subscribed(reg, ECHO) as sets:
        await next_set(sets)
        first_browse = len(asked)
        assert sorted(rdtype for _, rdtype in asked) == ["PTR", "SRV", "TXT"]  # the A came with the SRV
        await trio.sleep(1.2)  # 12 polls, serial unchanged, within the 2 s TTL: nothing asked again
        assert len(asked) == first_browse
        await trio.sleep(1.3)  # past the TTL: asked again although the serial did not move
        assert len(asked) >= 2 * first_browse
        refreshed = len(asked)
        # a serial change makes it ask at once, within the TTL
        await publish_provider(bind9, ECHO, Instance("127.0.0.1", 20002), ttl=2)
        await wait_for(sets, lambda s: len(s.instances) == 2, timeout=2)
        assert len(asked) > refreshed


# --------------------------------------------------------------------------- errors


async def test_wrong_tsig_secret_is_a_clear_error_not_a_hang(bind9: Bind9Server) -> None:
    wrong = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVoxMjM0NTY="
    with trio.fail_after(5):
        with pytest.raises(RegistryError) as failed:  # at start: the leftover sweep's AXFR is signed
            async with DnsUpdateRegistry(bind9.server, bind9.zone, bind9.key_name, wrong, site="site-a"):
                pass
        assert "BADSIG" in str(failed.value) and "tsig_secret" in str(failed.value)
        assert bind9.server in str(failed.value) and bind9.key_name in str(failed.value)

        async with DnsUpdateRegistry(bind9.server, bind9.zone, bind9.key_name, wrong) as reg:  # no site: no sweep
            with pytest.raises(RegistryError) as failed:
                await reg.publish(ECHO, Instance("127.0.0.1", 12200))
            assert "BADSIG" in str(failed.value) and "publish" in str(failed.value)
            assert reg.health().errors == 1

        with pytest.raises(RegistryError) as failed:
            async with DnsUpdateRegistry(bind9.server, bind9.zone, "no-such-key", bind9.key_secret, site="site-a"):
                pass
        assert "BADKEY" in str(failed.value) and "tsig_name" in str(failed.value)

        with pytest.raises(RegistryError) as failed:
            async with DnsUpdateRegistry(bind9.server, "other.test", bind9.key_name, bind9.key_secret, site="site-a"):
                pass
        assert "REFUSED" in str(failed.value) and "other.test" in str(failed.value)

    with pytest.raises(RegistryError, match="base64"):
        DnsUpdateRegistry(bind9.server, bind9.zone, bind9.key_name, "not base64!")
    with pytest.raises(RegistryError, match="algorithm"):
        DnsUpdateRegistry(bind9.server, bind9.zone, bind9.key_name, bind9.key_secret, tsig_algorithm="hmac-rot13")
    with pytest.raises(RegistryError, match="host:port"):
        DnsUpdateRegistry("127.0.0.1", bind9.zone, bind9.key_name, bind9.key_secret)
    assert await browse(bind9.address, ECHO, bind9.zone) == frozenset()


async def test_unsigned_or_refused_updates_and_a_stopped_server(bind9: Bind9Server) -> None:
    # an unsigned update: REFUSED, with the update-policy hint
    async with registry(bind9) as reg:
        update = dns.update.UpdateMessage(bind9.zone)  # unsigned
        update.add(instance_name(ECHO, bind9.zone, "x"), 30, dns.rdata.from_text("IN", "TXT", '"a=b"'))
        with pytest.raises(RegistryError) as failed:
            await reg._send(update, "publish x")
        assert "REFUSED" in str(failed.value) and "update-policy" in str(failed.value)

        await trio.to_thread.run_sync(bind9.stop)
        with trio.fail_after(5):
            with pytest.raises(RegistryError) as failed:
                await reg.publish(ECHO, Instance("127.0.0.1", 12200))
        assert "cannot reach" in str(failed.value) and bind9.server in str(failed.value)
    # leaving with nothing published and the server gone is quick and quiet
    with trio.fail_after(5):
        with pytest.raises(RegistryError, match="cannot reach"):
            async with registry(bind9):
                pass


def test_fixture_config_is_loopback_only(bind9: Bind9Server) -> None:
    conf = (bind9.directory / "named.conf").read_text()
    assert "listen-on-v6 { none; }" in conf and "recursion no" in conf
    assert f"listen-on port {bind9.port} {{ 127.0.0.1; }}" in conf
    assert f"also-notify {{ 127.0.0.1 port {bind9.notify_port}; }}" in conf
    assert bind9.process is not None and bind9.process.poll() is None
    assert 0 < bind9.started_in < 5


async def test_a_failing_browse_goes_stale_and_retries_at_poll_pace(
    bind9: Bind9Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SOA answers but the browse queries fail (say SERVFAIL): stale, retried once per poll, not in a loop."""
    await publish_provider(bind9, ECHO, Instance("127.0.0.1", 20001))
    real_query = DnsUpdateRegistry._query
    failing = {"on": False, "calls": 0}

    async def query(self: DnsUpdateRegistry, name: dns.name.Name, rdtype: T) -> dns.message.Message:
        if failing["on"]:
            failing["calls"] += 1
            raise RegistryError(self._why(f"browse ({name} {rdtype.name})", dns.rcode.SERVFAIL, query=True))
        return await real_query(self, name, rdtype)

    monkeypatch.setattr(DnsUpdateRegistry, "_query", query)
    async with registry(bind9, poll_interval=0.2) as reg, subscribed(reg, ECHO) as sets:
        first = await next_set(sets)
        failing["on"] = True
        await publish_provider(bind9, ECHO, Instance("127.0.0.1", 20002))  # serial moves: browse, which fails
        stale = await next_set(sets, timeout=2)
        assert stale.stale and stale.instances == first.instances
        assert "SERVFAIL" in (reg.health().last_error or "")
        await trio.sleep(1.0)
        assert failing["calls"] <= 8  # about one attempt per 0.2 s poll
        failing["on"] = False
        fresh = await next_set(sets, timeout=2)
        assert not fresh.stale and len(fresh.instances) == 2
