// Internal to host/ssh: a streaming tar writer (ustar + pax extended headers) for sync.
// Streams from remotes are read by libarchive (ssh/extract.hpp), never by hand.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace ephrun::ssh::tar {

enum class Type : char { file = '0', hardlink = '1', symlink = '2', dir = '5', other = '?' };

struct Entry {
  std::string path;  ///< relative, '/'-separated, no trailing '/'
  Type type = Type::file;
  unsigned mode = 0644;
  std::uint64_t size = 0;  ///< file data size
  std::int64_t mtime_sec = 0;
  long mtime_nsec = 0;
  std::string link;  ///< symlink / hardlink target
};

/// Appends the header block(s) for `e` to `out` (pax 'x' header first when a name,
/// link or size does not fit ustar or the mtime has a fraction).
void write_header(std::string& out, const Entry& e);
/// Appends zero padding after `size` bytes of file data.
void write_padding(std::string& out, std::uint64_t size);
/// Appends the end-of-archive marker (two zero blocks).
void write_end(std::string& out);

/// Splits "SECONDS[.FRACTION]" (pax `mtime`, `find -printf %T@`) into seconds and nanoseconds.
void parse_time(std::string_view v, std::int64_t& sec, long& nsec);

}  // namespace ephrun::ssh::tar
