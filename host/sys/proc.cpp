#include "sys/proc.hpp"

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <set>

#include "runtime/secrets.hpp"

extern char** environ;

namespace ephrun::sys {

namespace {

using Clock = std::chrono::steady_clock;

std::mutex& registry_mu() {
  static std::mutex mu;
  return mu;
}

void at_exit_terminate() { terminate_all_children(); }

std::set<Process*>& registry() {
  static std::set<Process*> r;
  // Registered after `r` exists, so it runs before `r` is destroyed.
  static const bool hooked = (std::atexit(at_exit_terminate), true);
  (void)hooked;
  return r;
}

Clock::time_point deadline_after(std::chrono::nanoseconds d) {
  auto now = Clock::now();
  if (d > std::chrono::hours(24 * 365)) return Clock::time_point::max();
  return now + d;
}

struct Pipe {
  int r = -1, w = -1;
  void open() {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) throw_errno("cannot create a pipe", "", errno);
    r = p[0];
    w = p[1];
  }
  void close_all() {
    if (r >= 0) ::close(r);
    if (w >= 0) ::close(w);
    r = w = -1;
  }
};

// The output of one stream: a bounded capture plus line splitting.
struct Stream {
  int fd = -1;
  bool is_err = false;
  std::string captured;
  bool truncated = false;
  std::optional<LineSplitter> lines;

  void feed(const char* d, std::size_t n, const SpawnOptions& o) {
    if (o.capture) {
      captured.append(d, n);
      if (captured.size() > o.max_capture + (1u << 20)) {
        captured.erase(0, captured.size() - o.max_capture);
        truncated = true;
      }
    }
    if (!o.on_line) return;
    if (!lines) lines.emplace([&o, err = is_err](std::string_view line) { o.on_line(err, line); });
    lines->feed(std::string_view(d, n));
  }
  void finish(const SpawnOptions& o) {
    if (lines) lines->finish();
    if (captured.size() > o.max_capture) {
      captured.erase(0, captured.size() - o.max_capture);
      truncated = true;
    }
  }
};

bool executable_file(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(p.c_str(), X_OK) == 0;
}

}  // namespace

std::string which(const std::string& name, const std::string& path) {
  if (name.empty()) return "";
  if (name.find('/') != std::string::npos) return executable_file(name) ? name : "";
  std::string p = path;
  if (p.empty()) {
    const char* e = std::getenv("PATH");
    p = e ? e : "/usr/local/bin:/usr/bin:/bin";
  }
  std::size_t i = 0;
  while (i <= p.size()) {
    std::size_t j = p.find(':', i);
    if (j == std::string::npos) j = p.size();
    std::string dir = p.substr(i, j - i);
    if (dir.empty()) dir = ".";
    std::string cand = dir + "/" + name;
    if (executable_file(cand)) return cand;
    i = j + 1;
  }
  return "";
}

std::string describe_command(const std::vector<std::string>& argv) {
  std::string out;
  for (const auto& a : argv) {
    if (!out.empty()) out += ' ';
    bool plain = !a.empty() && std::all_of(a.begin(), a.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || std::strchr("_./=:,@%+-", c);
    });
    if (plain) {
      out += a;
      continue;
    }
    out += '\'';
    for (char c : a) {
      if (c == '\'')
        out += "'\\''";
      else
        out += c;
    }
    out += '\'';
  }
  return out;
}

int signal_number(const std::string& name) {
  static const std::pair<const char*, int> kNames[] = {
      {"HUP", SIGHUP},   {"INT", SIGINT},   {"QUIT", SIGQUIT}, {"KILL", SIGKILL},
      {"TERM", SIGTERM}, {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"CONT", SIGCONT},
      {"STOP", SIGSTOP}, {"ALRM", SIGALRM}, {"PIPE", SIGPIPE}, {"WINCH", SIGWINCH},
  };
  if (!name.empty() && std::all_of(name.begin(), name.end(), ::isdigit)) {
    int n = std::atoi(name.c_str());
    return n > 0 && n < NSIG ? n : -1;
  }
  std::string n = name;
  for (auto& c : n) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (n.rfind("SIG", 0) == 0) n = n.substr(3);
  for (const auto& [k, v] : kNames)
    if (n == k) return v;
  return -1;
}

Process::Process(SpawnOptions opts) : opts_(std::move(opts)) {
  if (opts_.argv.empty() || opts_.argv[0].empty())
    throw Error("cannot run an empty command", EINVAL);

  // The child's environment.
  std::map<std::string, std::string> env;
  if (!opts_.env_clear) {
    for (char** e = environ; e && *e; ++e) {
      const char* eq = std::strchr(*e, '=');
      if (eq) env.emplace(std::string(*e, static_cast<std::size_t>(eq - *e)), std::string(eq + 1));
    }
  }
  for (const auto& [k, v] : opts_.env) {
    if (k.empty() || k.find('=') != std::string::npos)
      throw Error("invalid environment variable name '" + k + "'", EINVAL);
    if (v)
      env[k] = *v;
    else
      env.erase(k);
  }
  std::vector<std::string> env_strings;
  env_strings.reserve(env.size());
  for (const auto& [k, v] : env) env_strings.push_back(k + "=" + v);
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<char*> argv;
  for (auto& a : opts_.argv) argv.push_back(a.data());
  argv.push_back(nullptr);

  // Looked up in the child's PATH, so env={PATH=...} finds what the child would.
  auto path_it = env.find("PATH");
  std::string program =
      which(opts_.argv[0], path_it != env.end() ? path_it->second : std::string());
  if (program.empty()) {
    if (opts_.argv[0].find('/') != std::string::npos)
      throw Error("cannot run " + opts_.argv[0] + ": not an executable file", ENOENT);
    throw Error("command not found: " + opts_.argv[0], ENOENT);
  }

  bool piped = opts_.capture || static_cast<bool>(opts_.on_line);
  Pipe out, err, in;
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  posix_spawn_file_actions_init(&fa);
  posix_spawnattr_init(&attr);
  struct Cleanup {
    posix_spawn_file_actions_t* fa;
    posix_spawnattr_t* attr;
    Pipe *out, *err, *in;
    ~Cleanup() {
      posix_spawn_file_actions_destroy(fa);
      posix_spawnattr_destroy(attr);
      out->close_all();
      err->close_all();
      in->close_all();
    }
  } cleanup{&fa, &attr, &out, &err, &in};

  if (piped) {
    out.open();
    err.open();
  }
  if (opts_.stdin_data) in.open();
  if (!opts_.cwd.empty()) posix_spawn_file_actions_addchdir_np(&fa, opts_.cwd.c_str());
  if (opts_.stdin_data)
    posix_spawn_file_actions_adddup2(&fa, in.r, 0);
  else
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  if (piped) {
    posix_spawn_file_actions_adddup2(&fa, out.w, 1);
    posix_spawn_file_actions_adddup2(&fa, err.w, 2);
  }
  // Descriptors other libraries opened without O_CLOEXEC stay ours.
  posix_spawn_file_actions_addclosefrom_np(&fa, 3);

  sigset_t empty, all;
  sigemptyset(&empty);
  sigfillset(&all);
  sigdelset(&all, SIGKILL);
  sigdelset(&all, SIGSTOP);
  posix_spawnattr_setsigmask(&attr, &empty);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr,
                           POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);

  int rc = ::posix_spawn(&pid_, program.c_str(), &fa, &attr, argv.data(), envp.data());
  if (rc != 0) {
    std::string where = opts_.cwd.empty() ? "" : " in " + opts_.cwd;
    throw Error("cannot run " + opts_.argv[0] + where + ": " + std::strerror(rc), rc);
  }
  start_ = Clock::now();
  pidfd_ = static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0));
  // Keep our ends; the child's ends close with `cleanup`.
  auto keep = [](int& fd) {
    int f = fd;
    fd = -1;
    ::fcntl(f, F_SETFL, ::fcntl(f, F_GETFL) | O_NONBLOCK);
    return f;
  };
  if (piped) {
    out_fd_ = keep(out.r);
    err_fd_ = keep(err.r);
  }
  if (opts_.stdin_data) in_fd_ = keep(in.w);
  {
    std::lock_guard lk(registry_mu());
    registry().insert(this);
  }
  reader_ = std::thread([this] { pump(); });
}

Process::~Process() {
  if (running()) terminate(std::chrono::seconds(2));
  if (reader_.joinable()) reader_.join();
  {
    std::lock_guard lk(registry_mu());
    registry().erase(this);
  }
  if (pidfd_ >= 0) ::close(pidfd_);
}

bool Process::running() const {
  std::lock_guard lk(mu_);
  return !reaped_;
}

bool Process::wait_for(std::chrono::nanoseconds timeout, const CancelToken* tok) {
  auto deadline = deadline_after(timeout);
  std::unique_lock lk(mu_);
  while (!finished_) {
    if (tok && tok->cancelled()) return false;
    auto now = Clock::now();
    if (now >= deadline) return false;
    auto step = std::chrono::milliseconds(20);
    cv_.wait_for(lk, deadline - now < step ? deadline - now : Clock::duration(step));
  }
  return true;
}

ExitStatus Process::status() const {
  std::lock_guard lk(mu_);
  return status_;
}

bool Process::signal(int sig) {
  std::lock_guard lk(mu_);
  if (reaped_) return false;  // the pid and group id may belong to someone else now
  if (::kill(-pid_, sig) != 0) ::kill(pid_, sig);
  return true;
}

void Process::terminate(std::chrono::nanoseconds grace) {
  if (!signal(SIGTERM)) return;
  signal(SIGCONT);  // a stopped child acts on TERM only once continued
  auto reaped = [&](Clock::time_point deadline) {
    std::unique_lock lk(mu_);
    return cv_.wait_until(lk, deadline, [&] { return reaped_; });
  };
  if (reaped(Clock::now() + grace)) return;
  signal(SIGKILL);
  reaped(Clock::now() + std::chrono::seconds(5));
}

void Process::pump() {
  // Writing to a pipe whose reader has gone raises SIGPIPE at this thread:
  // block it here and take EPIPE instead.
  sigset_t pipe_set;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_set, nullptr);

  Stream streams[2];
  streams[0].fd = out_fd_;
  streams[1].fd = err_fd_;
  streams[1].is_err = true;
  std::size_t in_off = 0;
  bool exited = false;
  Clock::time_point exit_time{};
  int code = -1, sig = 0;
  char buf[65536];

  auto try_reap = [&] {
    std::lock_guard lk(mu_);
    siginfo_t si{};
    int rc = ::waitid(P_PID, static_cast<id_t>(pid_), &si, WEXITED | WNOHANG);
    if (rc == 0 && si.si_pid == 0) return;  // still running
    if (rc == 0) {
      if (si.si_code == CLD_EXITED)
        code = si.si_status;
      else
        sig = si.si_status;
    }
    // rc < 0 (ECHILD): someone else reaped it; nothing more can be known.
    reaped_ = true;
    exited = true;
    exit_time = Clock::now();
    cv_.notify_all();
  };

  for (;;) {
    pollfd fds[4];
    int n = 0;
    int idx_s[2] = {-1, -1}, idx_in = -1, idx_pid = -1;
    for (int i = 0; i < 2; ++i)
      if (streams[i].fd >= 0) {
        idx_s[i] = n;
        fds[n++] = {streams[i].fd, POLLIN, 0};
      }
    if (in_fd_ >= 0) {
      idx_in = n;
      fds[n++] = {in_fd_, POLLOUT, 0};
    }
    if (!exited && pidfd_ >= 0) {
      idx_pid = n;
      fds[n++] = {pidfd_, POLLIN, 0};
    }
    int timeout = exited ? 100 : (pidfd_ >= 0 ? 1000 : 20);
    int r = ::poll(fds, static_cast<nfds_t>(n), timeout);
    if (r < 0 && errno != EINTR) break;
    bool activity = false;
    for (int i = 0; i < 2 && r > 0; ++i) {
      if (idx_s[i] < 0 || fds[idx_s[i]].revents == 0) continue;
      ssize_t got = ::read(streams[i].fd, buf, sizeof buf);
      if (got > 0) {
        streams[i].feed(buf, static_cast<std::size_t>(got), opts_);
        activity = true;
      } else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
        ::close(streams[i].fd);
        streams[i].fd = -1;
      }
    }
    if (idx_in >= 0 && r > 0 && fds[idx_in].revents != 0) {
      const std::string& data = *opts_.stdin_data;
      ssize_t put = in_off < data.size()
                        ? ::write(in_fd_, data.data() + in_off,
                                  std::min<std::size_t>(data.size() - in_off, 65536))
                        : 0;
      if (put > 0) in_off += static_cast<std::size_t>(put);
      if (put < 0 && errno == EPIPE) {
        timespec zero{};
        sigtimedwait(&pipe_set, nullptr, &zero);  // consume the pending SIGPIPE
      }
      if (in_off >= data.size() || (put < 0 && errno != EAGAIN && errno != EINTR)) {
        ::close(in_fd_);
        in_fd_ = -1;
      }
    }
    (void)idx_pid;
    if (!exited) try_reap();
    if (exited) {
      if (in_fd_ >= 0) {
        ::close(in_fd_);
        in_fd_ = -1;
      }
      bool open = streams[0].fd >= 0 || streams[1].fd >= 0;
      // A background grandchild may hold the pipes open: stop reading once
      // output pauses, and after a second at most.
      if (!open || (r == 0 && !activity) || Clock::now() - exit_time > std::chrono::seconds(1))
        break;
    }
  }
  for (auto& s : streams) {
    s.finish(opts_);
    if (s.fd >= 0) ::close(s.fd);
    s.fd = -1;
  }
  if (in_fd_ >= 0) ::close(in_fd_);
  in_fd_ = -1;
  if (!exited) {  // poll failed: still collect the exit status
    while (!exited) {
      try_reap();
      if (!exited) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  std::lock_guard lk(mu_);
  status_.code = code;
  status_.signal = sig;
  status_.out = std::move(streams[0].captured);
  status_.err = std::move(streams[1].captured);
  status_.out_truncated = streams[0].truncated;
  status_.err_truncated = streams[1].truncated;
  status_.duration = std::chrono::duration<double>(exit_time - start_).count();
  finished_ = true;
  cv_.notify_all();
}

int terminate_all_children(std::chrono::nanoseconds grace) {
  std::lock_guard lk(registry_mu());
  std::vector<Process*> live;
  for (Process* p : registry())
    if (p->running()) live.push_back(p);
  for (Process* p : live) {
    p->signal(SIGTERM);
    p->signal(SIGCONT);
  }
  auto deadline = Clock::now() + grace;
  for (Process* p : live) {
    auto now = Clock::now();
    p->wait_for(deadline > now ? deadline - now : std::chrono::nanoseconds(0));
  }
  for (Process* p : live)
    if (p->running()) p->terminate(std::chrono::nanoseconds(0));
  return static_cast<int>(live.size());
}

int live_children() {
  std::lock_guard lk(registry_mu());
  int n = 0;
  for (Process* p : registry())
    if (p->running()) ++n;
  return n;
}

}  // namespace ephrun::sys
