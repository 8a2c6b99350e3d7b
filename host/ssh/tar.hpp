// Internal to host/ssh: a streaming tar writer (ustar + pax extended headers) and a
// streaming tar reader (ustar, pax, GNU long names) for sync and fetch.
#pragma once

#include <cstdint>
#include <functional>
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

/// Incremental reader: feed() bytes as they arrive. For each entry `on_entry` is
/// called with its header; for files, `on_data` receives the content in pieces and
/// `on_end` marks its end.
class Reader {
 public:
  std::function<void(const Entry&)> on_entry;
  std::function<void(std::string_view)> on_data;
  std::function<void()> on_end;

  void feed(std::string_view d);
  [[nodiscard]] bool finished() const { return zero_blocks_ >= 1; }

 private:
  void header(const char* block);
  void finish_entry();

  std::string block_;
  Entry cur_;
  enum class State { header, data, pax, longname, longlink, skip } state_ = State::header;
  std::uint64_t left_ = 0, pad_ = 0;
  std::string meta_;
  std::string next_path_, next_link_;
  bool has_next_size_ = false, has_next_mtime_ = false;
  std::uint64_t next_size_ = 0;
  std::int64_t next_mtime_sec_ = 0;
  long next_mtime_nsec_ = 0;
  int zero_blocks_ = 0;
};

/// Splits "SECONDS[.FRACTION]" (pax `mtime`, `find -printf %T@`) into seconds and nanoseconds.
void parse_time(std::string_view v, std::int64_t& sec, long& nsec);

}  // namespace ephrun::ssh::tar
