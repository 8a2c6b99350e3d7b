// Lua tasks (coroutines) scheduled on one Lua thread. Sleeps are timers the
// Lua thread keeps; native blocking work runs on a bounded pool of worker
// threads, so other tasks progress meanwhile.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <lua.hpp>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "runtime/cancel.hpp"

namespace ephrun {

/// What native work hands back to the Lua thread.
struct Outcome {
  /// Pushes the results onto the task's stack and returns their count. Runs on
  /// the Lua thread after the work ended; may be empty (no results).
  std::function<int(lua_State*)> push;
  /// When non-empty, raised as a Lua error instead.
  std::string error;

  static Outcome fail(std::string msg) { return Outcome{{}, std::move(msg)}; }
};

/// Native blocking work. Runs off the Lua thread: it must not touch Lua.
using Work = std::function<Outcome(const CancelToken&)>;

struct Task;
using Clock = std::chrono::steady_clock;

/// Runs `work` on a worker thread and yields the calling task until it ends,
/// then returns its results (or raises its error). Work that ended with a
/// result delivers it even when the task was cancelled meanwhile; the
/// cancellation is raised at the task's next wait. Where yielding is
/// impossible (a metamethod, a finalizer, a coroutine the scheduler does not
/// own) it runs inline. Use as `return await(L, ...)`.
int await(lua_State* L, std::string what, Work work);

/// Tasks parked on a mutex or an event, in arrival order.
struct WaitQueue {
  std::deque<Task*> tasks;
};

/// The metatable name of the error raised in a cancelled task.
inline constexpr const char* kCancelledMeta = "ephrun.Cancelled";

class Scheduler {
 public:
  explicit Scheduler(lua_State* main);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  static Scheduler* of(lua_State* L);

  /// Pops the function and `nargs` arguments above it from `L` and starts a
  /// task running them. `parent` null means a top-level task. The pointer
  /// stays valid until the scheduler ends.
  Task* spawn(lua_State* L, int nargs, std::string name, Task* parent);
  /// The same, for a task whose handle Lua holds: the scheduler forgets it
  /// when it ends, and the handle keeps what it returned.
  std::shared_ptr<Task> spawn_shared(lua_State* L, int nargs, std::string name, Task* parent);

  /// Drives every task until `t` has finished (other tasks keep running).
  void run_until(Task* t);
  /// Drives until no task is left.
  void drain();

  /// Cancels `t` and its children, for good: the task's next wait (at once
  /// when it is blocked; its next instruction when it runs Lua) raises an
  /// `ephrun.Cancelled` error, unless it is inside `ephrun.shield`. Once
  /// raised, pcall and xpcall let it through, so the task ends; the `<close>`
  /// handlers on the way run, and their own waits work.
  void cancel(Task* t, const std::string& reason);
  void cancel_all(const std::string& reason);
  /// Raises `error` once in `t` at its current or next wait (a child failed).
  /// `force` reaches a shielded task too (a deadlock).
  void interrupt(Task* t, const std::string& error, bool force = false);

  /// The task whose coroutine is running, or null.
  [[nodiscard]] Task* current() const { return current_; }
  [[nodiscard]] Task* task_of(lua_State* co) const;
  [[nodiscard]] std::shared_ptr<Task> shared_of(lua_State* co) const;

  /// Signals: the first SIGINT/SIGTERM/SIGHUP cancels every task; later ones
  /// call `on_repeat_signal` (which prints what is still being cleaned up).
  void install_signal_handling();
  [[nodiscard]] int signal_received() const { return first_signal_.load(); }
  std::function<void(int)> on_first_signal;
  std::function<void(int)> on_repeat_signal;

  /// Descriptions of native work in flight (for "still waiting on ..." messages).
  [[nodiscard]] std::vector<std::string> in_flight() const;

  /// When false (while the run's cleanups execute) a signal cancels nothing.
  std::atomic<bool> cancel_on_signal{true};

  /// Handles a signal the signal thread recorded; called from the Lua thread.
  void poll_signal();

  /// Threads the process has for native work now, and the most it may have
  /// (EPHRUN_WORKERS, default 64).
  [[nodiscard]] int workers() const;
  [[nodiscard]] int max_workers() const { return max_workers_; }
  /// Tasks alive (not finished) and timers pending, for tests and benchmarks.
  [[nodiscard]] size_t live_tasks() const { return tasks_.size(); }
  [[nodiscard]] size_t pending_timers() const { return timers_.size(); }
  /// Native work that has ended and waits for the Lua thread to collect it.
  [[nodiscard]] size_t finished_jobs() const;

  // Used by await(), sleep and the mutex and event bindings; not for modules.
  struct Job;
  void submit(Job* job);
  bool yieldable_task(lua_State* L) const;
  void begin_inline(const CancelToken& token);
  void end_inline();
  /// Yields the current task for `seconds` (a timer, no thread).
  int sleep(lua_State* L, double seconds);
  /// Parks the current task on `q` until `unpark_*` (granted), `timeout`
  /// seconds pass (negative: none), a cancel or an interrupt; then `k` runs.
  int park(lua_State* L, WaitQueue* q, double timeout, lua_KFunction k, lua_KContext ctx);
  Task* unpark_one(WaitQueue* q);
  void unpark_all(WaitQueue* q);
  /// Raises the pending interrupt or cancellation of the calling task, if any
  /// (and it is not shielded): every wait calls it first.
  void checkpoint(lua_State* L);
  [[nodiscard]] bool must_raise(const Task* t) const;

 private:
  void resume(Task* t);
  void finish(Task* t, int status);
  void step(bool block);
  void wake(Task* t, const std::string& why);
  void make_ready(Task* t);
  void add_timer(Task* t, Clock::time_point at);
  void drop_timer(Task* t);
  void fire_timers();
  void unpark(Task* t);
  void handle_deadlock();
  void worker_main();

  lua_State* main_;
  std::map<lua_State*, std::shared_ptr<Task>> tasks_;  // alive
  std::vector<std::shared_ptr<Task>> retained_;        // ended, spawned from C++
  std::deque<Task*> ready_;
  Task* current_ = nullptr;
  int next_id_ = 1;
  uint64_t next_timer_ = 1;
  std::map<std::pair<Clock::time_point, uint64_t>, Task*> timers_;

  mutable std::mutex mu_;
  std::condition_variable cv_;       // the Lua thread: work done or a signal
  std::condition_variable work_cv_;  // workers: work queued or stopping
  std::deque<Job*> queue_;           // submitted, not started
  std::deque<Job*> done_;            // finished, not yet collected
  std::vector<Job*> running_;        // submitted and not collected
  std::vector<std::thread> workers_;
  int idle_workers_ = 0;
  int max_workers_ = 64;
  std::vector<CancelToken> inline_tokens_;
  std::atomic<lua_State*> running_co_{nullptr};

  std::atomic<int> first_signal_{0};
  std::atomic<int> pending_signal_{0};
  std::thread signal_thread_;
  std::atomic<bool> stopping_{false};
};

struct Task {
  int id = 0;
  std::string name;
  lua_State* co = nullptr;
  int thread_ref = LUA_NOREF;  // released when the task ends
  int nargs = 0;               // arguments waiting for the first resume
  Task* parent = nullptr;
  std::vector<Task*> children;  // alive ones

  enum class State {
    ready,
    running,
    blocked,
    sleeping,
    parked,
    waiting_task,
    done
  } state = State::ready;
  Scheduler::Job* job = nullptr;  // native work in flight
  Task* waiting_on = nullptr;     // task:wait() target
  std::vector<Task*> waiters;
  std::pair<Clock::time_point, uint64_t> timer{};  // second == 0: none
  WaitQueue* parked_on = nullptr;
  bool granted = false;  // unparked by unpark_*, not by a timeout or a cancel

  bool cancelled = false;  // for good, once cancelled
  std::string cancel_reason;
  bool unwinding = false;  // an ephrun.Cancelled error was raised and is going up
  int shield = 0;          // ephrun.shield depth: cancellation waits while > 0
  bool interrupt_pending = false;
  bool interrupt_forced = false;  // raised even inside a shield (a deadlock)
  std::string interrupt_error;

  bool ok = false;
  std::string error;  // message when !ok
  std::string traceback;
};

/// Pushes a new `ephrun.Cancelled` error object carrying `reason`.
void push_cancelled(lua_State* L, const std::string& reason);
/// True when the value at `idx` is an `ephrun.Cancelled` error.
bool is_cancelled(lua_State* L, int idx);

}  // namespace ephrun
