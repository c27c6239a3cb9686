"""One benchmark invocation: the gRPC part (bench/grpc_bench.py), the Bolt part (bench/bolt_bench.py), the
translate part (bench/translate_bench.py), the churn part (bench/churn_bench.py) and the messages part
(bench/messages_bench.py), in that order, all written into one results JSON.

    python -m bench [--quick] [--only grpc|bolt|translate|churn|messages[,...]] [gRPC options] [other parts' options]

The gRPC part runs exactly as `grpc_bench.run` does alone; every part's servers are stopped before the next
part starts, so that no two parts share the machine. The gRPC part's JSON is the top level of the results
file, the others' go under the keys "bolt", "translate", "churn" and "messages". --quick, --duration, --warmup,
--startup-timeout, --interlink-workers, --results-dir and --keep-tmp apply to every part.

Exit status: 0 when every requested path of both parts was measured, 1 when one was not (a sanity check
failed, a gateway did not come up or died), 2 on a harness error, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import platform
import sys
from pathlib import Path

from bench import bolt_bench, churn_bench, grpc_bench, messages_bench, profiling, translate_bench
from bench.processes import Children, run_guarded

REPO = Path(__file__).resolve().parent.parent
PARTS = ("grpc", "bolt", "translate", "churn", "messages")


def _own_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        add_help=False,
        allow_abbrev=False,
        description="gRPC, Bolt, translate, churn and messages benchmarks in one invocation (in that order).",
    )
    p.add_argument("-h", "--help", action="store_true", help="this help, then the gRPC part's options")
    p.add_argument("--only", type=_parts, help=f"run these parts only (comma-separated: {','.join(PARTS)})")
    p.add_argument("--bolt-sizes", default="100,16384", help="Bolt payload sizes (echo's String argument, chars)")
    p.add_argument("--bolt-concurrency", default="1,16", help="Bolt calls in flight")
    p.add_argument(
        "--bolt-connections", type=int, default=4,
        help="Bolt connections from the load generator, calls spread over them (c=16: 4 each); default 4, "
        "as issue 12's T7 (c=1 uses one)",
    )  # fmt: skip
    p.add_argument("--bolt-paths", default=",".join(bolt_bench.ALL_PATHS), help="subset of bolt-direct,bolt-interlink")
    p.add_argument(
        "--translate-concurrency", help="translate part: calls in flight (default 1,16; with --quick 16)"
    )
    p.add_argument(
        "--translate-paths", default=",".join(translate_bench.ALL_PATHS),
        help=f"translate part: subset of {','.join(translate_bench.ALL_PATHS)}",
    )  # fmt: skip
    p.add_argument("--churn-rounds", type=int, default=3, help="churn part: (steady, two, churn) phase rounds (default 3)")
    p.add_argument("--churn-phase", type=float, help="churn part: seconds per phase (default 5; with --quick 2)")
    p.add_argument("--churn-rate", type=float, default=10.0, help="churn part: provider-set changes per second (10)")
    p.add_argument("--messages-sizes", help="messages part: message sizes in bytes (default 1024,100; with --quick 1024)")
    p.add_argument(
        "--messages-in-flight", default="64,256",
        help="messages part: max_in_flight of GW-B's import, one pair of gateways each (default 64,256)",
    )  # fmt: skip
    p.add_argument(
        "--messages-count", type=int,
        help="messages part: messages per drain run (default: the last measured rate x --duration)",
    )  # fmt: skip
    p.add_argument(
        "--messages-rate", type=float,
        help="messages part: publish rate of the steady runs, msgs/s (default: 0.7 x the cell's drain rate)",
    )  # fmt: skip
    p.add_argument(
        "--profile", action="store_true",
        help="run every interlink gateway under cProfile and write a summary per gateway beside the results "
        "JSON (<stamp>-<part>-<path>-gw-<a|b>.prof.txt); inflates the gateways' CPU per call",
    )  # fmt: skip
    return p


def _parts(text: str) -> list[str]:
    parts = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in parts if s not in PARTS]
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"unknown part(s) {', '.join(unknown) or text!r}; choose from {', '.join(PARTS)}")
    return parts


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, argparse.Namespace, bolt_bench.BoltOptions]:
    """(own options, the gRPC part's options, the Bolt part's options); own.translate, own.churn and
    own.messages hold the translate, churn and messages parts' options."""
    parser = _own_parser()
    own, rest = parser.parse_known_args(argv)
    if own.help:
        parser.print_help()
        print("\ngRPC part (and shared) options:\n")
        grpc_bench.parse_args(["--help"])  # prints and exits
    grpc_args = grpc_bench.parse_args(rest)
    paths = [s.strip() for s in own.bolt_paths.split(",") if s.strip()]
    unknown = set(paths) - set(bolt_bench.ALL_PATHS)
    if unknown:
        parser.error(f"unknown Bolt path(s): {', '.join(sorted(unknown))}")
    bolt = bolt_bench.BoltOptions(
        sizes=[int(s) for s in own.bolt_sizes.split(",")],
        concurrency=[int(c) for c in own.bolt_concurrency.split(",")],
        connections=own.bolt_connections,
        paths=paths,
        duration=grpc_args.duration,
        warmup=grpc_args.warmup,
        startup_timeout=grpc_args.startup_timeout,
        interlink_workers=grpc_args.interlink_workers,
    )
    t_paths = [s.strip() for s in own.translate_paths.split(",") if s.strip()]
    unknown = set(t_paths) - set(translate_bench.ALL_PATHS)
    if unknown:
        parser.error(f"unknown translate path(s): {', '.join(sorted(unknown))}")
    t_conc = own.translate_concurrency or ("16" if grpc_args.quick else "1,16")
    own.translate = translate_bench.TranslateOptions(
        concurrency=[int(c) for c in t_conc.split(",")],
        paths=t_paths,
        duration=grpc_args.duration,
        warmup=grpc_args.warmup,
        startup_timeout=grpc_args.startup_timeout,
        interlink_workers=grpc_args.interlink_workers,
    )
    own.churn = churn_bench.ChurnOptions(
        rounds=own.churn_rounds,
        phase_s=own.churn_phase or (2.0 if grpc_args.quick else 5.0),
        rate=own.churn_rate,
        warmup=grpc_args.warmup,
        startup_timeout=grpc_args.startup_timeout,
        interlink_workers=grpc_args.interlink_workers,
    )
    own.messages = messages_bench.MessagesOptions(
        sizes=[int(s) for s in (own.messages_sizes or ("1024" if grpc_args.quick else "1024,100")).split(",")],
        in_flight=[int(n) for n in own.messages_in_flight.split(",")],
        duration=grpc_args.duration,
        warmup=grpc_args.warmup,
        count=own.messages_count,
        rate=own.messages_rate,
        startup_timeout=grpc_args.startup_timeout,
        interlink_workers=grpc_args.interlink_workers,
    )
    return own, grpc_args, bolt


class _HideLine:
    """stdout that drops the gRPC part's own "results written to <temp file>" line (the suite writes the
    combined file and says where)."""

    def __init__(self, target, marker: str) -> None:
        self._target = target
        self._marker = marker
        self._skip_newline = False

    def write(self, text: str) -> int:
        if self._marker in text:
            self._skip_newline = True
            return len(text)
        if self._skip_newline and text == "\n":
            self._skip_newline = False
            return len(text)
        self._skip_newline = False
        return self._target.write(text)

    def flush(self) -> None:
        self._target.flush()


def main(argv: list[str] | None = None) -> int:
    own, grpc_args, bolt_opts = parse_args(sys.argv[1:] if argv is None else argv)
    parts = [p for p in PARTS if p in own.only] if own.only else list(PARTS)
    return run_guarded(
        lambda tmp, children: run(parts, grpc_args, bolt_opts, tmp, children, own), grpc_args.keep_tmp
    )


def run(
    parts: list[str], grpc_args, bolt_opts: bolt_bench.BoltOptions, tmp: Path, children: Children,
    own: argparse.Namespace | None = None,
) -> int:  # fmt: skip
    started = dt.datetime.now(dt.timezone.utc)
    stamp = started.strftime('%Y%m%dT%H%M%SZ')
    results_dir = grpc_args.results_dir  # the gRPC part writes its own file into the temp dir instead
    statuses: dict[str, int] = {}
    results: dict = {}
    profile = None
    if own is not None and own.profile:
        profile = children.profile = profiling.Profiling(tmp / "profiles", results_dir, stamp)
        print("bench: --profile: every interlink gateway runs under cProfile (bench/profiling.py); their CPU per call"
              "\nbench: is several times what it is without, so compare this run's numbers only with other --profile "
              "runs")  # fmt: skip

    def part_done(part: str) -> None:
        """The part's servers are stopped: write its gateways' profiles."""
        if profile is not None:
            profile.report(part)

    def part_starts(part: str) -> None:
        if profile is not None:
            profile.part = part

    if "grpc" in parts:
        part_starts("grpc")
        print("bench: ===== gRPC unary: direct, nginx two-hop chain, interlink =====")
        grpc_tmp = tmp / "grpc"
        grpc_tmp.mkdir()
        grpc_args.results_dir = tmp / "grpc-results"
        try:
            with contextlib.redirect_stdout(_HideLine(sys.stdout, "bench: results written to")):
                statuses["grpc"] = grpc_bench.run(grpc_args, grpc_tmp, children)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # the Bolt part still runs; the status says 2
            print(f"\nbench: gRPC part FAILED: {type(exc).__name__}: {exc}")
            statuses["grpc"] = 2
        finally:
            children.stop_all()  # the Bolt part gets the machine to itself
            part_done("grpc")
        written = sorted(grpc_args.results_dir.glob("*.json"))
        if written:
            results = json.loads(written[-1].read_text())
    if "bolt" in parts:
        part_starts("bolt")
        try:
            results["bolt"], statuses["bolt"] = bolt_bench.run(bolt_opts, tmp / "bolt", children, results.get("cells"))
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            print(f"\nbench: Bolt part FAILED: {type(exc).__name__}: {exc}")
            results["bolt"] = {"error": f"{type(exc).__name__}: {exc}"}
            statuses["bolt"] = 2
        finally:
            children.stop_all()
            part_done("bolt")
    for part, module in (("translate", translate_bench), ("churn", churn_bench), ("messages", messages_bench)):
        if part not in parts:
            continue
        assert own is not None
        part_starts(part)
        try:
            results[part], statuses[part] = module.run(getattr(own, part), tmp / part, children)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            print(f"\nbench: {part} part FAILED: {type(exc).__name__}: {exc}")
            results[part] = {"error": f"{type(exc).__name__}: {exc}"}
            statuses[part] = 2
        finally:
            children.stop_all()
            part_done(part)

    finished = dt.datetime.now(dt.timezone.utc)
    results.setdefault("started", started.isoformat())
    results["finished"] = finished.isoformat()
    results.setdefault("machine", grpc_bench.machine_info())
    results.setdefault("tools", {"python": platform.python_version()})
    if "bolt" in results and isinstance(results["bolt"].get("tools"), dict):
        results["tools"].update({k: v for k, v in results["bolt"]["tools"].items() if v})
    results.setdefault("git_rev", grpc_bench.git_rev())
    if profile is not None:
        results["profiles"] = profile.written  # part -> gateway -> summary file
    results["parts"] = {part: {0: "ok", 1: "path(s) not measured", 2: "harness error"}[s] for part, s in statuses.items()}
    results_dir.mkdir(parents=True, exist_ok=True)
    out = results_dir / f"{stamp}.json"
    out.write_text(json.dumps(results, indent=2))
    shown = out.relative_to(REPO) if out.is_relative_to(REPO) else out
    print(f"\nbench: results ({' + '.join(parts)}) written to {shown}")
    summary = ", ".join(f"{part}: {results['parts'][part]}" for part in statuses)
    print(f"bench: {summary}")
    if any(s == 2 for s in statuses.values()):
        return 2
    return 1 if any(statuses.values()) else 0
