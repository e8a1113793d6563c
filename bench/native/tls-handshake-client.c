/*
 * Handshake-rate client for bench/tls-termination.ts: for SECONDS, connects, runs a full TLS
 * handshake (no resumption) verifying the server against a CA file and a host name, sends
 * close_notify and closes, as `openssl s_time -new` does; prints the handshakes completed, the seconds taken and the CPU
 * seconds the client spent. One
 * SSL_CTX serves every connection, so that the client's own cost per handshake is the protocol's
 * (key share, signature check) and little else: `openssl s_time` spends ~1 ms of CPU per
 * handshake here, four times the proxy's, and four of them leave a proxy's own cost hidden.
 *
 *   cc -O2 -o tls-handshake-client tls-handshake-client.c -lssl -lcrypto
 *   tls-handshake-client PORT CAFILE SERVERNAME SECONDS
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "tls-client-common.h"


int main(int argc, char** argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: tls-handshake-client PORT CAFILE SERVERNAME SECONDS\n");
    return 2;
  }
  const int port = atoi(argv[1]);
  const double seconds = atof(argv[4]);
  SSL_CTX* ctx = verifying_client_ctx(argv[2]);
  if (ctx == NULL) return 1;
  /* Every handshake a full one, as with s_time -new. */
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  const struct sockaddr_in addr = loopback_port(port);
  long handshakes = 0;
  const double started = now();
  double elapsed = 0;
  while ((elapsed = now() - started) < seconds) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    /* TCP_NODELAY, as s_time (BIO_SOCK_NODELAY), redis-cli and libpq set it. */
    const int one = 1;
    if (fd >= 0) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (fd < 0 || connect(fd, (struct sockaddr*)&addr, sizeof addr) != 0) {
      perror("connect");
      return 1;
    }
    SSL* ssl = tls_handshake(ctx, fd, argv[3]);
    if (ssl == NULL) return 1;
    handshakes++;
    /* close_notify, then the socket closed without waiting for the server's, as s_time does. */
    SSL_shutdown(ssl);
    SSL_free(ssl);
    close(fd);
  }
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  const double cpu = usage.ru_utime.tv_sec + usage.ru_utime.tv_usec / 1e6 + usage.ru_stime.tv_sec +
                     usage.ru_stime.tv_usec / 1e6;
  printf("%ld %.3f %.3f\n", handshakes, elapsed, cpu);
  return 0;
}
