"""Runtime-generated protobuf / gRPC modules for the demo service (``interlink/demo/echo.proto``).

``load()`` returns ``(echo_pb2, echo_pb2_grpc)``, generated once per process with
``grpc.protos_and_services`` (needs ``grpcio-tools``, part of the ``lab`` extra). No generated
code is checked in: the ``.proto`` file, shipped as package data, is the single source.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from importlib import resources
from pathlib import Path
from types import ModuleType

# Path of the proto relative to the directory that contains the ``interlink`` package. The
# descriptor is registered under this name, and the generated modules are importable as
# ``interlink.demo.echo_pb2`` / ``interlink.demo.echo_pb2_grpc``.
PROTO_NAME = os.path.join("interlink", "demo", "echo.proto")

SERVICE = "com.example.EchoService"
MAX_MESSAGE_BYTES = 8 * 1024 * 1024

_lock = threading.Lock()


def proto_path() -> Path:
    """Filesystem path of ``echo.proto`` (package data of ``interlink.demo``)."""
    return Path(str(resources.files("interlink.demo").joinpath("echo.proto")))


@functools.cache
def load() -> tuple[ModuleType, ModuleType]:
    """Return ``(echo_pb2, echo_pb2_grpc)``, generated from the proto at the first call."""
    import grpc  # lab extra; imported lazily so that importing this module stays cheap

    # grpc_tools resolves the proto against sys.path entries. In an editable install (or
    # when run from another directory) the project root is not on sys.path, so add it for
    # the duration of the generation only.
    root = str(proto_path().parents[2])
    with _lock:
        added = root not in sys.path
        if added:
            sys.path.append(root)
        try:
            return grpc.protos_and_services(PROTO_NAME)
        finally:
            if added:
                try:
                    sys.path.remove(root)
                except ValueError:
                    pass
