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
# TLS termination in the relay threads uses the system's OpenSSL, linked statically and kept
# private to the addon: Node exports its own OpenSSL's symbols too, but some Node builds (this
# Debian one) compile it without the AES/GCM assembly, ~6x slower per byte (docs/native-relay.md).
# Without libssl-dev the addon uses Node's copy (the headers Node ships, its symbols at run time).
openssl_args=()
multiarch="$(gcc -print-multiarch 2>/dev/null || true)"
libdir="/usr/lib/${multiarch:-x86_64-linux-gnu}"
if [ "${SF_NATIVE_OPENSSL:-system}" = system ] && [ -f "$libdir/libssl.a" ] && [ -f "$libdir/libcrypto.a" ] &&
  [ -f /usr/include/openssl/ssl.h ]; then
  dir="$(pwd)/openssl"
  rm -rf "$dir" && mkdir -p "$dir/include/openssl" "$dir/lib"
  ln -s /usr/include/openssl/*.h "$dir/include/openssl/"
  # Debian keeps the build's configuration headers in the multiarch directory.
  if [ -d "/usr/include/$multiarch/openssl" ]; then ln -sf "/usr/include/$multiarch/openssl/"*.h "$dir/include/openssl/"; fi
  ln -s "$libdir/libssl.a" "$libdir/libcrypto.a" "$dir/lib/"
  openssl_args=(--sf_openssl="$dir")
  echo "native relay: TLS with the system OpenSSL ($libdir/libssl.a)" >&2
else
  echo "native relay: TLS with Node's OpenSSL (install libssl-dev for the system one)" >&2
fi
exec node ../node_modules/node-gyp/bin/node-gyp.js rebuild --release ${nodedir:+--nodedir="$nodedir"} "${openssl_args[@]}" "$@"
