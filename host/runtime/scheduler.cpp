#include "runtime/scheduler.hpp"

#include <csignal>
#include <cstdlib>
#include <cstring>

#include "runtime/duration.hpp"
#include "runtime/runtime.hpp"

namespace ephrun {

struct Scheduler::Job {
  std::string what;
  Work work;
  CancelToken token;
  Outcome out;
  Task* task = nullptr;
};

namespace {

// Lua code is interrupted between instructions by this hook: often enough
// that a busy loop stops within microseconds of a signal, rarely enough to
// cost nothing measurable. The signal thread never touches a lua_State.
constexpr int kHookEvery = 1000;

int push_outcome(lua_State* L, Outcome& out) {
  if (!out.error.empty()) {
    luaL_where(L, 1);
    lua_pushlstring(L, out.error.data(), out.error.size());
    lua_concat(L, 2);
    return lua_error(L);
  }
  return out.push ? out.push(L) : 0;
}

int cancelled_tostring(lua_State* L) {
  lua_getfield(L, 1, "reason");
  if (!lua_isstring(L, -1)) lua_pushliteral(L, "cancelled");
  return 1;
}

void sched_hook(lua_State* L, lua_Debug* /*ar*/) {
  Scheduler* s = Scheduler::of(L);
  if (!s) return;
  s->poll_signal();
  Task* t = s->task_of(L);
  lua_sethook(L, sched_hook, LUA_MASKCOUNT, kHookEvery);
  if (t && t->state == Task::State::running && s->must_raise(t)) s->checkpoint(L);
}

// Runs the task's function under a traceback handler, so errors come back as
// (false, message) with the traceback kept beside it.
int task_msgh(lua_State* L) {
  luaL_traceback(L, L, nullptr, 1);
  lua_setglobal(L, "_EPHRUN_LAST_TRACEBACK");
  lua_settop(L, 1);
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

// A deadline `seconds` from now; NaN counts as 0 and a century as forever.
Clock::time_point after(double seconds) {
  if (!(seconds > 0)) seconds = 0;
  if (seconds > 3e9) seconds = 3e9;
  return Clock::now() +
         std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

Task* calling_task(lua_State* L, Scheduler** out = nullptr) {
  Scheduler* s = Scheduler::of(L);
  if (out) *out = s;
  return s ? s->task_of(L) : nullptr;
}

int await_done(lua_State* L, int /*status*/, lua_KContext ctx) {
  std::unique_ptr<Scheduler::Job> job(reinterpret_cast<Scheduler::Job*>(ctx));
  Scheduler* s = nullptr;
  Task* t = calling_task(L, &s);
  if (t) t->job = nullptr;
  Outcome out = std::move(job->out);
  bool interrupted = job->token.cancelled();
  job.reset();
  // A result in hand is delivered, so an HTTP create that returned is not
  // forgotten; the cancel stays and is raised at the next wait.
  if (out.error.empty()) return push_outcome(L, out);
  if (interrupted && t) s->checkpoint(L);
  return push_outcome(L, out);
}

int sleep_done(lua_State* L, int /*status*/, lua_KContext /*ctx*/) {
  Scheduler* s = nullptr;
  if (calling_task(L, &s)) s->checkpoint(L);
  return 0;
}

int run_inline(lua_State* L, Scheduler* s, Task* t, Work& work) {
  CancelToken token;
  // A cancelled task that cannot yield here (a finalizer, a metamethod) runs
  // the work with its cancellation already raised, so it stops at once.
  if (t && t->cancelled && t->shield == 0 && !t->unwinding) token.cancel(t->cancel_reason);
  bool watch = s && !(t && t->shield > 0);
  if (watch) s->begin_inline(token);
  Outcome out;
  try {
    out = work(token);
  } catch (const std::exception& e) {
    out = Outcome::fail(e.what());
  }
  if (watch) s->end_inline();
  if (token.cancelled() && out.error.empty() && !out.push) out = Outcome::fail(token.reason());
  return push_outcome(L, out);
}

}  // namespace

void push_cancelled(lua_State* L, const std::string& reason) {
  lua_createtable(L, 0, 3);
  lua_pushlstring(L, reason.data(), reason.size());
  lua_setfield(L, -2, "reason");
  lua_pushliteral(L, "cancelled");
  lua_setfield(L, -2, "kind");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "retry");
  if (luaL_newmetatable(L, kCancelledMeta)) {
    lua_pushcfunction(L, cancelled_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_setmetatable(L, -2);
}

bool is_cancelled(lua_State* L, int idx) {
  if (!lua_getmetatable(L, idx)) return false;
  luaL_getmetatable(L, kCancelledMeta);
  bool same = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return same;
}

int await(lua_State* L, std::string what, Work work) {
  Scheduler* s = nullptr;
  Task* t = calling_task(L, &s);
  if (!t || !s->yieldable_task(L)) return run_inline(L, s, t, work);
  s->checkpoint(L);
  auto* job = new Scheduler::Job{std::move(what), std::move(work), {}, {}, t};
  t->job = job;
  t->state = Task::State::blocked;
  s->submit(job);
  return lua_yieldk(L, 0, reinterpret_cast<lua_KContext>(job), await_done);
}

Scheduler::Scheduler(lua_State* main) : main_(main) {
  if (const char* w = std::getenv("EPHRUN_WORKERS"); w && *w) {
    int n = std::atoi(w);
    if (n >= 1 && n <= 1024) max_workers_ = n;
  }
}

Scheduler::~Scheduler() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
    for (Job* j : running_) j->token.cancel("shutting down");
  }
  cv_.notify_all();
  work_cv_.notify_all();
  for (auto& w : workers_)
    if (w.joinable()) w.join();
  for (Job* j : running_) delete j;
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
  if (current_ && current_->co == co) return current_;
  auto it = tasks_.find(co);
  return it == tasks_.end() ? nullptr : it->second.get();
}

std::shared_ptr<Task> Scheduler::shared_of(lua_State* co) const {
  auto it = tasks_.find(co);
  return it == tasks_.end() ? nullptr : it->second;
}

bool Scheduler::yieldable_task(lua_State* L) const {
  return current_ && current_->co == L && lua_isyieldable(L);
}

bool Scheduler::must_raise(const Task* t) const {
  if (t->shield > 0 && !t->interrupt_forced) return false;
  return t->interrupt_pending || (t->cancelled && !t->unwinding);
}

void Scheduler::checkpoint(lua_State* L) {
  Task* t = task_of(L);
  if (!t || !must_raise(t)) return;
  if (t->interrupt_pending) {
    t->interrupt_pending = false;
    t->interrupt_forced = false;
    std::string e = std::move(t->interrupt_error);
    lua_pushlstring(L, e.data(), e.size());
    lua_error(L);
  }
  t->unwinding = true;
  push_cancelled(L, t->cancel_reason);
  lua_error(L);
}

Task* Scheduler::spawn(lua_State* L, int nargs, std::string name, Task* parent) {
  auto t = spawn_shared(L, nargs, std::move(name), parent);
  retained_.push_back(t);
  return t.get();
}

std::shared_ptr<Task> Scheduler::spawn_shared(lua_State* L, int nargs, std::string name,
                                              Task* parent) {
  lua_State* co = lua_newthread(L);
  int ref = luaL_ref(L, LUA_REGISTRYINDEX);
  auto t = std::make_shared<Task>();
  t->id = next_id_++;
  t->name = name.empty() ? "task " + std::to_string(t->id) : std::move(name);
  t->co = co;
  t->thread_ref = ref;
  t->parent = parent;
  t->nargs = nargs + 1;
  if (parent) parent->children.push_back(t.get());
  lua_sethook(co, sched_hook, LUA_MASKCOUNT, kHookEvery);
  lua_pushcfunction(co, task_main);
  lua_xmove(L, co, nargs + 1);  // the function and its arguments
  tasks_.emplace(co, t);
  ready_.push_back(t.get());
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
      make_ready(t);
    }
    return;
  }
  finish(t, st);
}

// The coroutine keeps (ok, results...) or (false, error) on its stack for
// task:wait(); the handle's user value keeps the coroutine, the registry
// no longer does.
void Scheduler::finish(Task* t, int status) {
  lua_State* co = t->co;
  if (status == LUA_OK && lua_toboolean(co, 1)) {
    t->ok = true;
  } else {
    t->ok = false;
    int idx = status == LUA_OK ? 2 : lua_gettop(co);
    const char* msg = lua_tostring(co, idx);
    if (!msg && luaL_callmeta(co, idx, "__tostring")) {
      msg = lua_tostring(co, -1);
      lua_pop(co, 1);
    }
    t->error = msg ? msg : std::string("(error object is a ") + luaL_typename(co, idx) + " value)";
    if (lua_getglobal(co, "_EPHRUN_LAST_TRACEBACK") == LUA_TSTRING)
      t->traceback = lua_tostring(co, -1);
    lua_pop(co, 1);
    if (status != LUA_OK) {
      Task* outer = current_;
      current_ = t;  // closing methods run as this task
      lua_resetthread(co);
      current_ = outer;
      lua_settop(co, 1);
      lua_pushboolean(co, 0);
      lua_insert(co, 1);
    }
  }
  t->state = Task::State::done;
  drop_timer(t);
  luaL_unref(main_, LUA_REGISTRYINDEX, t->thread_ref);
  t->thread_ref = LUA_NOREF;

  for (Task* w : t->waiters) {
    if (w->state == Task::State::waiting_task && w->waiting_on == t) make_ready(w);
  }
  t->waiters.clear();
  for (Task* c : t->children) c->parent = nullptr;
  t->children.clear();

  // A failure cancels the siblings and reaches the parent, unless it was the
  // cancellation itself.
  Task* parent = t->parent;
  if (parent) std::erase(parent->children, t);
  if (!t->ok && !t->cancelled && parent && parent->state != Task::State::done) {
    for (Task* sib : std::vector<Task*>(parent->children))
      cancel(sib, "cancelled: sibling task '" + t->name + "' failed");
    if (parent->waiting_on != t) interrupt(parent, t->error);
  }
  t->parent = nullptr;
  tasks_.erase(co);  // may free t
}

void Scheduler::cancel(Task* t, const std::string& reason) {
  if (t->state == Task::State::done) return;
  for (Task* c : std::vector<Task*>(t->children)) cancel(c, reason);
  if (t->cancelled) return;
  t->cancelled = true;
  t->cancel_reason = reason;
  if (t->shield == 0) wake(t, reason);
}

void Scheduler::interrupt(Task* t, const std::string& error, bool force) {
  if (t->state == Task::State::done || t->interrupt_pending) return;
  t->interrupt_pending = true;
  t->interrupt_forced = force;
  t->interrupt_error = error;
  if (t->shield == 0 || force) wake(t, error);
}

// Makes a waiting task resume now; its continuation raises what is pending.
void Scheduler::wake(Task* t, const std::string& why) {
  switch (t->state) {
    case Task::State::blocked:
      if (t->job) t->job->token.cancel(why);
      break;
    case Task::State::sleeping:
      drop_timer(t);
      make_ready(t);
      break;
    case Task::State::parked:
      drop_timer(t);
      unpark(t);
      t->granted = false;
      make_ready(t);
      break;
    case Task::State::waiting_task: {
      // Waiting on its own child, which was just cancelled too: let the child
      // unwind first, so cleanups run innermost first; the wake-up raises.
      bool own_child = false;
      for (Task* p = t->waiting_on ? t->waiting_on->parent : nullptr; p; p = p->parent)
        if (p == t) own_child = true;
      if (!own_child) make_ready(t);
      break;
    }
    case Task::State::running:
      lua_sethook(t->co, sched_hook, LUA_MASKCOUNT, 1);
      break;
    case Task::State::ready:
      // Not started yet: stop at its first instruction. A task resuming from a
      // wait raises in its continuation instead, after taking a result in hand.
      if (t->nargs > 0) lua_sethook(t->co, sched_hook, LUA_MASKCOUNT, 1);
      break;
    case Task::State::done:
      break;
  }
}

void Scheduler::make_ready(Task* t) {
  if (t->state == Task::State::ready) return;  // already queued
  t->state = Task::State::ready;
  ready_.push_back(t);
}

void Scheduler::cancel_all(const std::string& reason) {
  std::vector<Task*> all;
  for (auto& [co, t] : tasks_) all.push_back(t.get());
  for (Task* t : all) cancel(t, reason);
}

void Scheduler::add_timer(Task* t, Clock::time_point at) {
  drop_timer(t);
  t->timer = {at, next_timer_++};
  timers_.emplace(t->timer, t);
}

void Scheduler::drop_timer(Task* t) {
  if (t->timer.second == 0) return;
  timers_.erase(t->timer);
  t->timer = {};
}

void Scheduler::fire_timers() {
  auto now = Clock::now();
  while (!timers_.empty() && timers_.begin()->first.first <= now) {
    Task* t = timers_.begin()->second;
    timers_.erase(timers_.begin());
    t->timer = {};
    if (t->state == Task::State::parked) {
      unpark(t);
      t->granted = false;
    }
    make_ready(t);
  }
}

int Scheduler::sleep(lua_State* L, double seconds) {
  Task* t = task_of(L);
  checkpoint(L);
  t->state = Task::State::sleeping;
  add_timer(t, after(seconds));
  return lua_yieldk(L, 0, 0, sleep_done);
}

int Scheduler::park(lua_State* L, WaitQueue* q, double timeout, lua_KFunction k, lua_KContext ctx) {
  Task* t = task_of(L);
  checkpoint(L);
  t->state = Task::State::parked;
  t->parked_on = q;
  t->granted = false;
  q->tasks.push_back(t);
  if (timeout >= 0) add_timer(t, after(timeout));
  return lua_yieldk(L, 0, ctx, k);
}

void Scheduler::unpark(Task* t) {
  if (!t->parked_on) return;
  std::erase(t->parked_on->tasks, t);
  t->parked_on = nullptr;
}

Task* Scheduler::unpark_one(WaitQueue* q) {
  if (q->tasks.empty()) return nullptr;
  Task* t = q->tasks.front();
  unpark(t);
  drop_timer(t);
  t->granted = true;
  make_ready(t);
  return t;
}

void Scheduler::unpark_all(WaitQueue* q) {
  while (unpark_one(q)) {
  }
}

void Scheduler::submit(Job* job) {
  std::lock_guard lk(mu_);
  running_.push_back(job);
  queue_.push_back(job);
  if (static_cast<int>(queue_.size()) > idle_workers_ &&
      static_cast<int>(workers_.size()) < max_workers_)
    workers_.emplace_back([this] { worker_main(); });
  else
    work_cv_.notify_one();
}

void Scheduler::worker_main() {
  std::unique_lock lk(mu_);
  for (;;) {
    ++idle_workers_;
    work_cv_.wait(lk, [&] { return stopping_ || !queue_.empty(); });
    --idle_workers_;
    if (stopping_) return;
    Job* job = queue_.front();
    queue_.pop_front();
    lk.unlock();
    try {
      job->out = job->work(job->token);
    } catch (const std::exception& e) {
      job->out = Outcome::fail(e.what());
    }
    lk.lock();
    done_.push_back(job);
    cv_.notify_all();
  }
}

int Scheduler::workers() const {
  std::lock_guard lk(mu_);
  return static_cast<int>(workers_.size());
}

size_t Scheduler::finished_jobs() const {
  std::lock_guard lk(mu_);
  return done_.size();
}

void Scheduler::begin_inline(const CancelToken& token) {
  std::lock_guard lk(mu_);
  inline_tokens_.push_back(token);
}

void Scheduler::end_inline() {
  std::lock_guard lk(mu_);
  if (!inline_tokens_.empty()) inline_tokens_.pop_back();
}

// Nothing runs, nothing is ready, no timer is set: whoever still waits, waits
// forever. Each gets an error it cannot shield against.
void Scheduler::handle_deadlock() {
  // Parked tasks first: a task waiting on one of them is woken when it ends.
  std::vector<Task*> stuck;
  for (auto& [co, t] : tasks_)
    if (t->state == Task::State::parked) stuck.push_back(t.get());
  if (stuck.empty())
    for (auto& [co, t] : tasks_)
      if (t->state == Task::State::waiting_task) stuck.push_back(t.get());
  for (Task* t : stuck) {
    t->interrupt_pending = true;
    t->interrupt_forced = true;
    t->interrupt_error = "deadlock: every task is waiting and nothing can wake them";
    drop_timer(t);
    unpark(t);
    t->granted = false;
    make_ready(t);
  }
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
      if (running_.empty() && timers_.empty()) {
        lk.unlock();
        handle_deadlock();
        return;
      }
      auto wait = std::chrono::milliseconds(200);
      auto until = Clock::now() + wait;
      if (!timers_.empty()) until = std::min(until, timers_.begin()->first.first);
      cv_.wait_until(lk, until, [&] { return !done_.empty() || pending_signal_ != 0; });
    }
    done.swap(done_);
    for (Job* j : done) std::erase(running_, j);
  }
  poll_signal();
  for (Job* j : done) make_ready(j->task);
  fire_timers();
}

void Scheduler::run_until(Task* t) {
  while (t->state != Task::State::done) step(ready_.empty());
}

void Scheduler::drain() {
  while (!tasks_.empty()) step(ready_.empty());
}

std::vector<std::string> Scheduler::in_flight() const {
  std::lock_guard lk(mu_);
  std::vector<std::string> out;
  for (Job* j : running_) out.push_back(j->task->name + ": " + j->what);
  auto now = Clock::now();
  for (const auto& [key, t] : timers_) {
    double left = std::chrono::duration<double>(key.first - now).count();
    out.push_back(t->name + ": " + (t->state == Task::State::sleeping ? "sleep, " : "wait, ") +
                  format_duration(left > 0 ? left : 0) + " left");
  }
  return out;
}

// Signals are taken by a dedicated thread (sigwait), which only records them
// and cancels inline work; the Lua thread acts on them between resumes and
// from the count hook.
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
    }
  });
}

void Scheduler::poll_signal() {
  if (pending_signal_.load(std::memory_order_relaxed) == 0) return;
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
