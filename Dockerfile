# syntax=docker/dockerfile:1
# Images of the two-site lab (docker-compose.yml builds both; see the README's "lab" section):
#   interlink   the gateway (`interlink run`), `interlink certs` (the one-shot `certs` service), and the
#               grpcio demo provider and consumer (`python -m interlink.demo.provider`, `interlink lab call`)
#   bolt-peer   the sofa-rpc-node demo provider and consumer (tests/peers/bolt_*.js) for the Bolt path

FROM python:3.12-slim AS interlink
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY interlink ./interlink
COPY registry_adapters ./registry_adapters
RUN pip install ".[lab]" && rm -rf /src
COPY docker/lab-certs.sh /usr/local/bin/lab-certs
# The gateways run as uid 10001; the certs service (root) hands them their keys.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/interlink --create-home interlink \
 && mkdir -p /etc/interlink/certs \
 && chown interlink:interlink /etc/interlink/certs \
 && chmod 0755 /usr/local/bin/lab-certs
USER interlink
WORKDIR /var/lib/interlink
ENTRYPOINT ["interlink"]
CMD ["--help"]

FROM node:20-slim AS bolt-peer
WORKDIR /peers
COPY tests/peers/package.json tests/peers/package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund --loglevel=error
COPY tests/peers/bolt_server.js tests/peers/bolt_client.js ./
COPY tests/peers/lib ./lib
COPY docker/bolt-consumer.sh /usr/local/bin/bolt-consumer
RUN chmod 0755 /usr/local/bin/bolt-consumer
USER node
ENTRYPOINT ["node"]
