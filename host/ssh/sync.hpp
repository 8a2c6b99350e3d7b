// Directory sync to a remote host: one manifest command, then the new and changed
// files as a single tar stream into `tar -x` (SFTP per file if the remote has no tar).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/cancel.hpp"
#include "ssh/session.hpp"

namespace ephrun::ssh {

/// Never sent unless an `include` pattern names them, matched against each path
/// component ignoring case (`.ENV`, `ID_RSA` and `key.PEM` are secrets too). The one
/// definition: the sync walk, the plan (`ephrun.ssh.never_send()`) and
/// deploy-to-server's tarball all use it.
inline const std::vector<std::string> kNeverSend = {".env*", "*.pem", "id_*", ".git"};

/// Whether some component of `path` ('/'-separated) matches kNeverSend, ignoring case.
bool never_sent(std::string_view path);

struct SyncOptions {
  /// gitignore-style patterns (`*`, `**`, `?`, `[a-z]`, leading `/` anchors to the
  /// synced root, trailing `/` matches directories only, `!` negates).
  std::vector<std::string> exclude;
  /// Patterns that override every exclude, including the default secret excludes.
  /// As in git, a file inside an excluded directory cannot be re-included; include
  /// the directory itself.
  std::vector<std::string> include;
  bool delete_extra = false;  ///< remove remote files that are gone locally (excluded ones stay)
  bool gitignore = true;      ///< honour .gitignore files found in the tree
  /// Files of at least this size whose size matches but mtime differs are compared by
  /// SHA-256 before being sent; smaller ones are simply sent again.
  std::uint64_t hash_threshold = 64 * 1024;
  /// The remote tar command; tests set a missing one to exercise the SFTP fallback.
  std::string remote_tar = "tar";
};

struct SyncProgress {
  std::uint64_t files_done = 0, files_todo = 0;
  std::uint64_t bytes_done = 0, bytes_todo = 0;
};
using SyncProgressFn = std::function<void(const SyncProgress&)>;

struct SyncStats {
  std::uint64_t files_total = 0;  ///< files and symlinks considered (after excludes)
  std::uint64_t bytes_total = 0;  ///< their size
  std::uint64_t files_sent = 0;   ///< files and symlinks transferred
  std::uint64_t bytes_sent = 0;   ///< file content bytes transferred
  std::uint64_t deleted = 0;      ///< remote entries removed (delete_extra or type change)
  std::uint64_t excluded = 0;     ///< local entries skipped by a pattern
  bool used_sftp = false;         ///< the remote had no tar
  std::chrono::milliseconds duration{0};
};

/// Makes `remote_dir` (created if missing; relative to the login directory unless
/// absolute) hold the files of `local_dir`. Permission bits, mtimes and symlinks are
/// kept. `progress` (optional) is called at most every 100 ms and once at the end.
/// Throws ssh::Error (cancelled/timeout/other).
SyncStats sync(Session& s, const std::string& local_dir, const std::string& remote_dir,
               const SyncOptions& opts = {}, const SyncProgressFn& progress = {},
               const CancelToken& token = {});

/// What sync() would consider, without touching the network (for --dry-run plans).
/// files_total/bytes_total/excluded are set; nothing is marked sent.
SyncStats scan_local(const std::string& local_dir, const SyncOptions& opts = {});

struct FetchStats {
  std::uint64_t files = 0;
  std::uint64_t bytes = 0;
  std::chrono::milliseconds duration{0};
};

/// Copies `remote` (a directory's contents, or a single file) to `local` with one
/// `tar -c` stream. Paths that would escape `local` are refused.
FetchStats fetch(Session& s, const std::string& remote, const std::string& local,
                 const SyncProgressFn& progress = {}, const CancelToken& token = {});

/// Exposed for tests: gitignore-style matching of one pattern against a relative
/// path ('/'-separated, no leading '/').
bool glob_path_match(const std::string& pattern, const std::string& path);

}  // namespace ephrun::ssh
