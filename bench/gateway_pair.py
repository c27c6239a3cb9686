"""Pairs of interlink gateways for the translate and churn parts: GW-B (the caller's site, a bolt or triple
listener) -> mTLS peer link -> GW-A (the provider's site, one export), each `.venv/bin/interlink run -c
FILE` (one process each, or --workers N), site files written into the part's temp dir.

Every pair of a part is started at once and then waited for (so that start-ups overlap on a small
machine); a pair that does not come up is reported with its log tail and skipped, the others go on.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from bench import certs
from bench.interlink_path import DOMAIN_A_GIVES_B, DOMAIN_B_GIVES_A, interlink_cli
from bench.processes import Child, Children, wait_for_port

SERVICE = "com.example.EchoService"

SITE_A = """\
# GW-A of the {name} path: exports {service} to site B.
site: site-a
listen: {{peer: 127.0.0.1:{peer_a}}}
tls: {{ca: {a}/ca.pem, cert: {a}/gateway.pem, key: {a}/gateway.key}}
peers:
  site-b: {{endpoints: [127.0.0.1:{peer_b}], ca: {b}/ca.pem, domain: {domain_b_gives_a}}}
domains: {{site-b: {domain_a_gives_b}}}
{registry}exports:
  - {export}
"""

SITE_B = """\
# GW-B of the {name} path: imports {service} from site A and serves it on its {listener} listener.
site: site-b
listen: {{{listener}: 127.0.0.1:{entry}, peer: 127.0.0.1:{peer_b}}}
tls: {{ca: {b}/ca.pem, cert: {b}/gateway.pem, key: {b}/gateway.key}}
peers:
  site-a: {{endpoints: [127.0.0.1:{peer_a}], ca: {a}/ca.pem, domain: {domain_a_gives_b}, connections: 1}}
domains: {{site-a: {domain_b_gives_a}}}
imports:
  - {import_}
"""


@dataclass
class PairSpec:
    name: str  # the path's name; also names the site files (bench-<name>-gw-a.yaml ...)
    listener: str  # GW-B's local listener: "bolt" | "triple"
    export: str  # GW-A's one export, a YAML flow mapping
    import_: str  # GW-B's one import, a YAML flow mapping
    ports: dict[str, int]  # entry, peer_a, peer_b
    registry: str = ""  # a `registry:` line for GW-A (with its newline), or ""


@dataclass
class Pair:
    name: str
    gw_a: Child
    gw_b: Child
    entry_port: int

    @property
    def proxies(self) -> dict[str, Child]:
        return {"GW-B": self.gw_b, "GW-A": self.gw_a}


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines()) or "    (no output)"


def launch_pairs(
    children: Children, tmp: Path, site_a: certs.SiteCerts, site_b: certs.SiteCerts, specs: list[PairSpec],
    workers: int | None, startup_timeout_s: float,
) -> Launched:  # fmt: skip
    """Writes the site files and starts every gateway now; `.wait()` on the result waits for them."""
    launched = Launched(children, startup_timeout_s)
    if site_a.made_by != "interlink" or site_b.made_by != "interlink":
        why = f"certificates not made by interlink: {site_a.note or site_b.note}"
        launched.failed = {spec.name: why for spec in specs}
        return launched
    cli = interlink_cli()
    if not cli.exists():
        launched.failed = {spec.name: f"{cli} does not exist (is interlink installed in the venv?)" for spec in specs}
        return launched
    extra = ["--workers", str(workers)] if workers else []
    for spec in specs:
        values = dict(
            spec.ports, name=spec.name, service=SERVICE, listener=spec.listener, export=spec.export,
            import_=spec.import_, registry=spec.registry, a=site_a.dir.relative_to(tmp), b=site_b.dir.relative_to(tmp),
            domain_a_gives_b=DOMAIN_A_GIVES_B, domain_b_gives_a=DOMAIN_B_GIVES_A,
        )  # fmt: skip
        file_a, file_b = f"bench-{spec.name}-gw-a.yaml", f"bench-{spec.name}-gw-b.yaml"
        (tmp / file_a).write_text(SITE_A.format(**values))
        (tmp / file_b).write_text(SITE_B.format(**values))
        gw_a = children.start(f"{spec.name} GW-A", [str(cli), "run", "-c", file_a, *extra], cwd=tmp, log=tmp / f"{file_a}.log")
        gw_b = children.start(f"{spec.name} GW-B", [str(cli), "run", "-c", file_b, *extra], cwd=tmp, log=tmp / f"{file_b}.log")
        launched.started[spec.name] = (spec, gw_a, gw_b)
    return launched


class Launched:
    def __init__(self, children: Children, startup_timeout_s: float) -> None:
        self.children = children
        self.timeout = startup_timeout_s
        self.t0 = time.monotonic()
        self.started: dict[str, tuple[PairSpec, Child, Child]] = {}
        self.failed: dict[str, str] = {}

    def wait(self) -> tuple[dict[str, Pair], dict[str, str]]:
        """(pairs whose gateways listen, pair name -> why not); a pair that failed is stopped."""
        pairs: dict[str, Pair] = {}
        # every gateway imports and binds at once: on a small machine the last one needs longer than one alone
        deadline = self.t0 + self.timeout + 3.0 * max(0, len(self.started) - 1)
        for name, (spec, gw_a, gw_b) in self.started.items():
            for child, port, site_file in (
                (gw_a, spec.ports["peer_a"], f"bench-{name}-gw-a.yaml"),
                (gw_b, spec.ports["entry"], f"bench-{name}-gw-b.yaml"),
                (gw_b, spec.ports["peer_b"], f"bench-{name}-gw-b.yaml"),
            ):
                if not wait_for_port(port, child, timeout=max(1.0, deadline - time.monotonic())):
                    state = (
                        f"is not listening on 127.0.0.1:{port} after {time.monotonic() - self.t0:.0f}s"
                        if child.alive() else f"exited with status {child.proc.returncode}"
                    )  # fmt: skip
                    self.failed[name] = f"`interlink run -c {site_file}` {state}; last log lines:\n{_indent(child.log_tail())}"
                    break
            if name in self.failed:
                self.children.stop(gw_b)
                self.children.stop(gw_a)
            else:
                pairs[name] = Pair(name, gw_a, gw_b, spec.ports["entry"])
        return pairs, dict(self.failed)


def start_pairs(
    children: Children, tmp: Path, site_a: certs.SiteCerts, site_b: certs.SiteCerts, specs: list[PairSpec],
    workers: int | None, startup_timeout_s: float,
) -> tuple[dict[str, Pair], dict[str, str]]:  # fmt: skip
    """Starts every pair, then waits for all of them; returns (pairs that listen, name -> why not)."""
    return launch_pairs(children, tmp, site_a, site_b, specs, workers, startup_timeout_s).wait()


def wait_ready(child: Child, timeout_s: float) -> bool:
    """True once the gateway logged `gateway.ready` (listening, and the registry's first sets applied)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and child.alive():
        if any(e.get("event") == "gateway.ready" for e in log_events(child.log, ("gateway.ready",))):
            return True
        time.sleep(0.05)
    return False


def log_events(log: Path, wanted: tuple[str, ...], offset: int = 0) -> list[dict]:
    """The JSON log lines of a gateway (from byte `offset`) that mention one of `wanted`, decoded. Only the
    matching lines are parsed: a gateway's log holds an access line per call."""
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return []
    keys = tuple(w.encode() for w in wanted)
    out = []
    for line in data.splitlines():
        if any(k in line for k in keys):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def log_size(log: Path) -> int:
    try:
        return log.stat().st_size
    except OSError:
        return 0
