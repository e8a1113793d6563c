// TLS to backends on the native accept path (tls-client.h).

#include "tls-client.h"
#include "tls-suites.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <cstring>

namespace sf {

struct TlsClientContext {
  SSL_CTX* ctx = nullptr;
  std::mutex mu;
  // One resumable session per backend (address and name), replaced by each newer one.
  std::unordered_map<std::string, SSL_SESSION*> sessions;
  std::string last_failure;
  ~TlsClientContext() {
    for (auto& s : sessions) SSL_SESSION_free(s.second);
    if (ctx != nullptr) SSL_CTX_free(ctx);
  }
};

namespace {

// As the JS path (router/backend-tls.ts BACKEND_CA_RECHECK_MS) and the server side (tls-server.cc).
constexpr int64_t kReloadCheckMs = 1000;

// PostgreSQL's SSLRequest: length 8, code 1234.5679 (protocol 3.0, "SSL Session Encryption").
constexpr unsigned char kSslRequest[8] = {0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f};

std::string Stamp(const std::string& f, std::string* error) {
  struct stat st;
  if (stat(f.c_str(), &st) != 0) {
    *error = f + ": " + strerror(errno);
    return std::string();
  }
  return std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec) + ":" +
         std::to_string(st.st_size) + ":" + std::to_string(st.st_ino) + "|";
}

}  // namespace

std::string TlsClientSpec::Key() const {
  return ca_file + '\0' + cert_file + '\0' + key_file + '\0' + server_name + '\0' + (postgres ? "p" : "t");
}

TlsClient::TlsClient(TlsClientSpec s) : spec(std::move(s)) {
  std::lock_guard<std::mutex> lock(mu_);
  Load();
}

TlsClient::~TlsClient() = default;

std::string TlsClient::LastError() {
  std::lock_guard<std::mutex> lock(mu_);
  return error_;
}

void TlsClient::Load() {
  std::string stamp;
  for (const std::string* f : {&spec.ca_file, &spec.cert_file, &spec.key_file}) {
    if (f->empty()) continue;
    std::string error;
    std::string s = Stamp(*f, &error);
    if (s.empty()) {
      error_ = "cannot read the backend TLS files: " + error;
      return;
    }
    stamp += s;
  }
  if (ctx_ && stamp == stamp_) return;
  ERR_clear_error();
  auto made = std::make_shared<TlsClientContext>();
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == nullptr) {
    error_ = "cannot build the backend TLS context: " + OpenSslError();
    return;
  }
  made->ctx = ctx;
  // Node's defaults for tls.connect: TLS 1.2 at least, the peer verified.
  bool ok = SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) == 1 && SSL_CTX_set_ciphersuites(ctx, kTls13Ciphersuites) == 1;
  // With a CA file only that CA is trusted (the platform CA), as Node's `ca` option replaces its
  // roots; without one the system's CAs.
  if (ok && !spec.ca_file.empty()) ok = SSL_CTX_load_verify_locations(ctx, spec.ca_file.c_str(), nullptr) == 1;
  if (ok && spec.ca_file.empty()) ok = SSL_CTX_set_default_verify_paths(ctx) == 1;
  std::string what = spec.ca_file.empty() ? "the system CAs" : spec.ca_file;
  if (ok && !spec.cert_file.empty()) {
    what = spec.cert_file + " / " + spec.key_file;
    ok = SSL_CTX_use_certificate_chain_file(ctx, spec.cert_file.c_str()) == 1 &&
         SSL_CTX_use_PrivateKey_file(ctx, spec.key_file.c_str(), SSL_FILETYPE_PEM) == 1 &&
         SSL_CTX_check_private_key(ctx) == 1;
  }
  if (!ok) {
    // A certificate written before its key (or the reverse): the previous context stays in force,
    // the next check (a second later) tries again.
    error_ = "cannot load the backend TLS files (" + what + "): " + OpenSslError();
    return;
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF);
  SSL_CTX_set_read_ahead(ctx, 1);
  // Resumption: sessions are kept here, one per backend, not in OpenSSL's internal cache.
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  SSL_CTX_sess_set_new_cb(ctx, &BackendTls::OnNewSession);
  ctx_ = std::move(made);
  stamp_ = stamp;
  error_.clear();
}

std::string TlsClient::LastFailure() {
  std::shared_ptr<TlsClientContext> ctx;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ctx = ctx_;
  }
  if (!ctx) return std::string();
  std::lock_guard<std::mutex> lock(ctx->mu);
  return ctx->last_failure;
}

std::shared_ptr<TlsClientContext> TlsClient::Context(int64_t now_ms) {
  std::lock_guard<std::mutex> lock(mu_);
  if (now_ms - checked_ms_ >= kReloadCheckMs) {
    checked_ms_ = now_ms;
    Load();
  }
  return ctx_;
}

BackendTls::BackendTls(std::shared_ptr<TlsClientContext> ctx, bool postgres, const std::string& server_name, int fd,
                       const sockaddr_storage& addr)
    : phase_(postgres ? Phase::kRequest : Phase::kHandshake), ctx_(std::move(ctx)) {
  io_.fd = fd;
  if (!ctx_) {
    failure = "the backend TLS files never loaded";
    return;
  }
  ssl_ = SSL_new(ctx_->ctx);
  if (ssl_ == nullptr) {
    failure = "cannot start TLS: " + OpenSslError();
    return;
  }
  SSL_set_app_data(ssl_, this);
  BIO* bio = BIO_new(SocketBioMethod());
  BIO_set_data(bio, &io_);
  SSL_set_bio(ssl_, bio, bio);
  SSL_set_connect_state(ssl_);
  bool ok;
  unsigned char literal[16];
  const bool name_is_ip = !server_name.empty() && (inet_pton(AF_INET, server_name.c_str(), literal) == 1 ||
                                                   inet_pton(AF_INET6, server_name.c_str(), literal) == 1);
  if (name_is_ip) {
    // A name that is an IP address is checked as one (Node's checkServerIdentity does), and not
    // sent as SNI (RFC 6066 section 3 allows host names only; Node leaves it out too).
    ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_), server_name.c_str()) == 1;
  } else if (!server_name.empty()) {
    // The name is sent as SNI and must be in the certificate (router/backend-tls.ts: Node checks
    // `servername` when there is one).
    ok = SSL_set_tlsext_host_name(ssl_, server_name.c_str()) == 1 && SSL_set1_host(ssl_, server_name.c_str()) == 1;
  } else {
    // Else the address connected to, in the certificate's IP addresses (no SNI for an address,
    // RFC 6066 section 3).
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl_);
    if (addr.ss_family == AF_INET6) {
      const auto* a = reinterpret_cast<const sockaddr_in6*>(&addr);
      ok = X509_VERIFY_PARAM_set1_ip(param, a->sin6_addr.s6_addr, 16) == 1;
    } else {
      const auto* a = reinterpret_cast<const sockaddr_in*>(&addr);
      ok = X509_VERIFY_PARAM_set1_ip(param, reinterpret_cast<const unsigned char*>(&a->sin_addr), 4) == 1;
    }
  }
  if (!ok) {
    failure = "cannot set the name to verify: " + OpenSslError();
    SSL_free(ssl_);
    ssl_ = nullptr;
    return;
  }
  session_key_.assign(reinterpret_cast<const char*>(&addr), sizeof addr);
  session_key_ += server_name;
  std::lock_guard<std::mutex> lock(ctx_->mu);
  auto it = ctx_->sessions.find(session_key_);
  if (it != ctx_->sessions.end()) SSL_set_session(ssl_, it->second);
}

BackendTls::~BackendTls() {
  // No close_notify: a pair closed here is reset or already ended.
  if (ssl_ != nullptr) SSL_free(ssl_);
}

int BackendTls::OnNewSession(SSL* ssl, SSL_SESSION* session) {
  auto* self = static_cast<BackendTls*>(SSL_get_app_data(ssl));
  if (self == nullptr || !self->ctx_ || SSL_SESSION_is_resumable(session) == 0) return 0;
  std::lock_guard<std::mutex> lock(self->ctx_->mu);
  SSL_SESSION*& slot = self->ctx_->sessions[self->session_key_];
  if (slot != nullptr) SSL_SESSION_free(slot);
  slot = session;
  return 1;  // the reference is kept
}

BackendTls::Step BackendTls::Handshake() {
  const Step step = Advance();
  if (step == Step::kFailed && ctx_) {
    std::lock_guard<std::mutex> lock(ctx_->mu);
    ctx_->last_failure = failure;
  }
  return step;
}

BackendTls::Step BackendTls::Advance() {
  if (ssl_ == nullptr) return Step::kFailed;
  for (;;) {
    switch (phase_) {
      case Phase::kRequest: {
        const ssize_t n = send(io_.fd, kSslRequest + request_sent_, sizeof kSslRequest - request_sent_,
                               MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return Step::kWait;
        if (n <= 0) {
          failure = std::string("cannot send the SSLRequest: ") + strerror(n < 0 ? errno : EPIPE);
          return Step::kFailed;
        }
        request_sent_ += static_cast<int>(n);
        if (request_sent_ == static_cast<int>(sizeof kSslRequest)) phase_ = Phase::kAnswer;
        continue;
      }
      case Phase::kAnswer: {
        // One byte is the answer; a second one in the same read would be bytes injected ahead of
        // the handshake (CVE-2021-23222), refused as the JS path refuses a longer first chunk.
        unsigned char b[2];
        const ssize_t n = recv(io_.fd, b, sizeof b, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return Step::kWait;
        if (n <= 0) {
          failure = n == 0 ? "the backend closed before answering the SSLRequest"
                           : std::string("cannot read the SSLRequest's answer: ") + strerror(errno);
          return Step::kFailed;
        }
        if (n != 1 || b[0] != 'S') {
          failure = std::string("the backend declined TLS (answered the SSLRequest with '") +
                    static_cast<char>(b[0]) + "')";
          return Step::kFailed;
        }
        phase_ = Phase::kHandshake;
        continue;
      }
      case Phase::kHandshake: {
        const int r = SSL_do_handshake(ssl_);
        if (r == 1) {
          phase_ = Phase::kDone;
          return Step::kDone;
        }
        const int e = SSL_get_error(ssl_, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return Step::kWait;
        const long verify = SSL_get_verify_result(ssl_);
        if (verify != X509_V_OK) {
          failure = std::string("backend certificate: ") + X509_verify_cert_error_string(verify);
          ERR_clear_error();
        } else if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
          failure = std::string("the backend closed during the handshake") +
                    (io_.error != 0 ? std::string(": ") + strerror(io_.error) : std::string());
        } else {
          failure = "handshake: " + OpenSslError();
        }
        return Step::kFailed;
      }
      case Phase::kDone:
        return Step::kDone;
    }
  }
}

ssize_t BackendTls::Read(char* out, size_t len) {
  read_wants_write = false;
  const int n = SSL_read(ssl_, out, static_cast<int>(std::min<size_t>(len, INT32_MAX)));
  if (n > 0) return n;
  switch (SSL_get_error(ssl_, n)) {
    case SSL_ERROR_WANT_READ:
      errno = EAGAIN;
      return -1;
    case SSL_ERROR_WANT_WRITE:
      read_wants_write = true;
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

ssize_t BackendTls::Write(const char* data, size_t len) {
  write_wants_read = false;
  const int n = SSL_write(ssl_, data, static_cast<int>(std::min<size_t>(len, INT32_MAX)));
  if (n > 0) return n;
  switch (SSL_get_error(ssl_, n)) {
    case SSL_ERROR_WANT_WRITE:
      errno = EAGAIN;
      return -1;
    case SSL_ERROR_WANT_READ:
      write_wants_read = true;
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

void BackendTls::Shutdown() {
  if (ssl_ == nullptr || phase_ != Phase::kDone) return;
  SSL_shutdown(ssl_);
  ERR_clear_error();
}

bool BackendTls::MayHaveMore() const { return SSL_has_pending(ssl_) != 0 || !io_.short_read; }

}  // namespace sf
