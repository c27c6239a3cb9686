#!/bin/sh
# The lab's one-shot certificate service (docker-compose.yml, service `certs`, run as root).
#
#   lab-certs SITE...
#
# For each SITE: its CA and gateway certificate, made once with `interlink certs init-site` and kept in
# /var/lib/interlink/pki/SITE (a volume only this service mounts). Then /var/lib/interlink/out/SITE, the
# volume SITE's gateway mounts as /etc/interlink/certs, gets exactly what that gateway needs: SITE/ca.pem,
# SITE/gateway.pem, SITE/gateway.key (owned by the gateways' user, 0600) and OTHER/ca.pem for every other
# SITE. No CA key leaves the pki volume. Safe to run again: existing CAs are kept.
set -eu
pki=${LAB_CERTS_PKI:-/var/lib/interlink/pki}
out=${LAB_CERTS_OUT:-/var/lib/interlink/out}
owner=${LAB_CERTS_OWNER:-10001:10001}   # the gateways' user in the interlink image

for site in "$@"; do
  if [ ! -f "$pki/$site/ca.pem" ]; then
    interlink certs init-site "$site" --out "$pki/$site" --dns "gw.$site.lab"
  fi
done
for site in "$@"; do
  dest=$out/$site
  mkdir -p "$dest/$site"
  cp "$pki/$site/ca.pem" "$pki/$site/gateway.pem" "$pki/$site/gateway.key" "$dest/$site/"
  for peer in "$@"; do
    if [ "$peer" != "$site" ]; then
      mkdir -p "$dest/$peer"
      cp "$pki/$peer/ca.pem" "$dest/$peer/"
    fi
  done
  chown -R "$owner" "$dest"
  chmod 0600 "$dest/$site/gateway.key"
  echo "lab-certs: $site's gateway gets: $(cd "$dest" && find . -type f | sort | tr '\n' ' ')"
done
