"""Outlier ejection between real processes: an export with a good provider (the grpcio demo) and one that fails
every call with UNAVAILABLE; after `consecutive_failures` failures the bad one gets no calls for `eject_s`, the
good one's calls all succeed, and after the ejection the bad one is tried again (and ejected again)."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc

from interlink.demo.client import EchoClient
from tests.e2e.topology import ALLOWED_APP, free_port, two_sites

APP = (("tri-consumer-appname", ALLOWED_APP),)


class FailingProvider:
    """A gRPC server whose every call fails with UNAVAILABLE; counts the calls it got."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()
        self.port = free_port()
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        provider = self

        class Handler(grpc.GenericRpcHandler):
            def service(self, details):
                def fail(request, context):
                    with provider._lock:
                        provider.calls += 1
                    context.abort(grpc.StatusCode.UNAVAILABLE, "this provider is broken")
                return grpc.unary_unary_rpc_method_handler(fail)

        self.server.add_generic_rpc_handlers((Handler(),))
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        self.server.start()


def test_a_failing_provider_is_ejected_and_tried_again_after_its_time(certs, tmp_path, py_provider):
    bad = FailingProvider()
    sites = two_sites(certs, tmp_path, py_provider.target, name="outlier", export_options={
        "providers": [py_provider.target, f"127.0.0.1:{bad.port}"],
        "outlier": {"consecutive_failures": 3, "eject_s": 4, "max_ejected_percent": 50},
    })
    try:
        with EchoClient(sites.triple_target) as client:
            client.wait_ready()

            def round_of(count: int) -> list[str]:
                outcomes = []
                for _ in range(count):
                    try:
                        client.echo("hi", metadata=APP, timeout=3)
                        outcomes.append("OK")
                    except grpc.RpcError as exc:
                        outcomes.append(exc.code().name)
                return outcomes

            first = round_of(100)
            assert first.count("UNAVAILABLE") == 3 and bad.calls == 3, (first, bad.calls)
            assert first[first.index("UNAVAILABLE"):].count("OK") >= 90  # the good provider took the rest
            later = round_of(50)
            assert set(later) == {"OK"} and bad.calls == 3  # ejected: no call reached it
            time.sleep(4.5)
            again = round_of(50)
            assert bad.calls == 6 and again.count("UNAVAILABLE") == 3  # tried again, ejected again
        ejected = [e for e in sites.a.events() if e.get("event") == "providers.ejected"]
        assert len(ejected) == 2 and ejected[0]["pool"].endswith(str(bad.port))
    finally:
        sites.stop()
        bad.server.stop(0)
