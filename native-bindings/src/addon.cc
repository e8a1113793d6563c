// N-API surface of the addon. The typed wrapper is native-bindings/index.ts; nothing else in the
// project loads this module directly.

#include <napi.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include <memory>

#include "listen-batch.h"
#include "relay-engine.h"
#include "socket-options.h"
#include "tls-client.h"
#include "tls-server.h"

namespace {

struct AddonData {
  std::unique_ptr<sf::Engine> engine;
  Napi::ThreadSafeFunction on_close;
  Napi::ThreadSafeFunction on_events;
};

// JS holds a pair through this; the engine keeps its own reference until the pair is closed, so
// either side may let go first.
struct PairHandle {
  std::shared_ptr<sf::Pair> pair;
};

// Shaped like Node's own system errors (code "EADDRINUSE", errno, syscall), so callers handle
// both alike.
Napi::Value ThrowErrno(Napi::Env env, const std::string& syscall, const std::string& what, int err) {
  const char* name = strerrorname_np(err);
  Napi::Error e = Napi::Error::New(env, what + ": " + strerror(err));
  e.Set("code", Napi::String::New(env, name != nullptr ? name : "SF_ERR_NATIVE_SYSCALL"));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("syscall", Napi::String::New(env, syscall));
  e.ThrowAsJavaScriptException();
  return env.Undefined();
}

Napi::Value ThrowType(Napi::Env env, const char* message) {
  Napi::TypeError::New(env, message).ThrowAsJavaScriptException();
  return env.Undefined();
}

// applyPorts: numbers per route in `header`, per backend in `numbers` (native-bindings/index.ts).
constexpr size_t kRouteHeader = 6;
constexpr size_t kBackendNumbers = 6;
// Counters per port (NATIVE_PORT_STAT_FIELDS in native-bindings/index.ts).
constexpr uint32_t kPortStats = 16;

AddonData* Data(Napi::Env env) { return env.GetInstanceData<AddonData>(); }

sf::Pair* PairArg(const Napi::Value& v) {
  if (!v.IsExternal()) return nullptr;
  PairHandle* handle = v.As<Napi::External<PairHandle>>().Data();
  return handle != nullptr ? handle->pair.get() : nullptr;
}

// Stops the loop threads before Node tears down the thread-safe function they report through.
// Cleanup hooks run in reverse order of registration, and this one is added after the function
// was created, so it runs first.
void StopEngine(void* arg) { static_cast<AddonData*>(arg)->engine.reset(); }

// init(onClose(id, reason, errno, bytesIn, bytesOut), threads, pipeSize)
Napi::Value Init(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  AddonData* data = Data(env);
  if (data->engine) return ThrowType(env, "the relay engine is already initialised");
  if (!info[0].IsFunction() || !info[1].IsNumber() || !info[2].IsNumber()) {
    return ThrowType(env, "init(onClose: Function, threads: number, pipeSize: number)");
  }
  data->on_close = Napi::ThreadSafeFunction::New(env, info[0].As<Napi::Function>(), "sf-relay-close", 0, 1);
  // Unreferenced until a pair exists: an idle engine must not keep the process alive.
  data->on_close.Unref(env);
  Napi::ThreadSafeFunction tsfn = data->on_close;
  data->engine = std::make_unique<sf::Engine>(
      info[1].As<Napi::Number>().Uint32Value(), info[2].As<Napi::Number>().Int32Value(),
      [tsfn](const sf::CloseEvent& ev) mutable {
        auto* copy = new sf::CloseEvent(ev);
        napi_status status = tsfn.NonBlockingCall(copy, [](Napi::Env env, Napi::Function fn, sf::CloseEvent* e) {
          if (env != nullptr && fn != nullptr) {
            fn.Call({Napi::Number::New(env, e->id), Napi::Number::New(env, static_cast<int>(e->reason)),
                     Napi::Number::New(env, e->error), Napi::Number::New(env, static_cast<double>(e->bytes_in)),
                     Napi::Number::New(env, static_cast<double>(e->bytes_out))});
          }
          delete e;
        });
        if (status != napi_ok) delete copy;  // only while the environment shuts down
      });
  napi_add_env_cleanup_hook(env, StopEngine, data);
  return env.Undefined();
}

Napi::Buffer<char> OptionalBuffer(const Napi::Value& v, bool* ok) {
  *ok = v.IsBuffer() || v.IsNull() || v.IsUndefined();
  return v.IsBuffer() ? v.As<Napi::Buffer<char>>() : Napi::Buffer<char>();
}

// start(id, clientFd, backendFd, idleTimeoutMs, pendingIn, pendingOut, clientEof, backendEof)
Napi::Value Start(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  AddonData* data = Data(env);
  if (!data->engine) return ThrowType(env, "the relay engine is not initialised");
  if (!info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsNumber() || !info[3].IsNumber()) {
    return ThrowType(env, "start(id, clientFd, backendFd, idleTimeoutMs, pendingIn, pendingOut, clientEof, backendEof)");
  }
  sf::PairOptions options;
  options.id = info[0].As<Napi::Number>().Uint32Value();
  options.idle_timeout_ms = static_cast<uint64_t>(info[3].As<Napi::Number>().Int64Value());
  for (int dir = 0; dir < 2; dir++) {
    bool ok;
    Napi::Buffer<char> buf = OptionalBuffer(info[4 + dir], &ok);
    if (!ok) return ThrowType(env, "pending data must be a Buffer or null");
    if (!buf.IsEmpty()) options.pending[dir].assign(buf.Data(), buf.Length());
    options.eof[dir] = info[6 + dir].ToBoolean().Value();
  }
  int err = 0;
  std::shared_ptr<sf::Pair> pair = data->engine->Start(
      info[1].As<Napi::Number>().Int32Value(), info[2].As<Napi::Number>().Int32Value(), std::move(options), &err);
  if (!pair) return ThrowErrno(env, "fcntl", "relay start", err);
  return Napi::External<PairHandle>::New(env, new PairHandle{std::move(pair)},
                                         [](Napi::Env, PairHandle* handle) { delete handle; });
}

// destroy(pair, reset) -> true when this call closed it, false when it had already ended
Napi::Value Destroy(const Napi::CallbackInfo& info) {
  sf::Pair* pair = PairArg(info[0]);
  if (pair == nullptr) return ThrowType(info.Env(), "destroy(pair, reset)");
  return Napi::Boolean::New(info.Env(), sf::Engine::Destroy(*pair, info[1].ToBoolean().Value()));
}

Napi::Value BytesIn(const Napi::CallbackInfo& info) {
  sf::Pair* pair = PairArg(info[0]);
  if (pair == nullptr) return ThrowType(info.Env(), "bytesIn(pair)");
  return Napi::Number::New(info.Env(), static_cast<double>(sf::Engine::BytesIn(*pair)));
}

Napi::Value BytesOut(const Napi::CallbackInfo& info) {
  sf::Pair* pair = PairArg(info[0]);
  if (pair == nullptr) return ThrowType(info.Env(), "bytesOut(pair)");
  return Napi::Number::New(info.Env(), static_cast<double>(sf::Engine::BytesOut(*pair)));
}

// ref()/unref(): the JS side keeps the process alive exactly while pairs are active.
Napi::Value Ref(const Napi::CallbackInfo& info) {
  AddonData* data = Data(info.Env());
  if (data->on_close) data->on_close.Ref(info.Env());
  return info.Env().Undefined();
}

Napi::Value Unref(const Napi::CallbackInfo& info) {
  AddonData* data = Data(info.Env());
  if (data->on_close) data->on_close.Unref(info.Env());
  return info.Env().Undefined();
}

// refPorts(keep): natively accepted ports keep the process alive while any is open or draining,
// as a listening net.Server and its sockets do (the accept-events function is the handle held).
Napi::Value RefPorts(const Napi::CallbackInfo& info) {
  AddonData* data = Data(info.Env());
  if (data->on_events) {
    if (info[0].ToBoolean().Value()) data->on_events.Ref(info.Env());
    else data->on_events.Unref(info.Env());
  }
  return info.Env().Undefined();
}

Napi::Value Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  AddonData* data = Data(env);
  Napi::Object out = Napi::Object::New(env);
  out.Set("threads", Napi::Number::New(env, data->engine ? data->engine->Threads() : 0));
  out.Set("pairs", Napi::Number::New(env, data->engine ? static_cast<double>(data->engine->ActivePairs()) : 0));
  Napi::Array accepted = Napi::Array::New(env);
  if (data->engine) {
    std::vector<int64_t> per = data->engine->AcceptedPerThread();
    for (size_t i = 0; i < per.size(); i++) {
      accepted.Set(static_cast<uint32_t>(i), Napi::Number::New(env, static_cast<double>(per[i])));
    }
  }
  out.Set("accepted", accepted);
  Napi::Object steering = Napi::Object::New(env);
  sf::SteeringState st = data->engine ? data->engine->Steering() : sf::SteeringState{};
  steering.Set("enabled", Napi::Boolean::New(env, st.enabled));
  steering.Set("available", Napi::Boolean::New(env, st.available));
  steering.Set("reason", Napi::String::New(env, st.reason));
  steering.Set("minPorts", Napi::Number::New(env, static_cast<double>(st.min_ports)));
  steering.Set("ports", Napi::Number::New(env, static_cast<double>(st.ports)));
  steering.Set("listeners", Napi::Number::New(env, static_cast<double>(st.listeners)));
  out.Set("steering", steering);
  return out;
}

// listenTcp(host, port, backlog, reusePort, ipv6Only) -> fd
Napi::Value ListenTcp(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString() || !info[1].IsNumber() || !info[2].IsNumber()) {
    return ThrowType(env, "listenTcp(host, port, backlog, reusePort, ipv6Only)");
  }
  sf::ListenOptions o;
  o.host = info[0].As<Napi::String>().Utf8Value();
  o.port = info[1].As<Napi::Number>().Int32Value();
  o.backlog = info[2].As<Napi::Number>().Int32Value();
  o.reuse_port = info[3].ToBoolean().Value();
  o.ipv6_only = info[4].ToBoolean().Value();
  int fd = sf::ListenTcp(o);
  if (fd < 0) return ThrowErrno(env, "listen", "listen " + o.host + ":" + std::to_string(o.port), -fd);
  return Napi::Number::New(env, fd);
}

// reserveDescriptors(count): grows the descriptor table once for `count` more descriptors.
Napi::Value ReserveDescriptorsFor(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const double count = info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : -1;
  if (!(count >= 0)) return ThrowType(env, "reserveDescriptors(count)");
  sf::ReserveDescriptors(static_cast<size_t>(count));
  return env.Undefined();
}

Napi::Value SetTcpUserTimeout(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber() || !info[1].IsNumber()) return ThrowType(env, "setTcpUserTimeout(fd, ms)");
  int rc = sf::SetTcpUserTimeout(info[0].As<Napi::Number>().Int32Value(), info[1].As<Napi::Number>().Uint32Value());
  if (rc != 0) return ThrowErrno(env, "setsockopt", "setsockopt TCP_USER_TIMEOUT", -rc);
  return env.Undefined();
}

// setKeepAlive(fd, enable, idleSeconds, intervalSeconds, count)
Napi::Value SetKeepAlive(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber()) return ThrowType(env, "setKeepAlive(fd, enable, idleS, intervalS, count)");
  auto num = [&](size_t i) { return info[i].IsNumber() ? info[i].As<Napi::Number>().Int32Value() : 0; };
  int rc = sf::SetKeepAlive(num(0), info[1].ToBoolean().Value(), num(2), num(3), num(4));
  if (rc != 0) return ThrowErrno(env, "setsockopt", "setsockopt keepalive", -rc);
  return env.Undefined();
}

// --- Native accept path (docs/native-relay.md) ---------------------------------------------------

sf::Engine* EngineOf(const Napi::CallbackInfo& info) {
  AddonData* data = Data(info.Env());
  if (!data->engine) {
    ThrowType(info.Env(), "the relay engine is not initialised");
    return nullptr;
  }
  return data->engine.get();
}

uint32_t U32(const Napi::Value& v) { return v.IsNumber() ? v.As<Napi::Number>().Uint32Value() : 0; }
double Num(const Napi::Value& v) { return v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : 0; }

// onEvents(flat: number[]) receives [kind, owner, portId, port, ...] quadruples in batches.
Napi::Value InitEvents(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  sf::Engine* engine = EngineOf(info);
  if (engine == nullptr) return env.Undefined();
  if (!info[0].IsFunction()) return ThrowType(env, "initEvents(onEvents: Function)");
  AddonData* data = Data(env);
  data->on_events = Napi::ThreadSafeFunction::New(env, info[0].As<Napi::Function>(), "sf-accept-events", 0, 1);
  data->on_events.Unref(env);
  Napi::ThreadSafeFunction tsfn = data->on_events;
  sf::Engine* raw = engine;
  engine->SetEventSink([tsfn, raw]() mutable {
    tsfn.NonBlockingCall([raw](Napi::Env env, Napi::Function fn) {
      if (env == nullptr || fn == nullptr) return;
      std::vector<sf::NativeEvent> events = raw->TakeEvents();
      Napi::Array out = Napi::Array::New(env, events.size() * 4);
      for (size_t i = 0; i < events.size(); i++) {
        out.Set(i * 4, Napi::Number::New(env, events[i].kind));
        out.Set(i * 4 + 1, Napi::Number::New(env, events[i].owner));
        out.Set(i * 4 + 2, Napi::Number::New(env, events[i].port_id));
        out.Set(i * 4 + 3, Napi::Number::New(env, events[i].port));
      }
      fn.Call({out});
    });
  });
  return env.Undefined();
}

struct BudgetHandle {
  std::shared_ptr<sf::Budget> budget;
};

sf::Budget* BudgetArg(const Napi::Value& v) {
  if (!v.IsExternal()) return nullptr;
  BudgetHandle* handle = v.As<Napi::External<BudgetHandle>>().Data();
  return handle != nullptr ? handle->budget.get() : nullptr;
}

// createBudget(owner) -> handle of one router's connection budget and serving switch; its ports'
// events carry `owner`.
Napi::Value CreateBudget(const Napi::CallbackInfo& info) {
  auto budget = std::make_shared<sf::Budget>();
  budget->owner = U32(info[0]);
  return Napi::External<BudgetHandle>::New(info.Env(), new BudgetHandle{std::move(budget)},
                                           [](Napi::Env, BudgetHandle* handle) { delete handle; });
}

// Reads one backend address; false when host is not an IP address.
bool BackendAddress(const std::string& host, int port, sf::BackendSpec* b) {
  auto* v4 = reinterpret_cast<sockaddr_in*>(&b->addr);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&b->addr);
  if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(static_cast<uint16_t>(port));
    b->addr_len = sizeof(sockaddr_in);
    return true;
  }
  if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(static_cast<uint16_t>(port));
    b->addr_len = sizeof(sockaddr_in6);
    return true;
  }
  return false;
}

// Routes as applyPorts takes them: per route, `header` holds mode, connectTimeoutMs, idleTimeoutMs,
// drainTimeoutMs, maxConnections and its backend count; the routes' backends follow one another in
// ids and numbers (port, weight, epoch, state, primary, host index per backend). `hosts` lists each
// backend host once (a table has far fewer hosts than backends), so each is parsed once. Every
// route is parsed before any is used, so a bad argument changes nothing. Returns an error message,
// or nullptr.
const char* ParseRoutes(const Napi::Value& header_v, const Napi::Value& ids_v, const Napi::Value& hosts_v,
                        const Napi::Value& numbers_v, size_t routes, std::vector<sf::RouteSpec>* specs) {
  if (!header_v.IsTypedArray() || !ids_v.IsArray() || !hosts_v.IsArray() || !numbers_v.IsTypedArray()) {
    return "routes: header and numbers must be Float64Arrays, ids and hosts arrays";
  }
  Napi::Float64Array header = header_v.As<Napi::Float64Array>();
  Napi::Array ids = ids_v.As<Napi::Array>();
  Napi::Array hosts = hosts_v.As<Napi::Array>();
  Napi::Float64Array numbers = numbers_v.As<Napi::Float64Array>();
  const uint32_t backends = ids.Length();
  if (header.ElementLength() != routes * kRouteHeader ||
      numbers.ElementLength() != static_cast<size_t>(backends) * kBackendNumbers) {
    return "routes: arrays differ in length";
  }
  // Each distinct host parsed once; a host that is not an IP address (JS keeps such routes on its
  // own path) is left without an address: connecting to it fails like a refused connect, and the
  // rest of the batch, with its fences, still applies.
  const uint32_t host_count = hosts.Length();
  std::vector<sf::BackendSpec> parsed(host_count);
  for (uint32_t i = 0; i < host_count; i++) {
    Napi::Value host = hosts.Get(i);
    if (!host.IsString()) return "routes: backend hosts must be strings";
    BackendAddress(host.As<Napi::String>().Utf8Value(), 0, &parsed[i]);
  }
  specs->resize(routes);
  uint32_t next = 0;
  for (size_t r = 0; r < routes; r++) {
    const double* h = header.Data() + r * kRouteHeader;
    sf::RouteSpec& route = (*specs)[r];
    route.mode = static_cast<sf::RouteMode>(static_cast<uint32_t>(h[0]));
    route.connect_timeout_ms = static_cast<uint64_t>(h[1]);
    route.idle_timeout_ms = static_cast<uint64_t>(h[2]);
    route.drain_timeout_ms = static_cast<uint64_t>(h[3]);
    route.max_connections = static_cast<int64_t>(h[4]);
    const uint32_t n = static_cast<uint32_t>(h[5]);
    if (n > backends - next) return "routes: backend counts exceed the backends given";
    route.backends.resize(n);
    for (uint32_t i = 0; i < n; i++, next++) {
      sf::BackendSpec& b = route.backends[i];
      const double* x = numbers.Data() + static_cast<size_t>(next) * kBackendNumbers;
      Napi::Value id = ids.Get(next);
      const uint32_t host = static_cast<uint32_t>(x[5]);
      if (!id.IsString()) return "routes: backend ids must be strings";
      if (host >= host_count) return "routes: a backend's host index is out of range";
      b.id = id.As<Napi::String>().Utf8Value();
      b.weight = static_cast<int>(x[1]);
      b.epoch = static_cast<uint64_t>(x[2]);
      b.state = static_cast<sf::BackendSpec::State>(static_cast<uint32_t>(x[3]));
      b.primary = x[4] != 0;
      b.addr = parsed[host].addr;
      b.addr_len = parsed[host].addr_len;
      const uint16_t port_be = htons(static_cast<uint16_t>(x[0]));
      if (b.addr.ss_family == AF_INET) reinterpret_cast<sockaddr_in*>(&b.addr)->sin_port = port_be;
      else if (b.addr.ss_family == AF_INET6) reinterpret_cast<sockaddr_in6*>(&b.addr)->sin6_port = port_be;
    }
  }
  if (next != backends) return "routes: backend counts fall short of the backends given";
  return nullptr;
}

std::string Str(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  return v.IsString() ? v.As<Napi::String>().Utf8Value() : std::string();
}

// The TLS routes among the routes of applyPorts: an array (or undefined) of {index, certFile?,
// keyFile?, clientCaFile?, minVersion, alpn?: string[], startup, policy, handshakeTimeoutMs,
// backend?: {caFile?, certFile?, keyFile?, serverName?, postgres, tls: number[]}}, `index` into the
// routes. A terminating route (certFile) is given the shared TLS server of its settings, a route
// with TLS towards backends the shared TLS client of its backend settings and, per backend (in
// order), whether it is reached over TLS. Their files are loaded now, on this thread.
const char* ParseTls(sf::Engine* engine, const Napi::Value& tls_v, std::vector<sf::RouteSpec>* specs) {
  if (tls_v.IsUndefined() || tls_v.IsNull()) return nullptr;
  if (!tls_v.IsArray()) return "tls: must be an array";
  Napi::Array list = tls_v.As<Napi::Array>();
  for (uint32_t i = 0; i < list.Length(); i++) {
    Napi::Value e = list.Get(i);
    if (!e.IsObject()) return "tls: entries must be objects";
    Napi::Object o = e.As<Napi::Object>();
    const uint32_t index = U32(o.Get("index"));
    if (index >= specs->size()) return "tls: index out of range";
    Napi::Value backend_v = o.Get("backend");
    if (backend_v.IsObject()) {
      Napi::Object b = backend_v.As<Napi::Object>();
      sf::TlsClientSpec client;
      client.ca_file = Str(b, "caFile");
      client.cert_file = Str(b, "certFile");
      client.key_file = Str(b, "keyFile");
      client.server_name = Str(b, "serverName");
      client.postgres = b.Get("postgres").ToBoolean().Value();
      if (client.cert_file.empty() != client.key_file.empty()) return "tls: backend certFile and keyFile go together";
      Napi::Value flags_v = b.Get("tls");
      if (!flags_v.IsArray()) return "tls: backend.tls must be an array";
      Napi::Array flags = flags_v.As<Napi::Array>();
      auto& backends = (*specs)[index].backends;
      if (flags.Length() != backends.size()) return "tls: backend.tls must have one entry per backend";
      for (uint32_t k = 0; k < flags.Length(); k++) backends[k].tls = flags.Get(k).ToBoolean().Value();
      (*specs)[index].backend_tls = engine->TlsClientFor(client);
    }
    sf::TlsSpec spec;
    spec.cert_file = Str(o, "certFile");
    spec.key_file = Str(o, "keyFile");
    spec.client_ca_file = Str(o, "clientCaFile");
    if (spec.cert_file.empty() && spec.key_file.empty() && backend_v.IsObject()) continue;  // backend TLS only
    if (spec.cert_file.empty() || spec.key_file.empty()) return "tls: certFile and keyFile are required";
    spec.min_version = Str(o, "minVersion") == "TLSv1.3" ? TLS1_3_VERSION : TLS1_2_VERSION;
    Napi::Value alpn = o.Get("alpn");
    if (alpn.IsArray()) {
      Napi::Array a = alpn.As<Napi::Array>();
      for (uint32_t k = 0; k < a.Length(); k++) {
        Napi::Value p = a.Get(k);
        if (p.IsString()) spec.alpn.push_back(p.As<Napi::String>().Utf8Value());
      }
    }
    spec.postgres = Str(o, "startup") == "postgres";
    spec.optional = Str(o, "policy") == "optional";
    spec.handshake_timeout_ms = static_cast<uint64_t>(Num(o.Get("handshakeTimeoutMs")));
    if (spec.handshake_timeout_ms == 0) spec.handshake_timeout_ms = 10000;
    (*specs)[index].tls = engine->TlsFor(spec);
  }
  return nullptr;
}

// backendTlsFailure(portId) -> why the port's last backend TLS start failed, or undefined
Napi::Value BackendTlsFailure(const Napi::CallbackInfo& info) {
  sf::Engine* engine = EngineOf(info);
  if (engine == nullptr) return info.Env().Undefined();
  std::string failure = engine->BackendTlsFailure(U32(info[0]));
  if (failure.empty()) return info.Env().Undefined();
  return Napi::String::New(info.Env(), failure);
}

// tlsError(portId) -> why the port's certificate did not load, or undefined
Napi::Value TlsError(const Napi::CallbackInfo& info) {
  sf::Engine* engine = EngineOf(info);
  if (engine == nullptr) return info.Env().Undefined();
  std::string error = engine->TlsError(U32(info[0]));
  if (error.empty()) return info.Env().Undefined();
  return Napi::String::New(info.Env(), error);
}

// applyPorts(budget, host, changedIds: Float64Array, retiredIds: Float64Array, ports: Float64Array,
// backlog, reusePort, keepAliveMs, header, ids, hosts, numbers) -> Float64Array [killed, id per new
// port]. One table change in one call: the changed ports take their routes (the first
// changedIds.length routes; fenced connections are reset before the call returns), the retired
// ports stop accepting and drain, and the new ports open, each with its route (the routes after)
// in place before its first client: each new port's id, or a negative errno where that port could
// not be opened (the others are open).
Napi::Value ApplyPorts(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  sf::Engine* engine = EngineOf(info);
  if (engine == nullptr) return env.Undefined();
  if (!info[0].IsExternal() || !info[1].IsString() || !info[2].IsTypedArray() || !info[3].IsTypedArray() ||
      !info[4].IsTypedArray()) {
    return ThrowType(env,
                     "applyPorts(budget, host, changedIds, retiredIds, ports, backlog, reusePort, keepAliveMs, "
                     "header, ids, hosts, numbers)");
  }
  std::shared_ptr<sf::Budget> budget = info[0].As<Napi::External<BudgetHandle>>().Data()->budget;
  std::string host = info[1].As<Napi::String>().Utf8Value();
  Napi::Float64Array changed_ids = info[2].As<Napi::Float64Array>();
  Napi::Float64Array retired_ids = info[3].As<Napi::Float64Array>();
  Napi::Float64Array ports = info[4].As<Napi::Float64Array>();
  const int backlog = static_cast<int>(Num(info[5]));
  const bool reuse_port = info[6].ToBoolean().Value();
  const int keepalive_ms = static_cast<int>(Num(info[7]));
  const size_t changes = changed_ids.ElementLength();
  const size_t n = ports.ElementLength();
  std::vector<sf::RouteSpec> specs;
  if (const char* bad = ParseRoutes(info[8], info[9], info[10], info[11], changes + n, &specs)) {
    return ThrowType(env, bad);
  }
  if (const char* bad = ParseTls(engine, info[12], &specs)) return ThrowType(env, bad);
  std::vector<std::pair<uint32_t, sf::RouteSpec>> changed(changes);
  for (size_t i = 0; i < changes; i++) changed[i] = {static_cast<uint32_t>(changed_ids[i]), std::move(specs[i])};
  std::vector<uint32_t> retired(retired_ids.ElementLength());
  for (size_t i = 0; i < retired.size(); i++) retired[i] = static_cast<uint32_t>(retired_ids[i]);
  std::vector<int> numbers(n);
  for (size_t i = 0; i < n; i++) numbers[i] = static_cast<int>(ports[i]);
  std::vector<sf::RouteSpec> opening(std::make_move_iterator(specs.begin() + static_cast<std::ptrdiff_t>(changes)),
                                     std::make_move_iterator(specs.end()));
  std::vector<int64_t> ids;
  // The router's own threshold for steering new ports (RouterOptions.steerMinPorts), if it has one.
  const double steer_min = info[13].IsNumber() ? Num(info[13]) : -1;
  const int64_t steer_min_ports = steer_min >= 0 && steer_min <= 9007199254740991.0 ? static_cast<int64_t>(steer_min) : -1;
  const int64_t killed = engine->ApplyPorts(std::move(changed), retired, budget, host, numbers, std::move(opening),
                                            backlog, reuse_port, keepalive_ms, &ids, steer_min_ports);
  Napi::Float64Array out = Napi::Float64Array::New(env, n + 1);
  out[0] = static_cast<double>(killed);
  for (size_t i = 0; i < n; i++) out[i + 1] = static_cast<double>(i < ids.size() ? ids[i] : -EINVAL);
  return out;
}

Napi::Value RetirePort(const Napi::CallbackInfo& info) {
  sf::Engine* engine = EngineOf(info);
  if (engine == nullptr) return info.Env().Undefined();
  return Napi::Boolean::New(info.Env(), engine->RetirePort(U32(info[0])));
}

Napi::Value ReleasePort(const Napi::CallbackInfo& info) {
  sf::Engine* engine = EngineOf(info);
  if (engine == nullptr) return info.Env().Undefined();
  return Napi::Boolean::New(info.Env(), engine->ReleasePort(U32(info[0])));
}

Napi::Value KillAll(const Napi::CallbackInfo& info) {
  sf::Engine* engine = EngineOf(info);
  if (engine == nullptr) return info.Env().Undefined();
  return Napi::Number::New(info.Env(), static_cast<double>(engine->KillAll(U32(info[0]))));
}

// portStats(portId) -> numbers in PortCounters order, or undefined for an unknown port
Napi::Value PortStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  sf::Engine* engine = EngineOf(info);
  if (engine == nullptr) return env.Undefined();
  sf::PortCounters c;
  if (!engine->Stats(U32(info[0]), &c)) return env.Undefined();
  const uint64_t values[kPortStats] = {c.active,         c.total,          c.bytes_in,         c.bytes_out,
                             c.connect_errors, c.connect_timeouts, c.refused_no_backend, c.refused_max,
                             c.refused_self_loop, c.killed_fenced, c.killed_drained,   c.idle_timeouts,
                             c.tls_handshakes, c.tls_handshake_errors, c.refused_plaintext, c.backend_tls_errors};
  Napi::Array out = Napi::Array::New(env, kPortStats);
  for (uint32_t i = 0; i < kPortStats; i++) out.Set(i, Napi::Number::New(env, static_cast<double>(values[i])));
  return out;
}

// portStatsMany(portIds: Float64Array) -> Float64Array of kPortStats numbers per port in PortCounters order
// (a scrape of a 10,000-port router is one call); an unknown port's numbers are all -1.
Napi::Value PortStatsMany(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  sf::Engine* engine = EngineOf(info);
  if (engine == nullptr) return env.Undefined();
  if (!info[0].IsTypedArray()) return ThrowType(env, "portStatsMany(portIds: Float64Array)");
  Napi::Float64Array ids = info[0].As<Napi::Float64Array>();
  const size_t n = ids.ElementLength();
  Napi::Float64Array out = Napi::Float64Array::New(env, n * kPortStats);
  for (size_t i = 0; i < n; i++) {
    sf::PortCounters c;
    double* o = out.Data() + i * kPortStats;
    if (!engine->Stats(static_cast<uint32_t>(ids[i]), &c)) {
      for (uint32_t k = 0; k < kPortStats; k++) o[k] = -1;
      continue;
    }
    const uint64_t values[kPortStats] = {c.active,         c.total,            c.bytes_in,           c.bytes_out,
                               c.connect_errors, c.connect_timeouts, c.refused_no_backend, c.refused_max,
                               c.refused_self_loop, c.killed_fenced, c.killed_drained,     c.idle_timeouts,
                               c.tls_handshakes, c.tls_handshake_errors, c.refused_plaintext, c.backend_tls_errors};
    for (uint32_t k = 0; k < kPortStats; k++) o[k] = static_cast<double>(values[k]);
  }
  return out;
}

// releasePorts(portIds: Float64Array) -> Uint8Array, 1 where that retired port had no connection
// left and is forgotten (as releasePort, for every draining port in one call).
Napi::Value ReleasePorts(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  sf::Engine* engine = EngineOf(info);
  if (engine == nullptr) return env.Undefined();
  if (!info[0].IsTypedArray()) return ThrowType(env, "releasePorts(portIds: Float64Array)");
  Napi::Float64Array ids = info[0].As<Napi::Float64Array>();
  const size_t n = ids.ElementLength();
  Napi::Uint8Array out = Napi::Uint8Array::New(env, n);
  for (size_t i = 0; i < n; i++) out[i] = engine->ReleasePort(static_cast<uint32_t>(ids[i])) ? 1 : 0;
  return out;
}

Napi::Value ActiveFor(const Napi::CallbackInfo& info) {
  sf::Engine* engine = EngineOf(info);
  if (engine == nullptr || !info[1].IsString()) return info.Env().Undefined();
  return Napi::Number::New(info.Env(),
                           static_cast<double>(engine->ActiveFor(U32(info[0]), info[1].As<Napi::String>().Utf8Value())));
}

// setServing(budget, serving)
Napi::Value SetServing(const Napi::CallbackInfo& info) {
  sf::Budget* budget = BudgetArg(info[0]);
  if (budget == nullptr) return ThrowType(info.Env(), "setServing(budget, serving)");
  budget->serving.store(info[1].ToBoolean().Value());
  return info.Env().Undefined();
}

// rebudget(budget, limit, reserve, reservedBindings, jsReservedInUse)
Napi::Value Rebudget(const Napi::CallbackInfo& info) {
  sf::Engine* engine = EngineOf(info);
  sf::Budget* budget = BudgetArg(info[0]);
  if (engine == nullptr) return info.Env().Undefined();
  if (budget == nullptr) return ThrowType(info.Env(), "rebudget(budget, limit, reserve, reservedBindings, jsInUse)");
  engine->Rebudget(*budget, static_cast<int64_t>(Num(info[1])), static_cast<int64_t>(Num(info[2])),
                   static_cast<int64_t>(Num(info[3])), static_cast<int64_t>(Num(info[4])));
  return info.Env().Undefined();
}

// admit(budget, ownActive, reserved) -> bool; release(budget, ownActiveAfter, reserved): the JS
// path's share of the router's one budget.
Napi::Value Admit(const Napi::CallbackInfo& info) {
  sf::Budget* budget = BudgetArg(info[0]);
  if (budget == nullptr) return ThrowType(info.Env(), "admit(budget, ownActive, reserved)");
  return Napi::Boolean::New(info.Env(), budget->Admit(static_cast<int64_t>(Num(info[1])), info[2].ToBoolean().Value()));
}

Napi::Value Release(const Napi::CallbackInfo& info) {
  sf::Budget* budget = BudgetArg(info[0]);
  if (budget == nullptr) return ThrowType(info.Env(), "release(budget, ownActiveAfter, reserved)");
  budget->Release(static_cast<int64_t>(Num(info[1])), info[2].ToBoolean().Value());
  return info.Env().Undefined();
}

// budgetStats(budget) -> [active, refusedGlobal]
Napi::Value BudgetStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  sf::Budget* budget = BudgetArg(info[0]);
  if (budget == nullptr) return ThrowType(env, "budgetStats(budget)");
  std::lock_guard<std::mutex> lock(budget->mu);
  Napi::Array out = Napi::Array::New(env, 2);
  out.Set(0u, Napi::Number::New(env, static_cast<double>(budget->active)));
  out.Set(1u, Napi::Number::New(env, static_cast<double>(budget->refused_global)));
  return out;
}

Napi::Object Module(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new AddonData());
  exports.Set("init", Napi::Function::New(env, Init));
  exports.Set("start", Napi::Function::New(env, Start));
  exports.Set("destroy", Napi::Function::New(env, Destroy));
  exports.Set("bytesIn", Napi::Function::New(env, BytesIn));
  exports.Set("bytesOut", Napi::Function::New(env, BytesOut));
  exports.Set("ref", Napi::Function::New(env, Ref));
  exports.Set("unref", Napi::Function::New(env, Unref));
  exports.Set("refPorts", Napi::Function::New(env, RefPorts));
  exports.Set("stats", Napi::Function::New(env, Stats));
  exports.Set("listenTcp", Napi::Function::New(env, ListenTcp));
  exports.Set("setTcpUserTimeout", Napi::Function::New(env, SetTcpUserTimeout));
  exports.Set("setKeepAlive", Napi::Function::New(env, SetKeepAlive));
  exports.Set("reserveDescriptors", Napi::Function::New(env, ReserveDescriptorsFor));
  exports.Set("initEvents", Napi::Function::New(env, InitEvents));
  exports.Set("createBudget", Napi::Function::New(env, CreateBudget));
  exports.Set("applyPorts", Napi::Function::New(env, ApplyPorts));
  exports.Set("retirePort", Napi::Function::New(env, RetirePort));
  exports.Set("releasePort", Napi::Function::New(env, ReleasePort));
  exports.Set("killAll", Napi::Function::New(env, KillAll));
  exports.Set("portStats", Napi::Function::New(env, PortStats));
  exports.Set("portStatsMany", Napi::Function::New(env, PortStatsMany));
  exports.Set("releasePorts", Napi::Function::New(env, ReleasePorts));
  exports.Set("activeFor", Napi::Function::New(env, ActiveFor));
  exports.Set("setServing", Napi::Function::New(env, SetServing));
  exports.Set("rebudget", Napi::Function::New(env, Rebudget));
  exports.Set("admit", Napi::Function::New(env, Admit));
  exports.Set("release", Napi::Function::New(env, Release));
  exports.Set("budgetStats", Napi::Function::New(env, BudgetStats));
  exports.Set("tlsError", Napi::Function::New(env, TlsError));
  exports.Set("backendTlsFailure", Napi::Function::New(env, BackendTlsFailure));
  // What this build can do beyond the basics, so that a router paired with an older addon keeps
  // such routes on the JS path.
  Napi::Array features = Napi::Array::New(env, 1);
  features.Set(0u, Napi::String::New(env, "backend-tls"));
  exports.Set("features", features);
  return exports;
}

}  // namespace

NODE_API_MODULE(sf_native, Module)
