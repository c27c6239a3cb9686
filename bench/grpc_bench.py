"""gRPC unary benchmark, one invocation: direct, nginx two-hop grpc_pass chain, two interlink gateways.

    provider   nginx (h2c) answering /com.example.EchoService/echo with a canned EchoReply
    direct     h2load -> provider
    nginx      h2load -> hop1 (h2c in, grpc_pass grpcs:// + client cert) -> hop2 (ssl, verify client) -> provider
    interlink  h2load -> GW-B (triple listener) -> GW-A (peer listener, mTLS) -> provider
    interlink-routed
               the same with every stage of the routing/resilience pipeline on (not run by default; `--paths
               interlink,interlink-routed`): GW-A's export has two tagged providers (two ports of the one
               provider), routing stages, outlier ejection, max_in_flight and a rate on site B's rule, GW-B's
               import a max_in_flight

For every payload × concurrency the paths are measured one after the other (interleaved, so that drift of
the machine hits all of them alike): a warm-up run, then a measured run of fixed duration, with CPU
(utime + stime of each proxy's process tree) and peak RSS (VmHWM) read from /proc around it.

Usage: python -m bench [--quick] [options]   (or python bench/grpc_bench.py; bench/run.sh installs nginx
and h2load first)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a script (`python bench/grpc_bench.py`): make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import certs, nginx, report  # noqa: E402  (after the path fix above)
from bench.cells import Bracket, dead_cell, finish_cell, print_outcome  # noqa: E402
from bench.gateway_pair import (  # noqa: E402
    DOMAIN_A_GIVES_B,
    PairSpec,
    export_of,
    gateway_errors,
    import_of,
    launch_pairs,
    log_size,
    logged_errors,
    make_sites,
)
from bench.loadgen import echo_message, h2load_version, run_h2load  # noqa: E402
from bench.processes import Child, Children, free_ports, run_guarded  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ALL_PATHS = ("direct", "nginx", "interlink", "interlink-routed")
DEFAULT_PATHS = ("direct", "nginx", "interlink")  # interlink-routed is asked for by name (--paths)
INTERLINK_PATHS = ("interlink", "interlink-routed")  # the paths through two gateways

# The interlink-routed path: GW-A's export with every stage of the routing/resilience pipeline on, each set
# so that it passes every call (what is measured is what the stages cost, not what they refuse). Two
# providers, two addresses of the one canned provider (it listens on a second port); `nearest` (GW-A's
# zone hz-a) leaves the first, so it gets every call. Site B's calls (h2load's) name no app: the rule for
# site B names none either (every app, as on the plain path), and its token bucket is (EchoService,
# site-b, "").
ROUTED_GW_A_LINES = "zone: hz-a\nunit: u00\n"
ROUTED_EXPORT_OPTIONS = {
    "routing": "[target_zone, unit, nearest, weighted]",
    "outlier": "{consecutive_failures: 5, eject_s: 30, max_ejected_percent: 50}",
    "max_in_flight": "100000",
}
ROUTED_SITE_B_RULE = "{rate: 1000000/s, burst: 1000000}"
ROUTED_IMPORT_OPTIONS = {"max_in_flight": "100000"}


@dataclass
class BenchPath:
    """One way from the load generator to the provider."""

    name: str
    entry_port: int
    proxies: dict[str, Child] = field(default_factory=dict)  # role -> process (B side first)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short runs (1 s warm-up, 2 s measured): < 2 min")
    p.add_argument("--duration", type=float, help="measured seconds per cell (default 10, quick 2)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per cell (default 2, quick 1)")
    p.add_argument("--sizes", default="100,16384", help="payload sizes in bytes (EchoRequest.message)")
    p.add_argument("--concurrency", default="1,16,64", help="calls in flight")
    p.add_argument(
        "--connections", type=int, default=1,
        help="HTTP/2 connections from the load generator (calls are spread over them); default 1, "
        "like one gRPC channel",
    )  # fmt: skip
    p.add_argument(
        "--paths", default=",".join(DEFAULT_PATHS),
        help=f"subset of {','.join(ALL_PATHS)} (default {','.join(DEFAULT_PATHS)}; interlink-routed: the interlink "
        "path with every routing/resilience stage on)",
    )  # fmt: skip
    p.add_argument(
        "--rps", type=int,
        help="offer at most this many calls a second (h2load --rps, split over --connections): paths then do the "
        "same work and their CPU per call compares without rate effects (batching); default: as fast as they go",
    )  # fmt: skip
    p.add_argument("--interlink-workers", type=int, help="pass --workers N to `interlink run` (default: not passed)")
    p.add_argument("--startup-timeout", type=float, default=20.0, help="seconds to wait for a gateway to listen")
    p.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, certs, logs)")
    args = p.parse_args(argv)
    args.duration = args.duration or (2.0 if args.quick else 10.0)
    args.warmup = args.warmup or (1.0 if args.quick else 2.0)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.paths = [s.strip() for s in args.paths.split(",") if s.strip()]
    unknown = set(args.paths) - set(ALL_PATHS)
    if unknown:
        p.error(f"unknown path(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return run_guarded(lambda tmp, children: run(args, tmp, children), args.keep_tmp)


def run(args: argparse.Namespace, tmp: Path, children: Children) -> int:
    started = dt.datetime.now(dt.timezone.utc)
    print(f"bench: temp dir {tmp}")
    names = ["provider", "provider_2", "hop1", "hop2", "entry", "peer_a", "peer_b", "routed_entry", "routed_peer_a",
             "routed_peer_b"]  # fmt: skip
    ports = dict(zip(names, free_ports(len(names))))
    for size in args.sizes:
        (tmp / f"request-{size}.bin").write_bytes(echo_message(size))

    # Certificates: site A's gateway answers for the access domain A gave B, and vice versa.
    site_a, site_b = make_sites(tmp)
    print(f"bench: certificates made by {site_a.made_by}" + (f" ({site_a.note})" if site_a.note else ""))

    routed = "interlink-routed" in args.paths
    provider = start_provider(children, tmp, ports["provider"], args.sizes, [ports["provider_2"]] if routed else [])
    paths: list[BenchPath] = []
    skipped: dict[str, str] = {}
    if "direct" in args.paths:
        paths.append(BenchPath("direct", ports["provider"]))
    if "nginx" in args.paths:
        paths.append(start_nginx_chain(children, tmp, ports, site_a, site_b))
    specs = [spec for spec in interlink_specs(ports) if spec.name in args.paths]
    if specs:  # both pairs start at once
        launched = launch_pairs(children, tmp, site_a, site_b, specs, args.interlink_workers, args.startup_timeout)
        pairs, failed = launched.wait()
        paths += [BenchPath(name, pair.entry_port, pair.proxies) for name, pair in pairs.items()]
        skipped.update(failed)

    # Sanity: a grpcio client through every path, every payload, before anything is measured.
    for path in list(paths):
        problem = sanity_check(path.entry_port, args.sizes)
        if problem:
            paths.remove(path)
            skipped[path.name] = f"sanity check (grpcio client) failed: {problem}"
        else:
            print(f"bench: sanity ok on {path.name}: grpcio echo {args.sizes} -> OK, grpc-status 0")
    for name, why in skipped.items():
        print(f"bench: SKIPPING the {name} path: {why}")

    cells = measure_all(args, tmp, paths, provider)
    ratio_rows = report.ratios(cells)
    finished = dt.datetime.now(dt.timezone.utc)

    print()
    print(report.cell_table(cells))
    print(
        "\nµs/call = CPU (user+sys) of that proxy's processes per successful call; RSS = peak (VmHWM) of its"
        "\nlargest process; client/provider = CPU of h2load / the provider nginx in % of one core; other ="
        "\nCPU used by anything else on the machine (other users, unattributed kernel work), in % of one core:"
        "\nwhen it is large, the cell was disturbed."
    )
    print()
    print(report.activity_table(cells))
    if ratio_rows:
        print("\ninterlink / nginx (same run; rps > 1 and CPU < 1 favour interlink)")
        print(report.ratio_table(ratio_rows))
    checks = report.target_checks(cells, ratio_rows)
    if "interlink" in args.paths:
        print("\nissue 2 targets for the interlink path:")
        print(report.target_table(checks))
    pipeline = report.routing_costs(cells)
    if pipeline:
        print("\n" + report.routing_cost_line(pipeline))
    for name, why in skipped.items():
        print(f"\nbench: the {name} path was SKIPPED: {why}")

    results = {
        "started": started.isoformat(),
        "finished": finished.isoformat(),
        "machine": machine_info(),
        "tools": {"nginx": nginx.nginx_version(), "h2load": h2load_version(), "python": platform.python_version()},
        "git_rev": git_rev(),
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "sizes": args.sizes,
            "concurrency": args.concurrency,
            "connections": args.connections,
            "paths": args.paths,
            "interlink_workers": args.interlink_workers,
            "certificates_made_by": site_a.made_by,
            "cpu_pinning": "none",
            "nginx_worker_processes": 1,
        },
        "skipped": skipped,
        "cells": cells,
        "ratios_interlink_over_nginx": ratio_rows,
        "interlink_targets": [{"target": w, "met": ok, "measured": v} for w, ok, v in checks],
    }
    if pipeline:
        results["routing_pipeline_cost"] = pipeline
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"\nbench: results written to {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    # Every requested path must have been measured: a skipped path (say, a gateway that did not come up)
    # means the benchmark is broken, and CI runs it to keep it working.
    measured = {c["path"] for c in cells if "error" not in c}
    unmeasured = set(args.paths) - measured
    if unmeasured:
        print(f"bench: not measured: {', '.join(sorted(unmeasured))}")
    return 1 if unmeasured else 0


# --- the servers ---------------------------------------------------------------------------------


def start_provider(children: Children, tmp: Path, port: int, sizes: list[int], more_ports: Sequence[int] = ()) -> Child:
    """The canned provider nginx on `port`, and on `more_ports` too (the same server)."""
    prefix = tmp / "nginx-provider"
    (prefix / "replies").mkdir(parents=True)
    stub = prefix / "stub" / "com.example.EchoService" / "echo"  # must exist: see provider.conf.in
    stub.parent.mkdir(parents=True)
    stub.touch()
    for size in sizes:
        (prefix / "replies" / f"reply-{size}.bin").write_bytes(echo_message(size))
    reply_map = "\n".join(f"        {size} /reply-{size}.bin;" for size in sizes)
    more_listen = "\n".join(f"        listen 127.0.0.1:{p} http2;" for p in more_ports)
    return nginx.start(
        children, "provider nginx", "provider.conf.in", prefix,
        {"PORT": port, "MORE_LISTEN": more_listen, "REPLY_MAP": reply_map},
    )  # fmt: skip


def interlink_specs(ports: dict[str, int]) -> list[PairSpec]:
    """The pairs of gateways of the interlink paths. Both: GW-A exports EchoService (the canned provider) to
    site B, GW-B serves it on its triple listener, with interlink's default number of connections to GW-A.
    interlink-routed: the same with every routing/resilience stage on (ROUTED_*), its two providers being
    the provider's two ports, tagged as in README.md "Routing over providers"."""
    providers = [
        f"{{address: 127.0.0.1:{ports['provider']}, zone: hz-a, unit: u00, weight: 80}}",
        f"{{address: 127.0.0.1:{ports['provider_2']}, zone: hz-b, unit: u01, weight: 20}}",
    ]
    return [
        PairSpec(
            "interlink", "triple", export_of("triple", ports["provider"]), import_of("triple"),
            {k: ports[k] for k in ("entry", "peer_a", "peer_b")}, peer_connections=None,
        ),
        PairSpec(
            "interlink-routed", "triple",
            export_of("triple", providers=providers, site_b_rule=ROUTED_SITE_B_RULE, **ROUTED_EXPORT_OPTIONS),
            import_of("triple", **ROUTED_IMPORT_OPTIONS),
            {k: ports[f"routed_{k}"] for k in ("entry", "peer_a", "peer_b")}, gw_a_lines=ROUTED_GW_A_LINES,
            peer_connections=None,
        ),
    ]  # fmt: skip


def start_nginx_chain(
    children: Children, tmp: Path, ports: dict[str, int], site_a: certs.SiteCerts, site_b: certs.SiteCerts
) -> BenchPath:
    hop2 = nginx.start(
        children, "nginx hop2", "hop2.conf.in", tmp / "nginx-hop2",
        {
            "PORT": ports["hop2"], "UPSTREAM_PORT": ports["provider"], "ACCESS_DOMAIN": DOMAIN_A_GIVES_B,
            "SERVER_CERT": site_a.cert, "SERVER_KEY": site_a.key, "PEER_CA": site_b.ca,
        },
    )  # fmt: skip
    hop1 = nginx.start(
        children, "nginx hop1", "hop1.conf.in", tmp / "nginx-hop1",
        {
            "PORT": ports["hop1"], "UPSTREAM_PORT": ports["hop2"], "ACCESS_DOMAIN": DOMAIN_A_GIVES_B,
            "CLIENT_CERT": site_b.cert, "CLIENT_KEY": site_b.key, "PEER_CA": site_a.ca,
        },
    )  # fmt: skip
    return BenchPath("nginx", ports["hop1"], {"hop1": hop1, "hop2": hop2})


def sanity_check(port: int, sizes: list[int]) -> str | None:
    """None if a grpcio client gets the right echo reply and grpc-status 0 for every size, else why not."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.sanity", str(port), *map(str, sizes)],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return "no answer within 60 s"
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return f"sanity client crashed: {proc.stderr.strip()[-800:]}"
    if result["ok"]:
        return None
    bad = [c for c in result["calls"] if not c["ok"]]
    return "; ".join(
        f"{c['size']} B -> {c.get('code')} {c.get('details', '')}".strip()
        + ("" if c.get("request_framing_ok", True) else " (request framing wrong)")
        for c in bad
    )


# --- measuring -----------------------------------------------------------------------------------


def measure_all(args: argparse.Namespace, tmp: Path, paths: list[BenchPath], provider: Child) -> list[dict]:
    cells = []
    total = len(args.sizes) * len(args.concurrency) * len(paths)
    n = 0
    all_proxies = {f"{p.name}:{role}": child for p in paths for role, child in p.proxies.items()}
    width = max([9, *(len(p.name) for p in paths)])
    reported_dead: set[str] = set()
    for size in args.sizes:
        for conc in args.concurrency:
            for path in paths:
                n += 1
                label = f"[{n}/{total}] {path.name:<{width}} {report.size_label(size):>6} c={conc:<3}"
                print(f"bench: {label} ...", end="", flush=True)
                dead = {role: child for role, child in path.proxies.items() if not child.alive()}
                if dead:
                    cell = dead_cell(path.name, size, conc, dead, reported_dead)
                elif path.name in INTERLINK_PATHS:  # what h2load cannot tell: calls the gateways refused
                    offsets = {role: log_size(child.log) for role, child in path.proxies.items()}
                    cell = measure_cell(args, tmp, path, size, conc, provider, all_proxies)
                    cell["gateway_errors"] = gateway_errors(path.proxies, offsets)
                else:
                    cell = measure_cell(args, tmp, path, size, conc, provider, all_proxies)
                cells.append(cell)
                print_outcome(cell, logged_errors(cell))
    return cells


def measure_cell(
    args: argparse.Namespace,
    tmp: Path,
    path: BenchPath,
    size: int,
    conc: int,
    provider: Child,
    all_proxies: dict[str, Child],
) -> dict:
    cell: dict = {"path": path.name, "size": size, "concurrency": conc, "connections": min(args.connections, conc)}
    load = dict(
        size=size,
        concurrency=conc,
        connections=args.connections,
        request_file=tmp / f"request-{size}.bin",
        log_file=tmp / "h2load.log",
        rps=args.rps,
    )
    try:
        run_h2load(path.entry_port, duration_s=args.warmup, **load)
        # The /proc samples bracket h2load's whole run (start-up and exit too): `bracket.seconds`, a little
        # more than the measured `result.seconds`.
        bracket = Bracket({"provider": provider, **all_proxies})
        result = run_h2load(path.entry_port, duration_s=args.duration, **load)
        bracket.close()
    except RuntimeError as exc:
        return {**cell, "error": str(exc)}
    if result.ok == 0:
        return {**cell, "error": f"no successful call ({result.done} done, {result.errors} errors)"}

    cell.update(
        seconds=round(result.seconds, 3),
        calls=result.ok,
        errors=result.errors,
        rps=round(result.rps, 1),
        p50_ms=result.percentile_ms(50),
        p90_ms=result.percentile_ms(90),
        p99_ms=result.percentile_ms(99),
        max_ms=result.latencies_us[-1] / 1000 if result.latencies_us else None,
        client_cpu_pct=round(100 * result.client_cpu_s / bracket.seconds, 1),
        provider_cpu_pct=bracket.pct("provider"),
    )
    return finish_cell(cell, bracket, result.client_cpu_s, result.ok, path.name, path.proxies, all_proxies)


# --- context -------------------------------------------------------------------------------------


def machine_info() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(), "loadavg_start": os.getloadavg()}


def git_rev() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        return out.stdout.strip() or None
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
