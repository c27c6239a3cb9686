"""Fuzz suite for everything that parses bytes or text from outside: Bolt frames and header maps, HPACK
blocks, gRPC messages and request heads, Hessian streams (both dialects, SOFARPC heads) and site files.

Each target may raise only its declared exception(s), never another, and must never hang. The default run
does a few thousand inputs per target (well under a minute in all); `-m slow` does >= 100,000 inputs per
target, counted and asserted. See tests/fuzz/conftest.py for the shared machinery (time guard, mutator,
input loops, hypothesis settings).
"""
