"""The churn part's registry writer: registers SOFARPC Bolt providers in ZooKeeper as sofa-rpc-node does,
and on command changes the provider set N times a second.

    python -m bench.zk_churn --zk 127.0.0.1:PORT --service com.example.EchoService --version 1.0 \
        --permanent 127.0.0.1:P1 --churn 127.0.0.1:P2 [--rate 10]

A process of its own (not a thread of the harness): kazoo runs threads, and the harness forks children
with a preexec_fn, which is not safe in a threaded process. One kazoo session holds every node:

- `--permanent`: an EPHEMERAL node under /sofa-rpc/<service>/providers, created at start, kept to the end;
- `--churn`: the second provider's EPHEMERAL node, created and deleted alternately every 1/rate s while
  churning, so that the provider set changes `rate` times a second ({P1} -> {P1, P2} -> {P1} ...); absent
  or present, as told, while not churning.

Node names are what SOFARPC providers write: urlencode(bolt://host:port?interface=...&version=...&uniqueId=
&appName=...&...), built here without the gateway marker `interlink.gw` (a node with it would be taken for a
gateway's own publication and ignored by the gateway's export subscription).

stdin commands, one per line, each answered with one JSON line on stdout:
    churn    start changing the set (the first change is made at once)  -> {"ok": true}
    steady   stop churning; P2 absent  -> {"changes": N, "seconds": S, "late_ms_max": L, "errors": E, "present": false}
    two      stop churning; P2 present -> the same, "present": true
             (N, S, L, E: what the churn since the last `churn` did; 0 when there was none)
    quit     (or end of stdin) close the session (its nodes vanish) and exit
At start: {"ready": true, "permanent": NAME, "session_id": ...} once P1 is registered, or {"fatal": ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from urllib.parse import quote


def provider_url(service: str, version: str, address: str, app: str) -> str:
    host, _, port = address.rpartition(":")
    params = [
        ("interface", service), ("version", version), ("uniqueId", ""), ("appName", app),
        ("serialization", "hessian2"), ("weight", "100"), ("timeout", "3000"), ("protocol", "bolt"),
        ("dynamic", "true"), ("startTime", str(int(time.time() * 1000))), ("pid", str(os.getpid())),
        ("rpcVer", "50400"), ("group", "SOFA"),
    ]  # fmt: skip
    query = "&".join(f"{k}={quote(v, safe=':,*$')}" for k, v in params)
    return f"bolt://{host}:{port}?{query}"


def node_name(url: str) -> str:
    return quote(url, safe="")  # Java URLEncoder / Node encodeURIComponent give the same bytes here


def say(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Churner:
    def __init__(self, zk, path: str, rate: float) -> None:
        self.zk = zk
        self.path = path
        self.interval = 1.0 / rate
        self.present = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.changes = 0
        self.errors = 0
        self.late_ms_max = 0.0
        self.started = 0.0

    def _toggle(self) -> None:
        try:
            if self.present:
                self.zk.delete(self.path)
            else:
                self.zk.create(self.path, b"", ephemeral=True)
            self.present = not self.present
            self.changes += 1
        except Exception as exc:  # noqa: BLE001 - counted and reported, never fatal
            self.errors += 1
            sys.stderr.write(f"zk_churn: {type(exc).__name__}: {exc}\n")
            self.present = self.zk.exists(self.path) is not None

    def _run(self) -> None:
        k = 0
        while not self._stop.is_set():
            due = self.started + k * self.interval
            wait = due - time.monotonic()
            if wait > 0 and self._stop.wait(wait):
                break
            self.late_ms_max = max(self.late_ms_max, (time.monotonic() - due) * 1000)
            self._toggle()
            k += 1

    def start(self) -> None:
        self.changes, self.errors, self.late_ms_max = 0, 0, 0.0
        self._stop.clear()
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self, present: bool = False) -> dict:
        """Stop churning (if churning); leave P2's node present or absent. Returns what the churn did."""
        seconds = time.monotonic() - self.started if self._thread is not None else 0.0
        changes = 0
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            changes = self.changes
        if self.present != present:
            self._toggle()
        return {"changes": changes, "seconds": round(seconds, 3), "late_ms_max": round(self.late_ms_max, 1),
                "errors": self.errors, "present": self.present}  # fmt: skip


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.zk_churn")
    p.add_argument("--zk", required=True)
    p.add_argument("--service", required=True)
    p.add_argument("--version", default="1.0")
    p.add_argument("--root", default="/sofa-rpc")
    p.add_argument("--permanent", required=True, help="host:port of the provider registered throughout")
    p.add_argument("--churn", required=True, help="host:port of the provider added and removed")
    p.add_argument("--rate", type=float, default=10.0, help="provider-set changes per second while churning")
    p.add_argument("--app", default="bench-provider")
    args = p.parse_args(argv)

    from kazoo.client import KazooClient

    zk = KazooClient(hosts=args.zk, timeout=6.0)
    try:
        zk.start(timeout=15)
        parent = f"{args.root}/{args.service}/providers"
        zk.ensure_path(parent)
        permanent = node_name(provider_url(args.service, args.version, args.permanent, args.app))
        zk.create(f"{parent}/{permanent}", b"", ephemeral=True)
    except Exception as exc:  # noqa: BLE001
        say({"fatal": f"{type(exc).__name__}: {exc}"})
        return 1
    churn_path = f"{parent}/{node_name(provider_url(args.service, args.version, args.churn, args.app))}"
    churner = Churner(zk, churn_path, args.rate)
    say({"ready": True, "permanent": permanent, "churn": churn_path.rsplit("/", 1)[1],
         "session_id": hex(zk.client_id[0]) if zk.client_id else None})  # fmt: skip
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "churn":
                churner.start()
                say({"ok": True})
            elif command == "steady":
                say(churner.stop(present=False))
            elif command == "two":
                say(churner.stop(present=True))
            elif command == "quit":
                break
            elif command:
                say({"error": f"unknown command {command!r}"})
    finally:
        try:
            churner.stop()
        except Exception as exc:  # noqa: BLE001 - closing anyway
            sys.stderr.write(f"zk_churn: stopping: {type(exc).__name__}: {exc}\n")
        zk.stop()
        zk.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
