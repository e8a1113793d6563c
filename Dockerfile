# Service Foundry: one image, entrypoint `sf`, running every role (router, control, cell).
#
# Built from a built checkout (npm ci && npm run build) by `sf images build sf`, which copies
# dist/ and node_modules pruned to production packages into the context and chooses BASE: the
# public node:20-bookworm-slim where the daemon has it or can pull it, else a local Debian made
# by mmdebstrap with the engines and this host's Node.js (service-foundry/node:VERSION). No
# registry is needed with the local base.
#
#   sf images build sf
#   docker run --rm --network host -v $PWD/routes.json:/etc/sf/routes.json \
#     service-foundry/sf router --routes /etc/sf/routes.json --admin 127.0.0.1:7601
ARG BASE=node:20-bookworm-slim
FROM ${BASE}
# The engines a cell runs as processes, and their exporters (sidecars); a local base has them.
RUN if ! command -v redis-server >/dev/null || ! command -v psql >/dev/null; then \
      apt-get update \
      && apt-get install -y --no-install-recommends redis-server redis-tools postgresql iproute2 ca-certificates \
           prometheus-redis-exporter prometheus-postgres-exporter \
      && rm -rf /var/lib/apt/lists/*; \
    fi
WORKDIR /opt/service-foundry
COPY package.json package-lock.json ./
COPY node_modules ./node_modules
COPY dist ./dist
COPY native-bindings/build/Release ./native-bindings/build/Release
ENV NODE_ENV=production SF_HOME=/var/lib/sf
RUN chmod +x dist/cli/sf.js && ln -s /opt/service-foundry/dist/cli/sf.js /usr/local/bin/sf && mkdir -p /var/lib/sf
# Control API, router admin, and the default router group's route ports.
EXPOSE 7600 7601 16000-16999
ENTRYPOINT ["sf"]
CMD ["--help"]
