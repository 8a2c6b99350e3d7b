// ephrun.proc: local programs from an argv vector, waited for off the Lua
// thread so other tasks run meanwhile. Spawning is an effect. The work is in
// host/sys/proc.cpp.
#include "sys/proc.hpp"

#include <spdlog/spdlog.h>

#include <chrono>
#include <csignal>
#include <memory>

#include "lua/bind.hpp"
#include "runtime/duration.hpp"
#include "runtime/runtime.hpp"
#include "runtime/scheduler.hpp"
#include "runtime/secrets.hpp"

namespace ephrun {
namespace {

using std::chrono::duration;
using std::chrono::duration_cast;
using std::chrono::nanoseconds;

struct RunOptions {
  sys::SpawnOptions spawn;
  std::string command;  // for messages, redacted
  bool check = true;
  double timeout = -1;  // seconds; < 0: none
  double grace = 5;     // seconds between SIGTERM and SIGKILL
};

double seconds_value(lua_State* L, int idx, const char* what) {
  if (lua_type(L, idx) == LUA_TNUMBER) return lua_tonumber(L, idx);
  const char* s = lua_tostring(L, idx);
  auto d = s ? parse_duration(s) : std::nullopt;
  if (!d) luaL_error(L, "%s must be seconds or a duration like 90s", what);
  return *d;
}

double opt_seconds_field(lua_State* L, int idx, const char* key, double def) {
  if (lua_type(L, idx) != LUA_TTABLE) return def;
  lua_getfield(L, idx, key);
  double v = lua_isnil(L, -1) ? def : seconds_value(L, lua_gettop(L), key);
  lua_pop(L, 1);
  return v;
}

nanoseconds to_ns(double secs) {
  if (secs < 0) return nanoseconds::max();
  return duration_cast<nanoseconds>(duration<double>(secs));
}

// argv from the table at 1 (or a string with shell=true), options from 2.
RunOptions read_options(lua_State* L) {
  RunOptions o;
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
  bool shell = lua::opt_bool_field(L, 2, "shell", false);
  if (lua_type(L, 1) == LUA_TSTRING) {
    if (!shell) luaL_argerror(L, 1, "expected an argv table (a string needs shell=true)");
    o.spawn.argv = {"/bin/sh", "-c", lua_tostring(L, 1)};
  } else {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer n = luaL_len(L, 1);
    if (n < 1) luaL_argerror(L, 1, "argv is empty");
    std::vector<std::string> args;
    for (lua_Integer i = 1; i <= n; ++i) {
      lua_geti(L, 1, i);
      int t = lua_type(L, -1);
      if (t != LUA_TSTRING && t != LUA_TNUMBER)
        luaL_error(L, "argv[%d] must be a string, not %s", static_cast<int>(i),
                   luaL_typename(L, -1));
      size_t len = 0;
      const char* s = lua_tolstring(L, -1, &len);
      args.emplace_back(s, len);
      lua_pop(L, 1);
    }
    if (shell) {
      // shell=true with a table: the first element is the script, the rest
      // its positional parameters ($1, $2...), which need no quoting.
      o.spawn.argv = {"/bin/sh", "-c", args[0], "sh"};
      o.spawn.argv.insert(o.spawn.argv.end(), args.begin() + 1, args.end());
    } else {
      o.spawn.argv = std::move(args);
    }
  }
  if (lua_type(L, 2) == LUA_TTABLE) {
    if (lua_getfield(L, 2, "env") == LUA_TTABLE) {
      lua_pushnil(L);
      while (lua_next(L, -2)) {
        if (lua_type(L, -2) != LUA_TSTRING) luaL_error(L, "env keys must be strings");
        std::string k = lua_tostring(L, -2);
        int t = lua_type(L, -1);
        if (t == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
          o.spawn.env[k] = std::nullopt;
        } else if (t == LUA_TSTRING || t == LUA_TNUMBER) {
          size_t len = 0;
          const char* s = lua_tolstring(L, -1, &len);
          o.spawn.env[k] = std::string(s, len);
        } else {
          luaL_error(L, "env.%s must be a string, a number or false", k.c_str());
        }
        lua_pop(L, 1);
      }
    } else if (!lua_isnil(L, -1)) {
      luaL_error(L, "env must be a table");
    }
    lua_pop(L, 1);
    if (lua_getfield(L, 2, "stdin") != LUA_TNIL) {
      size_t len = 0;
      const char* s = lua_tolstring(L, -1, &len);
      if (!s) luaL_error(L, "stdin must be a string");
      o.spawn.stdin_data = std::string(s, len);
    }
    lua_pop(L, 1);
  }
  o.spawn.env_clear = lua::opt_bool_field(L, 2, "env_clear", false);
  o.spawn.cwd = lua::opt_string_field(L, 2, "cwd", "");
  o.spawn.capture = lua::opt_bool_field(L, 2, "capture", true);
  o.check = lua::opt_bool_field(L, 2, "check", true);
  o.timeout = opt_seconds_field(L, 2, "timeout", -1);
  o.grace = opt_seconds_field(L, 2, "grace", 5);
  o.command = redact(sys::describe_command(
      shell ? std::vector<std::string>(o.spawn.argv.begin() + 2, o.spawn.argv.end())
            : o.spawn.argv));
  if (lua::opt_bool_field(L, 2, "stream", true)) {
    std::string prefix = lua::opt_string_field(L, 2, "prefix", "");
    if (prefix.empty()) {
      const std::string& a0 = shell ? std::string("sh") : o.spawn.argv[0];
      auto slash = a0.rfind('/');
      prefix = slash == std::string::npos ? a0 : a0.substr(slash + 1);
    }
    Runtime* rt = Runtime::maybe(L);
    Task* t = rt ? rt->scheduler().task_of(L) : nullptr;
    if (t && t->name != "main" && !t->name.empty()) prefix = t->name + "] [" + prefix;
    o.spawn.on_line = [prefix](bool, std::string_view line) {
      spdlog::info("[{}] {}", prefix, line);  // the sink redacts
    };
  }
  return o;
}

std::string last_lines(const std::string& text, int n) {
  size_t end = text.size();
  while (end > 0 && (text[end - 1] == '\n' || text[end - 1] == '\r')) --end;
  size_t pos = end;
  for (int i = 0; i < n && pos > 0; ++i) {
    pos = text.rfind('\n', pos - 1);
    if (pos == std::string::npos) {
      pos = 0;
      break;
    }
  }
  if (pos > 0) ++pos;
  return text.substr(pos, end - pos);
}

std::string signal_name(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return abbrev ? std::string("SIG") + abbrev : std::to_string(sig);
}

/// The error for a failed command, or "" when it succeeded.
std::string failure(const std::string& command, const sys::ExitStatus& st, bool timed_out,
                    double timeout) {
  std::string msg;
  if (timed_out)
    msg = "command '" + command + "' timed out after " + format_duration(timeout);
  else if (st.signal != 0)
    msg = "command '" + command + "' was killed by " + signal_name(st.signal);
  else if (st.code != 0)
    msg = "command '" + command + "' failed with exit code " + std::to_string(st.code);
  else
    return "";
  std::string tail = last_lines(st.err, 10);
  if (!tail.empty()) msg += "; stderr ends with:\n" + tail;
  return redact(msg);
}

void push_result(lua_State* L, const sys::ExitStatus& st, bool timed_out, pid_t pid) {
  lua_createtable(L, 0, 8);
  if (st.signal == 0 && !timed_out) {
    lua_pushinteger(L, st.code);
    lua_setfield(L, -2, "code");
  }
  if (st.signal != 0) {
    lua_pushinteger(L, st.signal);
    lua_setfield(L, -2, "signal");
  }
  lua_pushlstring(L, st.out.data(), st.out.size());
  lua_setfield(L, -2, "stdout");
  lua_pushlstring(L, st.err.data(), st.err.size());
  lua_setfield(L, -2, "stderr");
  lua_pushnumber(L, st.duration);
  lua_setfield(L, -2, "duration");
  lua_pushboolean(L, timed_out);
  lua_setfield(L, -2, "timed_out");
  lua_pushinteger(L, pid);
  lua_setfield(L, -2, "pid");
  lua_pushboolean(L, st.signal == 0 && st.code == 0 && !timed_out);
  lua_setfield(L, -2, "ok");
}

void push_placeholder(lua_State* L) {
  lua_createtable(L, 0, 6);
  lua_pushinteger(L, 0);
  lua_setfield(L, -2, "code");
  lua_pushliteral(L, "");
  lua_setfield(L, -2, "stdout");
  lua_pushliteral(L, "");
  lua_setfield(L, -2, "stderr");
  lua_pushnumber(L, 0);
  lua_setfield(L, -2, "duration");
  lua_pushboolean(L, 1);
  lua_setfield(L, -2, "ok");
  lua_pushboolean(L, 1);
  lua_setfield(L, -2, "dry_run");
}

/// Records the spawn; false under --dry-run.
bool act(lua_State* L, const RunOptions& o) {
  Runtime* rt = Runtime::maybe(L);
  if (!rt) return true;
  Step s{.kind = "spawn",
         .what = o.command,
         .where = o.spawn.cwd.empty() ? "local" : "local:" + o.spawn.cwd};
  // Names only: values are often credentials that were never registered as secrets.
  std::string names;
  for (const auto& [k, v] : o.spawn.env)
    names += (names.empty() ? "" : " ") + k + (v ? "" : "(unset)");
  if (!names.empty()) s.details.push_back("env: " + names);
  if (o.spawn.env_clear) s.details.push_back("environment cleared");
  return rt->effect(std::move(s));
}

/// Waits for `p` off the Lua thread; a timeout or cancellation terminates it.
int wait_process(lua_State* L, std::shared_ptr<sys::Process> p, const std::string& command,
                 double timeout, double grace, bool check, bool kill_on_timeout) {
  return await(
      L, "wait for '" + command + "'",
      [p, command, timeout, grace, check, kill_on_timeout](const CancelToken& tok) -> Outcome {
        bool done = p->wait_for(to_ns(timeout), &tok);
        if (!done && tok.cancelled()) {
          p->terminate(to_ns(grace));
          return Outcome::fail(tok.reason());
        }
        bool timed_out = false;
        if (!done) {
          if (!kill_on_timeout) {
            return Outcome{[](lua_State* L) {
              lua_pushnil(L);
              lua_pushliteral(L, "timeout");
              return 2;
            }};
          }
          timed_out = true;
          p->terminate(to_ns(grace));
          p->wait_for(std::chrono::seconds(10));
        }
        sys::ExitStatus st = p->status();
        if (check) {
          std::string err = failure(command, st, timed_out, timeout);
          if (!err.empty()) return Outcome::fail(err);
        }
        pid_t pid = p->pid();
        return Outcome{[st = std::move(st), timed_out, pid](lua_State* L) {
          push_result(L, st, timed_out, pid);
          return 1;
        }};
      });
}

std::shared_ptr<sys::Process> start(lua_State* L, RunOptions& o, std::string& err) {
  try {
    return std::make_shared<sys::Process>(std::move(o.spawn));
  } catch (const sys::Error& e) {
    err = redact(e.what());
  }
  (void)L;
  return nullptr;
}

// proc.run(argv, opts) -> result | raises (check) | nil, err
int l_proc_run(lua_State* L) {
  RunOptions o = read_options(L);
  if (!act(L, o)) {
    push_placeholder(L);
    return 1;
  }
  std::string command = o.command;
  double timeout = o.timeout, grace = o.grace;
  bool check = o.check;
  std::string err;
  auto p = start(L, o, err);
  if (!p) {
    if (check) return luaL_error(L, "%s", err.c_str());
    lua_pushnil(L);
    lua_pushstring(L, err.c_str());
    return 2;
  }
  return wait_process(L, std::move(p), command, timeout, grace, check, true);
}

struct ProcHandle {
  static constexpr const char* kMeta = "ephrun.proc.Process";
  std::shared_ptr<sys::Process> p;  // null under --dry-run, or once closed
  std::string command;
  double grace = 5;
  bool check = true;
  bool dry = false;
  bool closed = false;
  bool killed = false;  // :kill() was called: dying of a signal is expected
};

// proc.spawn(argv, opts) -> Process | nil, err
int l_proc_spawn(lua_State* L) {
  RunOptions o = read_options(L);
  if (!act(L, o)) {
    lua::push_new<ProcHandle>(L,
                              ProcHandle{nullptr, o.command, o.grace, o.check, true, false, false});
    return 1;
  }
  std::string err;
  std::string command = o.command;
  auto p = start(L, o, err);
  if (!p) {
    lua_pushnil(L);
    lua_pushstring(L, err.c_str());
    return 2;
  }
  lua::push_new<ProcHandle>(
      L, ProcHandle{std::move(p), command, o.grace, o.check, false, false, false});
  return 1;
}

int l_process_wait(lua_State* L) {
  auto* h = lua::check<ProcHandle>(L, 1);
  double timeout = lua_isnoneornil(L, 2) ? -1 : seconds_value(L, 2, "timeout");
  if (h->dry) {
    push_placeholder(L);
    return 1;
  }
  if (!h->p) return luaL_error(L, "process '%s' was closed", h->command.c_str());
  return wait_process(L, h->p, h->command, timeout, h->grace, h->check && !h->killed, false);
}

int l_process_kill(lua_State* L) {
  auto* h = lua::check<ProcHandle>(L, 1);
  int sig = SIGTERM;
  if (lua_type(L, 2) == LUA_TNUMBER) {
    sig = static_cast<int>(luaL_checkinteger(L, 2));
  } else if (!lua_isnoneornil(L, 2)) {
    sig = sys::signal_number(luaL_checkstring(L, 2));
    if (sig < 0) return luaL_argerror(L, 2, "unknown signal name");
  }
  bool sent = h->p && h->p->signal(sig);
  if (sent && sig != SIGCONT && sig != SIGSTOP && sig != SIGWINCH) h->killed = true;
  lua_pushboolean(L, sent);
  return 1;
}

int l_process_pid(lua_State* L) {
  auto* h = lua::check<ProcHandle>(L, 1);
  if (!h->p) return 0;
  lua_pushinteger(L, h->p->pid());
  return 1;
}

int l_process_running(lua_State* L) {
  auto* h = lua::check<ProcHandle>(L, 1);
  lua_pushboolean(L, h->p && h->p->running());
  return 1;
}

// close/__close: terminates the child if it still runs (off the Lua thread
// when the caller can yield).
int l_process_close(lua_State* L) {
  auto* h = lua::check<ProcHandle>(L, 1);
  if (h->closed) return 0;
  h->closed = true;
  std::shared_ptr<sys::Process> p = std::move(h->p);
  if (!p || !p->running()) return 0;
  double grace = h->grace;
  return await(L, "stop '" + h->command + "'", [p, grace](const CancelToken&) {
    p->terminate(to_ns(grace));
    return Outcome{};
  });
}

int l_process_gc(lua_State* L) {
  auto* h = lua::check<ProcHandle>(L, 1);
  if (!h->closed) {
    h->closed = true;
    if (h->p && h->p->running()) h->p->terminate(std::chrono::seconds(2));
  }
  h->~ProcHandle();
  return 0;
}

int l_process_tostring(lua_State* L) {
  auto* h = lua::check<ProcHandle>(L, 1);
  if (h->p)
    lua_pushfstring(L, "ephrun.proc.Process(%d: %s)", static_cast<int>(h->p->pid()),
                    h->command.c_str());
  else
    lua_pushfstring(L, "ephrun.proc.Process(%s, %s)", h->command.c_str(),
                    h->dry ? "dry run" : "closed");
  return 1;
}

int l_proc_which(lua_State* L) {
  std::string path = sys::which(luaL_checkstring(L, 1));
  if (path.empty()) return 0;
  lua_pushstring(L, path.c_str());
  return 1;
}

// _live_children() -> number of children not yet reaped (for tests)
int l_proc_live_children(lua_State* L) {
  lua_pushinteger(L, sys::live_children());
  return 1;
}

const luaL_Reg kProcessMethods[] = {
    {"wait", lua::safe<l_process_wait>},   {"kill", lua::safe<l_process_kill>},
    {"pid", lua::safe<l_process_pid>},     {"running", lua::safe<l_process_running>},
    {"close", lua::safe<l_process_close>}, {nullptr, nullptr},
};
const luaL_Reg kProcessMeta[] = {
    {"__close", lua::safe<l_process_close>},
    {"__gc", lua::safe<l_process_gc>},
    {"__tostring", lua::safe<l_process_tostring>},
    {nullptr, nullptr},
};

const luaL_Reg kProcFns[] = {
    {"run", lua::safe<l_proc_run>},
    {"spawn", lua::safe<l_proc_spawn>},
    {"which", lua::safe<l_proc_which>},
    {"_live_children", l_proc_live_children},
    {nullptr, nullptr},
};

int luaopen_ephrun_proc(lua_State* L) {
  lua::define_class(L, ProcHandle::kMeta, kProcessMethods, kProcessMeta);
  luaL_newlib(L, kProcFns);
  return 1;
}

}  // namespace
}  // namespace ephrun

EPHRUN_MODULE("ephrun.proc", ephrun::luaopen_ephrun_proc);
