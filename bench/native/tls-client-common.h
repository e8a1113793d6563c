/*
 * What the bench's C TLS clients share: a monotonic clock, a client context that verifies the
 * server against a CA file, and the loopback address of a port.
 */
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <string.h>
#include <time.h>

static inline double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* A client context trusting CAFILE only; NULL (with OpenSSL's errors printed) if it cannot load. */
static inline SSL_CTX* verifying_client_ctx(const char* ca_file) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == NULL || SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
    ERR_print_errors_fp(stderr);
    return NULL;
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  return ctx;
}

/* A TLS client on connected socket FD, verifying SERVERNAME (and sending it as SNI), after its
 * handshake; NULL (with OpenSSL's errors printed) if the handshake failed. */
static inline SSL* tls_handshake(SSL_CTX* ctx, int fd, const char* servername) {
  SSL* ssl = SSL_new(ctx);
  SSL_set_fd(ssl, fd);
  SSL_set_tlsext_host_name(ssl, servername);
  SSL_set1_host(ssl, servername);
  if (SSL_connect(ssl) != 1) {
    ERR_print_errors_fp(stderr);
    SSL_free(ssl);
    return NULL;
  }
  return ssl;
}

static inline struct sockaddr_in loopback_port(int port) {
  struct sockaddr_in addr;
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return addr;
}
