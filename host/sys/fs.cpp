#include "sys/fs.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <ftw.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>

namespace ephrun::sys {

namespace {

struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int release() {
    int f = fd;
    fd = -1;
    return f;
  }
};

void write_all(int fd, const std::string& data, const std::string& path) {
  const char* p = data.data();
  std::size_t left = data.size();
  while (left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("write", path, errno);
    }
    p += n;
    left -= static_cast<std::size_t>(n);
  }
}

void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;  // best effort: the rename itself already happened
  ::fsync(fd);
  ::close(fd);
}

std::string hex(const unsigned char* d, unsigned n) {
  static const char* digits = "0123456789abcdef";
  std::string out(static_cast<std::size_t>(n) * 2, '0');
  for (unsigned i = 0; i < n; ++i) {
    out[2 * i] = digits[d[i] >> 4];
    out[2 * i + 1] = digits[d[i] & 15];
  }
  return out;
}

const EVP_MD* digest(const std::string& algo) {
  const EVP_MD* md = EVP_get_digestbyname(algo.c_str());
  if (!md) throw Error("unknown hash algorithm '" + algo + "' (try sha256, sha512, sha1, md5)", 0);
  return md;
}

struct MdCtx {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  ~MdCtx() { EVP_MD_CTX_free(ctx); }
  MdCtx() = default;
  MdCtx(const MdCtx&) = delete;
  MdCtx& operator=(const MdCtx&) = delete;
};

bool has_magic(const std::string& s) { return s.find_first_of("*?[") != std::string::npos; }

bool is_dir(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string child(const std::string& base, const std::string& name) {
  if (base.empty()) return name;
  if (base.back() == '/') return base + name;
  return base + "/" + name;
}

std::vector<std::string> names_in(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.empty() ? "." : dir.c_str());
  if (!d) return out;
  while (dirent* e = ::readdir(d)) {
    if (std::strcmp(e->d_name, ".") == 0 || std::strcmp(e->d_name, "..") == 0) continue;
    out.emplace_back(e->d_name);
  }
  ::closedir(d);
  return out;
}

// Walks the components from index `i` below `base`, adding matches to `out`.
void glob_walk(const std::string& base, const std::vector<std::string>& comps, std::size_t i,
               std::vector<std::string>& out) {
  if (i == comps.size()) {
    out.push_back(base);
    return;
  }
  const std::string& c = comps[i];
  bool last = i + 1 == comps.size();
  if (c == "**") {
    // Zero directories, then every non-hidden subdirectory (not following
    // symlinked directories, which could loop).
    glob_walk(base, comps, i + 1, out);
    for (const auto& n : names_in(base)) {
      if (n[0] == '.') continue;
      std::string p = child(base, n);
      struct stat st {};
      if (::lstat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) glob_walk(p, comps, i, out);
    }
    return;
  }
  if (!has_magic(c)) {
    std::string p = child(base, c);
    struct stat st {};
    if (::lstat(p.c_str(), &st) != 0) return;
    if (!last && !is_dir(p)) return;
    glob_walk(p, comps, i + 1, out);
    return;
  }
  for (const auto& n : names_in(base)) {
    if (::fnmatch(c.c_str(), n.c_str(), FNM_PERIOD) != 0) continue;
    std::string p = child(base, n);
    if (!last && !is_dir(p)) continue;
    glob_walk(p, comps, i + 1, out);
  }
}

}  // namespace

std::string Error::code_name() const {
  if (code_ == 0) return "";
  const char* n = strerrorname_np(code_);
  return n ? n : "";
}

void throw_errno(const std::string& what, const std::string& path, int err) {
  throw Error(what + " " + path + ": " + std::strerror(err), err);
}

std::optional<mode_t> parse_mode(const std::string& text) {
  std::string s = text;
  if (s.rfind("0o", 0) == 0) s = s.substr(2);
  if (s.empty() || s.size() > 5) return std::nullopt;
  mode_t m = 0;
  for (char c : s) {
    if (c < '0' || c > '7') return std::nullopt;
    m = m * 8 + static_cast<mode_t>(c - '0');
  }
  if (m > 07777) return std::nullopt;
  return m;
}

std::string format_mode(mode_t mode) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

std::string read_file(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.fd < 0) throw_errno("cannot read", path, errno);
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd.fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("cannot read", path, errno);
    }
    if (n == 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

void write_file(const std::string& path, const std::string& data, mode_t mode, bool atomic,
                bool exclusive) {
  if (!atomic) {
    Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode));
    if (fd.fd < 0) throw_errno("cannot write", path, errno);
    if (::fchmod(fd.fd, mode) != 0) throw_errno("cannot chmod", path, errno);
    write_all(fd.fd, data, path);
    if (::close(fd.release()) != 0) throw_errno("cannot write", path, errno);
    return;
  }
  std::string dir = dirname(path);
  std::string tmpl = child(dir, "." + basename(path) + ".ephrun-XXXXXX");
  std::vector<char> name(tmpl.begin(), tmpl.end());
  name.push_back('\0');
  Fd fd(::mkostemp(name.data(), O_CLOEXEC));
  if (fd.fd < 0) throw_errno("cannot create a temporary file in", dir, errno);
  std::string tmp(name.data());
  try {
    if (::fchmod(fd.fd, mode) != 0) throw_errno("cannot chmod", tmp, errno);
    write_all(fd.fd, data, tmp);
    if (::fsync(fd.fd) != 0) throw_errno("cannot fsync", tmp, errno);
    if (::close(fd.release()) != 0) throw_errno("cannot write", tmp, errno);
    // link(2) publishes the complete file only if the name is free, so an
    // exclusive create is atomic and no reader ever sees it half written.
    if (exclusive) {
      if (::link(tmp.c_str(), path.c_str()) != 0) throw_errno("cannot create", path, errno);
      ::unlink(tmp.c_str());
    } else if (::rename(tmp.c_str(), path.c_str()) != 0) {
      throw_errno("cannot rename onto", path, errno);
    }
  } catch (...) {
    ::unlink(tmp.c_str());  // no Lua is called here: only our own errors pass
    throw;
  }
  fsync_dir(dir);
}

void append_file(const std::string& path, const std::string& data, mode_t mode) {
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, mode));
  if (fd.fd < 0) throw_errno("cannot append to", path, errno);
  write_all(fd.fd, data, path);
  if (::close(fd.release()) != 0) throw_errno("cannot append to", path, errno);
}

void mkdir_p(const std::string& path, mode_t mode) {
  if (path.empty()) throw Error("mkdir_p: empty path", EINVAL);
  std::string cur;
  std::size_t i = 0;
  while (i <= path.size()) {
    std::size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    cur = path.substr(0, j);
    i = j + 1;
    if (cur.empty() || cur == "." || cur == "..") continue;
    if (::mkdir(cur.c_str(), mode) != 0) {
      int err = errno;
      if (err == EEXIST && is_dir(cur)) continue;
      throw_errno("cannot create directory", cur, err == EEXIST ? ENOTDIR : err);
    }
  }
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

Stat stat(const std::string& path, bool follow) {
  struct stat st {};
  int rc = follow ? ::stat(path.c_str(), &st) : ::lstat(path.c_str(), &st);
  if (rc != 0) throw_errno("cannot stat", path, errno);
  Stat s;
  s.size = static_cast<std::uint64_t>(st.st_size);
  s.mtime = static_cast<double>(st.st_mtim.tv_sec) + static_cast<double>(st.st_mtim.tv_nsec) / 1e9;
  s.mode = st.st_mode & 07777;
  if (S_ISREG(st.st_mode))
    s.type = "file";
  else if (S_ISDIR(st.st_mode))
    s.type = "dir";
  else if (S_ISLNK(st.st_mode))
    s.type = "link";
  else
    s.type = "other";
  return s;
}

std::vector<std::string> list(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) throw_errno("cannot list", dir, errno);
  std::vector<std::string> out;
  errno = 0;
  while (dirent* e = ::readdir(d)) {
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0)
      out.emplace_back(e->d_name);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

bool remove(const std::string& path, bool recursive) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return false;
    throw_errno("cannot remove", path, errno);
  }
  if (!S_ISDIR(st.st_mode)) {
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) throw_errno("cannot remove", path, errno);
    return true;
  }
  if (recursive) {
    // Depth-first, never following symlinks (FTW_PHYS), staying on this
    // file system (FTW_MOUNT): a link to / inside the tree removes the link only.
    int rc = ::nftw(
        path.c_str(),
        [](const char* p, const struct stat* s, int, FTW*) -> int {
          int r = S_ISDIR(s->st_mode) ? ::rmdir(p) : ::unlink(p);
          return (r != 0 && errno != ENOENT) ? errno : 0;
        },
        32, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
    if (rc < 0) throw_errno("cannot remove", path, errno);
    if (rc > 0) throw_errno("cannot remove", path, rc);
    return true;
  }
  if (::rmdir(path.c_str()) != 0 && errno != ENOENT) throw_errno("cannot remove", path, errno);
  return true;
}

std::string make_tempdir(const std::string& prefix) {
  const char* t = std::getenv("TMPDIR");
  std::string base = (t && *t) ? t : "/tmp";
  std::string tmpl = child(base, prefix + "XXXXXX");
  std::vector<char> name(tmpl.begin(), tmpl.end());
  name.push_back('\0');
  if (!::mkdtemp(name.data())) throw_errno("cannot create a temporary directory in", base, errno);
  return name.data();
}

void chmod(const std::string& path, mode_t mode) {
  if (::chmod(path.c_str(), mode) != 0) throw_errno("cannot chmod", path, errno);
}

std::string realpath(const std::string& path) {
  std::unique_ptr<char, decltype(&std::free)> r(::realpath(path.c_str(), nullptr), &std::free);
  if (!r) throw_errno("cannot resolve", path, errno);
  return r.get();
}

std::vector<std::string> glob(const std::string& pattern) {
  std::vector<std::string> comps;
  std::string base;
  std::size_t i = 0;
  if (!pattern.empty() && pattern[0] == '/') {
    base = "/";
    i = 1;
  }
  while (i <= pattern.size()) {
    std::size_t j = pattern.find('/', i);
    if (j == std::string::npos) j = pattern.size();
    std::string c = pattern.substr(i, j - i);
    if (!c.empty() && !(c == "**" && !comps.empty() && comps.back() == "**")) comps.push_back(c);
    i = j + 1;
  }
  std::vector<std::string> out;
  if (comps.empty()) {
    if (!base.empty()) out.push_back(base);
    return out;
  }
  glob_walk(base, comps, 0, out);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

std::string hash_file(const std::string& path, const std::string& algo, const CancelToken* tok) {
  const EVP_MD* md = digest(algo);
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.fd < 0) throw_errno("cannot read", path, errno);
  MdCtx c;
  if (!c.ctx || EVP_DigestInit_ex(c.ctx, md, nullptr) != 1) throw Error("digest init failed", 0);
  std::vector<char> buf(1 << 20);
  for (;;) {
    if (tok && tok->cancelled()) throw Error(tok->reason(), ECANCELED);
    ssize_t n = ::read(fd.fd, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("cannot read", path, errno);
    }
    if (n == 0) break;
    EVP_DigestUpdate(c.ctx, buf.data(), static_cast<std::size_t>(n));
  }
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  EVP_DigestFinal_ex(c.ctx, out, &len);
  return hex(out, len);
}

std::string hash_string(const std::string& data, const std::string& algo) {
  const EVP_MD* md = digest(algo);
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  if (EVP_Digest(data.data(), data.size(), out, &len, md, nullptr) != 1)
    throw Error("digest failed", 0);
  return hex(out, len);
}

std::string basename(const std::string& path) {
  if (path.empty()) return ".";
  std::size_t end = path.find_last_not_of('/');
  if (end == std::string::npos) return "/";
  std::size_t start = path.rfind('/', end);
  return path.substr(start == std::string::npos ? 0 : start + 1,
                     end - (start == std::string::npos ? 0 : start + 1) + 1);
}

std::string dirname(const std::string& path) {
  if (path.empty()) return ".";
  std::size_t end = path.find_last_not_of('/');
  if (end == std::string::npos) return "/";
  std::size_t slash = path.rfind('/', end);
  if (slash == std::string::npos) return ".";
  std::size_t keep = path.find_last_not_of('/', slash);
  if (keep == std::string::npos) return "/";
  return path.substr(0, keep + 1);
}

std::string join(const std::vector<std::string>& parts) {
  std::string out;
  for (const auto& p : parts) {
    if (p.empty()) continue;
    if (out.empty()) {
      out = p;
      continue;
    }
    bool a = out.back() == '/';
    bool b = p.front() == '/';
    if (a && b)
      out += p.substr(1);
    else if (a || b)
      out += p;
    else
      out += "/" + p;
  }
  return out;
}

unsigned current_umask() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("Umask:", 0) == 0)
      return static_cast<unsigned>(std::stoul(line.substr(6), nullptr, 8));
  return 022;
}

}  // namespace ephrun::sys
