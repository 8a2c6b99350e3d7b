// Lua tasks (coroutines) scheduled on one Lua thread, with native blocking
// work run on worker threads so other tasks progress meanwhile.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <lua.hpp>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
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

/// Runs `work` off the Lua thread and yields the calling task until it ends,
/// then returns its results (or raises its error, or the cancellation reason).
/// Where yielding is impossible (a metamethod, a cleanup run by the
/// interpreter, a coroutine the scheduler does not own) it runs inline.
/// Use as `return await(L, ...)`.
int await(lua_State* L, std::string what, Work work);

class Scheduler {
 public:
  explicit Scheduler(lua_State* main);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  static Scheduler* of(lua_State* L);

  /// Pops the function and `nargs` arguments above it from `L` and starts a
  /// task running them. `parent` null means a top-level task.
  Task* spawn(lua_State* L, int nargs, std::string name, Task* parent);

  /// Drives every task until `t` has finished (other tasks keep running).
  void run_until(Task* t);
  /// Drives until no task is left.
  void drain();

  /// Cancels `t` (and its children): a task blocked in native work wakes with
  /// `reason` raised as an error; a task running Lua raises it at its next
  /// instruction. Delivered once, so the task's own cleanup can still wait.
  void cancel(Task* t, const std::string& reason);
  void cancel_all(const std::string& reason);

  /// The task whose coroutine is running, or null.
  [[nodiscard]] Task* current() const { return current_; }
  [[nodiscard]] Task* task_of(lua_State* co) const;

  /// Signals: the first SIGINT/SIGTERM/SIGHUP cancels every task; later ones
  /// call `on_repeat_signal` (which prints what is still being cleaned up).
  void install_signal_handling();
  [[nodiscard]] int signal_received() const { return first_signal_.load(); }
  std::function<void(int)> on_first_signal;
  std::function<void(int)> on_repeat_signal;

  /// Descriptions of native work in flight (for "still waiting on ..." messages).
  [[nodiscard]] std::vector<std::string> in_flight() const;

  /// When false (while the run's cleanups execute) a signal cancels nothing.
  bool cancel_on_signal = true;

  /// Handles a signal the signal thread recorded; called from the Lua thread.
  void poll_signal();

  // Used by await(); not for modules.
  struct Job;
  void submit(Job* job);
  bool yieldable_task(lua_State* L) const;
  void begin_inline(const CancelToken& token);
  void end_inline();

 private:
  void resume(Task* t);
  void finish(Task* t, int status);
  void step(bool block);
  void handle_signal(int sig);
  void deliver_cancel(Task* t);

  lua_State* main_;
  std::map<lua_State*, std::unique_ptr<Task>> tasks_;
  std::deque<Task*> ready_;
  Task* current_ = nullptr;
  int next_id_ = 1;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job*> done_;
  std::vector<Job*> running_;
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
  int thread_ref = LUA_NOREF;
  int nargs = 0;  // arguments waiting for the first resume
  Task* parent = nullptr;
  std::vector<Task*> children;

  enum class State { ready, running, blocked, waiting_task, done } state = State::ready;
  Scheduler::Job* job = nullptr;  // native work in flight
  Task* waiting_on = nullptr;     // task:wait() target
  std::vector<Task*> waiters;

  bool cancel_requested = false;  // set until delivered
  std::string cancel_reason;
  bool cancelled = false;  // a cancel was delivered at least once

  bool ok = false;
  int result_ref = LUA_NOREF;  // table of results, or the error box
  std::string error;           // message when !ok
  std::string traceback;
};

}  // namespace ephrun
