"""HTTP/2 interop on the wire: real HTTP/2 clients that are not ours, against real gateway processes.

    h2load, nghttp, curl (nghttp2 and libcurl's HTTP/2)  ->  GW-B local h2c ingress  -> mTLS -> GW-A -> provider
    grpcio (a TLS HTTP/2 client other than our gateway)  ->  GW-A peer port (mTLS, site B's certificate)

These tests pin behaviour seen by independent HTTP/2 stacks (status, DATA, trailers, Trailers-Only, flow
control, concurrent streams, refusals), never internals: they must pass with whatever HTTP/2 implementation
the gateway uses.

The topology is the usual two-site pair (`two_sites`, grpcio demo provider), with one difference: site A's
gateway certificate also names the access domains it gives out. Our gateways dial by access domain and check
the peer's *site* instead of its host name, but grpcio (like any standard TLS client) verifies the server
certificate against the name it sends as SNI, and has no way to turn that off.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from interlink.control.certs import init_site
from interlink.demo.client import EchoClient
from interlink.demo.echo import load
from interlink.model import Status
from tests.e2e.topology import ALLOWED_APP, SERVICE, Certs, TwoSites, access_domain, free_port, two_sites
from tests.requires import missing

B_DOMAIN = access_domain("site-b", "site-a")  # what site B must use at GW-A's peer port
C_DOMAIN = access_domain("site-c", "site-a")  # another site's domain on the same gateway
ECHO_PATH = f"/{SERVICE}/echo"
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers", f"tri-consumer-appname: {ALLOWED_APP}")
DEBIAN_PACKAGE = {"h2load": "nghttp2-client", "nghttp": "nghttp2-client", "curl": "curl"}
TOOL_TIMEOUT = 30.0  # seconds, for any one tool run
END_STREAM = 0x01

pb2, _ = load()


# --- the topology -------------------------------------------------------------------------------------------


@dataclass
class Interop:
    certs: Certs
    sites: TwoSites

    @property
    def ingress(self) -> str:
        """GW-B's local h2c ingress as a URL prefix."""
        return f"http://{self.sites.triple_target}"


@pytest.fixture(scope="module")
def interop(tmp_path_factory, py_provider) -> Iterator[Interop]:
    root = tmp_path_factory.mktemp("h2-interop-certs")
    certs = Certs(root)
    certs.sites["site-a"] = init_site(
        "site-a", root / "site-a", dns_names=["gw.site-a.test", "127.0.0.1", B_DOMAIN, C_DOMAIN]
    )
    sites = two_sites(
        certs, tmp_path_factory.mktemp("h2-interop"), py_provider.target, name="h2interop",
        extra_consumers={"site-c": free_port()},  # so that C_DOMAIN is a real access domain, bound to site C
    )
    yield Interop(certs, sites)
    sites.stop()


# --- helpers ------------------------------------------------------------------------------------------------


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not installed (Debian package {DEBIAN_PACKAGE[name]})")
    return path


def run(argv: Sequence[str], timeout: float = TOOL_TIMEOUT, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a tool to completion (killed after `timeout`); it must exit 0."""
    try:
        done = subprocess.run(list(argv), capture_output=True, timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{argv[0]} did not finish within {timeout}s: {argv}\nstdout: {exc.stdout!r}") from None
    assert done.returncode == 0, (
        f"{argv[0]} exited {done.returncode}: {argv}\nstdout: {done.stdout.decode(errors='replace')[-4000:]}\n"
        f"stderr: {done.stderr.decode(errors='replace')[-4000:]}"
    )
    return done


def grpc_frame(message: str) -> bytes:
    """A gRPC length-prefixed message (uncompressed) holding EchoRequest{message}; an EchoReply with the same
    message has the same bytes, so an echo answers with exactly this frame."""
    body = pb2.EchoRequest(message=message).SerializeToString()
    return b"\x00" + struct.pack(">I", len(body)) + body


def header_args(flag: str = "-H") -> list[str]:
    return [arg for header in GRPC_HEADERS for arg in (flag, header)]


def access_lines(sites: TwoSites, offset: int, count: int, timeout: float = 10.0) -> list[dict]:
    """GW-B's access lines ("call" events) logged after `offset`, once there are at least `count`."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [e for e in sites.b.events(offset) if e.get("event") == "call"]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def log_size(sites: TwoSites) -> int:
    return sites.b.log_path.stat().st_size


# nghttp -v prints each received header as "recv (stream_id=N) name: value" and then the frame that carried
# them, "recv HEADERS frame <length=L, flags=0xFF, stream_id=N>"; DATA payloads go raw to stdout, before
# their "recv DATA frame" line (hence search, not match).
_NGHTTP_HEADER = re.compile(rb"recv \(stream_id=(\d+)\) (:?[^:\s]+):\s?(.*?)\s*$")
_NGHTTP_FRAME = re.compile(rb"recv (HEADERS|DATA) frame <length=(\d+), flags=0x([0-9a-f]+), stream_id=(\d+)>")


@dataclass
class HeaderBlock:
    headers: dict[str, str]
    flags: int

    @property
    def ends_stream(self) -> bool:
        return bool(self.flags & END_STREAM)


@dataclass
class NghttpStream:
    """What nghttp received on the request's stream."""

    blocks: list[HeaderBlock] = field(default_factory=list)
    data_lengths: list[int] = field(default_factory=list)
    data_flags: list[int] = field(default_factory=list)
    stdout: bytes = b""

    @property
    def status(self) -> str | None:
        return self.blocks[0].headers.get(":status") if self.blocks else None


def parse_nghttp(stdout: bytes) -> NghttpStream:
    pending: dict[int, dict[str, str]] = {}
    streams: dict[int, NghttpStream] = {}
    for line in stdout.splitlines():
        if header := _NGHTTP_HEADER.search(line):
            stream_id = int(header[1])
            pending.setdefault(stream_id, {})[header[2].decode()] = header[3].decode(errors="replace")
        elif frame := _NGHTTP_FRAME.search(line):
            kind, length, flags, stream_id = frame[1], int(frame[2]), int(frame[3], 16), int(frame[4])
            stream = streams.setdefault(stream_id, NghttpStream(stdout=stdout))
            if kind == b"HEADERS":
                stream.blocks.append(HeaderBlock(pending.pop(stream_id, {}), flags))
            else:
                stream.data_lengths.append(length)
                stream.data_flags.append(flags)
    responses = [s for s in streams.values() if s.status is not None]
    assert len(responses) == 1, f"expected one response stream in nghttp's output:\n{stdout.decode(errors='replace')}"
    return responses[0]


def nghttp_call(interop: Interop, path: str, body: Path) -> NghttpStream:
    """One gRPC POST with nghttp (h2c, prior knowledge), verbose; the response stream as nghttp saw it."""
    argv = [tool("nghttp"), "-v", "-t", "10", f"{interop.ingress}{path}", "-d", str(body), *header_args()]
    return parse_nghttp(run(argv).stdout)


def echo_client(interop: Interop, authority: str = B_DOMAIN) -> EchoClient:
    """grpcio over mTLS to GW-A's peer port with site B's certificate: SNI = the access domain of site B,
    :authority = `authority`."""
    a, b = interop.certs.site("site-a"), interop.certs.site("site-b")
    credentials = grpc.ssl_channel_credentials(a.ca.read_bytes(), b.key.read_bytes(), b.cert.read_bytes())
    return EchoClient(
        f"127.0.0.1:{interop.sites.a_peer_port}",
        credentials=credentials,
        options=(("grpc.ssl_target_name_override", B_DOMAIN), ("grpc.default_authority", authority)),
    )


# What GW-B stamps for its local callers; a peer (here: grpcio standing in for GW-B) sends it itself.
STAMPED_APP = (("x-interlink-caller-app", ALLOWED_APP),)


# --- h2load: many gRPC calls, concurrent streams on several connections -------------------------------------


_H2LOAD_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored"
)
_H2LOAD_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
_H2LOAD_DATA = re.compile(r"traffic: .*?, .*? headers .*?, \S+ \((\d+)\) data")


def h2load(
    interop: Interop, body: Path, *, requests: int, clients: int, streams: int, extra: Sequence[str] = ()
) -> str:
    """Run h2load (h2c prior knowledge: the default for http:// URLs); every request must succeed with a 2xx
    and carry the echoed frame back."""
    argv = [
        tool("h2load"), "-n", str(requests), "-c", str(clients), "-m", str(streams), "-T", "20", "-N", "10",
        *extra, "-d", str(body), *header_args(), f"{interop.ingress}{ECHO_PATH}",
    ]
    out = run(argv).stdout.decode(errors="replace")
    assert "Application protocol: h2c" in out, out
    parsed = _H2LOAD_REQUESTS.search(out)
    assert parsed, out
    total, started, done, succeeded, failed, errored = map(int, parsed.groups())
    assert (total, started, done, succeeded, failed, errored) == (requests, requests, requests, requests, 0, 0), out
    statuses = _H2LOAD_STATUS.search(out)
    assert statuses and int(statuses[1]) == requests, out
    data = _H2LOAD_DATA.search(out)
    # every response carried exactly one DATA payload: the echoed frame (an error would be Trailers-Only)
    assert data and int(data[1]) == requests * body.stat().st_size, out
    return out


def test_h2load_grpc_unary_calls_through_both_gateways(interop: Interop, tmp_path: Path):
    tool("nghttp")  # for the sample call: known missing before the load runs
    body = tmp_path / "echo.bin"
    frame = grpc_frame("interop h2load ✓")
    body.write_bytes(frame)
    requests = 2000
    offset = log_size(interop.sites)
    h2load(interop, body, requests=requests, clients=4, streams=16)
    # h2load cannot read trailers: GW-B's access lines say how each call ended, and a sample call shows the
    # trailers an HTTP/2 client receives for the very same request.
    lines = access_lines(interop.sites, offset, requests)
    assert len(lines) == requests
    assert {(e["status"], e["ingress"], e.get("method")) for e in lines} == {("OK", "local", "echo")}
    sample = nghttp_call(interop, ECHO_PATH, body)
    assert sample.blocks[-1].headers.get("grpc-status") == "0", sample
    assert frame in sample.stdout


def test_h2load_large_messages_under_small_flow_control_windows(interop: Interop, tmp_path: Path):
    """100 kB requests and replies with h2load's windows at 16 kB (stream) and 32 kB (connection): both sides
    must wait for WINDOW_UPDATEs, on many streams at once."""
    body = tmp_path / "big.bin"
    body.write_bytes(grpc_frame("x" * 100_000))
    h2load(interop, body, requests=200, clients=2, streams=8, extra=["-w", "14", "-W", "15"])


# --- nghttp: frames, headers and trailers of one call -------------------------------------------------------


def test_nghttp_unary_call_has_status_message_and_trailers(interop: Interop, tmp_path: Path):
    body = tmp_path / "echo.bin"
    frame = grpc_frame("interop nghttp")
    body.write_bytes(frame)
    stream = nghttp_call(interop, ECHO_PATH, body)
    assert len(stream.blocks) == 2, stream  # response headers, then trailers
    head, trailers = stream.blocks
    assert head.headers[":status"] == "200" and not head.ends_stream, stream
    assert head.headers["content-type"].startswith("application/grpc"), stream
    assert "grpc-status" not in head.headers, stream
    assert sum(stream.data_lengths) == len(frame) and frame in stream.stdout, stream
    assert not any(flags & END_STREAM for flags in stream.data_flags), stream  # the stream ends with trailers
    assert trailers.ends_stream and trailers.headers.get("grpc-status") == "0", stream
    assert ":status" not in trailers.headers, stream
    assert trailers.headers.get("x-caller-app") == ALLOWED_APP, stream  # the provider's trailers came through


def test_nghttp_unknown_service_gets_trailers_only(interop: Interop, tmp_path: Path):
    body = tmp_path / "echo.bin"
    body.write_bytes(grpc_frame("anyone there?"))
    stream = nghttp_call(interop, "/com.example.Other/echo", body)
    assert len(stream.blocks) == 1 and stream.data_lengths == [], stream
    only = stream.blocks[0]
    assert only.ends_stream, stream
    assert only.headers[":status"] == "200", stream
    assert only.headers["content-type"].startswith("application/grpc"), stream
    assert only.headers.get("grpc-status") == str(Status.UNIMPLEMENTED.value), stream
    assert "not imported" in only.headers.get("grpc-message", ""), stream


# --- curl: libcurl's HTTP/2 (nghttp2 underneath, but curl's own request and trailer handling) ----------------


def test_curl_prior_knowledge_grpc_post(interop: Interop, tmp_path: Path):
    body, out, headers = tmp_path / "echo.bin", tmp_path / "out.bin", tmp_path / "headers.txt"
    frame = grpc_frame("interop curl")
    body.write_bytes(frame)
    argv = [
        tool("curl"), "-sS", "--http2-prior-knowledge", "--max-time", "10", "--data-binary", f"@{body}",
        *header_args(), "-o", str(out), "-D", str(headers), "-w", "%{http_version} %{response_code}",
        f"{interop.ingress}{ECHO_PATH}",
    ]
    done = run(argv)
    assert done.stdout.decode() == "2 200"
    assert out.read_bytes() == frame
    # -D: the status line and headers, an empty line, then (HTTP/2) the trailers
    head, _, tail = headers.read_text().replace("\r\n", "\n").partition("\n\n")
    assert head.startswith("HTTP/2 200"), head
    assert re.search(r"^content-type: application/grpc", head, re.M | re.I), head
    trailers = dict(line.partition(":")[::2] for line in tail.splitlines() if line)
    trailers = {name.strip().lower(): value.strip() for name, value in trailers.items()}
    assert trailers.get("grpc-status") == "0", headers.read_text()


# --- grpcio at the peer port: mTLS with site B's certificate, as GW-B would connect -------------------------


def test_grpcio_mtls_at_peer_port_many_concurrent_calls(interop: Interop):
    """Three connections, 150 calls each in flight at once (more than the gateway's concurrent-stream limit, so
    grpcio queues them), a few with 200 kB messages."""
    clients = [echo_client(interop) for _ in range(3)]
    try:
        calls: list[tuple[str, Future]] = []
        for c, client in enumerate(clients):
            for i in range(150):
                message = f"peer {c}/{i}" if i % 50 else f"{c}/{i}:" + "y" * 200_000
                request = pb2.EchoRequest(message=message)
                calls.append((message, client.stub.echo.future(request, metadata=STAMPED_APP, timeout=20)))
        for message, future in calls:
            assert future.result().message == message
    finally:
        for client in clients:
            client.close()


def test_grpcio_wrong_authority_is_refused(interop: Interop):
    """Site B's certificate and SNI, but :authority = site C's access domain (or no access domain at all)."""
    for authority in (C_DOMAIN, "elsewhere.example"):
        with echo_client(interop, authority) as client, pytest.raises(grpc.RpcError) as info:
            client.echo("x", metadata=STAMPED_APP, timeout=5)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, info.value
        assert f"may not use access domain {authority}" in info.value.details()
        assert "site-c" not in info.value.details().replace(C_DOMAIN, "")  # never says whose domain it is
        interop.sites.a.wait_for_event(
            lambda e, authority=authority: e.get("event") == "audit" and e.get("decision") == "deny"
            and authority in (e.get("reason") or "")
        )
    with echo_client(interop) as client:  # the right authority on a fresh connection still works
        assert client.echo("ok", metadata=STAMPED_APP, timeout=5)[0] == "ok"
