// Relay engine: moves bytes between pairs of connected TCP sockets on event-loop threads of its
// own, so that relayed data never crosses into the JavaScript heap. Small messages are copied
// through a per-thread buffer (recv, send); streams are spliced through a pipe (splice(2)).
//
// This header has no Node dependency; addon.cc is the only file that knows about N-API.

#pragma once

#include <sys/socket.h>
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace sf {

// The order matches RelayCloseReason's codes in native-bindings/index.ts.
enum class CloseReason : int {
  kClientClosed = 0,
  kBackendClosed = 1,
  kClientError = 2,
  kBackendError = 3,
  kIdleTimeout = 4,
  kKilled = 5,
};

struct CloseEvent {
  uint32_t id;
  CloseReason reason;
  int error;  // errno of the failing side, 0 when the pair ended normally
  uint64_t bytes_in;
  uint64_t bytes_out;
};

// Called on a loop thread, never with a lock held, once per pair that the engine closed by itself.
// Pairs closed through Engine::Destroy are not reported: the caller already knows.
using CloseSink = std::function<void(const CloseEvent&)>;

struct PairOptions {
  uint32_t id = 0;
  uint64_t idle_timeout_ms = 0;
  // Bytes the JS side had already read from a socket before handing it over, per direction
  // (0: client to backend, 1: backend to client). They are written before anything spliced.
  std::string pending[2];
  // The JS side had already seen end-of-stream on the client (0) or the backend (1).
  bool eof[2] = {false, false};
};

class Loop;
class Pair;
class TlsServer;
struct TlsSpec;
class TlsClient;
struct TlsClientSpec;
struct Port;
struct Listener;

// A backend of a natively accepted port, as JS pushed it with the route (docs/native-relay.md).
struct BackendSpec {
  std::string id;
  sockaddr_storage addr{};
  socklen_t addr_len = 0;
  int weight = 1;
  uint64_t epoch = 1;
  enum State : uint8_t { kActive = 0, kDraining = 1, kFenced = 2, kSelfLoop = 3 } state = kActive;
  bool primary = true;
  // The router connects to this backend over TLS (RouteSpec::backend_tls).
  bool tls = false;
};

enum class RouteMode : int { kPrimary = 0, kRoundRobin = 1, kLeastConn = 2 };

struct RouteSpec {
  RouteMode mode = RouteMode::kPrimary;
  uint64_t connect_timeout_ms = 5000;
  uint64_t idle_timeout_ms = 0;
  uint64_t drain_timeout_ms = 30000;
  int64_t max_connections = -1;  // -1: no limit of the route's own
  std::vector<BackendSpec> backends;
  // A terminating route: clients run a TLS handshake (after PostgreSQL's SSLRequest on such routes)
  // with the relay thread before a backend is picked, and their bytes are decrypted on the way in
  // and encrypted on the way out. Shared by every route with the same settings; a connection
  // holds the one it started with.
  std::shared_ptr<TlsServer> tls;
  // TLS towards the backends marked `tls` (after PostgreSQL's SSLRequest on such routes): their
  // connect ends only once the backend is verified. Shared like `tls`.
  std::shared_ptr<TlsClient> backend_tls;
};

// Per-port counters, the native side of router/route-stats.ts (same order as PORT_STAT_FIELDS in
// native-bindings/index.ts).
struct PortCounters {
  uint64_t active = 0, total = 0, bytes_in = 0, bytes_out = 0, connect_errors = 0, connect_timeouts = 0,
           refused_no_backend = 0, refused_max = 0, refused_self_loop = 0, killed_fenced = 0, killed_drained = 0,
           idle_timeouts = 0, tls_handshakes = 0, tls_handshake_errors = 0, refused_plaintext = 0,
           backend_tls_errors = 0;
};

// Things native code tells JS about, delivered in batches (one wake-up of the JS thread per batch).
struct NativeEvent {
  enum Kind : int { kRouteLimit = 0, kGlobalLimit = 1, kSelfLoop = 2, kBackendTls = 3 } kind;
  uint32_t owner;  // the port's Budget::owner: which router of the process hears of it
  uint32_t port_id;
  int port;
};
using EventSink = std::function<void()>;

// The router-wide connection limit with per-route reservations (router/connection-budget.ts),
// shared by natively accepted ports and the JS path: a route's idle clients cannot take the last
// descriptors reserved for the other routes. One per router (a process may run several, as tests
// do); it also carries the router's serving switch (fail-closed without a route source).
struct Budget {
  // Names the router in events (a process may run several; each has its own budget).
  uint32_t owner = 0;
  std::atomic<bool> serving{true};
  std::mutex mu;
  int64_t limit = INT64_MAX;
  int64_t reserve = 0;
  int64_t reserved_bindings = 0;
  int64_t active = 0;
  int64_t reserved_in_use = 0;
  uint64_t refused_global = 0;
  // own_active: the route's live connections, not counting the one being admitted.
  bool Admit(int64_t own_active, bool reserved);
  // own_active_after: the route's live connections once this one is gone.
  void Release(int64_t own_active_after, bool reserved);
};

class PortSteering;

// What the relay does about opening ports through one socket (port-steering.h), for /health.
struct SteeringState {
  bool enabled = false;    // SF_NATIVE_STEER is not "off"
  bool available = false;  // the program is loaded and attached
  std::string reason;      // why not, when it was tried and is not available
  size_t min_ports = 0;    // a table change opening at least this many ports steers them
  size_t ports = 0;        // ports steered now
  size_t listeners = 0;    // listening sockets they are steered to
};

class Engine {
 public:
  // pipe_size 0 keeps the kernel default (64 KiB).
  Engine(unsigned threads, int pipe_size, CloseSink sink);
  ~Engine();

  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Takes over duplicates of client_fd and backend_fd; the caller may close its own descriptors
  // as soon as this returns. Returns nullptr and sets *err (an errno) on failure.
  std::shared_ptr<Pair> Start(int client_fd, int backend_fd, PairOptions options, int* err);

  // Closes both sockets now, from the calling thread. With reset, SO_LINGER 0 makes the kernel
  // discard unsent data and send RST. Once this returns, no byte of the pair is written anywhere.
  // Returns false when the pair had already ended (its CloseEvent is then on its way).
  static bool Destroy(Pair& pair, bool reset);

  static uint64_t BytesIn(const Pair& pair);
  static uint64_t BytesOut(const Pair& pair);

  size_t ActivePairs() const;
  unsigned Threads() const { return static_cast<unsigned>(loops_.size()); }
  // Natively accepted clients per loop thread (queued, connecting or relaying).
  std::vector<int64_t> AcceptedPerThread() const;

  // Native accept path. OpenPorts listens on each port (one socket per port, watched by one loop
  // thread, which spreads the clients it accepts over all of them), each with its first route in
  // place, in one batch (listen-batch.h). Returns each port's id, or a negative errno where that
  // port failed.
  std::vector<int64_t> OpenPorts(const std::shared_ptr<Budget>& budget, const std::string& host,
                                 const std::vector<int>& ports, std::vector<RouteSpec>&& routes, int backlog,
                                 bool reuse_port, int keepalive_ms, int64_t steer_min_ports = -1);
  // One table change in one call, in this order: the changed ports' routes (fences first, as
  // SetRoute), then the removed ports retire, then the new ports open (as OpenPorts). Returns the
  // connections killed; *opened gets OpenPorts' result for the new ports.
  int64_t ApplyPorts(std::vector<std::pair<uint32_t, RouteSpec>>&& changed, const std::vector<uint32_t>& retired,
                     const std::shared_ptr<Budget>& budget, const std::string& host, const std::vector<int>& ports,
                     std::vector<RouteSpec>&& routes, int backlog, bool reuse_port, int keepalive_ms,
                     std::vector<int64_t>* opened, int64_t steer_min_ports = -1);
  // Takes the port's new route and decides, before returning, the fate of each live connection:
  // fenced ones are reset and closed, removed or draining backends' ones drain. Returns how many
  // were killed; -1 for an unknown port.
  int64_t SetRoute(uint32_t port_id, RouteSpec&& route);
  // Stops accepting (the listening socket is closed) and drains every connection.
  bool RetirePort(uint32_t port_id);
  // RetirePort for many ports, their listeners closed in one batch (listen-batch.h). Returns how
  // many of the ids were known.
  size_t RetirePorts(const std::vector<uint32_t>& port_ids);
  // Resets and closes every connection of the port (fail-closed, shutdown).
  int64_t KillAll(uint32_t port_id);
  bool Stats(uint32_t port_id, PortCounters* out);
  int64_t ActiveFor(uint32_t port_id, const std::string& backend_id);
  // Drops a retired port once its last connection is gone; false while connections remain.
  bool ReleasePort(uint32_t port_id);
  // The TLS server of these settings, shared with every route that has the same ones (its
  // certificate loaded now, so a bad file shows at once in TlsError).
  std::shared_ptr<TlsServer> TlsFor(const TlsSpec& spec);
  // Why the port's certificate did not load (empty when it did, or the port does not terminate).
  std::string TlsError(uint32_t port_id);
  // Why the port's last backend TLS start failed, or empty.
  std::string BackendTlsFailure(uint32_t port_id);
  // The backend-side TLS client of these settings, shared as TlsFor's servers are.
  std::shared_ptr<TlsClient> TlsClientFor(const TlsClientSpec& spec);
  SteeringState Steering();
  void SetEventSink(EventSink sink);
  std::vector<NativeEvent> TakeEvents();
  // The router-wide limit and reservations for the table in force; js_reserved_in_use is the
  // JS path's part of the reservations in use (the native ports' part is counted here).
  void Rebudget(Budget& budget, int64_t limit, int64_t reserve, int64_t reserved_bindings,
                int64_t js_reserved_in_use);

  // Loop thread side (relay-engine.cc).
  std::shared_ptr<Port> FindPort(uint32_t port_id);
  // The loop that takes a client `self` just accepted: the one with the fewest natively accepted
  // clients, `self` on a tie. Counts the client on it.
  Loop* PickLoop(Loop* self);
  void Accept(Loop* loop, const std::shared_ptr<Port>& port, int client_fd);
  // Picks a backend for pair and starts a non-blocking connect; closes the pair when none is left.
  void ConnectNext(const std::shared_ptr<Pair>& pair, int failed);
  // Accounts a natively accepted pair that closed (counters, budget, least-conn counts).
  void Unaccount(Pair* pair, const CloseEvent& ev);
  void UnaccountLocked(Port& port, Pair* pair, const CloseEvent& ev);  // port.mu held
  void PushEvent(NativeEvent ev);
  // The steering listener at slot, for the loop that watches it (nullptr once gone).
  std::shared_ptr<Listener> SteerListener(unsigned slot);
  // The relay port a client accepted by a steering listener came through (nullptr: none now).
  std::shared_ptr<Port> SteeredPort(int client_fd);

 private:
  // Opening ports with a listening socket each (the classic path), or reserved and steered; each
  // takes the positions `idx` of the request and writes their results into *out.
  struct OpenRequest;
  void OpenListening(OpenRequest& req, const std::vector<size_t>& idx);
  void OpenSteered(OpenRequest& req, std::vector<size_t>* idx);
  // The slot of a steering listener with these accept options, made on first use; -1 when none
  // can be had (steering unavailable, out of slots, the socket failed).
  // Its port is none of `avoid` (the ports about to be steered).
  int SteerSlot(const std::string& host, const sockaddr_storage& addr, socklen_t addr_len, int backlog,
                int keepalive_ms, bool defer, const std::vector<int>* avoid);
  // The slot of the steering listener like the one at `slot` but with TCP_DEFER_ACCEPT as `defer` says.
  int SteerSlotLike(unsigned slot, bool defer, int port_number);
  bool IsSteerListenerPort(const std::string& host, int port);
  // steer_min_ports: the fewest new ports a change steers; -1: SF_NATIVE_STEER_MIN_PORTS or 256.
  bool SteeringUsable(size_t ports, const sockaddr_storage& addr, bool reuse_port, int64_t steer_min_ports);

  // Declared before loops_ so that it outlives them: loop threads call it until they are joined.
  std::unique_ptr<CloseSink> sink_;
  std::vector<std::unique_ptr<Loop>> loops_;
  std::atomic<uint32_t> next_loop_{0};
  std::mutex ports_mu_;
  std::unordered_map<uint32_t, std::shared_ptr<Port>> ports_;
  uint32_t next_port_id_ = 1;
  // The loop that watches the next new port's listener (round-robin; guarded by ports_mu_).
  size_t next_listener_loop_ = 0;
  std::mutex events_mu_;
  std::vector<NativeEvent> events_;
  std::mutex tls_mu_;
  std::unordered_map<std::string, std::weak_ptr<TlsServer>> tls_servers_;
  std::unordered_map<std::string, std::weak_ptr<TlsClient>> tls_clients_;
  EventSink event_sink_;
  // Port steering (port-steering.h): made on the first table change that asks for it.
  std::mutex steer_mu_;
  bool steer_tried_ = false;
  std::unique_ptr<PortSteering> steering_;
  std::string steer_reason_;
  struct SteerTarget {
    std::string host;
    sockaddr_storage addr{};
    socklen_t addr_len = 0;
    int port = 0;  // the one the listener is bound to
    int backlog = 0;
    int keepalive_ms = 0;
    bool defer = false;
    std::shared_ptr<Listener> listener;
    Loop* owner = nullptr;
  };
  std::vector<SteerTarget> steer_targets_;
};

}  // namespace sf
