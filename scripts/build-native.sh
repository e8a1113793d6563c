#!/usr/bin/env bash
# Builds the optional native relay addon (native-bindings/build/Release/sf_native.node).
# The router runs without it: when the build fails or is skipped, the pure JS relay is used.
set -euo pipefail
cd "$(dirname "$0")/../native-bindings"
if [ "$(uname -s)" != "Linux" ]; then
  echo "native relay: splice(2) and epoll are Linux-only; skipping the build" >&2
  exit 1
fi
# Build against the headers of the installed Node when they are there (Debian's nodejs-dev puts
# them under /usr/include/node), so that no download is needed; npm's `nodedir` setting wins.
nodedir="${npm_config_nodedir:-}"
if [ -z "$nodedir" ] && [ -f /usr/include/node/node_api.h ]; then nodedir=/usr; fi
exec node ../node_modules/node-gyp/bin/node-gyp.js rebuild --release ${nodedir:+--nodedir="$nodedir"} "$@"
