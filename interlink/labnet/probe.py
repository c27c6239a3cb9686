"""A plain TCP client, run inside a namespace: `python -m interlink.labnet probe HOST:PORT`.

The checks run it inside a node's namespace and the compose health checks run it in the containers
(one JSON line: connected / no route / refused / timeout, and what came back). `classify_reply` and
`describe_reply` say what a plaintext client got from a peer port.
"""

from __future__ import annotations

import errno
import socket
import time
from typing import Any

PROBE_PAYLOADS = {
    "h2c": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000"),  # preface + SETTINGS
    "http1": b"GET / HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n",
}
_CONNECT_ERRORS = {
    errno.ENETUNREACH: "no route",
    errno.EHOSTUNREACH: "no route",
    errno.ECONNREFUSED: "refused",
    errno.ETIMEDOUT: "timeout",
}


def probe(target: str, send: str | None = None, timeout: float = 2.0) -> dict[str, Any]:
    host, _, port = target.rpartition(":")
    started = time.perf_counter()
    result: dict[str, Any] = {"target": target}
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect((host, int(port)))
        except socket.timeout:
            result.update(connect="timeout", error="connect timed out")
            return result
        except OSError as exc:
            result.update(connect=_CONNECT_ERRORS.get(exc.errno or 0, "error"), error=exc.strerror or str(exc))
            return result
        result.update(connect="connected", local=list(sock.getsockname()))
        if send:
            reply, closed = b"", False
            try:
                sock.sendall(PROBE_PAYLOADS[send])
                while len(reply) < 65536:
                    chunk = sock.recv(65536)
                    if not chunk:
                        closed = True
                        break
                    reply += chunk
            except socket.timeout:
                pass
            except OSError as exc:  # reset
                closed = True
                result["error"] = exc.strerror or str(exc)
            result.update(reply=reply.hex(), closed=closed)
        return result
    finally:
        sock.close()
        result["ms"] = (time.perf_counter() - started) * 1000


def classify_reply(result: dict[str, Any]) -> str:
    """What a plaintext client got from a peer port: 'no HTTP' is the only good answer."""
    if result["connect"] != "connected":
        return result["connect"]
    reply = bytes.fromhex(result.get("reply", ""))
    if reply.startswith(b"HTTP/"):
        return "HTTP reply"
    if len(reply) >= 9 and reply[3] == 4 and int.from_bytes(reply[:3], "big") % 6 == 0:
        return "h2 SETTINGS"  # an h2c server answers the preface with a SETTINGS frame
    return "no HTTP"


def describe_reply(result: dict[str, Any]) -> str:
    reply = bytes.fromhex(result.get("reply", ""))
    if not reply:
        return f"closed after {result.get('ms', 0):.0f} ms, nothing sent back" if result.get("closed") else "no reply"
    if reply[:1] == b"\x15":
        return f"TLS alert record ({len(reply)} bytes), then {'closed' if result.get('closed') else 'open'}"
    return f"{len(reply)} bytes: {reply[:24]!r}"
