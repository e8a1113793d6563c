// Relay engine implementation. See docs/native-relay.md for the design; the comments below explain
// the choices that are easy to get wrong.

#include "relay-engine.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cstring>

namespace sf {

namespace {

// Pairs on one loop thread take turns: a direction moves at most this many reads per wake-up
// before the thread serves other pairs, so one bulk transfer cannot starve interactive ones.
constexpr int kRoundsPerTurn = 16;
// Idle timeouts are checked on this period; a pair closes between idle and idle + period.
constexpr int kSweepPeriodMs = 50;
constexpr int kMaxEvents = 256;
// Reads are copied through a per-thread buffer of this size until one fills it; a direction whose
// reads fill the buffer is a stream and moves through a pipe with splice(2) from then on, until a
// read would have fit in the buffer again. Small messages cost two syscalls per hop (recv, send)
// instead of three splices plus a pipe per direction, and bulk keeps zero-copy (the idea of
// HAProxy's `option splice-auto`). 16 KiB is HAProxy's default buffer size too.
constexpr size_t kCopyBufferSize = 16 * 1024;

int64_t NowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

void CloseQuietly(int& fd) {
  if (fd >= 0) {
    ::close(fd);
    fd = -1;
  }
}

}  // namespace

// One end (socket) of a pair; the epoll registration points here so an event names its side.
struct End {
  Pair* pair;
  int side;  // 0: client, 1: backend
};

// Direction d reads from socket d and writes to socket 1 - d: direction 0 carries client bytes to
// the backend ("in"), direction 1 backend bytes to the client ("out").
class Pair : public std::enable_shared_from_this<Pair> {
 public:
  enum class Turn { kIdle, kMore, kClosed };

  Pair(Loop* loop, PairOptions&& o) : loop_(loop), id_(o.id), idle_timeout_ms_(o.idle_timeout_ms) {
    for (int i = 0; i < 2; i++) {
      ends_[i] = End{this, i};
      pending_[i] = std::move(o.pending[i]);
      eof_[i] = o.eof[i];
      if (eof_[i] && first_eof_ < 0) first_eof_ = i;
    }
  }

  ~Pair() { CloseFds(false); }

  // Everything below runs with mu_ held.
  std::mutex mu_;
  Loop* loop_;
  const uint32_t id_;
  const uint64_t idle_timeout_ms_;
  std::atomic<bool> closed_{false};
  std::atomic<uint64_t> bytes_[2] = {{0}, {0}};

  int fd_[2] = {-1, -1};
  End ends_[2];
  int pipe_r_[2] = {-1, -1};
  int pipe_w_[2] = {-1, -1};
  size_t in_pipe_[2] = {0, 0};
  std::string pending_[2];
  size_t pending_off_[2] = {0, 0};
  bool eof_[2] = {false, false};
  bool shut_[2] = {false, false};
  // Edge-triggered epoll reports a transition once, so the last known state is remembered here.
  // Both start optimistic: a failed attempt costs one EAGAIN, a missed one would stall forever.
  bool readable_[2] = {true, true};
  bool writable_[2] = {true, true};
  // The peer of this side sent FIN, or the socket reported an error. A short read is only taken to
  // mean "socket drained" while this is false: a FIN that arrived together with data is reported
  // in the same edge, and no further edge would announce it.
  bool hangup_[2] = {false, false};
  // Per direction: reads go through the pipe (a stream) rather than the copy buffer.
  bool splicing_[2] = {false, false};
  int first_eof_ = -1;
  int64_t last_active_ms_ = 0;

  Turn Pump(int dir, int pipe_size, char* buffer, CloseEvent* ev);
  // Sends a copied read to the other side of direction dir. False when it could not all go out:
  // the rest is kept for EPOLLOUT, or the pair was closed on an error.
  bool SendCopy(int dir, const char* data, size_t len, CloseEvent* ev);
  void Close(CloseReason reason, int error, bool reset, CloseEvent* ev);
  void CloseFds(bool reset);
};

class Loop {
 public:
  Loop(int pipe_size, CloseSink* sink) : pipe_size_(pipe_size), sink_(sink) {
    epfd_ = epoll_create1(EPOLL_CLOEXEC);
    wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.ptr = nullptr;  // nullptr marks the wake-up eventfd
    epoll_ctl(epfd_, EPOLL_CTL_ADD, wake_fd_, &ev);
    thread_ = std::thread([this] { Run(); });
  }

  ~Loop() {
    stopping_.store(true);
    uint64_t one = 1;
    ssize_t ignored = write(wake_fd_, &one, sizeof one);
    (void)ignored;
    thread_.join();
    // Pairs still open at shutdown close with the process; their fds go with them.
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& entry : pairs_) {
      std::lock_guard<std::mutex> pair_lock(entry.second->mu_);
      entry.second->closed_.store(true);
      entry.second->CloseFds(false);
    }
    pairs_.clear();
    incoming_.clear();
    close(wake_fd_);
    close(epfd_);
  }

  std::shared_ptr<Pair> Add(int client_fd, int backend_fd, PairOptions&& options, int* err);

  size_t Size() {
    std::lock_guard<std::mutex> lock(mu_);
    return pairs_.size();
  }

  int epfd_ = -1;

 private:
  void Run();
  void Serve(Pair* pair, const End* end, uint32_t events, std::vector<std::shared_ptr<Pair>>* again);
  void Sweep(int64_t now);
  // Adds the pairs queued by Add to the epoll set; runs on the loop thread.
  void RegisterIncoming();

  const int pipe_size_;
  CloseSink* sink_;
  // The copy buffer of this thread; only Serve on this thread touches it, under one pair's lock.
  std::unique_ptr<char[]> buffer_{new char[kCopyBufferSize]};
  int wake_fd_ = -1;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
  // Owns every pair on this loop until the sweep finds it closed. The map is only changed between
  // two batches of events, so raw pointers from epoll stay valid for a whole batch.
  std::mutex mu_;
  std::unordered_map<Pair*, std::shared_ptr<Pair>> pairs_;
  // Pairs handed over but not yet in the epoll set (guarded by mu_).
  std::vector<std::shared_ptr<Pair>> incoming_;
};

void Pair::CloseFds(bool reset) {
  for (int side = 0; side < 2; side++) {
    if (fd_[side] < 0) continue;
    // Remove the registration explicitly: epoll keys on the open file description, and if anyone
    // else still held it, close() alone would leave events flowing for a dead pair.
    epoll_ctl(loop_->epfd_, EPOLL_CTL_DEL, fd_[side], nullptr);
    if (reset) {
      linger lg{1, 0};
      setsockopt(fd_[side], SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    CloseQuietly(fd_[side]);
  }
  for (int dir = 0; dir < 2; dir++) {
    CloseQuietly(pipe_r_[dir]);
    CloseQuietly(pipe_w_[dir]);
    in_pipe_[dir] = 0;
  }
}

void Pair::Close(CloseReason reason, int error, bool reset, CloseEvent* ev) {
  closed_.store(true);
  CloseFds(reset);
  if (ev != nullptr) {
    *ev = CloseEvent{id_, reason, error, bytes_[0].load(), bytes_[1].load()};
  }
}

bool Pair::SendCopy(int dir, const char* data, size_t len, CloseEvent* ev) {
  const int dst = 1 - dir;
  size_t sent = 0;
  while (sent < len) {
    ssize_t w = send(fd_[dst], data + sent, len - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w > 0) {
      sent += static_cast<size_t>(w);
      bytes_[dir].fetch_add(static_cast<uint64_t>(w), std::memory_order_relaxed);
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && errno == EAGAIN) {
      // The remainder waits in pending_ (which goes first on the next turn) for EPOLLOUT; the
      // buffer it came from belongs to the thread and is reused by the next pair.
      writable_[dst] = false;
      pending_[dir].assign(data + sent, len - sent);
      pending_off_[dir] = 0;
      return false;
    }
    Close(dst == 0 ? CloseReason::kClientError : CloseReason::kBackendError, w < 0 ? errno : EPIPE, false, ev);
    return false;
  }
  return true;
}

Pair::Turn Pair::Pump(int dir, int pipe_size, char* buffer, CloseEvent* ev) {
  const int src = dir;
  const int dst = 1 - dir;
  const CloseReason src_error = src == 0 ? CloseReason::kClientError : CloseReason::kBackendError;
  const CloseReason dst_error = dst == 0 ? CloseReason::kClientError : CloseReason::kBackendError;

  for (int round = 0; round < kRoundsPerTurn; round++) {
    // Bytes the JS side read before the handover, or the rest of a copied read that send() did
    // not take, go first, so the stream stays in order.
    std::string& pending = pending_[dir];
    while (pending_off_[dir] < pending.size()) {
      if (!writable_[dst]) return Turn::kIdle;
      ssize_t n = send(fd_[dst], pending.data() + pending_off_[dir], pending.size() - pending_off_[dir],
                       MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        pending_off_[dir] += static_cast<size_t>(n);
        bytes_[dir].fetch_add(static_cast<uint64_t>(n), std::memory_order_relaxed);
        continue;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        writable_[dst] = false;
        return Turn::kIdle;
      }
      Close(dst_error, errno, false, ev);
      return Turn::kClosed;
    }
    if (!pending.empty()) std::string().swap(pending);

    // Drain the pipe completely before reading again. Reading only into an empty pipe keeps the
    // EAGAIN of the next splice unambiguous (it can only mean "socket empty", never "pipe full"),
    // and bounds what the relay buffers per direction to one pipe.
    while (in_pipe_[dir] > 0) {
      if (!writable_[dst]) return Turn::kIdle;
      ssize_t n = splice(pipe_r_[dir], nullptr, fd_[dst], nullptr, in_pipe_[dir], SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n > 0) {
        in_pipe_[dir] -= static_cast<size_t>(n);
        bytes_[dir].fetch_add(static_cast<uint64_t>(n), std::memory_order_relaxed);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) {
        writable_[dst] = false;
        return Turn::kIdle;
      }
      Close(dst_error, n < 0 ? errno : EPIPE, false, ev);
      return Turn::kClosed;
    }

    if (eof_[dir]) {
      if (!shut_[dir]) {
        // Half-close: the peer sees our FIN only after everything before it was delivered.
        shutdown(fd_[dst], SHUT_WR);
        shut_[dir] = true;
        if (shut_[0] && shut_[1]) {
          Close(first_eof_ == 1 ? CloseReason::kBackendClosed : CloseReason::kClientClosed, 0, false, ev);
          return Turn::kClosed;
        }
      }
      return Turn::kIdle;
    }
    if (!readable_[src]) return Turn::kIdle;

    ssize_t n;
    if (!splicing_[dir]) {
      // Copy mode. Read only when the destination can take it: whatever send() refuses would
      // have to be kept in memory, while leaving it in the source's receive buffer lets TCP flow
      // control slow the sender down.
      if (!writable_[dst]) return Turn::kIdle;
      n = recv(fd_[src], buffer, kCopyBufferSize, 0);
      if (n > 0) {
        if (static_cast<size_t>(n) == kCopyBufferSize) {
          splicing_[dir] = true;
        } else if (!hangup_[src]) {
          // A short read emptied the receive queue (TCP copies everything queued up to the
          // length asked). Data arriving later raises a new edge, so no EAGAIN read is needed.
          readable_[src] = false;
        }
        if (!SendCopy(dir, buffer, static_cast<size_t>(n), ev)) return closed_.load() ? Turn::kClosed : Turn::kIdle;
        continue;
      }
    } else {
      if (pipe_r_[dir] < 0) {
        // Pipes are created on first use: an idle connection then costs two descriptors, not six.
        int p[2];
        if (pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0) {
          Close(src_error, errno, false, ev);
          return Turn::kClosed;
        }
        pipe_r_[dir] = p[0];
        pipe_w_[dir] = p[1];
        if (pipe_size > 0) fcntl(p[1], F_SETPIPE_SZ, pipe_size);
      }
      n = splice(fd_[src], nullptr, pipe_w_[dir], nullptr, 1 << 20, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n > 0) {
        in_pipe_[dir] += static_cast<size_t>(n);
        // The stream slowed down to messages that fit the buffer: copying them is cheaper. The
        // pipe is flushed before the next read either way, so switching never reorders bytes.
        if (static_cast<size_t>(n) < kCopyBufferSize) splicing_[dir] = false;
        continue;
      }
    }
    if (n == 0) {
      eof_[dir] = true;
      if (first_eof_ < 0) first_eof_ = src;
      continue;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN) {
      readable_[src] = false;
      return Turn::kIdle;
    }
    Close(src_error, errno, false, ev);
    return Turn::kClosed;
  }
  return Turn::kMore;
}

std::shared_ptr<Pair> Loop::Add(int client_fd, int backend_fd, PairOptions&& options, int* err) {
  auto pair = std::make_shared<Pair>(this, std::move(options));
  const int source[2] = {client_fd, backend_fd};
  for (int side = 0; side < 2; side++) {
    // A duplicate, so that Node closing its own descriptor (right after the handover) neither
    // races with us nor ends the connection. O_CLOEXEC keeps it out of spawned engine processes.
    int fd = fcntl(source[side], F_DUPFD_CLOEXEC, 0);
    if (fd < 0) {
      *err = errno;
      return nullptr;  // ~Pair closes what was duplicated so far
    }
    pair->fd_[side] = fd;
  }
  pair->last_active_ms_ = NowMs();
  // The loop thread registers the pair itself. Registering here, on the JS thread, woke the loop
  // at once (a connected socket is writable, so EPOLL_CTL_ADD reports it ready) while this thread
  // still held the pair's lock: two cross-thread wake-ups and a blocked loop per connection, the
  // largest single cost of a handover. Queued, it costs one eventfd write per batch of new pairs.
  bool wake;
  {
    std::lock_guard<std::mutex> lock(mu_);
    pairs_.emplace(pair.get(), pair);
    wake = incoming_.empty();
    incoming_.push_back(pair);
  }
  if (wake) {
    uint64_t one = 1;
    ssize_t ignored = write(wake_fd_, &one, sizeof one);
    (void)ignored;
  }
  return pair;
}

void Loop::RegisterIncoming() {
  std::vector<std::shared_ptr<Pair>> incoming;
  {
    std::lock_guard<std::mutex> lock(mu_);
    incoming.swap(incoming_);
  }
  for (auto& pair : incoming) {
    CloseEvent ev{};
    {
      // Destroy may have closed the pair while it waited in the queue.
      std::lock_guard<std::mutex> lock(pair->mu_);
      if (pair->closed_.load()) continue;
      int side = 0;
      for (; side < 2; side++) {
        int fd = pair->fd_[side];
        // Node's sockets are non-blocking already (the flag belongs to the open file, which the
        // duplicate shares); set it only if someone handed over a blocking one.
        int flags = fcntl(fd, F_GETFL);
        if (flags >= 0 && (flags & O_NONBLOCK) == 0) fcntl(fd, F_SETFL, flags | O_NONBLOCK);
        epoll_event e{};
        e.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
        e.data.ptr = &pair->ends_[side];
        if (epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &e) != 0) break;
      }
      if (side == 2) continue;
      // Out of epoll watches (ENOSPC) or memory: the pair cannot be relayed and must not hang.
      pair->Close(side == 0 ? CloseReason::kClientError : CloseReason::kBackendError, errno, false, &ev);
    }
    (*sink_)(ev);
  }
}

// Records what epoll reported for one end (none for a pair continuing its turn) and pumps both
// directions of the pair.
void Loop::Serve(Pair* pair, const End* end, uint32_t events, std::vector<std::shared_ptr<Pair>>* again) {
  bool more = false;
  CloseEvent ev{};
  {
    std::lock_guard<std::mutex> lock(pair->mu_);
    if (pair->closed_.load()) return;
    if (end != nullptr) {
      // Errors and hang-ups surface as the result of the next read or write on that side.
      if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) pair->readable_[end->side] = true;
      if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) pair->hangup_[end->side] = true;
      if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) pair->writable_[end->side] = true;
    }
    uint64_t before = pair->bytes_[0].load(std::memory_order_relaxed) + pair->bytes_[1].load(std::memory_order_relaxed);
    for (int dir = 0; dir < 2; dir++) {
      Pair::Turn turn = pair->Pump(dir, pipe_size_, buffer_.get(), &ev);
      if (turn == Pair::Turn::kClosed) break;
      if (turn == Pair::Turn::kMore) more = true;
    }
    if (!pair->closed_.load()) {
      uint64_t after = pair->bytes_[0].load(std::memory_order_relaxed) + pair->bytes_[1].load(std::memory_order_relaxed);
      if (after != before) pair->last_active_ms_ = NowMs();
      if (more) again->push_back(pair->shared_from_this());
      return;
    }
  }
  (*sink_)(ev);
}

void Loop::Sweep(int64_t now) {
  std::vector<std::shared_ptr<Pair>> idle;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = pairs_.begin(); it != pairs_.end();) {
      Pair* p = it->first;
      if (p->closed_.load()) {
        it = pairs_.erase(it);
        continue;
      }
      // last_active_ms_ is only written on this thread, so reading it here needs no pair lock.
      if (p->idle_timeout_ms_ > 0 && now - p->last_active_ms_ >= static_cast<int64_t>(p->idle_timeout_ms_)) {
        idle.push_back(it->second);
      }
      ++it;
    }
  }
  for (auto& p : idle) {
    CloseEvent ev{};
    {
      std::lock_guard<std::mutex> lock(p->mu_);
      if (p->closed_.load()) continue;
      p->Close(CloseReason::kIdleTimeout, 0, false, &ev);
    }
    (*sink_)(ev);
  }
}

void Loop::Run() {
  epoll_event events[kMaxEvents];
  std::vector<std::shared_ptr<Pair>> again;
  std::vector<std::shared_ptr<Pair>> retry;
  int64_t last_sweep = NowMs();
  while (!stopping_.load()) {
    int n = epoll_wait(epfd_, events, kMaxEvents, again.empty() ? kSweepPeriodMs : 0);
    if (n < 0 && errno != EINTR) break;
    retry.swap(again);
    again.clear();
    for (int i = 0; i < n; i++) {
      End* end = static_cast<End*>(events[i].data.ptr);
      if (end == nullptr) {
        uint64_t v;
        ssize_t ignored = read(wake_fd_, &v, sizeof v);
        (void)ignored;
        RegisterIncoming();
        continue;
      }
      Serve(end->pair, end, events[i].events, &again);
    }
    // Pairs that used up their turn continue here; edge-triggered epoll will not report them again.
    for (auto& p : retry) Serve(p.get(), nullptr, 0, &again);
    retry.clear();
    int64_t now = NowMs();
    if (now - last_sweep >= kSweepPeriodMs) {
      last_sweep = now;
      Sweep(now);
    }
  }
}

Engine::Engine(unsigned threads, int pipe_size, CloseSink sink) {
  sink_ = std::make_unique<CloseSink>(std::move(sink));
  if (threads == 0) threads = 1;
  for (unsigned i = 0; i < threads; i++) loops_.push_back(std::make_unique<Loop>(pipe_size, sink_.get()));
}

Engine::~Engine() { loops_.clear(); }

std::shared_ptr<Pair> Engine::Start(int client_fd, int backend_fd, PairOptions options, int* err) {
  *err = 0;
  Loop* loop = loops_[next_loop_.fetch_add(1) % loops_.size()].get();
  return loop->Add(client_fd, backend_fd, std::move(options), err);
}

bool Engine::Destroy(Pair& pair, bool reset) {
  // Taking the pair's lock waits out a splice in progress on the loop thread; after that the
  // descriptors are gone, so nothing more can reach either peer.
  std::lock_guard<std::mutex> lock(pair.mu_);
  if (pair.closed_.load()) return false;
  pair.Close(CloseReason::kKilled, 0, reset, nullptr);
  return true;
}

uint64_t Engine::BytesIn(const Pair& pair) { return pair.bytes_[0].load(std::memory_order_relaxed); }
uint64_t Engine::BytesOut(const Pair& pair) { return pair.bytes_[1].load(std::memory_order_relaxed); }

size_t Engine::ActivePairs() const {
  size_t total = 0;
  for (auto& loop : loops_) total += loop->Size();
  return total;
}

}  // namespace sf
