"""Helpers for the certificate-rotation and worker tests (tests/e2e/test_ca_rotation.py, test_workers.py).

* Certificate authorities built with `cryptography`: a root, an intermediate under it (path_length=0) and a
  gateway leaf made the way `interlink.control.certs.issue` makes one (URI SAN spiffe://<td>/site/<site> +
  DNS/IP names, EKU serverAuth + clientAuth); PEM files with chains and CA bundles.
* `CallLoad`: a grpcio caller that keeps calling `echo` through a gateway at a fixed rate in the background
  and records every call's outcome.
* `reload_site`: write a gateway's site file, SIGHUP it and wait for its `config.reloaded` (or
  `config.reload_failed`) line.
* `interlink_check`: `python -m interlink check FILE...`, as an operator runs it.
* `established`: the TCP connections a process holds, read from /proc (which worker or which connection
  generation holds a link), and `tls_probe`: one mTLS handshake with the peer port, as a peer gateway
  would make it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from interlink.demo.client import EchoClient
from tests.e2e.topology import Gateway

REPO = Path(__file__).resolve().parents[2]
CLOCK_SKEW = dt.timedelta(minutes=5)


# --- certificates ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    """A certificate, its private key, and the chain above it that a holder sends (intermediates)."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def write(self, folder: Path, stem: str) -> tuple[Path, Path]:
        """`<stem>.pem` (this certificate, then its intermediates) and `<stem>.key` (0600)."""
        folder.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
        cert_path.write_bytes(self.pem + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain))
        key_path.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        key_path.chmod(0o600)
        return cert_path, key_path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "interlink"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
    )


def new_root(common_name: str, *, days: int = 3650, path_length: int | None = None) -> Issued:
    """A self-signed CA (BasicConstraints ca=True, keyCertSign + cRLSign, SKI = AKI)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def _authority_key_id(issuer: Issued) -> x509.AuthorityKeyIdentifier:
    ski = issuer.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _chain_above(issuer: Issued) -> tuple[x509.Certificate, ...]:
    """What a certificate signed by `issuer` sends after itself: the intermediates, never the root."""
    return () if issuer.cert.issuer == issuer.cert.subject else (issuer.cert, *issuer.chain)


def new_intermediate(parent: Issued, common_name: str, *, days: int = 1825) -> Issued:
    """A CA signed by `parent` that may sign leaves only (path_length=0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(parent.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(now + dt.timedelta(days=days), parent.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_id(parent), critical=False)
        .sign(parent.key, hashes.SHA256())
    )
    return Issued(cert, key, chain=_chain_above(parent))


def new_leaf(
    issuer: Issued, site: str, dns_names: tuple[str, ...] = (), *, trust_domain: str = "interlink", days: int = 397
) -> Issued:
    """A gateway certificate as `interlink certs issue` makes it, signed by `issuer`; its chain is the
    intermediates up to (not including) the root: `issuer` itself when `issuer` is not self-signed."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}/site/{site}")]
    for name in dns_names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{site} gateway"))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(now + dt.timedelta(days=days), issuer.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_id(issuer), critical=False)
        .sign(issuer.key, hashes.SHA256())
    )
    return Issued(cert, key, chain=_chain_above(issuer))


def write_bundle(path: Path, *pem_files: Path) -> Path:
    """A CA bundle: the PEM files concatenated, in order (each ends with a newline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(Path(p).read_bytes().rstrip(b"\n") + b"\n" for p in pem_files))
    return path


def write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


# --- a caller under load --------------------------------------------------------------------------------


@dataclass
class Outcome:
    at: float  # seconds since the load started, when the call was made
    code: str  # grpc.StatusCode name, "OK", or "WRONG_REPLY"
    details: str = ""


@dataclass
class CallLoad:
    """`rate` echo calls per second through `target` with a `deadline` each, from a background thread, until
    `stop()` (or `max_seconds`). Every call's outcome is kept; `failures` lists the ones that were not OK."""

    target: str
    metadata: tuple[tuple[str, str], ...]
    rate: float = 50.0
    deadline: float = 2.0
    max_seconds: float = 120.0
    outcomes: list[Outcome] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _pending: list[grpc.Future] = field(default_factory=list)
    started: float = 0.0

    def start(self) -> CallLoad:
        self.client = EchoClient(self.target)
        self.client.wait_ready(5)
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="call-load", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        interval = 1.0 / self.rate
        limit = int(self.rate * self.max_seconds)  # bounded, whatever happens to the test
        for index in range(limit):
            if self._stop.is_set():
                return
            due = self.started + index * interval
            pause = due - time.monotonic()
            if pause > 0 and self._stop.wait(pause):
                return
            message = f"call-{index}"
            at = time.monotonic() - self.started
            future = self.client.stub.echo.future(
                self.client.pb2.EchoRequest(message=message), metadata=self.metadata, timeout=self.deadline
            )
            future.add_done_callback(lambda f, m=message, t=at: self._done(f, m, t))
            with self._lock:
                self._pending.append(future)

    def _done(self, future: grpc.Future, message: str, at: float) -> None:
        try:
            reply = future.result()
        except grpc.RpcError as exc:
            outcome = Outcome(at, exc.code().name, exc.details() or "")
        except Exception as exc:  # noqa: BLE001 - counted, reported by the test
            outcome = Outcome(at, type(exc).__name__, str(exc))
        else:
            outcome = Outcome(at, "OK") if reply.message == message else Outcome(at, "WRONG_REPLY", reply.message)
        with self._lock:
            self.outcomes.append(outcome)

    def send_times(self) -> list[float]:
        """When each finished call was made (seconds since the start)."""
        with self._lock:
            return [o.at for o in self.outcomes]

    def now(self) -> float:
        return time.monotonic() - self.started

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        deadline = time.monotonic() + self.deadline + 3
        with self._lock:
            pending = list(self._pending)
        for future in pending:  # every call ends by its own deadline
            try:
                future.exception(timeout=max(0.0, deadline - time.monotonic()))
            except grpc.FutureTimeoutError:
                pass
        time.sleep(0.05)  # let the last callbacks record their outcome
        self.client.close()

    @property
    def made(self) -> int:
        with self._lock:
            return len(self._pending)

    @property
    def counts(self) -> Counter:
        with self._lock:
            return Counter(o.code for o in self.outcomes)

    @property
    def failures(self) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if o.code != "OK"]


# --- site files, reloads, check -------------------------------------------------------------------------


def log_size(gateway: Gateway) -> int:
    return gateway.log_path.stat().st_size if gateway.log_path.exists() else 0


def events(gateway: Gateway, offset: int = 0) -> list[dict[str, Any]]:
    """Every JSON event of the gateway's log from byte `offset`. Unlike `Gateway.events` this also reads
    lines that two processes wrote into each other (`--workers N` share one stderr, and a line is not
    always one write: `{...}{...}` followed by two newlines), so that counting access lines is exact."""
    if not gateway.log_path.exists():
        return []
    with open(gateway.log_path, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    decoder = json.JSONDecoder()
    out = []
    for line in text.splitlines():
        position = 0
        while position < len(line):
            try:
                event, position = decoder.raw_decode(line, position)
            except json.JSONDecodeError:
                break
            if isinstance(event, dict):
                out.append(event)
    return out


def events_named(gateway: Gateway, name: str, offset: int = 0) -> list[dict[str, Any]]:
    return [e for e in events(gateway, offset) if e.get("event") == name]


def write_yaml(path: Path, config: dict[str, Any]) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    os.replace(tmp, path)  # a reload never reads half a file
    return path


def write_site(gateway: Gateway, config: dict[str, Any]) -> None:
    write_yaml(gateway.path, config)


def reload_site(
    gateway: Gateway, config: dict[str, Any] | None = None, *, expect: str = "config.reloaded", timeout: float = 10.0
) -> tuple[int, dict[str, Any]]:
    """Write `config` (if given), SIGHUP the gateway, and return (log offset before the signal, the
    `expect` event it logged). A `config.reload_failed` when `config.reloaded` was expected fails at once.
    `gateway.config` becomes `config` only once the gateway took it."""
    if config is not None:
        write_site(gateway, config)
    offset = log_size(gateway)
    assert gateway.process is not None
    gateway.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in gateway.events(offset):
            if event.get("event") == expect:
                if config is not None and expect == "config.reloaded":
                    gateway.config = config
                return offset, event
            if event.get("event") == "config.reload_failed" and expect == "config.reloaded":
                raise AssertionError(f"{gateway.name} refused the reload: {event}")
        time.sleep(0.05)
    raise AssertionError(f"no {expect} from {gateway.name} within {timeout}s:\n{gateway.log_text()[-3000:]}")


def interlink_check(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "interlink", "check", *map(str, paths)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )


# --- sockets seen from /proc ----------------------------------------------------------------------------


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        entries = list(fd_dir.iterdir())
    except OSError:
        return inodes
    for entry in entries:
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _port_of(hex_address: str) -> tuple[str, int]:
    host, port = hex_address.split(":")
    return str(ipaddress.IPv4Address(bytes.fromhex(host)[::-1])), int(port, 16)


def established(pid: int) -> list[tuple[tuple[str, int], tuple[str, int]]]:
    """(local, remote) of every established IPv4 TCP connection process `pid` holds."""
    inodes = _socket_inodes(pid)
    out = []
    try:
        lines = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        if len(parts) < 10 or parts[3] != "01":  # 01 = ESTABLISHED
            continue
        if int(parts[9]) in inodes:
            out.append((_port_of(parts[1]), _port_of(parts[2])))
    return out


def links_to(pid: int, port: int) -> set[int]:
    """Local ports of the connections `pid` holds to 127.0.0.1:`port` (a dialer's view)."""
    return {local[1] for local, remote in established(pid) if remote == ("127.0.0.1", port)}


def links_from(pid: int, port: int) -> set[int]:
    """Remote ports of the connections `pid` accepted on `port` (a listener's view)."""
    return {remote[1] for local, remote in established(pid) if local[1] == port}


def children_of(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc/*/stat)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


# --- one handshake as a peer gateway makes it -----------------------------------------------------------


@dataclass(frozen=True)
class ProbeResult:
    accepted: bool
    detail: str
    local_port: int


def tls_probe(port: int, *, sni: str, cert: Path, key: Path, trust: Path, timeout: float = 3.0) -> ProbeResult:
    """Dial 127.0.0.1:`port` with this client certificate, trusting only `trust` for the server, SNI =
    `sni`, ALPN h2, then send the HTTP/2 preface. Accepted = the server's chain verified here AND the
    server answered with HTTP/2 (so it accepted our certificate; with TLS 1.3 a refusal arrives as an
    alert after the handshake)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(trust))
    context.load_cert_chain(str(cert), str(key))
    context.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    local_port = raw.getsockname()[1]
    try:
        with context.wrap_socket(raw, server_hostname=sni) as tls:
            tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            data = tls.recv(9)
            if not data:
                return ProbeResult(False, "closed without an answer", local_port)
            return ProbeResult(True, f"answered {data[:9].hex()}", local_port)
    except ssl.SSLError as exc:
        return ProbeResult(False, f"{type(exc).__name__}: {exc}", local_port)
    except OSError as exc:
        return ProbeResult(False, f"{type(exc).__name__}: {exc}", local_port)
    finally:
        raw.close()
