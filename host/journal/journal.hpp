// The journal: an SQLite file under EPHRUN_HOME recording every run and every
// resource a run creates, written before the create call so that `ephrun ls`
// and `ephrun reap` find what a killed run left behind. Usable without Lua.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

struct sqlite3;

namespace ephrun::journal {

/// `$EPHRUN_HOME`, else `~/.local/state/ephrun`.
std::string home_dir();
/// `home_dir()/journal.sqlite`.
std::string default_path();

using Tags = std::map<std::string, std::string>;

struct Intent {
  std::string run_id;
  std::string recipe;  // "" → the run's recipe, else the `ephrun-recipe` tag
  std::string provider;
  std::string kind = "instance";
  Tags tags;
  std::optional<double> hourly_price;
  std::optional<double> expires_at;  // seconds since the epoch
  std::string token;                 // idempotency token sent with the create call
};

struct Resource {
  std::int64_t key = 0;
  std::string run_id, recipe, provider, kind, id, token;
  Tags tags;
  std::string extra = "{}";  // JSON object: what the provider needs to destroy it
  double intended = 0;       // when the intent was written
  std::optional<double> created, destroyed, hourly_price, expires_at;
  std::string status;  // pending | live | kept | detached | destroyed | finished | failed
  std::string error;
  // From the run's row (empty/false when the run is not in this journal).
  std::string run_status;
  bool run_known = false;
  bool run_alive = false;
};

/// Identifies a process across pid reuse and reboots.
struct ProcessId {
  pid_t pid = 0;
  std::uint64_t start_ticks = 0;  // /proc/PID/stat field 22
  std::string boot_id;            // /proc/sys/kernel/random/boot_id
  static ProcessId self();
  /// True when that very process still runs on this boot.
  [[nodiscard]] bool alive() const;
};

struct Run {
  std::string id, recipe, params_hash;
  double started = 0;
  std::optional<double> ended;
  std::string status;  // running | ok | failed | interrupted
  std::string detail;  // the error, or the signal
  ProcessId process;
  /// Still running: status is "running" and its process is alive.
  bool alive = false;
};

class Journal {
 public:
  /// Opens (creating, mode 0600, in a 0700 directory) the journal at `path`.
  /// With `read_only`, a missing file is not created: every query is empty.
  explicit Journal(std::string path = default_path(), bool read_only = false);
  ~Journal();
  Journal(const Journal&) = delete;
  Journal& operator=(const Journal&) = delete;

  static constexpr int kSchemaVersion = 1;
  [[nodiscard]] const std::string& path() const { return path_; }

  void run_started(const std::string& id, const std::string& recipe, const std::string& params_hash,
                   const ProcessId& proc = ProcessId::self());
  void run_ended(const std::string& id, const std::string& status, const std::string& detail);
  /// Newest first; `limit` <= 0 means all.
  std::vector<Run> runs(int limit);
  std::optional<Run> run(const std::string& id);

  /// Records the intent durably (committed, fsync'd) and returns its key.
  std::int64_t intent(const Intent& in);
  void created(std::int64_t key, const std::string& resource_id, const std::string& extra_json);
  /// A created resource the run leaves on purpose (keep=true): not destroyed
  /// at the end, reaped only once expired (or when asked for kept ones).
  void kept(std::int64_t key);
  /// A created resource whose run ended on purpose with its job still going
  /// (a detached run): not destroyed at the end, reaped only once expired.
  /// `info_json` (what `ephrun finish` needs) is stored as `extra.detach`.
  void detached(std::int64_t key, const std::string& info_json);
  /// A detached resource that `ephrun finish` destroyed.
  void finished(std::int64_t key);
  void destroyed(std::int64_t key);
  void failed(std::int64_t key, const std::string& message);
  /// `live_only`: pending, live, kept or detached (not destroyed, finished or failed).
  /// Oldest first.
  std::vector<Resource> resources(bool live_only, const std::optional<std::string>& run_id);
  std::optional<Resource> resource(std::int64_t key);

 private:
  void exec(const char* sql);
  void migrate();
  void update_resource(std::int64_t key, const char* sql, const std::string& text, double t);

  std::string path_;
  sqlite3* db_ = nullptr;
};

/// SHA-256 of `text` as 64 hex digits.
std::string sha256_hex(const std::string& text);

}  // namespace ephrun::journal
