"""Small grpcio client for the demo ``com.example.EchoService``, used by the lab and the tests.

    with EchoClient("127.0.0.1:50061") as c:
        message, initial, trailing = c.echo("hi", metadata=(("x-echo-a", "1"),))
        assert md_value(initial, "x-served-by") == "demo-provider"

Metadata is returned as a tuple of ``(key, value)`` pairs (``bytes`` values for ``-bin`` keys).
Every method takes ``metadata`` and ``timeout`` (seconds, ``None`` = no deadline). Failed calls
raise ``grpc.RpcError`` (with ``.code()``, ``.details()``, ``.trailing_metadata()``).
"""

from __future__ import annotations

import queue
from collections.abc import Iterable, Sequence
from typing import Any

import grpc

from interlink.demo.echo import MAX_MESSAGE_BYTES, load

Metadata = tuple[tuple[str, Any], ...]
MetadataArg = Iterable[tuple[str, str | bytes]]

CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
)

_END = object()


def _plain(md: Iterable[Any] | None) -> Metadata:
    return tuple((m[0], m[1]) for m in (md or ()))


def md_values(md: Iterable[tuple[str, Any]], key: str) -> list[Any]:
    """All values of ``key`` in a metadata sequence, in order."""
    return [v for k, v in md if k == key]


def md_value(md: Iterable[tuple[str, Any]], key: str, default: Any = None) -> Any:
    """The first value of ``key`` in a metadata sequence, or ``default``."""
    values = md_values(md, key)
    return values[0] if values else default


class EchoClient:
    """grpcio client for ``com.example.EchoService`` on ``target`` (plaintext channel).

    Pass ``credentials`` for a TLS channel and ``options`` for extra channel arguments.
    """

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.pb2, pb2_grpc = load()
        self.target = target
        opts = list(CHANNEL_OPTIONS) + list(options)
        if credentials is None:
            self.channel = grpc.insecure_channel(target, options=opts)
        else:
            self.channel = grpc.secure_channel(target, credentials, options=opts)
        self.stub = pb2_grpc.EchoServiceStub(self.channel)

    def __enter__(self) -> EchoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def wait_ready(self, timeout: float = 5.0) -> None:
        """Block until the channel is connected (raises ``grpc.FutureTimeoutError``)."""
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    # -- unary -------------------------------------------------------------------------------

    def echo(
        self, msg: str, metadata: MetadataArg = (), timeout: float | None = 5.0
    ) -> tuple[str, Metadata, Metadata]:
        """Returns ``(reply_message, initial_metadata, trailing_metadata)``."""
        reply, call = self.stub.echo.with_call(
            self.pb2.EchoRequest(message=msg), metadata=tuple(metadata), timeout=timeout
        )
        return reply.message, _plain(call.initial_metadata()), _plain(call.trailing_metadata())

    def add(self, a: int, b: int, metadata: MetadataArg = (), timeout: float | None = 5.0) -> int:
        reply = self.stub.add(
            self.pb2.AddRequest(a=a, b=b), metadata=tuple(metadata), timeout=timeout
        )
        return reply.sum

    def fail(self, msg: str, metadata: MetadataArg = (), timeout: float | None = 5.0) -> str:
        """Always raises ``grpc.RpcError`` (INVALID_ARGUMENT, details = ``msg``) from a real provider."""
        reply = self.stub.fail(
            self.pb2.EchoRequest(message=msg), metadata=tuple(metadata), timeout=timeout
        )
        return reply.message

    def sleep(
        self, ms: int, timeout: float | None = 5.0, metadata: MetadataArg = ()
    ) -> tuple[int, Metadata, Metadata]:
        """Returns ``(ms, initial_metadata, trailing_metadata)``; trailing has ``x-deadline-ms``."""
        reply, call = self.stub.sleep.with_call(
            self.pb2.SleepRequest(ms=ms), metadata=tuple(metadata), timeout=timeout
        )
        return reply.ms, _plain(call.initial_metadata()), _plain(call.trailing_metadata())

    # -- streaming ---------------------------------------------------------------------------

    def count(self, n: int, metadata: MetadataArg = (), timeout: float | None = 5.0) -> list[int]:
        """Server streaming: the ``sum`` of each reply (1..n from a real provider)."""
        call = self.stub.count(
            self.pb2.AddRequest(a=n), metadata=tuple(metadata), timeout=timeout
        )
        return [reply.sum for reply in call]

    def sum(
        self,
        pairs: Iterable[tuple[int, int]],
        metadata: MetadataArg = (),
        timeout: float | None = 5.0,
    ) -> int:
        """Client streaming: sends one AddRequest per pair, returns the reply's sum."""
        requests = (self.pb2.AddRequest(a=a, b=b) for a, b in pairs)
        reply = self.stub.sum(requests, metadata=tuple(metadata), timeout=timeout)
        return reply.sum

    def chat(
        self,
        messages: Iterable[str],
        metadata: MetadataArg = (),
        timeout: float | None = 5.0,
        *,
        lockstep: bool = True,
    ) -> list[str]:
        """Bidi streaming: returns the reply messages in order.

        With ``lockstep`` (default) the next request is only sent after the reply to the
        previous one arrived, which proves replies are not held back until the request
        stream ends (if they were, the call ends with DEADLINE_EXCEEDED).
        """
        if not lockstep:
            requests = (self.pb2.EchoRequest(message=m) for m in messages)
            call = self.stub.chat(requests, metadata=tuple(metadata), timeout=timeout)
            return [reply.message for reply in call]

        outbox: queue.Queue[Any] = queue.Queue()

        def request_iter():
            while (item := outbox.get()) is not _END:
                yield item

        pending = iter(messages)

        def send_next() -> bool:
            msg = next(pending, _END)
            if msg is _END:
                outbox.put(_END)
                return False
            outbox.put(self.pb2.EchoRequest(message=msg))
            return True

        call = self.stub.chat(request_iter(), metadata=tuple(metadata), timeout=timeout)
        replies: list[str] = []
        try:
            if send_next():
                for reply in call:
                    replies.append(reply.message)
                    if not send_next():
                        break
            # drain: the server may only end the call after our half-close
            replies.extend(reply.message for reply in call)
        except BaseException:
            call.cancel()
            raise
        finally:
            outbox.put(_END)  # never leave grpcio's request-consumer thread blocked
        return replies
