"""Registry-neutral values shared by all registry adapters (REGISTRIES.md 7.1).

Only plain frozen dataclasses live here; adapters import from this module, never from
``interlink.gateway``, ``interlink.net`` or ``interlink.control``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Instance", "InstanceSet", "ServiceKey"]


@dataclass(frozen=True)
class ServiceKey:
    """What a caller asks a registry for."""

    interface: str  # exact, case kept: "com.example.EchoService"
    protocol: str = "bolt"  # "bolt" | "tri"
    unique_id: str = ""  # SOFA uniqueId (Java matches on it)
    version: str = "1.0"
    group: str = "SOFA"


@dataclass(frozen=True)
class Instance:
    """One provider endpoint; ``meta`` is informative and not part of identity."""

    host: str
    port: int
    weight: int = 100
    meta: Mapping[str, str] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class InstanceSet:
    """A whole snapshot of the instances of one key, never a delta."""

    key: ServiceKey
    instances: frozenset[Instance]
    revision: str  # zxid / SOA serial / etcd revision / list checksum
    stale: bool  # True while the registry is unreachable (last known set)
