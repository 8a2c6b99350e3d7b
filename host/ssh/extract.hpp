// Internal to host/ssh: writing a tar stream from an untrusted remote to disk. The
// stream is parsed by libarchive (fuzzed upstream, and here by fuzz/extract_fuzz.cpp)
// and written through archive_write_disk with its secure-path checks; ownership,
// setuid/setgid/sticky bits, ACLs, xattrs and device nodes never reach the disk.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "runtime/cancel.hpp"

struct archive;

namespace ephrun::ssh {

struct ExtractOptions {
  /// When set, the stream must hold exactly one regular file of this name (a
  /// single-file fetch); it is written atomically as `rename_to`.
  std::string only_file;
  std::string rename_to;
  /// Named in error messages ("fetch host:path").
  std::string what = "fetch";
  std::string dest;  ///< the local destination, for messages
  CancelToken token;
};

struct ExtractCounters {
  std::atomic<std::uint64_t> files{0};  ///< entries written that are not directories
  std::atomic<std::uint64_t> bytes{0};  ///< file data bytes written
  // Worker thread only: the stream read while libarchive parses one entry's headers.
  bool in_header = false;
  std::uint64_t header_bytes = 0;
};

/// Extracts every entry `in` (an opened libarchive reader) yields into the directory
/// `dirfd`. The calling thread gets a private working directory and locale for the
/// duration (unshare(CLONE_FS), uselocale): libarchive resolves every path against the
/// cwd, and chdirs itself for long paths. Throws ssh::Error naming the entry and the
/// reason on the first thing it refuses: a path that leaves the directory (`..`,
/// absolute, through a symlink, a hard link through a symlink) or a corrupt or
/// oversized header. Fifos, sockets and device nodes are skipped with a warning.
void extract_archive(struct archive* in, int dirfd, const ExtractOptions& o, ExtractCounters& n);

/// A tar stream arriving in pieces, extracted on a worker thread as it comes. At most
/// kQueueLimit bytes wait in between, so memory stays bounded whatever the stream.
class TarExtractor {
 public:
  static constexpr std::size_t kQueueLimit = 4u << 20;
  /// The most stream one entry's headers may take. libarchive limits each pax or GNU
  /// long-name header to 1 MiB but not a pax 1.0 sparse map, which heads the data and
  /// costs ~12 bytes of memory per byte (a 48-byte region per "0\n0\n").
  static constexpr std::uint64_t kHeaderBudget = 4u << 20;

  /// Starts the worker; `dirfd` is duplicated.
  TarExtractor(int dirfd, ExtractOptions o);
  TarExtractor(const TarExtractor&) = delete;
  TarExtractor& operator=(const TarExtractor&) = delete;
  /// Stops an unfinished extraction and waits for the worker.
  ~TarExtractor();

  /// Hands over the next bytes; blocks while the queue is full. Throws the worker's
  /// error once it has failed (so the transfer stops at once).
  void feed(std::string_view d);
  /// End of stream: waits for the worker and throws its error, if any.
  void finish();
  [[nodiscard]] const ExtractCounters& counters() const { return n_; }

 private:
  static ssize_t read_cb(struct archive* a, void* self, const void** buf);
  void run();

  int dirfd_ = -1;
  ExtractOptions o_;
  ExtractCounters n_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::string> q_;
  std::size_t queued_ = 0;
  std::string cur_;  // the piece libarchive is reading
  bool eof_ = false, abort_ = false, done_ = false;
  std::exception_ptr err_;
  std::thread worker_;
};

}  // namespace ephrun::ssh
