"""Tables for the terminal and the ratios interlink / nginx, from the list of measured cells; and the pieces
of the Bolt and translate parts' tables that are the same (numbers, the gateways' columns, the targets)."""

from __future__ import annotations

from typing import Iterable

from bench.gateway_pair import logged_errors

# Which proxy process of each path stands on which side (B = caller's site, A = provider's site).
GATEWAYS = ("GW-B", "GW-A")
SIDES = {"nginx": ("hop1", "hop2"), "interlink": GATEWAYS, "interlink-routed": GATEWAYS}
# The gateways' columns of the Bolt and translate tables: CPU per call and peak RSS of each.
GATEWAY_HEAD = f" | {'GW-B µs/call RSS MB':>19} | {'GW-A µs/call RSS MB':>19}"

# Targets of issue 2 for the interlink path (one worker per gateway).
TARGET_RPS_RATIO_C64_100B = 0.3
TARGET_CPU_US_PER_GATEWAY = 300
TARGET_P50_MS_C1 = 1.2
TARGET_RSS_MB = 80
# Issue 14's target for the routing/resilience pipeline with every stage on (interlink-routed - interlink).
TARGET_PIPELINE_US = 5


def size_label(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 and size % 1024 == 0 else f"{size} B"


def num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def gateway_columns(cell: dict) -> str:
    """GW-B's and GW-A's figures of a cell, under GATEWAY_HEAD."""
    row = ""
    for role in GATEWAYS:
        p = cell["proxies"].get(role)
        row += f" | {p['cpu_us_per_call']:>11.0f} {p['rss_peak_mb']:>7.1f}" if p else f" | {'':>19}"
    return row


def activity_table(cells: list[dict]) -> str:
    """Per measured cell, each proxy's wake-ups and writes per call (processes.activity): how many calls one
    wake-up serves (the per-wake-up costs -- epoll, the scheduler, recv and send -- are shared by them), and
    (interlink) the writes of its log lines."""
    width = max([10, *(len(c["path"]) for c in cells)])
    head = (f"{'path':<{width}} {'payload':>8} {'conc':>4}"
            + "".join(f" | {side:<6} {'wake-ups':>8} {'writes':>7}" for side in ("B-side", "A-side")))
    lines = [head, "-" * len(head)]
    for c in cells:
        proxies = c.get("proxies") or {}
        if "error" in c or "wakeups_per_call" not in next(iter(proxies.values()), {}):
            continue  # (a direct path: no proxy)
        row = f"{c['path']:<{width}} {size_label(c['size']):>8} {c['concurrency']:>4}"
        for role in SIDES.get(c["path"], GATEWAYS):
            p = proxies.get(role)
            row += (f" | {role:<6} {p['wakeups_per_call']:>8.3f} {p['writes_per_call']:>7.3f}" if p
                    else f" | {'-':<6} {'-':>8} {'-':>7}")
        lines.append(row)
    return "\n".join(lines) + (
        "\n\nper call: wake-ups = times the proxy's threads slept and were woken (voluntary context switches);"
        "\nwrites = write(2)-family system calls (/proc/PID/io syscw): an interlink gateway's log lines (its"
        "\nsockets send with send(2), not counted); nginx writes its sockets with write/writev, counted."
    )


def cell_table(cells: list[dict]) -> str:
    width = max([10, *(len(c["path"]) for c in cells)])
    head = (
        f"{'path':<{width}} {'payload':>8} {'conc':>4} {'rps':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}"
        f" | {'B-side':<6} {'µs/call':>7} {'RSS MB':>6} | {'A-side':<6} {'µs/call':>7} {'RSS MB':>6}"
        f" | {'client':>6} {'provider':>8} {'other':>6}"
    )
    lines = [head, "-" * len(head)]
    previous_group = None
    for c in cells:
        group = (c["size"], c["concurrency"])
        if previous_group is not None and group != previous_group:
            lines.append("")
        previous_group = group
        if "error" in c:
            lines.append(f"{c['path']:<{width}} {size_label(c['size']):>8} {c['concurrency']:>4}   FAILED: {c['error']}")
            continue
        row = (
            f"{c['path']:<{width}} {size_label(c['size']):>8} {c['concurrency']:>4} {c['rps']:>8.0f}"
            f" {num(c['p50_ms'], '.3f'):>7} {num(c['p99_ms'], '.3f'):>7} {c['errors']:>6}"
        )
        for role in SIDES.get(c["path"], (None, None)):
            proxy = c["proxies"].get(role) if role else None
            if proxy:
                row += f" | {role:<6} {proxy['cpu_us_per_call']:>7.0f} {proxy['rss_peak_mb']:>6.1f}"
            else:
                row += f" | {'-':<6} {'-':>7} {'-':>6}"
        row += f" | {c['client_cpu_pct']:>5.0f}% {c['provider_cpu_pct']:>7.0f}% {max(0.0, c['other_cpu_pct']):>5.0f}%"
        lines.append(row)
    return "\n".join(lines)


def ratios(cells: list[dict]) -> list[dict]:
    """interlink / nginx for every (payload, concurrency) measured on both paths."""
    by_key = {(c["path"], c["size"], c["concurrency"]): c for c in cells if "error" not in c}
    out = []
    for (path, size, conc), il in by_key.items():
        ng = by_key.get(("nginx", size, conc))
        if path != "interlink" or ng is None:
            continue
        il_cpu = [il["proxies"][r]["cpu_us_per_call"] for r in SIDES["interlink"]]
        ng_cpu = [ng["proxies"][r]["cpu_us_per_call"] for r in SIDES["nginx"]]
        out.append(
            {
                "size": size,
                "concurrency": conc,
                "rps": ratio(il["rps"], ng["rps"]),
                "p50": ratio(il["p50_ms"], ng["p50_ms"]),
                "p99": ratio(il["p99_ms"], ng["p99_ms"]),
                "cpu_per_call_b_side": ratio(il_cpu[0], ng_cpu[0]),
                "cpu_per_call_a_side": ratio(il_cpu[1], ng_cpu[1]),
                "cpu_per_call_both": ratio(sum(il_cpu), sum(ng_cpu)),
            }
        )
    return out


def routing_costs(cells: list[dict]) -> list[dict]:
    """What the routing/resilience pipeline with every stage on costs per call: interlink-routed minus
    interlink, CPU µs per call per gateway, for each concurrency whose 100 B cells both paths measured; with
    the calls the gateways logged not OK in them (a refusal is a success to h2load, and a cheap one)."""
    by_key = {(c["path"], c["concurrency"]): c for c in cells if c["size"] == 100 and "error" not in c}
    out = []
    for (path, conc), routed in by_key.items():
        plain = by_key.get(("interlink", conc))
        if path != "interlink-routed" or plain is None:
            continue
        row: dict = {"size": 100, "concurrency": conc, "logged_not_ok": logged_errors(plain) + logged_errors(routed)}
        for role in GATEWAYS:
            us = [c["proxies"][role]["cpu_us_per_call"] for c in (plain, routed)]
            row[role] = {"interlink": us[0], "interlink-routed": us[1], "difference": round(us[1] - us[0], 1)}
        out.append(row)
    return out


def routing_cost_line(rows: list[dict]) -> str:
    """One line: the pipeline's cost at GW-A per concurrency (GW-B's beside it), against the target."""
    def each(role: str) -> str:
        return ", ".join(f"{r[role]['difference']:+.1f} µs" + (f" at c={r['concurrency']}" if len(rows) > 1 else "")
                         for r in rows)  # fmt: skip

    where = "100 B" + (f", c={rows[0]['concurrency']}" if len(rows) == 1 else "")
    refused = sum(r["logged_not_ok"] for r in rows)
    return (f"routing pipeline cost per call at GW-A: {each('GW-A')} (interlink-routed minus interlink, {where};"
            f" GW-B: {each('GW-B')}; target <= {TARGET_PIPELINE_US} µs)"
            + (f"; NOT COMPARABLE: the gateways logged {refused} calls not OK in these cells" if refused else ""))


def ratio_table(rows: list[dict]) -> str:
    head = (
        f"{'payload':>8} {'conc':>4} {'rps ×':>7} {'p50 ×':>7} {'p99 ×':>7}"
        f" {'CPU/call GW-B/hop1 ×':>21} {'GW-A/hop2 ×':>12} {'both ×':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{size_label(r['size']):>8} {r['concurrency']:>4} {num(r['rps'], '.2f'):>7}"
            f" {num(r['p50'], '.2f'):>7} {num(r['p99'], '.2f'):>7}"
            f" {num(r['cpu_per_call_b_side'], '.2f'):>21} {num(r['cpu_per_call_a_side'], '.2f'):>12}"
            f" {num(r['cpu_per_call_both'], '.2f'):>7}"
        )
    return "\n".join(lines)


def target_checks(cells: list[dict], ratio_rows: list[dict]) -> list[tuple[str, bool | None, str]]:
    """Issue 2's targets for the interlink path, judged on the 100 B calls: (what, met? (None = not
    measured), measured value)."""
    il = {c["concurrency"]: c for c in cells if c["path"] == "interlink" and c["size"] == 100 and "error" not in c}
    checks: list[tuple[str, bool | None, str]] = []

    def check(what: str, value: float | None, limit: float, fmt: str, at_most: bool = True) -> None:
        met = None if value is None else (value <= limit if at_most else value >= limit)
        checks.append((what, met, num(value, fmt)))

    r64 = next((r for r in ratio_rows if r["size"] == 100 and r["concurrency"] == 64), None)
    check(f"rps >= {TARGET_RPS_RATIO_C64_100B}x nginx (100 B, c=64)", r64 and r64["rps"], TARGET_RPS_RATIO_C64_100B,
          ".2f", at_most=False)  # fmt: skip
    c64 = il.get(64)
    worst = max(p["cpu_us_per_call"] for p in c64["proxies"].values()) if c64 else None
    others = ", ".join(
        f"c={conc}: {max(p['cpu_us_per_call'] for p in c['proxies'].values()):.0f}" for conc, c in sorted(il.items())
    )
    check(f"CPU <= {TARGET_CPU_US_PER_GATEWAY} µs/call, busier gateway (100 B, c=64)", worst,
          TARGET_CPU_US_PER_GATEWAY, ".0f")  # fmt: skip
    if others:
        checks[-1] = (checks[-1][0], checks[-1][1], checks[-1][2] + f"   ({others})")
    c1 = il.get(1)
    check(f"p50 <= {TARGET_P50_MS_C1} ms (100 B, c=1)", c1 and c1["p50_ms"], TARGET_P50_MS_C1, ".3f")
    rss = [p["rss_peak_mb"] for c in cells if c["path"] == "interlink" and "error" not in c for p in c["proxies"].values()]
    check(f"peak RSS <= {TARGET_RSS_MB} MB per gateway (whole run)", max(rss) if rss else None, TARGET_RSS_MB, ".1f")
    return checks


def target_table(checks: Iterable[tuple[str, bool | None, str]], width: int = 50) -> str:
    """One line per target: met / MISSED / not measured, what, the value as shown."""
    mark = {True: "met", False: "MISSED", None: "not measured"}
    return "\n".join(f"  {mark[ok]:<12} {what:<{width}} {value}" for what, ok, value in checks)
