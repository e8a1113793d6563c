#include "socket-bio.h"

#include <errno.h>
#include <openssl/err.h>
#include <sys/socket.h>
#include <algorithm>
#include <cstring>

namespace sf {

namespace {

int SocketRead(BIO* b, char* out, int len) {
  auto* io = static_cast<SocketIo*>(BIO_get_data(b));
  BIO_clear_retry_flags(b);
  if (io->prefix_off < io->prefix.size()) {
    const size_t n = std::min(io->prefix.size() - io->prefix_off, static_cast<size_t>(len));
    memcpy(out, io->prefix.data() + io->prefix_off, n);
    io->prefix_off += n;
    io->short_read = io->prefix_off == io->prefix.size() && io->prefix_drained;
    if (io->prefix_off == io->prefix.size()) std::string().swap(io->prefix), io->prefix_off = 0;
    return static_cast<int>(n);
  }
  for (;;) {
    ssize_t n = recv(io->fd, out, static_cast<size_t>(len), 0);
    if (n > 0) {
      io->short_read = n < len;
      return static_cast<int>(n);
    }
    if (n == 0) return 0;
    if (errno == EINTR) continue;
    if (errno == EAGAIN) BIO_set_retry_read(b);
    else io->error = errno;
    return -1;
  }
}

int SocketWrite(BIO* b, const char* data, int len) {
  auto* io = static_cast<SocketIo*>(BIO_get_data(b));
  BIO_clear_retry_flags(b);
  if (io->error != 0) {
    errno = io->error;  // OpenSSL tells a closed connection by errno (EPIPE, ECONNRESET)
    return -1;
  }
  for (;;) {
    ssize_t n = send(io->fd, data, static_cast<size_t>(len), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n >= 0) return static_cast<int>(n);
    if (errno == EINTR) continue;
    if (errno == EAGAIN) BIO_set_retry_write(b);
    else io->error = errno;
    return -1;
  }
}

long SocketCtrl(BIO*, int cmd, long, void*) { return cmd == BIO_CTRL_FLUSH ? 1 : 0; }

int SocketCreate(BIO* b) {
  BIO_set_init(b, 1);
  return 1;
}

}  // namespace

BIO_METHOD* SocketBioMethod() {
  static BIO_METHOD* method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "sf-relay-socket");
    BIO_meth_set_read(m, SocketRead);
    BIO_meth_set_write(m, SocketWrite);
    BIO_meth_set_ctrl(m, SocketCtrl);
    BIO_meth_set_create(m, SocketCreate);
    return m;
  }();
  return method;
}

std::string OpenSslError() {
  char buf[256];
  unsigned long e = ERR_get_error();
  std::string out = e != 0 ? (ERR_error_string_n(e, buf, sizeof buf), std::string(buf)) : "unknown error";
  ERR_clear_error();
  return out;
}

}  // namespace sf
