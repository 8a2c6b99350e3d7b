// SSH sessions over libssh2: verified host keys, key/agent authentication, remote
// commands with live output, detached jobs. Every blocking step honours a deadline
// and an ephrun::CancelToken (a cancel aborts within ~50 ms).
//
// A Session is used by one thread at a time; distinct Sessions are independent.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "runtime/cancel.hpp"
#include "ssh/error.hpp"

namespace ephrun::ssh {

using Clock = std::chrono::steady_clock;

/// How to reach and trust a server. Authentication: set exactly one of
/// `private_key`, `key_file`, `agent`. Host key: set `host_key` or `known_hosts`,
/// or (explicitly, with a logged warning) `insecure_accept_any_host_key`.
struct ConnectOptions {
  std::string host;
  int port = 22;
  std::string user;

  std::string private_key;  ///< private key text (openssh-key-v1 or PEM) held in memory
  std::string key_file;     ///< path of a private key file (see keys.hpp load_private_key_file)
  std::string passphrase;   ///< for an encrypted private_key / key_file
  bool agent = false;       ///< use the keys of the ssh-agent at $SSH_AUTH_SOCK

  /// Pinned host key: a .pub line ("ssh-ed25519 AAAA... [comment]") or "SHA256:..."
  /// (with a fingerprint only, ed25519 is negotiated first).
  std::string host_key;
  std::string known_hosts;  ///< OpenSSH known_hosts file; hashed entries (|1|...) work
  bool insecure_accept_any_host_key = false;

  std::chrono::milliseconds connect_timeout{10000};  ///< TCP + handshake + auth
  std::chrono::seconds keepalive_interval{15};       ///< 0 disables keepalives
};

/// Options of Session::run.
struct ExecOptions {
  /// Exported in the remote shell before the command. Tried with the SSH "env"
  /// request first; when the server refuses it (usual: AcceptEnv), sent as
  /// `export K='v'` lines through the channel's stdin. Values never appear in any
  /// command line. Names must be [A-Za-z_][A-Za-z0-9_]*.
  std::map<std::string, std::string> env;
  std::string cwd;                       ///< `cd` there first (fails with exit 125 when impossible)
  std::string stdin_data;                ///< fed to the command's stdin, then EOF
  std::chrono::milliseconds timeout{0};  ///< 0: none. On expiry the remote process
                                         ///< group gets SIGTERM (then SIGKILL after 2 s)
  /// Called for each complete line (without '\n') as it arrives, and for a last
  /// unterminated line at the end.
  std::function<void(std::string_view)> on_stdout_line;
  std::function<void(std::string_view)> on_stderr_line;
  std::size_t max_capture = 1 << 20;  ///< bytes of stdout/stderr kept (the tail)
};

struct ExecResult {
  int code = -1;       ///< exit status, or -1 when killed by a signal
  std::string signal;  ///< "TERM", "KILL", ... when killed by a signal
  std::string out;     ///< stdout tail (at most max_capture bytes)
  std::string err;     ///< stderr tail
  bool out_truncated = false;
  bool err_truncated = false;
  std::chrono::milliseconds duration{0};

  /// "command `cmd` exited with code N: <last stderr lines>" for an error report.
  [[nodiscard]] std::string failure_message(const std::string& cmd, int tail_lines = 10) const;
};

/// A job started by run_detached: it survives the SSH connection.
struct DetachedJob {
  long pid = 0;
  std::string log;          ///< remote path of its combined stdout/stderr
  std::string status_file;  ///< remote path where its exit code is written (log + ".exit")
};

struct DetachedOptions {
  std::string log;  ///< remote log path; default ~/.ephrun/jobs/<time>-<rand>.log
  std::map<std::string, std::string> env;
  std::string cwd;
};

class Session {
 public:
  /// Connects, verifies the host key, authenticates. Deadline: now + connect_timeout.
  /// Throws ssh::Error (refused, timeout, banner, auth, host_key_*, cancelled, other).
  static Session connect(const ConnectOptions& opts, const CancelToken& token = {});

  Session(Session&&) noexcept;
  Session& operator=(Session&&) noexcept;
  ~Session();

  /// Disconnects; idempotent. Later calls on the session throw ssh::Error(other).
  void close() noexcept;
  [[nodiscard]] bool is_open() const noexcept;
  /// Drops the connection (if any) and connects again with the same options.
  void reconnect(const CancelToken& token = {});

  /// Sends a keepalive if one is due (long-running calls do this themselves; an idle
  /// session kept across a long wait should call it now and then). Returns the
  /// seconds until the next one is due. Throws ssh::Error(other) when the
  /// connection is gone (then reconnect()).
  int keepalive();

  [[nodiscard]] const ConnectOptions& options() const;
  /// "SHA256:..." of the server's host key as verified.
  [[nodiscard]] const std::string& host_key_fingerprint() const;
  /// "user@host:port", for messages and output prefixes.
  [[nodiscard]] std::string label() const;

  /// Runs `cmd` in the user's login shell and waits for it. A non-zero exit is not
  /// an error (see ExecResult::failure_message). Throws ssh::Error(timeout) after
  /// stopping the remote process when opts.timeout passes, ssh::Error(cancelled)
  /// likewise on cancel, ssh::Error(other) on connection failure.
  ExecResult run(const std::string& cmd, const ExecOptions& opts = {},
                 const CancelToken& token = {});

  /// Starts `cmd` under setsid/nohup with output to a log file and returns at once.
  DetachedJob run_detached(const std::string& cmd, const DetachedOptions& opts = {},
                           const CancelToken& token = {});
  /// True while the job's process exists.
  bool job_alive(const DetachedJob& job, const CancelToken& token = {});
  /// The last `lines` lines of the job's log.
  std::string job_tail(const DetachedJob& job, int lines = 20, const CancelToken& token = {});
  /// The job's exit code once it has ended (nullopt while running or when unknown).
  std::optional<int> job_exit_code(const DetachedJob& job, const CancelToken& token = {});
  /// Polls until the job ends; returns its exit code (-1 if it ended without
  /// writing one, e.g. killed). Throws ssh::Error(timeout) at the deadline.
  int job_wait(const DetachedJob& job, Clock::time_point deadline, const CancelToken& token = {},
               std::chrono::milliseconds poll = std::chrono::milliseconds(500));

  struct Impl;
  /// Internal: the libssh2 state, for sftp.cpp and sync.cpp.
  Impl& impl();

 private:
  explicit Session(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// Connects repeatedly until the server answers and accepts our key, or `deadline`.
/// Backoff starts at 100 ms, doubles, capped at 1 s. Host-key problems and
/// cancellation end it at once; otherwise the last error (its kind tells refused /
/// timeout / banner / auth) is rethrown at the deadline. `on_retry` (optional) sees
/// each failed attempt.
Session wait(const ConnectOptions& opts, Clock::time_point deadline, const CancelToken& token = {},
             const std::function<void(const Error&, int attempt)>& on_retry = {});

/// The entries a connection to host:port would check in the known_hosts file at
/// `path` (hashed entries, patterns, `@revoked`): their key types. Lets a caller
/// refuse an unknown server before any network is used. Throws when the file
/// cannot be read.
struct KnownHostEntry {
  std::string type;
  bool revoked = false;
};
std::vector<KnownHostEntry> known_host_entries(const std::string& path, const std::string& host,
                                               int port);

}  // namespace ephrun::ssh
