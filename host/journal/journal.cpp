#include "journal/journal.hpp"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sqlite3.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace fs = std::filesystem;
using nlohmann::json;

namespace ephrun::journal {
namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

[[noreturn]] void fail(sqlite3* db, const std::string& what) {
  throw std::runtime_error("journal: " + what + ": " + (db ? sqlite3_errmsg(db) : "no database"));
}

// One prepared statement; binds by position (1-based), steps, reads columns.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) {
    if (sqlite3_prepare_v2(db, sql, -1, &st_, nullptr) != SQLITE_OK) fail(db, "prepare");
  }
  ~Stmt() { sqlite3_finalize(st_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  Stmt& bind(int i, const std::string& s) {
    sqlite3_bind_text(st_, i, s.data(), static_cast<int>(s.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& bind(int i, const char* s) { return bind(i, std::string(s)); }
  Stmt& bind(int i, double d) {
    sqlite3_bind_double(st_, i, d);
    return *this;
  }
  Stmt& bind(int i, std::int64_t v) {
    sqlite3_bind_int64(st_, i, v);
    return *this;
  }
  Stmt& bind(int i, const std::optional<double>& d) {
    if (d)
      sqlite3_bind_double(st_, i, *d);
    else
      sqlite3_bind_null(st_, i);
    return *this;
  }
  /// True while there is a row.
  bool step() {
    int rc = sqlite3_step(st_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    fail(db_, "step");
  }
  std::string text(int c) const {
    const auto* p = sqlite3_column_text(st_, c);
    return p ? std::string(reinterpret_cast<const char*>(p),
                           static_cast<size_t>(sqlite3_column_bytes(st_, c)))
             : std::string();
  }
  double real(int c) const { return sqlite3_column_double(st_, c); }
  std::int64_t integer(int c) const { return sqlite3_column_int64(st_, c); }
  std::optional<double> opt_real(int c) const {
    if (sqlite3_column_type(st_, c) == SQLITE_NULL) return std::nullopt;
    return sqlite3_column_double(st_, c);
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* st_ = nullptr;
};

std::string tags_json(const Tags& t) {
  json j = json::object();
  for (const auto& [k, v] : t) j[k] = v;
  return j.dump();
}

Tags parse_tags(const std::string& s) {
  Tags t;
  auto j = json::parse(s, nullptr, false);
  if (!j.is_object()) return t;
  for (const auto& [k, v] : j.items()) t[k] = v.is_string() ? v.get<std::string>() : v.dump();
  return t;
}

std::string read_small(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::uint64_t start_ticks_of(pid_t pid) {
  std::string stat = read_small("/proc/" + std::to_string(pid) + "/stat");
  // Field 2 (comm) may hold spaces and parentheses: count from the last ')'.
  auto rp = stat.rfind(')');
  if (rp == std::string::npos) return 0;
  std::istringstream rest(stat.substr(rp + 2));
  std::string field;
  for (int i = 3; i <= 22 && rest >> field; ++i) {
    // A zombie (killed, not yet reaped by its parent) is not running.
    if (i == 3 && (field == "Z" || field == "X" || field == "x")) return 0;
    if (i == 22) return std::stoull(field);
  }
  return 0;
}

std::string current_boot_id() {
  std::string b = read_small("/proc/sys/kernel/random/boot_id");
  while (!b.empty() && (b.back() == '\n' || b.back() == ' ')) b.pop_back();
  return b;
}

constexpr const char* kResourceCols =
    "r.key, r.run_id, COALESCE(NULLIF(r.recipe, ''), u.recipe, ''), r.provider, r.kind, "
    "COALESCE(r.resource_id, ''), r.token, r.tags, r.extra, r.intended, r.created, r.destroyed, "
    "r.hourly_price, r.expires_at, r.status, COALESCE(r.error, ''), COALESCE(u.status, ''), "
    "u.id IS NOT NULL, u.pid, u.pid_start, COALESCE(u.boot_id, '')";

Resource read_resource(const Stmt& s) {
  Resource r;
  r.key = s.integer(0);
  r.run_id = s.text(1);
  r.recipe = s.text(2);
  r.provider = s.text(3);
  r.kind = s.text(4);
  r.id = s.text(5);
  r.token = s.text(6);
  r.tags = parse_tags(s.text(7));
  r.extra = s.text(8).empty() ? "{}" : s.text(8);
  r.intended = s.real(9);
  r.created = s.opt_real(10);
  r.destroyed = s.opt_real(11);
  r.hourly_price = s.opt_real(12);
  r.expires_at = s.opt_real(13);
  r.status = s.text(14);
  r.error = s.text(15);
  r.run_status = s.text(16);
  r.run_known = s.integer(17) != 0;
  if (r.run_known && r.run_status == "running") {
    ProcessId p{static_cast<pid_t>(s.integer(18)), static_cast<std::uint64_t>(s.integer(19)),
                s.text(20)};
    r.run_alive = p.alive();
  }
  return r;
}

constexpr const char* kRunCols =
    "id, recipe, params_hash, started, ended, status, COALESCE(detail, ''), pid, pid_start, "
    "COALESCE(boot_id, '')";

Run read_run(const Stmt& s) {
  Run r;
  r.id = s.text(0);
  r.recipe = s.text(1);
  r.params_hash = s.text(2);
  r.started = s.real(3);
  r.ended = s.opt_real(4);
  r.status = s.text(5);
  r.detail = s.text(6);
  r.process = {static_cast<pid_t>(s.integer(7)), static_cast<std::uint64_t>(s.integer(8)),
               s.text(9)};
  r.alive = r.status == "running" && r.process.alive();
  return r;
}

// Milliseconds to wait behind another process's lock: EPHRUN_JOURNAL_TIMEOUT
// (a number of seconds), else 15 s.
int busy_timeout_ms() {
  if (const char* t = std::getenv("EPHRUN_JOURNAL_TIMEOUT"); t && *t) {
    char* end = nullptr;
    double s = std::strtod(t, &end);
    if (end && *end == '\0' && s >= 0 && s < 86400) return static_cast<int>(s * 1000);
    throw std::runtime_error(
        std::string("EPHRUN_JOURNAL_TIMEOUT must be a number of seconds, got '") + t + "'");
  }
  return 15000;
}

// Held while a connection sets WAL mode and the schema up. Two connections
// switching a fresh file to WAL together can get SQLITE_BUSY at once, without
// their busy handler being called (SQLite's deadlock avoidance), so first
// opens from parallel processes take turns on this file lock instead.
class SetupLock {
 public:
  SetupLock(const std::string& db_path, int timeout_ms) {
    std::string p = db_path + ".lock";
    fd_ = ::open(p.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd_ < 0)
      throw std::runtime_error("journal: cannot create " + p + ": " + std::strerror(errno));
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    // flock has no timeout: poll, so a stopped holder cannot hang this run forever.
    while (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      if (errno != EWOULDBLOCK && errno != EINTR) {
        int e = errno;
        ::close(fd_);
        throw std::runtime_error("journal: cannot lock " + p + ": " + std::strerror(e));
      }
      if (std::chrono::steady_clock::now() > deadline) {
        ::close(fd_);
        throw std::runtime_error("journal: " + p +
                                 " is held by another ephrun process that is opening the journal");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  ~SetupLock() { ::close(fd_); }  // closing releases the lock
  SetupLock(const SetupLock&) = delete;
  SetupLock& operator=(const SetupLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace

std::string home_dir() {
  if (const char* h = std::getenv("EPHRUN_HOME"); h && *h) return h;
  const char* home = std::getenv("HOME");
  if (!home || !*home) throw std::runtime_error("neither EPHRUN_HOME nor HOME is set");
  return std::string(home) + "/.local/state/ephrun";
}

std::string default_path() { return home_dir() + "/journal.sqlite"; }

ProcessId ProcessId::self() {
  pid_t pid = getpid();
  return {pid, start_ticks_of(pid), current_boot_id()};
}

bool ProcessId::alive() const {
  if (pid <= 0) return false;
  if (!boot_id.empty() && boot_id != current_boot_id()) return false;
  std::uint64_t ticks = start_ticks_of(pid);
  return ticks != 0 && ticks == start_ticks;
}

std::string sha256_hex(const std::string& text) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (!EVP_Digest(text.data(), text.size(), md, &n, EVP_sha256(), nullptr))
    throw std::runtime_error("sha256 failed");
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < n; ++i) {
    out += hex[md[i] >> 4];
    out += hex[md[i] & 15];
  }
  return out;
}

Journal::Journal(std::string path, bool read_only) : path_(std::move(path)) {
  if (read_only) {
    if (!fs::exists(path_)) return;  // nothing recorded yet: every query is empty
    if (sqlite3_open_v2(path_.c_str(), &db_, SQLITE_OPEN_READONLY | SQLITE_OPEN_FULLMUTEX,
                        nullptr) != SQLITE_OK) {
      std::string msg = db_ ? sqlite3_errmsg(db_) : "cannot open";
      sqlite3_close(db_);
      db_ = nullptr;
      throw std::runtime_error("journal: open " + path_ + ": " + msg);
    }
    sqlite3_busy_timeout(db_, busy_timeout_ms());
    return;
  }
  fs::path dir = fs::path(path_).parent_path();
  if (!dir.empty() && !fs::exists(dir)) {
    fs::create_directories(dir);
    ::chmod(dir.c_str(), 0700);
  }
  const int timeout = busy_timeout_ms();
  SetupLock setup(path_, timeout);
  // Create the file with 0600 ourselves so it is never readable by others.
  // Only when it is new: closing a descriptor of a file drops every POSIX
  // lock this process holds on it, and another connection of this process
  // (the run's, while the recipe opens its own) holds one for as long as it
  // is open in WAL mode; without it a third process's last close deletes the
  // WAL under that connection and its later commits are lost.
  int fd = ::open(path_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd >= 0)
    ::close(fd);
  else if (errno != EEXIST)
    throw std::runtime_error("journal: cannot create " + path_ + ": " + std::strerror(errno));
  if (sqlite3_open_v2(path_.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK) {
    std::string msg = db_ ? sqlite3_errmsg(db_) : "cannot open";
    sqlite3_close(db_);
    db_ = nullptr;
    throw std::runtime_error("journal: open " + path_ + ": " + msg);
  }
  // Parallel ephrun processes wait for each other's short transactions.
  sqlite3_busy_timeout(db_, timeout);
  exec("PRAGMA journal_mode=WAL");
  // FULL: every commit is fsync'd, so an intent survives a crash or power cut.
  exec("PRAGMA synchronous=FULL");
  migrate();
}

Journal::~Journal() {
  if (db_) sqlite3_close(db_);
}

void Journal::exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "error";
    sqlite3_free(err);
    throw std::runtime_error(std::string("journal: ") + msg + " (in: " + sql + ")");
  }
}

void Journal::migrate() {
  exec("BEGIN IMMEDIATE");
  try {
    Stmt v(db_, "PRAGMA user_version");
    v.step();
    auto version = v.integer(0);
    if (version > kSchemaVersion)
      throw std::runtime_error("journal: " + path_ + " has schema version " +
                               std::to_string(version) + ", newer than this ephrun's (" +
                               std::to_string(kSchemaVersion) + "); upgrade ephrun");
    if (version < 1) {
      exec(
          "CREATE TABLE IF NOT EXISTS runs ("
          " id TEXT PRIMARY KEY, recipe TEXT NOT NULL, params_hash TEXT NOT NULL DEFAULT '',"
          " started REAL NOT NULL, ended REAL, status TEXT NOT NULL, detail TEXT,"
          " pid INTEGER, pid_start INTEGER, boot_id TEXT);"
          "CREATE INDEX IF NOT EXISTS runs_started ON runs(started);"
          "CREATE TABLE IF NOT EXISTS resources ("
          " key INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL,"
          " recipe TEXT NOT NULL DEFAULT '', provider TEXT NOT NULL,"
          " kind TEXT NOT NULL, resource_id TEXT, token TEXT NOT NULL DEFAULT '',"
          " tags TEXT NOT NULL DEFAULT '{}', extra TEXT NOT NULL DEFAULT '{}',"
          " intended REAL NOT NULL, created REAL, destroyed REAL, hourly_price REAL,"
          " expires_at REAL, status TEXT NOT NULL, error TEXT);"
          "CREATE INDEX IF NOT EXISTS resources_status ON resources(status);"
          "CREATE INDEX IF NOT EXISTS resources_run ON resources(run_id);"
          "PRAGMA user_version = 1;");
    }
    exec("COMMIT");
  } catch (...) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

void Journal::run_started(const std::string& id, const std::string& recipe,
                          const std::string& params_hash, const ProcessId& proc) {
  if (!db_) throw std::runtime_error("journal: opened read-only");
  // A plain INSERT: a run id already recorded must fail loudly, never
  // silently replace the other run's row.
  Stmt s(db_,
         "INSERT INTO runs (id, recipe, params_hash, started, status, pid, pid_start,"
         " boot_id) VALUES (?, ?, ?, ?, 'running', ?, ?, ?)");
  s.bind(1, id).bind(2, recipe).bind(3, params_hash).bind(4, now());
  s.bind(5, static_cast<std::int64_t>(proc.pid))
      .bind(6, static_cast<std::int64_t>(proc.start_ticks))
      .bind(7, proc.boot_id);
  s.step();
}

void Journal::run_ended(const std::string& id, const std::string& status,
                        const std::string& detail) {
  if (!db_) throw std::runtime_error("journal: opened read-only");
  Stmt s(db_, "UPDATE runs SET ended = ?, status = ?, detail = ? WHERE id = ?");
  s.bind(1, now()).bind(2, status).bind(3, detail).bind(4, id);
  s.step();
}

std::vector<Run> Journal::runs(int limit) {
  std::vector<Run> out;
  if (!db_) return out;
  std::string sql =
      std::string("SELECT ") + kRunCols + " FROM runs ORDER BY started DESC, rowid DESC LIMIT ?";
  Stmt s(db_, sql.c_str());
  s.bind(1, static_cast<std::int64_t>(limit > 0 ? limit : -1));
  while (s.step()) out.push_back(read_run(s));
  return out;
}

std::optional<Run> Journal::run(const std::string& id) {
  if (!db_) return std::nullopt;
  std::string sql = std::string("SELECT ") + kRunCols + " FROM runs WHERE id = ?";
  Stmt s(db_, sql.c_str());
  s.bind(1, id);
  if (!s.step()) return std::nullopt;
  return read_run(s);
}

std::int64_t Journal::intent(const Intent& in) {
  if (!db_) throw std::runtime_error("journal: opened read-only");
  if (in.provider.empty()) throw std::invalid_argument("journal intent: provider is required");
  if (in.run_id.empty()) throw std::invalid_argument("journal intent: run_id is required");
  std::string recipe = in.recipe;
  if (recipe.empty())
    if (auto it = in.tags.find("ephrun-recipe"); it != in.tags.end()) recipe = it->second;
  Stmt s(db_,
         "INSERT INTO resources (run_id, recipe, provider, kind, token, tags, intended,"
         " hourly_price, expires_at, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending')");
  s.bind(1, in.run_id).bind(2, recipe).bind(3, in.provider).bind(4, in.kind).bind(5, in.token);
  s.bind(6, tags_json(in.tags)).bind(7, now()).bind(8, in.hourly_price).bind(9, in.expires_at);
  s.step();
  return sqlite3_last_insert_rowid(db_);
}

void Journal::update_resource(std::int64_t key, const char* sql, const std::string& text,
                              double t) {
  if (!db_) throw std::runtime_error("journal: opened read-only");
  Stmt s(db_, sql);
  s.bind(1, t).bind(2, text).bind(3, key);
  s.step();
  if (sqlite3_changes(db_) == 0)
    throw std::invalid_argument("journal: no resource with key " + std::to_string(key));
}

void Journal::created(std::int64_t key, const std::string& resource_id,
                      const std::string& extra_json) {
  auto j = json::parse(extra_json.empty() ? "{}" : extra_json, nullptr, false);
  if (j.is_discarded()) throw std::invalid_argument("journal created: extra is not JSON");
  Stmt s(db_,
         "UPDATE resources SET created = ?, resource_id = ?, extra = ?,"
         " status = CASE WHEN status = 'pending' THEN 'live' ELSE status END WHERE key = ?");
  s.bind(1, now()).bind(2, resource_id).bind(3, j.dump()).bind(4, key);
  s.step();
  if (sqlite3_changes(db_) == 0)
    throw std::invalid_argument("journal: no resource with key " + std::to_string(key));
}

void Journal::kept(std::int64_t key) {
  update_resource(key,
                  "UPDATE resources SET created = COALESCE(created, ?),"
                  " status = CASE WHEN status IN ('pending', 'live') THEN 'kept' ELSE status END,"
                  " error = COALESCE(NULLIF(?, ''), error) WHERE key = ?",
                  "", now());
}

void Journal::detached(std::int64_t key, const std::string& info_json) {
  if (!db_) throw std::runtime_error("journal: opened read-only");
  auto info = json::parse(info_json.empty() ? "{}" : info_json, nullptr, false);
  if (!info.is_object()) throw std::invalid_argument("journal detached: info is not a JSON object");
  auto row = resource(key);
  if (!row) throw std::invalid_argument("journal: no resource with key " + std::to_string(key));
  auto extra = json::parse(row->extra, nullptr, false);
  if (!extra.is_object()) extra = json::object();
  extra["detach"] = std::move(info);
  Stmt s(db_,
         "UPDATE resources SET created = COALESCE(created, ?), extra = ?,"
         " status = CASE WHEN status IN ('pending', 'live', 'kept') THEN 'detached' ELSE status END"
         " WHERE key = ?");
  s.bind(1, now()).bind(2, extra.dump()).bind(3, key);
  s.step();
}

void Journal::finished(std::int64_t key) {
  update_resource(key,
                  "UPDATE resources SET destroyed = COALESCE(destroyed, ?), status = 'finished',"
                  " error = COALESCE(NULLIF(?, ''), error) WHERE key = ?",
                  "", now());
}

void Journal::destroyed(std::int64_t key) {
  update_resource(key,
                  "UPDATE resources SET destroyed = COALESCE(destroyed, ?), status = 'destroyed',"
                  " error = COALESCE(NULLIF(?, ''), error) WHERE key = ?",
                  "", now());
}

void Journal::failed(std::int64_t key, const std::string& message) {
  update_resource(key,
                  "UPDATE resources SET destroyed = COALESCE(destroyed, ?), status = 'failed',"
                  " error = ? WHERE key = ?",
                  message, now());
}

std::vector<Resource> Journal::resources(bool live_only, const std::optional<std::string>& run_id) {
  std::vector<Resource> out;
  if (!db_) return out;
  std::string sql = std::string("SELECT ") + kResourceCols +
                    " FROM resources r LEFT JOIN runs u ON u.id = r.run_id WHERE 1";
  if (live_only) sql += " AND r.status IN ('pending', 'live', 'kept', 'detached')";
  if (run_id) sql += " AND r.run_id = ?";
  sql += " ORDER BY r.key";
  Stmt s(db_, sql.c_str());
  if (run_id) s.bind(1, *run_id);
  while (s.step()) out.push_back(read_resource(s));
  return out;
}

std::optional<Resource> Journal::resource(std::int64_t key) {
  if (!db_) return std::nullopt;
  std::string sql = std::string("SELECT ") + kResourceCols +
                    " FROM resources r LEFT JOIN runs u ON u.id = r.run_id WHERE r.key = ?";
  Stmt s(db_, sql.c_str());
  s.bind(1, key);
  if (!s.step()) return std::nullopt;
  return read_resource(s);
}

}  // namespace ephrun::journal
