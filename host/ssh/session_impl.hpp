// Internal to host/ssh: the libssh2 state behind Session and the streaming exec
// primitive that run(), sftp and sync share. Not for use outside host/ssh.
#pragma once

#include <libssh2.h>
#include <libssh2_sftp.h>

#include <functional>
#include <map>
#include <string>
#include <string_view>

#include "ssh/session.hpp"

namespace ephrun::ssh {

/// Input/output of one exec channel.
struct StreamIO {
  /// Appends more stdin to `buf` (which is empty when called); returns false at EOF.
  /// Null: no stdin (EOF at once, after any env preamble).
  std::function<bool(std::string& buf)> produce;
  std::function<void(std::string_view)> on_out;
  std::function<void(std::string_view)> on_err;
};

struct StreamResult {
  int code = -1;
  std::string signal;
};

struct Session::Impl {
  ConnectOptions opts;
  int sock = -1;
  LIBSSH2_SESSION* s = nullptr;
  LIBSSH2_SFTP* sftp = nullptr;
  std::string host_fp;
  Clock::time_point next_keepalive = Clock::time_point::max();  ///< set once authenticated

  ~Impl() { disconnect(); }
  void disconnect() noexcept;
  void require_open() const;

  /// Waits until libssh2's socket is ready in the direction it is blocked on, for at
  /// most ~50 ms. Throws Error(cancelled) / Error(timeout, what) when due.
  void wait_socket(Clock::time_point deadline, const CancelToken& token, const std::string& what);
  /// libssh2's last error text.
  std::string last_error() const;
  /// Throws Error(other) "<what>: <libssh2 message>".
  [[noreturn]] void fail(const std::string& what) const;

  /// Runs `fn` (a libssh2 call returning int) until it stops returning EAGAIN.
  template <class F>
  int retry(F&& fn, Clock::time_point deadline, const CancelToken& token, const std::string& what) {
    for (;;) {
      int rc = fn();
      if (rc != LIBSSH2_ERROR_EAGAIN) return rc;
      wait_socket(deadline, token, what);
    }
  }

  /// Opens a session channel (throws on failure).
  LIBSSH2_CHANNEL* open_channel(Clock::time_point deadline, const CancelToken& token);
  /// Closes and frees a channel, waiting at most until `deadline` for the close.
  void close_channel(LIBSSH2_CHANNEL* ch, Clock::time_point deadline) noexcept;

  /// Runs `command` on a new channel: `env` as in ExecOptions, `cwd` when non-empty.
  /// With `killable`, the remote shell reports its process group first so that, on
  /// deadline or cancel, the whole group is signalled before the error is rethrown.
  StreamResult exec_stream(const std::string& command,
                           const std::map<std::string, std::string>& env, const std::string& cwd,
                           StreamIO& io, Clock::time_point deadline, const CancelToken& token,
                           bool killable = true);

  /// Runs a short helper command and returns its stdout; throws Error(other) naming
  /// `what` when it exits non-zero.
  std::string capture(const std::string& command, const std::string& what, const CancelToken& token,
                      std::string_view stdin_data = {},
                      Clock::time_point deadline = Clock::time_point::max());

  /// The SFTP subsystem, started on first use.
  LIBSSH2_SFTP* sftp_session(Clock::time_point deadline, const CancelToken& token);
};

}  // namespace ephrun::ssh
