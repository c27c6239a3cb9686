"""The hostile tests' topology: two real gateways, their providers, all on loopback, started per test.

    local callers --h2c (triple port)--> GW-B (site-b) --mTLS h2 / ALPN bolt--> GW-A (site-a) --> providers
                  --Bolt (bolt port)---/

GW-A exports com.example.EchoService over Triple to the recording grpcio provider (tests/hostile/provider.py)
and com.example.EchoService:1.0 over Bolt to the sofa-rpc-node provider (tests/peers/bolt_server.js). GW-B
imports both. Both site files carry a `limits:` section chosen by the test (see conftest.py).

Gateways are `python -m interlink run -c FILE` processes, as tests/e2e/topology.py starts them (its `Gateway`
is reused for the site file, the JSON log and `events()`), except that they are launched concurrently and
that a launch can lower the child's RLIMIT_NOFILE (the fd-exhaustion attack).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import Peer, bolt_server_argv, start_process_peer, stop_process
from tests.e2e.topology import ALLOWED_APP, METHODS, SERVICE, Certs, Gateway, access_domain, free_port

# Which code the gateway processes run, and whether their site files get a `limits:` section:
#   HOSTILE_GATEWAY_TREE=/path/to/a/checkout  (default: this project) -- e.g. a `git archive` of an older commit
#   HOSTILE_LIMITS=off                         -- for a gateway that does not know `limits:` yet (e4f6452)
# The tests' expectations always come from the limits they asked for, written to the file or not.
GATEWAY_TREE = Path(os.environ.get("HOSTILE_GATEWAY_TREE") or Path(__file__).resolve().parents[2]).resolve()
WRITE_LIMITS = os.environ.get("HOSTILE_LIMITS", "on").lower() not in {"off", "0", "no", "false"}

BOLT_VERSION = "1.0"
BOLT_SERVICE = f"{SERVICE}:{BOLT_VERSION}"
BOLT_METHODS = ["echo", "add", "fail", "slow", "whoami"]
PROJECT = Path(__file__).resolve().parents[2]


class HostileGateway(Gateway):
    """`topology.Gateway` with a non-blocking launch (`launch` then `wait_ready`) and an optional fd limit."""

    def __init__(self, name: str, config: dict[str, Any], folder: Path, *, nofile: int | None = None) -> None:
        super().__init__(name, config, folder)
        self.nofile = nofile

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def port(self, listener: str) -> int:
        return int(self.config["listen"][listener].rsplit(":", 1)[1])

    def launch(self) -> HostileGateway:  # type: ignore[override]
        nofile = self.nofile

        def limit_fds() -> None:  # runs in the child, before exec
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        super().launch(
            cwd=GATEWAY_TREE,  # `python -m` puts the cwd first on sys.path: this tree's `interlink` runs
            env={**os.environ, "PYTHONPATH": str(GATEWAY_TREE)},
            preexec_fn=limit_fds if nofile is not None else None,
        )
        return self

    def wait_ready(self, timeout: float = 30.0, count: int = 1) -> HostileGateway:
        super().wait_ready(timeout, count)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_lines(self, start: int = 0, end: int | None = None) -> list[str]:
        if not self.log_path.exists():
            return []
        with open(self.log_path, "rb") as f:
            f.seek(start)
            data = f.read() if end is None else f.read(max(0, end - start))
        return data.decode(errors="replace").splitlines()


@dataclass
class Sites:
    """Everything one hostile test runs against."""

    folder: Path
    certs: Certs
    a: HostileGateway
    b: HostileGateway
    provider: Peer  # the recording grpcio provider
    bolt_provider: Peer
    record_path: Path
    limits: dict[str, int]
    processes: list[subprocess.Popen] = field(default_factory=list)

    # --- addresses -------------------------------------------------------------------------------------
    @property
    def triple_target(self) -> str:
        return f"127.0.0.1:{self.b.port('triple')}"

    @property
    def triple_port(self) -> int:
        return self.b.port("triple")

    @property
    def bolt_port(self) -> int:
        return self.b.port("bolt")

    @property
    def bolt_target(self) -> str:
        return f"127.0.0.1:{self.bolt_port}"

    @property
    def a_peer_port(self) -> int:
        return self.a.port("peer")

    @property
    def b_peer_domain(self) -> str:
        """The access domain site A gave site B: the SNI and :authority a site-b peer must use on GW-A."""
        return access_domain("site-b", "site-a")

    def limit_ms(self, key: str, default_ms: int) -> int:
        return int(self.limits.get(key, default_ms))

    # --- the provider's record -------------------------------------------------------------------------
    def record_size(self) -> int:
        return self.record_path.stat().st_size if self.record_path.exists() else 0

    def provider_records(self, offset: int = 0) -> list[dict[str, Any]]:
        if not self.record_path.exists():
            return []
        with open(self.record_path, "rb") as f:
            f.seek(offset)
            lines = f.read().decode(errors="replace").splitlines()
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line being written right now
        return out

    def stop(self) -> None:
        for gateway in (self.b, self.a):
            try:
                if gateway.process is not None and gateway.process.poll() is None:
                    os.kill(gateway.process.pid, 18)  # SIGCONT, in case a test left it stopped
            except ProcessLookupError:
                pass
            gateway.stop()
        for peer in (self.provider, self.bolt_provider):
            if peer.process is not None:
                stop_process(peer.process)


def provider_site_config(
    certs: Certs, *, peer_port: int, b_peer_port: int, provider: str, bolt_provider: str, limits: dict[str, int]
) -> dict[str, Any]:
    own = certs.site("site-a")
    allow_triple = {"site-b": {"apps": [ALLOWED_APP], "methods": METHODS}}
    allow_bolt = {"site-b": {"apps": [ALLOWED_APP], "methods": BOLT_METHODS}}
    config: dict[str, Any] = {
        "site": "site-a",
        "listen": {"peer": f"127.0.0.1:{peer_port}", "admin": f"127.0.0.1:{free_port()}"},
        "tls": {"ca": str(own.ca), "cert": str(own.cert), "key": str(own.key)},
        "peers": {
            "site-b": {
                "endpoints": [f"127.0.0.1:{b_peer_port}"],
                "ca": str(certs.site("site-b").ca),
                "domain": access_domain("site-a", "site-b"),
            }
        },
        "domains": {"site-b": access_domain("site-b", "site-a")},
        "exports": [
            {"service": SERVICE, "protocol": "triple", "providers": [provider], "allow": allow_triple},
            {
                "service": SERVICE,
                "version": BOLT_VERSION,
                "protocol": "bolt",
                "providers": [bolt_provider],
                "allow": allow_bolt,
            },
        ],
    }
    if limits and WRITE_LIMITS:
        config["limits"] = dict(limits)
    return config


def consumer_site_config(
    certs: Certs, *, triple_port: int, bolt_port: int, peer_port: int, a_peer_port: int, limits: dict[str, int]
) -> dict[str, Any]:
    own = certs.site("site-b")
    config: dict[str, Any] = {
        "site": "site-b",
        "listen": {
            "triple": f"127.0.0.1:{triple_port}",
            "bolt": f"127.0.0.1:{bolt_port}",
            "peer": f"127.0.0.1:{peer_port}",
            "admin": f"127.0.0.1:{free_port()}",
        },
        "tls": {"ca": str(own.ca), "cert": str(own.cert), "key": str(own.key)},
        "peers": {
            "site-a": {
                "endpoints": [f"127.0.0.1:{a_peer_port}"],
                "ca": str(certs.site("site-a").ca),
                "domain": access_domain("site-b", "site-a"),
            }
        },
        "domains": {"site-a": access_domain("site-a", "site-b")},
        "imports": [
            {"service": SERVICE, "from": "site-a", "protocol": "triple"},
            {"service": SERVICE, "from": "site-a", "protocol": "bolt", "version": BOLT_VERSION},
        ],
    }
    if limits and WRITE_LIMITS:
        config["limits"] = dict(limits)
    return config


def start_sites(
    folder: Path,
    certs: Certs,
    node: str,
    *,
    limits: dict[str, int],
    limits_a: dict[str, int] | None = None,
    b_nofile: int | None = None,
    name: str = "hostile",
) -> Sites:
    """Providers first (their ports go into GW-A's site file), then both gateways concurrently."""
    folder.mkdir(parents=True, exist_ok=True)
    record_path = folder / "provider-calls.jsonl"
    record_path.touch()
    provider = start_process_peer(
        [sys.executable, "-m", "tests.hostile.provider", "--listen", "127.0.0.1:0", "--record", str(record_path)],
        "recording-provider",
        env={**os.environ, "PYTHONPATH": str(PROJECT)},
    )
    try:
        bolt_provider = start_process_peer(bolt_server_argv(node, name="hostile-bolt-provider"), "bolt-provider")
    except BaseException:
        assert provider.process is not None
        stop_process(provider.process)
        raise
    a_peer, b_peer, b_triple, b_bolt = free_port(), free_port(), free_port(), free_port()
    a = HostileGateway(
        f"{name}-site-a",
        provider_site_config(
            certs,
            peer_port=a_peer,
            b_peer_port=b_peer,
            provider=provider.target,
            bolt_provider=bolt_provider.target,
            limits=limits if limits_a is None else limits_a,
        ),
        folder,
    )
    b = HostileGateway(
        f"{name}-site-b",
        consumer_site_config(
            certs, triple_port=b_triple, bolt_port=b_bolt, peer_port=b_peer, a_peer_port=a_peer, limits=limits
        ),
        folder,
        nofile=b_nofile,
    )
    sites = Sites(folder, certs, a, b, provider, bolt_provider, record_path, dict(limits))
    try:
        a.launch().wait_ready()  # GW-A first: GW-B's pool would otherwise start in connect back-off
        b.launch().wait_ready()
        warm(sites)
    except BaseException:
        sites.stop()
        raise
    return sites


def warm(sites: Sites, timeout: float = 15.0) -> None:
    """One gRPC and one Bolt call through both gateways must succeed before a test starts."""
    import socket

    from interlink.demo.client import EchoClient
    from tests.hostile.boltattack import BoltReader, echo_frame

    deadline = time.monotonic() + timeout
    last: object = None
    with EchoClient(sites.triple_target) as client:
        while time.monotonic() < deadline:
            try:
                metadata = (("tri-consumer-appname", ALLOWED_APP), ("x-attack-id", "warm"))
                client.echo("warm", metadata=metadata, timeout=2)
                break
            except Exception as exc:  # noqa: BLE001 - retried until the deadline
                last = exc
                time.sleep(0.1)
        else:
            raise RuntimeError(f"no gRPC call got through GW-B -> GW-A within {timeout}s: {last}")
    while time.monotonic() < deadline:
        with socket.create_connection(("127.0.0.1", sites.bolt_port), timeout=5) as sock:
            sock.sendall(echo_frame(1, "warm"))
            reader = BoltReader()
            if reader.wait_for(sock, 1, timeout=3) and reader.frames[0].status == 0:
                return
            last = reader.frames
        time.sleep(0.1)
    raise RuntimeError(f"no Bolt call got through GW-B -> GW-A within {timeout}s: {last}")
