#include "ssh/extract.hpp"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <locale.h>
#include <sched.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "ssh/error.hpp"

namespace ephrun::ssh {
namespace {

// Not ARCHIVE_EXTRACT_PERM: without it libarchive drops setuid/setgid/sticky and
// applies the umask to every mode. Not OWNER, ACL, XATTR, FFLAGS: a remote must not
// choose owners, capabilities (security.capability) or immutable flags here.
constexpr int kDiskFlags = ARCHIVE_EXTRACT_TIME | ARCHIVE_EXTRACT_SECURE_SYMLINKS |
                           ARCHIVE_EXTRACT_SECURE_NODOTDOT |
                           ARCHIVE_EXTRACT_SECURE_NOABSOLUTEPATHS | ARCHIVE_EXTRACT_SPARSE;

struct ArchiveFree {
  void operator()(struct archive* a) const { archive_write_free(a); }
};

// Where libarchive resolves paths: normally the calling thread's own cwd, set to dirfd
// until destruction (the previous one comes back). Where unshare(CLONE_FS) is refused
// (Docker's default seccomp profile allows it only with CAP_SYS_ADMIN), the process cwd
// cannot be moved under other threads' feet: every path is then prefixed with the
// destination's real absolute path instead, and the checks libarchive would make on
// the relative path (absolute, too long) are made here.
class PathBase {
 public:
  PathBase(int dirfd, const std::string& what) : what_(what) {
    // Shares nothing with other threads from here on: not the cwd, not the umask that
    // archive_write_disk reads by setting it to 0 and back.
    // EPHRUN_EXTRACT_NO_UNSHARE=1 takes the fallback on purpose (the tests run both).
    const char* no = std::getenv("EPHRUN_EXTRACT_NO_UNSHARE");
    bool try_unshare = !no || !*no || std::string_view(no) == "0";
    if (try_unshare && ::unshare(CLONE_FS) == 0) {
      old_ = ::open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      if (::fchdir(dirfd) != 0) {
        int e = errno;
        if (old_ >= 0) ::close(old_);
        throw Error(ErrorKind::other, what + ": cannot enter the destination: " + std::strerror(e));
      }
      private_ = true;
      return;
    }
    int why = errno;
    char buf[PATH_MAX];
    ssize_t n = ::readlink(("/proc/self/fd/" + std::to_string(dirfd)).c_str(), buf, sizeof buf);
    if (n <= 0 || buf[0] != '/' || static_cast<std::size_t>(n) >= sizeof buf)
      throw Error(ErrorKind::other, what + ": cannot find the destination's path");
    prefix_.assign(buf, static_cast<std::size_t>(n));
    if (prefix_ != "/") prefix_ += '/';
    spdlog::debug("{}: extracting with absolute paths under {} (no private cwd: {})", what, prefix_,
                  try_unshare ? std::strerror(why) : "EPHRUN_EXTRACT_NO_UNSHARE");
  }
  PathBase(const PathBase&) = delete;
  PathBase& operator=(const PathBase&) = delete;
  ~PathBase() {
    if (old_ >= 0) {
      [[maybe_unused]] int rc = ::fchdir(old_);
      ::close(old_);
    }
  }
  /// SECURE_NOABSOLUTEPATHS refuses every prefixed path, so it is checked here instead.
  [[nodiscard]] int flags(int f) const {
    return private_ ? f : f & ~ARCHIVE_EXTRACT_SECURE_NOABSOLUTEPATHS;
  }
  /// `rel` as archive_write_disk must see it.
  [[nodiscard]] std::string path(const char* rel, const std::string& name) const {
    std::string p = rel ? rel : "";
    if (private_) return p;
    if (!p.empty() && p[0] == '/')
      throw Error(ErrorKind::other, what_ + ": refusing " + name + " (Path is absolute)");
    // Past PATH_MAX libarchive would chdir, which here would move every thread.
    if (prefix_.size() + p.size() >= PATH_MAX)
      throw Error(ErrorKind::other, what_ + ": refusing " + name + " (path too long)");
    return prefix_ + p;
  }
  [[nodiscard]] bool rewrites() const { return !private_; }

 private:
  std::string what_, prefix_;
  int old_ = -1;
  bool private_ = false;
};

// Names from pax headers are UTF-8; with a UTF-8 locale libarchive keeps them as they
// are instead of warning that they cannot be converted to "C".
class Utf8Locale {
 public:
  Utf8Locale() {
    loc_ = ::newlocale(LC_CTYPE_MASK, "C.UTF-8", nullptr);
    if (loc_) old_ = ::uselocale(loc_);
  }
  Utf8Locale(const Utf8Locale&) = delete;
  Utf8Locale& operator=(const Utf8Locale&) = delete;
  ~Utf8Locale() {
    if (!loc_) return;
    ::uselocale(old_);
    ::freelocale(loc_);
  }

 private:
  locale_t loc_ = nullptr, old_ = nullptr;
};

std::string err_of(struct archive* a) {
  const char* e = archive_error_string(a);
  return e ? e : "unknown error";
}

// "./a/b/" -> "a/b"; "./" and "." -> "".
std::string normal_name(const char* p) {
  std::string n = p ? p : "";
  while (n.rfind("./", 0) == 0) n.erase(0, 2);
  while (!n.empty() && n.back() == '/') n.pop_back();
  if (n == ".") n.clear();
  return n;
}

// A remote's name as it may appear in a message: control bytes (escape sequences,
// newlines that fake log lines) are shown as \xNN.
std::string shown(const std::string& name) {
  std::string out;
  for (unsigned char c : name) {
    if (c >= 0x20 && c != 0x7f) {
      out += static_cast<char>(c);
      continue;
    }
    char buf[5];
    std::snprintf(buf, sizeof buf, "\\x%02x", c);
    out += buf;
  }
  return out;
}

void copy_data(struct archive* in, struct archive* out, const std::string& name,
               const ExtractOptions& o, ExtractCounters& n) {
  for (;;) {
    if (o.token.cancelled()) throw Error(ErrorKind::cancelled, o.what + " was cancelled");
    const void* buf = nullptr;
    std::size_t size = 0;
    la_int64_t off = 0;
    int r = archive_read_data_block(in, &buf, &size, &off);
    if (r == ARCHIVE_EOF) return;
    if (r < ARCHIVE_WARN)
      throw Error(ErrorKind::other, o.what + ": bad tar stream at " + name + ": " + err_of(in));
    // The offset keeps the holes of a sparse entry as holes.
    if (archive_write_data_block(out, buf, size, off) < ARCHIVE_WARN)
      throw Error(ErrorKind::other, o.what + ": cannot write " + name + ": " + err_of(out));
    n.bytes += size;
  }
}

}  // namespace

void extract_archive(struct archive* in, int dirfd, const ExtractOptions& o, ExtractCounters& n) {
  PathBase base(dirfd, o.what);
  Utf8Locale utf8;
  std::unique_ptr<struct archive, ArchiveFree> out(archive_write_disk_new());
  if (!out) throw Error(ErrorKind::other, o.what + ": out of memory");
  int flags = kDiskFlags;
  if (!o.only_file.empty()) flags |= ARCHIVE_EXTRACT_SAFE_WRITES;
  archive_write_disk_set_options(out.get(), base.flags(flags));

  bool seen_file = false;
  for (;;) {
    if (o.token.cancelled()) throw Error(ErrorKind::cancelled, o.what + " was cancelled");
    struct archive_entry* e = nullptr;
    n.in_header = true;
    n.header_bytes = 0;
    int r = archive_read_next_header(in, &e);
    n.in_header = false;
    if (r == ARCHIVE_EOF) break;
    if (r < ARCHIVE_WARN) throw Error(ErrorKind::other, o.what + ": bad tar stream: " + err_of(in));
    std::string name = shown(normal_name(archive_entry_pathname(e)));
    if (r == ARCHIVE_WARN) spdlog::warn("{}: {}: {}", o.what, name, err_of(in));
    auto type = archive_entry_filetype(e);
    bool hardlink = archive_entry_hardlink(e) != nullptr;

    if (!o.only_file.empty()) {
      if (seen_file || normal_name(archive_entry_pathname(e)) != o.only_file || type != AE_IFREG ||
          hardlink)
        throw Error(ErrorKind::other,
                    o.what + ": expected only the regular file " + o.only_file + ", got " + name);
      seen_file = true;
      archive_entry_set_pathname(e, o.rename_to.c_str());
    } else if (normal_name(archive_entry_pathname(e)).empty()) {
      // The top directory: the destination keeps the mode and owner it has.
      continue;
    }
    if (!hardlink && type != AE_IFREG && type != AE_IFDIR && type != AE_IFLNK) {
      spdlog::warn("{}: skipped {}: not a file, directory or symlink", o.what, name);
      continue;
    }
    archive_entry_set_perm(e, archive_entry_perm(e) & 0777);
    archive_entry_acl_clear(e);
    archive_entry_xattr_clear(e);
    archive_entry_set_fflags(e, 0, 0);
    if (base.rewrites()) {
      archive_entry_copy_pathname(e, base.path(archive_entry_pathname(e), name).c_str());
      if (hardlink)
        archive_entry_copy_hardlink(e, base.path(archive_entry_hardlink(e), name).c_str());
    }

    r = archive_write_header(out.get(), e);
    if (r < ARCHIVE_WARN)
      throw Error(ErrorKind::other, o.what + ": refusing " + name + " (" + err_of(out.get()) +
                                        "): the remote's tar stream points outside " + o.dest +
                                        " or is broken; the fetch stopped there");
    if (r == ARCHIVE_WARN) spdlog::warn("{}: {}: {}", o.what, name, err_of(out.get()));
    if (archive_entry_size(e) > 0) copy_data(in, out.get(), name, o, n);
    if (archive_write_finish_entry(out.get()) < ARCHIVE_WARN)
      throw Error(ErrorKind::other, o.what + ": cannot finish " + name + ": " + err_of(out.get()));
    if (type != AE_IFDIR) ++n.files;
  }
  if (!o.only_file.empty() && !seen_file)
    throw Error(ErrorKind::other, o.what + ": the stream held no file " + o.only_file);
  // Directory modes and times are set here, deepest first, without following symlinks.
  if (archive_write_close(out.get()) < ARCHIVE_WARN)
    throw Error(ErrorKind::other, o.what + ": " + err_of(out.get()));
}

// ---- TarExtractor ------------------------------------------------------------------

TarExtractor::TarExtractor(int dirfd, ExtractOptions o) : o_(std::move(o)) {
  dirfd_ = ::fcntl(dirfd, F_DUPFD_CLOEXEC, 0);
  if (dirfd_ < 0) throw Error(ErrorKind::other, o_.what + ": " + std::strerror(errno));
  worker_ = std::thread([this] { run(); });
}

TarExtractor::~TarExtractor() {
  {
    std::lock_guard lk(mu_);
    abort_ = true;
  }
  cv_.notify_all();
  if (worker_.joinable()) worker_.join();
  ::close(dirfd_);
}

ssize_t TarExtractor::read_cb(struct archive* a, void* self, const void** buf) {
  auto* t = static_cast<TarExtractor*>(self);
  std::unique_lock lk(t->mu_);
  t->cv_.wait(lk, [t] { return !t->q_.empty() || t->eof_ || t->abort_; });
  if (t->abort_) {
    archive_set_error(a, ECANCELED, "stopped");
    return -1;
  }
  if (t->q_.empty()) return 0;
  t->cur_ = std::move(t->q_.front());
  t->q_.pop_front();
  t->queued_ -= t->cur_.size();
  lk.unlock();
  t->cv_.notify_all();
  if (t->n_.in_header && (t->n_.header_bytes += t->cur_.size()) > kHeaderBudget) {
    archive_set_error(a, EFBIG, "an entry's headers (or sparse map) exceed %u MiB",
                      static_cast<unsigned>(kHeaderBudget >> 20));
    return -1;
  }
  *buf = t->cur_.data();
  return static_cast<ssize_t>(t->cur_.size());
}

void TarExtractor::run() {
  std::exception_ptr err;
  try {
    std::unique_ptr<struct archive, int (*)(struct archive*)> in(archive_read_new(),
                                                                 &archive_read_free);
    if (!in) throw Error(ErrorKind::other, o_.what + ": out of memory");
    // Only tar (pax, ustar, GNU), no decompression: nothing else is expected.
    archive_read_support_format_tar(in.get());
    if (archive_read_open(in.get(), this, nullptr, &TarExtractor::read_cb, nullptr) != ARCHIVE_OK)
      throw Error(ErrorKind::other, o_.what + ": bad tar stream: " + err_of(in.get()));
    extract_archive(in.get(), dirfd_, o_, n_);
  } catch (...) {
    err = std::current_exception();
  }
  {
    std::lock_guard lk(mu_);
    err_ = err;
    done_ = true;
    q_.clear();
    queued_ = 0;
  }
  cv_.notify_all();
}

void TarExtractor::feed(std::string_view d) {
  if (d.empty()) return;
  std::unique_lock lk(mu_);
  cv_.wait(lk, [this] { return queued_ < kQueueLimit || done_; });
  if (err_) std::rethrow_exception(err_);
  if (done_) return;  // past the end-of-archive marker: padding, or junk
  q_.emplace_back(d);
  queued_ += d.size();
  lk.unlock();
  cv_.notify_all();
}

void TarExtractor::finish() {
  {
    std::lock_guard lk(mu_);
    eof_ = true;
  }
  cv_.notify_all();
  if (worker_.joinable()) worker_.join();
  if (err_) std::rethrow_exception(err_);
}

}  // namespace ephrun::ssh
