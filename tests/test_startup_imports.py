"""What a gateway loads at start: the libraries only some sites use stay out of the other sites' memory.

A gateway's resident size at start is mostly the interpreter and its libraries (issue 12's T6 holds each
gateway to 64 MiB over the whole bench); dnspython alone added 1.8 MiB to it. A site without a DNS registry,
ZooKeeper, span export or messaging must not pay for them. The modules imported here are those
`interlink run` imports before its gateway serves (interlink/control/runner.py)."""

from __future__ import annotations

import json
import subprocess
import sys

STARTUP = (
    "interlink.cli", "interlink.control.runner", "interlink.control.sitefile", "interlink.control.snapshot",
    "interlink.control.registry_sync", "interlink.control.admin", "interlink.control.status",
    "interlink.gateway.gateway",
)
OPTIONAL = {
    "dns": "dnspython (DNS registries)",
    "kazoo": "kazoo (ZooKeeper registries)",
    "opentelemetry": "opentelemetry-proto (span export)",
    "nats": "nats-py (message interop)",
}


def test_a_gateway_loads_no_library_of_a_feature_its_site_does_not_use():
    code = (
        "import importlib, json, sys\n"
        f"for name in {STARTUP!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    loaded = set(json.loads(done.stdout))
    assert "interlink" in loaded and "trio" in loaded  # the check itself looked at a gateway's imports
    unexpected = {OPTIONAL[name] for name in loaded & OPTIONAL.keys()}
    assert not unexpected, f"loaded at start without being configured: {sorted(unexpected)}"
