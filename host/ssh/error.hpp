// The one exception type the SSH layer throws, with a kind the caller can act on.
#pragma once

#include <stdexcept>
#include <string>

namespace ephrun::ssh {

/// Why an SSH operation failed. `wait()` retries refused/timeout/banner/auth and
/// gives up at once on a host-key problem.
enum class ErrorKind {
  refused,            ///< TCP connection refused (nothing listening yet)
  timeout,            ///< a deadline passed (connect, handshake, command, transfer)
  banner,             ///< TCP accepted but the SSH greeting/handshake did not complete
  auth,               ///< the server refused our key (or the agent had none it accepts)
  host_key_mismatch,  ///< the server's host key differs from the pinned/known one
  host_key_unknown,   ///< known_hosts has no entry for this host
  cancelled,          ///< the CancelToken was raised
  other,              ///< anything else (I/O, protocol, remote file errors, bad arguments)
};

/// Stable lowercase name of a kind ("refused", "host_key_mismatch", ...).
const char* kind_name(ErrorKind k) noexcept;

/// Error raised by every function in ephrun::ssh. `what()` is a complete sentence
/// meant for a person; `kind()` is for code.
class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  [[nodiscard]] ErrorKind kind() const noexcept { return kind_; }

 private:
  ErrorKind kind_;
};

}  // namespace ephrun::ssh
