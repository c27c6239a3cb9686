"""Real servers the tests start themselves from Debian packages (ZooKeeper, BIND9): one module each, each a
pytest plugin with its fixtures (registered in tests/conftest.py)."""
