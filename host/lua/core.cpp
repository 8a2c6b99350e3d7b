// ephrun._core: the host's run-time services for the stdlib (tasks, the
// cleanup stack, the plan, secrets, phase). Recipes use them through
// `require "ephrun"`, never directly.
#include <fcntl.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "lua/bind.hpp"
#include "runtime/embedded.hpp"
#include "runtime/runtime.hpp"
#include "runtime/secrets.hpp"

namespace ephrun {
namespace {

struct TaskRef {
  static constexpr const char* kMeta = "ephrun.Task";
  Task* task;
};

int push_task_results(lua_State* L, Task* t) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->result_ref);
  if (!t->ok) return lua_error(L);  // the original error value, unchanged
  int n = static_cast<int>(luaL_len(L, -1));
  luaL_checkstack(L, n, "too many results");
  for (int i = 1; i <= n; ++i) lua_rawgeti(L, -i, i);
  return n;
}

int wait_done(lua_State* L, int /*status*/, lua_KContext ctx) {
  Scheduler& s = Runtime::of(L).scheduler();
  Task* target = reinterpret_cast<Task*>(ctx);
  Task* me = s.task_of(L);
  if (me) {
    me->waiting_on = nullptr;
    if (me->cancel_requested) {
      me->cancel_requested = false;
      me->cancelled = true;
      lua_pushstring(L, me->cancel_reason.c_str());
      return lua_error(L);
    }
  }
  return push_task_results(L, target);
}

// _core.spawn(name, fn, ...) -> Task
int l_core_spawn(lua_State* L) {
  const char* name = luaL_optstring(L, 1, "");
  luaL_checktype(L, 2, LUA_TFUNCTION);
  Scheduler& s = Runtime::of(L).scheduler();
  int nargs = lua_gettop(L) - 2;
  Task* parent = s.task_of(L);
  Task* t = s.spawn(L, nargs, name, parent);  // pops fn and args
  lua_settop(L, 1);
  lua::push_new<TaskRef>(L, TaskRef{t});
  return 1;
}

int l_task_wait(lua_State* L) {
  Task* target = lua::check<TaskRef>(L, 1)->task;
  Scheduler& s = Runtime::of(L).scheduler();
  if (target->state == Task::State::done) return push_task_results(L, target);
  Task* me = s.task_of(L);
  if (me == target) return luaL_error(L, "a task cannot wait for itself");
  if (!me || !s.yieldable_task(L)) {  // not inside a task: drive the scheduler here
    s.run_until(target);
    return push_task_results(L, target);
  }
  if (me->cancel_requested) return wait_done(L, LUA_OK, reinterpret_cast<lua_KContext>(target));
  me->state = Task::State::waiting_task;
  me->waiting_on = target;
  target->waiters.push_back(me);
  return lua_yieldk(L, 0, reinterpret_cast<lua_KContext>(target), wait_done);
}

int l_task_cancel(lua_State* L) {
  Task* t = lua::check<TaskRef>(L, 1)->task;
  const char* reason = luaL_optstring(L, 2, "cancelled");
  Runtime::of(L).scheduler().cancel(t, reason);
  return 0;
}

int l_task_done(lua_State* L) {
  lua_pushboolean(L, lua::check<TaskRef>(L, 1)->task->state == Task::State::done);
  return 1;
}

int l_task_status(lua_State* L) {
  Task* t = lua::check<TaskRef>(L, 1)->task;
  if (t->state != Task::State::done)
    lua_pushliteral(L, "running");
  else if (t->ok)
    lua_pushliteral(L, "ok");
  else
    lua_pushliteral(L, "failed");
  if (t->state == Task::State::done && !t->ok) {
    lua_pushstring(L, t->error.c_str());
    return 2;
  }
  return 1;
}

int l_task_name(lua_State* L) {
  lua_pushstring(L, lua::check<TaskRef>(L, 1)->task->name.c_str());
  return 1;
}

int l_task_tostring(lua_State* L) {
  Task* t = lua::check<TaskRef>(L, 1)->task;
  lua_pushfstring(L, "ephrun.Task(%s)", t->name.c_str());
  return 1;
}

// _core.current_task() -> name or nil (the main task is "main")
int l_core_current_task(lua_State* L) {
  Task* t = Runtime::of(L).scheduler().task_of(L);
  if (!t) return 0;
  lua_pushstring(L, t->name.c_str());
  return 1;
}

// _core.cleanup_push(fn, what, hint) -> id
int l_core_cleanup_push(lua_State* L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  const char* what = luaL_checkstring(L, 2);
  const char* hint = luaL_optstring(L, 3, "");
  lua_pushinteger(L, Runtime::of(L).push_cleanup(L, 1, what, hint));
  return 1;
}

// _core.cleanup_take(id) -> fn | nil
int l_core_cleanup_take(lua_State* L) {
  int id = static_cast<int>(luaL_checkinteger(L, 1));
  return Runtime::of(L).take_cleanup(L, id) ? 1 : 0;
}

// _core.cleanup_finish(id, ok, err)
int l_core_cleanup_finish(lua_State* L) {
  int id = static_cast<int>(luaL_checkinteger(L, 1));
  bool ok = lua_toboolean(L, 2);
  const char* err = luaL_optstring(L, 3, "");
  Runtime::of(L).finish_cleanup(id, ok, err);
  return 0;
}

int l_core_cleanup_dismiss(lua_State* L) {
  Runtime::of(L).dismiss_cleanup(static_cast<int>(luaL_checkinteger(L, 1)));
  return 0;
}

int l_core_cleanup_pending(lua_State* L) {
  auto p = Runtime::of(L).pending_cleanups();
  lua_createtable(L, static_cast<int>(p.size()), 0);
  for (size_t i = 0; i < p.size(); ++i) {
    lua_pushstring(L, p[i].c_str());
    lua_rawseti(L, -2, static_cast<lua_Integer>(i + 1));
  }
  return 1;
}

// A plan step from the table at `idx`: {kind=, what=, where=, cost=, details={...}}.
Step step_from(lua_State* L, int idx) {
  luaL_checktype(L, idx, LUA_TTABLE);
  Step s;
  s.kind = lua::opt_string_field(L, idx, "kind", "effect");
  s.what = lua::opt_string_field(L, idx, "what", "");
  s.where = lua::opt_string_field(L, idx, "where", "");
  lua_getfield(L, idx, "cost");
  if (lua_isnumber(L, -1)) s.cost = lua_tonumber(L, -1);
  lua_pop(L, 1);
  if (lua_getfield(L, idx, "details") == LUA_TTABLE) {
    lua_Integer n = luaL_len(L, -1);
    for (lua_Integer i = 1; i <= n; ++i) {
      lua_geti(L, -1, i);
      if (const char* d = lua_tostring(L, -1)) s.details.emplace_back(d);
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  return s;
}

// _core.plan_add{...}: records a step that is not itself an effect (a note).
int l_core_plan_add(lua_State* L) {
  Step s = step_from(L, 1);
  Runtime& rt = Runtime::of(L);
  s.phase = rt.phase;
  rt.plan().add(std::move(s));
  return 0;
}

// _core.effect{...} -> act: the same gate native effects pass (Runtime::effect),
// so ephrun.effect decides in exactly one place whether the run acts.
int l_core_effect(lua_State* L) {
  lua_pushboolean(L, Runtime::of(L).effect(step_from(L, 1)));
  return 1;
}

int l_core_dry_run(lua_State* L) {
  lua_pushboolean(L, Runtime::of(L).options().dry_run);
  return 1;
}

int l_core_options(lua_State* L) {
  const Options& o = Runtime::of(L).options();
  lua_createtable(L, 0, 6);
  lua_pushboolean(L, o.dry_run);
  lua_setfield(L, -2, "dry_run");
  lua_pushboolean(L, o.json);
  lua_setfield(L, -2, "json");
  lua_pushboolean(L, o.yes);
  lua_setfield(L, -2, "yes");
  lua_pushinteger(L, o.verbosity);
  lua_setfield(L, -2, "verbosity");
  lua_pushstring(L, Runtime::of(L).run_id().c_str());
  lua_setfield(L, -2, "run_id");
  lua_pushstring(L, o.notify_url.c_str());
  lua_setfield(L, -2, "notify_url");
  return 1;
}

// _core.secret_add(name, value): every later log line, plan and error hides it.
int l_core_secret_add(lua_State* L) {
  Secrets::global().add(luaL_checkstring(L, 1), luaL_checkstring(L, 2));
  return 0;
}

int l_core_redact(lua_State* L) {
  std::string s = redact(luaL_checkstring(L, 1));
  lua_pushlstring(L, s.data(), s.size());
  return 1;
}

// _core.phase([name]) -> previous phase
int l_core_phase(lua_State* L) {
  Runtime& rt = Runtime::of(L);
  lua_pushstring(L, rt.phase.c_str());
  if (!lua_isnoneornil(L, 1)) rt.phase = luaL_checkstring(L, 1);
  return 1;
}

// _core.signal() -> number of the first signal received, or 0
int l_core_signal(lua_State* L) {
  lua_pushinteger(L, Runtime::of(L).scheduler().signal_received());
  return 1;
}

int l_core_recipe_dir(lua_State* L) {
  lua_pushstring(L, Runtime::of(L).recipe_dir.c_str());
  return 1;
}

int l_core_isatty(lua_State* L) {
  lua_pushboolean(L, isatty(static_cast<int>(luaL_checkinteger(L, 1))));
  return 1;
}

// _core.read_password(prompt[, name]) -> text | nil, why
// Reads one line from the controlling terminal with echo off; the answer is
// registered as the secret `name` (default "passphrase").
int l_core_read_password(lua_State* L) {
  const char* prompt = luaL_checkstring(L, 1);
  std::string name = luaL_optstring(L, 2, "passphrase");
  int fd = open("/dev/tty", O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "no terminal to ask on");
    return 2;
  }
  termios old{};
  bool restore = tcgetattr(fd, &old) == 0;
  if (restore) {
    termios quiet = old;
    quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
    tcsetattr(fd, TCSAFLUSH, &quiet);
  }
  if (write(fd, prompt, strlen(prompt)) < 0) {
    // The prompt is a courtesy; reading still works.
  }
  // Poll rather than block in read(): signals go to the signal thread, so
  // Ctrl-C at the prompt is seen only by asking the scheduler.
  Scheduler* sched = Scheduler::of(L);
  bool interrupted = false;
  std::string line;
  char c = 0;
  for (;;) {
    pollfd pfd{fd, POLLIN, 0};
    int n = poll(&pfd, 1, 200);
    if (sched) {
      sched->poll_signal();
      if (sched->signal_received() != 0) {
        interrupted = true;
        break;
      }
    }
    if (n < 0 && errno != EINTR) break;
    if (n <= 0) continue;
    if (read(fd, &c, 1) != 1 || c == '\n') break;
    line += c;
  }
  if (restore) tcsetattr(fd, TCSAFLUSH, &old);
  if (write(fd, "\n", 1) < 0) {
  }
  close(fd);
  if (interrupted) {
    lua_pushnil(L);
    lua_pushliteral(L, "interrupted");
    return 2;
  }
  if (!line.empty()) Secrets::global().add(name, line);
  lua_pushlstring(L, line.data(), line.size());
  return 1;
}

// _core.builtin_files(dir) -> sorted names of the shipped files directly in
// `dir` ("providers"): from EPHRUN_LUA_DIR when set, as the loader reads them,
// else from the binary. Lets the stdlib say which built-ins exist instead of
// keeping a list that can drift.
int l_core_builtin_files(lua_State* L) {
  std::string dir = luaL_checkstring(L, 1);
  std::vector<std::string> names;
  if (const char* root = std::getenv("EPHRUN_LUA_DIR"); root && *root) {
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(std::filesystem::path(root) / dir, ec))
      if (e.is_regular_file(ec)) names.push_back(e.path().filename().string());
  } else {
    std::string prefix = dir + "/";
    for (const EmbeddedFile* f = kEmbeddedFiles; f->path; ++f) {
      std::string_view p = f->path;
      if (p.starts_with(prefix) && p.find('/', prefix.size()) == std::string_view::npos)
        names.emplace_back(p.substr(prefix.size()));
    }
  }
  std::sort(names.begin(), names.end());
  lua_createtable(L, static_cast<int>(names.size()), 0);
  for (size_t i = 0; i < names.size(); ++i) {
    lua_pushstring(L, names[i].c_str());
    lua_rawseti(L, -2, static_cast<lua_Integer>(i + 1));
  }
  return 1;
}

const luaL_Reg kTaskMethods[] = {
    {"wait", lua::safe<l_task_wait>},
    {"cancel", lua::safe<l_task_cancel>},
    {"done", l_task_done},
    {"status", l_task_status},
    {"name", l_task_name},
    {nullptr, nullptr},
};
const luaL_Reg kTaskMeta[] = {{"__tostring", l_task_tostring}, {nullptr, nullptr}};

const luaL_Reg kCoreFns[] = {
    {"spawn", lua::safe<l_core_spawn>},
    {"current_task", l_core_current_task},
    {"cleanup_push", lua::safe<l_core_cleanup_push>},
    {"cleanup_take", lua::safe<l_core_cleanup_take>},
    {"cleanup_finish", lua::safe<l_core_cleanup_finish>},
    {"cleanup_dismiss", lua::safe<l_core_cleanup_dismiss>},
    {"cleanup_pending", lua::safe<l_core_cleanup_pending>},
    {"plan_add", lua::safe<l_core_plan_add>},
    {"effect", lua::safe<l_core_effect>},
    {"dry_run", l_core_dry_run},
    {"options", l_core_options},
    {"secret_add", lua::safe<l_core_secret_add>},
    {"redact", lua::safe<l_core_redact>},
    {"phase", lua::safe<l_core_phase>},
    {"signal", l_core_signal},
    {"recipe_dir", l_core_recipe_dir},
    {"isatty", lua::safe<l_core_isatty>},
    {"read_password", lua::safe<l_core_read_password>},
    {"builtin_files", lua::safe<l_core_builtin_files>},
    {nullptr, nullptr},
};

int luaopen_ephrun_core(lua_State* L) {
  lua::define_class(L, TaskRef::kMeta, kTaskMethods, kTaskMeta);
  luaL_newlib(L, kCoreFns);
  return 1;
}

}  // namespace
}  // namespace ephrun

EPHRUN_MODULE("ephrun._core", ephrun::luaopen_ephrun_core);
