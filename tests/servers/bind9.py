"""A real BIND9 (`named`, Debian package bind9) on loopback for the DNS registry tests.

Fixture ``bind9`` (function scope, cheap: named answers ~0.1 s after launch) -> :class:`Bind9Server`:
a primary for one zone (``site-a.interlink.test``) on 127.0.0.1 and a free port, accepting RFC 2136
updates signed with a fresh TSIG key (``tsig-keygen``, hmac-sha256, ``update-policy ... zonesub ANY``),
zone transfers with that key, and sending NOTIFY at once (``notify explicit; notify-delay 0``) to
``127.0.0.1:<notify_port>``, a free UDP port the test may listen on. Config as in REGISTRIES.md 3.3:
no recursion, no rndc, no IPv6 listener, every file (pid, session key, journal) inside ``tmp_path``.
named runs as root here without ``-u`` (it does not drop privileges when not asked to).

``stop()`` / ``start()`` let a test take the server away and bring it back on the same port with the
same zone (named reloads the zone file plus its journal, so dynamic updates survive a restart).

Missing named or tsig-keygen: ``pytest.fail`` under ``CI=true``, otherwise ``pytest.skip``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import ports
from tests.requires import missing

__all__ = ["Bind9Server", "bind9", "start_bind9"]

ZONE = "site-a.interlink.test"
KEY_NAME = "interlink-gw"
ALGORITHM = "hmac-sha256"
READY_TIMEOUT = 10.0

NAMED_CONF = """\
include "{dir}/tsig.key";
options {{
    directory "{dir}";
    pid-file "{dir}/named.pid";
    session-keyfile "{dir}/session.key";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    allow-query {{ 127.0.0.0/8; }};
    allow-transfer {{ key {key}; }};
    dnssec-validation no;
    notify-rate 1000;
    startup-notify-rate 1000;
}};
controls {{ }};
zone "{zone}" {{
    type primary;
    file "{dir}/{zone}.db";
    update-policy {{ grant {key} zonesub ANY; }};
    notify explicit;
    also-notify {{ 127.0.0.1 port {notify_port}; }};
    notify-delay 0;
    notify-source 127.0.0.1;
}};
"""

ZONE_FILE = """\
$TTL 30
@    IN SOA ns1 hostmaster 1 60 30 3600 5
@    IN NS  ns1
ns1  IN A   127.0.0.1
"""


@dataclass
class Bind9Server:
    """One running (or stopped) named; addresses are 127.0.0.1 only."""

    directory: Path
    port: int
    notify_port: int
    zone: str = ZONE
    key_name: str = KEY_NAME
    key_secret: str = ""
    key_algorithm: str = ALGORITHM
    host: str = "127.0.0.1"
    process: subprocess.Popen | None = field(default=None, repr=False)
    started_in: float = 0.0  # seconds from launch to the first SOA answer (last start)

    @property
    def server(self) -> str:
        """``host:port`` as DnsUpdateRegistry takes it."""
        return f"{self.host}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def log_path(self) -> Path:
        return self.directory / "named.log"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("named is already running")
        if _soa_serial(self.host, self.port, self.zone, 0.2) is not None:
            raise RuntimeError(f"something already answers DNS on {self.server}; refusing to start named there")
        named = shutil.which("named") or "/usr/sbin/named"
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        started = time.perf_counter()
        try:
            self.process = subprocess.Popen(
                [named, "-g", "-n", "1", "-c", str(self.directory / "named.conf")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
            )
        finally:
            log.close()
        deadline = started + timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"named exited {self.process.returncode}:\n{self.log_text()[-3000:]}")
            if _soa_serial(self.host, self.port, self.zone, 0.2) is not None:
                self.started_in = time.perf_counter() - started
                return
            time.sleep(0.005)
        self.stop()
        raise RuntimeError(f"named did not answer SOA on {self.server} within {timeout}s:\n{self.log_text()[-3000:]}")

    def stop(self) -> None:
        """Stop named (SIGTERM, then SIGKILL) and wait until it is gone; idempotent."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def soa_serial(self, timeout: float = 1.0) -> int | None:
        """The zone's SOA serial as named answers it now (a plain blocking query), or None."""
        return _soa_serial(self.host, self.port, self.zone, timeout)


def _free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (named listens on both)."""
    return ports.free_port(udp=True)


def _free_udp_port() -> int:
    return ports.free_port(tcp=False, udp=True)


def _soa_serial(host: str, port: int, zone: str, timeout: float) -> int | None:
    """The SOA serial over a connected UDP socket (a closed port fails at once, not after the timeout)."""
    import dns.exception
    import dns.message
    import dns.query
    import dns.rdatatype

    try:
        query = dns.message.make_query(zone, dns.rdatatype.SOA)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((host, port))
            response = dns.query.udp(query, host, port=port, timeout=timeout, sock=sock)
    except (OSError, dns.exception.DNSException):
        return None
    for rrset in response.answer:
        if rrset.rdtype == dns.rdatatype.SOA:
            return int(next(iter(rrset)).serial)  # type: ignore[attr-defined]
    return None



def _tool(name: str) -> str:
    found = shutil.which(name) or (f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK) else None)
    if found is None:
        missing(f"{name} is not installed (Debian package bind9)")
    return found  # type: ignore[return-value]


def start_bind9(directory: Path, *, zone: str = ZONE, key_name: str = KEY_NAME) -> Bind9Server:
    """Write named.conf, the zone file and a fresh TSIG key into ``directory`` and start named."""
    _tool("named")
    keygen = _tool("tsig-keygen")
    directory.mkdir(parents=True, exist_ok=True)
    key_text = subprocess.run(
        [keygen, "-a", ALGORITHM, key_name], check=True, capture_output=True, text=True
    ).stdout
    (directory / "tsig.key").write_text(key_text)
    match = re.search(r'secret\s+"([^"]+)"', key_text)
    if match is None:
        raise RuntimeError(f"tsig-keygen printed no secret: {key_text!r}")
    server = Bind9Server(directory=directory, port=_free_port(), notify_port=_free_udp_port(), zone=zone,
                         key_name=key_name, key_secret=match[1])
    (directory / "named.conf").write_text(
        NAMED_CONF.format(dir=directory, port=server.port, notify_port=server.notify_port, zone=zone, key=key_name)
    )
    (directory / f"{zone}.db").write_text(ZONE_FILE)
    server.start()
    return server


@pytest.fixture
def bind9(tmp_path: Path) -> Iterator[Bind9Server]:
    """A fresh named for one test (see the module docstring)."""
    server = start_bind9(tmp_path / "bind9")
    try:
        yield server
    finally:
        server.stop()
