#include "ssh/sync.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "ssh/extract.hpp"
#include "ssh/session_impl.hpp"
#include "ssh/sftp.hpp"
#include "ssh/tar.hpp"
#include "ssh/util.hpp"

namespace ephrun::ssh {

// ---- gitignore-style patterns ----------------------------------------------------

namespace {

bool class_match(const char*& p, char c) {
  // p points at '['; on return p points past ']'
  const char* q = p + 1;
  bool neg = false;
  if (*q == '!' || *q == '^') {
    neg = true;
    ++q;
  }
  bool hit = false;
  bool first = true;
  while (*q && (first || *q != ']')) {
    first = false;
    char lo = *q;
    if (lo == '\\' && q[1]) lo = *++q;
    char hi = lo;
    if (q[1] == '-' && q[2] && q[2] != ']') {
      hi = q[2];
      q += 2;
    }
    if (c >= lo && c <= hi) hit = true;
    ++q;
  }
  if (*q != ']') return false;  // unterminated: treat as no match
  p = q + 1;
  return hit != neg;
}

bool wild(const char* p, const char* s) {
  while (*p) {
    if (*p == '*') {
      if (p[1] == '*') {
        const char* q = p + 2;
        if (*q == '/') {
          if (wild(q + 1, s)) return true;
          for (const char* t = s; *t; ++t)
            if (*t == '/' && wild(q + 1, t + 1)) return true;
          return false;
        }
        for (const char* t = s;; ++t) {
          if (wild(q, t)) return true;
          if (!*t) return false;
        }
      }
      const char* q = p + 1;
      for (const char* t = s;; ++t) {
        if (wild(q, t)) return true;
        if (!*t || *t == '/') return false;
      }
    }
    if (!*s) return false;
    if (*p == '?') {
      if (*s == '/') return false;
      ++p;
      ++s;
      continue;
    }
    if (*p == '[') {
      if (*s == '/') return false;
      const char* save = p;
      if (!class_match(p, *s)) {
        if (p == save) {  // malformed class: literal '['
          if (*s != '[') return false;
          ++p;
          ++s;
          continue;
        }
        return false;
      }
      ++s;
      continue;
    }
    if (*p == '\\' && p[1]) ++p;
    if (*p != *s) return false;
    ++p;
    ++s;
  }
  return !*s;
}

struct Rule {
  std::string pat;
  std::string base;  // directory the rule is relative to ("" = root)
  bool negate = false;
  bool dir_only = false;
  bool anchored = false;
};

std::optional<Rule> parse_rule(std::string line, const std::string& base) {
  if (!line.empty() && line.back() == '\r') line.pop_back();
  while (!line.empty() && line.back() == ' ' &&
         !(line.size() >= 2 && line[line.size() - 2] == '\\'))
    line.pop_back();
  if (line.empty() || line[0] == '#') return std::nullopt;
  Rule r;
  r.base = base;
  if (line[0] == '!') {
    r.negate = true;
    line.erase(0, 1);
  } else if (line[0] == '\\' && line.size() > 1 && (line[1] == '#' || line[1] == '!')) {
    line.erase(0, 1);
  }
  if (!line.empty() && line.back() == '/') {
    r.dir_only = true;
    while (!line.empty() && line.back() == '/') line.pop_back();
  }
  if (!line.empty() && line[0] == '/') {
    r.anchored = true;
    line.erase(0, 1);
  }
  if (line.find('/') != std::string::npos) r.anchored = true;
  if (line.empty()) return std::nullopt;
  r.pat = line;
  return r;
}

bool rule_matches(const Rule& r, const std::string& rel, bool is_dir) {
  if (r.dir_only && !is_dir) return false;
  std::string_view sub = rel;
  if (!r.base.empty()) {
    if (rel.size() <= r.base.size() || rel.compare(0, r.base.size(), r.base) != 0 ||
        rel[r.base.size()] != '/')
      return false;
    sub.remove_prefix(r.base.size() + 1);
  }
  if (r.anchored) return wild(r.pat.c_str(), std::string(sub).c_str());
  auto slash = sub.rfind('/');
  std::string name(slash == std::string_view::npos ? sub : sub.substr(slash + 1));
  return wild(r.pat.c_str(), name.c_str());
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace

bool never_sent(std::string_view path) {
  static const std::vector<std::string> patterns = [] {
    std::vector<std::string> v;
    for (const auto& p : kNeverSend) v.push_back(lower(p));
    return v;
  }();
  for (std::size_t b = 0; b <= path.size();) {
    auto e = std::min(path.find('/', b), path.size());
    std::string name = lower(path.substr(b, e - b));
    if (!name.empty())
      for (const auto& p : patterns)
        if (wild(p.c_str(), name.c_str())) return true;
    b = e + 1;
  }
  return false;
}

namespace {

class Filter {
 public:
  Filter(const SyncOptions& o) {
    for (auto& p : o.exclude) add(user_, p, "");
    for (auto& p : o.include) {
      auto r = parse_rule(p, "");
      if (!r) continue;
      r->negate = !r->negate;
      user_.push_back(*r);
    }
  }
  void add_gitignore(const std::string& file, const std::string& base) {
    std::ifstream in(file);
    std::string line;
    while (std::getline(in, line)) add(git_, line, base);
  }
  bool excluded(const std::string& rel, bool is_dir) const {
    bool ex = false;
    for (auto& r : git_)
      if (rule_matches(r, rel, is_dir)) ex = !r.negate;
    // After .gitignore, whose `!` must not bring a secret back; only `include` can.
    if (never_sent(rel)) ex = true;
    for (auto& r : user_)
      if (rule_matches(r, rel, is_dir)) ex = !r.negate;
    return ex;
  }
  // Excluded itself or under an excluded directory.
  bool excluded_path(const std::string& rel, bool is_dir) const {
    for (std::size_t pos = rel.find('/'); pos != std::string::npos; pos = rel.find('/', pos + 1))
      if (excluded(rel.substr(0, pos), true)) return true;
    return excluded(rel, is_dir);
  }

 private:
  static void add(std::vector<Rule>& v, const std::string& line, const std::string& base) {
    if (auto r = parse_rule(line, base)) v.push_back(*r);
  }
  std::vector<Rule> git_, user_;
};

// ---- local scan ------------------------------------------------------------------

struct LocalEntry {
  std::string rel;
  tar::Type type;
  unsigned mode;
  std::uint64_t size;
  std::int64_t sec;
  long nsec;
  std::string link;
};

// A directory fd that closes itself.
struct Fd {
  int fd = -1;
  explicit Fd(int f = -1) : fd(f) {}
  Fd(Fd&& o) noexcept : fd(o.fd) { o.fd = -1; }
  Fd& operator=(Fd&& o) noexcept {
    std::swap(fd, o.fd);
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

constexpr int kDirFlags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;

Fd open_root(const std::string& root) {
  // The root itself may be a symlink the user chose; nothing below it may be.
  Fd fd(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.fd < 0)
    throw Error(ErrorKind::other, "sync: cannot read " + root + ": " + std::strerror(errno));
  return fd;
}

// A regular file `name` in `dir`, never through a symlink, never blocking on a fifo.
int open_regular_at(int dir, const char* name) {
  int fd = ::openat(dir, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) return -1;
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    errno = EINVAL;
    return -1;
  }
  return fd;
}

// Opens files below the synced root one component at a time with O_NOFOLLOW, so a
// directory swapped for a symlink while a sync runs is refused, not followed out of
// the tree. Files come in walk order, so the chain of open directories is reused.
class TreeFiles {
 public:
  explicit TreeFiles(int root) : root_(root) {}
  /// A regular file's fd (the caller closes it), or -1 with errno set.
  int open(const std::string& rel) {
    std::size_t depth = 0, start = 0;
    for (std::size_t slash; (slash = rel.find('/', start)) != std::string::npos;
         start = slash + 1, ++depth) {
      std::string_view comp(rel.data() + start, slash - start);
      if (depth < chain_.size() && chain_[depth].first == comp) continue;
      chain_.resize(depth);
      int parent = depth == 0 ? root_ : chain_[depth - 1].second.fd;
      Fd d(::openat(parent, std::string(comp).c_str(), kDirFlags));
      if (d.fd < 0) return -1;
      chain_.emplace_back(std::string(comp), std::move(d));
    }
    chain_.resize(depth);
    return open_regular_at(depth == 0 ? root_ : chain_.back().second.fd, rel.c_str() + start);
  }

 private:
  int root_;
  std::vector<std::pair<std::string, Fd>> chain_;
};

void scan_dir(int dfd, const std::string& rel, Filter& filter, bool gitignore,
              std::vector<LocalEntry>& out, std::uint64_t& excluded) {
  if (gitignore) {
    Fd gi(open_regular_at(dfd, ".gitignore"));
    // Read through the fd, so it is the .gitignore of this very directory.
    if (gi.fd >= 0) filter.add_gitignore("/proc/self/fd/" + std::to_string(gi.fd), rel);
  }
  DIR* d = ::fdopendir(::fcntl(dfd, F_DUPFD_CLOEXEC, 0));
  if (!d)
    throw Error(ErrorKind::other,
                "cannot read directory " + (rel.empty() ? "." : rel) + ": " + std::strerror(errno));
  std::vector<std::string> names;
  {
    std::unique_ptr<DIR, int (*)(DIR*)> guard(d, &::closedir);
    while (dirent* de = ::readdir(d)) {
      std::string n = de->d_name;
      if (n != "." && n != "..") names.push_back(std::move(n));
    }
  }
  std::sort(names.begin(), names.end());
  for (auto& n : names) {
    std::string r = rel.empty() ? n : rel + "/" + n;
    struct stat st {};
    if (::fstatat(dfd, n.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
    LocalEntry e{r,
                 tar::Type::other,
                 static_cast<unsigned>(st.st_mode & 07777),
                 static_cast<std::uint64_t>(st.st_size),
                 st.st_mtim.tv_sec,
                 st.st_mtim.tv_nsec,
                 {}};
    if (S_ISDIR(st.st_mode))
      e.type = tar::Type::dir;
    else if (S_ISREG(st.st_mode))
      e.type = tar::Type::file;
    else if (S_ISLNK(st.st_mode))
      e.type = tar::Type::symlink;
    else
      continue;  // sockets, fifos, devices are not synced
    if (filter.excluded(r, e.type == tar::Type::dir)) {
      ++excluded;
      continue;
    }
    if (e.type == tar::Type::symlink) {
      std::string target(static_cast<std::size_t>(st.st_size) + 256, '\0');
      ssize_t len = ::readlinkat(dfd, n.c_str(), target.data(), target.size());
      if (len < 0) continue;
      target.resize(static_cast<std::size_t>(len));
      e.link = std::move(target);
      e.size = 0;
    }
    if (e.type == tar::Type::dir) e.size = 0;
    bool is_dir = e.type == tar::Type::dir;
    out.push_back(std::move(e));
    if (!is_dir) continue;
    Fd sub(::openat(dfd, n.c_str(), kDirFlags));
    if (sub.fd < 0)
      throw Error(ErrorKind::other, "cannot read directory " + r + ": " + std::strerror(errno));
    scan_dir(sub.fd, r, filter, gitignore, out, excluded);
  }
}

std::string strip_slashes(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

// A remote directory argument for the shell: "~/x" means relative to the login dir.
std::string remote_dir_arg(std::string d) {
  d = strip_slashes(d);
  if (d == "~") return ".";
  if (d.rfind("~/", 0) == 0) d = d.substr(2);
  if (d.empty()) d = ".";
  return shell_quote(d);
}

std::string file_sha256(TreeFiles& files, const std::string& rel) {
  int fd = files.open(rel);
  if (fd < 0) return {};
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  std::vector<char> buf(1 << 20);
  ssize_t n;
  while ((n = ::read(fd, buf.data(), buf.size())) > 0)
    EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<std::size_t>(n));
  ::close(fd);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  EVP_DigestFinal_ex(ctx.get(), md, &len);
  return hex(std::string_view(reinterpret_cast<char*>(md), len));
}

struct RemoteEntry {
  char type;  // f d l ...
  unsigned mode;
  std::uint64_t size;
  std::int64_t sec;
  long nsec;
  std::string link;
};

class Progress {
 public:
  Progress(const SyncProgressFn& fn, SyncProgress p) : fn_(fn), p_(p) {}
  void add(std::uint64_t files, std::uint64_t bytes) {
    p_.files_done += files;
    p_.bytes_done += bytes;
    if (!fn_) return;
    auto now = Clock::now();
    if (now - last_ >= std::chrono::milliseconds(100)) {
      last_ = now;
      fn_(p_);
    }
  }
  void done() {
    if (fn_) fn_(p_);
  }

 private:
  const SyncProgressFn& fn_;
  SyncProgress p_;
  Clock::time_point last_{};
};

}  // namespace

bool glob_path_match(const std::string& pattern, const std::string& path) {
  auto r = parse_rule(pattern, "");
  return r && rule_matches(*r, path, false);
}

SyncStats scan_local(const std::string& local_dir, const SyncOptions& opts) {
  SyncStats st;
  Filter filter(opts);
  std::vector<LocalEntry> entries;
  Fd root = open_root(strip_slashes(local_dir));
  scan_dir(root.fd, "", filter, opts.gitignore, entries, st.excluded);
  for (auto& e : entries) {
    if (e.type == tar::Type::dir) continue;
    ++st.files_total;
    st.bytes_total += e.size;
  }
  return st;
}

SyncStats sync(Session& s, const std::string& local_dir, const std::string& remote_dir,
               const SyncOptions& opts, const SyncProgressFn& progress, const CancelToken& token) {
  auto start = Clock::now();
  auto& im = s.impl();
  SyncStats st;
  std::string root = strip_slashes(local_dir);
  struct stat rst {};
  if (::stat(root.c_str(), &rst) != 0 || !S_ISDIR(rst.st_mode))
    throw Error(ErrorKind::other, "sync: " + local_dir + " is not a directory");

  Filter filter(opts);
  std::vector<LocalEntry> local;
  Fd root_fd = open_root(root);
  TreeFiles files(root_fd.fd);
  scan_dir(root_fd.fd, "", filter, opts.gitignore, local, st.excluded);
  for (auto& e : local)
    if (e.type != tar::Type::dir) {
      ++st.files_total;
      st.bytes_total += e.size;
    }

  // 1. One command: does tar exist, and what is already there.
  std::string rdir = remote_dir_arg(remote_dir);
  std::string tar_cmd = opts.remote_tar.empty() ? "tar" : opts.remote_tar;
  std::string manifest = im.capture("if command -v " + tar_cmd +
                                        " >/dev/null 2>&1; then t=1; else t=0; fi; "
                                        "if cd " +
                                        rdir +
                                        " 2>/dev/null; then echo \"EPHRUN-MANIFEST $t 1\"; "
                                        "find . -mindepth 1 -printf '%y %m %s %T@ %P\\0%l\\0'; "
                                        "else echo \"EPHRUN-MANIFEST $t 0\"; fi",
                                    "listing " + remote_dir, token);
  auto nl = manifest.find('\n');
  if (nl == std::string::npos || manifest.rfind("EPHRUN-MANIFEST ", 0) != 0)
    throw Error(ErrorKind::other,
                "sync: unexpected reply listing " + remote_dir + " on " + s.label());
  bool have_tar = manifest[16] == '1';
  std::unordered_map<std::string, RemoteEntry> remote;
  {
    std::string_view m(manifest);
    m.remove_prefix(nl + 1);
    while (!m.empty()) {
      auto z1 = m.find('\0');
      if (z1 == std::string_view::npos) break;
      auto z2 = m.find('\0', z1 + 1);
      if (z2 == std::string_view::npos) break;
      std::string_view rec = m.substr(0, z1);
      std::string link(m.substr(z1 + 1, z2 - z1 - 1));
      m.remove_prefix(z2 + 1);
      // "%y %m %s %T@ %P": the path is everything after the fourth space.
      std::size_t p1 = rec.find(' '), p2 = rec.find(' ', p1 + 1), p3 = rec.find(' ', p2 + 1),
                  p4 = rec.find(' ', p3 + 1);
      if (p4 == std::string_view::npos) continue;
      RemoteEntry re{
          rec[0],
          static_cast<unsigned>(
              std::strtoul(std::string(rec.substr(p1 + 1, p2 - p1 - 1)).c_str(), nullptr, 8)),
          std::strtoull(std::string(rec.substr(p2 + 1, p3 - p2 - 1)).c_str(), nullptr, 10),
          0,
          0,
          std::move(link)};
      tar::parse_time(rec.substr(p3 + 1, p4 - p3 - 1), re.sec, re.nsec);
      remote.emplace(std::string(rec.substr(p4 + 1)), std::move(re));
    }
  }

  // 2. Decide what to send, remove, or check by content.
  std::vector<const LocalEntry*> send;
  std::vector<std::string> removals;
  std::vector<const LocalEntry*> hash_check;
  std::unordered_set<std::string> local_paths;
  local_paths.reserve(local.size() * 2);
  for (auto& e : local) {
    local_paths.insert(e.rel);
    auto it = remote.find(e.rel);
    if (it == remote.end()) {
      send.push_back(&e);
      continue;
    }
    const RemoteEntry& r = it->second;
    char want = e.type == tar::Type::dir ? 'd' : e.type == tar::Type::symlink ? 'l' : 'f';
    if (r.type != want) {
      removals.push_back(e.rel);
      send.push_back(&e);
      continue;
    }
    if (e.type == tar::Type::dir) {
      if (r.mode != e.mode) send.push_back(&e);
    } else if (e.type == tar::Type::symlink) {
      if (r.link != e.link) send.push_back(&e);
    } else if (r.size != e.size || r.mode != e.mode) {
      send.push_back(&e);
    } else if (r.sec != e.sec || (r.nsec != e.nsec && r.nsec != 0)) {
      if (e.size >= opts.hash_threshold)
        hash_check.push_back(&e);
      else
        send.push_back(&e);
    }
  }
  if (opts.delete_extra) {
    std::vector<std::string> extra;
    for (auto& [path, r] : remote)
      if (!local_paths.count(path) && !filter.excluded_path(path, r.type == 'd'))
        extra.push_back(path);
    std::sort(extra.begin(), extra.end());
    std::string last_dir;
    for (auto& p : extra) {
      // Entries under a directory being removed go with it.
      if (!last_dir.empty() && p.size() > last_dir.size() &&
          p.compare(0, last_dir.size(), last_dir) == 0 && p[last_dir.size()] == '/')
        continue;
      removals.push_back(p);
      if (remote[p].type == 'd')
        last_dir = p;
      else
        last_dir.clear();
    }
  }

  if (!hash_check.empty()) {
    std::string list;
    for (auto* e : hash_check) list += "./" + e->rel + '\0';
    std::string out =
        im.capture("cd " + rdir + " && xargs -0 sha256sum -z --", "hashing files", token, list);
    std::string touches;
    std::size_t pos = 0;
    for (auto* e : hash_check) {
      std::string remote_hash = out.substr(pos, 64);
      auto z = out.find('\0', pos);
      pos = z == std::string::npos ? out.size() : z + 1;
      if (remote_hash == file_sha256(files, e->rel)) {
        char ts[48];
        std::snprintf(ts, sizeof ts, "@%lld.%09ld", static_cast<long long>(e->sec), e->nsec);
        touches += std::string(ts) + '\0' + "./" + e->rel + '\0';
      } else {
        send.push_back(e);
      }
    }
    if (!touches.empty())
      im.capture("cd " + rdir + " && xargs -0 -n 2 touch -m -c -d", "setting mtimes", token,
                 touches);
  }

  if (!removals.empty()) {
    std::string list;
    for (auto& p : removals) list += "./" + p + '\0';
    im.capture("cd " + rdir + " && xargs -0 rm -rf --", "removing files", token, list);
    for (auto& p : removals)
      if (!local_paths.count(p)) ++st.deleted;
  }

  // Parents first (local order is a pre-order walk; the hash-checked come last).
  std::stable_sort(send.begin(), send.end(),
                   [](const LocalEntry* a, const LocalEntry* b) { return a < b; });

  SyncProgress todo;
  for (auto* e : send)
    if (e->type != tar::Type::dir) {
      ++todo.files_todo;
      todo.bytes_todo += e->size;
    }
  Progress prog(progress, todo);

  if (send.empty()) {
    prog.done();
    st.duration = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
    return st;
  }

  if (!have_tar) {
    // SFTP fallback: one file at a time.
    st.used_sftp = true;
    std::string base = strip_slashes(remote_dir);
    if (base.rfind("~/", 0) == 0) base = base.substr(2);
    mkdir_p(s, base, 0755, token);
    for (auto* e : send) {
      std::string r = base + "/" + e->rel;
      if (e->type == tar::Type::dir) {
        mkdir_p(s, r, e->mode, token);
      } else if (e->type == tar::Type::file) {
        Fd f(files.open(e->rel));
        if (f.fd < 0) {
          spdlog::warn("sync to {}: cannot read {}: {}", s.label(), e->rel, std::strerror(errno));
          continue;
        }
        // The path of the fd just opened: the file, not whatever the name points at now.
        upload(s, "/proc/self/fd/" + std::to_string(f.fd), r, token);
        ++st.files_sent;
        st.bytes_sent += e->size;
        prog.add(1, e->size);
      } else {
        im.capture("ln -sfn -- " + shell_quote(e->link) + " " + shell_quote(r),
                   "creating symlink " + r, token);
        ++st.files_sent;
        prog.add(1, 0);
      }
    }
    prog.done();
    st.duration = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
    return st;
  }

  // 3. One tar stream into `tar -x`.
  std::size_t idx = 0;
  int fd = -1;
  std::uint64_t file_left = 0, file_size = 0;
  bool ended = false;
  std::string warn;
  constexpr std::size_t kTarget = 1 << 20;
  struct FdCloser {
    int& fd;
    ~FdCloser() {
      if (fd >= 0) ::close(fd);
    }
  } closer{fd};

  StreamIO io;
  io.produce = [&](std::string& buf) {
    if (ended) return false;
    while (buf.size() < kTarget) {
      if (fd >= 0) {
        // Continue the current file's data.
        std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(file_left, kTarget));
        std::size_t old = buf.size();
        buf.resize(old + want);
        ssize_t n = 0;
        if (want > 0) {
          do n = ::read(fd, buf.data() + old, want);
          while (n < 0 && errno == EINTR);
        }
        if (n <= 0) {
          // Shrunk or unreadable since the scan: keep the archive consistent.
          buf.resize(old);
          if (file_left > 0) {
            warn = "file changed while syncing: " + send[idx - 1]->rel;
            buf.append(static_cast<std::size_t>(file_left), '\0');
            prog.add(0, file_left);
            file_left = 0;
          }
        } else {
          buf.resize(old + static_cast<std::size_t>(n));
          file_left -= static_cast<std::uint64_t>(n);
          prog.add(0, static_cast<std::uint64_t>(n));
        }
        if (file_left == 0) {
          ::close(fd);
          fd = -1;
          tar::write_padding(buf, file_size);
          prog.add(1, 0);
        }
        continue;
      }
      if (idx >= send.size()) {
        tar::write_end(buf);
        ended = true;
        return true;
      }
      const LocalEntry& e = *send[idx++];
      tar::Entry te;
      te.path = e.rel;
      te.type = e.type;
      te.mode = e.mode;
      te.mtime_sec = e.sec;
      te.mtime_nsec = e.nsec;
      te.link = e.link;
      if (e.type == tar::Type::file) {
        fd = files.open(e.rel);
        if (fd < 0) {
          warn = "cannot read " + e.rel + ": " + std::strerror(errno);
          continue;
        }
        te.size = e.size;
        file_size = file_left = e.size;
        ++st.files_sent;
        st.bytes_sent += e.size;
        tar::write_header(buf, te);
        if (file_left == 0) {
          ::close(fd);
          fd = -1;
          prog.add(1, 0);
        }
      } else {
        if (e.type == tar::Type::symlink) {
          ++st.files_sent;
          prog.add(1, 0);
        }
        tar::write_header(buf, te);
      }
    }
    return true;
  };
  std::string err;
  io.on_err = [&](std::string_view d) {
    if (err.size() < 65536) err.append(d);
  };
  auto r = im.exec_stream("mkdir -p -- " + rdir + " && cd -- " + rdir + " && " + tar_cmd +
                              " -x -p --no-same-owner -f -",
                          {}, {}, io, Clock::time_point::max(), token, true);
  if (r.code != 0) {
    while (!err.empty() && err.back() == '\n') err.pop_back();
    throw Error(
        ErrorKind::other,
        "sync to " + s.label() + ":" + remote_dir + " failed: remote tar " +
            (r.signal.empty() ? "exited " + std::to_string(r.code) : "killed by " + r.signal) +
            (err.empty() ? "" : ": " + err));
  }
  prog.done();
  if (!warn.empty()) spdlog::warn("sync to {}: {}", s.label(), warn);
  st.duration = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
  return st;
}

// ---- fetch -------------------------------------------------------------------------

FetchStats fetch(Session& s, const std::string& remote, const std::string& local,
                 const SyncProgressFn& progress, const CancelToken& token) {
  auto start = Clock::now();
  auto& im = s.impl();
  FetchStats fs;
  std::string r = strip_slashes(remote);
  if (r.rfind("~/", 0) == 0) r = r.substr(2);
  std::string q = shell_quote(r);
  std::string dest = strip_slashes(local);
  std::string what = "fetch " + s.label() + ":" + remote;

  // First byte: 'D' (directory contents follow) or 'F' (a single file).
  bool got_kind = false;
  std::unique_ptr<TarExtractor> x;
  SyncProgress p;
  Progress prog(progress, p);
  std::uint64_t seen_files = 0, seen_bytes = 0;
  auto report = [&] {
    auto f = x->counters().files.load(), b = x->counters().bytes.load();
    prog.add(f - seen_files, b - seen_bytes);
    seen_files = f;
    seen_bytes = b;
  };
  auto open_dir = [&](const std::string& dir) {
    std::error_code ec;
    if (!dir.empty()) std::filesystem::create_directories(dir, ec);
    int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
      throw Error(ErrorKind::other, "cannot create " + dir + ": " +
                                        (ec ? ec.message() : std::string(std::strerror(errno))));
    return fd;
  };

  std::string err;
  StreamIO io;
  io.on_out = [&](std::string_view d) {
    if (d.empty()) return;
    if (!got_kind) {
      got_kind = true;
      ExtractOptions o;
      o.what = what;
      o.dest = dest;
      o.token = token;
      int dirfd;
      if (d[0] == 'F') {
        auto slash = r.rfind('/');
        o.only_file = slash == std::string::npos ? r : r.substr(slash + 1);
        auto path = std::filesystem::path(dest);
        o.rename_to = path.filename().string();
        dirfd = open_dir(path.parent_path().string());
      } else {
        dirfd = open_dir(dest);
      }
      struct FdCloser {
        int fd;
        ~FdCloser() { ::close(fd); }
      } closer{dirfd};
      x = std::make_unique<TarExtractor>(dirfd, std::move(o));
      d.remove_prefix(1);
    }
    x->feed(d);
    report();
  };
  io.on_err = [&](std::string_view d) {
    if (err.size() < 65536) err.append(d);
  };
  auto res = im.exec_stream("if [ -d " + q + " ]; then printf D; cd -- " + q +
                                " && exec tar --format=pax -cf - .; " + "elif [ -e " + q +
                                " ]; then printf F; cd -- \"$(dirname -- " + q +
                                ")\" && exec tar --format=pax -chf - \"$(basename -- " + q +
                                ")\"; " + "else echo \"no such file or directory\" >&2; exit 2; fi",
                            {}, {}, io, Clock::time_point::max(), token, true);
  if (res.code != 0) {
    while (!err.empty() && err.back() == '\n') err.pop_back();
    throw Error(ErrorKind::other, what + " failed" + (err.empty() ? "" : ": " + err));
  }
  if (!x) throw Error(ErrorKind::other, what + " failed: the remote sent nothing");
  x->finish();
  report();
  fs.files = x->counters().files;
  fs.bytes = x->counters().bytes;
  prog.done();
  fs.duration = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
  return fs;
}

}  // namespace ephrun::ssh
