#!/usr/bin/env bash
# Set up a development / CI environment on a fresh machine: a virtualenv in .venv with interlink
# and its test dependencies, and the Node peers used by the end-to-end tests (@grpc/grpc-js ...).
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# The install compiles the per-call modules with mypyc (setup.py; about 2 minutes on 2 cores; INTERLINK_PURE=1
# skips it). It is redone only when what it is made of changed: the project files, the compiled sources, which
# of them are built, Python itself -- or when a source is newer than its build (a checkout that touched it
# without changing it), since the sources would then run instead (interlink/_build.py).
install_stamp() {
  { cat pyproject.toml setup.py; echo "pure=${INTERLINK_PURE:-}"
    .venv/bin/python -c '
import importlib.util, sys
spec = importlib.util.spec_from_file_location("build", "interlink/_build.py")
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)
print(sys.version)
for source in build.COMPILED:
    print(source, open(source).read(), build.compiled_module(source) is not None)
print("stale", build.stale_sources())'
  } | sha256sum | cut -d' ' -f1
}
if [ "$(cat .venv/.interlink-installed 2>/dev/null)" != "$(install_stamp)" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
  install_stamp > .venv/.interlink-installed
fi

# Debian packages. The two-site lab (`interlink lab`) starts a NATS JetStream server per site (message
# interop), so nats-server is installed either way; --test adds the real servers the tests start themselves
# (ZooKeeper, BIND9, ...) and the netns lab's tools.
missing=()
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
if [ "${1:-}" = "--test" ]; then
  [ -f /usr/share/java/zookeeper.jar ] || missing+=(zookeeper)
  command -v named >/dev/null 2>&1 || missing+=(bind9)
  command -v tsig-keygen >/dev/null 2>&1 || missing+=(bind9utils)
  command -v ip >/dev/null 2>&1 || missing+=(iproute2)
  command -v tcpdump >/dev/null 2>&1 || missing+=(tcpdump)
  # Independent HTTP/2 clients for tests/e2e/test_h2_interop.py: h2load and nghttp (nghttp2-client), curl.
  { command -v h2load >/dev/null 2>&1 && command -v nghttp >/dev/null 2>&1; } || missing+=(nghttp2-client)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  # Headless Chromium renders the admin page in tests/e2e/test_admin_chromium.py.
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  # A real Prometheus scrapes two gateways in tests/e2e/test_observability.py; promtool checks the exposition.
  { command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || missing+=(prometheus)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${missing[*]} (Debian packages)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: missing Debian packages ${missing[*]}; install them (as root: apt-get install ${missing[*]})" >&2
    [ "${CI:-}" = "true" ] && exit 1
  fi
fi

# Node peers for the e2e tests (Node 20 + npm are on the machines).
if [ "${1:-}" = "--test" ] && [ -f tests/peers/package.json ]; then
  if command -v npm >/dev/null 2>&1; then
    # npm ci installs exactly the lockfile; skipped when node_modules is already newer than it.
    if [ ! tests/peers/node_modules/.package-lock.json -nt tests/peers/package-lock.json ]; then
      (cd tests/peers && npm ci --no-audit --no-fund --loglevel=error)
    fi
  else
    echo "setup: npm not found; the Node e2e peers cannot be installed" >&2
    [ "${CI:-}" = "true" ] && exit 1
  fi
fi
