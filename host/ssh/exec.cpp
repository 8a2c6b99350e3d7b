// Remote commands: the streaming exec primitive, run(), detached jobs.
#include <openssl/rand.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <ctime>
#include <optional>
#include <vector>

#include "runtime/secrets.hpp"
#include "ssh/session_impl.hpp"
#include "ssh/util.hpp"

namespace ephrun::ssh {
namespace {

using std::chrono::milliseconds;

std::string random_hex(std::size_t bytes) {
  std::string r(bytes, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(r.data()), static_cast<int>(bytes)) != 1)
    throw Error(ErrorKind::other, "random number generator failed");
  return hex(r);
}

bool valid_env_name(const std::string& k) {
  if (k.empty() || !(std::isalpha(static_cast<unsigned char>(k[0])) || k[0] == '_')) return false;
  return std::all_of(k.begin(), k.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
  });
}

constexpr std::string_view kPgidTag = "EPHRUN-PGID ";

// Splits a byte stream into lines for a callback and keeps a bounded tail.
struct Sink {
  Sink(std::function<void(std::string_view)> on_line, std::size_t max_capture) : max(max_capture) {
    if (on_line) lines.emplace(std::move(on_line));
  }
  std::size_t max;
  std::string captured;
  std::optional<LineSplitter> lines;
  bool truncated = false;

  void feed(std::string_view d) {
    captured.append(d);
    if (captured.size() > 2 * max + 65536) {
      captured.erase(0, captured.size() - max);
      truncated = true;
    }
    if (lines) lines->feed(d);
  }
  void finish() {
    if (lines) lines->finish();
    if (captured.size() > max) {
      captured.erase(0, captured.size() - max);
      truncated = true;
    }
  }
};

}  // namespace

StreamResult Session::Impl::exec_stream(const std::string& command,
                                        const std::map<std::string, std::string>& env,
                                        const std::string& cwd, StreamIO& io,
                                        Clock::time_point deadline, const CancelToken& token,
                                        bool killable) {
  require_open();
  LIBSSH2_CHANNEL* ch = open_channel(deadline, token);
  struct Guard {
    Impl* self;
    LIBSSH2_CHANNEL* ch;
    ~Guard() { self->close_channel(ch, Clock::now() + milliseconds(300)); }
  } guard{this, ch};

  // Environment: the "env" request first; once the server refuses one, the rest
  // goes through stdin so that no value is ever part of a command line.
  std::vector<std::pair<std::string, std::string>> refused;
  bool try_setenv = true;
  for (auto& [k, v] : env) {
    if (!valid_env_name(k))
      throw Error(ErrorKind::other, "invalid environment variable name: '" + k + "'");
    if (try_setenv) {
      int rc = retry(
          [&] {
            return libssh2_channel_setenv_ex(ch, k.c_str(), static_cast<unsigned>(k.size()),
                                             v.c_str(), static_cast<unsigned>(v.size()));
          },
          deadline, token, "setting environment");
      if (rc == 0) continue;
      if (rc != LIBSSH2_ERROR_CHANNEL_REQUEST_DENIED) fail("cannot set environment");
      try_setenv = false;
    }
    refused.emplace_back(k, v);
  }

  std::string script, pend;
  if (killable) script += "echo \"EPHRUN-PGID $$\"\n";
  if (!refused.empty()) {
    std::string mark = "EPHRUN-ENV-END-" + random_hex(12);
    script += "__ephrun_e=; while IFS= read -r __ephrun_l; do [ \"$__ephrun_l\" = " + mark +
              " ] && break; __ephrun_e=\"$__ephrun_e$__ephrun_l\n\"; done; eval \"$__ephrun_e\"; "
              "unset __ephrun_e __ephrun_l\n";
    for (auto& [k, v] : refused) pend += "export " + k + "=" + shell_quote(v) + "\n";
    pend += mark + "\n";
  }
  if (!cwd.empty()) script += "cd " + shell_quote(cwd) + " || exit 125\n";
  script += command;

  int rc = retry([&] { return libssh2_channel_exec(ch, script.c_str()); }, deadline, token,
                 "starting remote command");
  if (rc != 0) fail("cannot start remote command");

  long pgid = 0;
  std::string head;
  bool head_done = !killable;
  std::size_t off = 0;
  bool produce_done = !io.produce, eof_sent = false, write_blocked = false;
  static thread_local std::vector<char> buf(256 * 1024);

  auto on_out = [&](std::string_view d) {
    if (!head_done) {
      // The marker line is normally first, but a login shell's rc file may print
      // before it; look for it in the first few KiB.
      head.append(d);
      std::size_t at = 0;
      for (;;) {
        auto found = head.find(kPgidTag, at);
        if (found != std::string::npos && (found == 0 || head[found - 1] == '\n')) {
          auto nl = head.find('\n', found);
          if (nl == std::string::npos) break;  // wait for the rest of the line
          pgid = std::strtol(head.c_str() + found + kPgidTag.size(), nullptr, 10);
          std::string rest = head.substr(0, found) + head.substr(nl + 1);
          head_done = true;
          head.clear();
          if (!rest.empty() && io.on_out) io.on_out(rest);
          return;
        }
        if (found == std::string::npos) break;
        at = found + 1;
      }
      if (head.size() > 4096) {
        head_done = true;
        std::string rest;
        rest.swap(head);
        if (io.on_out) io.on_out(rest);
      }
      return;
    }
    if (io.on_out) io.on_out(d);
  };

  // Reads what is available; returns true when anything was read.
  auto pump_reads = [&]() {
    bool got = false;
    for (int stream : {0, 1}) {
      for (;;) {
        ssize_t n = libssh2_channel_read_ex(ch, stream, buf.data(), buf.size());
        if (n > 0) {
          got = true;
          std::string_view d(buf.data(), static_cast<std::size_t>(n));
          if (stream == 0)
            on_out(d);
          else if (io.on_err)
            io.on_err(d);
          continue;
        }
        if (n == 0 || n == LIBSSH2_ERROR_EAGAIN) break;
        fail("reading remote output");
      }
    }
    return got;
  };

  try {
    for (;;) {
      // A steady stream never blocks, so check here too, not only when waiting.
      if (token.cancelled() || Clock::now() >= deadline)
        wait_socket(deadline, token, "remote command");
      bool progress = false;
      bool remote_eof = libssh2_channel_eof(ch) != 0;
      if (!eof_sent && !remote_eof) {
        if (off == pend.size()) {
          pend.clear();
          off = 0;
          if (!produce_done && !io.produce(pend)) produce_done = true;
        }
        if (off < pend.size()) {
          ssize_t n = libssh2_channel_write(ch, pend.data() + off, pend.size() - off);
          write_blocked = n == LIBSSH2_ERROR_EAGAIN;
          if (n > 0) {
            off += static_cast<std::size_t>(n);
            progress = true;
          } else if (n < 0 && n != LIBSSH2_ERROR_EAGAIN) {
            eof_sent = true;  // the remote closed its stdin: drop the rest
          }
        } else if (produce_done) {
          int e = libssh2_channel_send_eof(ch);
          if (e != LIBSSH2_ERROR_EAGAIN) {
            eof_sent = true;
            progress = true;
          }
        }
      }
      if (pump_reads()) progress = true;
      if (!progress && libssh2_channel_eof(ch)) break;
      if (!progress) wait_socket(deadline, token, "remote command");
    }
    // Let a half-sent packet finish before the close goes out.
    rc = retry([&] { return libssh2_channel_close(ch); }, deadline, token, "closing channel");
    rc = retry([&] { return libssh2_channel_wait_closed(ch); }, deadline, token, "closing channel");
    pump_reads();
  } catch (...) {
    // Timeout, cancel, or a failing consumer (e.g. a callback that threw): the remote
    // command must not outlive us. A dead connection makes this a quick no-op.
    bool dead = libssh2_session_last_errno(s) == LIBSSH2_ERROR_SOCKET_DISCONNECT ||
                libssh2_session_last_errno(s) == LIBSSH2_ERROR_SOCKET_SEND ||
                libssh2_session_last_errno(s) == LIBSSH2_ERROR_SOCKET_RECV;
    if (killable && !dead) {
      CancelToken fresh;
      auto kd = Clock::now() + milliseconds(800);
      try {
        // A partly sent packet must go out before another channel's packets.
        while (write_blocked && off < pend.size() &&
               (libssh2_session_block_directions(s) & LIBSSH2_SESSION_BLOCK_OUTBOUND)) {
          ssize_t n = libssh2_channel_write(ch, pend.data() + off, pend.size() - off);
          if (n != LIBSSH2_ERROR_EAGAIN) break;
          wait_socket(kd, fresh, "flushing");
        }
        while (!head_done && Clock::now() < kd) {
          if (!pump_reads()) wait_socket(kd, fresh, "waiting for remote pid");
        }
        if (pgid > 1) {
          StreamIO none;
          std::string p = std::to_string(pgid);
          exec_stream("kill -TERM -" + p + " 2>/dev/null; (sleep 2; kill -KILL -" + p +
                          " 2>/dev/null) </dev/null >/dev/null 2>&1 &",
                      {}, {}, none, Clock::now() + milliseconds(800), fresh, false);
        }
      } catch (...) {
      }
    }
    throw;
  }

  StreamResult r;
  char* sig = nullptr;
  std::size_t sig_len = 0;
  libssh2_channel_get_exit_signal(ch, &sig, &sig_len, nullptr, nullptr, nullptr, nullptr);
  if (sig && sig_len) {
    r.signal.assign(sig, sig_len);
    r.code = -1;
  } else {
    r.code = libssh2_channel_get_exit_status(ch);
  }
  if (sig) libssh2_free(s, sig);
  if (!head_done && !head.empty() && io.on_out) io.on_out(head);
  return r;
}

std::string Session::Impl::capture(const std::string& command, const std::string& what,
                                   const CancelToken& token, std::string_view stdin_data,
                                   Clock::time_point deadline) {
  std::string out, err;
  bool sent = stdin_data.empty();
  StreamIO io;
  if (!stdin_data.empty())
    io.produce = [&](std::string& b) {
      if (sent) return false;
      b.assign(stdin_data);
      sent = true;
      return true;
    };
  io.on_out = [&](std::string_view d) { out.append(d); };
  io.on_err = [&](std::string_view d) {
    if (err.size() < 65536) err.append(d);
  };
  auto r = exec_stream(command, {}, {}, io, deadline, token, true);
  if (r.code != 0) {
    while (!err.empty() && err.back() == '\n') err.pop_back();
    throw Error(ErrorKind::other,
                what + " failed on " + opts.host + " (" +
                    (r.signal.empty() ? "exit " + std::to_string(r.code) : "signal " + r.signal) +
                    ")" + (err.empty() ? std::string() : ": " + err));
  }
  return out;
}

std::string ExecResult::failure_message(const std::string& cmd, int tail_lines) const {
  std::string msg = "command `" + cmd + "` " +
                    (signal.empty() ? "exited with code " + std::to_string(code)
                                    : "was killed by signal " + signal);
  std::string e = err;
  while (!e.empty() && e.back() == '\n') e.pop_back();
  std::size_t pos = e.size();
  for (int i = 0; i < tail_lines && pos != std::string::npos && pos > 0; ++i)
    pos = e.rfind('\n', pos - 1);
  if (pos == std::string::npos)
    pos = 0;
  else if (pos < e.size() && e[pos] == '\n')
    ++pos;
  if (!e.empty()) msg += "; last stderr lines:\n" + e.substr(pos);
  return msg;
}

ExecResult Session::run(const std::string& cmd, const ExecOptions& opts, const CancelToken& token) {
  auto& im = impl();
  auto start = Clock::now();
  auto deadline = opts.timeout.count() > 0 ? start + opts.timeout : Clock::time_point::max();
  Sink out{opts.on_stdout_line, opts.max_capture}, err{opts.on_stderr_line, opts.max_capture};
  bool sent = opts.stdin_data.empty();
  StreamIO io;
  io.produce = [&](std::string& b) {
    if (sent) return false;
    b = opts.stdin_data;
    sent = true;
    return true;
  };
  io.on_out = [&](std::string_view d) { out.feed(d); };
  io.on_err = [&](std::string_view d) { err.feed(d); };
  StreamResult r;
  try {
    r = im.exec_stream(cmd, opts.env, opts.cwd, io, deadline, token, true);
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::timeout && opts.timeout.count() > 0 && Clock::now() >= deadline)
      throw Error(ErrorKind::timeout, "command `" + cmd + "` on " + label() + " timed out after " +
                                          std::to_string(opts.timeout.count()) +
                                          " ms and was stopped");
    if (e.kind() == ErrorKind::cancelled)
      throw Error(ErrorKind::cancelled,
                  "command `" + cmd + "` on " + label() + " was " + e.what() + " and stopped");
    throw;
  }
  out.finish();
  err.finish();
  ExecResult res;
  res.code = r.code;
  res.signal = r.signal;
  res.out = std::move(out.captured);
  res.err = std::move(err.captured);
  res.out_truncated = out.truncated;
  res.err_truncated = err.truncated;
  res.duration = std::chrono::duration_cast<milliseconds>(Clock::now() - start);
  return res;
}

DetachedJob Session::run_detached(const std::string& cmd, const DetachedOptions& opts,
                                  const CancelToken& token) {
  DetachedJob job;
  std::string log = opts.log;
  std::string prep;
  if (log.empty()) {
    prep = "mkdir -p \"$HOME/.ephrun/jobs\" && ";
    log = "$HOME/.ephrun/jobs/" + std::to_string(std::time(nullptr)) + "-" + random_hex(4) + ".log";
  }
  // The log path may need $HOME expanded: resolve it remotely and print it back.
  std::string qlog = opts.log.empty() ? "\"" + log + "\"" : shell_quote(log);
  // The command runs in a subshell so that its `exit` still lets the status be written.
  std::string inner = "(\n" + cmd + "\n)\necho $? > \"$EPHRUN_JOB_STATUS\"";
  std::string launch = prep + "l=" + qlog +
                       "; case \"$l\" in /*) ;; *) l=\"$PWD/$l\";; esac; "
                       "mkdir -p \"$(dirname \"$l\")\" && rm -f \"$l.exit\" && "
                       "EPHRUN_JOB_STATUS=\"$l.exit\" nohup setsid sh -c " +
                       shell_quote(inner) + " >\"$l\" 2>&1 </dev/null & echo \"$! $l\"";
  ExecOptions eo;
  eo.env = opts.env;
  eo.cwd = opts.cwd;
  eo.timeout = std::chrono::seconds(30);
  auto r = run(launch, eo, token);
  if (r.code != 0) throw Error(ErrorKind::other, r.failure_message("run_detached: " + cmd));
  std::string line = r.out;
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
  auto sp = line.find(' ');
  if (sp == std::string::npos)
    throw Error(ErrorKind::other, "run_detached: unexpected output: " + line);
  job.pid = std::strtol(line.c_str(), nullptr, 10);
  job.log = line.substr(sp + 1);
  job.status_file = job.log + ".exit";
  return job;
}

namespace {
// True while `pid` runs. A finished job whose parent (init in a container) has not
// reaped it yet is a zombie, which kill -0 still reports as alive.
std::string alive_test(long pid) {
  std::string p = std::to_string(pid);
  return "{ kill -0 " + p + " 2>/dev/null && case \"$(ps -o stat= -p " + p +
         " 2>/dev/null)\" in Z*) false;; *) true;; esac; }";
}
}  // namespace

bool Session::job_alive(const DetachedJob& job, const CancelToken& token) {
  auto r =
      run("[ ! -f " + shell_quote(job.status_file) + " ] && " + alive_test(job.pid), {}, token);
  return r.code == 0;
}

std::string Session::job_tail(const DetachedJob& job, int lines, const CancelToken& token) {
  auto r = run("tail -n " + std::to_string(lines) + " -- " + shell_quote(job.log), {}, token);
  if (r.code != 0) throw Error(ErrorKind::other, r.failure_message("tail " + job.log));
  return r.out;
}

std::optional<int> Session::job_exit_code(const DetachedJob& job, const CancelToken& token) {
  auto r = run("cat -- " + shell_quote(job.status_file) + " 2>/dev/null", {}, token);
  if (r.code != 0 || r.out.empty()) return std::nullopt;
  return std::atoi(r.out.c_str());
}

int Session::job_wait(const DetachedJob& job, Clock::time_point deadline, const CancelToken& token,
                      std::chrono::milliseconds poll) {
  std::string p = std::to_string(job.pid), f = shell_quote(job.status_file);
  for (;;) {
    // One round trip per poll: alive -> "running", else the status (or "gone").
    // Alive first: once it is not, its status (written just before exit) is there.
    auto r = run("if " + alive_test(job.pid) + "; then echo running; elif [ -f " + f +
                     " ]; then cat " + f + "; else echo gone; fi",
                 {}, token);
    if (r.out.rfind("running", 0) != 0) {
      if (r.out.rfind("gone", 0) == 0) return -1;
      return std::atoi(r.out.c_str());
    }
    if (Clock::now() + poll >= deadline)
      throw Error(ErrorKind::timeout, "job " + p + " on " + label() + " still running at deadline");
    if (!token.sleep_for(poll))
      throw Error(ErrorKind::cancelled, "cancelled while waiting for job " + p);
  }
}

}  // namespace ephrun::ssh
