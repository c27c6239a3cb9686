"""Sanity pass: a real gRPC client (grpcio) calls echo through one path before it is measured.

It proves what h2load cannot see: the reply decodes as an EchoReply of the expected size and the call ends
with grpc-status 0 in the trailers (grpcio reports INTERNAL/UNKNOWN when the status is not 0 or the
trailers are missing). It also decodes the request bytes that h2load will send with the real protobuf
classes, so the hand-made framing in bench/loadgen.py is checked too.

Run as a subprocess (`python -m bench.sanity PORT SIZE...`) so that grpcio's threads never share a
process with the harness's fork()s. Prints one JSON line; exit 0 when every call succeeded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.loadgen import REPLY_SIZE_HEADER, echo_message

PROTO = "interlink/demo/echo.proto"


def check(port: int, sizes: list[int], timeout_s: float = 10.0) -> dict:
    import grpc

    repo = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(repo))  # protos_and_services resolves the .proto relative to sys.path
    protos, services = grpc.protos_and_services(PROTO)
    results = []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = services.EchoServiceStub(channel)
        for size in sizes:
            wire = echo_message(size)
            request = protos.EchoRequest.FromString(wire[5:])
            entry = {"size": size, "request_framing_ok": request.message == "x" * size}
            try:
                reply, call = stub.echo.with_call(
                    request, metadata=[(REPLY_SIZE_HEADER, str(size))], timeout=timeout_s
                )
                entry.update(
                    ok=call.code() == grpc.StatusCode.OK and reply.message == "x" * size,
                    code=call.code().name,
                    reply_size=len(reply.message),
                    trailers=[list(kv) for kv in (call.trailing_metadata() or ())],
                )
            except grpc.RpcError as exc:
                entry.update(ok=False, code=exc.code().name, details=exc.details())
            entry["ok"] = entry["ok"] and entry["request_framing_ok"]
            results.append(entry)
    return {"ok": all(r["ok"] for r in results), "calls": results}


def main(argv: list[str]) -> int:
    port, sizes = int(argv[0]), [int(s) for s in argv[1:]]
    result = check(port, sizes)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
