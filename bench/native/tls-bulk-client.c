/*
 * Bulk TLS client for bench/tls-termination.ts: connects, verifies the server against a CA file and
 * a host name, writes MB megabytes in 64 KiB writes, sends close_notify and waits for the server's
 * end of stream, then prints the MB/s of the whole exchange. Built with the system's OpenSSL, so
 * that the client's own encryption (AES-NI) is not what limits the measurement, as Node's TLS
 * client did on this machine.
 *
 *   cc -O2 -o tls-bulk-client tls-bulk-client.c -lssl -lcrypto
 *   tls-bulk-client PORT CAFILE SERVERNAME MB
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "tls-client-common.h"


int main(int argc, char** argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: tls-bulk-client PORT CAFILE SERVERNAME MB\n");
    return 2;
  }
  const int port = atoi(argv[1]);
  const long long total = atoll(argv[4]) * 1024 * 1024;
  SSL_CTX* ctx = verifying_client_ctx(argv[2]);
  if (ctx == NULL) return 1;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  const struct sockaddr_in addr = loopback_port(port);
  const double started = now();
  if (connect(fd, (struct sockaddr*)&addr, sizeof addr) != 0) {
    perror("connect");
    return 1;
  }
  SSL* ssl = tls_handshake(ctx, fd, argv[3]);
  if (ssl == NULL) return 1;
  static char buf[64 * 1024];
  memset(buf, 'a', sizeof buf);
  long long sent = 0;
  while (sent < total) {
    int n = SSL_write(ssl, buf, (int)(total - sent < (long long)sizeof buf ? total - sent : (long long)sizeof buf));
    if (n <= 0) {
      ERR_print_errors_fp(stderr);
      return 1;
    }
    sent += n;
  }
  SSL_shutdown(ssl);
  /* The server side ends once every byte reached the backend and the backend ended. */
  while (SSL_read(ssl, buf, sizeof buf) > 0) {
  }
  const double seconds = now() - started;
  printf("%.1f\n", (double)total / (1024 * 1024) / seconds);
  return 0;
}
