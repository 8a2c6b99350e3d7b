// ephrun._ssh: binds host/ssh (sessions, commands, SFTP, sync). The friendly
// layer, dry-run and error policy live in stdlib/ephrun/ssh.lua.
//
// A session is shared between the Lua userdata and the work in flight through a
// shared_ptr, so collecting the userdata mid-transfer is safe; its mutex keeps
// one operation at a time on the connection (libssh2 sessions are not
// thread-safe) while other sessions proceed in parallel.
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstdio>
#include <mutex>

#include "lua/bind.hpp"
#include "runtime/runtime.hpp"
#include "runtime/secrets.hpp"
#include "ssh/error.hpp"
#include "ssh/session.hpp"
#include "ssh/sftp.hpp"
#include "ssh/sync.hpp"

namespace ephrun {
namespace {

using namespace std::chrono;

struct Box {
  std::mutex mu;
  ssh::Session session;
  explicit Box(ssh::Session s) : session(std::move(s)) {}
};

struct SessionRef {
  static constexpr const char* kMeta = "ephrun.ssh.Session";
  std::shared_ptr<Box> box;
  std::string label;
};

std::shared_ptr<Box> check_open(lua_State* L) {
  auto* ref = lua::check<SessionRef>(L, 1);
  if (!ref->box) luaL_error(L, "the SSH session to %s is closed", ref->label.c_str());
  return ref->box;
}

std::vector<std::string> string_list(lua_State* L, int idx, const char* key) {
  std::vector<std::string> out;
  if (lua_type(L, idx) != LUA_TTABLE) return out;
  if (lua_getfield(L, idx, key) == LUA_TTABLE) {
    lua_Integer n = luaL_len(L, -1);
    for (lua_Integer i = 1; i <= n; ++i) {
      lua_geti(L, -1, i);
      if (const char* s = lua_tostring(L, -1)) out.emplace_back(s);
      lua_pop(L, 1);
    }
  } else if (!lua_isnil(L, -1)) {
    luaL_error(L, "field '%s' must be a list of strings", key);
  }
  lua_pop(L, 1);
  return out;
}

std::map<std::string, std::string> string_map(lua_State* L, int idx, const char* key) {
  std::map<std::string, std::string> out;
  if (lua_type(L, idx) != LUA_TTABLE) return out;
  if (lua_getfield(L, idx, key) == LUA_TTABLE) {
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      if (lua_type(L, -2) == LUA_TSTRING) {
        const char* v = luaL_tolstring(L, -1, nullptr);
        out[lua_tostring(L, -3)] = v;
        lua_pop(L, 1);
      }
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  return out;
}

milliseconds opt_seconds(lua_State* L, int idx, const char* key, double def) {
  double s = lua::opt_number_field(L, idx, key, def);
  return milliseconds(static_cast<long>(s * 1000));
}

// Expected failures come back as (nil, message, kind) for the stdlib to raise.
Outcome ssh_failure(const ssh::Error& e) {
  std::string msg = e.what();
  std::string kind = ssh::kind_name(e.kind());
  return Outcome{[msg, kind](lua_State* L) {
                   lua_pushnil(L);
                   lua_pushstring(L, msg.c_str());
                   lua_pushstring(L, kind.c_str());
                   return 3;
                 },
                 {}};
}

ssh::ConnectOptions connect_options(lua_State* L, int idx) {
  luaL_checktype(L, idx, LUA_TTABLE);
  ssh::ConnectOptions o;
  o.host = lua::opt_string_field(L, idx, "host", "");
  if (o.host.empty()) luaL_error(L, "ssh: 'host' is required");
  o.port = static_cast<int>(lua::opt_number_field(L, idx, "port", 22));
  o.user = lua::opt_string_field(L, idx, "user", "");
  if (o.user.empty()) {
    const char* u = getenv("USER");
    o.user = u ? u : "root";
  }
  o.private_key = lua::opt_string_field(L, idx, "key", "");
  o.key_file = lua::opt_string_field(L, idx, "key_file", "");
  o.passphrase = lua::opt_string_field(L, idx, "passphrase", "");
  o.agent = lua::opt_bool_field(L, idx, "agent", false);
  o.host_key = lua::opt_string_field(L, idx, "host_key", "");
  o.known_hosts = lua::opt_string_field(L, idx, "known_hosts", "");
  o.insecure_accept_any_host_key =
      lua::opt_bool_field(L, idx, "insecure_accept_any_host_key", false);
  o.connect_timeout = opt_seconds(L, idx, "timeout", 10);
  o.keepalive_interval = seconds(static_cast<long>(lua::opt_number_field(L, idx, "keepalive", 15)));
  if (!o.private_key.empty()) Secrets::global().add("ssh-private-key", o.private_key);
  if (!o.passphrase.empty()) Secrets::global().add("ssh-passphrase", o.passphrase);
  return o;
}

Outcome session_outcome(ssh::Session s) {
  auto box = std::make_shared<Box>(std::move(s));
  return Outcome{[box](lua_State* L) {
                   lua::push_new<SessionRef>(L, SessionRef{box, box->session.label()});
                   return 1;
                 },
                 {}};
}

// _ssh.connect(opts) -> Session | nil, msg, kind
int l_ssh_connect(lua_State* L) {
  ssh::ConnectOptions o = connect_options(L, 1);
  return await(L, "ssh connect " + o.host, [o](const CancelToken& tok) {
    try {
      return session_outcome(ssh::Session::connect(o, tok));
    } catch (const ssh::Error& e) {
      return ssh_failure(e);
    }
  });
}

// _ssh.wait(opts) -> Session | nil, msg, kind   (opts.deadline: seconds from now)
int l_ssh_wait(lua_State* L) {
  ssh::ConnectOptions o = connect_options(L, 1);
  auto deadline = steady_clock::now() + opt_seconds(L, 1, "deadline", 300);
  return await(
      L, "wait for SSH on " + o.host + ":" + std::to_string(o.port),
      [o, deadline](const CancelToken& tok) {
        try {
          return session_outcome(ssh::wait(o, deadline, tok, [&](const ssh::Error& e, int n) {
            spdlog::debug("ssh {}:{} attempt {}: {}", o.host, o.port, n, e.what());
          }));
        } catch (const ssh::Error& e) {
          return ssh_failure(e);
        }
      });
}

void push_sync_stats(lua_State* L, const ssh::SyncStats& s) {
  lua_createtable(L, 0, 8);
  auto set = [&](const char* k, double v) {
    lua_pushnumber(L, v);
    lua_setfield(L, -2, k);
  };
  set("files_total", static_cast<double>(s.files_total));
  set("bytes_total", static_cast<double>(s.bytes_total));
  set("files_sent", static_cast<double>(s.files_sent));
  set("bytes_sent", static_cast<double>(s.bytes_sent));
  set("deleted", static_cast<double>(s.deleted));
  set("excluded", static_cast<double>(s.excluded));
  set("duration", static_cast<double>(s.duration.count()) / 1000.0);
  lua_pushboolean(L, s.used_sftp);
  lua_setfield(L, -2, "used_sftp");
}

ssh::SyncOptions sync_options(lua_State* L, int idx) {
  ssh::SyncOptions o;
  o.exclude = string_list(L, idx, "exclude");
  o.include = string_list(L, idx, "include");
  o.delete_extra = lua::opt_bool_field(L, idx, "delete", false);
  o.gitignore = lua::opt_bool_field(L, idx, "gitignore", true);
  return o;
}

// _ssh.scan_local(dir, opts) -> stats (what sync would consider; no network)
int l_ssh_scan_local(lua_State* L) {
  std::string dir = luaL_checkstring(L, 1);
  push_sync_stats(L, ssh::scan_local(dir, sync_options(L, 2)));
  return 1;
}

// _ssh.never_send() -> {".env*", ...}: the patterns no sync or deploy ever sends.
int l_ssh_never_send(lua_State* L) {
  lua_createtable(L, static_cast<int>(ssh::kNeverSend.size()), 0);
  for (std::size_t i = 0; i < ssh::kNeverSend.size(); ++i) {
    lua_pushstring(L, ssh::kNeverSend[i].c_str());
    lua_rawseti(L, -2, static_cast<lua_Integer>(i + 1));
  }
  return 1;
}

// _ssh.never_sent(path) -> bool (any component, ignoring case)
int l_ssh_never_sent(lua_State* L) {
  lua_pushboolean(L, ssh::never_sent(luaL_checkstring(L, 1)));
  return 1;
}

// Runs `fn(session, tok)` on a worker thread with the session locked, turning
// ssh::Error into (nil, msg, kind).
template <class Fn>
int with_session(lua_State* L, std::string what, Fn fn) {
  auto box = check_open(L);
  return await(L, std::move(what), [box, fn](const CancelToken& tok) -> Outcome {
    std::lock_guard lk(box->mu);
    try {
      return fn(box->session, tok);
    } catch (const ssh::Error& e) {
      return ssh_failure(e);
    }
  });
}

// session:run(cmd, {env, cwd, stdin, timeout, stream, prefix, stdout, max_capture})
//   -> {code, signal, stdout, stderr, duration} | nil, msg, kind
int l_session_run(lua_State* L) {
  std::string cmd = luaL_checkstring(L, 2);
  ssh::ExecOptions o;
  // Values that are secrets were registered where they came from (ephrun.secret,
  // secret params); registering every env value would mask ordinary words.
  o.env = string_map(L, 3, "env");
  o.cwd = lua::opt_string_field(L, 3, "cwd", "");
  o.stdin_data = lua::opt_string_field(L, 3, "stdin", "");
  o.timeout = opt_seconds(L, 3, "timeout", 0);
  o.max_capture = static_cast<size_t>(lua::opt_number_field(L, 3, "max_capture", 1 << 20));
  if (lua::opt_bool_field(L, 3, "stdout", false)) {
    // The remote output is the command's own output (`ephrun attach` follows a log).
    o.on_stdout_line = [](std::string_view line) {
      std::string text = redact(std::string(line));
      std::fwrite(text.data(), 1, text.size(), stdout);
      std::fputc('\n', stdout);
      std::fflush(stdout);
    };
  } else if (lua::opt_bool_field(L, 3, "stream", true)) {
    std::string prefix = lua::opt_string_field(L, 3, "prefix", "");
    o.on_stdout_line = [prefix](std::string_view line) { spdlog::info("{}{}", prefix, line); };
    o.on_stderr_line = [prefix](std::string_view line) { spdlog::warn("{}{}", prefix, line); };
  }
  return with_session(L, "run `" + cmd + "`", [cmd, o](ssh::Session& s, const CancelToken& tok) {
    ssh::ExecResult r = s.run(cmd, o, tok);
    return Outcome{[r](lua_State* L) {
                     lua_createtable(L, 0, 6);
                     lua_pushinteger(L, r.code);
                     lua_setfield(L, -2, "code");
                     if (!r.signal.empty()) {
                       lua_pushstring(L, r.signal.c_str());
                       lua_setfield(L, -2, "signal");
                     }
                     lua_pushlstring(L, r.out.data(), r.out.size());
                     lua_setfield(L, -2, "stdout");
                     lua_pushlstring(L, r.err.data(), r.err.size());
                     lua_setfield(L, -2, "stderr");
                     lua_pushnumber(L, static_cast<double>(r.duration.count()) / 1000.0);
                     lua_setfield(L, -2, "duration");
                     lua_pushboolean(L, r.out_truncated || r.err_truncated);
                     lua_setfield(L, -2, "truncated");
                     return 1;
                   },
                   {}};
  });
}

void push_job(lua_State* L, const ssh::DetachedJob& j) {
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, j.pid);
  lua_setfield(L, -2, "pid");
  lua_pushstring(L, j.log.c_str());
  lua_setfield(L, -2, "log");
  lua_pushstring(L, j.status_file.c_str());
  lua_setfield(L, -2, "status_file");
}

ssh::DetachedJob check_job(lua_State* L, int idx) {
  luaL_checktype(L, idx, LUA_TTABLE);
  ssh::DetachedJob j;
  j.pid = static_cast<long>(lua::opt_number_field(L, idx, "pid", 0));
  j.log = lua::opt_string_field(L, idx, "log", "");
  j.status_file = lua::opt_string_field(L, idx, "status_file", j.log + ".exit");
  if (j.pid <= 0 || j.log.empty()) luaL_argerror(L, idx, "expected a job {pid=, log=}");
  return j;
}

// session:run_detached(cmd, {log, env, cwd}) -> {pid, log, status_file}
int l_session_run_detached(lua_State* L) {
  std::string cmd = luaL_checkstring(L, 2);
  ssh::DetachedOptions o;
  o.log = lua::opt_string_field(L, 3, "log", "");
  o.env = string_map(L, 3, "env");
  o.cwd = lua::opt_string_field(L, 3, "cwd", "");
  return with_session(L, "start `" + cmd + "`", [cmd, o](ssh::Session& s, const CancelToken& tok) {
    auto j = s.run_detached(cmd, o, tok);
    return Outcome{[j](lua_State* L) {
                     push_job(L, j);
                     return 1;
                   },
                   {}};
  });
}

// session:job_status(job) -> {alive=bool, exit_code=n|nil}
int l_session_job_status(lua_State* L) {
  ssh::DetachedJob j = check_job(L, 2);
  return with_session(L, "check job", [j](ssh::Session& s, const CancelToken& tok) {
    bool alive = s.job_alive(j, tok);
    auto code = alive ? std::nullopt : s.job_exit_code(j, tok);
    return Outcome{[alive, code](lua_State* L) {
                     lua_createtable(L, 0, 2);
                     lua_pushboolean(L, alive);
                     lua_setfield(L, -2, "alive");
                     if (code) {
                       lua_pushinteger(L, *code);
                       lua_setfield(L, -2, "exit_code");
                     }
                     return 1;
                   },
                   {}};
  });
}

// session:job_tail(job, lines) -> text
int l_session_job_tail(lua_State* L) {
  ssh::DetachedJob j = check_job(L, 2);
  int lines = static_cast<int>(luaL_optinteger(L, 3, 20));
  return with_session(L, "tail job log", [j, lines](ssh::Session& s, const CancelToken& tok) {
    std::string t = s.job_tail(j, lines, tok);
    return Outcome{[t](lua_State* L) {
                     lua_pushlstring(L, t.data(), t.size());
                     return 1;
                   },
                   {}};
  });
}

// session:job_wait(job, timeout_seconds) -> exit code
int l_session_job_wait(lua_State* L) {
  ssh::DetachedJob j = check_job(L, 2);
  double secs = luaL_optnumber(L, 3, 365.0 * 86400);
  auto deadline = steady_clock::now() + milliseconds(static_cast<long>(secs * 1000));
  auto box = check_open(L);
  // Not holding the session for the whole wait: poll with the lock taken per check.
  return await(L, "wait for job " + std::to_string(j.pid),
               [box, j, deadline](const CancelToken& tok) -> Outcome {
                 try {
                   for (;;) {
                     {
                       std::lock_guard lk(box->mu);
                       if (!box->session.job_alive(j, tok)) {
                         int code = box->session.job_exit_code(j, tok).value_or(-1);
                         return Outcome{[code](lua_State* L) {
                                          lua_pushinteger(L, code);
                                          return 1;
                                        },
                                        {}};
                       }
                     }
                     if (steady_clock::now() >= deadline)
                       return ssh_failure(ssh::Error(
                           ssh::ErrorKind::timeout,
                           "job " + std::to_string(j.pid) + " still running at the deadline"));
                     if (!tok.sleep_for(milliseconds(500))) return Outcome::fail(tok.reason());
                   }
                 } catch (const ssh::Error& e) {
                   return ssh_failure(e);
                 }
               });
}

Outcome number_outcome(double v) {
  return Outcome{[v](lua_State* L) {
                   lua_pushnumber(L, v);
                   return 1;
                 },
                 {}};
}

Outcome true_outcome() {
  return Outcome{[](lua_State* L) {
                   lua_pushboolean(L, 1);
                   return 1;
                 },
                 {}};
}

int l_session_upload(lua_State* L) {
  std::string local = luaL_checkstring(L, 2), remote = luaL_checkstring(L, 3);
  return with_session(
      L, "upload " + local, [local, remote](ssh::Session& s, const CancelToken& tok) {
        return number_outcome(static_cast<double>(ssh::upload(s, local, remote, tok)));
      });
}

int l_session_download(lua_State* L) {
  std::string remote = luaL_checkstring(L, 2), local = luaL_checkstring(L, 3);
  return with_session(
      L, "download " + remote, [local, remote](ssh::Session& s, const CancelToken& tok) {
        return number_outcome(static_cast<double>(ssh::download(s, remote, local, tok)));
      });
}

int l_session_put_string(lua_State* L) {
  std::string remote = luaL_checkstring(L, 2);
  size_t n = 0;
  const char* d = luaL_checklstring(L, 3, &n);
  std::string data(d, n);
  auto mode = static_cast<unsigned>(luaL_optinteger(L, 4, 0644));
  return with_session(L, "write " + remote,
                      [remote, data, mode](ssh::Session& s, const CancelToken& tok) {
                        ssh::put_string(s, remote, data, mode, tok);
                        return true_outcome();
                      });
}

int l_session_get_string(lua_State* L) {
  std::string remote = luaL_checkstring(L, 2);
  return with_session(L, "read " + remote, [remote](ssh::Session& s, const CancelToken& tok) {
    std::string data = ssh::get_string(s, remote, tok);
    return Outcome{[data](lua_State* L) {
                     lua_pushlstring(L, data.data(), data.size());
                     return 1;
                   },
                   {}};
  });
}

int l_session_mkdir_p(lua_State* L) {
  std::string remote = luaL_checkstring(L, 2);
  auto mode = static_cast<unsigned>(luaL_optinteger(L, 3, 0755));
  return with_session(L, "mkdir -p " + remote,
                      [remote, mode](ssh::Session& s, const CancelToken& tok) {
                        ssh::mkdir_p(s, remote, mode, tok);
                        return true_outcome();
                      });
}

int l_session_stat(lua_State* L) {
  std::string remote = luaL_checkstring(L, 2);
  return with_session(L, "stat " + remote, [remote](ssh::Session& s, const CancelToken& tok) {
    auto st = ssh::stat(s, remote, tok);
    return Outcome{[st](lua_State* L) {
                     if (!st) {
                       lua_pushboolean(L, 0);
                       return 1;
                     }
                     static const char* const types[] = {"file", "dir", "link", "other"};
                     lua_createtable(L, 0, 4);
                     lua_pushstring(L, types[static_cast<int>(st->type)]);
                     lua_setfield(L, -2, "type");
                     lua_pushnumber(L, static_cast<double>(st->size));
                     lua_setfield(L, -2, "size");
                     lua_pushinteger(L, st->mode);
                     lua_setfield(L, -2, "mode");
                     lua_pushinteger(L, st->mtime);
                     lua_setfield(L, -2, "mtime");
                     return 1;
                   },
                   {}};
  });
}

int l_session_remove(lua_State* L) {
  std::string remote = luaL_checkstring(L, 2);
  return with_session(L, "remove " + remote, [remote](ssh::Session& s, const CancelToken& tok) {
    bool existed = ssh::remove(s, remote, tok);
    return Outcome{[existed](lua_State* L) {
                     lua_pushboolean(L, existed);
                     return 1;
                   },
                   {}};
  });
}

// A progress line on a terminal: files, bytes, rate, ETA.
ssh::SyncProgressFn progress_line(bool enabled) {
  if (!enabled) return {};
  auto t0 = steady_clock::now();
  return [t0](const ssh::SyncProgress& p) {
    double secs = duration<double>(steady_clock::now() - t0).count();
    double rate = secs > 0 ? static_cast<double>(p.bytes_done) / secs : 0;
    double left = rate > 0 ? static_cast<double>(p.bytes_todo - p.bytes_done) / rate : 0;
    fprintf(stderr, "\r  %llu/%llu files, %.1f/%.1f MB, %.1f MB/s, ETA %.0fs   ",
            static_cast<unsigned long long>(p.files_done),
            static_cast<unsigned long long>(p.files_todo), static_cast<double>(p.bytes_done) / 1e6,
            static_cast<double>(p.bytes_todo) / 1e6, rate / 1e6, left);
    if (p.files_done == p.files_todo) fputs("\r\033[K", stderr);
    fflush(stderr);
  };
}

// session:sync(local, remote, {exclude, include, delete, gitignore, progress}) -> stats
int l_session_sync(lua_State* L) {
  std::string local = luaL_checkstring(L, 2), remote = luaL_checkstring(L, 3);
  ssh::SyncOptions o = sync_options(L, 4);
  bool progress = lua::opt_bool_field(
      L, 4, "progress", isatty(STDERR_FILENO) && Runtime::of(L).options().verbosity >= 0);
  return with_session(L, "sync " + local,
                      [local, remote, o, progress](ssh::Session& s, const CancelToken& tok) {
                        auto st = ssh::sync(s, local, remote, o, progress_line(progress), tok);
                        return Outcome{[st](lua_State* L) {
                                         push_sync_stats(L, st);
                                         return 1;
                                       },
                                       {}};
                      });
}

// session:fetch(remote, local) -> {files, bytes, duration}
int l_session_fetch(lua_State* L) {
  std::string remote = luaL_checkstring(L, 2), local = luaL_checkstring(L, 3);
  return with_session(
      L, "fetch " + remote, [local, remote](ssh::Session& s, const CancelToken& tok) {
        auto st = ssh::fetch(s, remote, local, {}, tok);
        return Outcome{[st](lua_State* L) {
                         lua_createtable(L, 0, 3);
                         lua_pushnumber(L, static_cast<double>(st.files));
                         lua_setfield(L, -2, "files");
                         lua_pushnumber(L, static_cast<double>(st.bytes));
                         lua_setfield(L, -2, "bytes");
                         lua_pushnumber(L, static_cast<double>(st.duration.count()) / 1000.0);
                         lua_setfield(L, -2, "duration");
                         return 1;
                       },
                       {}};
      });
}

int l_session_reconnect(lua_State* L) {
  return with_session(L, "reconnect", [](ssh::Session& s, const CancelToken& tok) {
    s.reconnect(tok);
    return true_outcome();
  });
}

// Idempotent: close(), __close and __gc all land here.
int l_session_close(lua_State* L) {
  auto* ref = lua::check<SessionRef>(L, 1);
  std::shared_ptr<Box> box = std::move(ref->box);
  ref->box.reset();
  if (box) {
    std::unique_lock lk(box->mu, std::try_to_lock);
    // Work in flight holds the lock and its own reference; it closes on release.
    if (lk.owns_lock()) box->session.close();
  }
  return 0;
}

int l_session_gc(lua_State* L) {
  l_session_close(L);
  lua::check<SessionRef>(L, 1)->~SessionRef();
  return 0;
}

int l_session_fingerprint(lua_State* L) {
  auto box = check_open(L);
  lua_pushstring(L, box->session.host_key_fingerprint().c_str());
  return 1;
}

int l_session_label(lua_State* L) {
  lua_pushstring(L, lua::check<SessionRef>(L, 1)->label.c_str());
  return 1;
}

int l_session_is_open(lua_State* L) {
  auto* ref = lua::check<SessionRef>(L, 1);
  lua_pushboolean(L, ref->box != nullptr);
  return 1;
}

int l_session_tostring(lua_State* L) {
  lua_pushfstring(L, "ephrun.ssh.Session(%s)", lua::check<SessionRef>(L, 1)->label.c_str());
  return 1;
}

const luaL_Reg kSessionMethods[] = {
    {"run", lua::safe<l_session_run>},
    {"run_detached", lua::safe<l_session_run_detached>},
    {"job_status", lua::safe<l_session_job_status>},
    {"job_tail", lua::safe<l_session_job_tail>},
    {"job_wait", lua::safe<l_session_job_wait>},
    {"upload", lua::safe<l_session_upload>},
    {"download", lua::safe<l_session_download>},
    {"put_string", lua::safe<l_session_put_string>},
    {"get_string", lua::safe<l_session_get_string>},
    {"mkdir_p", lua::safe<l_session_mkdir_p>},
    {"stat", lua::safe<l_session_stat>},
    {"remove", lua::safe<l_session_remove>},
    {"sync", lua::safe<l_session_sync>},
    {"fetch", lua::safe<l_session_fetch>},
    {"reconnect", lua::safe<l_session_reconnect>},
    {"close", lua::safe<l_session_close>},
    {"fingerprint", lua::safe<l_session_fingerprint>},
    {"label", l_session_label},
    {"is_open", l_session_is_open},
    {nullptr, nullptr},
};
const luaL_Reg kSessionMeta[] = {
    {"__close", lua::safe<l_session_close>},
    {"__gc", l_session_gc},
    {"__tostring", l_session_tostring},
    {nullptr, nullptr},
};

// _ssh._known_host_entries(path, host, port) -> {{type=, revoked=}, ...} | nil, msg
// Reads a local file only: the stdlib refuses an unknown server before connecting.
int l_ssh_known_host_entries(lua_State* L) {
  std::string path = luaL_checkstring(L, 1), host = luaL_checkstring(L, 2);
  int port = static_cast<int>(luaL_optinteger(L, 3, 22));
  std::vector<ssh::KnownHostEntry> entries;
  try {
    entries = ssh::known_host_entries(path, host, port);
  } catch (const ssh::Error& e) {
    lua_pushnil(L);
    lua_pushstring(L, e.what());
    return 2;
  }
  lua_createtable(L, static_cast<int>(entries.size()), 0);
  for (size_t i = 0; i < entries.size(); ++i) {
    lua_createtable(L, 0, 2);
    lua_pushstring(L, entries[i].type.c_str());
    lua_setfield(L, -2, "type");
    lua_pushboolean(L, entries[i].revoked);
    lua_setfield(L, -2, "revoked");
    lua_rawseti(L, -2, static_cast<lua_Integer>(i + 1));
  }
  return 1;
}

const luaL_Reg kSshFns[] = {
    {"connect", lua::safe<l_ssh_connect>},
    {"wait", lua::safe<l_ssh_wait>},
    {"scan_local", lua::safe<l_ssh_scan_local>},
    {"_known_host_entries", lua::safe<l_ssh_known_host_entries>},
    // The never-send list, for plans and tarballs that do not go through sync.
    {"never_send", lua::safe<l_ssh_never_send>},
    {"never_sent", lua::safe<l_ssh_never_sent>},
    {nullptr, nullptr},
};

int luaopen_ephrun_ssh_native(lua_State* L) {
  lua::define_class(L, SessionRef::kMeta, kSessionMethods, kSessionMeta);
  luaL_newlib(L, kSshFns);
  return 1;
}

}  // namespace
}  // namespace ephrun

EPHRUN_MODULE("ephrun._ssh", ephrun::luaopen_ephrun_ssh_native);
