/*
 * TLS sink for bench/tls-termination.ts --reencrypt: the far end of a bulk stream that reaches its
 * backend over TLS. Accepts TLS connections (one process per connection), reads and discards
 * everything until the peer's close_notify or FIN, then sends its own close_notify and closes.
 * Built with the system's OpenSSL, so that the backend's decryption (AES-NI) is not what limits
 * the proxies being compared, as a Node TLS server would on this machine.
 *
 *   cc -O2 -o tls-sink-server tls-sink-server.c -lssl -lcrypto
 *   tls-sink-server PORT CERTFILE KEYFILE
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char** argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: tls-sink-server PORT CERTFILE KEYFILE\n");
    return 2;
  }
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (SSL_CTX_use_certificate_chain_file(ctx, argv[2]) != 1 ||
      SSL_CTX_use_PrivateKey_file(ctx, argv[3], SSL_FILETYPE_PEM) != 1) {
    ERR_print_errors_fp(stderr);
    return 1;
  }
  signal(SIGCHLD, SIG_IGN); /* no zombies */
  signal(SIGPIPE, SIG_IGN);
  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in addr;
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_port = htons(atoi(argv[1]));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(lfd, (struct sockaddr*)&addr, sizeof addr) != 0 || listen(lfd, 128) != 0) {
    perror("listen");
    return 1;
  }
  for (;;) {
    int fd = accept(lfd, NULL, NULL);
    if (fd < 0) continue;
    if (fork() != 0) {
      close(fd);
      continue;
    }
    close(lfd);
    SSL* ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    if (SSL_accept(ssl) == 1) {
      static char buf[64 * 1024];
      while (SSL_read(ssl, buf, sizeof buf) > 0) {
      }
      SSL_shutdown(ssl);
    }
    close(fd);
    _exit(0);
  }
}
