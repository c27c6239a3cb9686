"""`python -m interlink.labnet`: the probe and a look at the lab's namespaces.

`python -m interlink.labnet probe HOST:PORT [--send h2c|http1] [--expect connected]` is the TCP probe
the checks run inside a namespace and the compose health checks run in the containers (one JSON line:
connected / no route / refused / timeout, and what came back). `python -m interlink.labnet hold` builds
just the namespaces and keeps them until Ctrl-C, to look around (`ip netns exec ilab-b-<run>-consumer-b
bash`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from interlink import labnet
from interlink.labnet.namespaces import Namespaces
from interlink.labnet.probe import PROBE_PAYLOADS, probe
from interlink.labnet.topology import load_topology


def main(argv: list[str] | None = None) -> int:
    description = (labnet.__doc__ or "").split("\n\n")[0]  # the package's first paragraph
    parser = argparse.ArgumentParser(prog="python -m interlink.labnet", description=description)
    commands = parser.add_subparsers(dest="command", required=True)
    probe_cmd = commands.add_parser("probe", help="TCP connect (and optionally send plaintext); one JSON line")
    probe_cmd.add_argument("target", help="HOST:PORT")
    probe_cmd.add_argument("--send", choices=sorted(PROBE_PAYLOADS))
    probe_cmd.add_argument("--timeout", type=float, default=2.0)
    probe_cmd.add_argument(
        "--expect",
        choices=["connected", "no route", "refused", "timeout"],
        help="exit 1 unless the connect ended so (for health checks)",
    )
    hold = commands.add_parser("hold", help="build the topology's namespaces, print them, wait for Ctrl-C/SIGTERM")
    hold.add_argument("--topology", type=Path, default=None)
    hold.add_argument("--sleeper", action="store_true", help="also start `sleep` in every node (tests)")
    args = parser.parse_args(argv)
    if args.command == "probe":
        result = probe(args.target, args.send, args.timeout)
        print(json.dumps(result), flush=True)
        return 0 if args.expect is None or result["connect"] == args.expect else 1
    with Namespaces(load_topology(args.topology)) as namespaces:
        if args.sleeper:
            for node in namespaces.topology.nodes:
                namespaces.spawn(node, ["sleep", "600"])
        try:  # the signal may come the moment the line is out: it must end in the same 130
            print(
                json.dumps({"namespaces": namespaces.names(), "pids": [process.pid for process in namespaces.processes]}),
                flush=True,
            )
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
