"""Messages part: how fast and at what cost the two gateways carry messages from site B's NATS JetStream to site
A's (message interop, README "Messages across sites"), 1 KiB messages (and 100 B), per `max_in_flight` of the
import.

    client     python -m bench.messages_bench client (nats-py, asyncio, a process of its own): the producer
               into B's broker, the poller of A's stream, the reader that verifies it
    nats-B     nats-server -c ... (JetStream, file store), site B's broker: stream BENCH_OUT_F<n> captures
               bench.f<n>.>
    GW-B       `interlink run -c bench-messages-in-flight-<n>-gw-b.yaml`: imports bench.f<n>.> to site-a from stream
               BENCH_OUT_F<n>, max_in_flight n
    GW-A       `interlink run -c bench-messages-in-flight-<n>-gw-a.yaml`: exports bench.f<n>.> to site-b (app
               bench-producer) into stream BENCH_IN_F<n> of nats-A
    nats-A     nats-server, site A's broker

One pair of gateways per max_in_flight (n = 64, 256 ...), all started at once, both pairs on the same two
nats-servers with subjects and streams of their own; cells (size × max_in_flight) are interleaved per size.
Each cell has a subject of its own (bench.f<n>.s<size>.<mode>.<cell>), every message a payload
`<index>:<publish time ns>:xxx...` of exactly `size` bytes and the header Interlink-App: bench-producer.

Two modes per cell:

- drain: GW-B is stopped (SIGTERM, its normal drain), the client publishes N messages into B's broker (core
  publishes, then it waits until B's stream holds all N), GW-B is started again and carries the backlog. The
  gateways are the bottleneck. msgs/s = (N - 1) / (last - first landing), both from the time A's broker
  stored the message (the JetStream timestamp in the message's metadata). GW-B is restarted, not paused:
  SIGSTOP/SIGCONT would jump trio's clock past the deadline of the pull request GW-B has waiting on B's
  broker, and the messages already on their way to it would be dropped until ack_wait (30 s).
- steady: GW-B runs; the client publishes N messages at a fixed rate (default 0.7 × this cell's drain rate,
  `--messages-rate` to fix it) while the gateways carry them; msgs/s over the same landing span, and the
  latency publish -> stored in A's stream (payload's publish time vs A's timestamp: one clock, one machine).

N: `--messages-count`, else the pair's last measured rate × `--duration` (the first drain: the warm-up's rate);
the steady run: rate × duration. A warm-up per pair (2000 × `--warmup` messages, at least 1000, landed and
verified) before the first cell.

Producer, poller and verifier: nats-py, not broker_adapters.nats.JetStreamBroker: a client independent of the
code under test (which the gateways use at both ends), the tests' client, in a process of its own that loads the
machine little (core publishes; ~1% of a core while a drain runs). bench/README.md "Messages part" says more.

CPU: a thread of the harness samples utime+stime (/proc/<pid>/stat) of every watched process tree (GW-B, GW-A,
nats-B, nats-A, client, the other pair's gateways) and /proc/stat every 25 ms; the CPU of the measured window
(first to last landing) is interpolated between samples and divided by the messages that landed in it (N - 1).
CPU that GW-B spends on the first batch before the first landing, and on the last acks after the last, is
outside the window (one batch of max_in_flight at most, against N in the thousands). RSS: VmHWM (peak) of each
process tree, after the cell (GW-B: of the incarnation that ran the cell).

Every run is verified (a failure makes the part's status 1): A's stream holds exactly N messages of the cell's
subject, with N distinct Nats-Msg-Id, payload indexes 0..N-1 in stream order, each of `size` bytes, and the
stream's total is what all cells so far put there (nothing extra arrived later). Crossings GW-B sent again or
logged not OK are counted (at least once across the link is allowed; a loss or duplicate in A's stream is not).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.util
import json
import os
import select
import shutil
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from bench.gateway_pair import (
    DOMAIN_A_GIVES_B,
    DOMAIN_B_GIVES_A,
    interlink_cli,
    log_events,
    log_size,
    make_sites,
    not_ok_calls,
    read_log,
)
from bench.processes import (
    _CLK_TCK,
    Child,
    Children,
    MachineSample,
    _die_with_parent,
    cpu_seconds,
    free_ports,
    process_tree,
    reap,
    tree_memory,
    wait_for_port,
)
from bench.report import num, size_label

REPO = Path(__file__).resolve().parent.parent
APP = "bench-producer"
SAMPLE_S = 0.025  # CPU sampler interval
POLL_S = 0.05  # the client polls A's stream count this often while waiting for the last message
MIN_MESSAGES = 1000
MAX_MESSAGES = 500_000
HEAD = 30  # b"%09d:%019d:" (index, publish time ns)
IDLE_CPU_WARN_PCT = 3.0

NATS_CONFIG = """\
listen: 127.0.0.1:{port}
server_name: bench-{name}-{port}
jetstream {{
    store_dir: "{store}"
    max_memory_store: 64MB
    max_file_store: 16GB
}}
"""

SITE_A = """\
# GW-A of the messages bench ({name}): site B's messages of {subject} land in stream {stream_a} of site A's broker.
site: site-a
listen: {{peer: 127.0.0.1:{peer_a}}}
tls: {{ca: {a}/ca.pem, cert: {a}/gateway.pem, key: {a}/gateway.key}}
peers:
  site-b: {{endpoints: [127.0.0.1:{peer_b}], ca: {b}/ca.pem, domain: {domain_b_gives_a}}}
domains: {{site-b: {domain_a_gives_b}}}
messaging:
  broker: {{kind: nats, url: "{url_a}"}}
  exports:
    - {{subject: "{subject}", stream: {stream_a}, allow: {{site-b: {{apps: [{app}]}}}}}}
"""

SITE_B = """\
# GW-B of the messages bench ({name}): carries {subject} from stream {stream_b} of site B's broker to site A.
site: site-b
listen: {{peer: 127.0.0.1:{peer_b}}}
tls: {{ca: {b}/ca.pem, cert: {b}/gateway.pem, key: {b}/gateway.key}}
peers:
  site-a: {{endpoints: [127.0.0.1:{peer_a}], ca: {a}/ca.pem, domain: {domain_a_gives_b}}}
domains: {{site-a: {domain_b_gives_a}}}
messaging:
  broker: {{kind: nats, url: "{url_b}"}}
  imports:
    - {{subject: "{subject}", to: site-a, stream: {stream_b}, max_in_flight: {in_flight}}}
"""


@dataclass
class MessagesOptions:
    sizes: list[int]
    in_flight: list[int]
    duration: float
    warmup: float
    count: int | None = None  # messages per drain (default: rate × duration)
    rate: float | None = None  # steady run's publish rate, msgs/s (default: steady_load × the cell's drain rate)
    steady_load: float = 0.7
    startup_timeout: float = 20.0
    interlink_workers: int | None = None


class Failed(Exception):
    pass


# --- processes ----------------------------------------------------------------------------------------------


def nats_binary() -> str | None:
    return shutil.which("nats-server", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"]))


def nats_version(binary: str) -> str:
    try:
        return subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def missing() -> str | None:
    """Why the part cannot run here, or None."""
    if nats_binary() is None:
        return "nats-server is not installed (Debian package `nats-server`; bench/run.sh installs it)"
    if importlib.util.find_spec("nats") is None:
        return "nats-py is not installed in .venv (pip install nats-py; bench/run.sh installs it)"
    return None


@dataclass
class Nats:
    name: str
    child: Child
    port: int
    startup_s: float

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


def start_nats(children: Children, binary: str, directory: Path, name: str, timeout_s: float, attempts: int = 3) -> Nats:
    """A nats-server with JetStream (file store in `directory`) on a free loopback port, through `children`
    (its own process group, stopped with everything else); ready when its INFO says JetStream is on."""
    from tests.servers.nats import read_info  # the tests' probe

    errors = []
    for attempt in range(attempts):
        (port,) = free_ports(1)
        run_dir = directory / f"nats-{name}-{attempt}"
        run_dir.mkdir(parents=True, exist_ok=True)
        conf = run_dir / "nats-server.conf"
        conf.write_text(NATS_CONFIG.format(port=port, name=name, store=run_dir / "jetstream"))
        started = time.monotonic()
        log = run_dir / "nats-server.log"
        child = children.start(f"nats-server {name}", [binary, "-c", str(conf)], cwd=run_dir, log=log)
        while time.monotonic() < started + timeout_s and child.alive():
            info = read_info(port)
            if info is not None and info.get("jetstream"):
                return Nats(name, child, port, round(time.monotonic() - started, 3))
            time.sleep(0.02)
        state = "exited" if not child.alive() else f"sent no INFO with JetStream within {timeout_s:.0f}s"
        errors.append(f"attempt {attempt + 1} (port {port}): {state}; log:\n{child.log_tail(10)}")
        children.stop(child)
    raise Failed(f"could not start nats-server {name}:\n" + "\n".join(errors))


@dataclass
class MPair:
    """One pair of gateways, for one max_in_flight."""

    in_flight: int
    name: str  # in-flight-<n> (also the profiles' label: <stamp>-messages-in-flight-<n>-gw-<a|b>.prof.txt)
    subject_root: str  # bench.f<n>
    stream_a: str
    stream_b: str
    site_a: str  # site file names
    site_b: str
    ports: dict[str, int]
    gw_a: Child | None = None
    gw_b: Child | None = None
    total_a: int = 0  # messages in A's stream so far (all cells of this pair)
    rate: float | None = None  # last measured drain rate (sizes N)
    cells: int = 0
    rss_peak_mb: dict[str, float] = field(default_factory=dict)  # role -> max over incarnations

    @property
    def proxies(self) -> dict[str, Child]:
        return {"GW-B": self.gw_b, "GW-A": self.gw_a}  # type: ignore[dict-item]


def _start_gateway(children: Children, tmp: Path, label: str, site_file: str, workers: int | None) -> Child:
    """`interlink run -c FILE` in the temp dir, as every part starts its gateways (bench/gateway_pair.py; the
    suite puts the repository on PYTHONPATH for `broker_adapters`), under cProfile with --profile."""
    argv = [str(interlink_cli()), "run", "-c", site_file, *(["--workers", str(workers)] if workers else [])]
    log = tmp / f"{site_file}.log"
    env = None
    if children.profile is not None:
        argv, env = children.profile.wrap(argv, label, log)
    return children.start(label, argv, cwd=tmp, log=log, env=env)


def _wait_event(child: Child, event: str, offset: int, timeout_s: float) -> dict | None:
    """The first `event` the gateway logged after byte `offset`, waited for; None on timeout or exit."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and child.alive():
        for e in log_events(child.log, (event,), offset):
            if e.get("event") == event:
                return e
        time.sleep(0.02)
    return None


def _tail(child: Child) -> str:
    return "\n".join("    " + line for line in child.log_tail().splitlines()) or "    (no output)"


# --- the client process (nats-py) ---------------------------------------------------------------------------


class Client:
    """`python -m bench.messages_bench client`, driven over stdin/stdout (one JSON line each way)."""

    def __init__(self, children: Children, tmp: Path, url_a: str, url_b: str) -> None:
        argv = [sys.executable, "-m", "bench.messages_bench", "client", "--url-a", url_a, "--url-b", url_b]
        self.err_path = tmp / "client.log"
        self.err = open(self.err_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True,
            preexec_fn=_die_with_parent,
        )  # fmt: skip
        self.pid = self.proc.pid
        reply = self._line(30)
        if not reply.get("ready"):
            raise Failed(f"the nats-py client did not connect: {reply}")

    def _line(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise Failed(f"the nats-py client said nothing within {timeout:.0f}s")
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(5)
            raise Failed(f"the nats-py client exited (status {self.proc.returncode}): "
                         f"{self.err_path.read_text(errors='replace')[-800:]}")  # fmt: skip
        try:
            return json.loads(line)
        except ValueError:
            raise Failed(f"the nats-py client said {line.strip()[:300]!r}") from None

    def call(self, wait_s: float, /, **command) -> dict:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        reply = self._line(wait_s)
        if reply.get("fatal"):
            raise Failed(f"the nats-py client failed on {command.get('cmd')}: {reply['fatal']}")
        return reply

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        reap(self.proc)
        self.err.close()


def payload(index: int, size: int, published_ns: int) -> bytes:
    head = b"%09d:%019d:" % (index, published_ns)
    return head + b"x" * (size - len(head))


def _ack_fields(reply: str) -> tuple[int, int] | None:
    """(stream sequence, stored at ns) from a JetStream delivery's reply subject
    ($JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>, or the 2.10+ form with domain)."""
    tokens = reply.split(".")
    if len(tokens) == 9:
        return int(tokens[5]), int(tokens[7])
    if len(tokens) >= 11:
        return int(tokens[7]), int(tokens[9])
    return None


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def _client(url_a: str, url_b: str) -> None:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    nb = await nats.connect(url_b, connect_timeout=5, max_reconnect_attempts=0, pending_size=8 * 1024 * 1024)
    na = await nats.connect(url_a, connect_timeout=5, max_reconnect_attempts=0)
    jsa, jsb = na.jetstream(timeout=10), nb.jetstream(timeout=10)
    headers = {"Interlink-App": APP}
    loop = asyncio.get_running_loop()

    def say(obj: dict) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    async def count(js, stream: str) -> int:
        try:
            return (await js.stream_info(stream)).state.messages
        except nats.js.errors.NotFoundError:
            return 0

    async def wait_count(js, stream: str, target: int, timeout: float) -> tuple[bool, int]:
        deadline = time.monotonic() + timeout
        n = await count(js, stream)
        while n < target and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
            n = await count(js, stream)
        return n >= target, n

    async def fill(c: dict) -> dict:
        before = await count(jsb, c["stream"])
        t0 = time.monotonic()
        for i in range(c["count"]):
            await nb.publish(c["subject"], payload(i, c["size"], 0), headers=headers)
        await nb.flush(timeout=30)
        ok, n = await wait_count(jsb, c["stream"], before + c["count"], 60)
        return {"ok": ok, "stored": n - before, "seconds": round(time.monotonic() - t0, 3)}

    async def steady(c: dict) -> dict:
        total, size, rate, subject = c["count"], c["size"], c["rate"], c["subject"]
        sent = 0
        t0 = time.monotonic()
        w0 = time.time()
        while sent < total:
            due = min(total, int((time.monotonic() - t0) * rate) + 1)
            while sent < due:
                await nb.publish(subject, payload(sent, size, time.time_ns()), headers=headers)
                sent += 1
            next_at = t0 + due / rate
            await asyncio.sleep(max(0.0, min(0.002, next_at - time.monotonic())))
        await nb.flush(timeout=30)
        seconds = time.monotonic() - t0
        return {"ok": True, "seconds": round(seconds, 3), "rate": round(total / seconds, 1), "started": w0}

    async def wait(c: dict) -> dict:
        ok, n = await wait_count(jsa, c["stream"], c["target"], c["timeout"])
        return {"ok": ok, "count": n, "t": time.time()}

    async def verify(c: dict) -> dict:
        expected, size = c["count"], c["size"]
        sub = await jsa.pull_subscribe(c["subject"], stream=c["stream"], config=ConsumerConfig(
            ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=30))
        indexes: list[int] = []
        ids: set[str] = set()
        stored: list[int] = []
        published: list[int] = []
        bad: list[str] = []
        origin = None
        deadline = time.monotonic() + 60
        try:
            while True:
                # until all expected arrived (a busy server may answer a fetch late: try again, 60 s in all),
                # then one more short fetch: anything beyond them is an extra message
                enough = len(indexes) + len(bad) >= expected
                try:
                    batch = await sub.fetch(1000, timeout=0.5 if enough else 2.0)
                except asyncio.TimeoutError:  # nats-py raises its own subclass or asyncio's
                    if enough or time.monotonic() > deadline:
                        break
                    continue
                for m in batch:
                    fields = _ack_fields(m.reply)
                    head = m.data[:HEAD].split(b":")
                    try:
                        indexes.append(int(head[0]))
                        published.append(int(head[1]))
                    except (IndexError, ValueError):
                        bad.append(f"payload {m.data[:40]!r}")
                        continue
                    if len(m.data) != size:
                        bad.append(f"message {indexes[-1]}: {len(m.data)} bytes, not {size}")
                    stored.append(fields[1] if fields else 0)
                    ids.add((m.headers or {}).get("Nats-Msg-Id", ""))
                    origin = origin or (m.headers or {}).get("Interlink-Origin-Site")
        finally:
            await sub.unsubscribe()
        n = len(indexes)
        in_order = indexes == list(range(expected))
        out = {
            "count": n, "expected": expected, "distinct_ids": len(ids - {""}), "in_order": in_order,
            "missing": len(set(range(expected)) - set(indexes)), "duplicates": n - len(set(indexes)),
            "bad": bad[:5], "origin_site": origin,
        }  # fmt: skip
        out["ok"] = n == expected and out["distinct_ids"] == expected and in_order and not bad and origin == "site-b"
        if stored:
            out["first_ns"], out["last_ns"] = min(stored), max(stored)
        if c.get("latency") and stored:
            lat = sorted((s - p) / 1e6 for s, p in zip(stored, published))
            out["latency_ms"] = {q: round(_percentile(lat, v), 3) for q, v in
                                 (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))}
        return out

    async def stream_count(c: dict) -> dict:
        return {"ok": True, "count": await count(jsa if c["site"] == "a" else jsb, c["stream"])}

    commands = {"fill": fill, "steady": steady, "wait": wait, "verify": verify, "count": stream_count}
    say({"ready": True})
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            command = json.loads(line)
            if command.get("cmd") == "quit":
                break
            try:
                say(await commands[command["cmd"]](command))
            except Exception as exc:  # said to the harness, which fails the cell
                where = traceback.extract_tb(exc.__traceback__)[-1]
                say({"fatal": f"{type(exc).__name__}: {exc} (at {Path(where.filename).name}:{where.lineno})"})
    finally:
        await nb.close()
        await na.close()


# --- measuring ----------------------------------------------------------------------------------------------


class Sampler(threading.Thread):
    """CPU seconds (utime+stime) of every watched process tree, and the machine's busy ticks, every SAMPLE_S,
    with the wall-clock time (the clock of the brokers' timestamps). Trees are re-read every half second (the
    workers of --interlink-workers); a process that is gone keeps its last value."""

    def __init__(self, roots: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.roots = roots
        self.samples: list[tuple[float, dict[str, float], int, int]] = []
        self._last: dict[int, float] = {}
        self._trees: dict[str, list[int]] = {}
        self._halt = threading.Event()

    def _sample(self, refresh: bool) -> None:
        if refresh:
            self._trees = {name: process_tree(root) for name, root in self.roots.items()}
        cpu = {}
        for name, pids in self._trees.items():
            total = 0.0
            for pid in pids:
                value = cpu_seconds(pid)
                if value or pid not in self._last:
                    self._last[pid] = value
                total += self._last[pid]
            cpu[name] = total
        machine = MachineSample.take()
        self.samples.append((time.time(), cpu, machine.busy, machine.steal))

    def run(self) -> None:
        n = 0
        while not self._halt.is_set():
            self._sample(n % 20 == 0)
            n += 1
            self._halt.wait(SAMPLE_S)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
        self._sample(False)

    def at(self, t: float) -> tuple[dict[str, float], float, float]:
        """(cpu per tree, machine busy ticks, steal ticks) at wall-clock time `t`, interpolated."""
        s = self.samples
        if t <= s[0][0]:
            return s[0][1], s[0][2], s[0][3]
        if t >= s[-1][0]:
            return s[-1][1], s[-1][2], s[-1][3]
        lo, hi = 0, len(s) - 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if s[mid][0] <= t:
                lo = mid
            else:
                hi = mid
        (t0, c0, b0, s0), (t1, c1, b1, s1) = s[lo], s[hi]
        f = (t - t0) / (t1 - t0) if t1 > t0 else 0.0
        return ({k: c0[k] + f * (c1[k] - c0[k]) for k in c0}, b0 + f * (b1 - b0), s0 + f * (s1 - s0))


def _crossings(log: Path, start: int, end: int | None = None) -> dict:
    """What GW-B logged about its crossings between two log offsets: access lines, sent again (attempt > 1)."""
    calls = resent = 0
    for line in read_log(log, start, end).splitlines():
        if b'"messages"' in line and b'"call"' in line:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "call" and event.get("ingress") == "messages":
                calls += 1
                resent += (event.get("attempt") or 1) > 1
    return {"calls": calls, "resent": resent}


def _rss_mb(child: Child | None) -> float | None:
    if child is None or not child.alive():
        return None
    memory = tree_memory(child.pid)
    return round(max(m["VmHWM"] for m in memory) / 1024, 1) if memory else None


class Part:
    def __init__(self, opts: MessagesOptions, tmp: Path, children: Children) -> None:
        self.opts, self.tmp, self.children = opts, tmp, children
        self.pairs: list[MPair] = []
        self.nats: dict[str, Nats] = {}
        self.client: Client | None = None
        self.reported_dead: set[str] = set()

    # --- set-up ---

    def start(self, binary: str) -> None:
        opts, tmp = self.opts, self.tmp
        site_a, site_b = make_sites(tmp)
        if site_a.made_by != "interlink" or site_b.made_by != "interlink":
            raise Failed(f"certificates not made by interlink: {site_a.note or site_b.note}")
        for name in ("B", "A"):
            self.nats[name] = start_nats(self.children, binary, tmp, name, max(10.0, opts.startup_timeout))
        print(f"bench: nats-server A on {self.nats['A'].url}, B on {self.nats['B'].url} "
              f"(up in {self.nats['A'].startup_s:.2f} / {self.nats['B'].startup_s:.2f} s)")  # fmt: skip
        for n in opts.in_flight:
            ports = dict(zip(("peer_a", "peer_b"), free_ports(2)))
            pair = MPair(n, f"in-flight-{n}", f"bench.f{n}", f"BENCH_IN_F{n}", f"BENCH_OUT_F{n}",
                         f"bench-messages-in-flight-{n}-gw-a.yaml", f"bench-messages-in-flight-{n}-gw-b.yaml", ports)  # fmt: skip
            values = dict(
                ports, name=pair.name, subject=f"{pair.subject_root}.>", stream_a=pair.stream_a,
                stream_b=pair.stream_b, in_flight=n, app=APP, url_a=self.nats["A"].url, url_b=self.nats["B"].url,
                a=site_a.dir.relative_to(tmp), b=site_b.dir.relative_to(tmp), domain_a_gives_b=DOMAIN_A_GIVES_B,
                domain_b_gives_a=DOMAIN_B_GIVES_A,
            )  # fmt: skip
            (tmp / pair.site_a).write_text(SITE_A.format(**values))
            (tmp / pair.site_b).write_text(SITE_B.format(**values))
            self.pairs.append(pair)
        # every GW-A at once, then every GW-B once its GW-A listens and has its export stream
        for pair in self.pairs:
            pair.gw_a = _start_gateway(self.children, tmp, f"{pair.name}-gw-a", pair.site_a, opts.interlink_workers)
        slack = 3.0 * (len(self.pairs) - 1)
        for pair in self.pairs:
            assert pair.gw_a is not None
            if not wait_for_port(pair.ports["peer_a"], pair.gw_a, opts.startup_timeout + slack) or \
                    _wait_event(pair.gw_a, "gateway.ready", 0, opts.startup_timeout + slack) is None:
                raise Failed(f"GW-A of {pair.name} did not come up; last log lines:\n{_tail(pair.gw_a)}")
            self._start_gw_b(pair)
        for pair in self.pairs:
            self._wait_gw_b(pair, 0, opts.startup_timeout + slack)
        self.client = Client(self.children, tmp, self.nats["A"].url, self.nats["B"].url)

    def _start_gw_b(self, pair: MPair) -> int:
        offset = log_size(self.tmp / f"{pair.site_b}.log")
        pair.gw_b = _start_gateway(self.children, self.tmp, f"{pair.name}-gw-b", pair.site_b, self.opts.interlink_workers)
        return offset

    def _wait_gw_b(self, pair: MPair, offset: int, timeout: float) -> None:
        assert pair.gw_b is not None
        if _wait_event(pair.gw_b, "messages.import_ready", offset, timeout) is None:
            raise Failed(f"GW-B of {pair.name} never logged messages.import_ready; last log lines:\n{_tail(pair.gw_b)}")

    def _stop_gw_b(self, pair: MPair) -> None:
        if pair.gw_b is not None:
            rss = _rss_mb(pair.gw_b)
            if rss is not None:
                pair.rss_peak_mb["GW-B"] = max(rss, pair.rss_peak_mb.get("GW-B", 0.0))
            self.children.stop(pair.gw_b)
            pair.gw_b = None

    # --- one run ---

    def _dead(self, pair: MPair) -> str | None:
        dead = {role: c for role, c in {**pair.proxies, **{f"nats-{k}": v.child for k, v in self.nats.items()}}.items()
                if c is None or not c.alive()}  # fmt: skip
        if not dead:
            return None
        for role, c in dead.items():
            if c is not None and pair.name + role not in self.reported_dead:
                self.reported_dead.add(pair.name + role)
                print(f"\nbench: {role} ({c.name}) exited; last lines of {c.log}:\n{c.log_tail()}")
        return ", ".join(f"{role} exited with status {c.proc.returncode if c else '?'}" for role, c in dead.items())

    def _roots(self, pair: MPair) -> dict[str, int]:
        assert self.client is not None and pair.gw_a is not None and pair.gw_b is not None
        roots = {"GW-B": pair.gw_b.pid, "GW-A": pair.gw_a.pid, "nats-B": self.nats["B"].child.pid,
                 "nats-A": self.nats["A"].child.pid, "client": self.client.pid}  # fmt: skip
        for other in self.pairs:
            if other is not pair:
                for role, c in other.proxies.items():
                    if c is not None and c.alive():
                        roots[f"{other.name}:{role}"] = c.pid
        return roots

    def _wait_landed(self, pair: MPair, target: int, timeout: float, log_b: Path, offset_b: int) -> dict:
        """Until site A's stream holds `target` messages (the client polls it), `timeout` at most; given up at
        once when GW-B dead-letters a message (it will never land) or a process of the pair exits."""
        assert self.client is not None
        deadline = time.monotonic() + timeout
        while True:
            step = max(0.1, min(2.0, deadline - time.monotonic()))
            done = self.client.call(step + 30, cmd="wait", stream=pair.stream_a, target=target, timeout=step)
            if done["ok"] or time.monotonic() >= deadline:
                return done
            new = read_log(log_b, offset_b)
            offset_b += len(new)
            if b'"messages.dead_lettered"' in new:
                line = next(x for x in new.splitlines() if b'"messages.dead_lettered"' in x)
                return {**done, "why": f"GW-B dead-lettered messages: {line.decode(errors='replace')[:400]}"}
            dead = self._dead(pair)
            if dead:
                return {**done, "why": dead}

    def warm_up(self, pair: MPair) -> dict:
        """Messages through a pair before its first cell (warm connections, a first rate), verified."""
        count = max(MIN_MESSAGES, int(2000 * self.opts.warmup))
        size = self.opts.sizes[0]
        subject = f"{pair.subject_root}.warmup"
        assert self.client is not None
        t0 = time.time()
        offset_b = log_size(self.tmp / f"{pair.site_b}.log")
        self.client.call(60, cmd="steady", subject=subject, count=count, size=size, rate=1e9)
        pair.total_a += count
        done = self._wait_landed(pair, pair.total_a, 120, self.tmp / f"{pair.site_b}.log", offset_b)
        if not done["ok"]:
            raise Failed(f"warm-up of {pair.name}: {done['count'] - pair.total_a + count} of {count} messages reached "
                         f"site A's stream" + (f": {done['why']}" if done.get("why") else " within 120 s"))  # fmt: skip
        check = self.client.call(120, cmd="verify", stream=pair.stream_a, subject=subject, count=count, size=size)
        if not check["ok"]:
            raise Failed(f"warm-up of {pair.name}: site A's stream is wrong: {check}")
        span = (check["last_ns"] - check["first_ns"]) / 1e9
        pair.rate = (count - 1) / span if span > 0 else None
        print(f"bench: warm-up {pair.name}: {count} × {size_label(size)} landed and verified in {time.time() - t0:.1f} s"
              + (f" ({pair.rate:,.0f} msgs/s)" if pair.rate else ""))  # fmt: skip
        return {"messages": count, "size": size, "msgs_per_s": round(pair.rate, 1) if pair.rate else None}

    def measure(self, pair: MPair, size: int, mode: str, rate: float | None = None) -> dict:
        opts = self.opts
        client = self.client
        assert client is not None
        pair.cells += 1
        subject = f"{pair.subject_root}.s{size}.{mode}.c{pair.cells}"
        cell: dict = {"size": size, "max_in_flight": pair.in_flight, "mode": mode, "subject": subject}
        expected_rate = pair.rate or 1000.0
        if mode == "drain":
            count = opts.count or int(expected_rate * opts.duration)
        else:
            assert rate is not None
            count = int(rate * opts.duration)
            cell["offered_per_s"] = round(rate, 1)
        count = max(MIN_MESSAGES, min(MAX_MESSAGES, count))
        cell["messages"] = count
        timeout = max(60.0, 10 * count / expected_rate)
        dead = self._dead(pair)
        if dead:
            return {**cell, "error": dead}

        log_a = pair.gw_a.log  # type: ignore[union-attr]
        log_b = self.tmp / f"{pair.site_b}.log"
        offsets = {"GW-A": log_size(log_a)}
        if mode == "drain":
            # GW-B stopped (its own drain: nothing in flight now), the backlog published, GW-B started again
            self._stop_gw_b(pair)
            fill = client.call(90, cmd="fill", subject=subject, stream=pair.stream_b, count=count, size=size)
            if not fill["ok"]:
                pair.total_a += fill["stored"]  # GW-B carries what B's broker did store
                self._start_gw_b(pair)
                return {**cell, "error": f"site B's broker stored {fill['stored']} of {count} messages published"}
            cell["fill_s"] = fill["seconds"]
            offsets["GW-B"] = self._start_gw_b(pair)
            sampler = Sampler(self._roots(pair))
            sampler.start()
            started = time.time()
        else:
            offsets["GW-B"] = log_size(log_b)
            sampler = Sampler(self._roots(pair))
            sampler.start()
            time.sleep(2 * SAMPLE_S)
            started = time.time()
            sent = client.call(timeout, cmd="steady", subject=subject, count=count, size=size, rate=rate)
            cell["published_per_s"] = sent["rate"]
        expected_total = pair.total_a = pair.total_a + count
        try:
            done = self._wait_landed(pair, expected_total, timeout, log_b, offsets["GW-B"])
            time.sleep(0.2)  # GW-B's last acks
        finally:
            sampler.stop()
        cell["wall_s"] = round(done["t"] - started, 3)
        check = client.call(120, cmd="verify", stream=pair.stream_a, subject=subject, count=count, size=size,
                            latency=mode == "steady")  # fmt: skip
        total = client.call(30, cmd="count", site="a", stream=pair.stream_a)["count"]
        time.sleep(0.3)
        later = client.call(30, cmd="count", site="a", stream=pair.stream_a)["count"]
        check["stream_total"], check["stream_total_expected"] = later, expected_total
        if total != expected_total or later != total:
            check["ok"] = False
        pair.total_a = later  # so that one bad cell does not fail the next ones
        cell["verify"] = check
        cell["gw_b_crossings"] = _crossings(log_b, offsets["GW-B"])
        not_ok = {"GW-B": not_ok_calls(log_b, offsets["GW-B"]), "GW-A": not_ok_calls(log_a, offsets["GW-A"])}
        cell["gateway_not_ok"] = {role: c for role, c in not_ok.items() if c}
        if not done["ok"]:
            cell["error"] = (f"{done['count'] - (expected_total - count)} of {count} messages reached site A's stream"
                             + (f": {done['why']}" if done.get("why") else f" within {timeout:.0f} s"))  # fmt: skip
            return cell
        if "first_ns" not in check or check["last_ns"] <= check["first_ns"]:
            cell["error"] = f"no landing span in site A's stream: {check}"
            return cell
        first, last = check["first_ns"] / 1e9, check["last_ns"] / 1e9
        span = last - first
        landed = count - 1
        cell["seconds"] = round(span, 3)
        cell["msgs_per_s"] = round(landed / span, 1)
        if first < sampler.samples[0][0]:
            cell["note"] = "the first landing came before the first CPU sample"
        c0, b0, s0 = sampler.at(first)
        c1, b1, s1 = sampler.at(last)
        cpu = {name: c1[name] - c0[name] for name in c1}
        roles = ("GW-B", "GW-A", "nats-B", "nats-A")
        cell["cpu_us_per_msg"] = {r: round(cpu[r] * 1e6 / landed, 1) for r in roles}
        cell["cpu_pct"] = {name: round(100 * v / span, 1) for name, v in cpu.items()}
        known = sum(cpu[r] for r in (*roles, "client"))
        busy = (b1 - b0) / _CLK_TCK
        cell["machine_busy_pct"] = round(100 * busy / span, 1)
        cell["machine_steal_pct"] = round(100 * (s1 - s0) / _CLK_TCK / span, 1)
        cell["other_cpu_pct"] = round(100 * (busy - known) / span, 1)
        cell["client_cpu_pct"] = cell["cpu_pct"]["client"]
        idle = {name: pct for name, pct in cell["cpu_pct"].items() if ":" in name and pct > IDLE_CPU_WARN_PCT}
        if idle:
            cell["other_proxies_busy_pct"] = idle
        rss = {"GW-B": _rss_mb(pair.gw_b), "GW-A": _rss_mb(pair.gw_a),
               "nats-B": _rss_mb(self.nats["B"].child), "nats-A": _rss_mb(self.nats["A"].child)}  # fmt: skip
        cell["rss_peak_mb"] = rss
        for role in ("GW-B", "GW-A"):
            if rss[role] is not None:
                pair.rss_peak_mb[role] = max(rss[role], pair.rss_peak_mb.get(role, 0.0))
        if mode == "drain":
            pair.rate = cell["msgs_per_s"]
        else:  # did the gateways keep up with the producer?
            cell["kept_up"] = cell["msgs_per_s"] >= 0.97 * cell["published_per_s"]
        if not check["ok"]:
            cell["error"] = "verification failed: " + _verify_text(check)
        return cell


def _verify_text(v: dict) -> str:
    parts = [f"{v['count']} of {v['expected']} messages", f"{v['distinct_ids']} distinct Nats-Msg-Id",
             "in order" if v["in_order"] else "NOT in order"]  # fmt: skip
    if v.get("missing"):
        parts.append(f"{v['missing']} missing")
    if v.get("duplicates"):
        parts.append(f"{v['duplicates']} duplicated")
    if v.get("bad"):
        parts.append(f"bad: {v['bad']}")
    if v.get("origin_site") != "site-b":
        parts.append(f"Interlink-Origin-Site {v.get('origin_site')!r}")
    if v.get("stream_total") != v.get("stream_total_expected"):
        parts.append(f"stream holds {v.get('stream_total')} messages, {v.get('stream_total_expected')} expected")
    return ", ".join(parts)


def _progress(n: int, total: int, cell: dict) -> None:
    head = (f"bench: [{n}/{total}] {size_label(cell['size']):>6} in-flight {cell['max_in_flight']:<4} "
            f"{cell['mode']:<6} {cell['messages']:>7} msgs ...")  # fmt: skip
    if "msgs_per_s" not in cell:
        print(f"{head} FAILED: {cell.get('error')}")
        return
    cpu = cell["cpu_us_per_msg"]
    line = (f"{head} {cell['msgs_per_s']:>8,.0f} msgs/s in {cell['seconds']:.2f} s, GW-B/GW-A {cpu['GW-B']:.0f}/"
            f"{cpu['GW-A']:.0f} µs/msg")  # fmt: skip
    if cell["mode"] == "steady" and cell["verify"].get("latency_ms"):
        lat = cell["verify"]["latency_ms"]
        line += f", latency p50 {lat['p50']:.1f} ms p99 {lat['p99']:.1f} ms"
    if cell.get("error"):
        line += f"  FAILED: {cell['error']}"
    elif cell["verify"]["ok"]:
        line += ", verified"
    if cell["gw_b_crossings"]["resent"]:
        line += f", {cell['gw_b_crossings']['resent']} sent again"
    if cell.get("kept_up") is False:
        line += f"  (BEHIND: published at {cell['published_per_s']:,.0f} msgs/s)"
    if cell.get("other_cpu_pct", 0) > 25:
        line += f"  (disturbed: other load {cell['other_cpu_pct']:.0f}% of a core)"
    print(line)


# --- report -------------------------------------------------------------------------------------------------


def cell_table(cells: list[dict]) -> str:
    head = (
        f"{'size':>6} {'in-flight':>9} {'mode':<6} {'msgs':>7} {'s':>6} {'msgs/s':>8} {'p50 ms':>7} {'p99 ms':>7}"
        f" | {'GW-B µs/msg RSS MB':>18} | {'GW-A µs/msg RSS MB':>18} | {'nats-B µs':>9} {'nats-A µs':>9}"
        f" | {'client':>6} {'other':>5} | check"
    )
    lines = [head, "-" * len(head)]
    previous = None
    for c in cells:
        if previous is not None and (c["size"], c["max_in_flight"]) != previous:
            lines.append("")
        previous = (c["size"], c["max_in_flight"])
        row = f"{size_label(c['size']):>6} {c['max_in_flight']:>9} {c['mode']:<6} {c['messages']:>7}"
        if "msgs_per_s" not in c:
            lines.append(f"{row}   FAILED: {c.get('error')}")
            continue
        lat = c["verify"].get("latency_ms") or {}
        cpu, rss = c["cpu_us_per_msg"], c["rss_peak_mb"]
        row += (
            f" {c['seconds']:>6.2f} {c['msgs_per_s']:>8.0f} {num(lat.get('p50'), '.1f'):>7} {num(lat.get('p99'), '.1f'):>7}"
            f" | {cpu['GW-B']:>10.0f} {num(rss['GW-B'], '.1f'):>7} | {cpu['GW-A']:>10.0f} {num(rss['GW-A'], '.1f'):>7}"
            f" | {cpu['nats-B']:>9.0f} {cpu['nats-A']:>9.0f} | {c['client_cpu_pct']:>5.0f}% {max(0.0, c['other_cpu_pct']):>4.0f}%"
        )
        check = "ok" if c["verify"]["ok"] else "FAILED"
        resent = c["gw_b_crossings"]["resent"]
        lines.append(row + f" | {check}" + (f", {resent} sent again" if resent else ""))
    return "\n".join(lines)


def summary_lines(cells: list[dict]) -> list[str]:
    out = []
    ok = [c for c in cells if "error" not in c and "msgs_per_s" in c]
    for size in sorted({c["size"] for c in ok}, reverse=True):
        for mode in ("drain", "steady"):
            row = [c for c in ok if c["size"] == size and c["mode"] == mode]
            if row:
                out.append(f"{size_label(size):>6} {mode:<6} " + "; ".join(
                    f"in-flight {c['max_in_flight']}: {c['msgs_per_s']:,.0f} msgs/s, "
                    f"{c['cpu_us_per_msg']['GW-B'] + c['cpu_us_per_msg']['GW-A']:.0f} µs/msg both gateways" for c in row))
    return out


# --- the part -----------------------------------------------------------------------------------------------


def run(opts: MessagesOptions, tmp: Path, children: Children) -> tuple[dict, int]:
    tmp.mkdir(parents=True, exist_ok=True)
    out: dict = {
        "settings": {
            "sizes": opts.sizes, "max_in_flight": opts.in_flight, "duration_s": opts.duration, "warmup_s": opts.warmup,
            "count": opts.count, "steady_rate": opts.rate, "steady_load": opts.steady_load,
            "interlink_workers": opts.interlink_workers, "producer": "nats-py, core publish (own process)",
            "cpu_sample_s": SAMPLE_S,
        },  # fmt: skip
        "cells": [],
    }
    print("\nbench: ===== messages: NATS JetStream site B -> GW-B ══mTLS══> GW-A -> NATS JetStream site A =====")
    print(f"bench: temp dir {tmp}")
    why = missing()
    if why:
        out["error"] = why
        print(f"bench: messages part FAILED: {why}")
        return out, 1
    binary = nats_binary()
    assert binary is not None
    out["tools"] = {"nats-server": nats_version(binary), "nats-py": importlib.metadata.version("nats-py")}
    part = Part(opts, tmp, children)
    cells: list[dict] = []
    total = len(opts.sizes) * len(opts.in_flight) * 2
    try:
        part.start(binary)
        print(f"bench: gateways up: {', '.join(p.name for p in part.pairs)} (GW-B -> GW-A, one pair per max_in_flight)")
        out["warmup"] = {p.name: part.warm_up(p) for p in part.pairs}
        n = 0
        for size in opts.sizes:
            for pair in part.pairs:
                n += 1
                drain = part.measure(pair, size, "drain")
                cells.append(drain)
                _progress(n, total, drain)
                n += 1
                rate = opts.rate or (opts.steady_load * drain["msgs_per_s"] if "msgs_per_s" in drain else None)
                if rate is None:
                    steady = {"size": size, "max_in_flight": pair.in_flight, "mode": "steady", "messages": 0,
                              "error": "no drain rate to pace the steady run with (--messages-rate)"}  # fmt: skip
                else:
                    steady = part.measure(pair, size, "steady", rate)
                cells.append(steady)
                _progress(n, total, steady)
    except (Failed, OSError, subprocess.TimeoutExpired) as exc:
        out["error"] = str(exc)
        out["cells"] = cells
        print(f"\nbench: messages part FAILED: {exc}")
        return out, 1
    finally:
        if part.client is not None:
            part.client.stop()
        out["rss_peak_mb"] = {  # per pair, over the whole part (every incarnation of GW-B)
            p.name: {role: max(filter(None, [p.rss_peak_mb.get(role), _rss_mb(child)]), default=None)
                     for role, child in (("GW-B", p.gw_b), ("GW-A", p.gw_a))}
            for p in part.pairs
        }  # fmt: skip
    out["cells"] = cells
    print()
    print(cell_table(cells))
    print(
        "\ndrain = N messages published into B's broker while GW-B was stopped, then carried; steady = published at a"
        "\nfixed rate while carried. msgs/s and s = (N - 1) / span from the first to the last message stored in A's"
        "\nstream (its JetStream timestamps); µs/msg = CPU (user+sys) of that process over the same span / (N - 1);"
        "\nRSS = peak (VmHWM); p50/p99 = publish -> stored in A (steady); client = the nats-py producer/poller,"
        "\nother = the rest of the machine, % of one core; check = A's stream holds exactly the N messages, distinct"
        "\nNats-Msg-Id, in order."
    )
    for line in summary_lines(cells):
        print(line)
    failed = [c for c in cells if c.get("error")]
    for c in failed:
        print(f"bench: messages cell {size_label(c['size'])} in-flight {c['max_in_flight']} {c['mode']} FAILED: "
              f"{c['error']}")
    return out, 1 if failed else 0


# --- the client's entry point -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.messages_bench", description="the messages part's nats-py client")
    p.add_argument("role", choices=["client"])
    p.add_argument("--url-a", required=True)
    p.add_argument("--url-b", required=True)
    args = p.parse_args(argv)
    asyncio.run(_client(args.url_a, args.url_b))
    return 0


if __name__ == "__main__":
    sys.exit(main())
