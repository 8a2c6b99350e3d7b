#include "runtime/runtime.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <ostream>
#include <random>
#include <sstream>
#include <thread>

#include "journal/journal.hpp"
#include "lua/bind.hpp"
#include "runtime/embedded.hpp"
#include "runtime/log.hpp"
#include "runtime/secrets.hpp"

namespace fs = std::filesystem;

namespace ephrun {

const EmbeddedFile* find_embedded(std::string_view path) {
  for (const EmbeddedFile* f = kEmbeddedFiles; f->path; ++f)
    if (path == f->path) return f;
  return nullptr;
}

bool has_builtin(const std::string& rel) {
  if (const char* dir = std::getenv("EPHRUN_LUA_DIR"); dir && *dir)
    return fs::is_regular_file(fs::path(dir) / rel);
  return find_embedded(rel) != nullptr;
}

namespace {

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Loads a shipped Lua file: from EPHRUN_LUA_DIR when set (development), else
// from the binary. Chunk names are the file's path so tracebacks point at it.
// Returns 1 with the chunk pushed, 0 with nothing pushed when there is no such
// file, -1 with the syntax error pushed.
int load_builtin(lua_State* L, const std::string& rel) {
  if (const char* dir = std::getenv("EPHRUN_LUA_DIR"); dir && *dir) {
    fs::path p = fs::path(dir) / rel;
    if (!fs::is_regular_file(p)) return 0;
    std::string src = read_file(p);
    std::string chunk = "@" + p.string();
    return luaL_loadbuffer(L, src.data(), src.size(), chunk.c_str()) == LUA_OK ? 1 : -1;
  }
  const EmbeddedFile* f = find_embedded(rel);
  if (!f) return 0;
  std::string chunk = "@" + rel;
  return luaL_loadbuffer(L, f->data, f->size, chunk.c_str()) == LUA_OK ? 1 : -1;
}

std::string builtin_recipe_rel(const std::string& name) {
  return "recipes/" + name + (name.ends_with(".lua") ? "" : ".lua");
}

std::string module_path(std::string name) {
  for (auto& c : name)
    if (c == '.') c = '/';
  return name;
}

// package.searchers[2]: the recipe's directory, then each EPHRUN_PATH entry.
int search_paths(lua_State* L) {
  std::string name = module_path(luaL_checkstring(L, 1));
  Runtime& rt = Runtime::of(L);
  std::vector<std::string> dirs;
  if (!rt.recipe_dir.empty()) dirs.push_back(rt.recipe_dir);
  if (const char* ep = std::getenv("EPHRUN_PATH")) {
    std::stringstream ss(ep);
    for (std::string d; std::getline(ss, d, ':');)
      if (!d.empty()) dirs.push_back(d);
  }
  std::string tried;
  for (const auto& d : dirs) {
    for (const auto& cand : {fs::path(d) / (name + ".lua"), fs::path(d) / name / "init.lua"}) {
      if (fs::is_regular_file(cand)) {
        if (luaL_loadfilex(L, cand.c_str(), "t") != LUA_OK) return lua_error(L);
        lua_pushstring(L, cand.c_str());
        return 2;
      }
      tried += "\n\tno file '" + cand.string() + "'";
    }
  }
  lua_pushstring(L, tried.c_str());
  return 1;
}

// package.searchers[3]: files shipped with ephrun.
int search_builtin(lua_State* L) {
  std::string name = module_path(luaL_checkstring(L, 1));
  for (const auto& rel :
       {"stdlib/" + name + ".lua", "stdlib/" + name + "/init.lua", name + ".lua"}) {
    int st = load_builtin(L, rel);
    if (st < 0) return lua_error(L);
    if (st > 0) {
      lua_pushstring(L, rel.c_str());
      return 2;
    }
  }
  lua_pushfstring(L, "\n\tno built-in module '%s'", name.c_str());
  return 1;
}

std::string make_run_id() {
  auto now = std::chrono::system_clock::now();
  std::time_t t = std::chrono::system_clock::to_time_t(now);
  std::tm tm{};
  gmtime_r(&t, &tm);
  std::random_device rd;
  // 32 random bits: with 16, runs started in the same second collided about
  // once in 250 batches of 16.
  return fmt::format("{:04}{:02}{:02}-{:02}{:02}{:02}-{:08x}", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     static_cast<std::uint32_t>(rd()));
}

std::atomic<bool> g_output_closed{false};
std::atomic<bool> g_stop_on_closed_output{false};

// Async-signal-safe: atomics and kill(). A run stops through the scheduler's
// own signal path (it waits for SIGHUP, the "terminal went away" signal,
// which this is a case of); run() then reports it as the closed pipe it was.
// Raised once: the cleanup's own writes to the closed pipe only fail.
void on_sigpipe(int /*sig*/) {
  if (!g_output_closed.exchange(true) && g_stop_on_closed_output.load()) kill(getpid(), SIGHUP);
}

// Notices the reader of stdout or stderr going away (a pager quit while the
// build is silent) without waiting for the next write: poll() reports POLLERR
// on a pipe's write end once it has no reader. Runs while the run does; must
// be started after the scheduler blocked the signals, so that the SIGHUP it
// may raise goes to the scheduler's signal thread and not to this one.
class OutputWatch {
 public:
  OutputWatch() {
    for (int fd : {STDOUT_FILENO, STDERR_FILENO}) {
      struct stat st {};
      if (fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode)) fds_.push_back({fd, 0, 0});
    }
    if (fds_.empty() || pipe2(wake_, O_CLOEXEC) != 0) return;
    fds_.push_back({wake_[0], POLLIN, 0});
    thread_ = std::thread([this] { watch(); });
  }
  ~OutputWatch() {
    if (!thread_.joinable()) return;
    (void)!::write(wake_[1], "x", 1);
    thread_.join();
    ::close(wake_[0]);
    ::close(wake_[1]);
  }
  OutputWatch(const OutputWatch&) = delete;
  OutputWatch& operator=(const OutputWatch&) = delete;

 private:
  void watch() {
    for (;;) {
      if (poll(fds_.data(), fds_.size(), -1) < 0) {
        if (errno == EINTR) continue;
        return;
      }
      if (fds_.back().revents) return;  // the run is over
      for (size_t i = 0; i + 1 < fds_.size(); ++i)
        if (fds_[i].revents & (POLLERR | POLLHUP)) {
          on_sigpipe(SIGPIPE);
          return;
        }
    }
  }

  std::vector<pollfd> fds_;
  int wake_[2] = {-1, -1};
  std::thread thread_;
};

// The signal that stopped the run, as a person reads it.
std::string signal_text(int sig) {
  if (sig == SIGHUP && g_output_closed.load()) return "SIGPIPE";
  return std::string("SIG") + sigabbrev_np(sig);
}

// A recipe file ends with `return ephrun.recipe{...}`: a tail call, which
// drops the file's frame when the callee is a Lua function, so an error
// raised about the table could not name the file's line. A C frame in
// between keeps it: ephrun.recipe is wrapped by keep_frame(fn).
int call_in_c_frame(lua_State* L) {
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  return lua_gettop(L);
}

int l_keep_frame(lua_State* L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  lua_pushcclosure(L, call_in_c_frame, 1);
  return 1;
}

int open_keep_frame(lua_State* L) {
  lua_pushcfunction(L, l_keep_frame);
  return 1;
}

// ephrun._packs_host: what stdlib/ephrun/packs.lua needs from the host.
int l_packs_version(lua_State* L) {
  lua_pushliteral(L, EPHRUN_VERSION);
  return 1;
}

// register(root, origin): code under root is that pack's, for the plan.
int l_packs_register(lua_State* L) {
  std::string root = luaL_checkstring(L, 1), origin = luaL_checkstring(L, 2);
  auto& roots = Runtime::of(L).pack_roots;
  for (const auto& r : roots)
    if (r.root == root) return 0;
  roots.push_back({root, origin});
  return 0;
}

int open_packs_host(lua_State* L) {
  const luaL_Reg fns[] = {
      {"version", l_packs_version}, {"register", l_packs_register}, {nullptr, nullptr}};
  luaL_newlib(L, fns);
  return 1;
}

bool is_pack_spec(const std::string& s) {
  auto slash = s.find('/');
  if (slash == std::string::npos || slash == 0 || slash + 1 == s.size()) return false;
  if (s.find('/', slash + 1) != std::string::npos || s.ends_with(".lua")) return false;
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '/'))
      return false;
  return s[0] != '-' && s[slash + 1] != '-';
}

}  // namespace

void install_sigpipe_handling() {
  // A handler, not SIG_IGN: an ignored SIGPIPE would be inherited by every
  // child (ssh, tar, shells), where `yes | head` must still end.
  struct sigaction sa {};
  sa.sa_handler = on_sigpipe;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGPIPE, &sa, nullptr);
}

bool output_closed() { return g_output_closed.load(); }

Runtime::Runtime(Options opts) : opts_(std::move(opts)), run_id_(make_run_id()) { open_state(); }

Runtime::~Runtime() {
  sched_.reset();
  if (L_) lua_close(L_);
}

Runtime* Runtime::maybe(lua_State* L) { return *static_cast<Runtime**>(lua_getextraspace(L)); }

Runtime& Runtime::of(lua_State* L) {
  Runtime* rt = maybe(L);
  if (!rt) throw std::logic_error("lua state has no ephrun runtime");
  return *rt;
}

void Runtime::open_state() {
  L_ = luaL_newstate();
  if (!L_) throw std::runtime_error("cannot create Lua state");
  *static_cast<Runtime**>(lua_getextraspace(L_)) = this;
  sched_ = std::make_unique<Scheduler>(L_);
  luaL_openlibs(L_);
  lua::preload_all(L_);
  // require: preload (native modules), recipe dir + EPHRUN_PATH, built-ins.
  lua_getglobal(L_, "package");
  lua_createtable(L_, 3, 0);
  lua_getfield(L_, -2, "searchers");
  lua_rawgeti(L_, -1, 1);
  lua_rawseti(L_, -3, 1);
  lua_pop(L_, 1);
  lua_pushcfunction(L_, search_paths);
  lua_rawseti(L_, -2, 2);
  lua_pushcfunction(L_, search_builtin);
  lua_rawseti(L_, -2, 3);
  lua_setfield(L_, -2, "searchers");
  lua_pushliteral(L_, "");
  lua_setfield(L_, -2, "cpath");
  lua_getfield(L_, -1, "preload");
  lua_pushcfunction(L_, open_keep_frame);
  lua_setfield(L_, -2, "ephrun._keep_frame");
  lua_pushcfunction(L_, open_packs_host);
  lua_setfield(L_, -2, "ephrun._packs_host");
  lua_pop(L_, 2);
}

int Runtime::push_cleanup(lua_State* L, int fn_idx, std::string what, std::string hint) {
  lua_pushvalue(L, fn_idx);
  int ref = luaL_ref(L, LUA_REGISTRYINDEX);
  int id = next_cleanup_++;
  cleanups_.push_back({id, std::move(what), std::move(hint), ref, Cleanup::State::pending, {}});
  return id;
}

void Runtime::dismiss_cleanup(int id) {
  for (auto& c : cleanups_)
    if (c.id == id && c.state == Cleanup::State::pending) c.state = Cleanup::State::dismissed;
}

bool Runtime::take_cleanup(lua_State* L, int id) {
  for (auto& c : cleanups_) {
    if (c.id != id || c.state != Cleanup::State::pending) continue;
    c.state = Cleanup::State::running;
    lua_rawgeti(L, LUA_REGISTRYINDEX, c.fn_ref);
    return true;
  }
  return false;
}

void Runtime::finish_cleanup(int id, bool ok, const std::string& error) {
  for (auto& c : cleanups_) {
    if (c.id != id) continue;
    c.state = ok ? Cleanup::State::done : Cleanup::State::failed;
    c.error = error;
    if (!ok) {
      ++scope_cleanup_failures_;
      spdlog::error("cleanup '{}' failed: {}", c.what, error);
      if (!c.hint.empty()) spdlog::error("  to remove it by hand: {}", c.hint);
    }
  }
}

std::vector<std::string> Runtime::pending_cleanups() const {
  std::vector<std::string> out;
  for (auto it = cleanups_.rbegin(); it != cleanups_.rend(); ++it) {
    if (it->state == Cleanup::State::running) out.push_back(it->what + " (running)");
    if (it->state == Cleanup::State::pending) out.push_back(it->what);
  }
  return out;
}

bool Runtime::run_cleanup(lua_State* L, int id) {
  Cleanup* c = nullptr;
  for (auto& e : cleanups_)
    if (e.id == id) c = &e;
  if (!c || c->state != Cleanup::State::pending) return true;
  c->state = Cleanup::State::running;
  std::string what = c->what;
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->fn_ref);
  Task* t = sched_->spawn(L, 0, "cleanup: " + what, nullptr);
  sched_->run_until(t);
  // Look the entry up again: running Lua may have pushed more cleanups.
  for (auto& e : cleanups_) {
    if (e.id != id) continue;
    e.state = t->ok ? Cleanup::State::done : Cleanup::State::failed;
    e.error = t->error;
    if (!t->ok) {
      spdlog::error("cleanup '{}' failed: {}", what, t->error);
      if (!e.hint.empty()) spdlog::error("  to remove it by hand: {}", e.hint);
    } else {
      spdlog::debug("cleanup '{}' done", what);
    }
  }
  return t->ok;
}

// LIFO; a failing cleanup is reported and the others still run.
int Runtime::run_cleanups() {
  int failed = 0;
  for (;;) {
    int next = 0;
    for (auto it = cleanups_.rbegin(); it != cleanups_.rend(); ++it)
      if (it->state == Cleanup::State::pending) {
        next = it->id;
        break;
      }
    if (!next) break;
    if (!run_cleanup(L_, next)) ++failed;
  }
  return failed;
}

void Runtime::print_still_cleaning(int sig) {
  std::string msg =
      fmt::format("received {} again; still cleaning up, please wait:", signal_text(sig));
  auto pending = pending_cleanups();
  for (const auto& p : pending) msg += "\n  - " + p;
  for (const auto& j : sched_->in_flight()) msg += "\n  … " + j;
  if (pending.empty()) msg += "\n  (finishing)";
  report(msg);
}

// Resolves RECIPE and pushes its chunk: "ephrun:NAME" is a built-in command
// (ls, reap, history), a recipe shipped in stdlib/ephrun/cmd/; then a file;
// then a built-in recipe. Returns the exit code on failure, -1 on success.
// A run that ends before its recipe runs: the message on stderr, and under
// --json a JSON answer too, so a script reading stdout learns why.
int Runtime::load_failed(const std::string& message, int code) {
  std::string msg = redact(message);
  report("ephrun: " + msg);
  if (opts_.json) {
    nlohmann::json j = {{"ok", false}, {"error", msg}, {"phase", phase}};
    std::string s = j.dump(2) + "\n";
    fwrite(s.data(), 1, s.size(), stdout);
    fflush(stdout);
  }
  return code;
}

std::string Runtime::origin_of_caller() const {
  if (pack_roots.empty()) return "";
  Task* t = sched_ ? sched_->current() : nullptr;
  lua_State* co = t && t->co ? t->co : L_;
  lua_Debug ar;
  for (int level = 0; lua_getstack(co, level, &ar); ++level) {
    if (!lua_getinfo(co, "S", &ar) || ar.source[0] != '@') continue;
    std::string_view src(ar.source + 1);
    for (const auto& r : pack_roots)
      if (src.starts_with(r.root) && src.size() > r.root.size() && src[r.root.size()] == '/')
        return r.origin;
  }
  return "";
}

// `ephrun PACK/RECIPE`: stdlib/ephrun/packs.lua finds the locked pack,
// verifies its checkout and hands back the recipe's verified source.
int Runtime::load_pack_recipe(const std::string& spec, std::string& path) {
  lua_State* L = L_;
  int top = lua_gettop(L);
  auto text = [L](int i) {
    const char* s = lua_tostring(L, i);
    return std::string(s ? s : "?");
  };
  lua_getglobal(L, "require");
  lua_pushliteral(L, "ephrun.packs");
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    std::string e = text(-1);
    lua_settop(L, top);
    return load_failed("internal error: " + e, kFailed);
  }
  lua_getfield(L, -1, "recipe_file");
  lua_pushstring(L, spec.c_str());
  if (lua_pcall(L, 1, 4, 0) != LUA_OK) {
    std::string e = text(-1);
    lua_settop(L, top);
    return load_failed(fmt::format("error in phase 'load': {}", e), kFailed);
  }
  if (lua_type(L, -4) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING) {
    std::string e = text(-3);
    lua_settop(L, top);
    return load_failed(e, kUsage);
  }
  path = text(-4);
  recipe_dir = text(-3);
  recipe_origin_ = text(-2);
  size_t n = 0;
  const char* src = lua_tolstring(L, -1, &n);
  std::string chunk = "@" + path;
  bool ok = luaL_loadbufferx(L, src, n, chunk.c_str(), "t") == LUA_OK;
  lua_replace(L, top + 1);
  lua_settop(L, top + 1);
  if (!ok) return load_failed(fmt::format("error in phase 'load': {}", text(-1)), kFailed);
  return -1;
}

int Runtime::load_recipe(const std::string& recipe, std::string& path, bool& command) {
  lua_State* L = L_;
  if (!command && is_pack_spec(recipe) && !fs::is_regular_file(recipe))
    return load_pack_recipe(recipe, path);
  std::string cmd_rel = "stdlib/ephrun/cmd/" + (command ? recipe.substr(7) : recipe) + ".lua";
  if (command) {
    int st = load_builtin(L, cmd_rel);
    if (st <= 0) {
      return load_failed(st == 0 ? fmt::format("no command '{}'", recipe.substr(7))
                                 : fmt::format("error: {}", lua_tostring(L, -1)),
                         kFailed);
    }
    path = cmd_rel;
    return -1;
  }
  // A bare name that is a built-in, with a file of that name here that is not
  // Lua (a shell's `history`, notes called `deploy-fast`): the built-in was
  // meant. A Lua file of that name still wins; `./NAME` always means the file.
  bool bare = recipe.find('/') == std::string::npos && recipe != "common";
  bool is_cmd = bare && has_builtin(cmd_rel);
  bool is_builtin =
      is_cmd || (bare && !recipe.ends_with(".lua") && has_builtin(builtin_recipe_rel(recipe)));
  if (fs::is_regular_file(recipe)) {
    std::error_code ec;
    bool compiled = luaL_loadfilex(L, recipe.c_str(), "t") == LUA_OK;
    if (!is_builtin || (compiled && fs::file_size(recipe, ec) > 0)) {
      if (!compiled) {
        return load_failed(fmt::format("error in phase 'load': {}", lua_tostring(L, -1)), kFailed);
      }
      path = recipe;
      recipe_dir = fs::absolute(recipe).parent_path().string();
      return -1;
    }
    lua_pop(L, 1);  // the chunk of an empty file, or the syntax error
    report(fmt::format(
        "ephrun: note: ./{0} is not a Lua file, so `ephrun {0}` runs the built-in {1} '{0}' "
        "(`ephrun ./{0}` runs the file)",
        recipe, is_cmd ? "command" : "recipe"));
  }
  if (is_cmd) {
    command = true;
    return load_recipe("ephrun:" + recipe, path, command);
  }
  std::string rel = builtin_recipe_rel(recipe);
  int st = load_builtin(L, rel);
  if (st == 0)
    return load_failed(fmt::format("no recipe '{}': not a file, and not a built-in recipe (see "
                                   "`ephrun --list`)",
                                   recipe),
                       kUsage);
  if (st < 0) {
    return load_failed(fmt::format("error in phase 'load': {}", lua_tostring(L, -1)), kFailed);
  }
  path = rel;
  return -1;
}

// Runs the recipe file and binds its parameters as a task, so SIGINT stops a
// recipe that loops or blocks at load time like it stops the run. Leaves the
// run function on the stack and returns -1, or returns the exit code.
int Runtime::prepare(const std::string& recipe, const std::string& path,
                     const std::vector<std::string>& args, std::string& label,
                     std::string& bound_params) {
  lua_State* L = L_;
  int chunk = lua_gettop(L);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "ephrun._main");
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    report(fmt::format("ephrun: internal error: {}", lua_tostring(L, -1)));
    return kFailed;
  }
  lua_getfield(L, -1, "prepare");
  lua_remove(L, -2);
  lua_pushvalue(L, chunk);
  lua_remove(L, chunk);
  lua_pushstring(L, path.c_str());
  lua_pushstring(L, recipe.c_str());
  lua_createtable(L, static_cast<int>(args.size()), 0);
  for (size_t i = 0; i < args.size(); ++i) {
    lua_pushstring(L, args[i].c_str());
    lua_rawseti(L, -2, static_cast<lua_Integer>(i + 1));
  }
  lua_pushboolean(L, opts_.help);
  // Named like the run's root task: its log lines carry no task prefix either.
  Task* t = sched_->spawn(L, 5, "main", nullptr);
  // An ended task's results stay on its coroutine, which the scheduler no
  // longer references: anchor it here to read them.
  lua_State* co = t->co;
  lua_pushthread(co);
  lua_xmove(co, L, 1);
  sched_->run_until(t);
  int sig = sched_->signal_received();
  if (exit_code_) {  // os.exit while loading: the cleanups pushed so far run, then its code
    sched_->cancel_on_signal = false;
    run_cleanups();
    return *exit_code_;
  }
  std::string what, error, traceback = t->traceback;
  if (t->ok) {
    int n = lua_gettop(co) - 1;  // (true, results...)
    lua_createtable(L, n, 0);
    for (int i = 1; i <= n; ++i) {
      lua_pushvalue(co, i + 1);
      lua_xmove(co, L, 1);
      lua_rawseti(L, -2, i);
    }
    lua_rawgeti(L, -1, 1);
    what = lua_tostring(L, -1) ? lua_tostring(L, -1) : "";
    lua_pop(L, 1);
    if (what == "run") {
      lua_rawgeti(L, -1, 3);
      label = lua_tostring(L, -1) ? lua_tostring(L, -1) : recipe;
      lua_rawgeti(L, -2, 4);
      bound_params = lua_tostring(L, -1) ? lua_tostring(L, -1) : "";
      lua_pop(L, 2);
      lua_rawgeti(L, -1, 2);
      lua_remove(L, -2);
      if (sig == 0) return -1;
    } else if (what == "exit") {
      lua_rawgeti(L, -1, 2);
      int code = static_cast<int>(lua_tointeger(L, -1));
      lua_pop(L, 2);
      if (sig == 0) return code;
    } else {
      lua_rawgeti(L, -1, 2);
      lua_rawgeti(L, -2, 3);
      error = lua_tostring(L, -2) ? lua_tostring(L, -2) : "the recipe failed to load";
      if (lua_tostring(L, -1)) traceback = lua_tostring(L, -1);
      lua_pop(L, 3);
    }
  } else {
    error = t->error;
  }
  // Cleanups a recipe pushed at load time still run.
  sched_->cancel_on_signal = false;
  run_cleanups();
  if (sig) {
    return load_failed(fmt::format("interrupted by {} in phase '{}'", signal_text(sig), phase),
                       sig == SIGHUP && g_output_closed ? kOutputClosed : 128 + sig);
  }
  int code = load_failed(fmt::format("error in phase '{}': {}", phase, error), kFailed);
  if (opts_.verbosity > 0 && !traceback.empty()) report(traceback);
  return code;
}

namespace {

struct ListRow {
  std::string name, summary, from;
};

// The recipes of the locked packs, from stdlib/ephrun/packs.lua's
// list_recipes; a pack it cannot list is one row saying why.
std::vector<ListRow> pack_rows(lua_State* L) {
  int top = lua_gettop(L);
  auto field = [L](const char* k) {
    lua_getfield(L, -1, k);
    std::string v = lua_tostring(L, -1) ? lua_tostring(L, -1) : "";
    lua_pop(L, 1);
    return v;
  };
  std::vector<ListRow> rows;
  lua_getglobal(L, "require");
  lua_pushliteral(L, "ephrun.packs");
  if (lua_pcall(L, 1, 1, 0) == LUA_OK) {
    lua_getfield(L, -1, "list_recipes");
    lua_remove(L, -2);
  }
  if (lua_pcall(L, 0, 1, 0) != LUA_OK || !lua_istable(L, -1)) {
    const char* why = lua_tostring(L, -1);
    rows.push_back(
        {"ephrun.lock", fmt::format("(cannot list the packs: {})", why ? why : "?"), ""});
    lua_settop(L, top);
    return rows;
  }
  for (lua_Integer i = 1; lua_rawgeti(L, -1, i) == LUA_TTABLE; ++i) {
    std::string error = field("error");
    rows.push_back({field("name"),
                    error.empty() ? field("summary") : "(cannot be listed: " + error + ")",
                    field("origin")});
    lua_pop(L, 1);
  }
  lua_settop(L, top);
  return rows;
}

}  // namespace

// `ephrun --list`: each built-in with its summary, read by running the
// file's top level (which only builds the table), never its `run`.
int Runtime::list(std::ostream& out) {
  lua_State* L = L_;
  // A top level that calls os.exit is a recipe that cannot be described, not
  // the end of the listing.
  install_os_exit();
  using Row = ListRow;
  std::vector<Row> recipes, commands;
  const char* dir = std::getenv("EPHRUN_LUA_DIR");
  for (const EmbeddedFile* f = kEmbeddedFiles; f->path; ++f) {
    std::string p = f->path;
    bool is_recipe = p.starts_with("recipes/");
    bool is_command = p.starts_with("stdlib/ephrun/cmd/") && p != "stdlib/ephrun/cmd/common.lua";
    if ((!is_recipe && !is_command) || !p.ends_with(".lua")) continue;
    Row row{fs::path(p).stem().string(), "",
            dir && *dir ? (fs::path(dir) / p).string() : "built-in"};
    int top = lua_gettop(L);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "ephrun._main");
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
      report(fmt::format("ephrun: internal error: {}", lua_tostring(L, -1)));
      return kFailed;
    }
    lua_getfield(L, -1, "describe");
    bool ok = load_builtin(L, p) > 0;
    if (ok) {
      lua_pushstring(L, p.c_str());
      ok = lua_pcall(L, 2, 2, 0) == LUA_OK && !lua_isnil(L, -2);
    }
    if (!ok) {
      const char* why = lua_tostring(L, -1);
      row.summary = fmt::format("(cannot be loaded: {})", why ? why : "?");
    } else {
      row.summary = lua_tostring(L, -1) ? lua_tostring(L, -1) : "";
    }
    lua_settop(L, top);
    (is_recipe ? recipes : commands).push_back(std::move(row));
  }
  auto print = [&](const char* title, const std::vector<Row>& rows) {
    size_t w = 0;
    for (const auto& r : rows) w = std::max(w, r.name.size());
    out << title << "\n";
    for (const auto& r : rows) {
      std::string line = fmt::format("  {:<{}}  {}", r.name, w, r.summary);
      if (!r.from.empty() && r.from != "built-in") line += "  (" + r.from + ")";
      out << line << "\n";
    }
  };
  print("Built-in recipes (`ephrun NAME --help` lists the parameters):", recipes);
  if (std::vector<Row> packs = pack_rows(L); !packs.empty())
    print("Pack recipes (from ephrun.lock; `ephrun PACK/NAME` runs one):", packs);
  print("Commands:", commands);
  out << "A recipe file is run by its path: `ephrun ./my-recipe.lua`.\n";
  return kOk;
}

int Runtime::run(const std::string& recipe, const std::vector<std::string>& args) {
  lua_State* L = L_;
  sched_->install_signal_handling();
  g_stop_on_closed_output = true;
  OutputWatch output_watch;
  install_os_exit();
  sched_->on_first_signal = [this](int sig) {
    report(
        fmt::format("ephrun: received {}{} during phase '{}'; stopping and cleaning up "
                    "(press Ctrl-C again to see what is left)",
                    signal_text(sig), output_closed() ? " (the output was closed)" : "", phase));
  };
  sched_->on_repeat_signal = [this](int sig) { print_still_cleaning(sig); };

  int top = lua_gettop(L);
  bool command = recipe.starts_with("ephrun:");
  std::string path, label = recipe, bound_params;
  phase = "load";
  if (int code = load_recipe(recipe, path, command); code >= 0) return code;
  std::string invoked = recipe.starts_with("ephrun:") ? recipe.substr(7) : recipe;
  if (int code = prepare(invoked, path, args, label, bound_params); code >= 0) {
    lua_settop(L, top);
    return code;
  }
  // `history` and the plan's title say which pack and commit the recipe came from.
  if (!recipe_origin_.empty()) label += " (" + recipe_origin_ + ")";

  // Dry runs and the built-in commands are not journalled.
  std::unique_ptr<journal::Journal> jrn;
  if (!opts_.dry_run && !command) {
    jrn = start_journal(label, bound_params);
    if (!jrn) {
      lua_settop(L, top);
      return kFailed;
    }
  }
  // --json on a real run: stdout carries only the run's JSON document, so
  // what the recipe and its children print goes to stderr meanwhile.
  const bool json_run = opts_.json && !opts_.dry_run && !command;
  int json_out = -1;
  if (json_run) {
    std::fflush(stdout);
    json_out = fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 3);
    if (json_out >= 0) dup2(STDERR_FILENO, STDOUT_FILENO);
  }
  Task* root = nullptr;
  Ending e = run_body(label, jrn.get(), root);
  std::string measured = (!opts_.dry_run && !command) ? finish_run() : "[]";

  if (json_run) {
    nlohmann::json j = {{"recipe", label},
                        {"run_id", run_id_},
                        {"ok", e.code == kOk},
                        {"status", e.status},
                        {"exit_code", e.code}};
    if (!root->ok) j["error"] = redact(root->error);
    j["measurements"] = nlohmann::json::parse(measured, nullptr, false);
    if (j["measurements"].is_discarded()) j["measurements"] = nlohmann::json::array();
    std::fflush(stdout);
    if (json_out >= 0) {
      dup2(json_out, STDOUT_FILENO);
      ::close(json_out);
    }
    std::string s = j.dump(2) + "\n";
    fwrite(s.data(), 1, s.size(), stdout);
    fflush(stdout);
  }
  if (opts_.dry_run) {
    if (opts_.json) {
      auto j = plan_.render_json(label);
      j["ok"] = root->ok;
      if (!root->ok) j["error"] = redact(root->error);
      std::string s = j.dump(2) + "\n";
      fwrite(s.data(), 1, s.size(), stdout);
    } else {
      std::string s = plan_.render_text(label);
      fwrite(s.data(), 1, s.size(), stdout);
    }
    fflush(stdout);
  }
  lua_settop(L, top);
  return e.code;
}

// After a real run's cleanups: ephrun._main.finish_run logs the run summary
// (the figures of every measured command) and returns them as JSON text.
std::string Runtime::finish_run() {
  lua_State* L = L_;
  int top = lua_gettop(L);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "ephrun._main");
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    spdlog::warn("run summary: {}", lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
    lua_settop(L, top);
    return "[]";
  }
  lua_getfield(L, -1, "finish_run");
  lua_remove(L, -2);
  Task* t = sched_->spawn(L, 0, "main", nullptr);
  lua_State* co = t->co;
  lua_pushthread(co);  // an ended task's results stay on its coroutine: keep it
  lua_xmove(co, L, 1);
  sched_->run_until(t);
  std::string out = "[]";
  if (!t->ok)
    spdlog::warn("run summary: {}", redact(t->error));
  else if (lua_gettop(co) >= 2 && lua_isstring(co, 2))
    out = lua_tostring(co, 2);
  lua_settop(L, top);
  return out;
}

// No journal, no resource: a run that cannot record itself stops before its
// body can create anything billable. Records the run with this process's
// identity, so `ephrun reap` can tell a run killed by SIGKILL from one still
// going. Returns null (having said why) when it cannot.
std::unique_ptr<journal::Journal> Runtime::start_journal(const std::string& label,
                                                         const std::string& bound_params) {
  try {
    auto jrn = std::make_unique<journal::Journal>();
    jrn->run_started(run_id_, label, journal::sha256_hex(bound_params).substr(0, 16));
    return jrn;
  } catch (const std::exception& e) {
    std::string where;
    try {
      where = journal::default_path();
    } catch (const std::exception&) {
      where = "the journal";
    }
    report(fmt::format(
        "ephrun: cannot record this run in the journal ({}): {}\n"
        "Nothing was started or created. If another ephrun holds the journal, retry when it "
        "is done (EPHRUN_JOURNAL_TIMEOUT=SECONDS waits longer); if the file is damaged, move "
        "it aside (`ephrun reap providers=...` still finds instances by their tags).",
        where, e.what()));
    return nullptr;
  }
}

// The recipe's body as the root task (left on the stack by prepare), then
// every cleanup, however the body ended; records the end in the journal.
Runtime::Ending Runtime::run_body(const std::string& label, journal::Journal* jrn, Task*& root) {
  phase = "run";
  spdlog::debug("run {} of {}", run_id_, label);
  root = sched_->spawn(L_, 0, "main", nullptr);
  sched_->run_until(root);
  sched_->cancel_all("cancelled: the run has finished");
  sched_->drain();

  std::string failed_phase = phase;
  sched_->cancel_on_signal = false;
  phase = "cleanup";
  int cleanup_failures = run_cleanups() + scope_cleanup_failures_;
  sched_->drain();

  Ending e = ending(*root, failed_phase, cleanup_failures);
  if (jrn) {
    try {
      jrn->run_ended(run_id_, e.status, e.detail);
    } catch (const std::exception& ex) {
      spdlog::warn("{}", ex.what());
    }
  }
  return e;
}

// How the run ended, in order of precedence: a signal (or the closed output
// pipe), os.exit(n), an error, a failed cleanup. Reports it on stderr.
Runtime::Ending Runtime::ending(const Task& root, const std::string& failed_phase,
                                int cleanup_failures) const {
  Ending e;
  const int sig = sched_->signal_received();
  if (!root.ok && exit_code_) {
    if (*exit_code_ != 0 || opts_.verbosity > 0)
      report(fmt::format("ephrun: the recipe called os.exit({}) in phase '{}'; its cleanups ran",
                         *exit_code_, exit_phase_));
  } else if (!root.ok && (sig == 0 || opts_.verbosity > 0)) {
    report(fmt::format("ephrun: error in phase '{}': {}", failed_phase, root.error));
    if (opts_.verbosity > 0 && !root.traceback.empty()) report(root.traceback);
  } else if (!root.ok) {
    report(fmt::format("ephrun: interrupted by {} in phase '{}'", signal_text(sig), failed_phase));
  }
  if (cleanup_failures)
    report(
        fmt::format("ephrun: {} cleanup step{} failed; see the messages above for what is left "
                    "and how to remove it",
                    cleanup_failures, cleanup_failures == 1 ? "" : "s"));

  if (sig) {
    e.code = sig == SIGHUP && g_output_closed ? kOutputClosed : 128 + sig;
    e.status = "interrupted";
    e.detail = fmt::format("{} in phase '{}'", signal_text(sig), failed_phase);
  } else if (!root.ok && exit_code_) {
    e.code = *exit_code_ == 0 && cleanup_failures ? kFailed : *exit_code_;
    e.status = e.code == 0 ? "ok" : "failed";
    e.detail = fmt::format("os.exit({}) in phase '{}'", *exit_code_, exit_phase_);
    if (cleanup_failures) e.detail += fmt::format("; {} cleanup step(s) failed", cleanup_failures);
  } else if (!root.ok) {
    e.code = kFailed;
    e.status = "failed";
    e.detail = redact(fmt::format("phase '{}': {}", failed_phase, root.error));
  } else if (cleanup_failures) {
    e.code = kFailed;
    e.status = "failed";
    e.detail = fmt::format("{} cleanup step(s) failed", cleanup_failures);
  }
  return e;
}

// os.exit(n) from a recipe: stops the run like a signal (every task is
// cancelled, the cleanups run), then ephrun exits n. Lua's own os.exit would
// end the process on the spot and leave every resource behind.
int Runtime::request_exit(lua_State* L, int code) {
  if (!exit_code_) {
    exit_code_ = code;
    exit_phase_ = phase;
  }
  std::string why = fmt::format("os.exit({}) called", *exit_code_);
  if (phase != "cleanup") {
    sched_->cancel_all(why);
    // In a task the cancel itself raises at the caller's next instruction:
    // raising here too would make the cancel fire again inside the first
    // `<close>` handler the error runs, and skip it.
    Task* t = sched_->current();
    if (t && t->co == L) return 0;
  }
  lua_pushlstring(L, why.data(), why.size());
  return lua_error(L);
}

namespace {

int l_os_exit(lua_State* L) {
  int code = EXIT_SUCCESS;
  if (lua_isboolean(L, 1))
    code = lua_toboolean(L, 1) ? EXIT_SUCCESS : EXIT_FAILURE;
  else
    code = static_cast<int>(luaL_optinteger(L, 1, EXIT_SUCCESS));
  return Runtime::of(L).request_exit(L, code);
}

}  // namespace

void Runtime::install_os_exit() {
  lua_getglobal(L_, "os");
  lua_pushcfunction(L_, l_os_exit);
  lua_setfield(L_, -2, "exit");
  lua_pop(L_, 1);
}

}  // namespace ephrun
