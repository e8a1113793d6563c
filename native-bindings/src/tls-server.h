// The server side of a terminating route on the native accept path: an SSL_CTX built from the
// route's certificate, key, optional client CA (mTLS, verification required), minimum version and
// ALPN list, rebuilt when the files change. OpenSSL is the one statically linked into Node: the
// addon includes Node's copy of its headers and resolves its symbols from the host process, so
// nothing links libssl (docs/native-relay.md, "TLS termination").
//
// This header has no Node dependency.

#pragma once

#include <openssl/ssl.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace sf {

struct TlsSpec {
  std::string cert_file;
  std::string key_file;
  std::string client_ca_file;  // empty: no client certificate asked for
  int min_version = TLS1_2_VERSION;
  std::vector<std::string> alpn;  // in order of preference; empty: no ALPN
  bool postgres = false;           // the client starts with PostgreSQL's SSLRequest preamble
  bool optional = false;           // a client that does not start TLS is relayed in plaintext
  uint64_t handshake_timeout_ms = 10000;

  // Identifies equal settings: routes with equal settings share one TlsServer.
  std::string Key() const;
};

class TlsServer {
 public:
  explicit TlsServer(TlsSpec spec);
  ~TlsServer();
  TlsServer(const TlsServer&) = delete;
  TlsServer& operator=(const TlsServer&) = delete;

  // A new server-side SSL for a handshake, on the context in force: the files are checked for a
  // change at most once a second (and the context rebuilt when they changed and load), so a
  // renewed certificate serves every handshake after the change while established connections keep
  // the SSL (and the context it holds a reference on) they started with. nullptr while no pair of
  // files ever loaded.
  SSL* NewSsl(int64_t now_ms);
  // The last load error (file names and OpenSSL's reason, never key material); empty once a load
  // succeeded.
  std::string LastError();
  uint64_t Reloads() const { return reloads_.load(); }
  // TLS 1.3 session tickets are not sent with the handshake (num_tickets 0) but by IssueTickets with
  // the connection's first bytes (the client's, or the backend's first answer): a client that hangs
  // up right after its handshake (health checks, `openssl s_time`) costs no ticket. Two tickets
  // cost about an eighth of a handshake's CPU (each an HKDF, a random session id, the session
  // encoded, encrypted and MACed, a record and a send).
  // Issues kTicketsPerConnection tickets (OpenSSL's default count) when the client can use them
  // (TLS 1.3 and it offered psk_key_exchange_modes); they go out on the SSL's next write, or now
  // through SSL_do_handshake. False when none were due.
  static bool IssueTickets(SSL* ssl);
  static constexpr int kTicketsPerConnection = 2;

  const TlsSpec spec;

 private:
  void Load();  // mu_ held
  std::mutex mu_;
  SSL_CTX* ctx_ = nullptr;
  std::string stamp_;
  std::string error_;
  int64_t checked_ms_ = 0;
  std::atomic<uint64_t> reloads_{0};
  // ALPN protocols in wire format (length-prefixed), for the selection callback.
  std::string alpn_wire_;
  static int OnClientHello(SSL* ssl, int* alert, void* arg);
  static int SelectAlpn(SSL* ssl, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
                        unsigned int inlen, void* arg);
};

}  // namespace sf
