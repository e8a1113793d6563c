// TLS contexts of terminating routes (tls-server.h).

#include "tls-server.h"
#include "socket-bio.h"
#include "tls-suites.h"

#include <openssl/err.h>
#include <sys/stat.h>

#include <cstring>

namespace sf {

namespace {

// How often (at most) a handshake checks whether the route's files changed, as the JS path's
// ServerTlsContext does (router/tls-context.ts).
constexpr int64_t kReloadCheckMs = 1000;

std::string Stamp(const std::vector<const std::string*>& files, std::string* error) {
  std::string out;
  for (const std::string* f : files) {
    struct stat st;
    if (stat(f->c_str(), &st) != 0) {
      *error = "cannot read TLS files: " + *f + ": " + strerror(errno);
      return std::string();
    }
    out += std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec) + ":" +
           std::to_string(st.st_size) + ":" + std::to_string(st.st_ino) + "|";
  }
  return out;
}


// Marks (as the SSL's app data) a client that offered psk_key_exchange_modes: one that can resume
// with a TLS 1.3 ticket (RFC 8446 4.2.9: tickets it cannot use are not sent).
char kWantsTickets;

}  // namespace

std::string TlsSpec::Key() const {
  std::string k = cert_file + '\0' + key_file + '\0' + client_ca_file + '\0' + std::to_string(min_version) + '\0' +
                  (postgres ? "p" : "t") + (optional ? "o" : "r") + '\0' + std::to_string(handshake_timeout_ms);
  for (const auto& a : alpn) k += '\0' + a;
  return k;
}

TlsServer::TlsServer(TlsSpec s) : spec(std::move(s)) {
  for (const auto& a : spec.alpn) {
    if (a.empty() || a.size() > 255) continue;
    alpn_wire_ += static_cast<char>(a.size());
    alpn_wire_ += a;
  }
  std::lock_guard<std::mutex> lock(mu_);
  Load();
}

TlsServer::~TlsServer() {
  if (ctx_ != nullptr) SSL_CTX_free(ctx_);
}

std::string TlsServer::LastError() {
  std::lock_guard<std::mutex> lock(mu_);
  return error_;
}

int TlsServer::OnClientHello(SSL* ssl, int*, void*) {
  const unsigned char* data;
  size_t len;
  if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_psk_kex_modes, &data, &len) == 1) {
    SSL_set_app_data(ssl, &kWantsTickets);
  }
  return SSL_CLIENT_HELLO_SUCCESS;
}

bool TlsServer::IssueTickets(SSL* ssl) {
  if (SSL_get_app_data(ssl) != &kWantsTickets || SSL_version(ssl) != TLS1_3_VERSION) return false;
  SSL_set_app_data(ssl, nullptr);
  for (int i = 0; i < kTicketsPerConnection; i++) {
    if (SSL_new_session_ticket(ssl) != 1) break;
  }
  // Sent now when the socket takes them; otherwise with the next SSL_read or SSL_write (both run
  // the pending handshake messages first, and report WANT_WRITE meanwhile).
  if (SSL_do_handshake(ssl) != 1) ERR_clear_error();
  return true;
}

int TlsServer::SelectAlpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
                          unsigned int inlen, void* arg) {
  auto* self = static_cast<TlsServer*>(arg);
  const auto* wire = reinterpret_cast<const unsigned char*>(self->alpn_wire_.data());
  unsigned char* selected = nullptr;
  // Server preference (the route's order), as HAProxy's `alpn` and Node's ALPNProtocols choose.
  if (SSL_select_next_proto(&selected, outlen, wire, static_cast<unsigned int>(self->alpn_wire_.size()), in, inlen) ==
      OPENSSL_NPN_NEGOTIATED) {
    *out = selected;
    return SSL_TLSEXT_ERR_OK;
  }
  // RFC 7301 section 3.2: no protocol in common is a fatal no_application_protocol alert.
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

void TlsServer::Load() {
  std::vector<const std::string*> files = {&spec.cert_file, &spec.key_file};
  if (!spec.client_ca_file.empty()) files.push_back(&spec.client_ca_file);
  std::string error;
  std::string stamp = Stamp(files, &error);
  if (stamp.empty()) {
    error_ = error;
    return;
  }
  if (stamp == stamp_) return;
  const std::string names =
      spec.cert_file + " / " + spec.key_file + (spec.client_ca_file.empty() ? "" : " / " + spec.client_ca_file);
  ERR_clear_error();
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == nullptr) {
    error_ = "cannot load " + names + ": " + OpenSslError();
    return;
  }
  bool ok = SSL_CTX_set_min_proto_version(ctx, spec.min_version) == 1 &&
            SSL_CTX_set_ciphersuites(ctx, kTls13Ciphersuites) == 1 &&
            SSL_CTX_use_certificate_chain_file(ctx, spec.cert_file.c_str()) == 1 &&
            SSL_CTX_use_PrivateKey_file(ctx, spec.key_file.c_str(), SSL_FILETYPE_PEM) == 1 &&
            SSL_CTX_check_private_key(ctx) == 1;
  if (ok && !spec.client_ca_file.empty()) {
    ok = SSL_CTX_load_verify_locations(ctx, spec.client_ca_file.c_str(), nullptr) == 1;
    STACK_OF(X509_NAME)* names_list = ok ? SSL_load_client_CA_file(spec.client_ca_file.c_str()) : nullptr;
    if (names_list != nullptr) SSL_CTX_set_client_CA_list(ctx, names_list);
    // mTLS: a client without a certificate signed by the CA fails the handshake.
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  }
  if (!ok) {
    // A certificate written before its key (or the reverse) does not match for a moment: the old
    // context stays in force and the next check tries again.
    error_ = "cannot load " + names + ": " + OpenSslError();
    SSL_CTX_free(ctx);
    return;
  }
  // Partial writes and a moving write buffer: the relay writes what it has, keeps the rest in the
  // pair's own buffer (which may move) and retries after EPOLLOUT. Buffers are released while a
  // connection is idle, as HAProxy does, so an idle TLS connection costs ~no record buffers.
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
  // No renegotiation (a client could make the server do handshakes at will); a TCP end without
  // close_notify ends the stream like a FIN, as on the JS path and in HAProxy.
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_CIPHER_SERVER_PREFERENCE);
  // Read ahead: one recv takes every record queued, and a short recv tells the socket is drained.
  SSL_CTX_set_read_ahead(ctx, 1);
  // Resumption: the session cache (server side) and tickets, both OpenSSL's defaults; the session
  // id context is required once client certificates are verified, or resumed sessions fail.
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
  static const unsigned char kSessionContext[] = "sf-router";
  SSL_CTX_set_session_id_context(ctx, kSessionContext, sizeof kSessionContext - 1);
  // TLS 1.3 tickets wait for the connection's first bytes (IssueTickets).
  SSL_CTX_set_num_tickets(ctx, 0);
  SSL_CTX_set_client_hello_cb(ctx, &TlsServer::OnClientHello, nullptr);
  if (!alpn_wire_.empty()) SSL_CTX_set_alpn_select_cb(ctx, &TlsServer::SelectAlpn, this);
  if (ctx_ != nullptr) {
    SSL_CTX_free(ctx_);  // connections on it hold their own references
    reloads_++;
  }
  ctx_ = ctx;
  stamp_ = stamp;
  error_.clear();
}

SSL* TlsServer::NewSsl(int64_t now_ms) {
  SSL_CTX* ctx;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (now_ms - checked_ms_ >= kReloadCheckMs) {
      checked_ms_ = now_ms;
      Load();
    }
    ctx = ctx_;
    if (ctx == nullptr) return nullptr;
    SSL_CTX_up_ref(ctx);
  }
  SSL* ssl = SSL_new(ctx);
  SSL_CTX_free(ctx);
  return ssl;
}

}  // namespace sf
