// The TLS 1.3 cipher suites the relay offers and accepts, in its order of preference, as a server
// (it picks: SSL_OP_CIPHER_SERVER_PREFERENCE) and as a client of TLS backends.
//
// AES-128-GCM with SHA-256 first, as Mozilla's server-side TLS guidance and Go's TLS stack order
// them, where OpenSSL's default puts AES-256-GCM with SHA-384 first. Both are 128-bit-secure or
// better against every known attack; the difference is cost. A TLS 1.3 handshake runs some twenty
// HMACs of its key schedule and hashes its transcript with the suite's hash, and SHA-256 has
// instructions of its own on current x86 and ARM cores (SHA-NI, ARMv8 SHA2) where SHA-384 does
// not: 2.3x the throughput on 16-byte inputs here (`openssl speed -evp`). AES-128 runs 10 rounds
// to AES-256's 14 on the bulk. ChaCha20-Poly1305 stays for clients without AES instructions.

#pragma once

namespace sf {

inline constexpr const char* kTls13Ciphersuites =
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";

}  // namespace sf
