"""Pairs of interlink gateways, for every part: GW-B (the caller's site, a bolt or triple listener) -> mTLS
peer link -> GW-A (the provider's site, one export), each `.venv/bin/interlink run -c FILE` (one process
each, or --workers N), site files `bench-<path>-gw-a.yaml` / `-gw-b.yaml` written into the part's temp dir
(distinctive names: other people's clean-up of their own `interlink run -c site-a.yaml` by pattern must
not hit the benchmark's gateways).

Every pair of a part is started at once and then waited for (so that start-ups overlap on a small
machine); within a pair, GW-B starts once its GW-A listens, so that GW-B's first connection to GW-A
succeeds (a failed one backs off, and calls meanwhile fail with "site unreachable"). A pair that does not
come up is reported with its log tail and skipped, the others go on.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from bench import certs
from bench.processes import Child, Children, wait_for_port

SERVICE = "com.example.EchoService"
VERSION = "1.0"  # the SOFARPC service version of the Bolt exports and imports

# Access domains: the exporting site gives one to each consumer site.
DOMAIN_A_GIVES_B = "site-b.gw.site-a.test"  # site B uses it to call site A
DOMAIN_B_GIVES_A = "site-a.gw.site-b.test"

SITE_A = """\
# GW-A of the {name} path: exports {service} to site B.
site: site-a
listen: {{peer: 127.0.0.1:{peer_a}}}
tls: {{ca: {a}/ca.pem, cert: {a}/gateway.pem, key: {a}/gateway.key}}
peers:
  site-b: {{endpoints: [127.0.0.1:{peer_b}], ca: {b}/ca.pem, domain: {domain_b_gives_a}}}
domains: {{site-b: {domain_a_gives_b}}}
{gw_a_lines}exports:
  - {export}
"""

SITE_B = """\
# GW-B of the {name} path: imports {service} from site A and serves it on its {listener} listener.
site: site-b
listen: {{{listener}: 127.0.0.1:{entry}, peer: 127.0.0.1:{peer_b}}}
tls: {{ca: {b}/ca.pem, cert: {b}/gateway.pem, key: {b}/gateway.key}}
peers:
  site-a: {{endpoints: [127.0.0.1:{peer_a}], ca: {a}/ca.pem, domain: {domain_a_gives_b}{connections}}}
domains: {{site-a: {domain_b_gives_a}}}
imports:
  - {import_}
"""


def export_of(
    protocol: str, provider_port: int | None = None, *, providers: Sequence[str] = (), site_b_rule: str = "{}",
    **options: str,
) -> str:  # fmt: skip
    """GW-A's export of EchoService to site B, a YAML flow mapping: `protocol` ("bolt" | "triple"; Bolt
    carries the SOFARPC version), `options` (codec, flavour, routing, outlier ...) in order, then the
    providers: the static one at `provider_port`, else `providers` (YAML items: "host:port" or tagged
    `{address: ..., zone: ...}` mappings), else none (the registry supplies them); last site B's ACL rule
    (`allow: {site-b: <site_b_rule>}`; by default every app and method, no rate)."""
    fields = [f"service: {SERVICE}"] + ([f'version: "{VERSION}"'] if protocol == "bolt" else [])
    fields += [f"protocol: {protocol}", *(f"{key}: {value}" for key, value in options.items())]
    addresses = [f"127.0.0.1:{provider_port}"] if provider_port is not None else list(providers)
    if addresses:
        fields.append(f"providers: [{', '.join(addresses)}]")
    return "{" + ", ".join(fields) + f", allow: {{site-b: {site_b_rule}}}}}"


def import_of(protocol: str, **options: str) -> str:
    """GW-B's import of EchoService from site A, a YAML flow mapping (Bolt carries the SOFARPC version), with
    `options` (max_in_flight ...) last, in order."""
    fields = [f"service: {SERVICE}"] + ([f'version: "{VERSION}"'] if protocol == "bolt" else [])
    fields += ["from: site-a", f"protocol: {protocol}", *(f"{key}: {value}" for key, value in options.items())]
    return "{" + ", ".join(fields) + "}"


def make_sites(tmp: Path) -> tuple[certs.SiteCerts, certs.SiteCerts]:
    """Site A's and site B's CA and gateway certificate: each gateway answers for the access domain its
    site gave the other one."""
    site_a = certs.make_site("site-a", tmp / "A", (DOMAIN_A_GIVES_B, "localhost"))
    site_b = certs.make_site("site-b", tmp / "B", (DOMAIN_B_GIVES_A, "localhost"))
    return site_a, site_b


class InterlinkUnavailable(Exception):
    """A pair of gateways cannot be measured (yet); the message says why."""


def interlink_cli() -> Path:
    return Path(sys.executable).parent / "interlink"


@dataclass
class PairSpec:
    name: str  # the path's name; also names the site files (bench-<name>-gw-a.yaml ...)
    listener: str  # GW-B's local listener: "bolt" | "triple"
    export: str  # GW-A's one export, a YAML flow mapping
    import_: str  # GW-B's one import, a YAML flow mapping
    ports: dict[str, int]  # entry, peer_a, peer_b
    gw_a_lines: str = ""  # top-level lines of GW-A's site file, each with its newline (registry:, zone: ...), or ""
    peer_connections: int | None = 1  # GW-B's connections to GW-A; None: interlink's default (2)


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
    """Writes the site files and starts every GW-A now; `.wait()` on the result starts each GW-B once its
    GW-A listens, and waits for them."""
    launched = Launched(children, tmp, workers, startup_timeout_s)
    if site_a.made_by != "interlink" or site_b.made_by != "interlink":
        why = f"certificates not made by interlink: {site_a.note or site_b.note}"
        launched.failed = {spec.name: why for spec in specs}
        return launched
    if not launched.cli.exists():
        launched.failed = {spec.name: f"{launched.cli} does not exist (is interlink installed in the venv?)" for spec in specs}
        return launched
    for spec in specs:
        values = dict(
            spec.ports, name=spec.name, service=SERVICE, listener=spec.listener, export=spec.export,
            import_=spec.import_, gw_a_lines=spec.gw_a_lines, a=site_a.dir.relative_to(tmp), b=site_b.dir.relative_to(tmp),
            connections=f", connections: {spec.peer_connections}" if spec.peer_connections else "",
            domain_a_gives_b=DOMAIN_A_GIVES_B, domain_b_gives_a=DOMAIN_B_GIVES_A,
        )  # fmt: skip
        (tmp / _site_file(spec, "a")).write_text(SITE_A.format(**values))
        (tmp / _site_file(spec, "b")).write_text(SITE_B.format(**values))
        launched.specs[spec.name] = spec
        launched.gw_a[spec.name] = launched.start(spec, "a")
    return launched


def _site_file(spec: PairSpec, side: str) -> str:
    return f"bench-{spec.name}-gw-{side}.yaml"


class Launched:
    def __init__(self, children: Children, tmp: Path, workers: int | None, startup_timeout_s: float) -> None:
        self.children = children
        self.tmp = tmp
        self.cli = interlink_cli()
        self.extra = ["--workers", str(workers)] if workers else []
        self.timeout = startup_timeout_s
        self.t0 = time.monotonic()
        self.specs: dict[str, PairSpec] = {}
        self.gw_a: dict[str, Child] = {}
        self.failed: dict[str, str] = {}

    def start(self, spec: PairSpec, side: str) -> Child:
        site_file = _site_file(spec, side)
        argv = [str(self.cli), "run", "-c", site_file, *self.extra]
        log = self.tmp / f"{site_file}.log"
        env = None
        if self.children.profile is not None:  # --profile: the same command under cProfile (bench/profiling.py)
            argv, env = self.children.profile.wrap(argv, f"{spec.name}-gw-{side}", log)
        return self.children.start(f"{spec.name} GW-{side.upper()}", argv, cwd=self.tmp, log=log, env=env)

    def wait(self) -> tuple[dict[str, Pair], dict[str, str]]:
        """(pairs whose gateways listen, pair name -> why not); a pair that failed is stopped."""
        # every gateway imports and binds at once: on a small machine the last one needs longer than one alone
        slack = 3.0 * max(0, len(self.specs) - 1)
        gw_b: dict[str, Child] = {}
        for name, spec in self.specs.items():
            why = self._not_listening(spec, "a", self.gw_a[name], [spec.ports["peer_a"]], self.t0, slack)
            if why:
                self.failed[name] = why
                self.children.stop(self.gw_a[name])
            else:
                gw_b[name] = self.start(spec, "b")
        t_b = time.monotonic()
        pairs: dict[str, Pair] = {}
        for name, child in gw_b.items():
            spec = self.specs[name]
            why = self._not_listening(spec, "b", child, [spec.ports["entry"], spec.ports["peer_b"]], t_b, slack)
            if why:
                self.failed[name] = why
                self.children.stop(child)
                self.children.stop(self.gw_a[name])
            else:
                pairs[name] = Pair(name, self.gw_a[name], child, spec.ports["entry"])
        return pairs, dict(self.failed)

    def _not_listening(
        self, spec: PairSpec, side: str, child: Child, ports: list[int], started: float, slack: float
    ) -> str | None:
        """None once the gateway (started at `started`) listens on all its ports, else why not."""
        deadline = started + self.timeout + slack
        for port in ports:
            if not wait_for_port(port, child, timeout=max(1.0, deadline - time.monotonic())):
                state = (
                    f"is not listening on 127.0.0.1:{port} after {time.monotonic() - started:.0f}s"
                    if child.alive() else f"exited with status {child.proc.returncode}"
                )  # fmt: skip
                return f"`interlink run -c {_site_file(spec, side)}` {state}; last log lines:\n{_indent(child.log_tail())}"
        return None


def start_pair(
    children: Children, tmp: Path, site_a: certs.SiteCerts, site_b: certs.SiteCerts, spec: PairSpec,
    workers: int | None, startup_timeout_s: float,
) -> Pair:  # fmt: skip
    """One pair, started and waited for; raises InterlinkUnavailable (with the log tail) if it does not listen."""
    pairs, failed = launch_pairs(children, tmp, site_a, site_b, [spec], workers, startup_timeout_s).wait()
    if failed:
        raise InterlinkUnavailable(failed[spec.name])
    return pairs[spec.name]


def wait_ready(child: Child, timeout_s: float) -> bool:
    """True once the gateway logged `gateway.ready` (listening, and the registry's first sets applied)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and child.alive():
        if any(e.get("event") == "gateway.ready" for e in log_events(child.log, ("gateway.ready",))):
            return True
        time.sleep(0.05)
    return False


def read_log(log: Path, start: int = 0, end: int | None = None) -> bytes:
    """A gateway's log between two byte offsets (to its end without `end`); b"" if it cannot be read."""
    try:
        with open(log, "rb") as f:
            f.seek(start)
            return f.read() if end is None else f.read(max(0, end - start))
    except OSError:
        return b""


def log_events(log: Path, wanted: tuple[str, ...], offset: int = 0) -> list[dict]:
    """The JSON log lines of a gateway (from byte `offset`) that mention one of `wanted`, decoded. Only the
    matching lines are parsed: a gateway's log holds an access line per call."""
    keys = tuple(w.encode() for w in wanted)
    out = []
    for line in read_log(log, offset).splitlines():
        if any(k in line for k in keys):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def not_ok_calls(log: Path, start: int, end: int | None = None) -> dict[str, int]:
    """Calls a gateway logged with a status other than OK between two log offsets: {status: count}."""
    counts: dict[str, int] = {}
    for line in read_log(log, start, end).splitlines():
        # compact JSON (orjson, interlink.logs) or json.dumps' ", " / ": " (before it)
        if b'"call"' in line and b'"status":"OK"' not in line and b'"status": "OK"' not in line:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "call":
                key = str(event.get("status"))
                counts[key] = counts.get(key, 0) + 1
    return counts


def gateway_errors(proxies: dict[str, Child], offsets: dict[str, int]) -> dict[str, dict[str, int]]:
    """Calls each gateway (role -> process) logged with a status other than OK since `offsets` (role -> log
    offset): role -> {status: count}, for the gateways that logged any. h2load counts every HTTP 200 as a
    success, and a gateway's refusal (RESOURCE_EXHAUSTED, PERMISSION_DENIED ...) is one; only the logs say.
    CANCELLED is among them: h2load resets the calls still in flight when its run ends (up to c per run, and a
    cell is two runs), so those are expected and not counted as errors (see `logged_errors`)."""
    counts = {role: not_ok_calls(child.log, offsets[role]) for role, child in proxies.items()}
    return {role: c for role, c in counts.items() if c}


def logged_errors(cell: dict) -> int:
    """Calls the gateways logged not OK, except CANCELLED (a caller's reset: h2load at the end of its runs)."""
    return sum(n for counts in cell.get("gateway_errors", {}).values() for status, n in counts.items()
               if status != "CANCELLED")  # fmt: skip


def log_size(log: Path) -> int:
    try:
        return log.stat().st_size
    except OSError:
        return 0
