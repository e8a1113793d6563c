// Opening and closing many listening sockets at once. Each port costs eight system calls to open
// (socket, four setsockopt, bind, listen, one epoll_ctl) and two to close (epoll_ctl, close), and
// on a paravirtualised machine the entry into the kernel, not the work inside it, is much of their
// cost (~1.2 µs per call here, docs/native-relay.md "Opening many ports"). Through io_uring a
// table's ports go to the kernel in a few submissions instead: every socket in one, then one round
// per step (options, bind, listen, epoll registration) over the ports whose earlier steps
// succeeded, so a failing step stops its own port only; closing is a round of deregistrations and
// a round of closes.
//
// Where io_uring is not there (kernels before 6.11 lack bind and listen in it; seccomp profiles
// may refuse io_uring_setup; SF_NATIVE_URING=off), the same steps run as plain system calls.

#pragma once

#include <sys/epoll.h>
#include <sys/socket.h>

#include <cstdint>
#include <vector>

namespace sf {

struct ListenBatchOptions {
  int backlog = 511;
  bool reuse_port = false;
  // TCP_NODELAY and keepalive are set on the listening socket, so that accepted clients inherit
  // them and no setsockopt is needed per connection. keepalive_ms 0: no keepalive.
  int keepalive_ms = 0;
  // Bind only: no options (not even SO_REUSEADDR, so that no other socket can bind the port while
  // this one holds it), no listen, no registration. The port is reserved for connections that a
  // steering program hands to another listening socket (port-steering.h).
  bool reserve_only = false;
};

struct ListenRequest {
  sockaddr_storage addr{};
  socklen_t addr_len = 0;
  // The one epoll set the listening socket is registered with (EPOLLIN, level-triggered), and the
  // data its events carry.
  int epfd = -1;
  uint64_t epoll_data = 0;
};

// A listening socket to close, and the epoll set it is registered with (-1: none).
struct CloseRequest {
  int epfd = -1;
  int fd = -1;
};

// The two steps of opening a table's ports. Sockets first, so that the caller can hand each
// descriptor to its port before the port can be reported ready; then the rest. One batch may use
// one io_uring instance for both steps (created for the batch: a ring belongs to the thread that
// submits to it first, and batches are rare).
class ListenBatch {
 public:
  // ports: how many requests the batch will carry; small batches use plain system calls, for
  // which setting up a ring would cost more than it saves.
  explicit ListenBatch(size_t ports);
  ~ListenBatch();
  ListenBatch(const ListenBatch&) = delete;
  ListenBatch& operator=(const ListenBatch&) = delete;

  // A non-blocking, close-on-exec TCP socket per request: its descriptor or a negative errno.
  std::vector<int> Sockets(const std::vector<ListenRequest>& requests);
  // SO_REUSEADDR (and SO_REUSEPORT), TCP_NODELAY and keepalive, bind, listen, and the
  // registration with requests[i].epfd, for each fds[i] >= 0 (the others are skipped). Per request
  // 0, or the negative errno of the first step that failed (the steps after it are not taken). The
  // descriptors stay the caller's to close.
  std::vector<int> Listen(const std::vector<int>& fds, const std::vector<ListenRequest>& requests,
                          const ListenBatchOptions& options);
  // Removes each socket from its epoll set. Returns how many removals failed (a socket that was
  // not registered any more counts).
  size_t Unwatch(const std::vector<CloseRequest>& requests);
  // Closes each descriptor (-1 entries are skipped). Returns how many closes failed. Callers remove
  // a socket from its epoll set first (Unwatch, which has completed when it returns), so that no
  // descriptor number is reused while a removal could still name it.
  size_t Close(const std::vector<int>& fds);

  bool UsesUring() const { return ring_ != nullptr; }

  // A socket option set on every listening socket of a batch.
  struct Opt {
    int level, name;
    const int* value;
  };
  struct Ring;

 private:
  Ring* ring_ = nullptr;
};

// Makes room in the process's descriptor table for `more` new descriptors at once. The kernel grows
// the table by doubling as descriptors are opened, and in a process with threads each growth waits
// for an RCU grace period (expand_fdtable's synchronize_rcu, milliseconds each), so the 10,000
// sockets of a new router's first table paid for eight growths: 70-100 ms of its ~110. A
// descriptor duplicated to the highest number the batch will need grows the table once. Batches
// under a few hundred descriptors skip it; so does a table already that big (one fcntl finds it).
void ReserveDescriptors(size_t more);

}  // namespace sf
