"""Bolt part of the benchmark: SOFARPC echo(String) over Bolt V1, direct and through two interlink gateways.

    provider        bench/bolt_echo_server.js: raw Bolt V1 in Node, a canned SofaResponse per payload size
    bolt-direct     bench/bolt_load.js -> provider
    bolt-interlink  bench/bolt_load.js -> GW-B (bolt listener) -> (mTLS, ALPN bolt) -> GW-A (peer) -> provider

Frames are built in Python with interlink's codec (bench/bolt_frames.py). Before anything is measured, a
sanity pass proves that
  1. the request frames are real SOFARPC: the real sofa-rpc-node 2.10.0 server (tests/peers/bolt_server.js)
     answers each of them with the expected echo (decoded with the codec);
  2. the canned provider is real SOFARPC: the real sofa-rpc-node client (tests/peers/bolt_client.js --case
     echo) gets the payload back from it, for every size; and it acks a heartbeat;
  3. every path answers pipelined calls (distinct ids on one connection) with the expected echo, decoded
     with the codec (and, for the gateway path, the sofa-rpc-node client gets its echo through it too).
A path that fails is not measured and the part's status is 1. Numbers are never asserted.

Each cell (payload × concurrency × path, paths interleaved) is one bolt_load.js run: warm-up, then (after
a handshake on stdin so that /proc is read exactly around it) the measured phase.
"""

from __future__ import annotations

import json
import select
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bench import bolt_frames
from bench.cells import Bracket, dead_cell, finish_cell, print_outcome
from bench.gateway_pair import InterlinkUnavailable, PairSpec, export_of, import_of, make_sites, start_pair
from bench.processes import Child, Children, _die_with_parent, free_ports, reap, wait_for_port
from bench.report import GATEWAY_HEAD, GATEWAYS, activity_table, gateway_columns, num, size_label, target_table

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
PEERS = REPO / "tests" / "peers"
ALL_PATHS = ("bolt-direct", "bolt-interlink")

# Issue 3's targets for the Bolt -> Bolt path through both gateways (one worker each), judged on 100 B.
TARGET_RPS_C16 = 6000
TARGET_RPS_OVER_NGINX = 2.0  # × the nginx gRPC two-hop chain's rps, 100 B, c=16, same run
TARGET_P50_MS_C1 = 1.5
TARGET_CPU_US_PER_GATEWAY = 60
# Issue 12's T7: Bolt 100 B, c=16, calls spread over 4 connections (the part's default --bolt-connections).
T7_CONNECTIONS = 4
T7_RPS_OVER_NGINX = 1.0  # × the nginx gRPC two-hop chain at 100 B, c=16, same run
T7_CPU_US_PER_GATEWAY = 30


@dataclass
class BoltPath:
    name: str
    entry_port: int
    proxies: dict[str, Child] = field(default_factory=dict)  # role -> process (B side first)


@dataclass
class BoltOptions:
    sizes: list[int]
    concurrency: list[int]
    connections: int
    paths: list[str]
    duration: float
    warmup: float
    startup_timeout: float = 20.0
    interlink_workers: int | None = None


def _spread(conc: int, connections: int) -> str:
    """How bolt_load.js spreads `conc` calls over `connections` (the first conc % n get one more)."""
    n = max(1, min(connections, conc))
    counts = [conc // n + (1 if i < conc % n else 0) for i in range(n)]
    return "+".join(str(c) for c in counts) + f" on {n} connection(s)"


def node_binary() -> str | None:
    return shutil.which("node")


def _package_version(name: str) -> str | None:
    try:
        return json.loads((PEERS / "node_modules" / name / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


# --- servers ---------------------------------------------------------------------------------------


class ProviderFailed(RuntimeError):
    """A canned provider did not come up."""


def start_provider(
    children: Children, node: str, tmp: Path, port: int, replies: dict[int, Path], name: str = ""
) -> Child:
    """The canned Bolt provider (bolt_echo_server.js): `replies` maps a request's contentLen to the file of
    the reply frame; `name` tells several apart (the churn part's P1 and P2)."""
    argv = [node, str(BENCH / "bolt_echo_server.js"), "--listen", f"127.0.0.1:{port}"]
    for content_len, path in replies.items():
        argv += ["--reply", f"{content_len}:{path}"]
    what = f"bolt provider {name}".rstrip()
    child = children.start(what, argv, cwd=tmp, log=tmp / f"{what.replace(' ', '-')}.log")
    if not wait_for_port(port, child):
        raise ProviderFailed(f"the canned {what} did not listen on {port}:\n{child.log_tail()}")
    return child


# --- sanity ------------------------------------------------------------------------------------------


def check_requests_with_real_server(children: Children, node: str, tmp: Path, port: int, sizes: list[int]) -> list[str]:
    """Our request frames, sent to the real sofa-rpc-node server: it must echo each payload."""
    if not (PEERS / "node_modules" / "sofa-rpc-node").is_dir():
        return [f"{PEERS}/node_modules/sofa-rpc-node is missing (run scripts/setup.sh)"]
    argv = [node, str(PEERS / "bolt_server.js"), "--listen", f"127.0.0.1:{port}", "--name", "bench-check"]
    child = children.start("sofa-rpc-node server (sanity)", argv, cwd=tmp, log=tmp / "sofa-rpc-node-server.log")
    try:
        if not wait_for_port(port, child, timeout=20):
            return [f"sofa-rpc-node server did not start:\n{child.log_tail()}"]
        return bolt_frames.sanity_check(port, sizes)
    finally:
        children.stop(child)


def check_with_real_client(node: str, port: int, sizes: list[int]) -> list[str]:
    """The real sofa-rpc-node client calls echo('x' * size) on `port` and must get the payload back."""
    problems = []
    for size in sizes:
        argv = [
            node, str(PEERS / "bolt_client.js"), "--target", f"127.0.0.1:{port}", "--case", "echo",
            "--app", bolt_frames.CALLER_APP, "--arg", bolt_frames.payload(size),
        ]  # fmt: skip
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, preexec_fn=_die_with_parent)
        except subprocess.TimeoutExpired:
            problems.append(f"{size} B: sofa-rpc-node client got no answer within 60 s")
            continue
        try:
            result = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            problems.append(f"{size} B: sofa-rpc-node client failed: {proc.stderr.strip()[-600:]}")
            continue
        if not result.get("ok"):
            problems.append(f"{size} B: sofa-rpc-node client error {result.get('error')}")
        elif result.get("result") != bolt_frames.payload(size):
            got = result.get("result")
            shown = f"a {len(got)}-char string" if isinstance(got, str) else repr(got)[:100]
            problems.append(f"{size} B: sofa-rpc-node client got {shown}, not the payload")
    return problems


# --- measuring ---------------------------------------------------------------------------------------


class LoadFailed(Exception):
    pass


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise LoadFailed(f"bolt_load.js said nothing within {timeout:.0f}s")
    return proc.stdout.readline()


def _load_json(line: str, proc: subprocess.Popen) -> dict:
    try:
        return json.loads(line)
    except ValueError:
        proc.wait(5)
        raise LoadFailed(f"bolt_load.js failed (exit {proc.returncode}): {line.strip()} {proc.stderr.read()[-600:]}")


def measure_cell(
    opts: BoltOptions, node: str, files: dict[int, dict[str, Path]], path: BoltPath, size: int, conc: int,
    provider: Child, all_proxies: dict[str, Child],
) -> dict:  # fmt: skip
    cell: dict = {"path": path.name, "size": size, "concurrency": conc, "connections": min(opts.connections, conc)}
    argv = [
        node, str(BENCH / "bolt_load.js"), "--port", str(path.entry_port),
        "--request", str(files[size]["request"]), "--expect-content", str(files[size]["content"]),
        "--concurrency", str(conc), "--connections", str(opts.connections),
        "--warmup", str(opts.warmup), "--duration", str(opts.duration), "--sync",
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_die_with_parent,
    )  # fmt: skip
    try:
        line = _read_line(proc, opts.warmup + 30)
        if line.strip() != "warm":
            result = _load_json(line, proc)
            raise LoadFailed(f"warm-up failed: {result.get('fatal') or result}")
        bracket = Bracket({"provider": provider, **all_proxies})
        proc.stdin.write("go\n")
        proc.stdin.flush()
        line = _read_line(proc, opts.duration + 30)
        bracket.close()
        result = _load_json(line, proc)
        proc.wait(10)
    except (LoadFailed, subprocess.TimeoutExpired, OSError) as exc:
        return {**cell, "error": str(exc)}
    finally:
        reap(proc)
    if result.get("fatal"):
        return {**cell, "error": f"load generator: {result['fatal']} ({result['calls']} calls before)", "load": result}
    if not result.get("first_response_ok"):
        return {**cell, "error": f"first response is not the expected echo: {result.get('first_response')}"}
    if result["calls"] == 0:
        return {**cell, "error": f"no successful call ({result['errors']} errors, statuses {result['statuses']})"}

    calls = result["calls"]
    client_cpu_s = result["client_cpu_s"] or 0.0
    cell.update(
        seconds=result["seconds"],
        calls=calls,
        errors=result["errors"],
        error_statuses=result["statuses"],
        unmatched=result["unmatched"],
        rps=result["rps"],
        p50_ms=result["p50_ms"],
        p90_ms=result["p90_ms"],
        p99_ms=result["p99_ms"],
        max_ms=result["max_ms"],
        request_bytes=result["request_bytes"],
        client_cpu_pct=round(100 * client_cpu_s / bracket.seconds, 1),
        client_cpu_us_per_call=round(client_cpu_s * 1e6 / calls, 1),
        provider_cpu_pct=bracket.pct("provider"),
        provider_cpu_us_per_call=round(bracket.cpu["provider"] * 1e6 / calls, 1),
    )
    return finish_cell(cell, bracket, client_cpu_s, calls, path.name, path.proxies, all_proxies)


def measure_all(opts, node, files, paths: list[BoltPath], provider: Child) -> list[dict]:
    cells = []
    total = len(opts.sizes) * len(opts.concurrency) * len(paths)
    all_proxies = {f"{p.name}:{role}": child for p in paths for role, child in p.proxies.items()}
    reported_dead: set[str] = set()
    n = 0
    for size in opts.sizes:
        for conc in opts.concurrency:
            for path in paths:
                n += 1
                print(f"bench: [{n}/{total}] {path.name:<14} {size_label(size):>6} c={conc:<3} ...", end="", flush=True)
                dead = {role: c for role, c in {**path.proxies, "provider": provider}.items() if not c.alive()}
                if dead:
                    cell = dead_cell(path.name, size, conc, dead, reported_dead)
                else:
                    cell = measure_cell(opts, node, files, path, size, conc, provider, all_proxies)
                cells.append(cell)
                print_outcome(cell)
    return cells


# --- report ------------------------------------------------------------------------------------------


def cell_table(cells: list[dict]) -> str:
    head = (
        f"{'path':<15} {'payload':>7} {'conc':>4} {'rps':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}"
        f"{GATEWAY_HEAD} | {'client':>6} {'µs/call':>7} {'provider':>8} {'µs/call':>7} {'other':>5}"
    )
    lines = [head, "-" * len(head)]
    previous = None
    for c in cells:
        group = (c["size"], c["concurrency"])
        if previous is not None and group != previous:
            lines.append("")
        previous = group
        if "error" in c:
            lines.append(f"{c['path']:<15} {size_label(c['size']):>7} {c['concurrency']:>4}   FAILED: {c['error']}")
            continue
        row = (
            f"{c['path']:<15} {size_label(c['size']):>7} {c['concurrency']:>4} {c['rps']:>8.0f}"
            f" {num(c['p50_ms'], '.3f'):>7} {num(c['p99_ms'], '.3f'):>7} {c['errors']:>6}"
        )
        row += gateway_columns(c) + (
            f" | {c['client_cpu_pct']:>5.0f}% {c['client_cpu_us_per_call']:>7.1f}"
            f" {c['provider_cpu_pct']:>7.0f}% {c['provider_cpu_us_per_call']:>7.1f} {max(0.0, c['other_cpu_pct']):>4.0f}%"
        )
        lines.append(row)
    return "\n".join(lines)


def nginx_reference(grpc_cells: list[dict] | None) -> dict | None:
    """The nginx gRPC two-hop chain at 100 B, c=16, from the gRPC part of the same run."""
    for c in grpc_cells or []:
        if c.get("path") == "nginx" and c.get("size") == 100 and c.get("concurrency") == 16 and "error" not in c:
            return {"rps": c["rps"], "p50_ms": c["p50_ms"], "p99_ms": c["p99_ms"],
                    "cpu_us_per_call": {r: p["cpu_us_per_call"] for r, p in c["proxies"].items()}}  # fmt: skip
    return None


def target_checks(cells: list[dict], nginx_ref: dict | None) -> list[dict]:
    il = {
        (c["size"], c["concurrency"]): c
        for c in cells
        if c["path"] == "bolt-interlink" and "error" not in c
    }
    checks = []

    def check(what: str, value: float | None, limit: float, shown: str, at_most: bool) -> None:
        met = None if value is None else (value <= limit if at_most else value >= limit)
        checks.append({"target": what, "met": met, "measured": value, "shown": shown})

    c16, c1 = il.get((100, 16)), il.get((100, 1))
    rps = c16["rps"] if c16 else None
    check(f"rps >= {TARGET_RPS_C16:,} (100 B, c=16)", rps, TARGET_RPS_C16, num(rps, ",.0f"), at_most=False)
    ratio = rps / nginx_ref["rps"] if rps is not None and nginx_ref else None
    shown = f"{ratio:.2f}   ({rps:,.0f} vs nginx gRPC chain {nginx_ref['rps']:,.0f})" if ratio is not None else (
        "-   (nginx gRPC chain at 100 B, c=16 not measured in this run)" if nginx_ref is None else "-")
    check(f"rps >= {TARGET_RPS_OVER_NGINX:g}x nginx gRPC two-hop chain (100 B, c=16)", ratio, TARGET_RPS_OVER_NGINX,
          shown, at_most=False)  # fmt: skip
    p50 = c1["p50_ms"] if c1 else None
    check(f"p50 <= {TARGET_P50_MS_C1} ms (100 B, c=1)", p50, TARGET_P50_MS_C1, num(p50, ".3f"), at_most=True)
    worst = max(p["cpu_us_per_call"] for p in c16["proxies"].values()) if c16 else None
    others = ", ".join(
        f"{size_label(s)} c={k}: " + "/".join(f"{c['proxies'][r]['cpu_us_per_call']:.0f}" for r in GATEWAYS)
        for (s, k), c in sorted(il.items())
    )
    busier = max(GATEWAYS, key=lambda r: c16["proxies"][r]["cpu_us_per_call"]) if c16 else ""
    shown = f"{num(worst, '.0f')} {busier}" + (f"   (GW-B/GW-A: {others})" if others else "")
    check(f"CPU <= {TARGET_CPU_US_PER_GATEWAY} µs/call per gateway, busier one (100 B, c=16)", worst,
          TARGET_CPU_US_PER_GATEWAY, shown, at_most=True)  # fmt: skip
    return checks


def t7_checks(cells: list[dict], nginx_ref: dict | None) -> list[dict]:
    """Issue 12's T7 on the bolt-interlink 100 B, c=16 cell: judged only when its calls were spread over 4
    connections (otherwise "not measured", with the connections it had)."""
    c16 = next((c for c in cells if c["path"] == "bolt-interlink" and c["size"] == 100 and c["concurrency"] == 16
                and "error" not in c), None)  # fmt: skip
    checks = []
    if c16 is not None and c16.get("connections") != T7_CONNECTIONS:
        why = f"-   (measured over {c16.get('connections')} connection(s); T7 is over {T7_CONNECTIONS}: --bolt-connections {T7_CONNECTIONS})"
        c16 = None
    else:
        why = "-"
    rps = c16["rps"] if c16 else None
    ratio = rps / nginx_ref["rps"] if rps is not None and nginx_ref else None
    if ratio is not None:
        shown = f"{ratio:.2f}   ({rps:,.0f} vs nginx gRPC chain {nginx_ref['rps']:,.0f})"  # type: ignore[index]
    elif c16 is not None and nginx_ref is None:
        shown = f"-   ({rps:,.0f} rps; nginx gRPC chain at 100 B, c=16 not measured in this run)"
    else:
        shown = why
    checks.append({"target": f"rps >= {T7_RPS_OVER_NGINX:g}x nginx gRPC chain (100 B, c=16 over {T7_CONNECTIONS} conns)",
                   "met": None if ratio is None else ratio >= T7_RPS_OVER_NGINX, "measured": ratio, "shown": shown})  # fmt: skip
    worst = max(p["cpu_us_per_call"] for p in c16["proxies"].values()) if c16 else None
    busier = max(GATEWAYS, key=lambda r: c16["proxies"][r]["cpu_us_per_call"]) if c16 else ""
    both = "/".join(f"{c16['proxies'][r]['cpu_us_per_call']:.0f}" for r in GATEWAYS) if c16 else ""
    checks.append({"target": f"CPU <= {T7_CPU_US_PER_GATEWAY} µs/call per gateway, busier one (same cell)",
                   "met": None if worst is None else worst <= T7_CPU_US_PER_GATEWAY, "measured": worst,
                   "shown": f"{num(worst, '.0f')} {busier}   (GW-B/GW-A: {both})" if c16 else why})  # fmt: skip
    return checks


# --- the part ------------------------------------------------------------------------------------------


def run(opts: BoltOptions, tmp: Path, children: Children, grpc_cells: list[dict] | None) -> tuple[dict, int]:
    """Runs the Bolt part; returns (its JSON section, status: 0 ok, 1 a path failed its sanity check or was
    not measured, 2 harness error)."""
    tmp.mkdir(parents=True, exist_ok=True)
    out: dict = {
        "settings": {
            "duration_s": opts.duration, "warmup_s": opts.warmup, "sizes": opts.sizes,
            "concurrency": opts.concurrency, "connections": opts.connections, "paths": opts.paths,
            "connections_note": "bolt_load.js spreads each cell's C calls over min(connections, C) connections",
            "interlink_workers": opts.interlink_workers, "cpu_pinning": "none",
            "load_generator": "bench/bolt_load.js (raw Bolt V1, Node, one thread)",
            "provider": "bench/bolt_echo_server.js (raw Bolt V1, Node, canned SofaResponse per size)",
        },  # fmt: skip
        "tools": {"node": None, "sofa-rpc-node": _package_version("sofa-rpc-node")},
        "sanity": {},
        "skipped": {},
        "cells": [],
        "targets": [],
    }
    print("\nbench: ===== Bolt: SOFARPC echo(String), Bolt V1 =====")
    print(f"bench: temp dir {tmp}")
    print(f"bench: load: bolt_load.js, each cell's calls in flight spread over {opts.connections} connection(s) "
          f"(c=16: {_spread(16, opts.connections)}; c=1: one)")
    node = node_binary()
    if not node:
        out["error"] = "node not found (Node 20 is needed for the Bolt load generator and provider)"
        print(f"bench: Bolt part FAILED: {out['error']}")
        return out, 1
    out["tools"]["node"] = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()

    # Frames, built with interlink's codec.
    files: dict[int, dict[str, Path]] = {}
    replies: dict[int, Path] = {}
    frames_info = {}
    for size in opts.sizes:
        request = bolt_frames.echo_request_frame(size)
        f = {"request": tmp / f"request-{size}.bin", "response": tmp / f"response-{size}.bin",
             "content": tmp / f"response-content-{size}.bin"}  # fmt: skip
        f["request"].write_bytes(bolt_frames.echo_request(size))
        f["response"].write_bytes(bolt_frames.echo_response(size))
        f["content"].write_bytes(bolt_frames.echo_response_content(size))
        files[size] = f
        replies[len(request.content)] = f["response"]
        frames_info[size] = {"request_bytes": f["request"].stat().st_size, "response_bytes": f["response"].stat().st_size}
    out["frames"] = frames_info

    ports = dict(zip(["provider", "entry", "peer_a", "peer_b", "check_server"], free_ports(5)))
    site_a, site_b = make_sites(tmp)
    provider = start_provider(children, node, tmp, ports["provider"], replies)

    # Sanity 1 + 2: the frames and the canned provider are real SOFARPC.
    problems = {
        "requests_vs_sofa_rpc_node_server": check_requests_with_real_server(
            children, node, tmp, ports["check_server"], opts.sizes
        ),
        "sofa_rpc_node_client_vs_provider": check_with_real_client(node, ports["provider"], opts.sizes),
    }
    for what, found in problems.items():
        out["sanity"][what] = found or "ok"
    if any(problems.values()):
        for what, found in problems.items():
            if found:
                print(f"bench: Bolt sanity FAILED ({what}):\n  " + "\n  ".join(found))
        for name in opts.paths:
            out["skipped"][name] = "the request frames or the canned provider are not valid SOFARPC (see sanity)"
    else:
        print(f"bench: sanity ok: the real sofa-rpc-node server echoes our request frames {opts.sizes}; the real "
              "sofa-rpc-node client gets its echo from the canned provider")  # fmt: skip

    paths: list[BoltPath] = []
    if not out["skipped"]:
        if "bolt-direct" in opts.paths:
            paths.append(BoltPath("bolt-direct", ports["provider"]))
        if "bolt-interlink" in opts.paths:
            # GW-A exports the Bolt EchoService (the canned provider) to site B; GW-B serves it on its bolt
            # listener, with one connection to GW-A.
            spec = PairSpec(
                "bolt-interlink", "bolt", export_of("bolt", ports["provider"]), import_of("bolt"),
                {k: ports[k] for k in ("entry", "peer_a", "peer_b")},
            )  # fmt: skip
            try:
                pair = start_pair(children, tmp, site_a, site_b, spec, opts.interlink_workers, opts.startup_timeout)
                paths.append(BoltPath("bolt-interlink", pair.entry_port, pair.proxies))
            except InterlinkUnavailable as exc:
                out["skipped"]["bolt-interlink"] = str(exc)

    # Sanity 3: every path, pipelined calls decoded with the codec (+ the real client through the gateways).
    for path in list(paths):
        found = bolt_frames.sanity_check(path.entry_port, opts.sizes, heartbeat=path.name == "bolt-direct")
        if path.name != "bolt-direct" and not found:
            found = check_with_real_client(node, path.entry_port, opts.sizes)
        out["sanity"][path.name] = found or "ok"
        if found:
            paths.remove(path)
            out["skipped"][path.name] = "sanity check failed: " + "; ".join(found)
        else:
            extra = " (+ heartbeat ack)" if path.name == "bolt-direct" else " (+ the sofa-rpc-node client)"
            print(f"bench: sanity ok on {path.name}: pipelined echo {opts.sizes} decoded with the codec{extra}")
    for name, why in out["skipped"].items():
        print(f"bench: SKIPPING the {name} path: {why}")

    cells = measure_all(opts, node, files, paths, provider) if paths else []
    out["cells"] = cells
    ref = nginx_reference(grpc_cells)
    out["nginx_grpc_reference_100B_c16"] = ref
    checks = target_checks(cells, ref)
    out["targets"] = checks
    t7 = t7_checks(cells, ref)
    out["targets_issue12_t7"] = t7

    print()
    if cells:
        print(cell_table(cells))
        print(
            "\nµs/call = CPU (user+sys) per successful call: GW-B / GW-A = that gateway's processes, client ="
            "\nbolt_load.js, provider = bolt_echo_server.js; RSS = peak (VmHWM) of the gateway's largest process;"
            "\nclient/provider % of one core; other = CPU of anything else on the machine, % of one core."
        )
        print()
        print(activity_table(cells))
    if "bolt-interlink" in opts.paths:
        print("\nissue 3 targets for the Bolt -> Bolt path through both gateways:")
        print(target_table(((c["target"], c["met"], c["shown"]) for c in checks), 58))
        print(f"issue 12 target T7 (Bolt 100 B, c=16, calls spread over {T7_CONNECTIONS} connections):")
        print(target_table(((c["target"], c["met"], c["shown"]) for c in t7), 58))
    for name, why in out["skipped"].items():
        print(f"\nbench: the {name} path was SKIPPED: {why}")

    measured = {c["path"] for c in cells if "error" not in c}
    unmeasured = set(opts.paths) - measured
    failed_cells = [c for c in cells if "error" in c]
    if unmeasured:
        print(f"bench: Bolt paths not measured: {', '.join(sorted(unmeasured))}")
    if failed_cells:
        print(f"bench: {len(failed_cells)} Bolt cell(s) FAILED (reported, not fatal: a path is broken only when "
              "its sanity check fails or none of its cells was measured, as in the gRPC part)")
    return out, 1 if unmeasured else 0
