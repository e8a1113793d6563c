# Service Foundry: one image, entrypoint `sf`.
#   docker build -t service-foundry .
#   docker run --rm -p 16379:16379 -v $PWD/routes.json:/etc/sf/routes.json \
#     service-foundry router --routes /etc/sf/routes.json --bind 0.0.0.0 --admin 0.0.0.0:7601

# Build stage: compilers for TypeScript and the native relay addon.
FROM node:20-bookworm AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY router ./router
COPY control ./control
COPY native-bindings ./native-bindings
COPY bench ./bench
COPY test ./test
COPY scripts ./scripts
RUN npm run build \
 && (bash scripts/build-native.sh || echo "native relay not built; the JS relay will be used") \
 && mkdir -p native-bindings/build/Release \
 && npm prune --omit=dev

# Runtime stage: Node, the built code, and the engines a cell runs.
FROM node:20-bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server redis-tools postgresql iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/service-foundry
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY --from=build /src/native-bindings/build/Release ./native-bindings/build/Release
ENV NODE_ENV=production SF_HOME=/var/lib/sf
RUN ln -s /opt/service-foundry/dist/cli/sf.js /usr/local/bin/sf && mkdir -p /var/lib/sf
# Control API, router admin, and the default router group's route ports.
EXPOSE 7600 7601 16000-16999
ENTRYPOINT ["sf"]
CMD ["--help"]
