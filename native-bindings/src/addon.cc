// N-API surface of the addon. The typed wrapper is native-bindings/index.ts; nothing else in the
// project loads this module directly.

#include <napi.h>
#include <string.h>

#include <memory>

#include "relay-engine.h"
#include "socket-options.h"

namespace {

struct AddonData {
  std::unique_ptr<sf::Engine> engine;
  Napi::ThreadSafeFunction on_close;
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

Napi::Value Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  AddonData* data = Data(env);
  Napi::Object out = Napi::Object::New(env);
  out.Set("threads", Napi::Number::New(env, data->engine ? data->engine->Threads() : 0));
  out.Set("pairs", Napi::Number::New(env, data->engine ? static_cast<double>(data->engine->ActivePairs()) : 0));
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

Napi::Object Module(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new AddonData());
  exports.Set("init", Napi::Function::New(env, Init));
  exports.Set("start", Napi::Function::New(env, Start));
  exports.Set("destroy", Napi::Function::New(env, Destroy));
  exports.Set("bytesIn", Napi::Function::New(env, BytesIn));
  exports.Set("bytesOut", Napi::Function::New(env, BytesOut));
  exports.Set("ref", Napi::Function::New(env, Ref));
  exports.Set("unref", Napi::Function::New(env, Unref));
  exports.Set("stats", Napi::Function::New(env, Stats));
  exports.Set("listenTcp", Napi::Function::New(env, ListenTcp));
  exports.Set("setTcpUserTimeout", Napi::Function::New(env, SetTcpUserTimeout));
  exports.Set("setKeepAlive", Napi::Function::New(env, SetKeepAlive));
  return exports;
}

}  // namespace

NODE_API_MODULE(sf_native, Module)
