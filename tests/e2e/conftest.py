"""Two (and three) site topologies with real gateway processes, for the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.topology import Certs, TwoSites, free_port, two_sites


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> Certs:
    return Certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def site_c_port() -> int:
    """Where site C's gateway would listen: site A trusts site C and gave it its own access domain."""
    return free_port()


@pytest.fixture(scope="session")
def py_sites(certs, tmp_path_factory, py_provider, site_c_port) -> Iterator[TwoSites]:
    sites = two_sites(
        certs, tmp_path_factory.mktemp("py-sites"), py_provider.target, name="py", extra_consumers={"site-c": site_c_port}
    )
    yield sites
    sites.stop()


@pytest.fixture(scope="session")
def node_sites(certs, tmp_path_factory, node_server) -> Iterator[TwoSites]:
    sites = two_sites(certs, tmp_path_factory.mktemp("node-sites"), node_server.target, name="node")
    yield sites
    sites.stop()


@pytest.fixture(params=["py-provider", "node-provider"])
def sites(request) -> TwoSites:
    """The two-site topology in front of a grpcio provider and in front of a @grpc/grpc-js provider."""
    return request.getfixturevalue("py_sites" if request.param == "py-provider" else "node_sites")
