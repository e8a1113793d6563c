// Socket set-up that Node's net module does not offer: SO_REUSEPORT listeners and TCP options.
// Each function returns 0 (or a descriptor) on success and a negative errno on failure.

#pragma once

#include <string>

namespace sf {

struct ListenOptions {
  std::string host;  // numeric IPv4 or IPv6 address
  int port = 0;
  int backlog = 511;
  bool reuse_port = true;
  bool ipv6_only = false;
};

// A bound, listening, non-blocking TCP socket, ready for Node's server.listen({ fd }).
int ListenTcp(const ListenOptions& options);

int SetTcpUserTimeout(int fd, unsigned timeout_ms);

// enable false turns keepalive off and ignores the other arguments; a zero argument keeps the
// kernel's value for that setting.
int SetKeepAlive(int fd, bool enable, int idle_s, int interval_s, int count);

}  // namespace sf
