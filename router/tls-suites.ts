import { DEFAULT_CIPHERS } from 'node:tls';

/**
 * The TLS 1.3 cipher suites the router offers and accepts, in its order of preference: AES-128-GCM
 * with SHA-256 first (Mozilla's server-side TLS guidance), where OpenSSL's default puts AES-256-GCM
 * with SHA-384 first. The key schedule's HMACs and the transcript hash run on SHA-256, which
 * current cores have instructions for, so a handshake costs both ends less; AES-128 is the cheaper
 * bulk cipher. The native relay uses the same order (native-bindings/src/tls-suites.h).
 */
export const TLS13_CIPHERSUITES = ['TLS_AES_128_GCM_SHA256', 'TLS_AES_256_GCM_SHA384', 'TLS_CHACHA20_POLY1305_SHA256'];

/** Node's `ciphers` option: the TLS 1.3 suites above, then Node's default TLS 1.2 list unchanged. */
export const ROUTER_CIPHERS = [
  ...TLS13_CIPHERSUITES,
  ...DEFAULT_CIPHERS.split(':').filter((c) => !c.startsWith('TLS_')),
].join(':');
