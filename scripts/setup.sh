#!/usr/bin/env bash
# Installs what Service Foundry needs that npm does not bring, then builds it.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v redis-server >/dev/null || need_pkgs+=(redis-server)
command -v redis-cli >/dev/null || command -v redis-benchmark >/dev/null || need_pkgs+=(redis-tools)
command -v haproxy >/dev/null || need_pkgs+=(haproxy)
command -v iperf3 >/dev/null || need_pkgs+=(iperf3)
# The platform CA (common/platform-ca.ts) makes keys and certificates with the openssl CLI.
command -v openssl >/dev/null || need_pkgs+=(openssl)
# The native relay terminates TLS with the system's OpenSSL, linked statically into the addon
# (scripts/build-native.sh; Node's own copy lacks the AES assembly on some builds).
[ -f "/usr/lib/$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)/libssl.a" ] || need_pkgs+=(libssl-dev)
command -v ip >/dev/null || need_pkgs+=(iproute2)
{ command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || need_pkgs+=(postgresql)
command -v psql >/dev/null || need_pkgs+=(postgresql-client)
# `sf up`'s banner and the docs read a service key's URI with jq.
command -v jq >/dev/null || need_pkgs+=(jq)
# The docker executor: a daemon and CLI, and mmdebstrap to build engine images from Debian's
# packages (`sf images build`); the pods' sidecars are Debian's Prometheus exporters.
command -v dockerd >/dev/null || need_pkgs+=(docker.io)
command -v mmdebstrap >/dev/null || need_pkgs+=(mmdebstrap)
command -v prometheus-redis-exporter >/dev/null || need_pkgs+=(prometheus-redis-exporter)
command -v prometheus-postgres-exporter >/dev/null || need_pkgs+=(prometheus-postgres-exporter)
# The console's browser test and the check of `sf prometheus-config` (promtool).
command -v chromium >/dev/null || need_pkgs+=(chromium)
command -v promtool >/dev/null || need_pkgs+=(prometheus)

if [ "${#need_pkgs[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing ${need_pkgs[*]} from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Debian's packages try to start their services; in a container there is no init to do so,
    # and the platform starts its own servers anyway.
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
  else
    echo "setup: please install ${need_pkgs[*]} (not root or no apt-get, so not installing them)" >&2
  fi
fi

# tcp instances run as this unprivileged user when the cell runs as root (docs/cells.md, Security).
if ! id -u sf-instance >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v useradd >/dev/null; then
    echo "setup: creating the system user sf-instance (tcp instances run as it)"
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin sf-instance
  else
    echo "setup: please create the system user sf-instance (tcp instances run as it when the cell is root)" >&2
  fi
fi

echo "setup: installing npm packages"
if [ -f package-lock.json ]; then npm ci --no-audit --no-fund --loglevel=error; else npm install --no-audit --no-fund --loglevel=error; fi

echo "setup: building"
npm run build --silent

echo "setup: building the native relay (optional)"
bash scripts/build-native.sh >/tmp/sf-native-build.log 2>&1 && echo "setup: native relay built" \
  || echo "setup: native relay not built (see /tmp/sf-native-build.log); the JS relay will be used"
