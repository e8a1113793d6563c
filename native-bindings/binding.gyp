{
  "targets": [
    {
      "target_name": "sf_native",
      "sources": [
        "src/addon.cc",
        "src/listen-batch.cc",
        "src/port-steering.cc",
        "src/relay-engine.cc",
        "src/socket-bio.cc",
        "src/socket-options.cc",
        "src/tls-client.cc",
        "src/tls-server.cc"
      ],
      "variables": {
        # A directory holding the system OpenSSL's headers (include/openssl) and static libraries
        # (lib/libssl.a, lib/libcrypto.a), prepared by scripts/build-native.sh; empty: Node's own.
        "sf_openssl%": ""
      },
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "cflags_cc!": ["-fno-exceptions"],
      "conditions": [
        ["sf_openssl!=''", {
          # Ahead of Node's copy of the OpenSSL headers (cflags come before the include dirs).
          "cflags": ["-I<(sf_openssl)/include"],
          "libraries": ["<(sf_openssl)/lib/libssl.a", "<(sf_openssl)/lib/libcrypto.a"],
          # The linked copy stays private to the addon: its symbols are not exported and its own
          # calls bind inside it, so Node's OpenSSL and this one never mix.
          "ldflags": ["-Wl,--exclude-libs,ALL", "-Wl,-Bsymbolic"]
        }],
        ["OS!='linux'", { "type": "none" }]
      ]
    }
  ]
}
