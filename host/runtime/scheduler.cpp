#include "runtime/scheduler.hpp"

#include <csignal>
#include <cstring>

#include "runtime/runtime.hpp"

namespace ephrun {

struct Scheduler::Job {
  std::string what;
  Work work;
  CancelToken token;
  Outcome out;
  Task* task = nullptr;
  std::thread thread;
};

namespace {

int push_outcome(lua_State* L, Outcome& out) {
  if (!out.error.empty()) {
    luaL_where(L, 1);
    lua_pushlstring(L, out.error.data(), out.error.size());
    lua_concat(L, 2);
    return lua_error(L);
  }
  return out.push ? out.push(L) : 0;
}

[[noreturn]] void raise_cancel(lua_State* L, Task* t) {
  t->cancel_requested = false;
  t->cancelled = true;
  lua_pushstring(L, t->cancel_reason.c_str());
  lua_error(L);
  std::abort();  // lua_error does not return
}

int await_done(lua_State* L, int /*status*/, lua_KContext ctx) {
  std::unique_ptr<Scheduler::Job> job(reinterpret_cast<Scheduler::Job*>(ctx));
  Task* t = job->task;
  t->job = nullptr;
  if (t->cancel_requested) {
    job.reset();
    raise_cancel(L, t);
  }
  Outcome out = std::move(job->out);
  job.reset();
  return push_outcome(L, out);
}

// One hook serves both cancellation and signals: it is set on a coroutine to
// make it stop at its next instruction.
void sched_hook(lua_State* L, lua_Debug* /*ar*/) {
  lua_sethook(L, nullptr, 0, 0);
  Scheduler* s = Scheduler::of(L);
  if (!s) return;
  s->poll_signal();
  Task* t = s->task_of(L);
  if (t && t->cancel_requested && !t->job) raise_cancel(L, t);
}

// Runs the task's function under a traceback handler, so errors come back as
// (false, message) with the traceback kept beside it.
int task_msgh(lua_State* L) {
  const char* msg = lua_tostring(L, 1);
  if (!msg) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) {
      msg = lua_tostring(L, -1);
    } else {
      msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
  }
  luaL_traceback(L, L, nullptr, 1);
  lua_setglobal(L, "_EPHRUN_LAST_TRACEBACK");
  lua_pushvalue(L, 1);
  return 1;
}

int task_finish(lua_State* L, int status, lua_KContext /*ctx*/) {
  if (status != LUA_OK && status != LUA_YIELD) {  // error value on top, msgh at 1
    lua_pushboolean(L, 0);
    lua_replace(L, 1);
    return 2;
  }
  lua_pushboolean(L, 1);
  lua_replace(L, 1);
  return lua_gettop(L);
}

int task_main(lua_State* L) {
  int nargs = lua_gettop(L) - 1;
  lua_pushcfunction(L, task_msgh);
  lua_insert(L, 1);
  int st = lua_pcallk(L, nargs, LUA_MULTRET, 1, 0, task_finish);
  return task_finish(L, st, 0);
}

}  // namespace

int await(lua_State* L, std::string what, Work work) {
  Scheduler* s = Scheduler::of(L);
  Task* t = s ? s->task_of(L) : nullptr;
  if (t && t->cancel_requested) raise_cancel(L, t);
  if (!t || !s->yieldable_task(L)) {
    CancelToken token;
    if (s) s->begin_inline(token);
    Outcome out;
    try {
      out = work(token);
    } catch (const std::exception& e) {
      out = Outcome::fail(e.what());
    }
    if (s) s->end_inline();
    if (token.cancelled() && out.error.empty()) out = Outcome::fail(token.reason());
    return push_outcome(L, out);
  }
  auto* job = new Scheduler::Job{std::move(what), std::move(work), {}, {}, t, {}};
  t->job = job;
  t->state = Task::State::blocked;
  s->submit(job);
  return lua_yieldk(L, 0, reinterpret_cast<lua_KContext>(job), await_done);
}

Scheduler::Scheduler(lua_State* main) : main_(main) {}

Scheduler::~Scheduler() {
  stopping_ = true;
  {
    std::lock_guard lk(mu_);
    for (Job* j : running_) j->token.cancel("shutting down");
  }
  cv_.notify_all();
  for (Job* j : running_)
    if (j->thread.joinable()) j->thread.join();
  if (signal_thread_.joinable()) {
    pthread_kill(signal_thread_.native_handle(), SIGUSR2);
    signal_thread_.join();
  }
}

Scheduler* Scheduler::of(lua_State* L) {
  Runtime* rt = Runtime::maybe(L);
  return rt ? &rt->scheduler() : nullptr;
}

Task* Scheduler::task_of(lua_State* co) const {
  auto it = tasks_.find(co);
  return it == tasks_.end() ? nullptr : it->second.get();
}

bool Scheduler::yieldable_task(lua_State* L) const {
  return current_ && current_->co == L && lua_isyieldable(L);
}

Task* Scheduler::spawn(lua_State* L, int nargs, std::string name, Task* parent) {
  lua_State* co = lua_newthread(L);
  int ref = luaL_ref(L, LUA_REGISTRYINDEX);
  auto task = std::make_unique<Task>();
  Task* t = task.get();
  t->id = next_id_++;
  t->name = name.empty() ? "task " + std::to_string(t->id) : std::move(name);
  t->co = co;
  t->thread_ref = ref;
  t->parent = parent;
  t->nargs = nargs + 1;
  if (parent) parent->children.push_back(t);
  lua_pushcfunction(co, task_main);
  lua_xmove(L, co, nargs + 1);  // the function and its arguments
  tasks_.emplace(co, std::move(task));
  ready_.push_back(t);
  return t;
}

void Scheduler::resume(Task* t) {
  Task* outer = current_;
  lua_State* outer_co = running_co_.load();
  t->state = Task::State::running;
  current_ = t;
  running_co_ = t->co;
  int nres = 0;
  int nargs = t->nargs;
  t->nargs = 0;
  int st = lua_resume(t->co, outer ? outer->co : main_, nargs, &nres);
  current_ = outer;
  running_co_ = outer_co;
  if (st == LUA_YIELD) {
    if (t->state == Task::State::running) {  // a plain coroutine.yield(): let others run
      lua_pop(t->co, nres);
      t->state = Task::State::ready;
      ready_.push_back(t);
    }
    return;
  }
  finish(t, st);
}

void Scheduler::finish(Task* t, int status) {
  lua_State* co = t->co;
  if (status == LUA_OK && lua_toboolean(co, 1)) {
    t->ok = true;
    int n = lua_gettop(co) - 1;
    lua_createtable(co, n, 1);
    for (int i = 1; i <= n; ++i) {
      lua_pushvalue(co, i + 1);
      lua_rawseti(co, -2, i);
    }
    lua_pushinteger(co, n);
    lua_setfield(co, -2, "n");
    t->result_ref = luaL_ref(co, LUA_REGISTRYINDEX);
  } else {
    t->ok = false;
    int idx = status == LUA_OK ? 2 : -1;
    const char* msg = lua_tostring(co, idx);
    if (!msg && luaL_callmeta(co, idx, "__tostring")) {
      msg = lua_tostring(co, -1);
      lua_pop(co, 1);
    }
    t->error = msg ? msg : std::string("(error object is a ") + luaL_typename(co, idx) + " value)";
    lua_pushvalue(co, idx);
    t->result_ref = luaL_ref(co, LUA_REGISTRYINDEX);
    if (lua_getglobal(co, "_EPHRUN_LAST_TRACEBACK") == LUA_TSTRING)
      t->traceback = lua_tostring(co, -1);
    lua_pop(co, 1);
    if (status != LUA_OK) lua_resetthread(co);  // closes pending to-be-closed variables
  }
  lua_settop(co, 0);
  t->state = Task::State::done;

  for (Task* w : t->waiters) {
    if (w->state == Task::State::waiting_task && w->waiting_on == t) {
      w->state = Task::State::ready;
      ready_.push_back(w);
    }
  }
  t->waiters.clear();

  // A failure cancels the siblings and reaches the parent, unless it was the
  // cancellation itself.
  if (!t->ok && !t->cancelled && t->parent && t->parent->state != Task::State::done) {
    for (Task* sib : t->parent->children)
      if (sib != t && sib->state != Task::State::done)
        cancel(sib, "cancelled: sibling task '" + t->name + "' failed");
    if (t->parent->waiting_on != t) cancel(t->parent, t->error);
  }
}

void Scheduler::cancel(Task* t, const std::string& reason) {
  if (t->state == Task::State::done) return;
  for (Task* c : t->children) cancel(c, reason);
  if (t->cancel_requested) return;
  t->cancel_requested = true;
  t->cancel_reason = reason;
  if (t->job) {
    t->job->token.cancel(reason);
  } else if (t->state == Task::State::waiting_task) {
    // Waiting on its own child, which was just cancelled too: let the child
    // unwind first, so cleanups run innermost first; the wake-up raises.
    bool own_child = false;
    for (Task* p = t->waiting_on ? t->waiting_on->parent : nullptr; p; p = p->parent)
      if (p == t) own_child = true;
    if (!own_child) {
      t->state = Task::State::ready;
      ready_.push_back(t);
    }
  } else {
    lua_sethook(t->co, sched_hook, LUA_MASKCOUNT, 1);
  }
}

void Scheduler::cancel_all(const std::string& reason) {
  for (auto& [co, t] : tasks_) cancel(t.get(), reason);
}

void Scheduler::submit(Job* job) {
  std::lock_guard lk(mu_);
  running_.push_back(job);
  job->thread = std::thread([this, job] {
    try {
      job->out = job->work(job->token);
    } catch (const std::exception& e) {
      job->out = Outcome::fail(e.what());
    }
    {
      std::lock_guard lk2(mu_);
      done_.push_back(job);
    }
    cv_.notify_all();
  });
}

void Scheduler::begin_inline(const CancelToken& token) {
  std::lock_guard lk(mu_);
  inline_tokens_.push_back(token);
}

void Scheduler::end_inline() {
  std::lock_guard lk(mu_);
  if (!inline_tokens_.empty()) inline_tokens_.pop_back();
}

void Scheduler::step(bool block) {
  while (!ready_.empty()) {
    Task* t = ready_.front();
    ready_.pop_front();
    if (t->state == Task::State::ready) resume(t);
    poll_signal();
  }
  std::deque<Job*> done;
  {
    std::unique_lock lk(mu_);
    if (block && done_.empty() && pending_signal_ == 0) {
      if (running_.empty()) {
        lk.unlock();
        // Nothing runs and nothing is ready: whoever still waits, waits forever.
        for (auto& [co, t] : tasks_)
          if (t->state == Task::State::waiting_task)
            cancel(t.get(), "deadlock: task waits on itself");
        return;
      }
      cv_.wait_for(lk, std::chrono::milliseconds(200),
                   [&] { return !done_.empty() || pending_signal_ != 0; });
    }
    done.swap(done_);
    for (Job* j : done) std::erase(running_, j);
  }
  poll_signal();
  for (Job* j : done) {
    j->thread.join();
    j->task->state = Task::State::ready;
    ready_.push_back(j->task);
  }
}

void Scheduler::run_until(Task* t) {
  while (t->state != Task::State::done) step(ready_.empty());
}

void Scheduler::drain() {
  for (;;) {
    bool live = false;
    for (auto& [co, t] : tasks_)
      if (t->state != Task::State::done) live = true;
    if (!live) return;
    step(ready_.empty());
  }
}

std::vector<std::string> Scheduler::in_flight() const {
  std::lock_guard lk(mu_);
  std::vector<std::string> out;
  for (Job* j : running_) out.push_back(j->task->name + ": " + j->what);
  return out;
}

// Signals are taken by a dedicated thread (sigwait), so the handler context
// never touches the interpreter beyond lua_sethook, which Lua allows there.
void Scheduler::install_signal_handling() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  sigaddset(&set, SIGUSR2);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal_thread_ = std::thread([this, set] {
    for (;;) {
      int sig = 0;
      if (sigwait(&set, &sig) != 0) continue;
      if (sig == SIGUSR2 && stopping_) return;
      if (sig == SIGUSR2) continue;
      {
        std::lock_guard lk(mu_);
        pending_signal_ = sig;
        if (first_signal_ == 0 && cancel_on_signal)
          for (auto& tok : inline_tokens_)
            tok.cancel(std::string("interrupted by SIG") + sigabbrev_np(sig));
      }
      cv_.notify_all();
      if (lua_State* co = running_co_.load()) lua_sethook(co, sched_hook, LUA_MASKCOUNT, 1);
    }
  });
}

void Scheduler::poll_signal() {
  int sig = pending_signal_.exchange(0);
  if (sig == 0) return;
  int expected = 0;
  if (first_signal_.compare_exchange_strong(expected, sig)) {
    if (on_first_signal) on_first_signal(sig);
    if (cancel_on_signal) cancel_all(std::string("interrupted by SIG") + sigabbrev_np(sig));
  } else if (on_repeat_signal) {
    on_repeat_signal(sig);
  }
}

}  // namespace ephrun
