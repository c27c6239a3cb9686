#!/usr/bin/env bash
# gRPC unary benchmark in one invocation: installs what it needs, then runs `python -m bench`.
#   bash bench/run.sh            full run (~5 min on 2 cores)
#   bash bench/run.sh --quick    short run (< 2 min)
# Any other option goes to `python -m bench` (see `bash bench/run.sh --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v h2load >/dev/null 2>&1 || need_apt+=(nghttp2-client)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "bench: need ${need_apt[*]} (Debian packages); run as root or install them first" >&2
    exit 1
  fi
  echo "bench: installing ${need_apt[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d may forbid starting the packaged service; the bench runs its own nginx anyway.
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# Debian starts a system nginx on install where services may start; it is not ours and not in the way
# (we only listen on free ports of 127.0.0.1), so it is left alone.

if [ ! -x .venv/bin/python ]; then
  echo "bench: .venv missing: run scripts/setup.sh first" >&2
  exit 1
fi
# The sanity pass uses grpcio (the project's `lab` extra); install it if the venv lacks it.
if ! .venv/bin/python -c 'import grpc' >/dev/null 2>&1; then
  echo "bench: installing grpcio into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check 'grpcio>=1.60' 'grpcio-tools>=1.60'
fi

exec .venv/bin/python -m bench "$@"
