"""Translate part: what protocol translation at the provider-side gateway (GW-A) costs, against the same
call through two gateways without translation (issue 4: "translation must not cost more than 30% over the
untranslated Bolt->Bolt path for protobuf bodies"). 100 B EchoRequest/EchoReply, c=16 (and c=1).

    bolt-pb-interlink  bolt_load.js (Bolt codec 11) -> GW-B bolt -> GW-A (export bolt, codec protobuf) -> canned Bolt pb provider   (the baseline)
    bolt-pb-to-triple  bolt_load.js (Bolt codec 11) -> GW-B bolt -> GW-A (export triple, flavour grpc)  -> canned nginx gRPC provider
    triple-to-bolt-pb  h2load (gRPC)                -> GW-B triple -> GW-A (export bolt, codec protobuf) -> canned Bolt pb provider
    triple-interlink   h2load (gRPC)                -> GW-B triple -> GW-A (export triple, flavour grpc) -> canned nginx gRPC provider (reference)
    bolt-interlink     bolt_load.js (Bolt hessian2) -> the bolt-pb-interlink gateways -> canned provider (reference; passes through)

Each path has its own pair of gateways (GW-A's export decides whether a call is translated, and a gateway
serves a call natively whenever it can), except bolt-interlink, which rides on the baseline's pair. The
canned Bolt provider is bench/bolt_echo_server.js with two replies: the protobuf EchoReply frame (what the
real sofa-rpc-node protobuf server answers) and the hessian2 SofaResponse; the gRPC provider is the gRPC
part's canned nginx (bench/templates/provider.conf.in), which picks its reply by the `bench-reply-size`
metadata: the Bolt frames carry it as a header entry, and GW-A turns Bolt header entries into gRPC metadata.

Sanity pass before measuring (a path that fails is not measured and the part's status is 1):
  1. the protobuf request frames are real SOFARPC: the real sofa-rpc-node protobuf server
     (tests/peers/bolt_pb_server.js) answers them with the expected EchoReply (decoded);
  2. the canned Bolt provider is real SOFARPC: the real sofa-rpc-node protobuf client
     (tests/peers/bolt_pb_client.js) gets its echo from it (and the hessian2 client, for bolt-interlink);
  3. every path: pipelined calls decoded (Bolt paths: status, class, codec, EchoReply), or the grpcio client
     (gRPC paths: EchoReply + grpc-status 0); the real sofa-rpc-node protobuf client through the Bolt paths;
     and GW-A's access log shows the call translated (or not) as the path says.

Cells (paths interleaved per concurrency) are measured as in the Bolt and gRPC parts; every cell also
counts the calls the gateways logged with a status other than OK (h2load counts HTTP 200, and a gRPC error
is an HTTP 200 too). Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench import bolt_bench, bolt_frames, grpc_bench
from bench.cells import dead_cell, print_outcome
from bench.gateway_pair import (
    PairSpec,
    export_of,
    gateway_errors,
    import_of,
    launch_pairs,
    log_events,
    log_size,
    logged_errors,
    make_sites,
)
from bench.loadgen import echo_message
from bench.processes import Child, Children, _die_with_parent, free_ports, wait_for_port
from bench.report import GATEWAY_HEAD, GATEWAYS, activity_table, gateway_columns, num, ratio, target_table

REPO = Path(__file__).resolve().parent.parent
PEERS = REPO / "tests" / "peers"
SIZE = 100
BASELINE = "bolt-pb-interlink"
TRANSLATED = ("bolt-pb-to-triple", "triple-to-bolt-pb")
ALL_PATHS = ("bolt-pb-interlink", "bolt-pb-to-triple", "triple-to-bolt-pb", "triple-interlink", "bolt-interlink")
H2LOAD_PATHS = ("triple-to-bolt-pb", "triple-interlink")
TARGET_OVERHEAD = 0.30  # issue 4: translation costs at most 30% over the untranslated Bolt -> Bolt pb path
# what GW-A's access log must say about each path's calls
EXPECT_TRANSLATED = {
    "bolt-pb-interlink": None, "bolt-interlink": None, "triple-interlink": None,
    "bolt-pb-to-triple": "bolt->triple", "triple-to-bolt-pb": "triple->bolt",
}  # fmt: skip
# which pair of gateways each path runs through
PAIR_OF = {path: path for path in ALL_PATHS} | {"bolt-interlink": "bolt-pb-interlink"}
PROVIDER_OF = {
    "bolt-pb-interlink": "bolt", "bolt-interlink": "bolt", "triple-to-bolt-pb": "bolt",
    "bolt-pb-to-triple": "grpc", "triple-interlink": "grpc",
}  # fmt: skip
# pair name -> GW-B's listener (and import protocol); GW-A exports to the pair's provider (PROVIDER_OF): Bolt with
# the protobuf codec, or triple of flavour grpc
PAIRS = {
    "bolt-pb-interlink": "bolt", "bolt-pb-to-triple": "bolt", "triple-to-bolt-pb": "triple", "triple-interlink": "triple",
}  # fmt: skip


@dataclass
class TranslateOptions:
    concurrency: list[int]
    paths: list[str]
    duration: float
    warmup: float
    startup_timeout: float = 20.0
    interlink_workers: int | None = None


@dataclass
class TPath:
    name: str
    entry_port: int
    proxies: dict[str, Child]
    provider: Child


# --- sanity ------------------------------------------------------------------------------------------------


def _json_of(argv: list[str], timeout: float = 60) -> dict:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, preexec_fn=_die_with_parent)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"no answer within {timeout:.0f} s"}
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"ok": False, "error": f"exit {proc.returncode}: {proc.stderr.strip()[-600:]}"}


def check_pb_with_real_client(node: str, port: int) -> list[str]:
    """The real sofa-rpc-node protobuf client calls echo('x' * SIZE) on `port` and must get it back."""
    argv = [
        node, str(PEERS / "bolt_pb_client.js"), "--target", f"127.0.0.1:{port}", "--case", "echo",
        "--app", bolt_frames.CALLER_APP, "--arg", bolt_frames.payload(SIZE),
        "--prop", f"{bolt_frames.REPLY_SIZE_KEY}={SIZE}",
    ]  # fmt: skip
    result = _json_of(argv)
    if not result.get("ok"):
        return [f"sofa-rpc-node protobuf client: {result.get('error')}"]
    got = (result.get("result") or {}).get("message")
    if got != bolt_frames.payload(SIZE):
        shown = f"a {len(got)}-char message" if isinstance(got, str) else repr(result.get("result"))[:200]
        return [f"sofa-rpc-node protobuf client got {shown}, not the payload"]
    return []


def check_pb_requests_with_real_server(children: Children, node: str, tmp: Path, port: int) -> list[str]:
    """Our protobuf request frames, sent to the real sofa-rpc-node protobuf server: it must echo them."""
    argv = [node, str(PEERS / "bolt_pb_server.js"), "--listen", f"127.0.0.1:{port}", "--name", "bench-check"]
    child = children.start("sofa-rpc-node pb server (sanity)", argv, cwd=tmp, log=tmp / "sofa-rpc-node-pb-server.log")
    try:
        if not wait_for_port(port, child, timeout=20):
            return [f"sofa-rpc-node protobuf server did not start:\n{child.log_tail()}"]
        return bolt_frames.pb_sanity_check(port, [SIZE])
    finally:
        children.stop(child)


def check_translation_logged(path: str, gw_a: Child, offset: int) -> list[str]:
    """GW-A's access log since `offset` must show this path's calls translated as the path says."""
    calls = [e for e in log_events(gw_a.log, ('"call"',), offset) if e.get("event") == "call"]
    if not calls:
        return [f"GW-A logged no call (log {gw_a.log})"]
    want = EXPECT_TRANSLATED[path]
    wrong = [e for e in calls if e.get("translated") != want]
    if wrong:
        return [f"GW-A logged translated={wrong[0].get('translated')!r} for {path}, expected {want!r}: {wrong[0]}"]
    return []


def check_path(node: str, path: TPath) -> list[str]:
    offset = log_size(path.proxies["GW-A"].log)
    if path.name in H2LOAD_PATHS:
        why = grpc_bench.sanity_check(path.entry_port, [SIZE])
        found = [f"grpcio client: {why}"] if why else []
    elif path.name == "bolt-interlink":
        found = bolt_frames.sanity_check(path.entry_port, [SIZE])
        found = found or bolt_bench.check_with_real_client(node, path.entry_port, [SIZE])
    else:
        found = bolt_frames.pb_sanity_check(path.entry_port, [SIZE])
        found = found or check_pb_with_real_client(node, path.entry_port)
    return found or check_translation_logged(path.name, path.proxies["GW-A"], offset)


# --- measuring ------------------------------------------------------------------------------------------


def measure_cell(
    opts: TranslateOptions, node: str, tmp: Path, files: dict[str, dict[int, dict[str, Path]]], path: TPath,
    conc: int, all_proxies: dict[str, Child],
) -> dict:  # fmt: skip
    # the other paths' gateways (not this path's, even when shared with another path name) should be idle
    mine = {id(c) for c in path.proxies.values()}
    others = {name: c for name, c in all_proxies.items() if id(c) not in mine}
    watched = {**{f"{path.name}:{role}": c for role, c in path.proxies.items()}, **others}
    offsets = {role: log_size(c.log) for role, c in path.proxies.items()}
    if path.name in H2LOAD_PATHS:
        args = argparse.Namespace(connections=1, warmup=opts.warmup, duration=opts.duration, rps=None)
        cell = grpc_bench.measure_cell(
            args, tmp, grpc_bench.BenchPath(path.name, path.entry_port, path.proxies), SIZE, conc, path.provider, watched
        )
    else:
        bolt_opts = bolt_bench.BoltOptions(
            sizes=[SIZE], concurrency=[conc], connections=1, paths=[path.name], duration=opts.duration,
            warmup=opts.warmup,
        )  # fmt: skip
        cell = bolt_bench.measure_cell(
            bolt_opts, node, files[path.name], bolt_bench.BoltPath(path.name, path.entry_port, path.proxies), SIZE,
            conc, path.provider, watched,
        )  # fmt: skip
    cell["load_generator"] = "h2load" if path.name in H2LOAD_PATHS else "bolt_load.js"
    cell["gateway_errors"] = gateway_errors(path.proxies, offsets)
    return cell


def measure_all(opts: TranslateOptions, node: str, tmp: Path, files, paths: list[TPath]) -> list[dict]:
    cells = []
    total = len(opts.concurrency) * len(paths)
    all_proxies = {f"{p.name}:{role}": c for p in paths for role, c in p.proxies.items()}
    n = 0
    for conc in opts.concurrency:
        for path in paths:
            n += 1
            print(f"bench: [{n}/{total}] {path.name:<17} {SIZE} B c={conc:<3} ...", end="", flush=True)
            dead = {role: c for role, c in {**path.proxies, "provider": path.provider}.items() if not c.alive()}
            if dead:
                cell = dead_cell(path.name, SIZE, conc, dead)
            else:
                cell = measure_cell(opts, node, tmp, files, path, conc, all_proxies)
            cells.append(cell)
            print_outcome(cell, logged_errors(cell))
    return cells


# --- report ------------------------------------------------------------------------------------------------


def cell_table(cells: list[dict]) -> str:
    head = (
        f"{'path':<18} {'conc':>4} {'load':<12} {'rps':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}"
        f"{GATEWAY_HEAD} | {'client':>6} {'provider':>8} {'other':>5}"
    )
    lines = [head, "-" * len(head)]
    previous = None
    for c in cells:
        if previous is not None and c["concurrency"] != previous:
            lines.append("")
        previous = c["concurrency"]
        if "error" in c:
            lines.append(f"{c['path']:<18} {c['concurrency']:>4}   FAILED: {c['error']}")
            continue
        logged = logged_errors(c)
        row = (
            f"{c['path']:<18} {c['concurrency']:>4} {c['load_generator']:<12} {c['rps']:>8.0f}"
            f" {num(c['p50_ms'], '.3f'):>7} {num(c['p99_ms'], '.3f'):>7} {c['errors'] + logged:>6}"
        )
        row += gateway_columns(c)
        row += f" | {c['client_cpu_pct']:>5.0f}% {c['provider_cpu_pct']:>7.0f}% {max(0.0, c['other_cpu_pct']):>4.0f}%"
        lines.append(row)
    return "\n".join(lines)


def ratio_rows(cells: list[dict]) -> list[dict]:
    """Each translated path (and the references) over the baseline, and triple-to-bolt-pb over the untranslated
    gRPC path (same caller protocol), per concurrency."""
    ok = {(c["path"], c["concurrency"]): c for c in cells if "error" not in c}
    rows = []
    pairs = [(p, BASELINE) for p in (*TRANSLATED, "triple-interlink", "bolt-interlink")] + [
        ("triple-to-bolt-pb", "triple-interlink")
    ]
    for conc in sorted({c for _, c in ok}):
        for path, base in pairs:
            a, b = ok.get((path, conc)), ok.get((base, conc))
            if a is None or b is None:
                continue
            cpu = {r: ratio(a["proxies"][r]["cpu_us_per_call"], b["proxies"][r]["cpu_us_per_call"]) for r in GATEWAYS}
            both = ratio(sum(a["proxies"][r]["cpu_us_per_call"] for r in GATEWAYS),
                         sum(b["proxies"][r]["cpu_us_per_call"] for r in GATEWAYS))  # fmt: skip
            rows.append({
                "path": path, "over": base, "concurrency": conc, "rps": ratio(a["rps"], b["rps"]),
                "p50": ratio(a["p50_ms"], b["p50_ms"]), "p99": ratio(a["p99_ms"], b["p99_ms"]),
                "cpu_per_call_gw_b": cpu["GW-B"], "cpu_per_call_gw_a": cpu["GW-A"], "cpu_per_call_both": both,
                "gw_a_us": (a["proxies"]["GW-A"]["cpu_us_per_call"], b["proxies"]["GW-A"]["cpu_us_per_call"]),
            })  # fmt: skip
    return rows


def ratio_table(rows: list[dict]) -> str:
    head = (
        f"{'path':<18} {'over':<18} {'conc':>4} {'rps ×':>6} {'p50 ×':>6} {'p99 ×':>6}"
        f" {'CPU/call GW-B ×':>15} {'GW-A ×':>7} {'both ×':>7}   GW-A µs/call"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['path']:<18} {r['over']:<18} {r['concurrency']:>4} {num(r['rps'], '.2f'):>6} {num(r['p50'], '.2f'):>6}"
            f" {num(r['p99'], '.2f'):>6} {num(r['cpu_per_call_gw_b'], '.2f'):>15} {num(r['cpu_per_call_gw_a'], '.2f'):>7}"
            f" {num(r['cpu_per_call_both'], '.2f'):>7}   {r['gw_a_us'][0]:.0f} vs {r['gw_a_us'][1]:.0f}"
        )
    return "\n".join(lines)


def target_checks(rows: list[dict], concurrency: int = 16) -> list[dict]:
    """Issue 4: per translated direction at 100 B, c=16, GW-A's CPU per call and the rps against the baseline."""
    checks = []
    limit = 1 + TARGET_OVERHEAD
    for path in TRANSLATED:
        row = next((r for r in rows if r["path"] == path and r["over"] == BASELINE and r["concurrency"] == concurrency), None)
        cpu = row["cpu_per_call_gw_a"] if row else None
        rps = row["rps"] if row else None
        checks.append({
            "target": f"{path}: GW-A CPU/call <= {limit:.2f}x {BASELINE} (100 B, c={concurrency})",
            "met": None if cpu is None else cpu <= limit, "measured": cpu,
            "shown": (f"{cpu:.2f}x   ({row['gw_a_us'][0]:.0f} vs {row['gw_a_us'][1]:.0f} µs/call)" if row else "-"),
        })  # fmt: skip
        checks.append({
            "target": f"{path}: rps >= {1 / limit:.2f}x {BASELINE} (100 B, c={concurrency})",
            "met": None if rps is None else rps >= 1 / limit, "measured": rps, "shown": num(rps, ".2f") + ("x" if rps else ""),
        })  # fmt: skip
    return checks


# --- the part ------------------------------------------------------------------------------------------------


def run(opts: TranslateOptions, tmp: Path, children: Children) -> tuple[dict, int]:
    tmp.mkdir(parents=True, exist_ok=True)
    out: dict = {
        "settings": {
            "duration_s": opts.duration, "warmup_s": opts.warmup, "size": SIZE, "concurrency": opts.concurrency,
            "paths": opts.paths, "interlink_workers": opts.interlink_workers, "load_connections": 1,
            "peer_link_connections": 1, "cpu_pinning": "none",
        },  # fmt: skip
        "sanity": {},
        "skipped": {},
        "cells": [],
        "ratios": [],
        "targets": [],
    }
    print("\nbench: ===== translate: Bolt protobuf <-> gRPC through two gateways, 100 B =====")
    print(f"bench: temp dir {tmp}")
    node = bolt_bench.node_binary()
    if not node:
        out["error"] = "node not found (Node 20 is needed for the Bolt load generator and provider)"
        print(f"bench: translate part FAILED: {out['error']}")
        return out, 1

    # Frames and files: Bolt protobuf + hessian2 (bolt-interlink) requests, the replies, the gRPC message.
    pb = {"request": tmp / "pb-request.bin", "content": tmp / "pb-response-content.bin", "response": tmp / "pb-response.bin"}
    pb["request"].write_bytes(bolt_frames.pb_echo_request(SIZE))
    pb["content"].write_bytes(bolt_frames.pb_echo_message(SIZE))
    pb["response"].write_bytes(bolt_frames.pb_echo_response(SIZE))
    hs = {"request": tmp / "hessian-request.bin", "content": tmp / "hessian-response-content.bin",
          "response": tmp / "hessian-response.bin"}  # fmt: skip
    hs["request"].write_bytes(bolt_frames.echo_request(SIZE))
    hs["content"].write_bytes(bolt_frames.echo_response_content(SIZE))
    hs["response"].write_bytes(bolt_frames.echo_response(SIZE))
    (tmp / f"request-{SIZE}.bin").write_bytes(echo_message(SIZE))  # h2load's body (grpc_bench.measure_cell)
    files = {p: {SIZE: hs if p == "bolt-interlink" else pb} for p in opts.paths if p not in H2LOAD_PATHS}
    out["frames"] = {"pb_request_bytes": pb["request"].stat().st_size, "pb_response_bytes": pb["response"].stat().st_size}

    names = ["bolt_provider", "grpc_provider", "check_server"] + [f"{p}:{k}" for p in PAIRS for k in ("entry", "peer_a", "peer_b")]
    ports = dict(zip(names, free_ports(len(names))))
    site_a, site_b = make_sites(tmp)

    # Providers: the canned Bolt one (protobuf + hessian2 replies, chosen by the request's contentLen) and nginx.
    replies = {
        len(bolt_frames.pb_echo_request_frame(SIZE).content): pb["response"],
        len(bolt_frames.echo_request_frame(SIZE).content): hs["response"],
    }
    bolt_provider = bolt_bench.start_provider(children, node, tmp, ports["bolt_provider"], replies)
    needs_grpc = any(PROVIDER_OF[p] == "grpc" for p in opts.paths)
    grpc_provider = grpc_bench.start_provider(children, tmp, ports["grpc_provider"], [SIZE]) if needs_grpc else None

    # Gateways: one pair per path (bolt-interlink rides on the baseline's), all started at once.
    wanted_pairs = list(dict.fromkeys(PAIR_OF[p] for p in opts.paths))
    exports = {
        "bolt": export_of("bolt", ports["bolt_provider"], codec="protobuf"),
        "grpc": export_of("triple", ports["grpc_provider"], flavour="grpc"),
    }
    specs = [
        PairSpec(name, PAIRS[name], exports[PROVIDER_OF[name]], import_of(PAIRS[name]),
                 {k: ports[f"{name}:{k}"] for k in ("entry", "peer_a", "peer_b")})
        for name in wanted_pairs
    ]  # fmt: skip

    # The gateways take a second or two to import and bind: start them all now, and check the frames and
    # the canned provider against the real sofa-rpc-node protobuf peers (sanity 1 + 2) meanwhile.
    launched = launch_pairs(children, tmp, site_a, site_b, specs, opts.interlink_workers, opts.startup_timeout)
    problems = {
        "pb_requests_vs_sofa_rpc_node_pb_server": check_pb_requests_with_real_server(
            children, node, tmp, ports["check_server"]
        ),
        "sofa_rpc_node_pb_client_vs_provider": check_pb_with_real_client(node, ports["bolt_provider"]),
    }
    if "bolt-interlink" in opts.paths:
        problems["sofa_rpc_node_client_vs_provider"] = bolt_bench.check_with_real_client(
            node, ports["bolt_provider"], [SIZE]
        )
    for what, found in problems.items():
        out["sanity"][what] = found or "ok"
    if any(problems.values()):
        for what, found in problems.items():
            if found:
                print(f"bench: translate sanity FAILED ({what}):\n  " + "\n  ".join(found))
        for name in opts.paths:
            out["skipped"][name] = "the protobuf frames or the canned provider are not valid SOFARPC (see sanity)"
    else:
        print("bench: sanity ok: the real sofa-rpc-node protobuf server echoes our codec-11 frames; the real "
              "sofa-rpc-node protobuf client gets its echo from the canned provider")  # fmt: skip
    pairs, failed = launched.wait()
    for name in opts.paths:
        if name not in out["skipped"] and PAIR_OF[name] in failed:
            out["skipped"][name] = failed[PAIR_OF[name]]

    paths: list[TPath] = []
    for name in opts.paths:
        if name in out["skipped"]:
            continue
        pair = pairs[PAIR_OF[name]]
        provider = bolt_provider if PROVIDER_OF[name] == "bolt" else grpc_provider
        assert provider is not None
        paths.append(TPath(name, pair.entry_port, pair.proxies, provider))

    # Sanity 3: every path (after the gateways listen; a first failure is retried once after a pause, as
    # the first calls of a gateway open its connections).
    for path in list(paths):
        found = check_path(node, path)
        if found:
            time.sleep(1.0)
            found = check_path(node, path)
        out["sanity"][path.name] = found or "ok"
        if found:
            paths.remove(path)
            out["skipped"][path.name] = "sanity check failed: " + "; ".join(found)
        else:
            how = "grpcio client" if path.name in H2LOAD_PATHS else "pipelined calls decoded + sofa-rpc-node client"
            said = EXPECT_TRANSLATED[path.name]
            print(f"bench: sanity ok on {path.name}: {how}; GW-A logged "
                  + (f"translated={said}" if said else "the calls untranslated"))  # fmt: skip
    for name, why in out["skipped"].items():
        print(f"bench: SKIPPING the {name} path: {why}")

    # Measure in the order of ALL_PATHS (baseline first), interleaved per concurrency.
    paths.sort(key=lambda p: ALL_PATHS.index(p.name))
    cells = measure_all(opts, node, tmp, files, paths) if paths else []
    out["cells"] = cells
    rows = ratio_rows(cells)
    out["ratios"] = rows
    checks = target_checks(rows)
    out["targets"] = checks

    print()
    if cells:
        print(cell_table(cells))
        print(
            "\nµs/call = CPU (user+sys) per successful call of that gateway's processes; errors = errors seen by the"
            "\nload generator + calls the gateways logged with a status other than OK (except CANCELLED: h2load resets"
            "\nits calls in flight when a run ends); client/provider/other = % of one core (provider = the canned Bolt"
            "\nprovider or the nginx gRPC provider, as the path uses)."
        )
        print()
        print(activity_table(cells))
    if rows:
        print("\nratios (same run; > 1 = more CPU / more rps than the path in 'over'):")
        print(ratio_table(rows))
    print(f"\nissue 4 target: translation overhead <= {TARGET_OVERHEAD:.0%} (judged on GW-A, the translating gateway):")
    print(target_table(((c["target"], c["met"], c["shown"]) for c in checks), 66))
    for name, why in out["skipped"].items():
        print(f"\nbench: the {name} path was SKIPPED: {why}")
    measured = {c["path"] for c in cells if "error" not in c}
    unmeasured = set(opts.paths) - measured
    if unmeasured:
        print(f"bench: translate paths not measured: {', '.join(sorted(unmeasured))}")
    return out, 1 if unmeasured else 0
