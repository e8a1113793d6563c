// One listening socket for many route ports: a BPF sk_lookup program attached to the process's
// network namespace hands each new TCP connection for a steered port to a listening socket of the
// relay, whatever port that socket is bound to (docs/native-relay.md, "Opening many ports").
//
// Opening a port then costs a map entry and a socket bound to the port (so that the port stays
// reserved: another process cannot bind it, and a port another process holds is refused and
// reported as before) instead of a listening socket with its options, listen() and an epoll
// registration each. The program runs before the kernel looks for a listening socket, only for
// connection attempts (SYN), and passes every packet whose port is not in the map untouched.
//
// Needs CAP_BPF and CAP_NET_ADMIN (loading the program, attaching it to the namespace) and a
// kernel with sk_lookup (Linux 5.9). Where either is missing, Create says why and the relay opens a
// listening socket per port, as it always did.

#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sf {

class PortSteering {
 public:
  // Loads the program and its two maps and attaches it to the calling thread's network
  // namespace. nullptr, with *why set, when that cannot be done here.
  static std::unique_ptr<PortSteering> Create(unsigned max_listeners, std::string* why);
  ~PortSteering();
  PortSteering(const PortSteering&) = delete;
  PortSteering& operator=(const PortSteering&) = delete;

  // Makes a listening socket a target at `slot` (0 <= slot < max_listeners). 0 or a negative errno.
  int SetListener(unsigned slot, int listener_fd);
  // Steers new connections to `port` on `ip_be` (network order; 0: every local address) to the
  // listener at `slot`, and remembers which relay port (`port_id`) they belong to. False when the
  // port is steered already (another router of this process holds it on another address).
  bool Claim(uint16_t port, uint32_t ip_be, unsigned slot, uint32_t port_id);
  // Sends the port's new connections to another listener (a route that starts or stops
  // terminating TLS moves to the listener with the matching accept options).
  void Retarget(uint16_t port, uint32_t port_id, unsigned slot);
  // Stops steering the port, if it still belongs to port_id: new connections to it find no
  // listener (and are refused once its reserving socket closes).
  void Release(uint16_t port, uint32_t port_id);
  // The relay port a connection accepted with local port `port` belongs to; 0: none.
  uint32_t PortIdFor(uint16_t port) const { return ids_[port].load(std::memory_order_acquire); }
  size_t Steered() const { return steered_.load(std::memory_order_relaxed); }

 private:
  PortSteering() = default;
  void Store(uint16_t port, uint32_t ip_be, uint32_t slot_plus_one);

  int ports_fd_ = -1;
  int listeners_fd_ = -1;
  int prog_fd_ = -1;
  int link_fd_ = -1;
  unsigned max_listeners_ = 0;
  // The port map's values, shared with the kernel (an mmapped BPF array): per port, the address
  // (network order) in the low half and the listener's slot + 1 in the high half, written as one
  // 64-bit store so the program never sees one without the other.
  uint64_t* ports_ = nullptr;
  size_t ports_len_ = 0;
  std::unique_ptr<std::atomic<uint32_t>[]> ids_;
  std::atomic<size_t> steered_{0};
};

}  // namespace sf
