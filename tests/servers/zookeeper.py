"""Fixtures that run a real zookeeper server on loopback (filled in by the zookeeper registry work)."""
