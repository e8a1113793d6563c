#include "listen-batch.h"

#include <errno.h>
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>

namespace sf {

namespace {

// Below this many ports a batch uses plain system calls: a ring costs about as many calls to set
// up and tear down (io_uring_setup, three mmap, munmap, close) as a few ports do.
constexpr size_t kUringMinPorts = 16;
// Submission queue entries of a ring; a step's entries are submitted in rounds of at most this.
constexpr unsigned kRingEntries = 4096;

// Operation codes and setup flags the build machine's <linux/io_uring.h> may be too old to name
// (the running kernel is probed before any is used).
constexpr uint8_t kOpClose = 19;
constexpr uint8_t kOpEpollCtl = 29;
constexpr uint8_t kOpSocket = 45;
constexpr uint8_t kOpUringCmd = 46;
constexpr uint8_t kOpBind = 56;    // Linux 6.11
constexpr uint8_t kOpListen = 57;  // Linux 6.11
constexpr uint32_t kSocketCmdSetsockopt = 3;  // SOCKET_URING_OP_SETSOCKOPT, Linux 6.7
constexpr uint32_t kSetupSingleIssuer = 1u << 12;
constexpr uint32_t kSetupDeferTaskrun = 1u << 13;
constexpr uint8_t kOpNop = 0;
constexpr uint8_t kSqeIoDrain = 1u << 1;
// user_data of the NOP that closes a round (ports are numbered from 0 up).
constexpr uint64_t kRoundEnd = ~uint64_t{0};
constexpr uint8_t kSqeCqeSkipSuccess = 1u << 6;

// The submission entry as the kernel reads it, spelled out so that the fields the older header
// lacks (setsockopt's level, optname, optlen and optval) need no newer header.
struct Sqe {
  uint8_t opcode;
  uint8_t flags;
  uint16_t ioprio;
  int32_t fd;
  uint64_t off;   // bind: address length; epoll_ctl: target fd; uring_cmd: cmd_op (low half)
  uint64_t addr;  // bind: address; epoll_ctl: event; setsockopt: level, optname
  uint32_t len;   // listen: backlog; epoll_ctl: op; socket: protocol
  uint32_t op_flags;
  uint64_t user_data;
  uint16_t buf_index;
  uint16_t personality;
  uint32_t file_index;  // setsockopt: optlen
  uint64_t addr3;       // setsockopt: optval
  uint64_t pad;
};
static_assert(sizeof(Sqe) == 64, "io_uring submission entries are 64 bytes");

struct Cqe {
  uint64_t user_data;
  int32_t res;
  uint32_t flags;
};
static_assert(sizeof(Cqe) == 16, "io_uring completion entries are 16 bytes");

// 0: not probed, 1: io_uring usable, 2: not.
std::atomic<int> g_uring_state{0};

bool Probe(int ring_fd) {
  constexpr unsigned kOps = 64;
  std::vector<char> buf(sizeof(io_uring_probe) + kOps * sizeof(io_uring_probe_op), 0);
  auto* probe = reinterpret_cast<io_uring_probe*>(buf.data());
  if (syscall(__NR_io_uring_register, ring_fd, IORING_REGISTER_PROBE, probe, kOps) != 0) return false;
  for (uint8_t op : {kOpClose, kOpEpollCtl, kOpSocket, kOpUringCmd, kOpBind, kOpListen}) {
    if (op > probe->last_op || (probe->ops[op].flags & IO_URING_OP_SUPPORTED) == 0) return false;
  }
  return true;
}

int SetInt(int fd, int level, int name, int value) {
  return setsockopt(fd, level, name, &value, sizeof value) == 0 ? 0 : -errno;
}

}  // namespace

struct ListenBatch::Ring {
  int fd = -1;
  void* sq_map = nullptr;
  size_t sq_map_len = 0;
  void* cq_map = nullptr;
  size_t cq_map_len = 0;
  Sqe* sqes = nullptr;
  size_t sqes_len = 0;
  unsigned* sq_tail = nullptr;
  unsigned sq_mask = 0;
  unsigned* sq_array = nullptr;
  unsigned* cq_head = nullptr;
  unsigned* cq_tail = nullptr;
  unsigned cq_mask = 0;
  Cqe* cqes = nullptr;
  unsigned entries = 0;
  unsigned queued = 0;

  ~Ring() {
    if (sqes != nullptr) munmap(sqes, sqes_len);
    if (cq_map != nullptr) munmap(cq_map, cq_map_len);
    if (sq_map != nullptr) munmap(sq_map, sq_map_len);
    if (fd >= 0) close(fd);
  }

  bool Setup(unsigned want) {
    io_uring_params p{};
    // Completions are collected only when this thread asks for them (DEFER_TASKRUN): a round's
    // steps then run back to back inside the submitting call instead of through task work.
    // SUBMIT_ALL: an entry the kernel refuses fails alone instead of ending the submission.
    p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL | kSetupSingleIssuer | kSetupDeferTaskrun;
    p.cq_entries = want * 2;
    fd = static_cast<int>(syscall(__NR_io_uring_setup, want, &p));
    if (fd < 0 && errno == EINVAL) {
      p = io_uring_params{};
      p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL;
      p.cq_entries = want * 2;
      fd = static_cast<int>(syscall(__NR_io_uring_setup, want, &p));
    }
    if (fd < 0) return false;
    sq_map_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    cq_map_len = p.cq_off.cqes + p.cq_entries * sizeof(Cqe);
    sqes_len = p.sq_entries * sizeof(Sqe);
    sq_map = mmap(nullptr, sq_map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
    cq_map = mmap(nullptr, cq_map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_CQ_RING);
    void* s = mmap(nullptr, sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
    if (sq_map == MAP_FAILED) sq_map = nullptr;
    if (cq_map == MAP_FAILED) cq_map = nullptr;
    sqes = s == MAP_FAILED ? nullptr : static_cast<Sqe*>(s);
    if (sq_map == nullptr || cq_map == nullptr || sqes == nullptr) return false;
    char* sq = static_cast<char*>(sq_map);
    char* cq = static_cast<char*>(cq_map);
    sq_tail = reinterpret_cast<unsigned*>(sq + p.sq_off.tail);
    sq_mask = *reinterpret_cast<unsigned*>(sq + p.sq_off.ring_mask);
    sq_array = reinterpret_cast<unsigned*>(sq + p.sq_off.array);
    cq_head = reinterpret_cast<unsigned*>(cq + p.cq_off.head);
    cq_tail = reinterpret_cast<unsigned*>(cq + p.cq_off.tail);
    cq_mask = *reinterpret_cast<unsigned*>(cq + p.cq_off.ring_mask);
    cqes = reinterpret_cast<Cqe*>(cq + p.cq_off.cqes);
    entries = p.sq_entries;
    return true;
  }

  Sqe* Next() {
    const unsigned tail = *sq_tail + queued;
    const unsigned index = tail & sq_mask;
    Sqe* sqe = &sqes[index];
    std::memset(sqe, 0, sizeof *sqe);
    sq_array[index] = index;
    queued++;
    return sqe;
  }

  // Submits what was queued and takes completions until `until` says every submitted entry has
  // reported; each completion goes to `take`. Returns 0 or a negative errno of io_uring_enter.
  template <typename Take, typename Until>
  int SubmitAndReap(Take take, Until until) {
    __atomic_store_n(sq_tail, *sq_tail + queued, __ATOMIC_RELEASE);
    unsigned to_submit = queued;
    queued = 0;
    for (;;) {
      long rc = syscall(__NR_io_uring_enter, fd, to_submit, 1, IORING_ENTER_GETEVENTS, nullptr, 0);
      if (rc < 0 && errno != EINTR) return -errno;
      if (rc >= 0 && to_submit > 0) {
        if (rc == 0) return -EBUSY;  // nothing taken: never wait for completions that cannot come
        to_submit -= static_cast<unsigned>(std::min<long>(rc, to_submit));
      }
      unsigned head = *cq_head;
      const unsigned tail = __atomic_load_n(cq_tail, __ATOMIC_ACQUIRE);
      for (; head != tail; head++) {
        const Cqe& c = cqes[head & cq_mask];
        take(c.user_data, c.res);
      }
      __atomic_store_n(cq_head, head, __ATOMIC_RELEASE);
      if (to_submit == 0 && until()) return 0;
    }
  }
};

ListenBatch::ListenBatch(size_t ports) {
  if (ports < kUringMinPorts) return;
  if (g_uring_state.load() == 2) return;
  const char* env = std::getenv("SF_NATIVE_URING");
  if (env != nullptr && std::strcmp(env, "off") == 0) return;
  auto* ring = new Ring();
  unsigned want = static_cast<unsigned>(std::min<size_t>(kRingEntries, ports * 10));
  bool ok = ring->Setup(want);
  if (ok && g_uring_state.load() == 0) g_uring_state.store(Probe(ring->fd) ? 1 : 2);
  if (!ok && g_uring_state.load() == 0) g_uring_state.store(2);
  if (!ok || g_uring_state.load() != 1) {
    delete ring;
    return;
  }
  ring_ = ring;
}

ListenBatch::~ListenBatch() { delete ring_; }

bool ListenBatchUsesUring() { return g_uring_state.load() == 1; }

std::vector<int> ListenBatch::Sockets(const std::vector<ListenRequest>& requests) {
  const size_t n = requests.size();
  std::vector<int> fds(n, -EINVAL);
  constexpr int kType = SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC;
  if (ring_ == nullptr) {
    for (size_t i = 0; i < n; i++) {
      int fd = socket(requests[i].addr.ss_family, kType, 0);
      fds[i] = fd >= 0 ? fd : -errno;
    }
    return fds;
  }
  size_t next = 0;
  while (next < n) {
    const size_t round = std::min<size_t>(n - next, ring_->entries);
    for (size_t k = 0; k < round; k++) {
      Sqe* s = ring_->Next();
      s->opcode = kOpSocket;
      s->fd = requests[next + k].addr.ss_family;
      s->off = kType;
      s->user_data = next + k;
    }
    size_t reported = 0;
    int rc = ring_->SubmitAndReap(
        [&](uint64_t i, int res) {
          fds[i] = res;
          reported++;
        },
        [&] { return reported == round; });
    if (rc < 0) {
      for (size_t k = 0; k < round; k++) {
        if (fds[next + k] == -EINVAL) fds[next + k] = rc;
      }
    }
    next += round;
  }
  return fds;
}

namespace {

// One round over the items `take` accepts: `fill` queues per_item entries for item i, each
// flagged IOSQE_CQE_SKIP_SUCCESS with user_data i, so only failures post completions, and `fail`
// hears of them (res < 0). The round ends with a NOP flagged IOSQE_IO_DRAIN, which starts only once
// every entry before it completed (an entry the kernel finishes in a worker thread is waited for
// too). No linked chains: a link hands each next step to task work (~7 hand-overs per port), and
// rounds cost a third less CPU for 10,000 ports (docs/native-relay.md). A failed submission fails
// every item of the round with its errno.
template <typename Take, typename Fill, typename Fail>
void RunRound(ListenBatch::Ring& ring, size_t n, size_t per_item, Take take, Fill fill, Fail fail) {
  const size_t capacity = std::max<size_t>(1, (ring.entries - 1) / per_item);
  std::vector<size_t> taken;
  size_t i = 0;
  while (i < n) {
    taken.clear();
    for (; i < n && taken.size() < capacity; i++) {
      if (!take(i)) continue;
      fill(i);
      taken.push_back(i);
    }
    if (taken.empty()) continue;
    Sqe* nop = ring.Next();
    nop->opcode = kOpNop;
    nop->flags = kSqeIoDrain;
    nop->user_data = kRoundEnd;
    bool done = false;
    int rc = ring.SubmitAndReap(
        [&](uint64_t data, int res) {
          if (data == kRoundEnd) {
            done = true;
            return;
          }
          if (res < 0) fail(static_cast<size_t>(data), res);
        },
        [&] { return done; });
    if (rc < 0) {
      for (size_t k : taken) fail(k, rc);
    }
  }
}

Sqe* Entry(ListenBatch::Ring& ring, uint8_t opcode, int fd, size_t i) {
  Sqe* s = ring.Next();
  s->opcode = opcode;
  s->fd = fd;
  s->flags = kSqeCqeSkipSuccess;
  s->user_data = i;
  return s;
}

}  // namespace

std::vector<int> ListenBatch::Listen(const std::vector<int>& fds, const std::vector<ListenRequest>& requests,
                                     const ListenBatchOptions& options) {
  const size_t n = requests.size();
  std::vector<int> result(n, 0);
  const int one = 1;
  const int keepidle = std::max(1, options.keepalive_ms / 1000);
  std::vector<Opt> opts;
  if (!options.reserve_only) opts.push_back({SOL_SOCKET, SO_REUSEADDR, &one});
  // With SO_REUSEPORT, worker processes bind the same port and the kernel spreads connections
  // over their queues. The loop threads of one process need no socket each: one of them watches
  // this one and spreads what it accepts (docs/native-relay.md, "Listening").
  if (options.reuse_port) opts.push_back({SOL_SOCKET, SO_REUSEPORT, &one});
  if (!options.reserve_only) opts.push_back({IPPROTO_TCP, TCP_NODELAY, &one});
  if (options.keepalive_ms > 0 && !options.reserve_only) {
    opts.push_back({SOL_SOCKET, SO_KEEPALIVE, &one});
    opts.push_back({IPPROTO_TCP, TCP_KEEPIDLE, &keepidle});
  }
  std::vector<epoll_event> events(n);
  for (size_t i = 0; i < n; i++) {
    events[i].events = EPOLLIN;
    events[i].data.u64 = requests[i].epoll_data;
    if (fds[i] < 0) result[i] = fds[i];
  }

  if (ring_ == nullptr) {
    for (size_t i = 0; i < n; i++) {
      const int fd = fds[i];
      if (fd < 0) continue;
      int rc = 0;
      for (const Opt& o : opts) {
        if ((rc = SetInt(fd, o.level, o.name, *o.value)) != 0) break;
      }
      if (rc == 0 && bind(fd, reinterpret_cast<const sockaddr*>(&requests[i].addr), requests[i].addr_len) != 0) {
        rc = -errno;
      }
      if (options.reserve_only) {
        result[i] = rc;
        continue;
      }
      if (rc == 0 && listen(fd, options.backlog) != 0) rc = -errno;
      if (rc == 0 && requests[i].epfd >= 0 && epoll_ctl(requests[i].epfd, EPOLL_CTL_ADD, fd, &events[i]) != 0) {
        rc = -errno;
      }
      result[i] = rc;
    }
    return result;
  }

  // One round per step over every port still on course: all options, then all binds, then all
  // listens, then the registrations, so a port whose step failed takes no further step (a listen
  // after a failed bind would bind a random port).
  Ring& ring = *ring_;
  auto on_course = [&](size_t i) { return result[i] == 0; };
  auto failed = [&](size_t i, int res) {
    if (result[i] == 0) result[i] = res;
  };
  if (!opts.empty()) RunRound(
      ring, n, opts.size(), on_course,
      [&](size_t i) {
        for (const Opt& o : opts) {
          Sqe* s = Entry(ring, kOpUringCmd, fds[i], i);
          s->off = kSocketCmdSetsockopt;
          const uint32_t level_name[2] = {static_cast<uint32_t>(o.level), static_cast<uint32_t>(o.name)};
          std::memcpy(&s->addr, level_name, sizeof level_name);
          s->file_index = sizeof(int);
          s->addr3 = reinterpret_cast<uint64_t>(o.value);
        }
      },
      failed);
  RunRound(
      ring, n, 1, on_course,
      [&](size_t i) {
        Sqe* b = Entry(ring, kOpBind, fds[i], i);
        b->addr = reinterpret_cast<uint64_t>(&requests[i].addr);
        b->off = requests[i].addr_len;
      },
      failed);
  if (options.reserve_only) return result;
  RunRound(
      ring, n, 1, on_course,
      [&](size_t i) { Entry(ring, kOpListen, fds[i], i)->len = static_cast<uint32_t>(options.backlog); }, failed);
  RunRound(
      ring, n, 1, [&](size_t i) { return result[i] == 0 && requests[i].epfd >= 0; },
      [&](size_t i) {
        Sqe* e = Entry(ring, kOpEpollCtl, requests[i].epfd, i);
        e->len = EPOLL_CTL_ADD;
        e->off = static_cast<uint64_t>(fds[i]);
        e->addr = reinterpret_cast<uint64_t>(&events[i]);
      },
      failed);
  return result;
}

size_t ListenBatch::Unwatch(const std::vector<CloseRequest>& requests) {
  const size_t n = requests.size();
  size_t failures = 0;
  if (ring_ == nullptr) {
    for (const CloseRequest& r : requests) {
      if (r.epfd >= 0 && r.fd >= 0 && epoll_ctl(r.epfd, EPOLL_CTL_DEL, r.fd, nullptr) != 0) failures++;
    }
    return failures;
  }
  Ring& ring = *ring_;
  RunRound(
      ring, n, 1, [&](size_t i) { return requests[i].epfd >= 0 && requests[i].fd >= 0; },
      [&](size_t i) {
        Sqe* e = Entry(ring, kOpEpollCtl, requests[i].epfd, i);
        e->len = EPOLL_CTL_DEL;
        e->off = static_cast<uint64_t>(requests[i].fd);
      },
      [&](size_t, int) { failures++; });
  return failures;
}

size_t ListenBatch::Close(const std::vector<int>& fds) {
  size_t failures = 0;
  if (ring_ == nullptr) {
    for (int fd : fds) {
      if (fd >= 0 && close(fd) != 0) failures++;
    }
    return failures;
  }
  Ring& ring = *ring_;
  RunRound(
      ring, fds.size(), 1, [&](size_t i) { return fds[i] >= 0; },
      [&](size_t i) { Entry(ring, kOpClose, fds[i], i); }, [&](size_t, int) { failures++; });
  return failures;
}

void ReserveDescriptors(size_t more) {
  constexpr size_t kWorthGrowing = 256;
  constexpr int kSlack = 64;  // descriptors other threads may open meanwhile
  if (more < kWorthGrowing) return;
  // The lowest free number: the batch's descriptors take the numbers from here on.
  const int lowest = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (lowest < 0) return;
  rlimit limit{};
  int64_t target = static_cast<int64_t>(lowest) + static_cast<int64_t>(more) + kSlack;
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY) {
    target = std::min<int64_t>(target, static_cast<int64_t>(limit.rlim_cur) - 1);
  }
  if (target > lowest) {
    const int far = fcntl(lowest, F_DUPFD_CLOEXEC, static_cast<int>(target));
    if (far >= 0) close(far);
  }
  close(lowest);
}

}  // namespace sf
