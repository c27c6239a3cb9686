"""The `dns` registry, external mode: DNS-SD records (REGISTRIES.md 3.2, named by `dnssd`) in a zone of an
authoritative server such as BIND9, written with RFC 2136 UPDATEs signed with TSIG and read back with the
same browse as the embedded responder's (`dnssd.browse_with`). dnspython on trio; nothing blocks the loop.

    registry = DnsUpdateRegistry("10.0.0.53:53", "site-a.example", "interlink-gw", secret, site="site-a")
    async with registry:        # zone answers SOA, key works (signed AXFR), a previous run's records removed
        pub = await registry.publish(key, instance)         # one signed UPDATE, re-asserted every 30 s
        async with registry.subscribe(key) as sets: ...     # SOA serial polled (+ NOTIFY), browse on change

Publishing. One UPDATE per publication: delete the instance name, add SRV, TXT (with the loop guard
`gw=<site>` and `gwid=<gateway id>`), the browse PTR, the enumeration PTR and the target's A/AAAA; applied
atomically, so re-publishing is idempotent (BIND does not even bump the serial for an unchanged set).
The instance label is the endpoint (`dnssd.endpoint_label`: `host:port`).

Liveness. DNS has no leases (REGISTRIES.md 3.5): the adapter re-asserts every publication every
`reassert_interval` (liveness `reassert(30s)`) and at once when the server comes back; leaving the adapter
withdraws them (shielded from cancellation, bounded by `timeout`). A gateway that crashed leaves its records
behind; the next start of the same gateway (same `site` and `gateway_id`, default: the site) removes them
before it publishes anything. That start-up sweep reads the zone by AXFR (signed with the same key) and
deletes only instances whose TXT carries our `gw=` and `gwid=`, each in its own UPDATE guarded by the
prerequisite "the TXT RRset is still exactly what we read" - so an instance that another live gateway
re-published meanwhile is left alone; the browse PTR goes one RR at a time and the enumeration PTR only
when no instance of that service type is left (prerequisite again). Gateways of one site that publish
different things must therefore have different, stable `gateway_id`s. Host address records
(`ip-*.hosts.<zone>`) are shared by every instance on that address and are never deleted.

Watching. DNS has no watch: the zone's SOA serial is polled every `poll_interval` (over a connected UDP
socket, so a stopped server is noticed at once, not after a timeout) and, with `notify_listen`, polled at
once on each NOTIFY from the server (answered, or BIND keeps retrying). When the serial moves, each
subscription browses its service again (PTR, then SRV + TXT (+ A) per instance); answers are cached for
their TTL and for the serial they were read at, so nothing is asked twice within its TTL unless the serial
changed. TXT `interface=` is compared exactly (DNS names are case-insensitive, Java interfaces are not).
A malformed instance is logged (`registry.dns.bad_entry`) and skipped. An unreachable server re-sends the
last set with `stale=True`; recovery browses again and sends a fresh set. Revision = the SOA serial.

Errors (REFUSED, NOTAUTH, BADSIG/BADKEY/BADTIME, timeouts, refused connections) are `RegistryError`s
that name the server, the zone, the key and what to check.
"""

from __future__ import annotations

import ipaddress
import math
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import dns.asyncbackend
import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.serial
import dns.tsig
import dns.update
import dns.xfr
import dns.zone
import structlog
import trio

from registry_adapters import dnssd
from registry_adapters.base import LatestValue, Publication, RegistryError, RegistryHealth
from registry_adapters.model import Instance, InstanceSet, ServiceKey

__all__ = ["DnsUpdateRegistry"]

log = structlog.get_logger("interlink.registry")

RdataType = dns.rdatatype.RdataType
IN = dns.rdataclass.IN
SERVICE_PROTOCOL_LABELS = {b"_bolt", b"_tri"}
# rcodes of a prerequisite that did not hold: expected outcomes of guarded deletes, not errors
PREREQUISITE_FAILED = {dns.rcode.NXRRSET, dns.rcode.YXRRSET, dns.rcode.NXDOMAIN, dns.rcode.YXDOMAIN}


class _Unreachable(Exception):
    """The server did not answer (timeout, refused connection): subscriptions go stale."""


@dataclass
class _Owned:
    """One instance this adapter published (or found left over by a previous run of this gateway)."""

    name: dns.name.Name  # the instance name
    browse: dns.name.Name  # _bolt._tcp.<service domain>
    enumeration: dns.name.Name  # _services._dns-sd._udp.<service domain>
    txt: dns.rdataset.Rdataset  # the TXT RRset as written/read: the withdraw prerequisite
    key: ServiceKey | None = None
    instance: Instance | None = None
    records: list[dnssd.Record] = field(default_factory=list)


@dataclass
class _Cached:
    serial: int
    expires: float
    response: dns.message.Message


class _AnswerCache:
    """Responses keyed by (name, type), valid for their TTL and only at the serial they were read at."""

    def __init__(self) -> None:
        self._entries: dict[tuple[dns.name.Name, RdataType], _Cached] = {}

    def get(self, name: dns.name.Name, rdtype: RdataType, serial: int, now: float) -> _Cached | None:
        entry = self._entries.get((name, rdtype))
        if entry is None or entry.serial != serial or entry.expires <= now:
            return None
        return entry

    def put(self, name: dns.name.Name, rdtype: RdataType, entry: _Cached) -> None:
        self._entries[(name, rdtype)] = entry

    def keep_only(self, serial: int) -> None:
        self._entries = {k: v for k, v in self._entries.items() if v.serial == serial}


def _ttl_of(response: dns.message.Message, name: dns.name.Name, rdtype: RdataType) -> int:
    """How long an answer may be reused: the answer RRset's TTL, or for NXDOMAIN/NODATA the negative
    TTL (RFC 2308: min(SOA TTL, SOA minimum)); 0 when the response says neither."""
    for rrset in response.answer:
        if rrset.name == name and rrset.rdtype == rdtype:
            return rrset.ttl
    for rrset in response.authority:
        if rrset.rdtype == RdataType.SOA:
            return min(rrset.ttl, next(iter(rrset)).minimum)  # type: ignore[attr-defined]
    return 0


def _fingerprint(instances: frozenset[Instance]) -> frozenset[tuple]:
    """What a subscriber would notice: identity plus meta (Instance equality ignores meta)."""
    return frozenset((i.host, i.port, i.weight, tuple(sorted(i.meta.items()))) for i in instances)


def _split_host_port(text: str, what: str, *, any_port: bool = False) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not (0 if any_port else 1) <= int(port) < 65536:
        raise RegistryError(f"dns registry: {what} {text!r} is not host:port (e.g. 10.0.0.53:53)")
    return host, int(port)


class DnsUpdateRegistry:
    """The external `dns` registry (see the module docstring). Implements `registry_adapters.base.Registry`."""

    name = "dns-external"

    def __init__(
        self,
        server: str,
        zone: str,
        tsig_name: str,
        tsig_secret: str,
        tsig_algorithm: str = "hmac-sha256",
        ttl: int = 30,
        poll_interval: float = 1.0,
        notify_listen: str | None = None,
        site: str = "",
        *,
        gateway_id: str | None = None,
        reassert_interval: float = 30.0,
        timeout: float = 2.0,
    ) -> None:
        self.server = server
        self._host, self._port = _split_host_port(server, "server")
        try:
            self.zone = dns.name.from_text(zone)
        except dns.exception.DNSException as exc:
            raise RegistryError(f"dns registry: zone {zone!r} is not a DNS name: {exc}") from None
        if tsig_algorithm.lower().rstrip(".") == "hmac-md5":  # BIND's spelling of HMAC-MD5.SIG-ALG.REG.INT
            tsig_algorithm = dns.tsig.HMAC_MD5.to_text()
        try:
            self._key = dns.tsig.Key(tsig_name, tsig_secret, tsig_algorithm)
        except Exception as exc:  # noqa: BLE001 - binascii.Error, bad name ...
            raise RegistryError(
                f"dns registry: TSIG key {tsig_name!r}: the secret must be base64 (as tsig-keygen prints it): {exc}"
            ) from None
        if self._key.algorithm not in dns.tsig.mac_sizes:
            known = ", ".join(sorted(a.to_text(omit_final_dot=True) for a in dns.tsig.mac_sizes))
            raise RegistryError(f"dns registry: TSIG algorithm {tsig_algorithm!r} is unknown; use one of {known}")
        if not 0 <= ttl <= 0x7FFFFFFF:
            raise RegistryError(f"dns registry: ttl {ttl} is out of range")
        if poll_interval <= 0 or reassert_interval <= 0 or timeout <= 0:
            raise RegistryError("dns registry: poll_interval, reassert_interval and timeout must be positive")
        self.tsig_name = self._key.name.to_text(omit_final_dot=True)
        self.ttl = int(ttl)
        self.poll_interval = float(poll_interval)
        self.reassert_interval = float(reassert_interval)
        self.timeout = float(timeout)
        self.site = site
        self.gateway_id = (gateway_id or site) if site else None
        self._notify = _split_host_port(notify_listen, "notify_listen", any_port=True) if notify_listen else None
        self.notify_address: tuple[str, int] | None = None  # bound NOTIFY address, once entered
        self.liveness = f"reassert({self.reassert_interval:g}s)"

        self._address: tuple[str, int] = (self._host, self._port)  # resolved on enter
        self._family = socket.AF_INET
        self._backend = None  # dns.asyncbackend.Backend, on enter
        self._stack: AsyncExitStack | None = None
        self._write_lock = trio.Lock()
        self._poll_lock = trio.Lock()
        self._owned: dict[dns.name.Name, _Owned] = {}
        self._channels: set[LatestValue[InstanceSet]] = set()
        self._cache = _AnswerCache()
        self._serial: int | None = None
        self._connected = False
        self._changed = trio.Event()  # replaced after each change of serial or connectivity
        self._poll_now = trio.Event()  # NOTIFY (or a failed browse): poll the SOA at once
        self._reassert_now = trio.Event()
        self._health = RegistryHealth()

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> DnsUpdateRegistry:
        if self._stack is not None:
            raise RegistryError("dns registry: already entered")
        self._backend = dns.asyncbackend.get_default_backend()
        await self._resolve_server()
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            notify_sock = await self._bind_notify() if self._notify else None
            if notify_sock is not None:
                stack.callback(notify_sock.close)
            started = trio.current_time()
            try:
                self._serial = await self._soa_serial()
            except _Unreachable as exc:
                raise RegistryError(self._why("read the zone's SOA", exc)) from None
            self._set_connected(True)
            await self._remove_leftovers()
            nursery = await stack.enter_async_context(trio.open_nursery())
            stack.callback(nursery.cancel_scope.cancel)  # LIFO: cancel the tasks, then wait for them
            nursery.start_soon(self._watch_zone)
            nursery.start_soon(self._reassert_forever)
            if notify_sock is not None:
                nursery.start_soon(self._serve_notify, notify_sock)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        log.info("registry.dns.started", server=self.server, zone=self.zone.to_text(), key=self.tsig_name,
                 serial=self._serial, site=self.site or None, gateway_id=self.gateway_id,
                 notify=self.notify_address and f"{self.notify_address[0]}:{self.notify_address[1]}",
                 ms=round((trio.current_time() - started) * 1000, 1))
        return self

    async def __aexit__(self, *exc: object) -> None:
        stack, self._stack = self._stack, None
        if stack is None:
            return
        # withdraw first (the nursery's tasks keep running meanwhile), then cancel them
        await self._withdraw_all()
        for channel in list(self._channels):
            channel.close()
        await stack.aclose()
        self._connected = self._health.connected = False

    def _check_open(self) -> None:
        if self._stack is None:
            raise RegistryError("dns registry: use `async with DnsUpdateRegistry(...)` before publishing or subscribing")

    async def _resolve_server(self) -> None:
        try:
            ipaddress.ip_address(self._host)
            self._address = (self._host, self._port)
        except ValueError:
            try:
                infos = await trio.socket.getaddrinfo(self._host, self._port, type=socket.SOCK_DGRAM)
            except OSError as exc:
                raise RegistryError(f"dns registry: cannot resolve server {self.server}: {exc}") from None
            *_, sockaddr = infos[0]
            self._address = (str(sockaddr[0]), self._port)
        self._family = socket.AF_INET6 if ":" in self._address[0] else socket.AF_INET

    # ------------------------------------------------------------------ talking to the server

    def _why(self, action: str, problem: object, *, query: bool = False) -> str:
        """One message: which server, zone and key, what failed and what to check (`query`: a read, not an
        UPDATE or a transfer)."""
        where = f"dns registry {self.server} zone {self.zone.to_text(omit_final_dot=True)} key {self.tsig_name}"
        key = self.tsig_name
        if isinstance(problem, _Unreachable):
            problem = problem.__cause__ or problem
        if isinstance(problem, str):
            hint = problem
        elif isinstance(problem, dns.tsig.PeerBadSignature):
            hint = (f"the server rejected our TSIG signature (BADSIG, rcode NOTAUTH): tsig_secret is not the secret "
                    f"the server has for key {key}; copy it from the server's key file")
        elif isinstance(problem, dns.tsig.PeerBadKey):
            hint = (f"the server does not know TSIG key {key} (BADKEY, rcode NOTAUTH): check tsig_name against the "
                    "server's key statement and that the zone's update-policy names it")
        elif isinstance(problem, dns.tsig.PeerBadTime):
            hint = "our clock and the server's differ by more than the TSIG fudge (BADTIME): synchronise the clocks"
        elif isinstance(problem, (dns.tsig.PeerError, dns.tsig.BadSignature, dns.tsig.BadKey, dns.tsig.BadAlgorithm)):
            hint = f"TSIG failed ({type(problem).__name__}): check tsig_name, tsig_secret and tsig_algorithm"
        elif isinstance(problem, dns.exception.Timeout):
            hint = (f"no answer within {self.timeout:g}s: check that the DNS server runs at {self.server} "
                    "(UDP and TCP) and that nothing drops the packets")
        elif isinstance(problem, OSError):
            hint = f"cannot reach {self.server} ({problem}): check the address and that the DNS server runs"
        elif isinstance(problem, dns.rcode.Rcode) and query:
            hint = {
                dns.rcode.REFUSED: ("the server refused the query (REFUSED): it does not serve this zone or does not "
                                    "let us query it; check the zone name and the server's allow-query"),
                dns.rcode.SERVFAIL: "the server failed (SERVFAIL): see its log (zone not loaded?)",
                dns.rcode.NXDOMAIN: "the zone does not exist on the server (NXDOMAIN): check the zone name",
            }.get(problem, f"the server answered {dns.rcode.to_text(problem)}")
        elif isinstance(problem, dns.rcode.Rcode):
            name = dns.rcode.to_text(problem)
            hint = {
                dns.rcode.REFUSED: (f"the server refused it (REFUSED): key {key} may not do this in the zone; "
                                    f"check the zone's update-policy (grant {key} zonesub ANY;) / allow-update"),
                dns.rcode.NOTAUTH: (f"the server is not authoritative for the zone or did not accept key {key} "
                                    "(NOTAUTH): check the zone name, that the server is its primary, and the key"),
                dns.rcode.NOTZONE: "a name in the update is outside the zone (NOTZONE): check the zone name",
                dns.rcode.SERVFAIL: "the server failed (SERVFAIL): see its log (zone not loaded? journal not writable?)",
                dns.rcode.NXDOMAIN: "the zone does not exist on the server (NXDOMAIN): check the zone name",
            }.get(problem, f"the server answered {name}")
        else:
            hint = f"{type(problem).__name__}: {problem}"
        return f"{where}: {action} failed: {hint}"

    async def _ask(self, query: dns.message.Message) -> dns.message.Message:
        """One query over a connected UDP socket (a stopped server answers ICMP at once), retried over TCP
        when truncated or when UDP got no answer; raises _Unreachable."""
        host, port = self._address
        try:
            try:
                sock = await self._backend.make_socket(self._family, socket.SOCK_DGRAM, 0, None, self._address)
                async with sock:
                    response = await dns.asyncquery.udp(query, host, port=port, timeout=self.timeout, sock=sock)
                if not response.flags & dns.flags.TC:
                    return response
            except dns.exception.Timeout:
                pass  # a lost datagram, or UDP filtered: one more try over TCP
            return await dns.asyncquery.tcp(query, host, port=port, timeout=self.timeout)
        except (OSError, EOFError, dns.exception.DNSException) as exc:  # no answer, or garbage for one
            raise _Unreachable(str(exc)) from exc

    async def _soa_serial(self) -> int:
        """The zone's serial; raises _Unreachable (no answer) or RegistryError (the server does not serve it)."""
        response = await self._ask(dns.message.make_query(self.zone, RdataType.SOA))
        rcode = response.rcode()
        if rcode != dns.rcode.NOERROR:
            raise RegistryError(self._why("read the zone's SOA", rcode, query=True))
        for rrset in response.answer:
            if rrset.name == self.zone and rrset.rdtype == RdataType.SOA:
                if not response.flags & dns.flags.AA:
                    raise RegistryError(self._why("read the zone's SOA", "the answer is not authoritative: point "
                                                  "server at the zone's primary, not at a resolver"))
                return int(next(iter(rrset)).serial)  # type: ignore[attr-defined]
        raise RegistryError(self._why("read the zone's SOA", "no SOA at the zone apex: is the zone name right?"))

    async def _query(self, name: dns.name.Name, rdtype: RdataType) -> dns.message.Message:
        response = await self._ask(dns.message.make_query(name, rdtype, use_edns=0, payload=1232))
        if response.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise RegistryError(self._why(f"browse ({name} {rdtype.name})", response.rcode(), query=True))
        return response

    def _new_update(self) -> dns.update.UpdateMessage:
        return dns.update.UpdateMessage(self.zone, keyring=self._key)

    async def _send(self, update: dns.update.UpdateMessage, action: str, *, guarded: bool = False) -> dns.rcode.Rcode:
        """Send one signed UPDATE over TCP. Raises RegistryError unless it succeeded (or, `guarded`, one of its
        prerequisites did not hold: then that rcode is returned)."""
        host, port = self._address
        try:
            response = await dns.asyncquery.tcp(update, host, port=port, timeout=self.timeout)
        except (OSError, EOFError, dns.exception.DNSException) as exc:
            self._error(self._why(action, exc))
            raise RegistryError(self._why(action, exc)) from None
        rcode = response.rcode()
        if rcode == dns.rcode.NOERROR or (guarded and rcode in PREREQUISITE_FAILED):
            return rcode
        self._error(self._why(action, rcode))
        raise RegistryError(self._why(action, rcode))

    def _error(self, message: str) -> None:
        self._health.errors += 1
        self._health.last_error = message

    # ------------------------------------------------------------------ publishing

    def _publish_update(self, owned: _Owned) -> dns.update.UpdateMessage:
        update = self._new_update()
        update.delete(owned.name)  # replace whatever the instance name held (idempotent re-publish)
        for record in owned.records:
            rdata = dns.rdata.from_text(IN, record.rdtype, record.text)
            update.add(record.name, record.ttl, rdata)
        return update

    async def publish(self, key: ServiceKey, instance: Instance) -> Publication:
        self._check_open()
        label = dnssd.endpoint_label(instance.host, instance.port)
        try:
            records = dnssd.records_for(key, instance, self.zone, label, self.site or None,
                                        gateway_id=self.gateway_id, ttl=self.ttl)
        except ValueError as exc:
            raise RegistryError(f"dns registry: cannot publish {key.interface} at {label}: {exc}") from None
        name = dnssd.instance_name(key, self.zone, label)
        txt = next(r for r in records if r.rdtype == RdataType.TXT)
        owned = _Owned(
            name=name,
            browse=dnssd.browse_name(key, self.zone),
            enumeration=dnssd.enumeration_name(key, self.zone),
            txt=dns.rdataset.from_text(IN, RdataType.TXT, 0, txt.text),
            key=key,
            instance=instance,
            records=records,
        )
        async with self._write_lock:
            other = self._owned.get(name)
            if other is not None and other.key != key:
                raise RegistryError(
                    f"dns registry: {key.interface} at {label} would overwrite {other.key.interface if other.key else '?'}"
                    f" at the same DNS name {name} (DNS names ignore case); publish them on different endpoints"
                )
            started = trio.current_time()
            await self._send(self._publish_update(owned), f"publish {name}")
            self._owned[name] = owned
            self._poll_now.set()  # our own change: subscribers of this adapter see it without waiting
        log.info("registry.dns.published", name=name.to_text(), service=key.interface, protocol=key.protocol,
                 address=f"{instance.host}:{instance.port}", zone=self.zone.to_text(), ttl=self.ttl,
                 liveness=self.liveness, ms=round((trio.current_time() - started) * 1000, 1))
        return Publication(key, instance, liveness=self.liveness, handle=name)

    async def unpublish(self, publication: Publication) -> None:
        self._check_open()
        name = publication.handle
        async with self._write_lock:
            owned = self._owned.get(name)  # type: ignore[arg-type]
            if owned is None or owned.key != publication.key:
                return  # withdrawn already
            del self._owned[owned.name]
            await self._withdraw(owned)
            self._poll_now.set()

    async def _withdraw(self, owned: _Owned) -> bool:
        """Delete one instance if its TXT is still what we wrote (or read); False when someone changed it."""
        update = self._new_update()
        update.present(owned.name, owned.txt)  # value-dependent prerequisite (RFC 2136 2.4.2)
        update.delete(owned.name)
        update.delete(owned.browse, dns.rdata.from_text(IN, RdataType.PTR, owned.name.to_text()))
        rcode = await self._send(update, f"withdraw {owned.name}", guarded=True)
        if rcode != dns.rcode.NOERROR:
            log.info("registry.dns.withdraw_skipped", name=owned.name.to_text(), rcode=dns.rcode.to_text(rcode),
                     reason="its TXT is no longer what this gateway wrote: someone re-published it")
            return False
        # the service type's enumeration PTR goes only with the last instance of that type
        update = self._new_update()
        update.absent(owned.browse, RdataType.PTR)
        update.delete(owned.enumeration, dns.rdata.from_text(IN, RdataType.PTR, owned.browse.to_text()))
        await self._send(update, f"withdraw {owned.enumeration}", guarded=True)
        log.info("registry.dns.withdrawn", name=owned.name.to_text(), zone=self.zone.to_text())
        return True

    async def _withdraw_all(self) -> None:
        """Graceful withdrawal of everything we published; shielded (it runs while the gateway is being
        cancelled) and bounded, so a dead server cannot hold the shutdown."""
        if not self._owned:
            return
        limit = 2 * self.timeout + 1
        left = list(self._owned.values())
        with trio.CancelScope(shield=True, deadline=trio.current_time() + limit) as scope:
            async with self._write_lock:
                left, self._owned = list(self._owned.values()), {}
                while left:
                    try:
                        await self._withdraw(left[0])
                    except RegistryError as exc:
                        log.warning("registry.dns.withdraw_failed", name=left[0].name.to_text(), error=str(exc),
                                    hint="the records stay until this gateway starts again")
                    left.pop(0)
        if scope.cancelled_caught:
            log.warning("registry.dns.withdraw_failed", error=f"gave up after {limit:g}s", left=len(left),
                        hint="the records stay until this gateway starts again")

    async def _reassert_forever(self) -> None:
        while True:
            with trio.move_on_after(self.reassert_interval):
                await self._reassert_now.wait()
            self._reassert_now = trio.Event()
            if not self._connected:
                continue  # coming back sets _reassert_now
            for owned in list(self._owned.values()):
                async with self._write_lock:
                    if self._owned.get(owned.name) is not owned:
                        continue
                    try:
                        await self._send(self._publish_update(owned), f"re-assert {owned.name}")
                    except RegistryError as exc:
                        log.warning("registry.dns.reassert_failed", name=owned.name.to_text(), error=str(exc))

    # ------------------------------------------------------------------ a previous run's records

    def _is_ours(self, name: dns.name.Name, txt: dns.rdataset.Rdataset) -> bool:
        if self.gateway_id is None or len(name.labels) < 4 or not name.is_subdomain(self.zone):
            return False
        if name.labels[1] not in SERVICE_PROTOCOL_LABELS or name.labels[2] != b"_tcp":
            return False
        pairs = dnssd.parse_txt(list(next(iter(txt)).strings))  # type: ignore[attr-defined]
        return pairs.get("gw") == self.site and pairs.get("gwid", pairs.get("gw")) == self.gateway_id

    async def _remove_leftovers(self) -> None:
        """Delete the instances a previous run of this gateway left in the zone (see the module docstring)."""
        if self.gateway_id is None:
            return
        started = trio.current_time()
        zone = dns.zone.Zone(self.zone)
        query, _ = dns.xfr.make_query(zone, serial=None, keyring=self._key)
        try:
            await dns.asyncquery.inbound_xfr(self._address[0], zone, query, port=self._address[1],
                                             timeout=self.timeout, lifetime=10 * self.timeout)
        except dns.xfr.TransferError as exc:
            log.warning("registry.dns.leftovers_unchecked", server=self.server, zone=self.zone.to_text(),
                        error=str(exc), hint=f"allow-transfer {{ key {self.tsig_name}; }} in the zone lets the gateway "
                        "remove the records a crashed run left behind")
            return
        except (OSError, EOFError, dns.exception.DNSException) as exc:
            raise RegistryError(self._why("read the zone (AXFR) to remove a previous run's records", exc)) from None
        leftovers = []
        for relative, node in zone.nodes.items():
            txt = node.get_rdataset(IN, RdataType.TXT)
            name = relative.derelativize(self.zone)
            if txt is None or not self._is_ours(name, txt):
                continue
            browse = name.parent()
            prerequisite = dns.rdataset.Rdataset(IN, RdataType.TXT)
            prerequisite.update(txt)
            prerequisite.ttl = 0
            leftovers.append(_Owned(name=name, browse=browse, txt=prerequisite,
                                    enumeration=dnssd.ENUMERATION_PREFIX.concatenate(browse.parent().parent())))
        removed = 0
        for owned in leftovers:
            if await self._withdraw(owned):
                removed += 1
        log.info("registry.dns.leftovers_removed", zone=self.zone.to_text(), site=self.site,
                 gateway_id=self.gateway_id, found=len(leftovers), removed=removed,
                 names=[o.name.to_text() for o in leftovers][:20],
                 ms=round((trio.current_time() - started) * 1000, 1))

    # ------------------------------------------------------------------ watching

    def _signal(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _set_connected(self, connected: bool, error: str | None = None) -> None:
        now = trio.current_time()
        if connected:
            self._health.last_sync = now
            if not self._connected:
                self._connected = True
                self._health.connected = True
                if self._health.stale_since is not None:
                    log.info("registry.dns.reachable", server=self.server, zone=self.zone.to_text(),
                             serial=self._serial, down_s=round(now - self._health.stale_since, 2))
                self._health.stale_since = None
                self._cache = _AnswerCache()
                self._reassert_now.set()  # the server may have lost what we wrote
                self._signal()
        else:
            if error is not None:
                self._error(error)
            if self._connected:
                self._connected = False
                self._health.connected = False
                self._health.stale_since = now
                log.warning("registry.dns.unreachable", server=self.server, zone=self.zone.to_text(), error=error)
                self._signal()

    async def _poll_once(self) -> None:
        async with self._poll_lock:  # one at a time, so serials are applied in the order they were read
            try:
                serial = await self._soa_serial()
            except _Unreachable as exc:
                self._set_connected(False, self._why("poll the SOA serial", exc))
                return
            except RegistryError as exc:
                self._set_connected(False, str(exc))
                return
            self._apply_serial(serial)

    def _apply_serial(self, serial: int) -> None:
        previous, self._serial = self._serial, serial
        self._set_connected(True)
        if serial != previous:
            self._cache.keep_only(serial)
            if previous is not None and dns.serial.Serial(serial) < dns.serial.Serial(previous):
                self._reassert_now.set()  # the zone went back (restored, recreated): write ours again
            self._signal()

    async def _watch_zone(self) -> None:
        while True:
            with trio.move_on_after(self.poll_interval):
                await self._poll_now.wait()
            self._poll_now = trio.Event()
            await self._poll_once()

    async def _bind_notify(self) -> trio.socket.SocketType:
        assert self._notify is not None
        host, port = self._notify
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = trio.socket.socket(family, socket.SOCK_DGRAM)
        try:
            await sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise RegistryError(f"dns registry: cannot listen for NOTIFY on {host}:{port}: {exc}") from None
        self.notify_address = sock.getsockname()[:2]
        return sock

    async def _serve_notify(self, sock: trio.socket.SocketType) -> None:
        """Answer NOTIFYs for our zone from our server and poll the SOA at once (RFC 1996)."""
        while True:
            try:
                data, addr = await sock.recvfrom(65535)
            except OSError:
                continue
            if addr[0] != self._address[0]:
                log.debug("registry.dns.notify_ignored", source=addr[0], reason="not from the configured server")
                continue
            try:
                message = dns.message.from_wire(data, keyring=self._key)
            except Exception:  # noqa: BLE001 - garbage or a bad signature: ignore it
                log.debug("registry.dns.notify_ignored", source=addr[0], reason="malformed or badly signed")
                continue
            if message.opcode() != dns.opcode.NOTIFY or message.flags & dns.flags.QR:
                continue
            response = dns.message.make_response(message)
            if not message.question or message.question[0].name != self.zone:
                response.set_rcode(dns.rcode.NOTAUTH)
            else:
                self._poll_now.set()
            try:
                await sock.sendto(response.to_wire(max_size=65535), addr)
            except OSError:
                pass

    @asynccontextmanager
    async def subscribe(self, key: ServiceKey) -> AsyncIterator[AsyncIterator[InstanceSet]]:
        self._check_open()
        dnssd.browse_name(key, self.zone)  # an unknown protocol fails here, not in the task
        channel: LatestValue[InstanceSet] = LatestValue()
        self._channels.add(channel)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._follow, key, channel)
                try:
                    yield channel
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self._channels.discard(channel)
            channel.close()

    async def _follow(self, key: ServiceKey, channel: LatestValue[InstanceSet]) -> None:
        """One subscription: browse when the serial moved (or a cached answer expired), send what changed."""
        last: InstanceSet | None = None
        fingerprint: frozenset | None = None
        browsed_serial: int | None = None
        refresh_at = math.inf
        reported: set[tuple[dns.name.Name, str]] = set()
        await self._poll_once()  # the first set is labelled with a serial read now, not at the last poll

        def stale() -> None:
            nonlocal last
            if last is None or not last.stale:
                last = InstanceSet(key, last.instances if last else frozenset(), last.revision if last else "", True)
                channel.set(last)

        def bad_entry(entry: dnssd.BadEntry) -> None:
            if (entry.name, entry.reason) not in reported:  # once per subscription, not at every refresh
                reported.add((entry.name, entry.reason))
                log.warning("registry.dns.bad_entry", service=key.interface, name=entry.name.to_text(),
                            reason=entry.reason, server=self.server)

        retry_at = -math.inf  # after a failed browse: not before this
        failing = False  # log a streak of failed browses once
        while True:
            changed = self._changed
            now = trio.current_time()
            wake_at = refresh_at
            if not self._connected:
                stale()
                browsed_serial, refresh_at, wake_at = None, math.inf, math.inf  # browse afresh when it is back
            elif browsed_serial != self._serial or now >= refresh_at:
                if now < retry_at:
                    wake_at = retry_at
                else:
                    serial = self._serial
                    assert serial is not None
                    try:
                        instances, expires = await self._browse(key, serial, bad_entry)
                    except (_Unreachable, RegistryError) as exc:
                        message = self._why(f"browse {key.interface}", exc) if isinstance(exc, _Unreachable) else str(exc)
                        self._error(message)
                        if not failing:
                            log.warning("registry.dns.browse_failed", service=key.interface, error=message,
                                        retry_every_s=self.poll_interval)
                        failing = True
                        stale()
                        self._poll_now.set()  # is the server gone? the watcher finds out and signals
                        retry_at = wake_at = trio.current_time() + self.poll_interval
                    else:
                        failing = False
                        browsed_serial = serial
                        refresh_at = max(expires, trio.current_time() + self.poll_interval)
                        self._health.last_sync = trio.current_time()
                        current = InstanceSet(key, instances, str(serial), False)
                        new_fingerprint = _fingerprint(instances)
                        if last is None or last.stale or new_fingerprint != fingerprint:
                            channel.set(current)
                            log.info("registry.dns.instances", service=key.interface, protocol=key.protocol,
                                     serial=serial, count=len(instances))
                        last, fingerprint = current, new_fingerprint
                        continue  # the serial may have moved while we browsed
            with trio.move_on_at(wake_at):
                await changed.wait()

    async def _browse(
        self, key: ServiceKey, serial: int, on_bad_entry: Callable[[dnssd.BadEntry], None]
    ) -> tuple[frozenset[Instance], float]:
        """The instances of `key` at `serial`, reusing answers read at that serial within their TTL; returns
        them and when the first answer used expires."""
        expiries: list[float] = []

        async def lookup(name: dns.name.Name, rdtype: RdataType) -> dns.message.Message:
            now = trio.current_time()
            hit = self._cache.get(name, rdtype, serial, now)
            if hit is None:
                response = await self._query(name, rdtype)
                hit = _Cached(serial, now + _ttl_of(response, name, rdtype), response)
                self._cache.put(name, rdtype, hit)
            expiries.append(hit.expires)
            return hit.response

        instances = await dnssd.browse_with(lookup, key, self.zone, on_bad_entry=on_bad_entry)
        return instances, min(expiries, default=math.inf)

    # ------------------------------------------------------------------ health

    def health(self) -> RegistryHealth:
        h = self._health
        return RegistryHealth(connected=h.connected, last_sync=h.last_sync, stale_since=h.stale_since,
                              errors=h.errors, last_error=h.last_error)
