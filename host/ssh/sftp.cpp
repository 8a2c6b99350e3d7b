#include "ssh/sftp.hpp"

#include <fcntl.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "ssh/extract.hpp"
#include "ssh/session_impl.hpp"
#include "ssh/util.hpp"
#include "sys/fs.hpp"

namespace ephrun::ssh {

LIBSSH2_SFTP* Session::Impl::sftp_session(Clock::time_point deadline, const CancelToken& token) {
  require_open();
  while (!sftp) {
    sftp = libssh2_sftp_init(s);
    if (sftp) break;
    if (libssh2_session_last_errno(s) != LIBSSH2_ERROR_EAGAIN)
      fail("cannot start SFTP (is the sftp subsystem enabled in sshd_config?)");
    wait_socket(deadline, token, "starting SFTP");
  }
  return sftp;
}

namespace {

constexpr auto kNoDeadline = Clock::time_point::max();
constexpr std::size_t kChunk = 1 << 20;

std::string sftp_status_text(unsigned long code) {
  switch (code) {
    case LIBSSH2_FX_NO_SUCH_FILE:
      return "no such file or directory";
    case LIBSSH2_FX_PERMISSION_DENIED:
      return "permission denied";
    case LIBSSH2_FX_FILE_ALREADY_EXISTS:
      return "file already exists";
    case LIBSSH2_FX_NO_SPACE_ON_FILESYSTEM:
    case LIBSSH2_FX_QUOTA_EXCEEDED:
      return "no space left";
    case LIBSSH2_FX_NOT_A_DIRECTORY:
      return "not a directory";
    case LIBSSH2_FX_FAILURE:
      return "failure";
    default:
      return "SFTP status " + std::to_string(code);
  }
}

struct Ctx {
  Session& session;
  Session::Impl& im;
  LIBSSH2_SFTP* sftp;
  const CancelToken& token;

  Ctx(Session& s, const CancelToken& t)
      : session(s), im(s.impl()), sftp(im.sftp_session(kNoDeadline, t)), token(t) {}

  [[noreturn]] void fail(const std::string& what, const std::string& path) const {
    int e = libssh2_session_last_errno(im.s);
    if (e == LIBSSH2_ERROR_SFTP_PROTOCOL)
      throw Error(ErrorKind::other, what + " " + path + " on " + session.label() + ": " +
                                        sftp_status_text(libssh2_sftp_last_error(sftp)));
    im.fail(what + " " + path);
  }
  unsigned long status() const {
    return libssh2_session_last_errno(im.s) == LIBSSH2_ERROR_SFTP_PROTOCOL
               ? libssh2_sftp_last_error(sftp)
               : 0;
  }
  template <class F>
  int call(F&& f, const std::string& what) {
    return im.retry(std::forward<F>(f), kNoDeadline, token, what);
  }
  LIBSSH2_SFTP_HANDLE* open(const std::string& path, unsigned long flags, long mode) {
    for (;;) {
      auto* h = libssh2_sftp_open_ex(sftp, path.c_str(), static_cast<unsigned>(path.size()), flags,
                                     mode, LIBSSH2_SFTP_OPENFILE);
      if (h) return h;
      if (libssh2_session_last_errno(im.s) != LIBSSH2_ERROR_EAGAIN) return nullptr;
      im.wait_socket(kNoDeadline, token, "SFTP open");
    }
  }
  void close(LIBSSH2_SFTP_HANDLE* h) {
    try {
      call([&] { return libssh2_sftp_close_handle(h); }, "SFTP close");
    } catch (...) {
    }
  }
  std::optional<LIBSSH2_SFTP_ATTRIBUTES> lstat(const std::string& path, bool follow = false) {
    LIBSSH2_SFTP_ATTRIBUTES a{};
    int rc = call(
        [&] {
          return libssh2_sftp_stat_ex(sftp, path.c_str(), static_cast<unsigned>(path.size()),
                                      follow ? LIBSSH2_SFTP_STAT : LIBSSH2_SFTP_LSTAT, &a);
        },
        "SFTP stat");
    if (rc == 0) return a;
    if (status() == LIBSSH2_FX_NO_SUCH_FILE) return std::nullopt;
    fail("cannot stat", path);
  }
};

std::string temp_name_for(const std::string& path) {
  unsigned char r[6];
  RAND_bytes(r, sizeof r);
  auto slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "" : path.substr(0, slash + 1);
  std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  return dir + "." + base + ".ephrun-tmp-" + hex(std::string_view(reinterpret_cast<char*>(r), 6));
}

// Writes everything `next` yields to a temporary file, then renames it over `remote`.
template <class Next>
std::uint64_t atomic_put(Ctx& c, const std::string& remote, unsigned mode, std::int64_t mtime,
                         Next&& next) {
  std::string tmp = temp_name_for(remote);
  auto* h = c.open(tmp, LIBSSH2_FXF_WRITE | LIBSSH2_FXF_CREAT | LIBSSH2_FXF_TRUNC, 0600);
  if (!h) c.fail("cannot create", tmp);
  std::uint64_t total = 0;
  try {
    std::string buf;
    while (next(buf)) {
      std::size_t off = 0;
      while (off < buf.size()) {
        if (c.token.cancelled()) c.im.wait_socket(kNoDeadline, c.token, "SFTP upload");
        ssize_t n = libssh2_sftp_write(h, buf.data() + off, buf.size() - off);
        if (n == LIBSSH2_ERROR_EAGAIN) {
          c.im.wait_socket(kNoDeadline, c.token, "SFTP upload");
          continue;
        }
        if (n < 0) c.fail("cannot write", tmp);
        off += static_cast<std::size_t>(n);
      }
      total += buf.size();
      buf.clear();
    }
    LIBSSH2_SFTP_ATTRIBUTES a{};
    a.flags = LIBSSH2_SFTP_ATTR_PERMISSIONS;
    a.permissions = mode & 07777;
    if (mtime > 0) {
      a.flags |= LIBSSH2_SFTP_ATTR_ACMODTIME;
      a.atime = a.mtime = static_cast<unsigned long>(mtime);
    }
    if (c.call([&] { return libssh2_sftp_fstat_ex(h, &a, 1); }, "SFTP setstat") != 0)
      c.fail("cannot set mode of", tmp);
  } catch (...) {
    c.close(h);
    c.call(
        [&] {
          return libssh2_sftp_unlink_ex(c.sftp, tmp.c_str(), static_cast<unsigned>(tmp.size()));
        },
        "SFTP unlink");
    throw;
  }
  c.close(h);
  int rc = c.call(
      [&] {
        return libssh2_sftp_rename_ex(c.sftp, tmp.c_str(), static_cast<unsigned>(tmp.size()),
                                      remote.c_str(), static_cast<unsigned>(remote.size()),
                                      LIBSSH2_SFTP_RENAME_OVERWRITE | LIBSSH2_SFTP_RENAME_ATOMIC |
                                          LIBSSH2_SFTP_RENAME_NATIVE);
      },
      "SFTP rename");
  if (rc != 0) {
    // SFTP v3 rename (OpenSSH) refuses an existing target; rename(2) through mv
    // replaces it atomically.
    try {
      c.im.capture("mv -f -- " + shell_quote(tmp) + " " + shell_quote(remote), "rename " + remote,
                   c.token);
    } catch (...) {
      c.call(
          [&] {
            return libssh2_sftp_unlink_ex(c.sftp, tmp.c_str(), static_cast<unsigned>(tmp.size()));
          },
          "SFTP unlink");
      throw;
    }
  }
  return total;
}

}  // namespace

std::uint64_t upload(Session& s, const std::string& local, const std::string& remote,
                     const CancelToken& token) {
  Ctx c(s, token);
  int fd = ::open(local.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(ErrorKind::other, "cannot read " + local + ": " + std::strerror(errno));
  struct FdGuard {
    int fd;
    ~FdGuard() { ::close(fd); }
  } g{fd};
  struct stat st {};
  ::fstat(fd, &st);
  return atomic_put(c, remote, st.st_mode & 07777, st.st_mtime, [&](std::string& buf) {
    buf.resize(kChunk);
    ssize_t n;
    do n = ::read(fd, buf.data(), kChunk);
    while (n < 0 && errno == EINTR);
    if (n < 0) throw Error(ErrorKind::other, "cannot read " + local + ": " + std::strerror(errno));
    buf.resize(static_cast<std::size_t>(n));
    return n > 0;
  });
}

void put_string(Session& s, const std::string& remote, std::string_view data, unsigned mode,
                const CancelToken& token) {
  Ctx c(s, token);
  bool done = false;
  atomic_put(c, remote, mode, 0, [&](std::string& buf) {
    if (done) return false;
    buf.assign(data);
    done = true;
    return true;
  });
}

namespace {
template <class Sink>
LIBSSH2_SFTP_ATTRIBUTES read_remote(Ctx& c, const std::string& remote, Sink&& sink) {
  auto* h = c.open(remote, LIBSSH2_FXF_READ, 0);
  if (!h) c.fail("cannot open", remote);
  LIBSSH2_SFTP_ATTRIBUTES a{};
  try {
    c.call([&] { return libssh2_sftp_fstat_ex(h, &a, 0); }, "SFTP stat");
    std::vector<char> buf(kChunk);
    for (;;) {
      if (c.token.cancelled()) c.im.wait_socket(kNoDeadline, c.token, "SFTP download");
      ssize_t n = libssh2_sftp_read(h, buf.data(), buf.size());
      if (n == LIBSSH2_ERROR_EAGAIN) {
        c.im.wait_socket(kNoDeadline, c.token, "SFTP download");
        continue;
      }
      if (n < 0) c.fail("cannot read", remote);
      if (n == 0) break;
      sink(std::string_view(buf.data(), static_cast<std::size_t>(n)));
    }
  } catch (...) {
    c.close(h);
    throw;
  }
  c.close(h);
  return a;
}
}  // namespace

std::string get_string(Session& s, const std::string& remote, const CancelToken& token) {
  Ctx c(s, token);
  std::string out;
  read_remote(c, remote, [&](std::string_view d) { out.append(d); });
  return out;
}

std::uint64_t download(Session& s, const std::string& remote, const std::string& local,
                       const CancelToken& token) {
  Ctx c(s, token);
  auto slash = local.rfind('/');
  std::string tmp = (slash == std::string::npos ? std::string() : local.substr(0, slash + 1)) +
                    "." + (slash == std::string::npos ? local : local.substr(slash + 1)) +
                    ".ephrun-tmp-" + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) throw Error(ErrorKind::other, "cannot write " + tmp + ": " + std::strerror(errno));
  std::uint64_t total = 0;
  LIBSSH2_SFTP_ATTRIBUTES a{};
  try {
    a = read_remote(c, remote, [&](std::string_view d) {
      while (!d.empty()) {
        ssize_t n = ::write(fd, d.data(), d.size());
        if (n < 0 && errno == EINTR) continue;
        if (n < 0)
          throw Error(ErrorKind::other, "cannot write " + tmp + ": " + std::strerror(errno));
        d.remove_prefix(static_cast<std::size_t>(n));
        total += static_cast<std::uint64_t>(n);
      }
    });
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  // The remote's mode is a hint, not an order: setuid/setgid/sticky never come along
  // (a root-owned 4755 file would be a root shell here) and the umask applies.
  if (a.flags & LIBSSH2_SFTP_ATTR_PERMISSIONS)
    ::fchmod(fd, static_cast<mode_t>(a.permissions & 0777 & ~sys::current_umask()));
  if (a.flags & LIBSSH2_SFTP_ATTR_ACMODTIME) {
    timespec ts[2] = {{static_cast<time_t>(a.atime), 0}, {static_cast<time_t>(a.mtime), 0}};
    ::futimens(fd, ts);
  }
  if (::close(fd) != 0 || ::rename(tmp.c_str(), local.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    throw Error(ErrorKind::other, "cannot write " + local + ": " + std::strerror(e));
  }
  return total;
}

std::optional<RemoteStat> stat(Session& s, const std::string& remote, const CancelToken& token) {
  Ctx c(s, token);
  auto a = c.lstat(remote);
  if (!a) return std::nullopt;
  RemoteStat st;
  unsigned long m = a->permissions;
  if (LIBSSH2_SFTP_S_ISREG(m))
    st.type = RemoteStat::Type::file;
  else if (LIBSSH2_SFTP_S_ISDIR(m))
    st.type = RemoteStat::Type::dir;
  else if (LIBSSH2_SFTP_S_ISLNK(m))
    st.type = RemoteStat::Type::symlink;
  st.mode = static_cast<unsigned>(m & 07777);
  st.size = a->filesize;
  st.mtime = static_cast<std::int64_t>(a->mtime);
  return st;
}

void mkdir_p(Session& s, const std::string& remote, unsigned mode, const CancelToken& token) {
  Ctx c(s, token);
  std::size_t pos = 0;
  while (pos != std::string::npos) {
    pos = remote.find('/', pos + 1);
    std::string part = remote.substr(0, pos);
    if (part.empty() || part == "/") continue;
    auto a = c.lstat(part, true);
    if (a) {
      if (!LIBSSH2_SFTP_S_ISDIR(a->permissions))
        throw Error(ErrorKind::other, "cannot create directory " + remote + " on " + s.label() +
                                          ": " + part + " exists and is not a directory");
      continue;
    }
    int rc = c.call(
        [&] {
          return libssh2_sftp_mkdir_ex(c.sftp, part.c_str(), static_cast<unsigned>(part.size()),
                                       static_cast<long>(mode));
        },
        "SFTP mkdir");
    if (rc != 0 && !c.lstat(part, true)) c.fail("cannot create directory", part);
  }
}

bool remove(Session& s, const std::string& remote, const CancelToken& token) {
  Ctx c(s, token);
  auto a = c.lstat(remote);
  if (!a) return false;
  int rc;
  if (LIBSSH2_SFTP_S_ISDIR(a->permissions))
    rc = c.call(
        [&] {
          return libssh2_sftp_rmdir_ex(c.sftp, remote.c_str(),
                                       static_cast<unsigned>(remote.size()));
        },
        "SFTP rmdir");
  else
    rc = c.call(
        [&] {
          return libssh2_sftp_unlink_ex(c.sftp, remote.c_str(),
                                        static_cast<unsigned>(remote.size()));
        },
        "SFTP unlink");
  if (rc != 0) c.fail("cannot remove", remote);
  return true;
}

}  // namespace ephrun::ssh
