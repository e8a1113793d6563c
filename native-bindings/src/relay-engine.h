// Relay engine: moves bytes between pairs of connected TCP sockets on event-loop threads of its
// own, so that relayed data never crosses into the JavaScript heap. Small messages are copied
// through a per-thread buffer (recv, send); streams are spliced through a pipe (splice(2)).
//
// This header has no Node dependency; addon.cc is the only file that knows about N-API.

#pragma once

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

 private:
  // Declared before loops_ so that it outlives them: loop threads call it until they are joined.
  std::unique_ptr<CloseSink> sink_;
  std::vector<std::unique_ptr<Loop>> loops_;
  std::atomic<uint32_t> next_loop_{0};
};

}  // namespace sf
