// One recipe run: the Lua state, its scheduler, cleanup stack, plan and phase.
#pragma once

#include <iosfwd>
#include <lua.hpp>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "runtime/plan.hpp"
#include "runtime/scheduler.hpp"

namespace ephrun {

namespace journal {
class Journal;
}

struct Options {
  bool dry_run = false;
  bool json = false;
  bool yes = false;
  int verbosity = 0;  // -1 quiet, 0 normal, 1+ verbose
  std::string log_file;
  bool help = false;
  std::string notify_url;           // --notify; a secret (the stdlib registers it)
  std::optional<double> max_cost;   // --max-cost USD: refuse a worst case above it
  std::optional<double> warn_cost;  // --warn-cost USD: warn above it
};

/// Whether a file shipped with ephrun exists at `rel` ("recipes/x.lua"),
/// in the binary or under EPHRUN_LUA_DIR.
bool has_builtin(const std::string& rel);

/// Exit codes, as documented in docs/cli.md.
enum Exit : int { kOk = 0, kFailed = 1, kUsage = 2, kOutputClosed = 128 + 13 };

/// Makes a write to a closed pipe (`| head`, a pager quit early) fail with
/// EPIPE instead of killing the process; during a run it then stops the run
/// like a signal, so every cleanup still runs. Call once, first thing in main.
void install_sigpipe_handling();
/// True once a write hit a closed pipe.
bool output_closed();

class Runtime {
 public:
  explicit Runtime(Options opts);
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  /// The runtime owning `L`, or null for a state created elsewhere.
  static Runtime* maybe(lua_State* L);
  static Runtime& of(lua_State* L);

  /// Loads RECIPE (a path or a built-in name), binds `args` (name=value) to its
  /// params, runs it as the root task, runs the cleanups, prints the plan or
  /// summary. Returns the process exit code.
  int run(const std::string& recipe, const std::vector<std::string>& args);

  /// Prints the built-in recipes and commands with their summaries.
  int list(std::ostream& out);

  /// The one choke point for side effects: records `step` in the plan and
  /// returns whether to act (false under --dry-run, where the caller returns a
  /// placeholder instead).
  bool effect(Step step) {
    step.phase = phase;
    if (step.origin.empty()) step.origin = origin_of_caller();
    plan_.add(std::move(step));
    return !opts_.dry_run;
  }

  [[nodiscard]] lua_State* L() const { return L_; }
  Scheduler& scheduler() { return *sched_; }
  Plan& plan() { return plan_; }
  const Options& options() const { return opts_; }
  [[nodiscard]] const std::string& run_id() const { return run_id_; }

  std::string phase = "load";
  /// A verified pack checkout: effects asked for by code under `root` are
  /// marked with `origin` in the plan.
  struct PackRoot {
    std::string root, origin;
  };
  std::vector<PackRoot> pack_roots;
  /// The origin of the innermost frame of the running task that is pack code, or "".
  [[nodiscard]] std::string origin_of_caller() const;
  /// Directory of the running recipe: first place `require` looks.
  std::string recipe_dir;

  // The cleanup stack (ephrun.defer). Entries run LIFO when the run ends.
  struct Cleanup {
    int id;
    std::string what;
    std::string hint;  // a command that undoes it by hand, printed if it fails
    int fn_ref;
    enum class State { pending, running, done, failed, dismissed } state;
    std::string error;
  };
  int push_cleanup(lua_State* L, int fn_idx, std::string what, std::string hint);
  /// Runs one cleanup now (from the calling task); false if it failed.
  bool run_cleanup(lua_State* L, int id);
  void dismiss_cleanup(int id);
  /// For a scope's own close: marks the entry running and pushes its function
  /// (true), or pushes nothing when it already ran or was dismissed (false).
  bool take_cleanup(lua_State* L, int id);
  void finish_cleanup(int id, bool ok, const std::string& error);
  [[nodiscard]] std::vector<std::string> pending_cleanups() const;

  /// os.exit(code) from Lua: records the code, cancels every task and raises,
  /// so the run unwinds and its cleanups run before ephrun exits `code`.
  int request_exit(lua_State* L, int code);

 private:
  struct Ending {
    int code = kOk;
    std::string status = "ok";  // for the journal's run row
    std::string detail;
  };
  std::unique_ptr<journal::Journal> start_journal(const std::string& label,
                                                  const std::string& bound_params);
  Ending run_body(const std::string& label, journal::Journal* jrn, Task*& root);
  Ending ending(const Task& root, const std::string& failed_phase, int cleanup_failures) const;
  void install_os_exit();
  void open_state();
  int load_recipe(const std::string& recipe, std::string& path, bool& command);
  int load_pack_recipe(const std::string& spec, std::string& path);
  std::string recipe_origin_;  // "pack NAME@COMMIT" for `ephrun PACK/RECIPE`
  int load_failed(const std::string& message, int code);
  int prepare(const std::string& recipe, const std::string& path,
              const std::vector<std::string>& args, std::string& label, std::string& bound_params);
  int run_cleanups();
  void print_still_cleaning(int sig);
  std::string finish_run();

  Options opts_;
  lua_State* L_ = nullptr;
  std::unique_ptr<Scheduler> sched_;
  Plan plan_;
  std::string run_id_;
  std::vector<Cleanup> cleanups_;
  int next_cleanup_ = 1;
  int scope_cleanup_failures_ = 0;
  std::optional<int> exit_code_;  // set by os.exit
  std::string exit_phase_;
};

}  // namespace ephrun
