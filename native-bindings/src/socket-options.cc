#include "socket-options.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

namespace sf {

namespace {

int SetInt(int fd, int level, int name, int value) {
  return setsockopt(fd, level, name, &value, sizeof value) == 0 ? 0 : -errno;
}

}  // namespace

int ListenTcp(const ListenOptions& o) {
  sockaddr_storage addr{};
  socklen_t len = 0;
  int family = AF_INET;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&addr);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&addr);
  if (inet_pton(AF_INET, o.host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(static_cast<uint16_t>(o.port));
    len = sizeof(sockaddr_in);
  } else if (inet_pton(AF_INET6, o.host.c_str(), &v6->sin6_addr) == 1) {
    family = AF_INET6;
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(static_cast<uint16_t>(o.port));
    len = sizeof(sockaddr_in6);
  } else {
    return -EINVAL;
  }

  // CLOEXEC: a listener leaking into a spawned engine process would keep the port bound after
  // the router exits.
  int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  int rc = SetInt(fd, SOL_SOCKET, SO_REUSEADDR, 1);
  // With SO_REUSEPORT every worker process binds the same port and the kernel spreads incoming
  // connections over their accept queues; all of them must set it before bind, as the same user.
  if (rc == 0 && o.reuse_port) rc = SetInt(fd, SOL_SOCKET, SO_REUSEPORT, 1);
  if (rc == 0 && family == AF_INET6) rc = SetInt(fd, IPPROTO_IPV6, IPV6_V6ONLY, o.ipv6_only ? 1 : 0);
  if (rc == 0 && bind(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0) rc = -errno;
  if (rc == 0 && listen(fd, o.backlog) != 0) rc = -errno;
  if (rc != 0) {
    close(fd);
    return rc;
  }
  return fd;
}

int SetTcpUserTimeout(int fd, unsigned timeout_ms) {
  return SetInt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, static_cast<int>(timeout_ms));
}

int SetKeepAlive(int fd, bool enable, int idle_s, int interval_s, int count) {
  int rc = SetInt(fd, SOL_SOCKET, SO_KEEPALIVE, enable ? 1 : 0);
  if (rc != 0 || !enable) return rc;
  if (idle_s > 0 && (rc = SetInt(fd, IPPROTO_TCP, TCP_KEEPIDLE, idle_s)) != 0) return rc;
  if (interval_s > 0 && (rc = SetInt(fd, IPPROTO_TCP, TCP_KEEPINTVL, interval_s)) != 0) return rc;
  if (count > 0 && (rc = SetInt(fd, IPPROTO_TCP, TCP_KEEPCNT, count)) != 0) return rc;
  return 0;
}

}  // namespace sf
