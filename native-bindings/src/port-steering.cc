#include "port-steering.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>

namespace sf {

namespace {

constexpr uint32_t kPorts = 65536;

int Bpf(int cmd, bpf_attr* attr) {
  return static_cast<int>(syscall(__NR_bpf, cmd, attr, sizeof *attr));
}

// The instruction encodings the program needs (the kernel's own BPF_* helper macros live in its
// source tree, not in the UAPI headers).
bpf_insn Insn(uint8_t code, uint8_t dst, uint8_t src, int16_t off, int32_t imm) {
  bpf_insn i{};
  i.code = code;
  i.dst_reg = dst & 0xf;
  i.src_reg = src & 0xf;
  i.off = off;
  i.imm = imm;
  return i;
}
bpf_insn MovReg(uint8_t dst, uint8_t src) { return Insn(BPF_ALU64 | BPF_MOV | BPF_X, dst, src, 0, 0); }
bpf_insn MovImm(uint8_t dst, int32_t imm) { return Insn(BPF_ALU64 | BPF_MOV | BPF_K, dst, 0, 0, imm); }
bpf_insn AddImm(uint8_t dst, int32_t imm) { return Insn(BPF_ALU64 | BPF_ADD | BPF_K, dst, 0, 0, imm); }
bpf_insn LoadW(uint8_t dst, uint8_t src, int16_t off) { return Insn(BPF_LDX | BPF_MEM | BPF_W, dst, src, off, 0); }
bpf_insn StoreW(uint8_t dst, uint8_t src, int16_t off) { return Insn(BPF_STX | BPF_MEM | BPF_W, dst, src, off, 0); }
bpf_insn JumpImm(uint8_t op, uint8_t dst, int32_t imm, int16_t off) { return Insn(BPF_JMP | op | BPF_K, dst, 0, off, imm); }
bpf_insn JumpReg(uint8_t op, uint8_t dst, uint8_t src, int16_t off) { return Insn(BPF_JMP | op | BPF_X, dst, src, off, 0); }
bpf_insn Call(int32_t helper) { return Insn(BPF_JMP | BPF_CALL, 0, 0, 0, helper); }
bpf_insn Exit() { return Insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0); }
// A map's descriptor as a 64-bit immediate (two instructions), resolved by the verifier.
void LoadMap(std::vector<bpf_insn>* p, uint8_t dst, int map_fd) {
  p->push_back(Insn(BPF_LD | BPF_DW | BPF_IMM, dst, BPF_PSEUDO_MAP_FD, 0, map_fd));
  p->push_back(Insn(0, 0, 0, 0, 0));
}

// For a TCP connection attempt to IPv4 local_ip:local_port: value = ports[local_port]; when the
// value names a listener (slot + 1 in its high half) and its address is 0 or local_ip, the
// connection goes to listeners[slot]. Everything else passes to the kernel's own lookup.
std::vector<bpf_insn> Program(int ports_fd, int listeners_fd) {
  constexpr int16_t kFamily = offsetof(bpf_sk_lookup, family);
  constexpr int16_t kProtocol = offsetof(bpf_sk_lookup, protocol);
  constexpr int16_t kLocalIp4 = offsetof(bpf_sk_lookup, local_ip4);
  constexpr int16_t kLocalPort = offsetof(bpf_sk_lookup, local_port);
  std::vector<bpf_insn> p;
  std::vector<size_t> to_pass;  // jumps to the final "pass", patched once its place is known
  auto jump_to_pass = [&](bpf_insn insn) {
    to_pass.push_back(p.size());
    p.push_back(insn);
  };
  p.push_back(MovReg(BPF_REG_6, BPF_REG_1));
  p.push_back(LoadW(BPF_REG_2, BPF_REG_6, kProtocol));
  jump_to_pass(JumpImm(BPF_JNE, BPF_REG_2, IPPROTO_TCP, 0));
  p.push_back(LoadW(BPF_REG_2, BPF_REG_6, kFamily));
  jump_to_pass(JumpImm(BPF_JNE, BPF_REG_2, AF_INET, 0));
  // r0 = the element of map_fd whose key is in r2 (kept on the stack at stack_off), or to "pass".
  auto lookup = [&](int map_fd, int16_t stack_off) {
    p.push_back(StoreW(BPF_REG_10, BPF_REG_2, stack_off));
    p.push_back(MovReg(BPF_REG_2, BPF_REG_10));
    p.push_back(AddImm(BPF_REG_2, stack_off));
    LoadMap(&p, BPF_REG_1, map_fd);
    p.push_back(Call(BPF_FUNC_map_lookup_elem));
    jump_to_pass(JumpImm(BPF_JEQ, BPF_REG_0, 0, 0));
  };
  p.push_back(LoadW(BPF_REG_2, BPF_REG_6, kLocalPort));
  lookup(ports_fd, -4);
  p.push_back(LoadW(BPF_REG_2, BPF_REG_0, 4));  // slot + 1
  jump_to_pass(JumpImm(BPF_JEQ, BPF_REG_2, 0, 0));
  p.push_back(LoadW(BPF_REG_3, BPF_REG_0, 0));  // address, network order
  p.push_back(JumpImm(BPF_JEQ, BPF_REG_3, 0, 2));
  p.push_back(LoadW(BPF_REG_4, BPF_REG_6, kLocalIp4));
  jump_to_pass(JumpReg(BPF_JNE, BPF_REG_3, BPF_REG_4, 0));
  p.push_back(AddImm(BPF_REG_2, -1));
  lookup(listeners_fd, -8);
  p.push_back(MovReg(BPF_REG_7, BPF_REG_0));
  p.push_back(MovReg(BPF_REG_1, BPF_REG_6));
  p.push_back(MovReg(BPF_REG_2, BPF_REG_7));
  p.push_back(MovImm(BPF_REG_3, 0));
  p.push_back(Call(BPF_FUNC_sk_assign));
  p.push_back(MovReg(BPF_REG_1, BPF_REG_7));
  p.push_back(Call(BPF_FUNC_sk_release));
  const size_t pass = p.size();
  p.push_back(MovImm(BPF_REG_0, SK_PASS));
  p.push_back(Exit());
  for (size_t at : to_pass) p[at].off = static_cast<int16_t>(pass - at - 1);
  return p;
}

int CreateMap(bpf_map_type type, uint32_t value_size, uint32_t entries, uint32_t flags) {
  bpf_attr a{};
  a.map_type = type;
  a.key_size = 4;
  a.value_size = value_size;
  a.max_entries = entries;
  a.map_flags = flags;
  return Bpf(BPF_MAP_CREATE, &a);
}

std::string Failed(const char* step) { return std::string(step) + ": " + std::strerror(errno); }

}  // namespace

std::unique_ptr<PortSteering> PortSteering::Create(unsigned max_listeners, std::string* why) {
  std::unique_ptr<PortSteering> s(new PortSteering());
  s->max_listeners_ = max_listeners;
  s->ports_fd_ = CreateMap(BPF_MAP_TYPE_ARRAY, 8, kPorts, BPF_F_MMAPABLE);
  if (s->ports_fd_ < 0) {
    *why = Failed("creating the port map");
    return nullptr;
  }
  s->ports_len_ = kPorts * sizeof(uint64_t);
  void* mem = mmap(nullptr, s->ports_len_, PROT_READ | PROT_WRITE, MAP_SHARED, s->ports_fd_, 0);
  if (mem == MAP_FAILED) {
    *why = Failed("mapping the port map");
    return nullptr;
  }
  s->ports_ = static_cast<uint64_t*>(mem);
  s->listeners_fd_ = CreateMap(BPF_MAP_TYPE_SOCKMAP, 4, max_listeners, 0);
  if (s->listeners_fd_ < 0) {
    *why = Failed("creating the listener map");
    return nullptr;
  }
  std::vector<bpf_insn> prog = Program(s->ports_fd_, s->listeners_fd_);
  std::vector<char> log(64 * 1024, 0);
  bpf_attr a{};
  a.prog_type = BPF_PROG_TYPE_SK_LOOKUP;
  a.expected_attach_type = BPF_SK_LOOKUP;
  a.insns = reinterpret_cast<uint64_t>(prog.data());
  a.insn_cnt = static_cast<uint32_t>(prog.size());
  static const char kLicense[] = "Dual MIT/GPL";
  a.license = reinterpret_cast<uint64_t>(kLicense);
  a.log_buf = reinterpret_cast<uint64_t>(log.data());
  a.log_size = static_cast<uint32_t>(log.size());
  a.log_level = 1;
  std::strncpy(a.prog_name, "sf_port_steer", sizeof a.prog_name - 1);
  s->prog_fd_ = Bpf(BPF_PROG_LOAD, &a);
  if (s->prog_fd_ < 0) {
    *why = Failed("loading the sk_lookup program");
    const std::string verifier(log.data());
    if (!verifier.empty()) *why += " (" + verifier.substr(0, 400) + ")";
    return nullptr;
  }
  const int netns = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (netns < 0) {
    *why = Failed("opening the network namespace");
    return nullptr;
  }
  bpf_attr l{};
  l.link_create.prog_fd = static_cast<uint32_t>(s->prog_fd_);
  l.link_create.target_fd = static_cast<uint32_t>(netns);
  l.link_create.attach_type = BPF_SK_LOOKUP;
  s->link_fd_ = Bpf(BPF_LINK_CREATE, &l);
  const int link_errno = errno;
  close(netns);
  if (s->link_fd_ < 0) {
    errno = link_errno;
    *why = Failed("attaching the sk_lookup program");
    return nullptr;
  }
  s->ids_.reset(new std::atomic<uint32_t>[kPorts]);
  for (uint32_t i = 0; i < kPorts; i++) s->ids_[i].store(0, std::memory_order_relaxed);
  return s;
}

PortSteering::~PortSteering() {
  // The link first: once it is closed the program no longer runs for new connections.
  if (link_fd_ >= 0) close(link_fd_);
  if (prog_fd_ >= 0) close(prog_fd_);
  if (ports_ != nullptr) munmap(ports_, ports_len_);
  if (ports_fd_ >= 0) close(ports_fd_);
  if (listeners_fd_ >= 0) close(listeners_fd_);
}

int PortSteering::SetListener(unsigned slot, int listener_fd) {
  if (slot >= max_listeners_) return -EINVAL;
  uint32_t key = slot;
  uint32_t value = static_cast<uint32_t>(listener_fd);
  bpf_attr a{};
  a.map_fd = static_cast<uint32_t>(listeners_fd_);
  a.key = reinterpret_cast<uint64_t>(&key);
  a.value = reinterpret_cast<uint64_t>(&value);
  a.flags = BPF_ANY;
  return Bpf(BPF_MAP_UPDATE_ELEM, &a) == 0 ? 0 : -errno;
}

void PortSteering::Store(uint16_t port, uint32_t ip_be, uint32_t slot_plus_one) {
  const uint64_t v = static_cast<uint64_t>(ip_be) | (static_cast<uint64_t>(slot_plus_one) << 32);
  __atomic_store_n(&ports_[port], v, __ATOMIC_RELEASE);
}

bool PortSteering::Claim(uint16_t port, uint32_t ip_be, unsigned slot, uint32_t port_id) {
  uint32_t none = 0;
  if (!ids_[port].compare_exchange_strong(none, port_id, std::memory_order_acq_rel)) return false;
  Store(port, ip_be, slot + 1);
  steered_.fetch_add(1, std::memory_order_relaxed);
  return true;
}

void PortSteering::Retarget(uint16_t port, uint32_t port_id, unsigned slot) {
  if (ids_[port].load(std::memory_order_acquire) != port_id) return;
  const uint32_t ip_be = static_cast<uint32_t>(__atomic_load_n(&ports_[port], __ATOMIC_ACQUIRE));
  Store(port, ip_be, slot + 1);
}

void PortSteering::Release(uint16_t port, uint32_t port_id) {
  uint32_t expected = port_id;
  if (!ids_[port].compare_exchange_strong(expected, 0, std::memory_order_acq_rel)) return;
  Store(port, 0, 0);
  steered_.fetch_sub(1, std::memory_order_relaxed);
}

}  // namespace sf
