"""Churn part: call throughput through two gateways while GW-A's provider set changes N times a second in a
real ZooKeeper (issue 5: "registry work never sits on the per-call path: call throughput unchanged, within
noise, while the provider set changes 10 times a second").

    ZooKeeper   java ... ZooKeeperServerMain (Debian package), loopback, a free port (bench/zookeeper.py)
    providers   two canned Bolt providers (bench/bolt_echo_server.js), P1 and P2
    registry    bench/zk_churn.py (kazoo, its own process): P1's EPHEMERAL node under
                /sofa-rpc/com.example.EchoService/providers for the whole run; P2's node absent during
                "steady" phases, present during "two" phases, and created and deleted alternately every
                1/rate s during "churn" phases
    GW-A        `registry: {kind: zookeeper, ...}`, a Bolt export WITHOUT providers: it follows the tree
    load        bench/bolt_load.js --phases: 100 B hessian2 echo, c=16, one connection -> GW-B -> GW-A, one
                continuous closed loop cut into phases: steady, two, churn, steady, two, churn ... (rounds × 3)

Per phase: calls, rps, p50/p99, errors (the generator's + calls the gateways logged not OK), CPU per call of
GW-B and GW-A (/proc), the providers' CPU, and what GW-A logged about its providers (`registry.providers`
= a set from the registry applied, `providers.changed`, `providers.retired`). A churn phase must show
GW-A following the changes (at least half of them logged; else the part did not measure churn and its
status is 1). The headline is rps(churn) / rps(steady), against the spread of the static phases (the noise);
"two" is the control: a churn phase routes to one provider half of the time and to two the other half, and
two providers split each batch of calls in two (more wake-ups per call in both gateways), so
rps(churn) / mean(rps(steady), rps(two)) isolates the registry work. Numbers are printed, never asserted.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import bolt_bench, bolt_frames, zookeeper
from bench.gateway_pair import (
    SERVICE,
    Pair,
    PairSpec,
    export_of,
    import_of,
    launch_pairs,
    log_events,
    log_size,
    make_sites,
    not_ok_calls,
    read_log,
    wait_ready,
)
from bench.processes import Child, Children, MachineSample, TreeSample, _die_with_parent, free_ports, reap

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
SIZE = 100
CONCURRENCY = 16
KINDS = ("steady", "two", "churn")  # {P1}; {P1, P2} static; alternating between the two, `rate` changes/s
GW_EVENTS = ("registry.providers", "providers.changed", "providers.retired", "registry.stale", "peer.closed")


@dataclass
class ChurnOptions:
    rounds: int
    phase_s: float
    rate: float
    warmup: float
    startup_timeout: float = 20.0
    interlink_workers: int | None = None
    settle_s: float = 0.5  # after a set change at a phase boundary, not counted in either phase


class Failed(Exception):
    pass


def _read_line(proc: subprocess.Popen, timeout: float, what: str) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise Failed(f"{what} said nothing within {timeout:.0f}s")
    line = proc.stdout.readline()
    if not line:
        proc.wait(5)
        raise Failed(f"{what} exited (status {proc.returncode}): {proc.stderr.read()[-600:]}")
    return line


def _json(line: str, what: str) -> dict:
    try:
        return json.loads(line)
    except ValueError:
        raise Failed(f"{what} said {line.strip()[:300]!r}") from None


class Churner:
    """bench/zk_churn.py, driven over stdin/stdout."""

    def __init__(self, zk: str, permanent: int, churn: int, rate: float, log: Path) -> None:
        argv = [
            sys.executable, "-m", "bench.zk_churn", "--zk", zk, "--service", SERVICE, "--version", bolt_frames.VERSION,
            "--permanent", f"127.0.0.1:{permanent}", "--churn", f"127.0.0.1:{churn}", "--rate", str(rate),
        ]  # fmt: skip
        self.err = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True,
            preexec_fn=_die_with_parent,
        )  # fmt: skip
        self.log = log

    def ready(self, timeout: float) -> dict:
        reply = _json(self._line(timeout), "zk_churn")
        if not reply.get("ready"):
            raise Failed(f"zk_churn could not register the providers: {reply.get('fatal') or reply}")
        return reply

    def _line(self, timeout: float) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise Failed(f"zk_churn said nothing within {timeout:.0f}s")
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(5)
            raise Failed(f"zk_churn exited (status {self.proc.returncode}): {self.log.read_text()[-600:]}")
        return line

    def command(self, word: str, timeout: float = 10.0) -> dict:
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()
        return _json(self._line(timeout), "zk_churn")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                pass  # killed by reap()
        reap(self.proc)
        self.err.close()


# --- measuring --------------------------------------------------------------------------------------------


def measure(
    opts: ChurnOptions, node: str, tmp: Path, pair: Pair, providers: dict[str, Child], zk: Child, churner: Churner
) -> list[dict]:
    kinds = list(KINDS) * opts.rounds
    safety = opts.warmup + len(kinds) * (opts.phase_s + opts.settle_s) + 120
    argv = [
        node, str(BENCH / "bolt_load.js"), "--port", str(pair.entry_port), "--request", str(tmp / "request.bin"),
        "--expect-content", str(tmp / "response-content.bin"), "--concurrency", str(CONCURRENCY),
        "--connections", "1", "--warmup", str(opts.warmup), "--duration", str(safety), "--phases",
    ]  # fmt: skip
    load = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_die_with_parent,
    )  # fmt: skip
    watched = {"GW-B": pair.gw_b, "GW-A": pair.gw_a, **providers, "zookeeper": zk}
    logs = {"GW-B": pair.gw_b, "GW-A": pair.gw_a}

    def sample() -> dict:
        return {
            "t": time.monotonic(), "machine": MachineSample.take(),
            "cpu": {name: TreeSample.take(c.pid) for name, c in watched.items()},
            "log": {role: log_size(c.log) for role, c in logs.items()},
        }  # fmt: skip

    def say(word: str) -> None:
        load.stdin.write(word + "\n")
        load.stdin.flush()

    def phase_stats() -> dict:
        return _json(_read_line(load, 30, "bolt_load.js"), "bolt_load.js")

    phases: list[dict] = []
    transitions: list[dict] = []
    try:
        line = _read_line(load, opts.warmup + 30, "bolt_load.js")
        if line.strip() != "warm":
            raise Failed(f"warm-up failed: {line.strip()[:600]}")
        for i, kind in enumerate(kinds):
            if i == 0:
                start = sample()
                say("go")
            else:
                # End the previous phase, change the set (or stop churning) and let it settle in a
                # transition that is not counted, then start this phase: a set change made at a phase
                # boundary (and what it costs) belongs to neither phase.
                phases[-1]["end"] = sample()
                say("mark")
                phases[-1]["load"] = phase_stats()
                _print_phase(i - 1, len(kinds), phases[-1], pair.gw_a.log)
                reply = churner.command(kind)  # "steady": P2 absent, "two": P2 present, "churn": start changing
                if phases[-1]["kind"] == "churn":
                    phases[-1]["churner"] = reply
                if kind != "churn":
                    time.sleep(opts.settle_s)
                start = sample()
                say("mark")
                transitions.append(phase_stats())
            phases.append({"kind": kind, "start": start})
            time.sleep(opts.phase_s)
        phases[-1]["end"] = sample()
        say("end")
        if kinds[-1] == "churn":  # stop at once: the generator waits for its calls in flight before answering
            phases[-1]["churner"] = churner.command("steady")
        phases[-1]["load"] = phase_stats()
        _print_phase(len(kinds) - 1, len(kinds), phases[-1], pair.gw_a.log)
        load.wait(10)
    finally:
        reap(load)
    results = [_phase_result(p, p["start"], p["end"], watched, logs) for p in phases]
    if transitions:
        results[0]["transitions_not_counted"] = [
            {k: t.get(k) for k in ("seconds", "calls", "errors", "p99_ms", "max_ms")} for t in transitions
        ]  # fmt: skip
    return results


def _print_phase(index: int, total: int, phase: dict, gw_a_log: Path) -> None:
    r = phase["load"]
    head = f"bench: [{index + 1}/{total}] {phase['kind']:<6}"
    if r.get("fatal") or not r.get("calls"):
        print(f"{head} FAILED: {r.get('fatal') or 'no successful call'} ({r.get('errors')} errors)")
        return
    start, end = phase["start"]["log"]["GW-A"], phase["end"]["log"]["GW-A"]
    seen = read_log(gw_a_log, start, end).count(b'"providers.changed"')
    print(f"{head} {r['seconds']:.2f} s {r['rps']:>8.0f} rps  p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms"
          f"  {r['errors']} errors" + (f"  GW-A saw {seen} provider-set changes" if phase["kind"] == "churn" else ""))


def _phase_result(phase: dict, before: dict, after: dict, watched: dict[str, Child], logs: dict[str, Child]) -> dict:
    r = phase["load"]
    seconds = after["t"] - before["t"]
    calls = r["calls"]
    cpu = {name: after["cpu"][name].cpu_since(before["cpu"][name]) for name in watched}
    busy, steal = after["machine"].busy_cores_since(before["machine"], seconds)
    counts = dict.fromkeys(GW_EVENTS, 0)
    for line in read_log(logs["GW-A"].log, before["log"]["GW-A"], after["log"]["GW-A"]).splitlines():
        for name in GW_EVENTS:
            if f'"{name}"'.encode() in line:
                counts[name] += 1
    not_ok = {role: not_ok_calls(c.log, before["log"][role], after["log"][role]) for role, c in logs.items()}
    out = {
        "kind": phase["kind"],
        "seconds": r.get("seconds"),
        "calls": calls,
        "errors": r["errors"],
        "error_statuses": r["statuses"],
        "gateway_not_ok": {role: c for role, c in not_ok.items() if c},  # the same failed calls, as each logged them
        "gateway_not_ok_calls": {role: sum(c.values()) for role, c in not_ok.items()},
        "rps": r["rps"],
        "p50_ms": r["p50_ms"],
        "p90_ms": r["p90_ms"],
        "p99_ms": r["p99_ms"],
        "max_ms": r["max_ms"],
        "cpu_us_per_call": {role: round(cpu[role] * 1e6 / calls, 1) if calls else None for role in ("GW-B", "GW-A")},
        "cpu_pct": {name: round(100 * cpu[name] / seconds, 1) for name in watched},
        "client_cpu_pct": round(100 * (r["client_cpu_s"] or 0) / seconds, 1),
        "machine_busy_pct": round(100 * busy, 1),
        "other_cpu_pct": round(100 * (busy - (sum(cpu.values()) + (r["client_cpu_s"] or 0)) / seconds), 1),
        "machine_steal_pct": round(100 * steal, 1),
        "gw_a_events": counts,
        "gw_a_set_changes_per_s": round(counts["providers.changed"] / seconds, 2),
    }
    if "churner" in phase:
        out["churner"] = phase["churner"]
    if r.get("fatal"):
        out["error"] = f"load generator: {r['fatal']}"
    elif not calls:
        out["error"] = f"no successful call ({r['errors']} errors, {r['statuses']})"
    return out


# --- report ---------------------------------------------------------------------------------------------


def _agg(phases: list[dict], kind: str) -> dict | None:
    ps = [p for p in phases if p["kind"] == kind and "error" not in p and p["calls"]]
    if not ps:
        return None
    seconds = sum(p["seconds"] for p in ps)
    calls = sum(p["calls"] for p in ps)
    cpu = {
        role: round(sum(p["cpu_us_per_call"][role] * p["calls"] for p in ps) / calls, 1) for role in ("GW-B", "GW-A")
    }
    rps = [p["rps"] for p in ps]
    mean = calls / seconds
    return {
        "phases": len(ps), "seconds": round(seconds, 3), "calls": calls, "rps": round(mean, 1),
        "rps_min": min(rps), "rps_max": max(rps), "spread": round(max(abs(x - mean) for x in rps) / mean, 3),
        "p50_ms_median": sorted(p["p50_ms"] for p in ps)[len(ps) // 2],
        "p99_ms_max": max(p["p99_ms"] for p in ps), "max_ms": max(p["max_ms"] for p in ps),
        "errors": sum(p["errors"] for p in ps), "cpu_us_per_call": cpu,
        "gw_b_not_ok": sum(p["gateway_not_ok_calls"]["GW-B"] for p in ps),
        "gw_a_not_ok": sum(p["gateway_not_ok_calls"]["GW-A"] for p in ps),
        "peer_link_closed": sum(p["gw_a_events"]["peer.closed"] for p in ps),
        "set_changes_seen": sum(p["gw_a_events"]["providers.changed"] for p in ps),
        "registry_sets_applied": sum(p["gw_a_events"]["registry.providers"] for p in ps),
        "churner_changes": sum((p.get("churner") or {}).get("changes", 0) for p in ps),
    }  # fmt: skip


def phase_table(phases: list[dict]) -> str:
    head = (
        f"{'phase':<7} {'s':>5} {'rps':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'errors':>6} {'not OK B/A':>10}"
        f" | {'GW-B µs/call':>12} {'GW-A µs/call':>12} | {'P1 %':>5} {'P2 %':>5} {'ZK %':>5} {'other':>5}"
        f" | {'made':>4} {'GW-A saw':>8} {'applied':>7} {'retired':>7} {'link lost':>9}"
    )
    lines = [head, "-" * len(head)]
    for p in phases:
        if "error" in p:
            lines.append(f"{p['kind']:<7} FAILED: {p['error']}")
            continue
        made = (p.get("churner") or {}).get("changes", "")
        ev = p["gw_a_events"]
        not_ok = f"{p['gateway_not_ok_calls']['GW-B']}/{p['gateway_not_ok_calls']['GW-A']}"
        lines.append(
            f"{p['kind']:<7} {p['seconds']:>5.2f} {p['rps']:>8.0f} {p['p50_ms']:>7.3f} {p['p99_ms']:>7.3f} {p['max_ms']:>7.3f}"
            f" {p['errors']:>6} {not_ok:>10} | {p['cpu_us_per_call']['GW-B']:>12.1f} {p['cpu_us_per_call']['GW-A']:>12.1f}"
            f" | {p['cpu_pct']['P1']:>4.0f}% {p['cpu_pct']['P2']:>4.0f}% {p['cpu_pct']['zookeeper']:>4.0f}%"
            f" {max(0.0, p['other_cpu_pct']):>4.0f}% | {made!s:>4} {ev['providers.changed']:>8} {ev['registry.providers']:>7}"
            f" {ev['providers.retired']:>7} {ev['peer.closed']:>9}"
        )
    return "\n".join(lines)


# --- the part ---------------------------------------------------------------------------------------------


def run(opts: ChurnOptions, tmp: Path, children: Children) -> tuple[dict, int]:
    tmp.mkdir(parents=True, exist_ok=True)
    out: dict = {
        "settings": {
            "rounds": opts.rounds, "phase_s": opts.phase_s, "rate_per_s": opts.rate, "warmup_s": opts.warmup,
            "size": SIZE, "concurrency": CONCURRENCY, "load_connections": 1, "peer_link_connections": 1,
            "interlink_workers": opts.interlink_workers, "zookeeper_session_timeout_ms": 4000,
        },  # fmt: skip
        "sanity": {},
        "phases": [],
    }
    print(f"\nbench: ===== churn: Bolt calls while GW-A's provider set changes {opts.rate:g}×/s (ZooKeeper) =====")
    print(f"bench: temp dir {tmp}")
    node = bolt_bench.node_binary()
    why = None if node else "node not found (Node 20 is needed for the Bolt load generator and providers)"
    why = why or zookeeper.missing()
    if why:
        out["error"] = why
        print(f"bench: churn part FAILED: {why}")
        return out, 1
    assert node is not None

    (tmp / "request.bin").write_bytes(bolt_frames.echo_request(SIZE))
    (tmp / "response-content.bin").write_bytes(bolt_frames.echo_response_content(SIZE))
    (tmp / "response.bin").write_bytes(bolt_frames.echo_response(SIZE))
    replies = {len(bolt_frames.echo_request_frame(SIZE).content): tmp / "response.bin"}
    names = ["P1", "P2", "entry", "peer_a", "peer_b"]
    ports = dict(zip(names, free_ports(len(names))))
    site_a, site_b = make_sites(tmp)

    churner: Churner | None = None
    try:
        providers = {
            name: bolt_bench.start_provider(children, node, tmp, ports[name], replies, name) for name in ("P1", "P2")
        }
        zk = zookeeper.start(children, tmp, timeout_s=max(30.0, opts.startup_timeout))
        print(f"bench: ZooKeeper up on {zk.address} in {zk.startup_s:.1f} s")
        out["zookeeper_startup_s"] = zk.startup_s
        registry = f'registry: {{kind: zookeeper, address: "{zk.address}", session_timeout_ms: 4000}}\n'
        # GW-A's Bolt export has no providers: ZooKeeper supplies them
        spec = PairSpec(
            "churn", "bolt", export_of("bolt"), import_of("bolt"), {k: ports[k] for k in ("entry", "peer_a", "peer_b")},
            registry,
        )  # fmt: skip
        launched = launch_pairs(children, tmp, site_a, site_b, [spec], opts.interlink_workers, opts.startup_timeout)
        churner = Churner(zk.address, ports["P1"], ports["P2"], opts.rate, tmp / "zk_churn.log")
        churner.ready(30)
        pairs, failed = launched.wait()
        if failed:
            raise Failed(failed["churn"])
        pair = pairs["churn"]
        if not wait_ready(pair.gw_a, opts.startup_timeout):
            raise Failed(f"GW-A never logged gateway.ready (registry synced); last log lines:\n{pair.gw_a.log_tail()}")

        # Sanity: the path answers (once GW-A has P1 from ZooKeeper), the real sofa-rpc-node client too.
        deadline = time.monotonic() + opts.startup_timeout
        while True:
            found = bolt_frames.sanity_check(pair.entry_port, [SIZE])
            if not found or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        found = found or bolt_bench.check_with_real_client(node, pair.entry_port, [SIZE])
        sets = [e for e in log_events(pair.gw_a.log, ("registry.providers",)) if e.get("event") == "registry.providers"]
        if not found and not any(e.get("providers") == [f"127.0.0.1:{ports['P1']}"] for e in sets):
            found = [f"GW-A never logged registry.providers with P1 (127.0.0.1:{ports['P1']}) alone: {sets[-3:]}"]
        out["sanity"]["path"] = found or "ok"
        if found:
            raise Failed("sanity check failed: " + "; ".join(found))
        print("bench: sanity ok: pipelined echo decoded with the codec + the sofa-rpc-node client, through GW-A's "
              f"ZooKeeper-fed providers ({len(sets)} set(s) applied so far)")  # fmt: skip

        phases = measure(opts, node, tmp, pair, providers, zk.child, churner)
    except (
        Failed, zookeeper.ZooKeeperUnavailable, bolt_bench.ProviderFailed, bolt_bench.LoadFailed, OSError,
        subprocess.TimeoutExpired,
    ) as exc:  # fmt: skip
        out["error"] = str(exc)
        print(f"\nbench: churn part FAILED: {exc}")
        return out, 1
    finally:
        if churner is not None:
            churner.stop()
    out["phases"] = phases
    steady, churn = _agg(phases, "steady"), _agg(phases, "churn")
    out["steady"], out["churn"] = steady, churn
    print()
    print(phase_table(phases))
    print(
        "\nerrors = failed calls seen by the load generator; not OK B/A = calls GW-B / GW-A logged with a status other"
        "\nthan OK (the same calls, as each gateway saw them); µs/call = CPU per successful call of that gateway;"
        "\nP1/P2/ZK = CPU of the two providers and ZooKeeper, % of one core; made = provider-set changes zk_churn made"
        "\nin ZooKeeper; GW-A saw = providers.changed in GW-A's log; applied = registry.providers (sets applied);"
        "\nretired = providers.retired; link lost = peer.closed in GW-A's log (the GW-B -> GW-A link dropped)."
    )
    two = _agg(phases, "two")
    out["two"] = two
    status = 0
    if steady and churn:
        ratio = churn["rps"] / steady["rps"]
        mix = (steady["rps"] + two["rps"]) / 2 if two else None
        ratio_mix = churn["rps"] / mix if mix else None
        noise = max(a["spread"] for a in (steady, two) if a)  # static phases only: churn is what is judged
        per_s = churn["set_changes_seen"] / churn["seconds"]
        seen_share = churn["set_changes_seen"] / churn["churner_changes"] if churn["churner_changes"] else 0.0
        out.update(
            ratio_rps_churn_over_steady=round(ratio, 3),
            ratio_rps_churn_over_static_mix=round(ratio_mix, 3) if ratio_mix else None,
            noise=noise,
            within_noise=abs(ratio - 1) <= max(noise, 0.03),
            gw_a_changes_per_s=round(per_s, 2),
        )  # fmt: skip
        for label, a in (("steady", steady), ("two", two), ("churn", churn)):
            if a is None:
                continue
            print(
                f"\n{label + ':':<7} {a['rps']:>6,.0f} rps (phases {a['rps_min']:,.0f}-{a['rps_max']:,.0f}), GW-B/GW-A "
                f"{a['cpu_us_per_call']['GW-B']:.0f}/{a['cpu_us_per_call']['GW-A']:.0f} µs/call, p99 ≤ "
                f"{a['p99_ms_max']:.2f} ms, max {a['max_ms']:.0f} ms, {a['errors']} errors, GW-B -> GW-A link lost "
                f"{a['peer_link_closed']}×", end="",
            )  # fmt: skip
        print(f"; GW-A saw {churn['set_changes_seen']} of {churn['churner_changes']} changes ({per_s:.1f}/s)")
        verdict = "within noise" if out["within_noise"] else "OUTSIDE noise"
        print(f"\nthroughput under churn: {ratio:.2f}× steady (static phases' spread ±{noise:.0%}; target: within"
              f" noise) -> {verdict}")  # fmt: skip
        if ratio_mix:
            print(f"  control: {ratio_mix:.2f}× the mean of steady and two (the two sets churn alternates between)"
                  + (f"; two/steady = {two['rps'] / steady['rps']:.2f}×" if two else ""))  # fmt: skip
            out["within_noise_static_mix"] = abs(ratio_mix - 1) <= max(noise, 0.03)
        print(f"  {'met' if churn['errors'] == 0 else 'MISSED':<12} 0 errors under churn ({churn['errors']} errors, "
              f"link to GW-A lost {churn['peer_link_closed']}×)")  # fmt: skip
        if seen_share < 0.5:
            print(f"bench: churn part FAILED to churn: GW-A saw only {churn['set_changes_seen']} of "
                  f"{churn['churner_changes']} provider-set changes")  # fmt: skip
            out["error"] = "GW-A did not follow the provider-set changes"
            status = 1
    else:
        out["error"] = "no phase was measured"
        print("bench: churn part: no phase was measured")
        status = 1
    return out, status
