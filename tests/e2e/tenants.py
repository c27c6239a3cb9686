"""Three tenant sites on loopback for tests/e2e/test_tenant_matrix.py, and raw clients for GW-A's peer port.

Site A is the provider site; sites B and C are tenants that A serves with different rules:

    export                               providers                allow
    com.example.EchoService      Triple  grpcio demo provider     site-b: apps [order-app], methods [echo, add]
    com.example.EchoService:1.0  Bolt    sofa-rpc-node provider   site-c: apps [billing-app], methods [echo, whoami]

Both exports name the same interface, each in its own protocol: a Triple caller reaches the Triple export and a
Bolt caller the Bolt export (where two exports share a name, the one whose providers speak the caller's protocol
natively wins, control/snapshot.py, interlink/routes.py). So over Triple site B is served and site C is refused ("exported only to
the other site"), over Bolt the other way round. A gives each tenant its own access domain
(site-b.gw.site-a.test, site-c.gw.site-a.test) and trusts each tenant's CA for that tenant only.

GW-B and GW-C are real consumer gateways (local Triple and Bolt listeners importing both exports), so the normal
path is covered too; the raw clients below talk to GW-A's peer port directly, as an attacker (or a broken peer
gateway) would: any SNI, any ALPN, any client certificate, any :authority, any stamped caller app.

Nothing here waits longer than a few seconds: every socket has a timeout, every loop a deadline.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from interlink.control.certs import SitePaths, init_site
from interlink.wire import bolt, sofarpc
from interlink.wire.grpc import encode_message
from interlink.wire.hessian2 import HessianObject, SofaHessianReader, SofaHessianWriter
from tests.e2e.rawgrpc import RawResult, grpc_request_headers
from tests.e2e.topology import Gateway, access_domain, free_port

PROVIDER = "site-a"
TENANTS = ("site-b", "site-c")
NON_PEER = "site-d"  # a site with a CA of its own that A has never heard of
ALL_SITES = (PROVIDER, *TENANTS, NON_PEER)

SERVICE = "com.example.EchoService"  # the Triple export (site-b only)
BOLT_SERVICE = f"{SERVICE}:1.0"  # the Bolt export (site-c only), as Bolt callers name it
MISSING = "com.example.Missing"  # exported by nobody
MISSING_BOLT = f"{MISSING}:1.0"

APP = {"site-b": "order-app", "site-c": "billing-app"}  # each tenant's allowed caller application
TRIPLE_METHODS = ["echo", "add"]
BOLT_METHODS = ["echo", "whoami"]

TIMEOUT = 3.0  # any single socket operation or wait in these tests
AUDIT_WAIT = 2.0  # how long an audit line may take to reach GW-A's log


def domain_of(tenant: str) -> str:
    """The access domain A gave `tenant`."""
    return access_domain(tenant, PROVIDER)


# --- certificates -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientCert:
    """A client certificate (or none) to present on GW-A's peer port."""

    cert: Path | None
    key: Path | None
    issuer_site: str | None = None  # whose CA signed it (None: self-signed or none)
    claims: str | None = None  # the site its URI SAN names


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_leaf(
    folder: Path,
    name: str,
    *,
    uri: str,
    issuer: SitePaths | None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> tuple[Path, Path]:
    """A gateway-like leaf (EC P-256, clientAuth + serverAuth, URI SAN `uri`) signed by `issuer`'s CA, or
    self-signed when `issuer` is None; validity as given (default: from 5 minutes ago for a day)."""
    now = dt.datetime.now(dt.timezone.utc)
    not_before = not_before or now - dt.timedelta(minutes=5)
    not_after = not_after or now + dt.timedelta(days=1)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test client")])
    if issuer is None:
        issuer_name, signing_key = subject, key
    else:
        ca_cert = x509.load_pem_x509_certificate(issuer.ca.read_bytes())
        ca_key = serialization.load_pem_private_key(issuer.ca_key.read_bytes(), None)
        issuer_name, signing_key = ca_cert.subject, ca_key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()), critical=False
        )
    cert = builder.sign(signing_key, hashes.SHA256())
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(_key_pem(key))
    key_path.chmod(0o600)
    return cert_path, key_path


def site_uri(site: str, trust_domain: str = "interlink") -> str:
    return f"spiffe://{trust_domain}/site/{site}"


# --- the three sites ----------------------------------------------------------------------------------------


@dataclass
class TenantSites:
    a: Gateway
    b: Gateway
    c: Gateway
    a_peer_port: int
    local_triple: dict[str, str]  # tenant -> GW-x's local Triple (h2c) address
    local_bolt: dict[str, str]  # tenant -> GW-x's local Bolt address
    certs: dict[str, SitePaths]  # site -> its CA and gateway certificate (site-d included)
    clients: dict[str, ClientCert] = field(default_factory=dict)  # named client certificates (tests fill it)

    def gateway(self, site: str) -> Gateway:
        return {"site-a": self.a, "site-b": self.b, "site-c": self.c}[site]

    def own_cert(self, site: str) -> ClientCert:
        paths = self.certs[site]
        return ClientCert(paths.cert, paths.key, issuer_site=site, claims=site)

    def stop(self) -> None:
        for gateway in (self.b, self.c, self.a):
            gateway.stop()


def provider_file(certs: dict[str, SitePaths], *, peer_port: int, tenant_peer_ports: dict[str, int],
                  triple_provider: str, bolt_provider: str) -> dict[str, Any]:
    own = certs[PROVIDER]
    return {
        "site": PROVIDER,
        "listen": {"peer": f"127.0.0.1:{peer_port}"},
        "tls": {"ca": str(own.ca), "cert": str(own.cert), "key": str(own.key)},
        "peers": {
            tenant: {
                "endpoints": [f"127.0.0.1:{port}"],
                "ca": str(certs[tenant].ca),
                "domain": access_domain(PROVIDER, tenant),
            }
            for tenant, port in tenant_peer_ports.items()
        },
        "domains": {tenant: domain_of(tenant) for tenant in tenant_peer_ports},
        "exports": [
            {
                "service": SERVICE,
                "protocol": "triple",
                "providers": [triple_provider],
                "allow": {"site-b": {"apps": [APP["site-b"]], "methods": TRIPLE_METHODS}},
            },
            {
                "service": SERVICE,
                "protocol": "bolt",
                "version": "1.0",
                "providers": [bolt_provider],
                "allow": {"site-c": {"apps": [APP["site-c"]], "methods": BOLT_METHODS}},
            },
        ],
    }


def tenant_file(certs: dict[str, SitePaths], tenant: str, *, triple_port: int, bolt_port: int, peer_port: int,
                provider_peer_port: int) -> dict[str, Any]:
    own = certs[tenant]
    return {
        "site": tenant,
        "listen": {
            "triple": f"127.0.0.1:{triple_port}",
            "bolt": f"127.0.0.1:{bolt_port}",
            "peer": f"127.0.0.1:{peer_port}",
        },
        "tls": {"ca": str(own.ca), "cert": str(own.cert), "key": str(own.key)},
        "peers": {
            PROVIDER: {
                "endpoints": [f"127.0.0.1:{provider_peer_port}"],
                "ca": str(certs[PROVIDER].ca),
                "domain": domain_of(tenant),
            }
        },
        "domains": {PROVIDER: access_domain(PROVIDER, tenant)},
        "imports": [
            {"service": SERVICE, "from": PROVIDER, "protocol": "triple"},
            {"service": SERVICE, "from": PROVIDER, "protocol": "bolt", "version": "1.0"},
        ],
    }


def start_tenant_sites(folder: Path, *, triple_provider: str, bolt_provider: str) -> TenantSites:
    """Certificates for sites A-D (each its own CA), the three site files, and the three gateways (started
    together; returns once all three logged gateway.ready)."""
    folder.mkdir(parents=True, exist_ok=True)
    certs = {
        site: init_site(site, folder / "certs" / site, dns_names=[f"gw.{site}.test", "127.0.0.1"])
        for site in ALL_SITES
    }
    a_peer = free_port()
    ports = {tenant: {"triple": free_port(), "bolt": free_port(), "peer": free_port()} for tenant in TENANTS}
    a = Gateway(
        "tenant-site-a",
        provider_file(
            certs,
            peer_port=a_peer,
            tenant_peer_ports={tenant: ports[tenant]["peer"] for tenant in TENANTS},
            triple_provider=triple_provider,
            bolt_provider=bolt_provider,
        ),
        folder,
    )
    tenants = {
        tenant: Gateway(
            f"tenant-{tenant}",
            tenant_file(
                certs,
                tenant,
                triple_port=ports[tenant]["triple"],
                bolt_port=ports[tenant]["bolt"],
                peer_port=ports[tenant]["peer"],
                provider_peer_port=a_peer,
            ),
            folder,
        )
        for tenant in TENANTS
    }
    gateways = [a, *tenants.values()]
    errors: list[BaseException] = []

    def start(gateway: Gateway) -> None:
        try:
            gateway.start()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(gateway,), daemon=True) for gateway in gateways]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    if errors or any(thread.is_alive() for thread in threads):
        for gateway in gateways:
            gateway.stop()
        raise RuntimeError(f"tenant sites did not start: {errors}")
    return TenantSites(
        a=a,
        b=tenants["site-b"],
        c=tenants["site-c"],
        a_peer_port=a_peer,
        local_triple={tenant: f"127.0.0.1:{ports[tenant]['triple']}" for tenant in TENANTS},
        local_bolt={tenant: f"127.0.0.1:{ports[tenant]['bolt']}" for tenant in TENANTS},
        certs=certs,
    )


# --- GW-A's log ---------------------------------------------------------------------------------------------


def log_offset(gateway: Gateway) -> int:
    return gateway.log_path.stat().st_size if gateway.log_path.exists() else 0


def audit_lines(gateway: Gateway, offset: int, predicate: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    return [e for e in gateway.events(offset) if e.get("event") == "audit" and predicate(e)]


def wait_audit(
    gateway: Gateway, offset: int, predicate: Callable[[dict[str, Any]], bool], timeout: float = AUDIT_WAIT
) -> list[dict[str, Any]]:
    """The audit lines written since `offset` that match, once there is at least one (or [] after `timeout`);
    a short settle so that a duplicate line would be seen too."""
    deadline = time.monotonic() + timeout
    while True:
        found = audit_lines(gateway, offset, predicate)
        if found:
            time.sleep(0.05)
            return audit_lines(gateway, offset, predicate)
        if time.monotonic() >= deadline:
            return []
        time.sleep(0.02)


def recent_audit(gateway: Gateway, offset: int) -> list[dict[str, Any]]:
    """For failure messages: what GW-A did audit since `offset`."""
    return audit_lines(gateway, offset, lambda e: True)


def names_other_sites(text: str | None, allowed: Iterable[str]) -> list[str]:
    """The site names in `text` other than `allowed` (and A): a denial must not tell a caller about other
    tenants. Access domains (site-b.gw.site-a.test) are taken out first: echoing the name a caller sent
    says nothing about who owns it; "it belongs to site site-b" would."""
    allowed = {PROVIDER, *allowed}
    text = text or ""
    for site in ALL_SITES:
        text = text.replace(domain_of(site), "<access domain>")
    return [site for site in ALL_SITES if site not in allowed and site in text]


# --- raw TLS to GW-A's peer port ----------------------------------------------------------------------------


def client_context(ca: Path, client: ClientCert, alpn: list[str] | None) -> ssl.SSLContext:
    """Verifies GW-A against A's CA (not its host name: we dial by access domain); presents `client`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cafile=str(ca))
    if client.cert is not None:
        context.load_cert_chain(client.cert, client.key)
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    return context


@dataclass
class Dialed:
    """A TCP connection from a known local port, and how its TLS handshake went."""

    local_port: int
    tls: ssl.SSLSocket | None = None
    handshake_error: str | None = None

    @property
    def remote_as_seen(self) -> str:
        """How GW-A names this connection in its log ("remote")."""
        return f"127.0.0.1:{self.local_port}"

    def close(self) -> None:
        if self.tls is not None:
            try:
                self.tls.close()
            except OSError:
                pass


def dial(port: int, context: ssl.SSLContext, sni: str | None, timeout: float = TIMEOUT) -> Dialed:
    """Bind 127.0.0.1:0 first (so the local port is known even if the handshake fails), connect, handshake."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    dialed = Dialed(local_port=sock.getsockname()[1])
    try:
        sock.connect(("127.0.0.1", port))
        dialed.tls = context.wrap_socket(sock, server_hostname=sni)
    except (ssl.SSLError, OSError) as exc:
        sock.close()
        dialed.handshake_error = f"{type(exc).__name__}: {exc}"
    return dialed


# --- Triple (HTTP/2) on the peer link -----------------------------------------------------------------------

ECHO_HI = b"\x0a\x02hi"  # EchoRequest{message: "hi"}
ADD_2_3 = b"\x08\x02\x10\x03"  # AddRequest{a: 2, b: 3}


class TripleSession:
    """One HTTP/2 connection on which calls are made one after another (each on a new stream)."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        self.closed: str | None = None
        try:
            self._send()
        except (OSError, ssl.SSLError) as exc:  # refused right after the handshake
            self.closed = f"{type(exc).__name__}: {exc}"

    def _send(self) -> None:
        pending = self.conn.data_to_send()
        if pending:
            self.sock.sendall(pending)

    def call(self, service: str, method: str, authority: str, app: str | None, message: bytes,
             timeout: float = TIMEOUT) -> RawResult:
        stamps = [("x-interlink-caller-app", app)] if app is not None else []
        headers = grpc_request_headers(f"/{service}/{method}", authority, stamps)
        result = RawResult()
        if self.closed:
            result.closed = self.closed
            return result
        try:
            stream_id = self.conn.get_next_available_stream_id()
            self.conn.send_headers(stream_id, headers)
            self.conn.send_data(stream_id, encode_message(message), end_stream=True)
            self._send()
        except (OSError, ssl.SSLError, h2.exceptions.ProtocolError) as exc:
            self.closed = result.closed = f"{type(exc).__name__}: {exc}"
            return result
        data = bytearray()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                result.closed = f"no answer within {timeout}s"
                break
            except (OSError, ssl.SSLError) as exc:
                self.closed = result.closed = f"{type(exc).__name__}: {exc}"
                break
            if not chunk:
                self.closed = result.closed = "connection closed"
                break
            try:
                events = self.conn.receive_data(chunk)
            except h2.exceptions.ProtocolError as exc:
                self.closed = result.closed = f"HTTP/2 protocol error: {exc}"
                break
            ended = False
            for event in events:
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                    result.headers = list(event.headers)
                elif isinstance(event, h2.events.TrailersReceived) and event.stream_id == stream_id:
                    result.trailers = list(event.headers)
                elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream_id:
                    data += event.data
                    self.conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream_id:
                    result.reset = event.error_code
                    ended = True
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                    ended = True
                elif isinstance(event, h2.events.ConnectionTerminated):
                    self.closed = result.closed = f"GOAWAY {event.error_code}"
            try:
                self._send()
            except (OSError, ssl.SSLError) as exc:
                self.closed = f"{type(exc).__name__}: {exc}"
            if ended or result.closed:
                break
        else:
            result.closed = f"no answer within {timeout}s"
        result.data = bytes(data)
        return result

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def grpc_payload(result: RawResult) -> bytes | None:
    """The single response message of a unary call (None if there is none)."""
    if len(result.data) < 5:
        return None
    length = int.from_bytes(result.data[1:5], "big")
    return result.data[5 : 5 + length]


# --- Bolt on the peer link ----------------------------------------------------------------------------------


def bolt_request(request_id: int, service: str, method: str, app: str | None, args: list[object],
                 arg_sigs: list[str]) -> bytes:
    """A hessian2 SofaRequest as a peer gateway forwards it: the `service` header, and the caller app and
    method stamped in the x-interlink-* keys (GW-A believes the app only from there)."""
    writer = SofaHessianWriter()
    props = {"service": service}
    if app is not None:
        props["app"] = app
    writer.write_object(
        HessianObject(
            bolt.SOFA_REQUEST_CLASS.decode(),
            {
                "methodName": method,
                "methodArgSigs": arg_sigs,
                "targetServiceUniqueName": service,
                "targetAppName": None,
                "requestProps": props,
            },
        )
    )
    for arg in args:
        if isinstance(arg, int):
            writer.write_int(arg)
        else:
            writer.write_string(str(arg))
    header = {"service": service, "x-interlink-method": method}
    if app is not None:
        header["x-interlink-caller-app"] = app
    frame = bolt.BoltFrame(
        proto=bolt.PROTO_V1, type=bolt.TYPE_REQUEST, cmdcode=bolt.CMD_RPC_REQUEST, request_id=request_id,
        timeout=int(TIMEOUT * 1000), class_name=bolt.SOFA_REQUEST_CLASS, header=bolt.encode_header_map(header),
        content=writer.getvalue(),
    )
    return bolt.encode(frame)


@dataclass
class BoltAnswer:
    frame: bolt.BoltFrame | None = None
    closed: str | None = None

    @property
    def status(self) -> str | None:
        return None if self.frame is None else bolt.ResponseStatus(self.frame.status).name

    def summary(self) -> tuple[bool, str | None]:
        """(isError, errorMsg) of the SofaResponse (an error without a body: (True, the content as text))."""
        assert self.frame is not None
        if self.frame.class_name != sofarpc.SOFA_RESPONSE_CLASS.encode() or not self.frame.content:
            return True, self.frame.content.decode("utf-8", "replace")
        return sofarpc.read_response_summary(self.frame.content)

    @property
    def is_error(self) -> bool:
        return self.frame is None or self.frame.status != bolt.ResponseStatus.SUCCESS or self.summary()[0]

    @property
    def error_message(self) -> str:
        if self.frame is None:
            return self.closed or ""
        return f"status {self.status}: {self.summary()[1]}"

    def app_response(self) -> object:
        assert self.frame is not None
        value = SofaHessianReader(self.frame.content).read_value()
        assert isinstance(value, HessianObject), value
        return value.fields.get("appResponse")

    def describe(self) -> str:
        if self.frame is None:
            return f"no response ({self.closed})"
        return f"{self.error_message} (isError={self.summary()[0]})" if self.is_error else f"OK {self.app_response()!r}"


class BoltSession:
    """One Bolt connection on the peer link; requests one at a time, each with its own request id."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.decoder = bolt.BoltDecoder()
        self.next_id = 1
        self.closed: str | None = None

    def call(self, service: str, method: str, app: str | None, args: list[object] = (), arg_sigs: list[str] = (),
             timeout: float = TIMEOUT) -> BoltAnswer:
        request_id, self.next_id = self.next_id, self.next_id + 1
        return self.exchange(bolt_request(request_id, service, method, app, list(args), list(arg_sigs)), request_id,
                             timeout)

    def exchange(self, frame: bytes, request_id: int, timeout: float = TIMEOUT) -> BoltAnswer:
        try:
            self.sock.sendall(frame)
        except (OSError, ssl.SSLError) as exc:
            self.closed = f"{type(exc).__name__}: {exc}"
            return BoltAnswer(closed=self.closed)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return BoltAnswer(closed=f"no answer within {timeout}s")
            except (OSError, ssl.SSLError) as exc:
                self.closed = f"{type(exc).__name__}: {exc}"
                return BoltAnswer(closed=self.closed)
            if not chunk:
                self.closed = "connection closed"
                return BoltAnswer(closed=self.closed)
            try:
                frames = self.decoder.feed(chunk)
            except bolt.BoltProtocolError as exc:
                self.closed = f"not Bolt: {exc}"
                return BoltAnswer(closed=self.closed)
            for frame in frames:
                if frame.is_response and frame.request_id == request_id:
                    return BoltAnswer(frame=frame)
        return BoltAnswer(closed=f"no answer within {timeout}s")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
