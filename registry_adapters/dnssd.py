"""DNS-SD (RFC 6763) mapping of RPC services, an embedded responder and the browse client.

Naming convention (REGISTRIES.md 3.2)::

    service domain  <interface labels, lower-cased>[.uid-<uniqueId>].svc.<zone>
                    (a label > 63 octets or a name > 230 chars: h-<base32 sha256[:26]>.svc.<zone>)
    browse          _bolt._tcp.<service domain>  PTR  <label>._bolt._tcp.<service domain>
    instance        SRV 0 <weight> <port> <target>; TXT txtvers=1 interface=... (TTL 10)
    target          ip-127-0-0-1.hosts.<zone>  A  127.0.0.1  (TTL 300)
    enumeration     _services._dns-sd._udp.<service domain>  PTR  _bolt._tcp.<service domain>

DNS is case-insensitive but Java interfaces are not: the TXT ``interface=`` carries the exact
name and :func:`browse` compares it exactly.

The loop-guard marker (``base.GATEWAY_MARK`` in ``Instance.meta``) is spelled ``gw=<site>`` in TXT
(plus ``gwid=<gateway id>`` when the publisher names itself, for withdrawing a previous run's records);
:func:`instance_meta` maps it back.

The naming and record functions are pure; :class:`EmbeddedResponder` (trio) serves an
in-memory zone for the lab and tests; :func:`browse` is the client (dnspython, trio backend).
The external registry (``dnsupdate.DnsUpdateRegistry``, RFC 2136 to BIND) writes the same records
with :func:`records_for` and reads them with the same :func:`browse_with` as :func:`browse`.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import struct
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple

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
import dns.rdtypes.ANY.SOA
import dns.rdtypes.IN.SRV
import dns.rdtypes.ANY.TXT
import dns.rrset
import structlog
import trio

from .base import GATEWAY_MARK
from .model import Instance, ServiceKey

__all__ = [
    "BadEntry",
    "DnsSdError",
    "EmbeddedResponder",
    "Lookup",
    "Record",
    "browse",
    "browse_name",
    "browse_with",
    "endpoint_label",
    "enumeration_name",
    "host_name",
    "instance_meta",
    "instance_name",
    "parse_txt",
    "records_for",
    "service_domain",
    "service_type",
]

log = structlog.get_logger("registry_adapters.dnssd")

RdataType = dns.rdatatype.RdataType

INSTANCE_TTL = 10
HOST_TTL = 300
MAX_LABEL_OCTETS = 63
MAX_DOMAIN_CHARS = 230
HASH_CHARS = 26
SERVICE_TYPES: Mapping[str, str] = {"bolt": "_bolt._tcp", "tri": "_tri._tcp"}
ENUMERATION_PREFIX = dns.name.from_text("_services._dns-sd._udp", origin=None)
# TXT keys describing the ServiceKey itself; everything else is Instance.meta.
KEY_TXT_KEYS = frozenset({"txtvers", "interface", "uniqueId", "version", "group", "protocol"})


class DnsSdError(Exception):
    """A DNS server answered a browse query with an unexpected rcode."""


class Record(NamedTuple):
    """One resource record as produced by :func:`records_for`."""

    name: dns.name.Name
    rdtype: RdataType
    ttl: int
    text: str  # rdata in presentation format


# --------------------------------------------------------------------------- naming


def _zone_name(zone: str | dns.name.Name) -> dns.name.Name:
    return zone if isinstance(zone, dns.name.Name) else dns.name.from_text(zone)


def service_domain(key: ServiceKey, zone: str | dns.name.Name) -> dns.name.Name:
    """``<interface labels, lower-cased>[.uid-<uniqueId>].svc.<zone>`` (or the hashed form)."""
    origin = _zone_name(zone)
    parts = key.interface.lower().split(".")
    if key.unique_id:
        parts.append("uid-" + key.unique_id.lower())
    labels = [part.encode("utf-8") for part in parts]
    text = ".".join(parts)
    if (
        not key.interface
        or any(not label or len(label) > MAX_LABEL_OCTETS for label in labels)
        or len(text) + len(".svc.") + len(origin.to_text()) > MAX_DOMAIN_CHARS
    ):
        digest = hashlib.sha256(text.encode("utf-8")).digest()
        labels = [b"h-" + base64.b32encode(digest)[:HASH_CHARS].lower()]
    return dns.name.Name([*labels, b"svc", *origin.labels])


def service_type(protocol: str) -> dns.name.Name:
    """``_bolt._tcp`` or ``_tri._tcp`` as a relative name."""
    try:
        return dns.name.from_text(SERVICE_TYPES[protocol], origin=None)
    except KeyError:
        raise ValueError(f"no DNS-SD service type for protocol {protocol!r}") from None


def browse_name(key: ServiceKey, zone: str | dns.name.Name) -> dns.name.Name:
    """``<service type>.<service domain>``: owner of the browse PTR RRset."""
    return service_type(key.protocol).concatenate(service_domain(key, zone))


def instance_name(key: ServiceKey, zone: str | dns.name.Name, label: str) -> dns.name.Name:
    """``<label>._bolt._tcp.<service domain>``; ``label`` is one label (dots kept, escaped)."""
    raw = label.encode("utf-8")
    if not raw or len(raw) > MAX_LABEL_OCTETS:
        raise ValueError(f"instance label must be 1..63 octets: {label!r}")
    return dns.name.Name([raw, *browse_name(key, zone).labels])


def enumeration_name(key: ServiceKey, zone: str | dns.name.Name) -> dns.name.Name:
    """``_services._dns-sd._udp.<service domain>``: owner of the service-type enumeration PTRs."""
    return ENUMERATION_PREFIX.concatenate(service_domain(key, zone))


def endpoint_label(host: str, port: int) -> str:
    """The instance label of one endpoint: ``<host>:<port>`` (``[v6]:port``); unique per endpoint.
    A label that would exceed 63 octets becomes ``h-<base32 sha256[:26]>:<port>``."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        text = f"{host}:{port}"
    else:
        text = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
    if len(text.encode("utf-8")) > MAX_LABEL_OCTETS:
        digest = base64.b32encode(hashlib.sha256(host.encode("utf-8")).digest())[:HASH_CHARS].lower()
        text = f"h-{digest.decode()}:{port}"
    return text


def host_name(ip: str, zone: str | dns.name.Name) -> dns.name.Name:
    """``ip-127-0-0-1.hosts.<zone>`` (IPv6: ``ip6-<exploded, ':' -> '-'>.hosts.<zone>``)."""
    address = ipaddress.ip_address(ip)
    if address.version == 4:
        label = "ip-" + str(address).replace(".", "-")
    else:
        label = "ip6-" + address.exploded.replace(":", "-")
    return dns.name.Name([label.encode("ascii"), b"hosts", *_zone_name(zone).labels])


def _target(host: str, zone: str | dns.name.Name) -> tuple[dns.name.Name, Record | None]:
    """The SRV target of ``host`` and its address record (None when host is a DNS name)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return dns.name.from_text(host), None
    name = host_name(host, zone)
    rdtype = RdataType.A if address.version == 4 else RdataType.AAAA
    return name, Record(name, rdtype, HOST_TTL, str(address))


def _txt_string(item: str) -> str:
    raw = item.encode("utf-8")
    if len(raw) > 255:
        raise ValueError(f"TXT string longer than 255 octets: {item[:40]!r}...")
    escaped = raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return '"' + "".join(chr(b) if 0x20 <= b < 0x7F else f"\\{b:03d}" for b in escaped) + '"'


def records_for(
    key: ServiceKey,
    instance: Instance,
    zone: str | dns.name.Name,
    label: str,
    site: str | None = None,
    *,
    gateway_id: str | None = None,
    ttl: int | None = None,
) -> list[Record]:
    """All records one publication consists of: browse PTR, SRV, TXT, target A, enumeration PTR.

    ``site`` adds the loop guard (TXT ``site=`` and ``gw=``; ``meta[GATEWAY_MARK]`` is then implied and not
    written twice; without ``site`` a ``meta[GATEWAY_MARK]`` is written as ``gw=``). ``gateway_id`` adds
    ``gwid=``, the publisher's own name. ``ttl`` overrides the instance records' TTL (default 10 s); the
    host address keeps its own (300 s)."""
    stype = browse_name(key, zone)
    name = instance_name(key, zone, label)
    target, address = _target(instance.host, zone)
    meta = dict(instance.meta)
    mark = meta.pop(GATEWAY_MARK, None)
    if site is None and mark is not None:
        meta["gw"] = mark
    reserved = KEY_TXT_KEYS | ({"site", "gw"} if site is not None else set())
    if gateway_id is not None:
        reserved |= {"gwid"}
    clash = reserved.intersection(meta)
    if clash:
        raise ValueError(f"meta keys clash with reserved TXT keys: {sorted(clash)}")
    txt = [
        "txtvers=1",
        f"interface={key.interface}",
        f"uniqueId={key.unique_id}",
        f"version={key.version}",
        f"group={key.group}",
        f"protocol={key.protocol}",
        *(f"{k}={v}" for k, v in meta.items()),
    ]
    if site is not None:
        txt += [f"site={site}", f"gw={site}"]
    if gateway_id is not None:
        txt.append(f"gwid={gateway_id}")
    instance_ttl = INSTANCE_TTL if ttl is None else ttl
    records = [
        Record(stype, RdataType.PTR, instance_ttl, name.to_text()),
        Record(
            name,
            RdataType.SRV,
            instance_ttl,
            f"0 {instance.weight} {instance.port} {target.to_text()}",
        ),
        Record(name, RdataType.TXT, instance_ttl, " ".join(_txt_string(t) for t in txt)),
    ]
    if address is not None:
        records.append(address)
    records.append(Record(enumeration_name(key, zone), RdataType.PTR, instance_ttl, stype.to_text()))
    return records


def parse_txt(strings: list[bytes]) -> dict[str, str]:
    """TXT strings ``key=value`` (a bare ``key`` is a boolean attribute, value "")."""
    pairs: dict[str, str] = {}
    for raw in strings:
        item = raw.decode("utf-8", errors="replace")
        k, _, v = item.partition("=")
        if k and k not in pairs:  # RFC 6763 6.4: the first occurrence wins
            pairs[k] = v
    return pairs


def instance_meta(pairs: Mapping[str, str]) -> dict[str, str]:
    """``Instance.meta`` from parsed TXT pairs: everything but the ServiceKey's own keys, and the TXT
    ``gw=`` loop guard also as ``meta[GATEWAY_MARK]`` (what ``base.without_gateways`` looks at)."""
    meta = {k: v for k, v in pairs.items() if k not in KEY_TXT_KEYS}
    if "gw" in meta:
        meta.setdefault(GATEWAY_MARK, meta["gw"])
    return meta


# --------------------------------------------------------------------------- responder

Node = dict[RdataType, dns.rdataset.Rdataset]


class EmbeddedResponder:
    """A small authoritative DNS server for one zone, serving DNS-SD records over UDP and TCP.

    Not a general DNS server: no UPDATE, no zone transfer, no DNSSEC, no recursion, no CNAME.
    ``publish``/``unpublish`` change the in-memory zone synchronously and bump the SOA serial.
    """

    def __init__(
        self,
        zone: str,
        listen_host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_tcp_connections: int = 64,
        tcp_read_timeout: float = 5.0,
    ) -> None:
        self.origin = dns.name.from_text(zone)
        self.listen_host = listen_host
        self.port = port
        self.tcp_read_timeout = tcp_read_timeout
        self._tcp_slots = trio.Semaphore(max_tcp_connections)
        self._nodes: dict[dns.name.Name, Node] = {}
        self._existing: set[dns.name.Name] = set()  # owner names and their ancestors in the zone
        ns = dns.name.Name([b"ns1", *self.origin.labels])
        self._serial = 1
        self._add(self.origin, RdataType.NS, 30, ns.to_text())
        if _is_ip(listen_host):
            self._add(ns, _address_type(listen_host), 30, listen_host)
        self._write_soa()
        self._reindex()

    # -- zone data

    @property
    def serial(self) -> int:
        return self._serial

    def _write_soa(self) -> None:
        soa = f"ns1.{self.origin} hostmaster.{self.origin} {self._serial} 60 30 3600 5"
        self._nodes.setdefault(self.origin, {}).pop(RdataType.SOA, None)
        self._add(self.origin, RdataType.SOA, 30, soa)

    def _bump(self) -> None:
        self._serial = self._serial % 0xFFFFFFFF + 1
        self._write_soa()
        self._reindex()

    def _reindex(self) -> None:
        existing: set[dns.name.Name] = set()
        for name in self._nodes:
            while name not in existing and name.is_subdomain(self.origin):
                existing.add(name)
                if name == self.origin:
                    break
                name = name.parent()
        self._existing = existing

    def _add(self, name: dns.name.Name, rdtype: RdataType, ttl: int, text: str) -> None:
        rdata = dns.rdata.from_text(dns.rdataclass.IN, rdtype, text)
        node = self._nodes.setdefault(name, {})
        rdataset = node.get(rdtype)
        if rdataset is None:
            rdataset = node[rdtype] = dns.rdataset.Rdataset(dns.rdataclass.IN, rdtype)
        rdataset.add(rdata, ttl)
        self._existing.add(name)

    def _remove_instance(self, key: ServiceKey, label: str) -> bool:
        name = instance_name(key, self.origin, label)
        stype = browse_name(key, self.origin)
        removed = self._nodes.pop(name, None) is not None
        browse_node = self._nodes.get(stype, {})
        ptrs = browse_node.get(RdataType.PTR)
        if ptrs is not None:
            kept = [rd for rd in ptrs if rd.target != name]  # type: ignore[attr-defined]
            if len(kept) != len(ptrs):
                removed = True
                if kept:
                    browse_node[RdataType.PTR] = dns.rdataset.from_rdata_list(ptrs.ttl, kept)
                else:
                    del self._nodes[stype]
                    self._forget_enumeration(key, stype)
        return removed

    def _forget_enumeration(self, key: ServiceKey, stype: dns.name.Name) -> None:
        enumeration = ENUMERATION_PREFIX.concatenate(service_domain(key, self.origin))
        node = self._nodes.get(enumeration, {})
        ptrs = node.get(RdataType.PTR)
        if ptrs is None:
            return
        kept = [rd for rd in ptrs if rd.target != stype]  # type: ignore[attr-defined]
        if kept:
            node[RdataType.PTR] = dns.rdataset.from_rdata_list(ptrs.ttl, kept)
        else:
            del self._nodes[enumeration]

    def _collect_hosts(self) -> None:
        """Drop ``*.hosts.<zone>`` names no SRV targets any more."""
        hosts = dns.name.Name([b"hosts", *self.origin.labels])
        targets = {
            rd.target  # type: ignore[attr-defined]
            for node in self._nodes.values()
            for rd in node.get(RdataType.SRV, ())
        }
        for name in [n for n in self._nodes if n.is_subdomain(hosts) and n not in targets]:
            del self._nodes[name]

    def publish(
        self,
        key: ServiceKey,
        instance: Instance,
        label: str,
        site: str | None = None,
        *,
        gateway_id: str | None = None,
    ) -> None:
        """Add (or replace) one instance; idempotent apart from the serial bump."""
        records = records_for(key, instance, self.origin, label, site, gateway_id=gateway_id)  # validate first
        self._remove_instance(key, label)
        for record in records:
            if record.rdtype is RdataType.A or record.rdtype is RdataType.AAAA:
                self._nodes.get(record.name, {}).pop(record.rdtype, None)
            self._add(record.name, record.rdtype, record.ttl, record.text)
        self._collect_hosts()
        self._bump()

    def unpublish(self, key: ServiceKey, label: str) -> None:
        """Remove one instance (browse PTR and instance name); unknown labels change nothing."""
        if self._remove_instance(key, label):
            self._collect_hosts()
            self._bump()

    # -- answering

    def _soa_rrset(self) -> dns.rrset.RRset:
        rdataset = self._nodes[self.origin][RdataType.SOA]
        soa: dns.rdtypes.ANY.SOA.SOA = next(iter(rdataset))  # type: ignore[assignment]
        rrset = dns.rrset.RRset(self.origin, dns.rdataclass.IN, RdataType.SOA)
        rrset.update(rdataset)
        rrset.ttl = min(rdataset.ttl, soa.minimum)  # RFC 2308 negative caching TTL
        return rrset

    def _rrset(self, name: dns.name.Name, rdataset: dns.rdataset.Rdataset) -> dns.rrset.RRset:
        rrset = dns.rrset.RRset(name, dns.rdataclass.IN, rdataset.rdtype)
        rrset.update(rdataset)
        return rrset

    def _resolve(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
            return response
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        qname, qtype = question.name, question.rdtype
        if (
            question.rdclass != dns.rdataclass.IN
            or not qname.is_subdomain(self.origin)
            or qtype in (RdataType.AXFR, RdataType.IXFR)
        ):
            response.set_rcode(dns.rcode.REFUSED)
            return response
        response.flags |= dns.flags.AA
        if qname not in self._existing:
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(self._soa_rrset())
            return response
        node = self._nodes.get(qname, {})
        if qtype == RdataType.ANY:
            found = list(node.values())
        else:
            found = [node[qtype]] if qtype in node else []
        if not found:
            response.authority.append(self._soa_rrset())
            return response
        for rdataset in found:
            response.answer.append(self._rrset(qname, rdataset))
            if rdataset.rdtype == RdataType.SRV:
                for srv in rdataset:
                    target = srv.target  # type: ignore[attr-defined]
                    for atype in (RdataType.A, RdataType.AAAA):
                        extra = self._nodes.get(target, {}).get(atype)
                        if extra is not None:
                            response.additional.append(self._rrset(target, extra))
        return response

    def respond(self, wire: bytes, *, over_tcp: bool) -> bytes | None:
        """The wire answer to one query, or None when the query is to be ignored."""
        try:
            query = dns.message.from_wire(wire)
        except Exception:  # noqa: BLE001 - any garbage is just dropped
            log.debug("dnssd.query.malformed", size=len(wire), tcp=over_tcp)
            return None
        if query.flags & dns.flags.QR:
            return None  # never answer responses
        try:
            response = self._resolve(query)
            if over_tcp:
                return response.to_wire(max_size=65535)
            limit = max(512, query.payload) if query.edns >= 0 else 512
            try:
                return response.to_wire(max_size=limit)
            except dns.exception.TooBig:
                pass
            if response.additional:  # optional data: drop it silently first
                response.additional = []
                try:
                    return response.to_wire(max_size=limit)
                except dns.exception.TooBig:
                    pass
            response.answer, response.authority = [], []
            response.flags |= dns.flags.TC
            return response.to_wire(max_size=limit)
        except Exception:  # noqa: BLE001 - keep serving; answer SERVFAIL if we can
            log.warning("dnssd.query.failed", exc_info=True)
            try:
                failure = dns.message.make_response(query)
                failure.set_rcode(dns.rcode.SERVFAIL)
                return failure.to_wire(max_size=512)
            except Exception:  # noqa: BLE001
                return None

    # -- transport

    async def run(
        self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled; reports the bound ``(host, port)`` (same port, UDP and TCP)."""
        udp, tcp = await self._bind()
        with udp, tcp:
            port = udp.getsockname()[1]
            self.port = port
            log.info("dnssd.responder.listening", zone=self.origin.to_text(), port=port)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._serve_udp, udp)
                nursery.start_soon(self._serve_tcp, tcp, nursery)
                task_status.started((self.listen_host, port))

    async def _bind(self) -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
        family = trio.socket.AF_INET6 if ":" in self.listen_host else trio.socket.AF_INET
        attempts = 20 if self.port == 0 else 1
        for attempt in range(attempts):
            udp = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
            tcp = trio.socket.socket(family, trio.socket.SOCK_STREAM)
            try:
                tcp.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
                await udp.bind((self.listen_host, self.port))
                await tcp.bind((self.listen_host, udp.getsockname()[1]))
                tcp.listen(128)
                return udp, tcp
            except OSError:
                udp.close()
                tcp.close()
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    async def _serve_udp(self, sock: trio.socket.SocketType) -> None:
        while True:
            try:
                data, addr = await sock.recvfrom(65535)
            except OSError:
                continue
            reply = self.respond(data, over_tcp=False)
            if reply is not None:
                try:
                    await sock.sendto(reply, addr)
                except OSError:
                    pass

    async def _serve_tcp(self, sock: trio.socket.SocketType, nursery: trio.Nursery) -> None:
        while True:
            await self._tcp_slots.acquire()
            try:
                conn, _ = await sock.accept()
            except OSError:
                self._tcp_slots.release()
                await trio.sleep(0.01)  # e.g. EMFILE: do not spin
                continue
            except BaseException:
                self._tcp_slots.release()
                raise
            nursery.start_soon(self._serve_connection, trio.SocketStream(conn))

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        try:
            async with stream:
                while True:
                    query: bytes | None = None
                    with trio.move_on_after(self.tcp_read_timeout):
                        header = await _receive_exactly(stream, 2)
                        if header is not None:
                            (size,) = struct.unpack("!H", header)
                            query = await _receive_exactly(stream, size)
                    if query is None:
                        return  # closed, timed out or truncated
                    reply = self.respond(query, over_tcp=True)
                    if reply is None:
                        return  # malformed: close this connection only
                    with trio.move_on_after(self.tcp_read_timeout) as send_scope:
                        await stream.send_all(struct.pack("!H", len(reply)) + reply)
                    if send_scope.cancelled_caught:
                        return  # a reader that does not read: drop it
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self._tcp_slots.release()


async def _receive_exactly(stream: trio.SocketStream, size: int) -> bytes | None:
    """``size`` bytes, or None when the peer closed first."""
    buf = bytearray()
    while len(buf) < size:
        chunk = await stream.receive_some(size - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _address_type(host: str) -> RdataType:
    return RdataType.A if ipaddress.ip_address(host).version == 4 else RdataType.AAAA


# --------------------------------------------------------------------------- browse

Lookup = Callable[[dns.name.Name, RdataType], Awaitable[dns.message.Message]]
"""Answers one question (name, type) with the server's whole response; raises on transport errors."""


class BadEntry(NamedTuple):
    """An instance a browse skipped because its records are malformed (logged, never fatal)."""

    name: dns.name.Name
    reason: str


def _log_bad_entry(entry: BadEntry) -> None:
    log.warning("registry.dns.bad_entry", name=entry.name.to_text(), reason=entry.reason)


async def _query(
    server: tuple[str, int], name: dns.name.Name, rdtype: RdataType, timeout: float
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, use_edns=0, payload=1232)
    response, _ = await dns.asyncquery.udp_with_fallback(
        query, server[0], timeout=timeout, port=server[1]
    )
    return _checked(response, name, rdtype)


def _checked(
    response: dns.message.Message, name: dns.name.Name, rdtype: RdataType
) -> dns.message.Message:
    rcode = response.rcode()
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        raise DnsSdError(f"{name} {rdtype.name}: {dns.rcode.to_text(rcode)}")
    return response


def _answer(response: dns.message.Message, name: dns.name.Name, rdtype: RdataType) -> list[Any]:
    for rrset in response.answer:
        if rrset.name == name and rrset.rdtype == rdtype:
            return list(rrset)
    return []


async def _resolve_instance(
    lookup: Lookup, key: ServiceKey, zone: dns.name.Name, name: dns.name.Name
) -> Instance | BadEntry | None:
    """The instance at ``name``; None when it is gone (withdrawn meanwhile) or belongs to another
    service (same DNS name, different case-sensitive interface / uniqueId / protocol)."""
    responses: dict[RdataType, dns.message.Message] = {}

    async def fetch(rdtype: RdataType) -> None:
        responses[rdtype] = await lookup(name, rdtype)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fetch, RdataType.SRV)
        nursery.start_soon(fetch, RdataType.TXT)
    srv_response = responses[RdataType.SRV]
    srvs: list[dns.rdtypes.IN.SRV.SRV] = sorted(
        _answer(srv_response, name, RdataType.SRV), key=lambda rd: (rd.priority, -rd.weight)
    )
    txts: list[dns.rdtypes.ANY.TXT.TXT] = _answer(responses[RdataType.TXT], name, RdataType.TXT)
    if not srvs and not txts:
        return None  # unpublished between the PTR and these queries
    if not txts:
        return BadEntry(name, "SRV without TXT (no interface=, cannot tell which service it is)")
    pairs = parse_txt(list(txts[0].strings))
    if "interface" not in pairs:
        return BadEntry(name, "TXT has no interface=")
    if (
        pairs["interface"] != key.interface
        or pairs.get("uniqueId", "") != key.unique_id
        or pairs.get("protocol", key.protocol) != key.protocol
    ):
        return None  # same DNS name, different (case-sensitive) service
    if not srvs:
        return BadEntry(name, "TXT without SRV (no port, no target)")
    srv = srvs[0]
    if srv.target == dns.name.root:
        return BadEntry(name, "SRV target is '.' (service decidedly not available here)")
    if srv.port == 0:
        return BadEntry(name, "SRV port is 0")
    host = await _address_of(lookup, zone, srv.target, srv_response)
    if host is None:
        return BadEntry(name, f"SRV target {srv.target} has no A/AAAA record in the zone")
    return Instance(host=host, port=srv.port, weight=srv.weight, meta=instance_meta(pairs))


async def _address_of(
    lookup: Lookup, zone: dns.name.Name, target: dns.name.Name, srv_response: dns.message.Message
) -> str | None:
    """The address of an SRV target: from the SRV answer's additional section, else asked for when
    the target is inside the zone (None when it has none); a name outside the zone is returned as
    it is (the authoritative server cannot answer for it; callers resolve it themselves)."""
    for rrset in srv_response.additional:
        if rrset.name == target and rrset.rdtype in (RdataType.A, RdataType.AAAA):
            return str(next(iter(rrset)).address)  # type: ignore[attr-defined]
    if not target.is_subdomain(zone):
        return target.to_text(omit_final_dot=True)
    for rdtype in (RdataType.A, RdataType.AAAA):
        found = _answer(await lookup(target, rdtype), target, rdtype)
        if found:
            return str(found[0].address)
    return None


async def browse_with(
    lookup: Lookup,
    key: ServiceKey,
    zone: str | dns.name.Name,
    *,
    parallel: int = 16,
    on_bad_entry: Callable[[BadEntry], None] = _log_bad_entry,
) -> frozenset[Instance]:
    """The instances of ``key`` in ``zone``, read through ``lookup`` (a plain query, or a cache).

    One PTR query, then SRV + TXT (+ A when not given as additional data) per instance. An instance
    whose records are malformed is reported to ``on_bad_entry`` (default: logged as
    ``registry.dns.bad_entry``) and skipped. Errors of ``lookup`` propagate."""
    origin = _zone_name(zone)
    stype = browse_name(key, origin)
    ptrs = _answer(await lookup(stype, RdataType.PTR), stype, RdataType.PTR)
    found: list[Instance] = []
    limiter = trio.CapacityLimiter(parallel)

    async def resolve(name: dns.name.Name) -> None:
        async with limiter:
            result = await _resolve_instance(lookup, key, origin, name)
        if isinstance(result, BadEntry):
            on_bad_entry(result)
        elif result is not None:
            found.append(result)

    async with trio.open_nursery() as nursery:
        for ptr in {rd.target for rd in ptrs}:
            nursery.start_soon(resolve, ptr)
    return frozenset(found)


async def browse(
    server: tuple[str, int],
    key: ServiceKey,
    zone: str | dns.name.Name,
    *,
    timeout: float = 2.0,
    parallel: int = 16,
) -> frozenset[Instance]:
    """The instances of ``key`` published in ``zone`` on the authoritative ``server``.

    One PTR query, then SRV + TXT (+ A when not given as additional data) per instance; UDP
    answers with TC are retried over TCP. Raises :class:`DnsSdError` on SERVFAIL/REFUSED etc.;
    malformed instances are logged (``registry.dns.bad_entry``) and skipped.
    """

    async def lookup(name: dns.name.Name, rdtype: RdataType) -> dns.message.Message:
        return await _query(server, name, rdtype, timeout)

    return await browse_with(lookup, key, zone, parallel=parallel)
