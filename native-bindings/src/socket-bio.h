// The socket under an OpenSSL connection, for both ends the relay threads speak TLS on: the
// client's (tls-server.h, with the bytes the start read before the handshake) and the backend's
// (tls-client.h). A BIO of our own instead of OpenSSL's socket BIO: it records whether a read came
// back short, so the relay spends no read collecting EAGAIN once the socket is drained, sends
// with MSG_NOSIGNAL, and keeps the first error so later writes fail without a system call.
#pragma once

#include <openssl/bio.h>
#include <cstddef>
#include <string>

namespace sf {

struct SocketIo {
  int fd = -1;
  bool short_read = false;
  // The first error of a send or recv: a reset or broken connection stays broken, so later writes
  // fail with it at once, without a system call (OpenSSL writes its second ticket after the first
  // one's EPIPE when the client hung up).
  int error = 0;
  // What was read from the socket before the handshake began (the first bytes, which told a
  // ClientHello from plaintext): OpenSSL reads them first. prefix_drained: that read emptied the
  // receive queue.
  std::string prefix;
  size_t prefix_off = 0;
  bool prefix_drained = false;
};

// The method of BIOs whose data is a SocketIo (BIO_set_data), shared by every connection.
BIO_METHOD* SocketBioMethod();

// OpenSSL's first queued error as text (the queue cleared), or "unknown error".
std::string OpenSslError();

}  // namespace sf
