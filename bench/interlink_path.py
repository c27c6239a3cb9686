"""The interlink path: load generator -> GW-B triple listener -> (mTLS, HTTP/2) -> GW-A peer listener ->
provider. Each gateway is `.venv/bin/interlink run -c <site file>`, one process each (the CLI's default
worker count, or --interlink-workers)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from bench.certs import SiteCerts
from bench.processes import Child, Children, wait_for_port

# Access domains: the exporting site gives one to each consumer site.
DOMAIN_A_GIVES_B = "site-b.gw.site-a.test"  # site B uses it to call site A
DOMAIN_B_GIVES_A = "site-a.gw.site-b.test"

SITE_A_FILE = "bench-gw-a.yaml"
SITE_B_FILE = "bench-gw-b.yaml"

SITE_A = """\
# GW-A: exports EchoService (the canned provider) to site B.
site: site-a
listen: {{peer: 127.0.0.1:{peer_a}}}
tls: {{ca: {a}/ca.pem, cert: {a}/gateway.pem, key: {a}/gateway.key}}
peers:
  site-b: {{endpoints: [127.0.0.1:{peer_b}], ca: {b}/ca.pem, domain: {domain_b_gives_a}}}
domains: {{site-b: {domain_a_gives_b}}}
exports:
  - {{service: com.example.EchoService, protocol: triple, providers: [127.0.0.1:{provider}], allow: {{site-b: {{}}}}}}
"""

SITE_B = """\
# GW-B: imports EchoService from site A and serves it to local callers on the triple listener.
site: site-b
listen: {{triple: 127.0.0.1:{triple_b}, peer: 127.0.0.1:{peer_b}}}
tls: {{ca: {b}/ca.pem, cert: {b}/gateway.pem, key: {b}/gateway.key}}
peers:
  site-a: {{endpoints: [127.0.0.1:{peer_a}], ca: {a}/ca.pem, domain: {domain_a_gives_b}}}
domains: {{site-a: {domain_b_gives_a}}}
imports:
  - {{service: com.example.EchoService, from: site-a, protocol: triple}}
"""


@dataclass
class InterlinkGateways:
    gw_a: Child
    gw_b: Child
    entry_port: int  # GW-B's triple listener


class InterlinkUnavailable(Exception):
    """The interlink path cannot be measured (yet); the message says why."""


def interlink_cli() -> Path:
    return Path(sys.executable).parent / "interlink"


def start_gateways(
    children: Children,
    workdir: Path,
    site_a: SiteCerts,
    site_b: SiteCerts,
    ports: dict[str, int],
    workers: int | None = None,
    startup_timeout_s: float = 20.0,
) -> InterlinkGateways:
    if site_a.made_by != "interlink" or site_b.made_by != "interlink":
        raise InterlinkUnavailable(f"certificates not made by interlink: {site_a.note or site_b.note}")
    cli = interlink_cli()
    if not cli.exists():
        raise InterlinkUnavailable(f"{cli} does not exist (is interlink installed in the venv?)")

    workdir.mkdir(parents=True, exist_ok=True)
    values = dict(
        ports,
        a=site_a.dir.relative_to(workdir),
        b=site_b.dir.relative_to(workdir),
        domain_a_gives_b=DOMAIN_A_GIVES_B,
        domain_b_gives_a=DOMAIN_B_GIVES_A,
    )
    # Distinctive file names: other people's clean-up of their own `interlink run -c site-a.yaml` by
    # pattern must not hit the benchmark's gateways.
    (workdir / SITE_A_FILE).write_text(SITE_A.format(**values))
    (workdir / SITE_B_FILE).write_text(SITE_B.format(**values))

    extra = ["--workers", str(workers)] if workers else []
    started = []
    for name, site_file, must_listen in (
        ("interlink GW-A", SITE_A_FILE, [ports["peer_a"]]),
        ("interlink GW-B", SITE_B_FILE, [ports["triple_b"], ports["peer_b"]]),
    ):
        argv = [str(cli), "run", "-c", site_file, *extra]
        child = children.start(name, argv, cwd=workdir, log=workdir / f"{site_file}.log")
        started.append(child)
        for port in must_listen:
            if not wait_for_port(port, child, timeout=startup_timeout_s):
                if child.alive():
                    state = f"is not listening on 127.0.0.1:{port} after {startup_timeout_s:.0f}s"
                else:
                    state = f"exited with status {child.proc.returncode}"
                for c in started:
                    children.stop(c)
                raise InterlinkUnavailable(
                    f"`interlink run -c {site_file}` {state}; last log lines:\n{_indent(child.log_tail())}"
                )
    return InterlinkGateways(gw_a=started[0], gw_b=started[1], entry_port=ports["triple_b"])


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines()) or "    (no output)"
