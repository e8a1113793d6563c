// Relay engine implementation. See docs/native-relay.md for the design; the comments below explain
// the choices that are easy to get wrong.

#include "relay-engine.h"
#include "listen-batch.h"
#include "port-steering.h"
#include "socket-bio.h"
#include "socket-options.h"
#include "tls-client.h"
#include "tls-server.h"

#include <openssl/err.h>

#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <system_error>
#include <thread>
#include <unordered_set>

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
// Ports per thread below which a table's new ports open on the calling thread alone: a share costs
// a thread and a ring (tens of µs), 256 ports ~1.5 ms of system calls.
constexpr size_t kPortsPerOpenShare = 256;
// A TLS pair never splices; its reads go through a buffer of this size: up to four records'
// plaintext gathered from the client before one send to the backend, and up to four records' worth
// read from the backend for one SSL_write. Bulk then costs a quarter of the backend-side system
// calls (and of the backend's wake-ups) of one record per call.
constexpr size_t kTlsBufferSize = 64 * 1024;
// The most plaintext one TLS record carries (RFC 8446 section 5.1).
constexpr size_t kTlsRecordSize = 16 * 1024;
// epoll data of a listening socket: this bit set, the port id below it. Pointers (End*) never
// have it, as user-space addresses end below 2^47.
constexpr uint64_t kListenerTag = uint64_t{1} << 63;
// With kListenerTag: a steering listener (port-steering.h), its slot below these bits.
constexpr uint64_t kSteerTag = uint64_t{1} << 62;
// Steering listeners a process can have (one per distinct set of accept options and address).
constexpr unsigned kMaxSteerTargets = 16;
// A table change opening at least this many ports steers them (SF_NATIVE_STEER_MIN_PORTS); below
// it each port gets a listening socket of its own, which `ss -lt` shows and which costs little
// for a few ports.
constexpr size_t kSteerMinPortsDefault = 256;
// Connections accepted per listener event before the loop serves others (the listener is
// level-triggered, so what is left is reported again).
constexpr int kAcceptBatch = 32;
// After EMFILE or ENFILE a listener rests this long on that loop, instead of spinning on a queue
// it cannot take from.
constexpr int kAcceptPauseMs = 100;
// Events queued for JS beyond this are dropped; the counters still count every refusal.
constexpr size_t kMaxQueuedEvents = 1024;
// Capacity of a streaming direction's pipe when no pipe size is configured. With the kernel's
// 64 KiB a splice moves ~32 KiB and a 1 GB transfer costs ~30,000 splices; with 1 MiB it moves
// ~480 KiB (strace -c, docs/native-relay.md), and iperf3 through the relay runs several times
// faster. Pipe pages are allocated as data arrives, so an enlarged pipe costs memory only while
// it holds data.
constexpr int kStreamPipeSize = 1 << 20;
// The kernel counts every pipe's capacity against the user (fs/pipe-user-pages-soft, 64 MiB by
// default) and gives an unprivileged user over it pipes of two pages. Enlarged pipes therefore
// share this budget per process; beyond it a pipe keeps the kernel's default size.
constexpr int64_t kStreamPipeBudget = 32 << 20;
std::atomic<int64_t> g_stream_pipe_bytes{0};

int64_t NowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

// PostgreSQL's preamble codes (router/postgres-preamble.ts).
constexpr uint32_t kSslRequest = 80877103;
constexpr uint32_t kGssencRequest = 80877104;
constexpr uint32_t kCancelRequest = 80877102;
constexpr unsigned char kTlsHandshakeRecord = 0x16;
// Several GSSENCRequests in a row lead nowhere: not a client (router/client-tls.ts).
constexpr int kMaxPreambles = 4;

uint32_t Be32(const unsigned char* b) {
  return (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | uint32_t{b[3]};
}

// The ErrorResponse the JS path answers a plaintext StartupMessage with on a route that requires
// TLS (router/postgres-preamble.ts postgresErrorResponse, SQLSTATE 28000): libpq prints
// "FATAL:  this route requires TLS: ...".
const std::string& PlaintextRefusal() {
  static const std::string out = [] {
    static const char kFields[] =
        "SFATAL\0VFATAL\0C28000\0Mthis route requires TLS: connect with sslmode=require or stronger\0\0";
    const std::string fields(kFields, sizeof kFields - 1);
    std::string m = "E";
    const uint32_t len = static_cast<uint32_t>(4 + fields.size());
    m += static_cast<char>(len >> 24);
    m += static_cast<char>(len >> 16);
    m += static_cast<char>(len >> 8);
    m += static_cast<char>(len);
    return m + fields;
  }();
  return out;
}

void CloseQuietly(int& fd) {
  if (fd >= 0) {
    ::close(fd);
    fd = -1;
  }
}

bool IsLoopback(const sockaddr_storage& addr) {
  if (addr.ss_family == AF_INET) {
    return (ntohl(reinterpret_cast<const sockaddr_in&>(addr).sin_addr.s_addr) >> 24) == 127;
  }
  if (addr.ss_family == AF_INET6) {
    const in6_addr& a = reinterpret_cast<const sockaddr_in6&>(addr).sin6_addr;
    return IN6_IS_ADDR_LOOPBACK(&a) || (IN6_IS_ADDR_V4MAPPED(&a) && a.s6_addr[12] == 127);
  }
  return false;
}

// The congestion control of the router's connections with a peer on this host (a backend on a
// loopback address, the clients of a port listening on one), or nullptr for the system's.
// Pacing (BBR paces every segment with a high-resolution timer when no fq qdisc does it) spreads a
// flow over a bottleneck link; a loopback connection has none, and on a paravirtualised machine
// each timer costs an exit to the hypervisor: with BBR, the system's default here, relaying a
// stream to a backend on 127.0.0.1 cost the relay thread ~0.25 CPU s/GB and the whole path
// (client, relay, server) ~0.8, against ~0.13 and ~0.45 with cubic (docs/native-relay.md, "Bulk").
// So when the system's default is not one of the loss-based algorithms that do not pace, such
// connections get cubic (reno where cubic is not allowed to this user: reno always is).
// SF_NATIVE_LOOPBACK_CC names another algorithm, or `system` to keep the default.
std::atomic<const char*> g_loopback_cc{nullptr};
std::once_flag g_loopback_cc_once;

const char* LoopbackCongestion() {
  std::call_once(g_loopback_cc_once, [] {
    static std::string chosen;
    const char* env = std::getenv("SF_NATIVE_LOOPBACK_CC");
    if (env != nullptr && *env != '\0') {
      if (std::strcmp(env, "system") != 0) chosen = env;
    } else {
      char buf[64] = {0};
      int fd = ::open("/proc/sys/net/ipv4/tcp_congestion_control", O_RDONLY | O_CLOEXEC);
      if (fd >= 0) {
        ssize_t n = ::read(fd, buf, sizeof buf - 1);
        ::close(fd);
        std::string system_cc(buf, n > 0 ? static_cast<size_t>(n) : 0);
        while (!system_cc.empty() && (system_cc.back() == '\n' || system_cc.back() == ' ')) system_cc.pop_back();
        if (!system_cc.empty() && system_cc != "cubic" && system_cc != "reno") chosen = "cubic";
      }
    }
    g_loopback_cc.store(chosen.empty() ? nullptr : chosen.c_str());
  });
  return g_loopback_cc.load(std::memory_order_relaxed);
}

void SetUnpacedCongestion(int fd) {
  const char* cc = LoopbackCongestion();
  if (cc == nullptr) return;
  if (setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, cc, static_cast<socklen_t>(std::strlen(cc))) != 0 &&
      errno == EPERM && std::strcmp(cc, "cubic") == 0) {
    // Not in net.ipv4.tcp_allowed_congestion_control for this user: reno, from now on.
    static const char kReno[] = "reno";
    g_loopback_cc.store(kReno);
    setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, kReno, sizeof kReno - 1);
  }
}

void SetLoopbackCongestion(int fd, const sockaddr_storage& addr) {
  if (IsLoopback(addr)) SetUnpacedCongestion(fd);
}

// Closes an accepted client with a reset, as the kernel does to the queue of a listener that closes.
void CloseWithReset(int fd) {
  linger lg{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  ::close(fd);
}

// SF_NATIVE_STEER=off: every port gets a listening socket of its own (port-steering.h).
bool SteeringEnabled() {
  static const bool enabled = [] {
    const char* env = std::getenv("SF_NATIVE_STEER");
    return env == nullptr || std::strcmp(env, "off") != 0;
  }();
  return enabled;
}

size_t SteerMinPorts() {
  static const size_t min_ports = [] {
    const char* env = std::getenv("SF_NATIVE_STEER_MIN_PORTS");
    if (env == nullptr || *env == '\0') return kSteerMinPortsDefault;
    char* end = nullptr;
    const unsigned long long v = std::strtoull(env, &end, 10);
    return end != nullptr && *end == '\0' ? static_cast<size_t>(v) : kSteerMinPortsDefault;
  }();
  return min_ports;
}

// A TLS client always speaks first (its ClientHello, or PostgreSQL's SSLRequest), so the listener
// of a terminating route asks the kernel to hand a connection over only once its first bytes are
// there (TCP_DEFER_ACCEPT): the relay thread is woken once per new client instead of twice (at the
// client's ACK, then at its ClientHello), and the handshake starts in the pass that accepts it
// (Loop::StartAccepted). A client silent for this long is handed over anyway (after the SYN-ACK
// the kernel retransmits at one second), and the route's handshake timeout runs from then on.
// Never on other listeners: a protocol whose server speaks first would wait out the second.
// SF_NATIVE_DEFER_ACCEPT=off leaves it off everywhere.
constexpr int kDeferAcceptSeconds = 1;

void SetDeferAccept(int listener_fd, bool on) {
  static const bool enabled = [] {
    const char* env = std::getenv("SF_NATIVE_DEFER_ACCEPT");
    return env == nullptr || std::strcmp(env, "off") != 0;
  }();
  if (!enabled) return;
  const int seconds = on ? kDeferAcceptSeconds : 0;
  setsockopt(listener_fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &seconds, sizeof seconds);
}

}  // namespace

// One end (socket) of a pair; the epoll registration points here so an event names its side.
struct End {
  Pair* pair;
  int side;  // 0: client, 1: backend
};

// A route port's listening socket. Loops hold a reference while they accept from it, so the
// descriptor is closed only once no thread can still be inside accept4() on it (a closed number
// could otherwise be reused by an unrelated socket).
struct Listener {
  int fd = -1;
  // Listening on a loopback address while loopback connections get a congestion control that
  // does not pace: the first accepted client sets it on the listener too, and every later client
  // inherits it from there (no call per connection, none while a table opens).
  std::atomic<bool> congestion_pending{false};
  ~Listener() {
    if (fd >= 0) ::close(fd);
  }
};

// A natively accepted route port: its listener, the route JS pushed last, the balancer's state and
// the connections made through it. Everything but id, port and owner is guarded by mu. Lock order:
// a port's mu before a pair's mu, never the other way (loop threads release a pair's lock before
// accounting it here).
struct Port {
  uint32_t id = 0;
  int port = 0;
  int keepalive_ms = 0;
  // A steered port (port-steering.h): the socket that keeps the port bound, and the slot of the
  // steering listener its clients go to. -1 for a port with a listening socket of its own.
  int reserve_fd = -1;
  int steer_slot = -1;
  // The loop thread whose epoll set watches the listener; it accepts and spreads the clients.
  Loop* owner = nullptr;
  std::shared_ptr<Budget> budget;
  std::mutex mu;
  std::shared_ptr<Listener> listener;
  RouteSpec route;
  std::vector<int64_t> rr_current;
  uint32_t tie_break = 0;
  std::unordered_map<std::string, int64_t> active_by_backend;
  std::unordered_set<Pair*> conns;
  PortCounters c;
  bool retired = false;
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
  // Capacity taken from kStreamPipeBudget by each direction's pipe (0: kernel default or configured).
  int pipe_budget_[2] = {0, 0};
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

  // Natively accepted pairs only (port_ set). Connecting: the backend socket is not connected
  // yet, nothing is pumped. connecting_ and connect_deadline_ms_ are touched by the loop thread
  // only; backend_id_, epoch_, tried_, holds_backend_ and accounted_ under port_->mu.
  std::shared_ptr<Port> port_;
  bool connecting_ = false;
  // Backend sockets made for this pair so far (loop thread only).
  int attempts_ = 0;
  // The current attempt's backend is on this host (loop thread only).
  bool backend_loopback_ = false;
  int64_t connect_deadline_ms_ = 0;
  std::string backend_id_;
  uint64_t epoch_ = 0;
  std::vector<std::string> tried_;
  bool holds_backend_ = false;
  bool accounted_ = false;
  bool drain_expired_ = false;
  // Set by the JS thread when the backend leaves the table or drains; 0: not draining.
  std::atomic<int64_t> drain_deadline_ms_{0};

  // TLS termination (a natively accepted client of a terminating route). Until start_ is kNone the
  // client has no backend: the loop reads PostgreSQL's preamble or peeks at the first byte, then
  // runs the handshake; a backend is picked (from the route in force) only after it. Loop thread
  // only, under mu_.
  // kSettled: the handshake is done and the client sent nothing yet; the backend is connected after
  // the loop's next pass over its events, unless the client ended meanwhile.
  enum class Start : uint8_t { kNone, kSniff, kPreamble, kHandshake, kRefusing, kSettled };
  // kFail: the client is refused or failed its handshake; the caller counts it on the port, then
  // closes it (fail_reason_, fail_error_), so the count is visible before the client sees the end.
  enum class StartResult { kWait, kConnect, kClosed, kDefer, kFail };
  CloseReason fail_reason_ = CloseReason::kKilled;
  int fail_error_ = 0;
  StartResult Fail(CloseReason reason, int error) {
    fail_reason_ = reason;
    fail_error_ = error;
    return StartResult::kFail;
  }
  Start start_ = Start::kNone;
  int64_t start_deadline_ms_ = 0;
  int preambles_ = 0;
  std::shared_ptr<TlsServer> tls_;
  SSL* ssl_ = nullptr;
  SocketIo io_;
  // An SSL_read that needs the socket writable (or an SSL_write that needs it readable) is retried
  // on that edge.
  bool ssl_read_wants_write_ = false;
  bool ssl_write_wants_read_ = false;
  // The handshake last stopped for want of writing (else of reading) the client's socket.
  bool handshake_wants_write_ = false;
  // TLS towards the backend (tls-client.h), made with each connect attempt to a backend marked
  // `tls`; while it has not finished its start the pair stays connecting_.
  std::unique_ptr<BackendTls> btls_;
  // A client that was silent after its handshake gets its session tickets with the first bytes of
  // either side (TlsServer::IssueTickets), not before: a connection on which nothing is ever said
  // (a check that stays open a moment longer than the loop's pass) builds none.
  bool tickets_due_ = false;
  // What the start did to the port's counters, added under the port's lock by the caller.
  int start_handshakes_ = 0, start_handshake_errors_ = 0, start_refused_ = 0;

  StartResult RunStart(int64_t now, CloseEvent* ev);
  // Reads from side src: recv, or SSL_read on a TLS client. >0 bytes, 0 end of stream, -1 with errno.
  ssize_t In(int src, char* buffer, size_t len);
  // Writes to side dst: send, or SSL_write on a TLS client. >0 bytes taken, -1 with errno (EAGAIN
  // when the socket cannot take more now).
  // `flags` are added to a plaintext send() (MSG_MORE); TLS writes ignore them.
  ssize_t Out(int dst, const char* data, size_t len, int flags = 0);

  Turn Pump(int dir, int pipe_size, char* buffer, CloseEvent* ev);
  // Sends a copied read to the other side of direction dir. False when it could not all go out:
  // the rest is kept for EPOLLOUT, or the pair was closed on an error.
  bool SendCopy(int dir, const char* data, size_t len, CloseEvent* ev);
  void Close(CloseReason reason, int error, bool reset, CloseEvent* ev);
  void CloseFds(bool reset);
};

class Loop {
 public:
  Loop(Engine* engine, unsigned index, int pipe_size, CloseSink* sink)
      : engine_(engine), pipe_size_(pipe_size), sink_(sink) {
    epfd_ = epoll_create1(EPOLL_CLOEXEC);
    wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.ptr = nullptr;  // nullptr marks the wake-up eventfd
    epoll_ctl(epfd_, EPOLL_CTL_ADD, wake_fd_, &ev);
    thread_ = std::thread([this, index] {
      // Named, so that `top -H`, `ps -L` and perf tell the relay threads from Node's own.
      char name[16];
      std::snprintf(name, sizeof name, "sf-relay-%u", index);
      pthread_setname_np(pthread_self(), name);
      Run();
    });
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
    for (auto& h : handed_) ::close(h.second);
    handed_.clear();
    close(wake_fd_);
    close(epfd_);
  }

  std::shared_ptr<Pair> Add(int client_fd, int backend_fd, PairOptions&& options, int* err);

  size_t Size() {
    std::lock_guard<std::mutex> lock(mu_);
    return pairs_.size();
  }

  // Takes a natively accepted pair on this (the calling) loop thread and watches its client.
  void Adopt(const std::shared_ptr<Pair>& pair) {
    Track(pair);
    Watch(pair);
  }
  // The two halves of Adopt: the loop owns the pair; its client joins the epoll set.
  void Track(const std::shared_ptr<Pair>& pair);
  void Watch(const std::shared_ptr<Pair>& pair);
  // Relays a new plaintext pair's first bytes in the pass that accepted it, when its backend is on
  // this host and already connected (see the definition).
  void StartEarly(const std::shared_ptr<Pair>& pair);
  // Runs the start of an adopted client of a terminating route now, in the pass that accepted it,
  // as if epoll had reported it readable: its listener defers accepting until the first bytes are
  // there (SetDeferAccept), so the ClientHello (or SSLRequest) is read and answered without
  // waiting for the next epoll_wait. The edge its registration raises next finds nothing new
  // (RunStart reads again only after a new edge).
  void StartAccepted(const std::shared_ptr<Pair>& pair) {
    std::vector<std::shared_ptr<Pair>> unused;  // a pair in its start is never pumped
    Serve(pair.get(), &pair->ends_[0], EPOLLIN, &unused);
  }
  bool WatchListener(uint64_t tag, int fd) {
    epoll_event e{};
    e.events = EPOLLIN;
    e.data.u64 = tag;
    return epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &e) == 0;
  }
  // Queues a client another loop accepted for this one. True when the caller must Wake() this
  // loop: it waits in epoll_wait (or is about to) and no one woke it yet. A loop that is busy takes
  // its queue after its current batch of events without any wake-up, which saves the eventfd write
  // and read per handed client when the threads are loaded.
  bool Hand(const std::shared_ptr<Port>& port, int client_fd) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      handed_.emplace_back(port, client_fd);
    }
    // Paired with Run: the loop announces it will wait, then looks at handed_ready_; the caller
    // publishes handed_ready_, then looks at waiting_. One of the two sees the other's store.
    handed_ready_.store(true);
    return waiting_.exchange(false);
  }
  void Wake() {
    uint64_t one = 1;
    ssize_t ignored = write(wake_fd_, &one, sizeof one);
    (void)ignored;
  }

  int epfd_ = -1;
  // Natively accepted clients given to this loop and not yet gone (queued, connecting or relaying):
  // what the accepting loop compares to spread clients (Engine::PickLoop).
  std::atomic<int64_t> accepted_{0};

 private:
  void OnListener(uint64_t tag, int64_t now);
  // Reports a closed pair: to the port's accounting when natively accepted, to JS otherwise.
  void Report(Pair* pair, const CloseEvent& ev) {
    if (pair->port_) engine_->Unaccount(pair, ev);
    else (*sink_)(ev);
  }

  Engine* engine_;
  // Listeners resting after EMFILE/ENFILE: port id and when to watch it again.
  std::vector<std::pair<uint64_t, int64_t>> paused_;
  void Run();
  void Serve(Pair* pair, const End* end, uint32_t events, std::vector<std::shared_ptr<Pair>>* again);
  // Pairs that used up their turn in this pass, served again in the next without a new edge.
  std::vector<std::shared_ptr<Pair>> again_;
  void Sweep(int64_t now);
  // Adds the pairs queued by Add to the epoll set and takes the clients queued by Hand; runs on
  // the loop thread.
  void RegisterIncoming();

  const int pipe_size_;
  CloseSink* sink_;
  // The copy buffer of this thread; only Serve on this thread touches it, under one pair's lock.
  std::unique_ptr<char[]> buffer_{new char[kTlsBufferSize]};
  int wake_fd_ = -1;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
  // Owns every pair on this loop until the sweep finds it closed. The map is only changed between
  // two batches of events, so raw pointers from epoll stay valid for a whole batch.
  std::mutex mu_;
  std::unordered_map<Pair*, std::shared_ptr<Pair>> pairs_;
  // Pairs handed over but not yet in the epoll set (guarded by mu_).
  std::vector<std::shared_ptr<Pair>> incoming_;
  // Clients accepted by another loop for this one (guarded by mu_).
  std::vector<std::pair<std::shared_ptr<Port>, int>> handed_;
  // Something was handed since the loop last took its queues.
  std::atomic<bool> handed_ready_{false};
  // TLS clients whose handshake ended with nothing sent yet (Pair::Start::kSettled), queued during
  // this pass: their backends are connected at the end of the next pass (loop thread only).
  std::vector<std::shared_ptr<Pair>> settling_;
  void Settle(const std::shared_ptr<Pair>& pair);
  // The loop is in epoll_wait with a timeout, or about to be, and no one woke it yet.
  std::atomic<bool> waiting_{false};
};

void Pair::CloseFds(bool reset) {
  for (int side = 0; side < 2; side++) {
    if (fd_[side] < 0) continue;
    // Remove the registration explicitly: epoll keys on the open file description, and if anyone
    // else still held it, close() alone would leave events flowing for a dead pair. That holds for
    // natively accepted sockets too, though no one else is meant to hold them: a child process
    // between fork and exec holds every descriptor (CLOEXEC acts only at exec), and an event
    // delivered then would point at a freed Pair. Two syscalls per connection are the price.
    epoll_ctl(loop_->epfd_, EPOLL_CTL_DEL, fd_[side], nullptr);
    if (reset) {
      linger lg{1, 0};
      setsockopt(fd_[side], SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    CloseQuietly(fd_[side]);
  }
  if (ssl_ != nullptr) {
    // No close_notify: a pair closed here is reset or already ended; SSL_free sends nothing.
    SSL_free(ssl_);
    ssl_ = nullptr;
  }
  btls_.reset();
  for (int dir = 0; dir < 2; dir++) {
    CloseQuietly(pipe_r_[dir]);
    CloseQuietly(pipe_w_[dir]);
    in_pipe_[dir] = 0;
    if (pipe_budget_[dir] > 0) g_stream_pipe_bytes.fetch_sub(pipe_budget_[dir]);
    pipe_budget_[dir] = 0;
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
  // The source hung up after these bytes (epoll reported it with them): the loop reads its end
  // next, in this turn, and shuts the destination down or closes it. Sent with MSG_MORE, the bytes
  // wait for that FIN and leave in one segment with it, so the peer is woken once for both (a
  // reply and the server's close, the usual end of a request that asked the server to close).
  const int flags = hangup_[dir] ? MSG_MORE : 0;
  size_t sent = 0;
  while (sent < len) {
    ssize_t w = Out(dst, data + sent, len - sent, flags);
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

ssize_t Pair::In(int src, char* buffer, size_t len) {
  if (src == 1 && btls_) return btls_->Read(buffer, len);
  if (src == 1 || ssl_ == nullptr) return recv(fd_[src], buffer, len, 0);
  ssl_read_wants_write_ = false;
  const int n = SSL_read(ssl_, buffer, static_cast<int>(len));
  if (n > 0) {
    if (tickets_due_) {
      tickets_due_ = false;
      TlsServer::IssueTickets(ssl_);
    }
    return n;
  }
  switch (SSL_get_error(ssl_, n)) {
    case SSL_ERROR_WANT_READ:
      errno = EAGAIN;
      return -1;
    case SSL_ERROR_WANT_WRITE:
      ssl_read_wants_write_ = true;
      errno = EAGAIN;
      return -1;
    case SSL_ERROR_ZERO_RETURN:
      // close_notify, or (SSL_OP_IGNORE_UNEXPECTED_EOF) a TCP end without it.
      return 0;
    case SSL_ERROR_SYSCALL:
      ERR_clear_error();
      errno = io_.error != 0 ? io_.error : ECONNRESET;
      return -1;
    default:
      ERR_clear_error();
      errno = EPROTO;
      return -1;
  }
}

ssize_t Pair::Out(int dst, const char* data, size_t len, int flags) {
  if (dst == 1 && btls_) return btls_->Write(data, len);
  if (dst == 1 || ssl_ == nullptr) return send(fd_[dst], data, len, MSG_NOSIGNAL | MSG_DONTWAIT | flags);
  ssl_write_wants_read_ = false;
  if (tickets_due_) {
    tickets_due_ = false;
    TlsServer::IssueTickets(ssl_);  // they go out first, ahead of this write
  }
  const int n = SSL_write(ssl_, data, static_cast<int>(std::min<size_t>(len, INT32_MAX)));
  if (n > 0) return n;
  switch (SSL_get_error(ssl_, n)) {
    case SSL_ERROR_WANT_WRITE:
      errno = EAGAIN;
      return -1;
    case SSL_ERROR_WANT_READ:
      ssl_write_wants_read_ = true;
      errno = EAGAIN;
      return -1;
    case SSL_ERROR_SYSCALL:
      ERR_clear_error();
      errno = io_.error != 0 ? io_.error : EPIPE;
      return -1;
    default:
      ERR_clear_error();
      errno = EPROTO;
      return -1;
  }
}

// The client's start on a terminating route, as router/client-tls.ts runs it on the JS path:
// PostgreSQL's preamble (SSLRequest answered 'S', GSSENCRequest 'N', a CancelRequest relayed in
// plaintext, a plaintext StartupMessage refused with an ErrorResponse unless the policy is
// optional), or a peek at the first byte (a ClientHello, or plaintext: refused, or relayed when
// optional); then the handshake. Nothing is lost that the backend or OpenSSL must see: the
// preamble is peeked before it is read, and the first bytes read by the sniff go to OpenSSL (a
// ClientHello, through the BIO's prefix) or to the backend first (plaintext, in pending_). Reading
// them instead of peeking at one byte saves a system call per connection.
Pair::StartResult Pair::RunStart(int64_t now, CloseEvent* ev) {
  const int fd = fd_[0];
  for (;;) {
    switch (start_) {
      case Start::kNone:
        return StartResult::kConnect;
      case Start::kSniff: {
        // Empty at the last read, and no edge since (the one its registration raises, after a
        // start that ran right after accept4): no read to collect another EAGAIN.
        if (!readable_[0]) return StartResult::kWait;
        char first[kCopyBufferSize];
        const ssize_t n = recv(fd, first, sizeof first, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) {
          readable_[0] = false;
          return StartResult::kWait;
        }
        if (n <= 0) {
          Close(n == 0 ? CloseReason::kClientClosed : CloseReason::kClientError, n == 0 ? 0 : errno, false, ev);
          return StartResult::kClosed;
        }
        if (static_cast<unsigned char>(first[0]) == kTlsHandshakeRecord) {
          io_.prefix.assign(first, static_cast<size_t>(n));
          io_.prefix_off = 0;
          io_.prefix_drained = static_cast<size_t>(n) < sizeof first;
          start_ = Start::kHandshake;
          continue;
        }
        if (tls_->spec.optional) {
          // Plaintext on a route that allows it: relayed, what was read going first.
          pending_[0].assign(first, static_cast<size_t>(n));
          pending_off_[0] = 0;
          start_ = Start::kNone;
          return StartResult::kConnect;
        }
        // Plaintext on a route that requires TLS: refused without an answer.
        start_refused_++;
        return Fail(CloseReason::kKilled, 0);
      }
      case Start::kPreamble: {
        if (!readable_[0]) return StartResult::kWait;  // as in kSniff
        unsigned char b[8];
        const size_t want = 8;
        ssize_t n = recv(fd, b, want, MSG_PEEK);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) {
          readable_[0] = false;
          return StartResult::kWait;
        }
        if (n <= 0) {
          Close(n == 0 ? CloseReason::kClientClosed : CloseReason::kClientError, n == 0 ? 0 : errno, false, ev);
          return StartResult::kClosed;
        }
        if (b[0] == kTlsHandshakeRecord) {
          start_ = Start::kHandshake;
          continue;
        }
        if (static_cast<size_t>(n) < want) {
          if (hangup_[0]) {
            Close(CloseReason::kClientClosed, 0, false, ev);
            return StartResult::kClosed;
          }
          readable_[0] = false;
          return StartResult::kWait;  // the rest raises a new edge
        }
        const uint32_t length = Be32(b);
        const uint32_t code = Be32(b + 4);
        if (length == 8 && (code == kSslRequest || code == kGssencRequest)) {
          if (code == kGssencRequest && ++preambles_ > kMaxPreambles) {
            start_refused_++;
            return Fail(CloseReason::kKilled, 0);
          }
          ssize_t r = recv(fd, b, 8, 0);
          (void)r;
          // The router has no Kerberos: 'N' tells libpq to go on with an SSLRequest (or plaintext).
          const char answer = code == kSslRequest ? 'S' : 'N';
          if (send(fd, &answer, 1, MSG_NOSIGNAL | MSG_DONTWAIT) != 1) {
            Close(CloseReason::kClientError, errno, false, ev);
            return StartResult::kClosed;
          }
          if (code == kSslRequest) start_ = Start::kHandshake;
          continue;
        }
        if ((length == 16 && code == kCancelRequest) || tls_->spec.optional) {
          // A CancelRequest carries only a backend pid and secret and gets no answer; PostgreSQL
          // itself takes it in plaintext. With the optional policy, so is any plaintext client.
          start_ = Start::kNone;
          return StartResult::kConnect;
        }
        start_refused_++;
        const std::string& answer = PlaintextRefusal();
        ssize_t w = send(fd, answer.data(), answer.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)w;
        shutdown(fd, SHUT_WR);
        // The client reads the error and closes; what it sent is read and dropped until then, so
        // the close is a FIN, not a reset that could destroy the error before libpq reads it.
        start_ = Start::kRefusing;
        continue;
      }
      case Start::kSettled: {
        if (!readable_[0] && !hangup_[0] && SSL_has_pending(ssl_) == 0) return StartResult::kWait;
        char first[kCopyBufferSize];
        const ssize_t n = In(0, first, sizeof first);
        if (n > 0) {
          pending_[0].assign(first, static_cast<size_t>(n));
          pending_off_[0] = 0;
          start_ = Start::kNone;
          TlsServer::IssueTickets(ssl_);
          return StartResult::kConnect;
        }
        if (n == 0) {
          Close(CloseReason::kClientClosed, 0, false, ev);
          return StartResult::kClosed;
        }
        if (errno != EAGAIN) {
          Close(CloseReason::kClientError, errno, false, ev);
          return StartResult::kClosed;
        }
        readable_[0] = false;
        return StartResult::kDefer;
      }
      case Start::kRefusing: {
        char sink[512];
        ssize_t n = recv(fd, sink, sizeof sink, 0);
        if (n > 0) continue;
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return StartResult::kWait;
        Close(CloseReason::kClientClosed, 0, false, ev);
        return StartResult::kClosed;
      }
      case Start::kHandshake: {
        // The handshake waits for the socket the way it last asked for and no edge came since (as
        // in kSniff): OpenSSL would only meet the same EAGAIN again.
        if (ssl_ != nullptr && (handshake_wants_write_ ? !writable_[0] : !readable_[0])) return StartResult::kWait;
        if (ssl_ == nullptr) {
          ssl_ = tls_->NewSsl(now);
          if (ssl_ == nullptr) {
            // No certificate ever loaded (TlsError says why): the client cannot be served.
            start_handshake_errors_++;
            return Fail(CloseReason::kKilled, 0);
          }
          io_.fd = fd;
          BIO* bio = BIO_new(SocketBioMethod());
          BIO_set_data(bio, &io_);
          SSL_set_bio(ssl_, bio, bio);
          SSL_set_accept_state(ssl_);
        }
        const int r = SSL_do_handshake(ssl_);
        if (r == 1) {
          start_handshakes_++;
          // Nothing answers the client's Finished (the session tickets wait for its first bytes),
          // and after the server's flight the socket delays its ACKs, so a client without
          // TCP_NODELAY (hiredis, many drivers) held its first request back for the 40 ms of a
          // delayed ACK (Nagle waits for the Finished to be acknowledged). Acknowledge it now.
          const int quick = 1;
          setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &quick, sizeof quick);
          start_ = Start::kNone;
          // What came with the end of the handshake (OpenSSL reads ahead) is read before a
          // backend is connected: a client that already ended (a handshake-only check, `openssl
          // s_time`) is closed without connecting any backend, as HAProxy does; its first bytes
          // wait in the pair's buffer and go out first once the backend is connected. A client
          // that sent nothing yet is settled: its backend is connected after the loop's next pass
          // over its events (no sleep: that pass does not wait), which gives a close_notify sent
          // right after the handshake the time to arrive.
          start_ = Start::kSettled;
          // A send that failed (the client reset or is gone) skips the wait: the read below ends it.
          if (SSL_has_pending(ssl_) == 0 && !hangup_[0] && io_.short_read && io_.error == 0) {
            readable_[0] = false;  // drained: the next bytes raise an edge
            return StartResult::kDefer;
          }
          continue;
        }
        const int e = SSL_get_error(ssl_, r);
        // Either ends at an EAGAIN of the socket BIO: the next edge of that kind moves it on.
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
          handshake_wants_write_ = e == SSL_ERROR_WANT_WRITE;
          (handshake_wants_write_ ? writable_ : readable_)[0] = false;
          return StartResult::kWait;
        }
        ERR_clear_error();
        start_handshake_errors_++;
        return Fail(CloseReason::kClientError, io_.error != 0 ? io_.error : EPROTO);
      }
    }
  }
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
      ssize_t n = Out(dst, pending.data() + pending_off_[dir], pending.size() - pending_off_[dir]);
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
        // Half-close: the peer sees our FIN only after everything before it was delivered. When
        // the other direction is already shut, the pair closes right below, and close() sends the
        // same FIN after the same queued bytes (both receive queues were read to their end, so it
        // is no reset): the shutdown call is skipped.
        if (!shut_[1 - dir]) {
          // To a TLS client: close_notify first, then FIN (a client may go on sending; TLS 1.3
          // and OpenSSL keep reading after a sent close_notify).
          if (dst == 0 && ssl_ != nullptr) {
            SSL_shutdown(ssl_);
            ERR_clear_error();
          }
          if (dst == 1 && btls_) btls_->Shutdown();
          shutdown(fd_[dst], SHUT_WR);
        }
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
      const bool tls = ssl_ != nullptr || btls_;
      const size_t want = tls ? kTlsBufferSize : kCopyBufferSize;
      n = In(src, buffer, want);
      if (n > 0) {
        if (tls && src == 1 && btls_) {
          // From a TLS backend: records gathered as from a TLS client (below).
          bool ended = false;
          while (static_cast<size_t>(n) + kTlsRecordSize <= want && (btls_->MayHaveMore() || hangup_[1])) {
            const ssize_t more = In(1, buffer + n, want - static_cast<size_t>(n));
            if (more > 0) {
              n += more;
              continue;
            }
            if (more == 0 || errno != EAGAIN) ended = true;
            else readable_[1] = false;
            break;
          }
          if (!ended && !btls_->MayHaveMore() && !hangup_[1]) readable_[1] = false;
        } else if (tls) {
          // Decrypted or to be encrypted: never spliced. The socket is drained when OpenSSL's last
          // read of it came back short and it holds no record back.
          if (src == 0 && ssl_ != nullptr) {
            // SSL_read hands over one record at a time: gather what is known to be there.
            bool ended = false;
            while (static_cast<size_t>(n) + kTlsRecordSize <= want &&
                   (SSL_has_pending(ssl_) != 0 || !io_.short_read || hangup_[0])) {
              const ssize_t more = In(0, buffer + n, want - static_cast<size_t>(n));
              if (more > 0) {
                n += more;
                continue;
              }
              // An end (close_notify) or an error is met again by the next read, after these
              // bytes went out: the socket stays marked readable for it, as no edge may follow.
              if (more == 0 || errno != EAGAIN) ended = true;
              else readable_[0] = false;
              break;
            }
            if (!ended && io_.short_read && SSL_has_pending(ssl_) == 0 && !hangup_[0]) readable_[0] = false;
          }
          if (src == 0 && ssl_ == nullptr && static_cast<size_t>(n) < want && !hangup_[0]) readable_[0] = false;
          if (src == 1 && static_cast<size_t>(n) < want && !hangup_[1]) readable_[1] = false;
        } else if (static_cast<size_t>(n) == kCopyBufferSize) {
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
        if (pipe_size > 0) {
          fcntl(p[1], F_SETPIPE_SZ, pipe_size);
        } else if (g_stream_pipe_bytes.fetch_add(kStreamPipeSize) + kStreamPipeSize <= kStreamPipeBudget) {
          // Refused (EPERM over the user's limit): the pipe keeps its default and the budget.
          if (fcntl(p[1], F_SETPIPE_SZ, kStreamPipeSize) >= kStreamPipeSize) pipe_budget_[dir] = kStreamPipeSize;
          else g_stream_pipe_bytes.fetch_sub(kStreamPipeSize);
        } else {
          g_stream_pipe_bytes.fetch_sub(kStreamPipeSize);
        }
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
  if (wake) Wake();
  return pair;
}

void Loop::RegisterIncoming() {
  std::vector<std::shared_ptr<Pair>> incoming;
  std::vector<std::pair<std::shared_ptr<Port>, int>> handed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    incoming.swap(incoming_);
    handed.swap(handed_);
    handed_ready_.store(false);
  }
  for (auto& h : handed) engine_->Accept(this, h.first, h.second);
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
  bool connect_failed = false;
  // The backend's TLS start, when it ran in this call and did not have to wait.
  BackendTls::Step backend_tls = BackendTls::Step::kWait;
  CloseEvent ev{};
  Pair::StartResult start = Pair::StartResult::kConnect;
  bool counted = false;
  bool starting = false;
  // Already waiting in settling_ or the loop's due list: not queued twice.
  bool deferred = false;
  int counts[3] = {0, 0, 0};
  {
    std::lock_guard<std::mutex> lock(pair->mu_);
    if (pair->closed_.load()) return;
    if (end != nullptr) {
      // Errors and hang-ups surface as the result of the next read or write on that side.
      if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) pair->readable_[end->side] = true;
      if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) pair->hangup_[end->side] = true;
      if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) pair->writable_[end->side] = true;
      if (end->side == 0 && pair->ssl_ != nullptr) {
        if (pair->ssl_read_wants_write_ && (events & EPOLLOUT)) pair->readable_[0] = true;
        if (pair->ssl_write_wants_read_ && (events & EPOLLIN)) pair->writable_[0] = true;
      }
      if (end->side == 1 && pair->btls_) {
        if (pair->btls_->read_wants_write && (events & EPOLLOUT)) pair->readable_[1] = true;
        if (pair->btls_->write_wants_read && (events & EPOLLIN)) pair->writable_[1] = true;
      }
    }
    if (pair->start_ != Pair::Start::kNone) {
      // Only the client's events move its start (it has no backend yet).
      if (end == nullptr || end->side != 0) return;
      starting = true;
      deferred = pair->start_ == Pair::Start::kSettled;
      start = pair->RunStart(NowMs(), &ev);
      counts[0] = pair->start_handshakes_;
      counts[1] = pair->start_handshake_errors_;
      counts[2] = pair->start_refused_;
      pair->start_handshakes_ = pair->start_handshake_errors_ = pair->start_refused_ = 0;
      counted = counts[0] + counts[1] + counts[2] > 0;
    } else if (pair->connecting_ && pair->btls_ && pair->btls_->tcp_up) {
      // Connected, in the backend's TLS start: any event of the backend moves it on.
      if (end == nullptr || end->side != 1) return;
      backend_tls = pair->btls_->Handshake();
      if (backend_tls == BackendTls::Step::kWait) return;
    } else if (pair->connecting_) {
      // Only the backend's first writable (or error) edge ends a connect; until then the client's
      // bytes wait in its receive queue, as pauseOnConnect keeps them on the JS path.
      if (end == nullptr || end->side != 1 || (events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) == 0) return;
      int err = 0;
      socklen_t len = sizeof err;
      // The first attempt's socket is the only one that ever had this End registered, so its edge
      // is its own; a connecting TCP socket reports EPOLLOUT only once established (tcp_poll), and
      // a failed connect always adds EPOLLERR or EPOLLHUP. Such an edge needs no SO_ERROR and no
      // getpeername: two syscalls less per connection. Retries keep both checks.
      const bool clean_first = pair->attempts_ == 1 && (events & EPOLLOUT) && !(events & (EPOLLERR | EPOLLHUP));
      if (!clean_first && getsockopt(pair->fd_[1], SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
      if (err == 0 && !clean_first) {
        // An edge left over from a previous attempt's socket must not pass for this one's.
        sockaddr_storage peer;
        socklen_t plen = sizeof peer;
        if (getpeername(pair->fd_[1], reinterpret_cast<sockaddr*>(&peer), &plen) != 0) {
          if (errno == ENOTCONN) return;
          err = errno;
        }
      }
      if (err != 0) {
        connect_failed = true;
      } else if (pair->btls_) {
        // TCP is up; the backend's TLS start (tls-client.h) runs before the first client byte.
        pair->btls_->tcp_up = true;
        backend_tls = pair->btls_->Handshake();
        if (backend_tls == BackendTls::Step::kWait) return;
      } else {
        pair->connecting_ = false;
        pair->writable_[1] = true;
        pair->readable_[0] = true;
      }
    }
    if (backend_tls == BackendTls::Step::kDone) {
      pair->connecting_ = false;
      pair->writable_[1] = true;
      // What the backend sent with the end of its handshake (TLS 1.3 session tickets) is read now.
      pair->readable_[1] = true;
      pair->readable_[0] = true;
    }
  }
  if (connect_failed || backend_tls == BackendTls::Step::kFailed) {
    // Fail closed: a backend that declined TLS or failed verification is passed over (counted
    // apart from refused connects, as on the JS path), never used in plaintext.
    engine_->ConnectNext(pair->shared_from_this(), connect_failed ? 1 : 3);
    return;
  }
  if (starting) {
    if (counted) {
      std::lock_guard<std::mutex> lock(pair->port_->mu);
      pair->port_->c.tls_handshakes += counts[0];
      pair->port_->c.tls_handshake_errors += counts[1];
      pair->port_->c.refused_plaintext += counts[2];
    }
    if (start == Pair::StartResult::kFail) {
      {
        std::lock_guard<std::mutex> lock(pair->mu_);
        if (pair->closed_.load()) return;  // destroyed meanwhile, and reported by who did it
        pair->Close(pair->fail_reason_, pair->fail_error_, false, &ev);
      }
      Report(pair, ev);
    } else if (start == Pair::StartResult::kClosed) Report(pair, ev);
    // The handshake is done (or the client relayed in plaintext): the backend is picked now, from
    // the route in force, so a fence applied meanwhile cannot be missed.
    else if (start == Pair::StartResult::kConnect) engine_->ConnectNext(pair->shared_from_this(), 0);
    else if (start == Pair::StartResult::kDefer && !deferred) settling_.push_back(pair->shared_from_this());
    return;
  }
  {
    std::lock_guard<std::mutex> lock(pair->mu_);
    if (pair->closed_.load() || pair->connecting_ || pair->start_ != Pair::Start::kNone) return;
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
  Report(pair, ev);
}

void Loop::Sweep(int64_t now) {
  std::vector<std::shared_ptr<Pair>> idle;
  std::vector<std::shared_ptr<Pair>> drained;
  std::vector<std::shared_ptr<Pair>> timed_out;
  // Clients whose preamble or TLS handshake did not end in time (the router's ClientHello timeout).
  std::vector<std::shared_ptr<Pair>> unstarted;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = pairs_.begin(); it != pairs_.end();) {
      Pair* p = it->first;
      if (p->closed_.load()) {
        it = pairs_.erase(it);
        continue;
      }
      int64_t drain = p->drain_deadline_ms_.load(std::memory_order_relaxed);
      if (drain > 0 && now >= drain) {
        drained.push_back(it->second);
        ++it;
        continue;
      }
      if (p->start_ != Pair::Start::kNone) {
        if (p->start_ != Pair::Start::kSettled && now >= p->start_deadline_ms_) unstarted.push_back(it->second);
        ++it;
        continue;
      }
      if (p->connecting_) {
        if (now >= p->connect_deadline_ms_) timed_out.push_back(it->second);
        ++it;
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
    Report(p.get(), ev);
  }
  for (auto& p : drained) {
    CloseEvent ev{};
    {
      std::lock_guard<std::mutex> lock(p->mu_);
      if (p->closed_.load()) continue;
      p->drain_expired_ = true;
      p->Close(CloseReason::kKilled, 0, false, &ev);
    }
    Report(p.get(), ev);
  }
  for (auto& p : timed_out) {
    if (!p->closed_.load() && p->connecting_) engine_->ConnectNext(p, 2);
  }
  for (auto& p : unstarted) {
    CloseEvent ev{};
    bool failed;
    {
      std::lock_guard<std::mutex> lock(p->mu_);
      if (p->closed_.load() || p->start_ == Pair::Start::kNone) continue;
      // A refused client that does not close is only let go; anything else failed its handshake.
      failed = p->start_ != Pair::Start::kRefusing;
      p->Close(CloseReason::kKilled, 0, false, &ev);
    }
    if (failed) {
      std::lock_guard<std::mutex> lock(p->port_->mu);
      p->port_->c.tls_handshake_errors++;
    }
    Report(p.get(), ev);
  }
  for (auto it = paused_.begin(); it != paused_.end();) {
    if (now < it->second) {
      ++it;
      continue;
    }
    if (it->first & kSteerTag) {
      std::shared_ptr<Listener> listener = engine_->SteerListener(static_cast<unsigned>(it->first & 0xffff));
      if (listener) WatchListener(it->first, listener->fd);
    } else if (std::shared_ptr<Port> port = engine_->FindPort(static_cast<uint32_t>(it->first & ~kListenerTag))) {
      std::lock_guard<std::mutex> lock(port->mu);
      if (port->listener) WatchListener(it->first, port->listener->fd);
    }
    it = paused_.erase(it);
  }
}

void Loop::Track(const std::shared_ptr<Pair>& pair) {
  std::lock_guard<std::mutex> lock(mu_);
  pairs_.emplace(pair.get(), pair);
}

void Loop::Watch(const std::shared_ptr<Pair>& pair) {
  CloseEvent ev{};
  {
    std::lock_guard<std::mutex> lock(pair->mu_);
    if (pair->closed_.load()) return;
    epoll_event e{};
    e.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    e.data.ptr = &pair->ends_[0];
    if (epoll_ctl(epfd_, EPOLL_CTL_ADD, pair->fd_[0], &e) == 0) return;
    pair->Close(CloseReason::kClientError, errno, false, &ev);
  }
  Report(pair.get(), ev);
}

// A connect to a backend on this host has completed when connect() returns (the handshake ran
// inside the call), and a client that speaks first has usually sent its first bytes before it was
// accepted. Relaying them now, instead of after the backend's writable edge in the next pass, saves
// a pass of the loop per connection and gets the request to the backend sooner. TCP_INFO is the
// proof of the connect (one getsockopt); a connect still under way, or a backend that is not local,
// waits for its edge as before, and a refused one fails over there.
void Loop::StartEarly(const std::shared_ptr<Pair>& pair) {
  {
    std::lock_guard<std::mutex> lock(pair->mu_);
    if (pair->closed_.load() || !pair->connecting_ || pair->btls_ || pair->attempts_ != 1 || !pair->backend_loopback_)
      return;
    tcp_info info{};
    socklen_t len = sizeof info;
    if (getsockopt(pair->fd_[1], IPPROTO_TCP, TCP_INFO, &info, &len) != 0 || info.tcpi_state != TCP_ESTABLISHED) return;
    pair->connecting_ = false;
    pair->writable_[1] = true;
    pair->readable_[0] = true;
  }
  Serve(pair.get(), nullptr, 0, &again_);
}

void Loop::OnListener(uint64_t tag, int64_t now) {
  // A port's own listener, or a steering listener whose clients came through many ports.
  const bool steering = (tag & kSteerTag) != 0;
  std::shared_ptr<Port> port;
  std::shared_ptr<Listener> listener;
  if (steering) {
    listener = engine_->SteerListener(static_cast<unsigned>(tag & 0xffff));
  } else {
    port = engine_->FindPort(static_cast<uint32_t>(tag & ~kListenerTag));
    if (!port) return;
    std::lock_guard<std::mutex> lock(port->mu);
    listener = port->listener;
  }
  if (!listener) return;
  // Loops given a client in this batch that need a wake-up, woken once each after the batch.
  std::vector<Loop*> wake;
  bool unpaced_batch = false;
  for (int i = 0; i < kAcceptBatch; i++) {
    int fd = accept4(listener->fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      if (unpaced_batch || (listener->congestion_pending.load(std::memory_order_relaxed) &&
                             listener->congestion_pending.exchange(false, std::memory_order_relaxed))) {
        // Clients queued before the listener changed were made with the default: this batch's too.
        if (!unpaced_batch) SetUnpacedCongestion(listener->fd);
        unpaced_batch = true;
        SetUnpacedCongestion(fd);
      }
      if (steering) {
        port = engine_->SteeredPort(fd);
        if (!port) {
          // Its port left the table after the client was queued: refused, as a closed listener's
          // queue is.
          CloseWithReset(fd);
          continue;
        }
      }
      Loop* to = engine_->PickLoop(this);
      if (to == this) {
        engine_->Accept(this, port, fd);
      } else if (to->Hand(port, fd)) {
        wake.push_back(to);
      }
      continue;
    }
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
      epoll_ctl(epfd_, EPOLL_CTL_DEL, listener->fd, nullptr);
      paused_.emplace_back(tag, now + kAcceptPauseMs);
    }
    break;
  }
  for (Loop* to : wake) to->Wake();
}

void Loop::Settle(const std::shared_ptr<Pair>& pair) {
  {
    std::lock_guard<std::mutex> lock(pair->mu_);
    if (pair->closed_.load() || pair->start_ != Pair::Start::kSettled) return;
    pair->start_ = Pair::Start::kNone;
    // The client stayed past a pass of the loop: its session tickets go with the first bytes.
    pair->tickets_due_ = true;
  }
  engine_->ConnectNext(pair, 0);
}

void Loop::Run() {
  epoll_event events[kMaxEvents];
  std::vector<std::shared_ptr<Pair>> retry;
  std::vector<std::shared_ptr<Pair>> due;
  int64_t last_sweep = NowMs();
  while (!stopping_.load()) {
    int timeout = again_.empty() && settling_.empty() ? kSweepPeriodMs : 0;
    if (timeout > 0) {
      waiting_.store(true);
      if (handed_ready_.load()) timeout = 0;  // handed meanwhile: take it now, do not sleep
    }
    int n = epoll_wait(epfd_, events, kMaxEvents, timeout);
    waiting_.store(false);
    if (n < 0 && errno != EINTR) break;
    retry.swap(again_);
    again_.clear();
    // Settled in the previous pass: connected once this pass's events (a close_notify) are seen.
    due.swap(settling_);
    for (int i = 0; i < n; i++) {
      if (events[i].data.u64 & kListenerTag) {
        OnListener(events[i].data.u64, NowMs());
        continue;
      }
      End* end = static_cast<End*>(events[i].data.ptr);
      if (end == nullptr) {
        uint64_t v;
        ssize_t ignored = read(wake_fd_, &v, sizeof v);
        (void)ignored;
        RegisterIncoming();
        continue;
      }
      Serve(end->pair, end, events[i].events, &again_);
    }
    // Pairs that used up their turn continue here; edge-triggered epoll will not report them again.
    for (auto& p : retry) Serve(p.get(), nullptr, 0, &again_);
    retry.clear();
    for (auto& p : due) Settle(p);
    due.clear();
    // Clients handed while this loop was busy (no wake-up was sent for them).
    if (handed_ready_.load()) RegisterIncoming();
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
  for (unsigned i = 0; i < threads; i++) loops_.push_back(std::make_unique<Loop>(this, i, pipe_size, sink_.get()));
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

std::vector<int64_t> Engine::AcceptedPerThread() const {
  std::vector<int64_t> out;
  for (auto& loop : loops_) out.push_back(loop->accepted_.load());
  return out;
}

Loop* Engine::PickLoop(Loop* self) {
  // The loop with the fewest natively accepted clients, the accepting one on a tie (it needs no
  // hand-over). Loads are read without a lock: two loops accepting at once may both pick the same
  // one, which the next clients even out.
  Loop* best = self;
  int64_t least = self->accepted_.load(std::memory_order_relaxed);
  for (auto& loop : loops_) {
    const int64_t load = loop->accepted_.load(std::memory_order_relaxed);
    if (load < least) {
      least = load;
      best = loop.get();
    }
  }
  best->accepted_.fetch_add(1, std::memory_order_relaxed);
  return best;
}

// --- Native accept path -------------------------------------------------------------------------

bool Budget::Admit(int64_t own_active, bool reserved) {
  std::lock_guard<std::mutex> lock(mu);
  const int64_t own_unused = reserved ? std::max<int64_t>(0, reserve - own_active) : 0;
  const int64_t others_unused = reserve * reserved_bindings - reserved_in_use - own_unused;
  if (active >= limit - others_unused) {
    refused_global++;
    return false;
  }
  active++;
  if (reserved && own_active < reserve) reserved_in_use++;
  return true;
}

void Budget::Release(int64_t own_active_after, bool reserved) {
  std::lock_guard<std::mutex> lock(mu);
  active--;
  if (reserved && own_active_after < reserve) reserved_in_use--;
}

namespace {

bool Eligible(const BackendSpec& b) { return b.state == BackendSpec::kActive || b.state == BackendSpec::kSelfLoop; }

bool Tried(const std::vector<std::string>& tried, const std::string& id) {
  return std::find(tried.begin(), tried.end(), id) != tried.end();
}

// The balancers of router/balancer-*.ts over the pushed backends; port->mu is held. A self-loop
// backend is chosen like an active one and refused by the caller, so it is counted as JS does.
int PickIndex(Port& port, const std::vector<std::string>& tried) {
  const auto& bs = port.route.backends;
  const int n = static_cast<int>(bs.size());
  switch (port.route.mode) {
    case RouteMode::kPrimary: {
      // The active primary with the highest epoch; never a replica, no failover.
      int best = -1;
      for (int i = 0; i < n; i++) {
        if (!bs[i].primary || !Eligible(bs[i])) continue;
        if (best < 0 || bs[i].epoch > bs[best].epoch) best = i;
      }
      return best >= 0 && !Tried(tried, bs[best].id) ? best : -1;
    }
    case RouteMode::kRoundRobin: {
      // Smooth weighted round-robin (nginx).
      int64_t total = 0;
      int best = -1;
      for (int i = 0; i < n; i++) {
        if (!Eligible(bs[i]) || bs[i].weight <= 0 || Tried(tried, bs[i].id)) continue;
        port.rr_current[i] += bs[i].weight;
        total += bs[i].weight;
        if (best < 0 || port.rr_current[i] > port.rr_current[best]) best = i;
      }
      if (best >= 0) port.rr_current[best] -= total;
      return best;
    }
    case RouteMode::kLeastConn: {
      // Fewest live connections per weight; ties rotate.
      int best = -1;
      double best_load = 0;
      const int start = n > 0 ? static_cast<int>(port.tie_break++ % static_cast<uint32_t>(n)) : 0;
      for (int k = 0; k < n; k++) {
        const int i = (start + k) % n;
        if (!Eligible(bs[i]) || bs[i].weight <= 0 || Tried(tried, bs[i].id)) continue;
        auto it = port.active_by_backend.find(bs[i].id);
        const double load = (it == port.active_by_backend.end() ? 0.0 : static_cast<double>(it->second)) / bs[i].weight;
        if (best < 0 || load < best_load) {
          best = i;
          best_load = load;
        }
      }
      return best;
    }
  }
  return -1;
}

enum class Fate { kKeep, kDrain, kKill };

// router/route-binding.ts connectionFate: fencing wins over everything.
Fate FateOf(const RouteSpec& route, const std::string& id, uint64_t epoch) {
  const BackendSpec* now = nullptr;
  for (const auto& b : route.backends) {
    if (b.id == id) {
      now = &b;
      break;
    }
  }
  if (now == nullptr) return Fate::kDrain;
  if (now->state == BackendSpec::kFenced || now->epoch > epoch) return Fate::kKill;
  if (route.mode == RouteMode::kPrimary) {
    if (!now->primary) return Fate::kKill;
    for (const auto& b : route.backends) {
      if (b.primary && b.state != BackendSpec::kFenced && b.epoch > now->epoch) return Fate::kKill;
    }
  }
  if (now->state == BackendSpec::kDraining) return Fate::kDrain;
  return Fate::kKeep;
}

// How many shares a batch of n ports opens in: one per relay thread and core, each of at least
// kPortsPerOpenShare ports.
size_t OpenShares(size_t n, size_t loops) {
  const size_t hw = std::max(1u, std::thread::hardware_concurrency());
  return std::max<size_t>(1, std::min({loops, hw, n / kPortsPerOpenShare}));
}

// Runs open_share(0 .. shares-1), share 0 on this thread and each other on a thread of its own
// (on this one too when no thread can be had), and returns once all are done.
template <typename Fn>
void RunShares(size_t shares, Fn& open_share) {
  std::vector<std::thread> helpers;
  for (size_t share = 1; share < shares; share++) {
    try {
      helpers.emplace_back(std::ref(open_share), share);
    } catch (const std::system_error&) {
      open_share(share);
    }
  }
  open_share(0);
  for (auto& helper : helpers) helper.join();
}

void SetBackendOptions(int fd, int keepalive_ms) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (keepalive_ms > 0) {
    int idle = std::max(1, keepalive_ms / 1000);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
  }
}

}  // namespace

struct Engine::OpenRequest {
  const std::shared_ptr<Budget>& budget;
  const std::string& host;
  const std::vector<int>& port_numbers;
  std::vector<RouteSpec>& routes;
  int backlog;
  bool reuse_port;
  int keepalive_ms;
  sockaddr_storage addr{};
  socklen_t addr_len = 0;
  // One per port: its address (the host's, with the port's number).
  std::vector<ListenRequest> requests;
  std::vector<int64_t> out;
  // Clients of a port on a loopback address are on this host too.
  bool unpaced_clients = false;
};

std::vector<int64_t> Engine::OpenPorts(const std::shared_ptr<Budget>& budget, const std::string& host,
                                       const std::vector<int>& port_numbers, std::vector<RouteSpec>&& routes,
                                       int backlog, bool reuse_port, int keepalive_ms, int64_t steer_min_ports) {
  const size_t n = port_numbers.size();
  OpenRequest req{budget, host, port_numbers, routes, backlog, reuse_port, keepalive_ms, {}, 0, {}, {}, false};
  req.out.assign(n, -EINVAL);
  auto* v4 = reinterpret_cast<sockaddr_in*>(&req.addr);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&req.addr);
  if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    req.addr_len = sizeof(sockaddr_in);
  } else if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    req.addr_len = sizeof(sockaddr_in6);
  } else {
    return req.out;
  }
  req.requests.resize(n);
  for (size_t i = 0; i < n; i++) {
    req.requests[i].addr = req.addr;
    req.requests[i].addr_len = req.addr_len;
    const uint16_t port_be = htons(static_cast<uint16_t>(port_numbers[i]));
    if (req.addr.ss_family == AF_INET) reinterpret_cast<sockaddr_in*>(&req.requests[i].addr)->sin_port = port_be;
    else reinterpret_cast<sockaddr_in6*>(&req.requests[i].addr)->sin6_port = port_be;
  }
  req.unpaced_clients = IsLoopback(req.addr) && LoopbackCongestion() != nullptr;
  std::vector<size_t> idx(n);
  for (size_t i = 0; i < n; i++) idx[i] = i;
  // Steered where it can be; what could not be steered gets listening sockets.
  if (SteeringUsable(n, req.addr, reuse_port, steer_min_ports)) OpenSteered(req, &idx);
  if (!idx.empty()) OpenListening(req, idx);
  return std::move(req.out);
}

void Engine::OpenListening(OpenRequest& req, const std::vector<size_t>& idx) {
  const size_t n = idx.size();
  ListenBatchOptions options;
  options.backlog = req.backlog;
  options.reuse_port = req.reuse_port;
  options.keepalive_ms = req.keepalive_ms;
  // A big batch opens in shares, one per relay thread, each on a thread of its own with its own
  // ring: the kernel work of a port (socket, bind, listen, registration) takes locks of its own
  // port's hash buckets and of one epoll set, so shares on different cores hardly wait for each
  // other, and 10,000 ports open in about half the wall time on two cores for the same CPU time
  // (docs/native-relay.md, "Opening many ports"). Each share's ports are watched by one loop
  // thread, so that no two shares register with the same epoll set.
  const size_t shares = OpenShares(n, loops_.size());
  ReserveDescriptors(n);
  size_t first_loop = 0;
  if (shares > 1) {
    std::lock_guard<std::mutex> lock(ports_mu_);
    first_loop = next_listener_loop_;
    next_listener_loop_ += shares;
  }
  std::vector<std::shared_ptr<Port>> made(n);
  std::vector<int> rc(n, 0);
  auto open_share = [&](size_t share) {
    const size_t lo = n * share / shares;
    const size_t hi = n * (share + 1) / shares;
    std::vector<ListenRequest> share_requests;
    share_requests.reserve(hi - lo);
    for (size_t j = lo; j < hi; j++) share_requests.push_back(req.requests[idx[j]]);
    ListenBatch batch(hi - lo);
    std::vector<int> fds = batch.Sockets(share_requests);
    for (size_t j = lo; j < hi; j++) {
      const size_t i = idx[j];
      if (fds[j - lo] < 0) {
        req.out[i] = fds[j - lo];
        continue;
      }
      auto port = std::make_shared<Port>();
      port->port = req.port_numbers[i];
      port->keepalive_ms = req.keepalive_ms;
      port->budget = req.budget;
      port->listener = std::make_shared<Listener>();
      port->listener->fd = fds[j - lo];
      port->listener->congestion_pending.store(req.unpaced_clients);
      port->route = std::move(req.routes[i]);
      // Before listen(), so that no client of a terminating route is accepted without it.
      if (port->route.tls) SetDeferAccept(port->listener->fd, true);
      port->rr_current.assign(port->route.backends.size(), 0);
      made[j] = std::move(port);
    }
    // Each port is in the table, with its route and its listening descriptor, before the kernel is
    // asked to register it: the first connection finds everything in place.
    {
      std::lock_guard<std::mutex> lock(ports_mu_);
      for (size_t j = lo; j < hi; j++) {
        if (!made[j]) continue;
        Port& port = *made[j];
        // Listeners are spread over the loops; each loop spreads the clients it accepts.
        port.owner = shares == 1 ? loops_[next_listener_loop_++ % loops_.size()].get()
                                 : loops_[(first_loop + share) % loops_.size()].get();
        port.id = next_port_id_++;
        if (next_port_id_ >= (1u << 31)) next_port_id_ = 1;
        ports_.emplace(port.id, made[j]);
        share_requests[j - lo].epfd = port.owner->epfd_;
        share_requests[j - lo].epoll_data = kListenerTag | port.id;
      }
    }
    std::vector<int> share_rc = batch.Listen(fds, share_requests, options);
    std::copy(share_rc.begin(), share_rc.end(), rc.begin() + static_cast<ptrdiff_t>(lo));
  };
  RunShares(shares, open_share);
  for (size_t j = 0; j < n; j++) {
    if (!made[j]) continue;
    const size_t i = idx[j];
    if (rc[j] == 0) {
      req.out[i] = made[j]->id;
      continue;
    }
    // The registration is the last step, so a failed port was never watched and accepted nothing;
    // it is retired like any other (its listener closed) and forgotten.
    req.out[i] = rc[j];
    RetirePort(made[j]->id);
    ReleasePort(made[j]->id);
  }
}

bool Engine::SteeringUsable(size_t ports, const sockaddr_storage& addr, bool reuse_port, int64_t steer_min_ports) {
  // Worker processes sharing ports through SO_REUSEPORT would each attach a program, and the first
  // would take every connection; IPv6 hosts keep listening sockets (the program looks at IPv4).
  const size_t min_ports = steer_min_ports >= 0 ? static_cast<size_t>(steer_min_ports) : SteerMinPorts();
  if (!SteeringEnabled() || ports == 0 || ports < min_ports || reuse_port || addr.ss_family != AF_INET) {
    return false;
  }
  std::lock_guard<std::mutex> lock(steer_mu_);
  if (!steer_tried_) {
    steer_tried_ = true;
    steering_ = PortSteering::Create(kMaxSteerTargets, &steer_reason_);
  }
  return steering_ != nullptr;
}

int Engine::SteerSlot(const std::string& host, const sockaddr_storage& addr, socklen_t addr_len, int backlog,
                      int keepalive_ms, bool defer, const std::vector<int>* avoid) {
  std::lock_guard<std::mutex> lock(steer_mu_);
  if (!steering_) return -1;
  for (size_t slot = 0; slot < steer_targets_.size(); slot++) {
    const SteerTarget& t = steer_targets_[slot];
    if (t.host == host && t.backlog == backlog && t.keepalive_ms == keepalive_ms && t.defer == defer) {
      return static_cast<int>(slot);
    }
  }
  if (steer_targets_.size() >= kMaxSteerTargets) return -1;
  const unsigned slot = static_cast<unsigned>(steer_targets_.size());
  // A listening socket like a port's own (options its clients inherit, TCP_DEFER_ACCEPT for
  // terminating routes), bound to the host on a port of the kernel's choosing: the program hands
  // it connections for any port in the map.
  // The port is the kernel's pick from its ephemeral range, picked again while it is one the table
  // asks for (the sockets of earlier picks are held until then, so no pick repeats).
  auto listener = std::make_shared<Listener>();
  std::vector<std::unique_ptr<Listener>> rejected;
  uint16_t bound_port = 0;
  for (int attempt = 0;; attempt++) {
    listener->fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listener->fd < 0) return -1;
    const int one = 1;
    setsockopt(listener->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    SetBackendOptions(listener->fd, keepalive_ms);
    sockaddr_storage any = addr;
    reinterpret_cast<sockaddr_in*>(&any)->sin_port = 0;
    sockaddr_in bound{};
    socklen_t bound_len = sizeof bound;
    if (bind(listener->fd, reinterpret_cast<const sockaddr*>(&any), addr_len) != 0 ||
        getsockname(listener->fd, reinterpret_cast<sockaddr*>(&bound), &bound_len) != 0) {
      return -1;
    }
    const int picked = ntohs(bound.sin_port);
    bound_port = bound.sin_port;
    const bool wanted = avoid != nullptr && std::find(avoid->begin(), avoid->end(), picked) != avoid->end();
    if (!wanted) break;
    if (attempt >= 16) return -1;
    rejected.push_back(std::make_unique<Listener>());
    rejected.back()->fd = listener->fd;
    listener->fd = -1;
  }
  if (defer) SetDeferAccept(listener->fd, true);
  if (listen(listener->fd, backlog) != 0) return -1;
  if (steering_->SetListener(slot, listener->fd) != 0) return -1;
  listener->congestion_pending.store(IsLoopback(addr) && LoopbackCongestion() != nullptr);
  Loop* owner = loops_[slot % loops_.size()].get();
  SteerTarget target{host, addr, addr_len, ntohs(bound_port), backlog, keepalive_ms, defer, listener, owner};
  steer_targets_.push_back(target);
  if (!owner->WatchListener(kListenerTag | kSteerTag | slot, listener->fd)) {
    steer_targets_.pop_back();
    return -1;
  }
  return static_cast<int>(slot);
}

void Engine::OpenSteered(OpenRequest& req, std::vector<size_t>* idx) {
  std::vector<size_t> listening;  // what goes to OpenListening instead
  std::vector<size_t> steer;
  std::vector<int> slots;
  int slot_of[2] = {-2, -2};  // plain, terminating (TCP_DEFER_ACCEPT); -2: not looked up yet
  for (size_t i : *idx) {
    const int defer = req.routes[i].tls ? 1 : 0;
    if (slot_of[defer] == -2) {
      slot_of[defer] =
          SteerSlot(req.host, req.addr, req.addr_len, req.backlog, req.keepalive_ms, defer != 0, &req.port_numbers);
    }
    if (slot_of[defer] < 0) {
      listening.push_back(i);
      continue;
    }
    steer.push_back(i);
    slots.push_back(slot_of[defer]);
  }
  const size_t n = steer.size();
  std::vector<ListenRequest> requests;
  requests.reserve(n);
  for (size_t i : steer) requests.push_back(req.requests[i]);
  std::vector<std::shared_ptr<Port>> made(n);
  std::vector<int> rc(n, 0);
  // The reserving sockets open in shares on threads of their own, as listening sockets do
  // (OpenListening); no client can reach a port before it is claimed below.
  const size_t shares = OpenShares(n, loops_.size());
  ReserveDescriptors(n);
  // The ports are made here: on a helper thread each allocation would come from a fresh malloc
  // arena, page by page (~2 µs a port).
  for (size_t j = 0; j < n; j++) {
    const size_t i = steer[j];
    auto port = std::make_shared<Port>();
    port->port = req.port_numbers[i];
    port->keepalive_ms = req.keepalive_ms;
    port->budget = req.budget;
    port->steer_slot = slots[j];
    port->route = std::move(req.routes[i]);
    port->rr_current.assign(port->route.backends.size(), 0);
    made[j] = std::move(port);
  }
  auto open_share = [&](size_t share) {
    const size_t lo = n * share / shares;
    const size_t hi = n * (share + 1) / shares;
    std::vector<ListenRequest> share_requests(requests.begin() + static_cast<ptrdiff_t>(lo),
                                              requests.begin() + static_cast<ptrdiff_t>(hi));
    ListenBatch batch(hi - lo);
    std::vector<int> fds = batch.Sockets(share_requests);
    for (size_t j = lo; j < hi; j++) {
      if (fds[j - lo] < 0) rc[j] = fds[j - lo];
      else made[j]->reserve_fd = fds[j - lo];
    }
    ListenBatchOptions options;
    options.reserve_only = true;
    std::vector<int> share_rc = batch.Listen(fds, share_requests, options);
    for (size_t j = lo; j < hi; j++) {
      if (fds[j - lo] >= 0) rc[j] = share_rc[j - lo];
    }
  };
  RunShares(shares, open_share);
  {
    std::lock_guard<std::mutex> lock(ports_mu_);
    ports_.reserve(ports_.size() + n);  // one rehash for the batch, not one per doubling
    for (size_t j = 0; j < n; j++) {
      if (made[j]->reserve_fd < 0) {
        // No socket: nothing was opened for it; its route stays unused.
        req.out[steer[j]] = rc[j];
        made[j].reset();
        continue;
      }
      made[j]->id = next_port_id_++;
      if (next_port_id_ >= (1u << 31)) next_port_id_ = 1;
      ports_.emplace(made[j]->id, made[j]);
    }
  }
  for (size_t j = 0; j < n; j++) {
    if (!made[j] || rc[j] != -EADDRINUSE || !IsSteerListenerPort(req.host, made[j]->port)) continue;
    // A steering listener holds this very port (a later table asks for it): the port is this
    // router's already, and the listener takes its clients either way.
    std::lock_guard<std::mutex> lock(made[j]->mu);
    ::close(made[j]->reserve_fd);
    made[j]->reserve_fd = -1;
    rc[j] = 0;
  }
  const uint32_t ip_be = reinterpret_cast<const sockaddr_in*>(&req.addr)->sin_addr.s_addr;
  for (size_t j = 0; j < n; j++) {
    if (!made[j]) continue;
    const size_t i = steer[j];
    Port& port = *made[j];
    // The port is bound (so it is this router's), its route is in place: only now does the program
    // send it clients.
    if (rc[j] == 0 && steering_->Claim(static_cast<uint16_t>(port.port), ip_be, static_cast<unsigned>(port.steer_slot),
                                       port.id)) {
      req.out[i] = port.id;
      continue;
    }
    if (rc[j] == 0 || rc[j] == -EADDRINUSE) {
      // Another router of this process steers this port on another address, or the port's number
      // is still taken by connections made through it before (a reserving bind takes no
      // SO_REUSEADDR, so that no other program can bind the port while it is steered): a
      // listening socket of its own serves this one, and its bind tells whether the port is free.
      std::lock_guard<std::mutex> lock(port.mu);
      req.routes[i] = std::move(port.route);
      listening.push_back(i);
    } else {
      req.out[i] = rc[j];
    }
    {
      std::lock_guard<std::mutex> lock(port.mu);
      port.steer_slot = -1;
    }
    RetirePort(port.id);
    ReleasePort(port.id);
  }
  std::sort(listening.begin(), listening.end());
  *idx = std::move(listening);
}

bool Engine::IsSteerListenerPort(const std::string& host, int port) {
  std::lock_guard<std::mutex> lock(steer_mu_);
  for (const SteerTarget& t : steer_targets_) {
    if (t.port == port && t.host == host) return true;
  }
  return false;
}

int Engine::SteerSlotLike(unsigned slot, bool defer, int port_number) {
  SteerTarget like;
  {
    std::lock_guard<std::mutex> lock(steer_mu_);
    if (slot >= steer_targets_.size()) return -1;
    like = steer_targets_[slot];
  }
  const std::vector<int> own{port_number};
  return SteerSlot(like.host, like.addr, like.addr_len, like.backlog, like.keepalive_ms, defer, &own);
}

std::shared_ptr<Listener> Engine::SteerListener(unsigned slot) {
  std::lock_guard<std::mutex> lock(steer_mu_);
  return slot < steer_targets_.size() ? steer_targets_[slot].listener : nullptr;
}

std::shared_ptr<Port> Engine::SteeredPort(int client_fd) {
  sockaddr_in local{};
  socklen_t len = sizeof local;
  if (steering_ == nullptr || getsockname(client_fd, reinterpret_cast<sockaddr*>(&local), &len) != 0 ||
      local.sin_family != AF_INET) {
    return nullptr;
  }
  const uint32_t id = steering_->PortIdFor(ntohs(local.sin_port));
  return id == 0 ? nullptr : FindPort(id);
}

SteeringState Engine::Steering() {
  SteeringState st;
  st.enabled = SteeringEnabled();
  st.min_ports = SteerMinPorts();
  std::lock_guard<std::mutex> lock(steer_mu_);
  st.available = steering_ != nullptr;
  st.reason = steer_reason_;
  st.ports = steering_ ? steering_->Steered() : 0;
  st.listeners = steer_targets_.size();
  return st;
}

int64_t Engine::ApplyPorts(std::vector<std::pair<uint32_t, RouteSpec>>&& changed, const std::vector<uint32_t>& retired,
                           const std::shared_ptr<Budget>& budget, const std::string& host,
                           const std::vector<int>& ports, std::vector<RouteSpec>&& routes, int backlog,
                           bool reuse_port, int keepalive_ms, std::vector<int64_t>* opened,
                           int64_t steer_min_ports) {
  int64_t killed = 0;
  for (auto& entry : changed) {
    const int64_t k = SetRoute(entry.first, std::move(entry.second));
    if (k > 0) killed += k;
  }
  if (!retired.empty()) RetirePorts(retired);
  if (!ports.empty()) {
    *opened = OpenPorts(budget, host, ports, std::move(routes), backlog, reuse_port, keepalive_ms, steer_min_ports);
  }
  return killed;
}

std::shared_ptr<Port> Engine::FindPort(uint32_t port_id) {
  std::lock_guard<std::mutex> lock(ports_mu_);
  auto it = ports_.find(port_id);
  return it == ports_.end() ? nullptr : it->second;
}

int64_t Engine::SetRoute(uint32_t port_id, RouteSpec&& route) {
  std::shared_ptr<Port> port = FindPort(port_id);
  if (!port) return -1;
  std::lock_guard<std::mutex> lock(port->mu);
  const bool was_tls = port->route.tls != nullptr;
  port->route = std::move(route);
  if (port->listener && was_tls != (port->route.tls != nullptr)) {
    SetDeferAccept(port->listener->fd, port->route.tls != nullptr);
  }
  if (port->steer_slot >= 0 && was_tls != (port->route.tls != nullptr)) {
    // Its clients now go to the steering listener with the matching accept options.
    const int slot = SteerSlotLike(static_cast<unsigned>(port->steer_slot), port->route.tls != nullptr, port->port);
    if (slot >= 0) {
      port->steer_slot = slot;
      steering_->Retarget(static_cast<uint16_t>(port->port), port->id, static_cast<unsigned>(slot));
    }
  }
  port->rr_current.assign(port->route.backends.size(), 0);
  port->tie_break = 0;
  int64_t killed = 0;
  const int64_t now = NowMs();
  std::vector<Pair*> conns(port->conns.begin(), port->conns.end());
  for (Pair* pair : conns) {
    if (pair->backend_id_.empty()) continue;
    Fate fate = FateOf(port->route, pair->backend_id_, pair->epoch_);
    if (fate == Fate::kKeep) {
      // A retired port's connections keep draining whatever the route says of their backend.
      if (!port->retired) pair->drain_deadline_ms_.store(0);
      continue;
    }
    if (fate == Fate::kDrain) {
      if (pair->drain_deadline_ms_.load() == 0) {
        // A deadline of "now" is taken by the loop's next sweep (at most 50 ms later).
        pair->drain_deadline_ms_.store(now + static_cast<int64_t>(port->route.drain_timeout_ms) + 1);
      }
      continue;
    }
    // Fenced: reset before returning, so the backend receives no further byte from this router.
    std::shared_ptr<Pair> hold = pair->shared_from_this();
    CloseEvent ev{};
    {
      std::lock_guard<std::mutex> pair_lock(pair->mu_);
      if (pair->closed_.load()) continue;
      pair->Close(CloseReason::kKilled, 0, true, &ev);
    }
    UnaccountLocked(*port, pair, ev);
    port->c.killed_fenced++;
    killed++;
  }
  return killed;
}

bool Engine::RetirePort(uint32_t port_id) { return RetirePorts({port_id}) == 1; }

size_t Engine::RetirePorts(const std::vector<uint32_t>& port_ids) {
  std::vector<std::shared_ptr<Port>> ports;
  ports.reserve(port_ids.size());
  std::vector<CloseRequest> watched;
  watched.reserve(port_ids.size());
  for (uint32_t port_id : port_ids) {
    std::shared_ptr<Port> port = FindPort(port_id);
    if (!port) continue;
    std::lock_guard<std::mutex> lock(port->mu);
    if (!port->retired && port->listener && port->owner != nullptr) {
      watched.push_back({port->owner->epfd_, port->listener->fd});
    }
    ports.push_back(std::move(port));
  }
  // Listeners leave their loop's epoll set first (so a retired port's pending clients raise no
  // events), then the ports retire, then the descriptors close: one submission per step for a big
  // batch (listen-batch.h), as they were opened.
  ListenBatch batch(ports.size());
  batch.Unwatch(watched);
  std::vector<int> closing;
  closing.reserve(ports.size());
  for (auto& port : ports) {
    std::shared_ptr<Listener> listener;
    {
      std::lock_guard<std::mutex> lock(port->mu);
      if (port->retired) continue;
      port->retired = true;
      if (port->steer_slot >= 0) {
        // No new client is steered to it; then the socket that kept its number bound closes.
        steering_->Release(static_cast<uint16_t>(port->port), port->id);
        port->steer_slot = -1;
      }
      if (port->reserve_fd >= 0) {
        closing.push_back(port->reserve_fd);
        port->reserve_fd = -1;
      }
      // Once the port holds no listener, no loop can take a new reference to it (OnListener and
      // the rest after EMFILE both read it under port->mu).
      listener.swap(port->listener);
      const int64_t deadline = NowMs() + static_cast<int64_t>(port->route.drain_timeout_ms) + 1;
      for (Pair* pair : port->conns) {
        if (pair->drain_deadline_ms_.load() == 0) pair->drain_deadline_ms_.store(deadline);
      }
    }
    // A loop accepting from it right now holds another reference; the descriptor then closes with
    // the loop's last one.
    if (listener && listener->fd >= 0 && listener.use_count() == 1) {
      closing.push_back(listener->fd);
      listener->fd = -1;
    }
  }
  batch.Close(closing);
  return ports.size();
}

void Engine::Rebudget(Budget& budget, int64_t limit, int64_t reserve, int64_t reserved_bindings,
                      int64_t js_reserved_in_use) {
  std::vector<std::shared_ptr<Port>> ports;
  {
    std::lock_guard<std::mutex> lock(ports_mu_);
    for (auto& entry : ports_) {
      if (entry.second->budget.get() == &budget) ports.push_back(entry.second);
    }
  }
  int64_t in_use = js_reserved_in_use;
  for (auto& port : ports) {
    std::lock_guard<std::mutex> lock(port->mu);
    if (!port->retired) in_use += std::min<int64_t>(static_cast<int64_t>(port->c.active), reserve);
  }
  std::lock_guard<std::mutex> lock(budget.mu);
  budget.limit = limit;
  budget.reserve = reserve;
  budget.reserved_bindings = reserved_bindings;
  budget.reserved_in_use = in_use;
}

bool Engine::ReleasePort(uint32_t port_id) {
  std::lock_guard<std::mutex> lock(ports_mu_);
  auto it = ports_.find(port_id);
  if (it == ports_.end()) return true;
  std::lock_guard<std::mutex> port_lock(it->second->mu);
  if (!it->second->retired || !it->second->conns.empty()) return false;
  ports_.erase(it);
  return true;
}

int64_t Engine::KillAll(uint32_t port_id) {
  std::shared_ptr<Port> port = FindPort(port_id);
  if (!port) return -1;
  std::lock_guard<std::mutex> lock(port->mu);
  int64_t killed = 0;
  std::vector<Pair*> conns(port->conns.begin(), port->conns.end());
  for (Pair* pair : conns) {
    std::shared_ptr<Pair> hold = pair->shared_from_this();
    CloseEvent ev{};
    {
      std::lock_guard<std::mutex> pair_lock(pair->mu_);
      if (pair->closed_.load()) continue;
      pair->Close(CloseReason::kKilled, 0, true, &ev);
    }
    UnaccountLocked(*port, pair, ev);
    killed++;
  }
  return killed;
}

bool Engine::Stats(uint32_t port_id, PortCounters* out) {
  std::shared_ptr<Port> port = FindPort(port_id);
  if (!port) return false;
  std::lock_guard<std::mutex> lock(port->mu);
  *out = port->c;
  // Live connections' bytes are read from their counters, so /metrics sees traffic as it flows.
  for (Pair* pair : port->conns) {
    out->bytes_in += pair->bytes_[0].load(std::memory_order_relaxed);
    out->bytes_out += pair->bytes_[1].load(std::memory_order_relaxed);
  }
  return true;
}

int64_t Engine::ActiveFor(uint32_t port_id, const std::string& backend_id) {
  std::shared_ptr<Port> port = FindPort(port_id);
  if (!port) return 0;
  std::lock_guard<std::mutex> lock(port->mu);
  auto it = port->active_by_backend.find(backend_id);
  return it == port->active_by_backend.end() ? 0 : it->second;
}

std::shared_ptr<TlsServer> Engine::TlsFor(const TlsSpec& spec) {
  const std::string key = spec.Key();
  std::lock_guard<std::mutex> lock(tls_mu_);
  auto it = tls_servers_.find(key);
  if (it != tls_servers_.end()) {
    if (auto live = it->second.lock()) return live;
  }
  for (auto i = tls_servers_.begin(); i != tls_servers_.end();) {
    if (i->second.expired()) i = tls_servers_.erase(i);
    else ++i;
  }
  auto made = std::make_shared<TlsServer>(spec);
  tls_servers_[key] = made;
  return made;
}

std::string Engine::TlsError(uint32_t port_id) {
  std::shared_ptr<Port> port = FindPort(port_id);
  if (!port) return std::string();
  std::shared_ptr<TlsServer> tls;
  std::shared_ptr<TlsClient> client;
  {
    std::lock_guard<std::mutex> lock(port->mu);
    tls = port->route.tls;
    client = port->route.backend_tls;
  }
  std::string error = tls ? tls->LastError() : std::string();
  const std::string backend = client ? client->LastError() : std::string();
  if (!backend.empty()) error += (error.empty() ? "" : "; ") + backend;
  return error;
}

std::string Engine::BackendTlsFailure(uint32_t port_id) {
  std::shared_ptr<Port> port = FindPort(port_id);
  if (!port) return std::string();
  std::shared_ptr<TlsClient> client;
  {
    std::lock_guard<std::mutex> lock(port->mu);
    client = port->route.backend_tls;
  }
  return client ? client->LastFailure() : std::string();
}

std::shared_ptr<TlsClient> Engine::TlsClientFor(const TlsClientSpec& spec) {
  const std::string key = spec.Key();
  std::lock_guard<std::mutex> lock(tls_mu_);
  auto it = tls_clients_.find(key);
  if (it != tls_clients_.end()) {
    if (auto live = it->second.lock()) return live;
  }
  for (auto i = tls_clients_.begin(); i != tls_clients_.end();) {
    if (i->second.expired()) i = tls_clients_.erase(i);
    else ++i;
  }
  auto made = std::make_shared<TlsClient>(spec);
  tls_clients_[key] = made;
  return made;
}

void Engine::SetEventSink(EventSink sink) {
  std::lock_guard<std::mutex> lock(events_mu_);
  event_sink_ = std::move(sink);
}

void Engine::PushEvent(NativeEvent ev) {
  EventSink sink;
  {
    std::lock_guard<std::mutex> lock(events_mu_);
    if (events_.size() >= kMaxQueuedEvents) return;
    if (events_.empty()) sink = event_sink_;
    events_.push_back(ev);
  }
  if (sink) sink();
}

std::vector<NativeEvent> Engine::TakeEvents() {
  std::vector<NativeEvent> out;
  std::lock_guard<std::mutex> lock(events_mu_);
  out.swap(events_);
  return out;
}

void Engine::Accept(Loop* loop, const std::shared_ptr<Port>& port, int client_fd) {
  std::shared_ptr<Pair> pair;
  {
    std::lock_guard<std::mutex> lock(port->mu);
    if (port->retired || !port->budget->serving.load()) {
      loop->accepted_.fetch_sub(1, std::memory_order_relaxed);
      ::close(client_fd);
      return;
    }
    const int64_t active = static_cast<int64_t>(port->c.active);
    const bool over_route = port->route.max_connections >= 0 && active >= port->route.max_connections;
    if (over_route || !port->budget->Admit(active, true)) {
      loop->accepted_.fetch_sub(1, std::memory_order_relaxed);
      port->c.refused_max++;
      ::close(client_fd);
      PushEvent({over_route ? NativeEvent::kRouteLimit : NativeEvent::kGlobalLimit, port->budget->owner, port->id,
                 port->port});
      return;
    }
    port->c.active++;
    port->c.total++;
    PairOptions options;
    options.idle_timeout_ms = port->route.idle_timeout_ms;
    pair = std::make_shared<Pair>(loop, std::move(options));
    pair->fd_[0] = client_fd;
    pair->port_ = port;
    pair->accounted_ = true;
    pair->last_active_ms_ = NowMs();
    if (port->route.tls) {
      // The client starts TLS (or PostgreSQL's preamble) before any backend is picked.
      pair->tls_ = port->route.tls;
      pair->start_ = pair->tls_->spec.postgres ? Pair::Start::kPreamble : Pair::Start::kSniff;
      pair->start_deadline_ms_ = pair->last_active_ms_ + static_cast<int64_t>(pair->tls_->spec.handshake_timeout_ms);
    } else {
      pair->connecting_ = true;
    }
    port->conns.insert(pair.get());
  }
  if (pair->tls_) {
    loop->Adopt(pair);
    loop->StartAccepted(pair);
    return;
  }
  // The client joins the epoll set after its first bytes were relayed (StartEarly), so that the
  // edge its registration raises reports only what arrived after them, not a read that finds none.
  loop->Track(pair);
  ConnectNext(pair, 0);
  loop->StartEarly(pair);
  loop->Watch(pair);
}

// failed: 0 first attempt, 1 the previous attempt failed, 2 it timed out, 3 its TLS start failed.
void Engine::ConnectNext(const std::shared_ptr<Pair>& pair, int failed) {
  Port& port = *pair->port_;
  for (;;) {
    BackendSpec target;
    uint64_t connect_timeout_ms;
    std::shared_ptr<TlsClient> backend_tls;
    bool none = false;
    {
      std::lock_guard<std::mutex> lock(port.mu);
      if (!pair->accounted_) return;  // killed meanwhile
      if (failed == 1) port.c.connect_errors++;
      if (failed == 2) port.c.connect_timeouts++;
      if (failed == 3) {
        port.c.backend_tls_errors++;
        // Logged by JS (rate-limited) with the reason the port keeps: a backend whose certificate
        // stopped verifying fails every client, and an operator looks at the log first.
        PushEvent({NativeEvent::kBackendTls, port.budget->owner, port.id, port.port});
      }
      failed = 0;
      if (pair->holds_backend_) {
        auto it = port.active_by_backend.find(pair->backend_id_);
        if (it != port.active_by_backend.end() && --it->second <= 0) port.active_by_backend.erase(it);
        pair->holds_backend_ = false;
      }
      int index;
      for (;;) {
        index = PickIndex(port, pair->tried_);
        if (index < 0 || port.route.backends[index].state != BackendSpec::kSelfLoop) break;
        // A connection into the router itself would be accepted and connected again, without end.
        pair->tried_.push_back(port.route.backends[index].id);
        port.c.refused_self_loop++;
        PushEvent({NativeEvent::kSelfLoop, port.budget->owner, port.id, port.port});
      }
      if (index < 0) {
        if (pair->tried_.empty()) port.c.refused_no_backend++;
        none = true;
      } else {
        target = port.route.backends[index];
        pair->tried_.push_back(target.id);
        pair->backend_id_ = target.id;
        pair->epoch_ = target.epoch;
        pair->holds_backend_ = true;
        port.active_by_backend[target.id]++;
        if (target.tls) backend_tls = port.route.backend_tls;
      }
      connect_timeout_ms = port.route.connect_timeout_ms;
    }
    if (none) {
      CloseEvent ev{};
      {
        std::lock_guard<std::mutex> lock(pair->mu_);
        if (pair->closed_.load()) return;
        pair->Close(CloseReason::kKilled, 0, false, &ev);
      }
      Unaccount(pair.get(), ev);
      return;
    }
    int fd = socket(target.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      failed = 1;
      continue;
    }
    SetBackendOptions(fd, port.keepalive_ms);
    SetLoopbackCongestion(fd, target.addr);
    if (connect(fd, reinterpret_cast<const sockaddr*>(&target.addr), target.addr_len) != 0 && errno != EINPROGRESS) {
      ::close(fd);
      failed = 1;
      continue;
    }
    std::lock_guard<std::mutex> lock(pair->mu_);
    if (pair->closed_.load()) {
      ::close(fd);
      return;
    }
    if (pair->fd_[1] >= 0) {
      epoll_ctl(pair->loop_->epfd_, EPOLL_CTL_DEL, pair->fd_[1], nullptr);
      CloseQuietly(pair->fd_[1]);
    }
    pair->fd_[1] = fd;
    pair->btls_.reset();
    // A PostgreSQL client that did not start TLS (an optional route) reaches the backend in
    // plaintext, as on the JS path (router/proxied-connection.ts plaintextPostgresClient): over a
    // re-encrypted leg the engine would offer SCRAM-SHA-256-PLUS, which libpq refuses on a
    // connection it knows to be plaintext.
    if (backend_tls && !(pair->tls_ && pair->tls_->spec.postgres && pair->ssl_ == nullptr)) {
      pair->btls_ = std::make_unique<BackendTls>(backend_tls->Context(NowMs()), backend_tls->spec.postgres,
                                                 backend_tls->spec.server_name, fd, target.addr);
    }
    pair->connecting_ = true;
    pair->attempts_++;
    pair->backend_loopback_ = IsLoopback(target.addr);
    pair->connect_deadline_ms_ = NowMs() + static_cast<int64_t>(connect_timeout_ms);
    // Not optimistic, unlike a handed-over pair's sockets: this one is new, so nothing can have
    // arrived before it joins the epoll set, and the backend's first bytes raise an edge. Reading
    // it on connect would cost an EAGAIN per connection for every client-speaks-first protocol.
    pair->readable_[1] = false;
    pair->writable_[1] = false;
    pair->hangup_[1] = false;
    epoll_event e{};
    e.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    e.data.ptr = &pair->ends_[1];
    if (epoll_ctl(pair->loop_->epfd_, EPOLL_CTL_ADD, fd, &e) != 0) {
      // Cannot watch it (out of epoll watches): this attempt fails like a refused connect. The
      // descriptor stays with the pair and is replaced or closed with it.
      pair->connect_deadline_ms_ = 0;
    }
    return;
  }
}

void Engine::Unaccount(Pair* pair, const CloseEvent& ev) {
  Port& port = *pair->port_;
  std::lock_guard<std::mutex> lock(port.mu);
  UnaccountLocked(port, pair, ev);
}

void Engine::UnaccountLocked(Port& port, Pair* pair, const CloseEvent& ev) {
  if (!pair->accounted_) return;
  pair->accounted_ = false;
  pair->loop_->accepted_.fetch_sub(1, std::memory_order_relaxed);
  port.conns.erase(pair);
  port.c.active--;
  port.budget->Release(static_cast<int64_t>(port.c.active), !port.retired);
  if (pair->holds_backend_) {
    auto it = port.active_by_backend.find(pair->backend_id_);
    if (it != port.active_by_backend.end() && --it->second <= 0) port.active_by_backend.erase(it);
    pair->holds_backend_ = false;
  }
  port.c.bytes_in += ev.bytes_in;
  port.c.bytes_out += ev.bytes_out;
  if (ev.reason == CloseReason::kIdleTimeout) port.c.idle_timeouts++;
  if (pair->drain_expired_) port.c.killed_drained++;
}

}  // namespace sf
