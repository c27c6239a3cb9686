#!/bin/sh
# The lab's Bolt consumer (docker-compose.yml, service consumer-b-bolt): a sofa-rpc-node caller of
# com.example.EchoService:1.0 (tests/peers/bolt_client.js) at its own site's gateway.
#
#   bolt-consumer HOST:PORT [APP]
#
# Calls echo until it answers (the gateways may still be linking up; at most 30 tries, 1 s apart), then
# add; prints each JSON result and exits 0 when both answered right.
set -u
target=$1
app=${2:-order-app}

client=${BOLT_CLIENT:-/peers/bolt_client.js}

call() { node "$client" --target "$target" --app "$app" "$@"; }

tries=0
while :; do
  out=$(call --case echo --arg "hello from site-b")
  echo "$out"
  case $out in *'"ok":true'*) break ;; esac
  tries=$((tries + 1))
  if [ "$tries" -ge 30 ]; then
    echo "bolt-consumer: no answer through $target after $tries tries" >&2
    exit 1
  fi
  sleep 1
done
out=$(call --case add --arg 40 --arg 2)
echo "$out"
case $out in
  *'"result":42'*) echo "bolt-consumer: echo and add answered through $target"; exit 0 ;;
  *) exit 1 ;;
esac
