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
#include <fstream>
#include <memory>
#include <sstream>
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
  std::shared_ptr<Task> task;
};

// The handle's user value is the task's coroutine, which keeps (ok, results...)
// or (false, error) on its stack once the task has ended.
int push_task_results(lua_State* L, int ref_idx) {
  lua_getiuservalue(L, ref_idx, 1);
  lua_State* co = lua_tothread(L, -1);
  lua_pop(L, 1);
  Task* t = lua::check<TaskRef>(L, ref_idx)->task.get();
  if (!t->ok) {
    lua_pushvalue(co, 2);
    lua_xmove(co, L, 1);
    return lua_error(L);  // the original error value, unchanged
  }
  int n = lua_gettop(co) - 1;
  luaL_checkstack(L, n, "too many results");
  for (int i = 2; i <= n + 1; ++i) {
    lua_pushvalue(co, i);
    lua_xmove(co, L, 1);
  }
  return n;
}

int wait_done(lua_State* L, int /*status*/, lua_KContext ctx) {
  Scheduler& s = Runtime::of(L).scheduler();
  Task* target = reinterpret_cast<Task*>(ctx);
  if (Task* me = s.task_of(L)) {
    me->waiting_on = nullptr;
    std::erase(target->waiters, me);
    s.checkpoint(L);
  }
  return push_task_results(L, 1);
}

// _core.spawn(name, fn, ...) -> Task
int l_core_spawn(lua_State* L) {
  const char* name = luaL_optstring(L, 1, "");
  luaL_checktype(L, 2, LUA_TFUNCTION);
  Scheduler& s = Runtime::of(L).scheduler();
  int nargs = lua_gettop(L) - 2;
  Task* parent = s.task_of(L);
  auto t = s.spawn_shared(L, nargs, name, parent);  // pops fn and args
  lua_settop(L, 1);
  lua::push_new<TaskRef>(L, TaskRef{t});
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->thread_ref);
  lua_setiuservalue(L, -2, 1);
  return 1;
}

int l_task_wait(lua_State* L) {
  Task* target = lua::check<TaskRef>(L, 1)->task.get();
  lua_settop(L, 1);
  Scheduler& s = Runtime::of(L).scheduler();
  if (target->state == Task::State::done) return push_task_results(L, 1);
  Task* me = s.task_of(L);
  if (me == target) return luaL_error(L, "a task cannot wait for itself");
  if (!me || !s.yieldable_task(L)) {  // not inside a task: drive the scheduler here
    s.run_until(target);
    return push_task_results(L, 1);
  }
  s.checkpoint(L);
  me->state = Task::State::waiting_task;
  me->waiting_on = target;
  target->waiters.push_back(me);
  return lua_yieldk(L, 0, reinterpret_cast<lua_KContext>(target), wait_done);
}

int l_task_cancel(lua_State* L) {
  Task* t = lua::check<TaskRef>(L, 1)->task.get();
  const char* reason = luaL_optstring(L, 2, "cancelled");
  Runtime::of(L).scheduler().cancel(t, reason);
  return 0;
}

int l_task_done(lua_State* L) {
  lua_pushboolean(L, lua::check<TaskRef>(L, 1)->task->state == Task::State::done);
  return 1;
}

int l_task_status(lua_State* L) {
  Task* t = lua::check<TaskRef>(L, 1)->task.get();
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
  Task* t = lua::check<TaskRef>(L, 1)->task.get();
  lua_pushfstring(L, "ephrun.Task(%s)", t->name.c_str());
  return 1;
}

// --- pcall and xpcall that cannot stop a cancellation -----------------------
// A cancelled task's ephrun.Cancelled error goes on through every pcall it
// was raised inside: the `<close>` handlers on the way run (and may wait),
// then the error continues up, so the task ends. A pcall entered while the
// task was already unwinding (inside a closing method) works as usual.

bool unwinding(lua_State* L) {
  Scheduler* s = Scheduler::of(L);
  Task* t = s ? s->task_of(L) : nullptr;
  return t && t->unwinding;
}

constexpr lua_KContext kWasUnwinding = 0x10;

int pcall_finish(lua_State* L, int status, lua_KContext ctx) {
  int extra = static_cast<int>(ctx & 0xf);
  if (status != LUA_OK && status != LUA_YIELD) {
    if (!(ctx & kWasUnwinding) && unwinding(L)) return lua_error(L);  // error on top
    lua_pushboolean(L, 0);
    lua_pushvalue(L, -2);
    return 2;
  }
  return lua_gettop(L) - extra;
}

int l_pcall(lua_State* L) {
  luaL_checkany(L, 1);
  lua_KContext ctx = unwinding(L) ? kWasUnwinding : 0;
  lua_pushboolean(L, 1);
  lua_insert(L, 1);
  int st = lua_pcallk(L, lua_gettop(L) - 2, LUA_MULTRET, 0, ctx, pcall_finish);
  return pcall_finish(L, st, ctx);
}

// The handler is skipped for an error that will not stop here, so the
// Cancelled object goes on up unchanged (not turned into a traceback string).
int xpcall_msgh(lua_State* L) {
  if (!lua_toboolean(L, lua_upvalueindex(2)) && unwinding(L)) {
    lua_settop(L, 1);
    return 1;
  }
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  return 1;
}

int l_xpcall(lua_State* L) {
  int n = lua_gettop(L);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  bool was = unwinding(L);
  lua_KContext ctx = (was ? kWasUnwinding : 0) | 2;
  lua_pushvalue(L, 2);
  lua_pushboolean(L, was);
  lua_pushcclosure(L, xpcall_msgh, 2);
  lua_replace(L, 2);
  lua_pushboolean(L, 1);
  lua_pushvalue(L, 1);
  lua_rotate(L, 3, 2);
  int st = lua_pcallk(L, n - 2, LUA_MULTRET, 2, ctx, pcall_finish);
  return pcall_finish(L, st, ctx);
}

// --- print and writes to stdout/stderr, redacted ---------------------------
// A recipe's print(), io.write() and io.stdout/io.stderr:write() reach the
// terminal without the logger, so they redact here; writes to files a recipe
// opened stay byte for byte.

bool is_std_stream(lua_State* L, int idx) {
  auto* st = static_cast<luaL_Stream*>(luaL_testudata(L, idx, LUA_FILEHANDLE));
  return st && st->closef && (st->f == stdout || st->f == stderr);
}

// The original file:write is upvalue 1; arguments are (file, ...).
int l_file_write(lua_State* L) {
  int n = lua_gettop(L);
  if (n < 1 || !is_std_stream(L, 1)) {
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, n, LUA_MULTRET);
    return lua_gettop(L);
  }
  std::string out;
  for (int i = 2; i <= n; ++i) {
    size_t len = 0;
    const char* s = luaL_checklstring(L, i, &len);  // numbers too, as file:write takes them
    out.append(s, len);
  }
  out = redact(std::move(out));
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushvalue(L, 1);
  lua_pushlstring(L, out.data(), out.size());
  lua_call(L, 2, LUA_MULTRET);
  return lua_gettop(L) - n;
}

// io.write(...) is io.output():write(...), through the redacting method.
int l_io_write(lua_State* L) {
  int n = lua_gettop(L);
  lua_getglobal(L, "io");
  lua_getfield(L, -1, "output");
  lua_call(L, 0, 1);
  lua_remove(L, -2);
  lua_insert(L, 1);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, n + 1, LUA_MULTRET);
  return lua_gettop(L);
}

int l_print(lua_State* L) {
  int n = lua_gettop(L);
  std::string out;
  for (int i = 1; i <= n; ++i) {
    size_t len = 0;
    const char* s = luaL_tolstring(L, i, &len);
    if (i > 1) out += '\t';
    out.append(s, len);
    lua_pop(L, 1);
  }
  out += '\n';
  out = redact(std::move(out));
  std::fwrite(out.data(), 1, out.size(), stdout);
  std::fflush(stdout);
  return 0;
}

void redact_std_output(lua_State* L) {
  lua_pushcfunction(L, l_print);
  lua_setglobal(L, "print");
  if (luaL_getmetatable(L, LUA_FILEHANDLE) != LUA_TTABLE) {
    lua_pop(L, 1);
    return;  // the io library is not open
  }
  lua_getfield(L, -1, "__index");
  lua_getfield(L, -1, "write");
  lua_pushcclosure(L, l_file_write, 1);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "write");  // __index.write
  if (lua_getglobal(L, "io") == LUA_TTABLE) {
    lua_pushvalue(L, -2);
    lua_pushcclosure(L, l_io_write, 1);
    lua_setfield(L, -2, "write");
  }
  lua_pop(L, 4);
}

// --- shield -----------------------------------------------------------------

struct ShieldGuard {
  static constexpr const char* kMeta = "ephrun.Shield";
  std::weak_ptr<Task> task;
  bool closed = false;
};

int shield_release(lua_State* L) {
  auto* g = lua::check<ShieldGuard>(L, 1);
  if (g->closed) return 0;
  g->closed = true;
  if (auto t = g->task.lock(); t && t->shield > 0) --t->shield;
  return 0;
}

int shield_gc(lua_State* L) {
  shield_release(L);
  return lua::destroy<ShieldGuard>(L);
}

// _core.shield() -> guard: until the guard is closed, a cancel of the calling
// task waits (its waits are not interrupted); raised at the next wait after.
int l_core_shield(lua_State* L) {
  Scheduler& s = Runtime::of(L).scheduler();
  auto t = s.shared_of(L);
  if (t) ++t->shield;
  lua::push_new<ShieldGuard>(L, ShieldGuard{t, false});
  return 1;
}

// _core.checkpoint(): raises the calling task's pending cancellation now.
int l_core_checkpoint(lua_State* L) {
  Runtime::of(L).scheduler().checkpoint(L);
  return 0;
}

// _core.cancelled() -> reason | nil: whether the calling task is cancelled.
int l_core_cancelled(lua_State* L) {
  Task* t = Runtime::of(L).scheduler().task_of(L);
  if (!t || !t->cancelled) return 0;
  lua_pushstring(L, t->cancel_reason.c_str());
  return 1;
}

int l_core_is_cancelled(lua_State* L) {
  lua_pushboolean(L, is_cancelled(L, 1));
  return 1;
}

// _core.Cancelled(): the metatable of ephrun.Cancelled errors.
int l_core_cancelled_class(lua_State* L) {
  push_cancelled(L, "");  // makes sure the metatable exists
  lua_getmetatable(L, -1);
  return 1;
}

// _core.sched_stats() -> {workers, max_workers, tasks, timers, finished}
int l_core_sched_stats(lua_State* L) {
  Scheduler& s = Runtime::of(L).scheduler();
  lua_createtable(L, 0, 5);
  lua_pushinteger(L, s.workers());
  lua_setfield(L, -2, "workers");
  lua_pushinteger(L, s.max_workers());
  lua_setfield(L, -2, "max_workers");
  lua_pushinteger(L, static_cast<lua_Integer>(s.live_tasks()));
  lua_setfield(L, -2, "tasks");
  lua_pushinteger(L, static_cast<lua_Integer>(s.pending_timers()));
  lua_setfield(L, -2, "timers");
  lua_pushinteger(L, static_cast<lua_Integer>(s.finished_jobs()));
  lua_setfield(L, -2, "finished");
  return 1;
}

// --- mutex and event --------------------------------------------------------

struct Mutex {
  static constexpr const char* kMeta = "ephrun.Mutex";
  bool locked = false;
  int owner = 0;  // task id; 0 outside any task
  WaitQueue q;
};

struct Event {
  static constexpr const char* kMeta = "ephrun.Event";
  bool set = false;
  WaitQueue q;
};

int mutex_lock_k(lua_State* L, int status, lua_KContext ctx);

int mutex_try(lua_State* L, Mutex* m) {
  Scheduler& s = Runtime::of(L).scheduler();
  Task* t = s.task_of(L);
  int id = t ? t->id : 0;
  if (!m->locked) {
    m->locked = true;
    m->owner = id;
    lua_settop(L, 1);
    return 1;
  }
  if (m->owner == id)
    return luaL_error(L, "mutex: already held by this task (it is not re-entrant)");
  if (!t || !s.yieldable_task(L))
    return luaL_error(L,
                      "mutex: held by another task, and this code cannot wait for it (not in a "
                      "task, or inside a metamethod)");
  return s.park(L, &m->q, -1, mutex_lock_k, 0);
}

int mutex_lock_k(lua_State* L, int /*status*/, lua_KContext /*ctx*/) {
  Scheduler& s = Runtime::of(L).scheduler();
  Task* t = s.task_of(L);
  if (t && t->granted) {  // handed over by unlock: ours even if a cancel came meanwhile
    lua_settop(L, 1);
    return 1;
  }
  s.checkpoint(L);
  return mutex_try(L, lua::check<Mutex>(L, 1));
}

// mutex:lock() -> mutex (closable: `local _ <close> = m:lock()` unlocks at scope end)
int l_mutex_lock(lua_State* L) {
  Mutex* m = lua::check<Mutex>(L, 1);
  lua_settop(L, 1);
  Runtime::of(L).scheduler().checkpoint(L);
  return mutex_try(L, m);
}

int l_mutex_unlock(lua_State* L) {
  Mutex* m = lua::check<Mutex>(L, 1);
  Scheduler& s = Runtime::of(L).scheduler();
  Task* t = s.task_of(L);
  int id = t ? t->id : 0;
  if (!m->locked || m->owner != id) return luaL_error(L, "mutex: not held by this task");
  if (Task* next = s.unpark_one(&m->q))
    m->owner = next->id;  // handed over in arrival order
  else
    m->locked = false;
  return 0;
}

int l_mutex_locked(lua_State* L) {
  lua_pushboolean(L, lua::check<Mutex>(L, 1)->locked);
  return 1;
}

int l_core_mutex(lua_State* L) {
  lua::push_new<Mutex>(L);
  return 1;
}

int event_wait_k(lua_State* L, int /*status*/, lua_KContext /*ctx*/) {
  Scheduler& s = Runtime::of(L).scheduler();
  Task* t = s.task_of(L);
  if (t && t->granted) {
    lua_pushboolean(L, 1);
    return 1;
  }
  s.checkpoint(L);
  lua_pushboolean(L, lua::check<Event>(L, 1)->set);  // the timeout passed
  return 1;
}

// event:wait([timeout]) -> true once set, false when `timeout` seconds passed
int l_event_wait(lua_State* L) {
  Event* e = lua::check<Event>(L, 1);
  double timeout = luaL_optnumber(L, 2, -1);
  lua_settop(L, 1);
  Scheduler& s = Runtime::of(L).scheduler();
  s.checkpoint(L);
  if (e->set) {
    lua_pushboolean(L, 1);
    return 1;
  }
  Task* t = s.task_of(L);
  if (!t || !s.yieldable_task(L))
    return luaL_error(L,
                      "event: not set, and this code cannot wait for it (not in a task, or inside "
                      "a metamethod)");
  return s.park(L, &e->q, timeout, event_wait_k, 0);
}

int l_event_set(lua_State* L) {
  Event* e = lua::check<Event>(L, 1);
  e->set = true;
  Runtime::of(L).scheduler().unpark_all(&e->q);
  return 0;
}

int l_event_clear(lua_State* L) {
  lua::check<Event>(L, 1)->set = false;
  return 0;
}

int l_event_is_set(lua_State* L) {
  lua_pushboolean(L, lua::check<Event>(L, 1)->set);
  return 1;
}

int l_core_event(lua_State* L) {
  lua::push_new<Event>(L);
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
  if (s.origin.empty()) s.origin = rt.origin_of_caller();
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
  if (o.max_cost) {
    lua_pushnumber(L, *o.max_cost);
    lua_setfield(L, -2, "max_cost");
  }
  if (o.warn_cost) {
    lua_pushnumber(L, *o.warn_cost);
    lua_setfield(L, -2, "warn_cost");
  }
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

// _core.read_line(fd) -> line | nil at end of input
// A worker thread polls the descriptor instead of blocking in read(): signals
// go to the signal thread, so Ctrl-C at a prompt reaches the reader only as
// the task's cancellation, which then is raised in the task.
int l_core_read_line(lua_State* L) {
  int fd = static_cast<int>(luaL_checkinteger(L, 1));
  return await(L, "read an answer from the terminal", [fd](const CancelToken& tok) -> Outcome {
    std::string line;
    for (;;) {
      if (tok.cancelled()) return Outcome::fail(tok.reason());
      pollfd pfd{fd, POLLIN, 0};
      int n = poll(&pfd, 1, 100);
      if (n < 0 && errno != EINTR) break;
      if (n <= 0) continue;
      char c = 0;
      ssize_t got = read(fd, &c, 1);
      if (got < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (got != 1) {
        if (line.empty()) return Outcome{[](lua_State* L2) { return lua_pushnil(L2), 1; }};
        break;
      }
      if (c == '\n') break;
      line += c;
    }
    return Outcome{[line](lua_State* L2) {
      lua_pushlstring(L2, line.data(), line.size());
      return 1;
    }};
  });
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

// _core.builtin_text(path) -> the text of a shipped file ("meta/ephrun/fs.lua"),
// or nil: `ephrun meta install` and `ephrun new` write these out, so a team's
// repository gets the stubs and templates of the binary it runs.
int l_core_builtin_text(lua_State* L) {
  std::string rel = luaL_checkstring(L, 1);
  if (const char* root = std::getenv("EPHRUN_LUA_DIR"); root && *root) {
    std::ifstream in(std::filesystem::path(root) / rel, std::ios::binary);
    if (!in) return 0;
    std::stringstream ss;
    ss << in.rdbuf();
    std::string text = ss.str();
    lua_pushlstring(L, text.data(), text.size());
    return 1;
  }
  const EmbeddedFile* f = find_embedded(rel);
  if (!f) return 0;
  lua_pushlstring(L, f->data, f->size);
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
const luaL_Reg kTaskMeta[] = {
    {"__tostring", l_task_tostring}, {"__gc", lua::destroy<TaskRef>}, {nullptr, nullptr}};

const luaL_Reg kShieldMeta[] = {
    {"__close", shield_release}, {"__gc", shield_gc}, {nullptr, nullptr}};

const luaL_Reg kMutexMethods[] = {
    {"lock", lua::safe<l_mutex_lock>},
    {"unlock", lua::safe<l_mutex_unlock>},
    {"locked", l_mutex_locked},
    {nullptr, nullptr},
};
const luaL_Reg kMutexMeta[] = {
    {"__close", lua::safe<l_mutex_unlock>}, {"__gc", lua::destroy<Mutex>}, {nullptr, nullptr}};

const luaL_Reg kEventMethods[] = {
    {"wait", lua::safe<l_event_wait>},
    {"set", lua::safe<l_event_set>},
    {"clear", l_event_clear},
    {"is_set", l_event_is_set},
    {nullptr, nullptr},
};
const luaL_Reg kEventMeta[] = {{"__gc", lua::destroy<Event>}, {nullptr, nullptr}};

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
    {"read_line", lua::safe<l_core_read_line>},
    {"builtin_files", lua::safe<l_core_builtin_files>},
    {"shield", lua::safe<l_core_shield>},
    {"checkpoint", lua::safe<l_core_checkpoint>},
    {"cancelled", l_core_cancelled},
    {"is_cancelled", l_core_is_cancelled},
    {"Cancelled", l_core_cancelled_class},
    {"sched_stats", lua::safe<l_core_sched_stats>},
    {"mutex", lua::safe<l_core_mutex>},
    {"event", lua::safe<l_core_event>},
    {"builtin_text", lua::safe<l_core_builtin_text>},
    {nullptr, nullptr},
};

int luaopen_ephrun_core(lua_State* L) {
  lua::define_class(L, TaskRef::kMeta, kTaskMethods, kTaskMeta);
  lua::define_class(L, ShieldGuard::kMeta, nullptr, kShieldMeta);
  lua::define_class(L, Mutex::kMeta, kMutexMethods, kMutexMeta);
  lua::define_class(L, Event::kMeta, kEventMethods, kEventMeta);
  // Every pcall in the state (recipes, stdlib, providers) lets a task's own
  // cancellation through; see l_pcall.
  lua_pushcfunction(L, l_pcall);
  lua_setglobal(L, "pcall");
  lua_pushcfunction(L, l_xpcall);
  lua_setglobal(L, "xpcall");
  redact_std_output(L);
  luaL_newlib(L, kCoreFns);
  return 1;
}

}  // namespace
}  // namespace ephrun

EPHRUN_MODULE("ephrun._core", ephrun::luaopen_ephrun_core);
