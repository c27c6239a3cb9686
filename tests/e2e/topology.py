"""Sites for the end-to-end tests: certificates, site files written from dicts, gateways as real processes.

A gateway runs as `python -m interlink run -c FILE` (the same command users run); its JSON log goes to a
file that tests read for access and audit lines.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from interlink.control.certs import SitePaths, init_site
from tests import ports

SERVICE = "com.example.EchoService"
ALLOWED_APP = "order-app"
METHODS = ["echo", "add", "fail", "sleep", "count", "sum", "chat"]


def free_port() -> int:
    return ports.free_port()


def access_domain(consumer: str, provider: str) -> str:
    """The domain `provider` gives `consumer`."""
    return f"{consumer}.gw.{provider}.test"


@dataclass
class Certs:
    root: Path
    sites: dict[str, SitePaths] = field(default_factory=dict)

    def site(self, name: str) -> SitePaths:
        if name not in self.sites:
            self.sites[name] = init_site(name, self.root / name, dns_names=[f"gw.{name}.test", "127.0.0.1"])
        return self.sites[name]


class Gateway:
    """One `interlink run` process."""

    def __init__(self, name: str, config: dict[str, Any], folder: Path) -> None:
        self.name = name
        self.config = config
        self.path = folder / f"{name}.yaml"
        self.log_path = folder / f"{name}.log"
        self.path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.process: subprocess.Popen | None = None
        self._ready_offset = 0

    def start(self, timeout: float = 20.0) -> Gateway:
        return self.launch().wait_ready(timeout)

    def launch(self, args: Sequence[str] = (), **popen: Any) -> Gateway:
        """Start `interlink run -c FILE [args]` without waiting; `popen` goes to Popen (cwd, env, preexec_fn)."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self._ready_offset = self.log_path.stat().st_size
        self.process = subprocess.Popen(
            [sys.executable, "-m", "interlink", "run", "-c", str(self.path), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            **popen,
        )
        log.close()
        return self

    def wait_ready(self, timeout: float = 20.0, count: int = 1) -> Gateway:
        """Until `count` processes (workers) have logged gateway.ready (listening + registry synced)."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway {self.name} exited with {self.process.returncode}:\n{self.log_text()}")
            if sum(e.get("event") == "gateway.ready" for e in self.events(self._ready_offset)) >= count:
                return self
            time.sleep(0.05)
        raise RuntimeError(f"gateway {self.name}: not {count} x gateway.ready within {timeout}s:\n{self.log_text()}")

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye (a crash)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self, offset: int = 0) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            lines = f.read().decode(errors="replace").splitlines()
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def wait_for_event(self, predicate, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if predicate(event):
                    return event
            time.sleep(0.05)
        raise AssertionError(f"no matching log event in {self.name} within {timeout}s:\n{self.log_text()[-4000:]}")


def provider_site(
    certs: Certs,
    *,
    peer_port: int,
    consumers: dict[str, int],
    exports: list[dict[str, Any]],
    site: str = "site-a",
    extra_peers: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Site file of a provider site; `consumers` maps each consumer site to its peer port."""
    own = certs.site(site)
    return {
        "site": site,
        "listen": {"peer": f"127.0.0.1:{peer_port}"},
        "tls": {"ca": str(own.ca), "cert": str(own.cert), "key": str(own.key)},
        "peers": {
            consumer: {
                "endpoints": [f"127.0.0.1:{port}"],
                "ca": str(certs.site(consumer).ca),
                "domain": access_domain(site, consumer),
                **(extra_peers or {}).get(consumer, {}),
            }
            for consumer, port in consumers.items()
        },
        "domains": {consumer: access_domain(consumer, site) for consumer in consumers},
        "exports": exports,
    }


def consumer_site(
    certs: Certs,
    *,
    triple_port: int,
    peer_port: int,
    provider_peer_port: int,
    site: str = "site-b",
    provider: str = "site-a",
    services: tuple[str, ...] = (SERVICE,),
    peer_options: dict[str, Any] | None = None,
    protocol: str = "triple",
) -> dict[str, Any]:
    own = certs.site(site)
    local = {"triple": f"127.0.0.1:{triple_port}"} if protocol == "triple" else {"bolt": f"127.0.0.1:{triple_port}"}
    return {
        "site": site,
        "listen": {**local, "peer": f"127.0.0.1:{peer_port}"},
        "tls": {"ca": str(own.ca), "cert": str(own.cert), "key": str(own.key)},
        "peers": {
            provider: {
                "endpoints": [f"127.0.0.1:{provider_peer_port}"],
                "ca": str(certs.site(provider).ca),
                "domain": access_domain(site, provider),
                **(peer_options or {}),
            }
        },
        "domains": {provider: access_domain(provider, site)},
        "imports": [{"service": service, "from": provider, "protocol": protocol} for service in services],
    }


def echo_export(
    provider_target: str, allow: dict[str, Any], service: str = SERVICE, protocol: str = "triple"
) -> dict[str, Any]:
    return {"service": service, "protocol": protocol, "providers": [provider_target], "allow": allow}


@dataclass
class TwoSites:
    """GW-B (consumer, local triple or bolt port) -> GW-A (provider site) -> provider."""

    a: Gateway
    b: Gateway
    triple_target: str  # GW-B's local ingress (Bolt or Triple, as the topology's protocol)
    a_peer_port: int

    def stop(self) -> None:
        for gateway in (self.b, self.a):
            gateway.stop()


def two_sites(
    certs: Certs,
    folder: Path,
    provider_target: str,
    *,
    name: str,
    extra_consumers: dict[str, int] | None = None,
    peer_options: dict[str, Any] | None = None,
    protocol: str = "triple",
    methods: list[str] | None = None,
    export_options: dict[str, Any] | None = None,
    site_options: dict[str, dict[str, Any]] | None = None,
) -> TwoSites:
    """`protocol` is what site B's callers speak (and the link carries); `export_options` can make site A's
    providers speak the other one (e.g. {"protocol": "triple", "flavour": "sofa"}): a translated call.
    `site_options` adds top-level keys to site "a" or "b" (e.g. a registry)."""
    folder.mkdir(parents=True, exist_ok=True)
    a_peer, b_peer, b_local = free_port(), free_port(), free_port()
    consumers = {"site-b": b_peer, **(extra_consumers or {})}
    allow = {"site-b": {"apps": [ALLOWED_APP], "methods": methods or METHODS}}
    export = echo_export(provider_target, allow, protocol=protocol)
    if protocol == "bolt":
        export["version"] = "1.0"
    export.update(export_options or {})
    site_options = site_options or {}
    a = Gateway(
        f"{name}-site-a",
        {**provider_site(certs, peer_port=a_peer, consumers=consumers, exports=[export]), **site_options.get("a", {})},
        folder,
    )
    b = Gateway(
        f"{name}-site-b",
        consumer_site(
            certs,
            triple_port=b_local,
            peer_port=b_peer,
            provider_peer_port=a_peer,
            peer_options=peer_options,
            protocol=protocol,
        )
        | site_options.get("b", {}),
        folder,
    )
    a.start()
    b.start()
    return TwoSites(a=a, b=b, triple_target=f"127.0.0.1:{b_local}", a_peer_port=a_peer)
