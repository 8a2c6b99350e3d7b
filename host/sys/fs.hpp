// Local files: the work behind ephrun.fs, usable without Lua.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/cancel.hpp"

namespace ephrun::sys {

/// An expected failure of a system call: the message names the call and the
/// path; `code` is the errno value (0 when none applies).
class Error : public std::runtime_error {
 public:
  Error(const std::string& msg, int code) : std::runtime_error(msg), code_(code) {}
  [[nodiscard]] int code() const { return code_; }
  /// errno's symbolic name ("ENOENT"), or "" when there is none.
  [[nodiscard]] std::string code_name() const;

 private:
  int code_;
};

/// `what: path: strerror(err)` as an Error.
[[noreturn]] void throw_errno(const std::string& what, const std::string& path, int err);

/// Parses a permission mode: "0644", "644", "0o755" (octal text).
std::optional<mode_t> parse_mode(const std::string& text);
/// "0644" for 0644.
std::string format_mode(mode_t mode);
/// The process umask, read without changing it (Linux /proc/self/status; 022 when
/// unreadable): `umask(0)` and back would race with files other threads create.
unsigned current_umask();

std::string read_file(const std::string& path);
/// Writes `data` with permissions `mode` (applied exactly, umask aside). When
/// `atomic`, writes a temporary file beside `path`, fsyncs it and renames it
/// over `path`, so readers see the old or the new content, never a mix.
/// `exclusive` (atomic only) fails with EEXIST instead when `path` exists.
void write_file(const std::string& path, const std::string& data, mode_t mode, bool atomic,
                bool exclusive = false);
void append_file(const std::string& path, const std::string& data, mode_t mode);
/// Creates `path` and its missing parents; an existing directory is fine.
void mkdir_p(const std::string& path, mode_t mode);
bool exists(const std::string& path);

struct Stat {
  std::uint64_t size = 0;
  double mtime = 0;  // seconds since the epoch, with fraction
  mode_t mode = 0;   // permission bits (07777)
  std::string type;  // file, dir, link, other
};
/// lstat (a symlink reports "link") unless `follow`.
Stat stat(const std::string& path, bool follow);
/// Names in `dir`, sorted, without "." and "..".
std::vector<std::string> list(const std::string& dir);
/// Removes a file, symlink or empty directory (any directory when
/// `recursive`). A missing path is not an error: returns false.
bool remove(const std::string& path, bool recursive);
/// Creates a fresh directory `<TMPDIR or /tmp>/<prefix>XXXXXX` (mode 0700).
std::string make_tempdir(const std::string& prefix);
void chmod(const std::string& path, mode_t mode);
std::string realpath(const std::string& path);

/// Paths matching `pattern`, sorted. `*` and `?` match within one path
/// component (not a leading '.'), `[...]` a character class, and a component
/// that is exactly `**` matches zero or more directories.
std::vector<std::string> glob(const std::string& pattern);

/// Hex digest of the file, read in chunks; stops with an Error when `tok` is
/// cancelled. `algo` is an OpenSSL digest name: sha256, sha512, sha1, md5...
std::string hash_file(const std::string& path, const std::string& algo,
                      const CancelToken* tok = nullptr);
std::string hash_string(const std::string& data, const std::string& algo);

/// POSIX-like path strings: basename("/a/b/") == "b", dirname("a") == ".".
std::string basename(const std::string& path);
std::string dirname(const std::string& path);
/// Joins with single slashes; a later absolute part does not reset the path.
std::string join(const std::vector<std::string>& parts);

}  // namespace ephrun::sys
