#!/usr/bin/env bash
# gRPC unary, SOFA Bolt, Bolt<->gRPC translation, registry churn and message interop benchmarks in one
# invocation: installs what it needs, then runs `python -m bench` (parts in that order; one results JSON).
#   bash bench/run.sh                      full run (~11 min on 2 cores)
#   bash bench/run.sh --quick              short run (~2.5 min)
#   bash bench/run.sh --only bolt          some parts only (grpc | bolt | translate | churn | messages, comma-separated)
# Any other option goes to `python -m bench` (see `bash bench/run.sh --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

# Which of the parts that need more than nginx and h2load run: all without --only, else those named.
case " $* " in
  *" --only "*|*" --only="*) case " $* " in *messages*) with_messages=1 ;; *) with_messages=0 ;; esac ;;
  *) with_messages=1 ;;
esac

need_apt=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v h2load >/dev/null 2>&1 || need_apt+=(nghttp2-client)
# The messages part runs a NATS JetStream server per site (Debian package `nats-server`, in /usr/sbin).
if [ "$with_messages" = 1 ]; then
  command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need_apt+=(nats-server)
fi
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

# The messages part's producer, poller and verifier is nats-py (asyncio, the tests' NATS client).
if [ "$with_messages" = 1 ] && ! .venv/bin/python -c 'import nats' >/dev/null 2>&1; then
  echo "bench: installing nats-py into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check 'nats-py>=2.6'
fi

# The Bolt part runs its load generator and provider on Node (bench/bolt_*.js, no npm packages) and checks
# its frames with the sofa-rpc-node peers of the tests (tests/peers, installed by scripts/setup.sh). Missing
# pieces are reported here and make the Bolt part fail (exit 1), not the gRPC part.
case " $* " in
  *" --only grpc "*|*" --only=grpc "*|*" --only messages "*|*" --only=messages "*) ;;
  *)
    command -v node >/dev/null 2>&1 || echo "bench: WARNING: node not found; the Bolt, translate and churn parts need Node 20" >&2
    [ -d tests/peers/node_modules/sofa-rpc-node ] \
      || echo "bench: WARNING: tests/peers/node_modules/sofa-rpc-node missing (run scripts/setup.sh --test); the Bolt and translate sanity passes need it" >&2
    ;;
esac
# The churn part runs a real ZooKeeper (Debian package `zookeeper`, java) and drives it with kazoo; both come
# with scripts/setup.sh --test. Missing pieces make the churn part fail (exit 1), not the others.
case " $* " in
  *" --only "*|*" --only="*) case " $* " in *churn*) check_zk=1 ;; *) check_zk=0 ;; esac ;;
  *) check_zk=1 ;;
esac
if [ "$check_zk" = 1 ]; then
  { command -v java >/dev/null 2>&1 && [ -f /usr/share/java/zookeeper.jar ]; } \
    || echo "bench: WARNING: java or /usr/share/java/zookeeper.jar missing (scripts/setup.sh --test); the churn part needs ZooKeeper" >&2
  .venv/bin/python -c 'import kazoo' >/dev/null 2>&1 \
    || echo "bench: WARNING: kazoo missing in .venv (scripts/setup.sh installs the test extras); the churn part needs it" >&2
fi

# Which build the gateways run (README: The compiled build): INTERLINK_PURE=1 bash bench/run.sh measures the sources.
.venv/bin/python -W ignore -c '
import interlink.gateway.call as call
print("bench: interlink build:", "Python sources" if call.__file__.endswith(".py") else "compiled (mypyc)")'

exec .venv/bin/python -m bench "$@"
