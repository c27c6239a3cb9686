"""Fixtures that run a real bind9 server on loopback (filled in by the bind9 registry work)."""
