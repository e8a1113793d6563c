// The backend side of a route whose backends speak TLS, on the native accept path: an SSL_CTX
// built from the route's backend CA (or the system's CAs without one) and the router's client
// certificate for mTLS, rebuilt when the files change, and per connection a non-blocking
// handshake (after PostgreSQL's SSLRequest on such routes) that verifies the backend's chain and
// name exactly as router/backend-tls.ts does on the JS path: the route's backendServerName (also
// sent as SNI), else the IP address connected to. Nothing here falls back to plaintext.
//
// This header has no Node dependency.

#pragma once

#include "socket-bio.h"

#include <openssl/ssl.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

namespace sf {

struct TlsClientSpec {
  std::string ca_file;      // empty: the system's CAs
  std::string cert_file;    // the router's certificate for backends that ask for one (mTLS)
  std::string key_file;
  std::string server_name;  // empty: the backend's address is checked, and no SNI is sent
  bool postgres = false;    // an SSLRequest goes first, and only an 'S' answer leads on to TLS

  // Identifies equal settings: routes with equal settings share one TlsClient.
  std::string Key() const;
};

// One SSL_CTX generation and the sessions resumed on it, one per backend address: a renewed CA or
// client certificate starts a new generation, so no session verified under the old files is
// resumed after the change.
struct TlsClientContext;

class TlsClient {
 public:
  explicit TlsClient(TlsClientSpec spec);
  ~TlsClient();
  TlsClient(const TlsClient&) = delete;
  TlsClient& operator=(const TlsClient&) = delete;

  // The context in force; the files are checked for a change at most once a second (as the JS
  // path rechecks the CA file, router/backend-tls.ts BACKEND_CA_RECHECK_MS). nullptr while the
  // files never loaded.
  std::shared_ptr<TlsClientContext> Context(int64_t now_ms);
  // The last load error (file names and OpenSSL's reason); empty once a load succeeded.
  std::string LastError();
  // Why the last connection on the context in force failed its start ("backend certificate:
  // Hostname mismatch", "the backend declined TLS ..."), or empty: what an operator needs beside
  // the counter. A new context (changed files) starts without one.
  std::string LastFailure();

  const TlsClientSpec spec;

 private:
  void Load();  // mu_ held
  std::mutex mu_;
  std::shared_ptr<TlsClientContext> ctx_;
  std::string stamp_;
  std::string error_;
  int64_t checked_ms_ = 0;
};

// The TLS session of one backend connection. The socket stays the pair's: this only reads and
// writes it.
class BackendTls {
 public:
  enum class Step { kWait, kDone, kFailed };

  // ctx may be nullptr (the files never loaded): the first Handshake then fails.
  BackendTls(std::shared_ptr<TlsClientContext> ctx, bool postgres, const std::string& server_name, int fd,
             const sockaddr_storage& addr);
  ~BackendTls();
  BackendTls(const BackendTls&) = delete;
  BackendTls& operator=(const BackendTls&) = delete;

  // Moves the start on after an event of the socket: the SSLRequest and its answer, then the
  // handshake. kFailed: the backend declined TLS, failed verification or closed; never retried
  // on this socket.
  Step Handshake();
  // SSL_read / SSL_write with the relay's conventions: >0 bytes, 0 end of stream (read), -1 with
  // errno (EAGAIN when the socket must become ready first).
  ssize_t Read(char* out, size_t len);
  ssize_t Write(const char* data, size_t len);
  // close_notify (the caller then shuts the socket's write side).
  void Shutdown();
  // More plaintext may be readable without a new edge: a record held back, or the last read of
  // the socket filled what OpenSSL asked for.
  bool MayHaveMore() const;

  // An SSL_read that needs the socket writable (or an SSL_write that needs it readable) is retried
  // on that edge.
  bool read_wants_write = false;
  bool write_wants_read = false;
  // The TCP connect completed; what follows is this object's start.
  bool tcp_up = false;
  // Why the last step failed (for tests and diagnostics), or empty.
  std::string failure;

  using Io = SocketIo;

 private:
  enum class Phase : uint8_t { kRequest, kAnswer, kHandshake, kDone };
  Step Advance();
  Phase phase_;
  int request_sent_ = 0;
  std::shared_ptr<TlsClientContext> ctx_;
  SSL* ssl_ = nullptr;
  Io io_;
  std::string session_key_;

 public:
  // OpenSSL's new-session callback: keeps the session for the next connection to this backend.
  static int OnNewSession(SSL* ssl, SSL_SESSION* session);
};

}  // namespace sf
