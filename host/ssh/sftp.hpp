// File operations over SFTP on an open Session. Uploads and downloads are atomic:
// the data goes to a temporary name in the target directory, then is renamed.
// Relative remote paths are relative to the login directory.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "runtime/cancel.hpp"
#include "ssh/session.hpp"

namespace ephrun::ssh {

struct RemoteStat {
  enum class Type { file, dir, symlink, other } type = Type::other;
  std::uint64_t size = 0;
  unsigned mode = 0;       ///< permission bits (07777)
  std::int64_t mtime = 0;  ///< seconds since the epoch
};

/// Copies a local file to `remote` (atomic), keeping its permission bits and mtime.
/// Returns the bytes sent. Throws ssh::Error.
std::uint64_t upload(Session& s, const std::string& local, const std::string& remote,
                     const CancelToken& token = {});
/// Copies a remote file to `local` (atomic), keeping its mtime and its permission bits
/// without setuid/setgid/sticky, less the umask.
std::uint64_t download(Session& s, const std::string& remote, const std::string& local,
                       const CancelToken& token = {});
/// Writes `data` to `remote` (atomic) with `mode`.
void put_string(Session& s, const std::string& remote, std::string_view data, unsigned mode = 0644,
                const CancelToken& token = {});
/// Reads a whole remote file.
std::string get_string(Session& s, const std::string& remote, const CancelToken& token = {});
/// Creates `remote` and its missing parents (like mkdir -p).
void mkdir_p(Session& s, const std::string& remote, unsigned mode = 0755,
             const CancelToken& token = {});
/// lstat of `remote`; nullopt when it does not exist.
std::optional<RemoteStat> stat(Session& s, const std::string& remote,
                               const CancelToken& token = {});
/// Removes a file, symlink or empty directory. Returns false when it did not exist.
bool remove(Session& s, const std::string& remote, const CancelToken& token = {});

}  // namespace ephrun::ssh
