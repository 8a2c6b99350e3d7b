// Local child processes: the work behind ephrun.proc, usable without Lua.
//
// Every child gets an empty signal mask and default signal dispositions (the
// host blocks SIGINT/SIGTERM/SIGHUP/SIGUSR2 in all its threads for its sigwait
// thread, and a blocked mask is inherited across exec), and its own process
// group, so a terminal's Ctrl-C reaches only ephrun, which then stops its
// children itself. Every live child is listed in a process-wide registry;
// `terminate_all_children` (also run at exit) stops whatever is left.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "runtime/cancel.hpp"
#include "sys/fs.hpp"

namespace ephrun::sys {

struct SpawnOptions {
  std::vector<std::string> argv;  // argv[0] is looked up in PATH unless it has a '/'
  /// Set (value) or unset (nullopt) on top of ephrun's environment, or of an
  /// empty one when `env_clear`. The only way to hand a child a secret:
  /// never put secrets in argv, which every local user can read in /proc.
  std::map<std::string, std::optional<std::string>> env;
  bool env_clear = false;
  std::string cwd;                        // empty: ephrun's
  std::optional<std::string> stdin_data;  // nullopt: /dev/null
  /// Keep stdout/stderr in the result (up to max_capture bytes each; beyond
  /// that the tail is kept).
  bool capture = true;
  std::size_t max_capture = 64u << 20;
  /// Called from the reader thread with each output line (without '\n').
  std::function<void(bool is_stderr, std::string_view line)> on_line;
};

struct ExitStatus {
  int code = -1;   // exit code, or -1 when killed by a signal
  int signal = 0;  // the signal that killed it, or 0
  std::string out, err;
  bool out_truncated = false, err_truncated = false;
  double duration = 0;  // seconds from spawn to exit
};

/// One spawned child, pumped by its own reader thread.
class Process {
 public:
  /// Spawns at once; throws Error when the program is not found or cannot run.
  explicit Process(SpawnOptions opts);
  /// Terminates the child if it still runs (TERM, up to 2 s, then KILL).
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  [[nodiscard]] pid_t pid() const { return pid_; }
  /// False once the child has exited (and was reaped).
  [[nodiscard]] bool running() const;
  /// Waits until the child exited and its output was read, `timeout` passed,
  /// or `tok` was cancelled. True when finished.
  bool wait_for(std::chrono::nanoseconds timeout, const CancelToken* tok = nullptr);
  /// Valid once wait_for returned true.
  [[nodiscard]] ExitStatus status() const;
  /// Sends `sig` to the child's process group; false when it already exited.
  bool signal(int sig);
  /// SIGTERM, waits up to `grace`, then SIGKILL and waits for the exit.
  void terminate(std::chrono::nanoseconds grace);

 private:
  void pump();

  SpawnOptions opts_;
  pid_t pid_ = -1;
  int pidfd_ = -1;
  int out_fd_ = -1, err_fd_ = -1, in_fd_ = -1;
  std::chrono::steady_clock::time_point start_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool reaped_ = false;  // the pid may be reused from here on: signal nothing
  bool finished_ = false;
  ExitStatus status_;
  std::thread reader_;
};

/// Finds `name` in `path` (colon-separated; ephrun's PATH when empty):
/// the first executable regular file, or "".
std::string which(const std::string& name, const std::string& path = "");

/// argv joined for messages, each argument shell-quoted when needed.
std::string describe_command(const std::vector<std::string>& argv);

/// Terminates every child still running (TERM, up to `grace`, then KILL).
/// Returns how many were running. Also registered with atexit.
int terminate_all_children(std::chrono::nanoseconds grace = std::chrono::seconds(2));
/// Number of live children (spawned and not yet reaped).
int live_children();

/// "TERM", "SIGTERM" or "15" to 15; -1 when unknown.
int signal_number(const std::string& name);

}  // namespace ephrun::sys
