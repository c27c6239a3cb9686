"""The two-site lab on Linux network namespaces: `interlink lab --netns` and the tests in tests/lab.

`site-configs/lab/topology.yaml` names the networks (subnets of 198.18.0.0/15) and the nodes on them;
docker-compose.yml builds the same topology with containers, this package with network namespaces:

    topology.py     the topology file (`load_topology`) and its agreement with the site files
    namespaces.py   a namespace per network and per node (`Namespaces`), the processes in them, the cleanup
    capture.py      tcpdump on the interconnect, and the check that it carried nothing but TLS
    lab.py          the two sites running in the namespaces (`NetnsLab`)
    checks.py       the checks `interlink lab --netns` prints (`run_netns_lab`) and tests/lab asserts
    probe.py        the plain TCP probe the checks and the compose health checks run
    __main__.py     `python -m interlink.labnet probe|hold`

Every name other code uses is importable from here.
"""

import os  # noqa: F401  tests/test_cli.py patches `labnet.os.geteuid`

from interlink.labnet.capture import (
    TLS_CONTENT_TYPES,
    TLS_MAX_RECORD,
    Capture,
    CaptureReport,
    Segment,
    analyse_capture,
    client_hello,
    read_pcap,
    tls_problem,
)
from interlink.labnet.checks import (
    FAIL_FAST_MS,
    NETNS_CHECKS,
    check_bolt,
    check_gateway_restart,
    check_interconnect_capture,
    check_isolation,
    check_peer_ports_plaintext,
    check_triple,
    run_netns_lab,
)
from interlink.labnet.lab import CONSUMER_APP, PEERS_DIR, NetnsLab, bolt_peers
from interlink.labnet.namespaces import (
    LabError,
    Namespaces,
    NetnsUnavailable,
    namespace_names,
    remove_stale,
    require_netns,
)
from interlink.labnet.probe import PROBE_PAYLOADS, classify_reply, describe_reply, probe
from interlink.labnet.topology import (
    IFNAMSIZ,
    INTERCONNECT,
    LAB_NETWORK,
    PROTOCOLS,
    ROLES,
    ROOT,
    TOPOLOGY_FILE,
    LabSite,
    Network,
    Node,
    Topology,
    TopologyError,
    check_site_files,
    load_topology,
)

__all__ = [
    "CONSUMER_APP",
    "FAIL_FAST_MS",
    "IFNAMSIZ",
    "INTERCONNECT",
    "LAB_NETWORK",
    "NETNS_CHECKS",
    "PEERS_DIR",
    "PROBE_PAYLOADS",
    "PROTOCOLS",
    "ROLES",
    "ROOT",
    "TLS_CONTENT_TYPES",
    "TLS_MAX_RECORD",
    "TOPOLOGY_FILE",
    "Capture",
    "CaptureReport",
    "LabError",
    "LabSite",
    "Namespaces",
    "NetnsLab",
    "NetnsUnavailable",
    "Network",
    "Node",
    "Segment",
    "Topology",
    "TopologyError",
    "analyse_capture",
    "bolt_peers",
    "check_bolt",
    "check_gateway_restart",
    "check_interconnect_capture",
    "check_isolation",
    "check_peer_ports_plaintext",
    "check_site_files",
    "check_triple",
    "classify_reply",
    "client_hello",
    "describe_reply",
    "load_topology",
    "namespace_names",
    "probe",
    "read_pcap",
    "remove_stale",
    "require_netns",
    "run_netns_lab",
    "tls_problem",
]
