#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <thread>

#include "../support/sshd_fixture.hpp"
#include "ssh/keys.hpp"
#include "ssh/session.hpp"
#include "ssh/sftp.hpp"
#include "ssh/sync.hpp"
#include "ssh/util.hpp"

using namespace ephrun;
using namespace std::chrono_literals;
using test::sh;
using test::write_text;
namespace fs = std::filesystem;

namespace {

std::string q(const std::string& s) { return ssh::shell_quote(s); }

struct SyncPeer {
  test::Sshd sshd;
  ssh::KeyPair key = ssh::generate_ed25519("sync");
  ssh::Session s;
  std::string local, remote;
  SyncPeer() : s(connect(sshd, key)) {
    local = sshd.dir() + "/src";
    // A space and a quote in the remote path exercise the quoting of every command.
    remote = sshd.home() + "/sync dir's-" + std::to_string(sshd.port());
    fs::create_directories(local);
  }
  ~SyncPeer() { std::filesystem::remove_all(remote); }
  static ssh::Session connect(test::Sshd& d, const ssh::KeyPair& k) {
    d.authorize(k.public_line);
    ssh::ConnectOptions o;
    o.host = "127.0.0.1";
    o.port = d.port();
    o.user = d.user();
    o.private_key = k.private_pem;
    o.host_key = d.host_key_pub();
    return ssh::Session::connect(o);
  }
  std::string l(const std::string& rel) const { return local + "/" + rel; }
  std::string r(const std::string& rel) const { return remote + "/" + rel; }
};

bool exists(const std::string& p) {
  struct stat st {};
  return ::lstat(p.c_str(), &st) == 0;
}

// "type mode size mtime path -> link" per entry, sorted, NUL-safe enough for tests.
std::string listing(const std::string& dir) {
  // Symlink mtimes are not kept (nothing reads them).
  return sh("cd " + q(dir) +
            " && { find . -mindepth 1 ! -type l -printf '%y %m %s %T@ %P\\n'; "
            "find . -type l -printf '%y %P -> %l\\n'; } | LC_ALL=C sort");
}

}  // namespace

TEST_CASE("ssh sync: gitignore-style patterns", "[ssh][sync]") {
  using ssh::glob_path_match;
  CHECK(glob_path_match("*.log", "a.log"));
  CHECK(glob_path_match("*.log", "deep/dir/a.log"));
  CHECK_FALSE(glob_path_match("/*.log", "deep/a.log"));
  CHECK(glob_path_match("/*.log", "a.log"));
  CHECK(glob_path_match("doc/*.txt", "doc/a.txt"));
  CHECK_FALSE(glob_path_match("doc/*.txt", "doc/x/a.txt"));
  CHECK(glob_path_match("doc/**/*.txt", "doc/x/y/a.txt"));
  CHECK(glob_path_match("doc/**/*.txt", "doc/a.txt"));
  CHECK(glob_path_match("**/build", "a/b/build"));
  CHECK(glob_path_match("**/build", "build"));
  CHECK(glob_path_match("a/**", "a/b/c"));
  CHECK_FALSE(glob_path_match("a/**", "a"));
  CHECK(glob_path_match("file?.[ch]", "file1.c"));
  CHECK_FALSE(glob_path_match("file?.[ch]", "file1.o"));
  CHECK(glob_path_match("[!a]*", "bcd"));
  CHECK(glob_path_match(".env*", ".env.local"));
  CHECK(glob_path_match("id_*", "keys/id_ed25519"));
  CHECK_FALSE(glob_path_match("# comment", "# comment"));
  CHECK(glob_path_match("\\#hash", "#hash"));
}

TEST_CASE("ssh sync: cold, warm, changes, delete, excludes, odd names, symlinks, fetch",
          "[ssh][sync]") {
  SyncPeer p;
  auto L = [&](const std::string& rel) { return p.l(rel); };
  fs::create_directories(L("src/deep/er"));
  fs::create_directories(L("node_modules/pkg"));
  fs::create_directories(L(".git/objects"));
  fs::create_directories(L("keys"));
  fs::create_directories(L("logs"));
  write_text(L("README.md"), "readme\n");
  write_text(L("run.sh"), "#!/bin/sh\necho hi\n", 0755);
  write_text(L("private.txt"), "mine\n", 0600);
  write_text(L("src/main.c"), "int main(){}\n");
  write_text(L("src/deep/er/data.bin"), std::string(300000, 'x'));
  write_text(L("node_modules/pkg/index.js"), "module\n");
  write_text(L(".git/HEAD"), "ref\n");
  write_text(L(".env"), "SECRET=1\n");
  write_text(L(".env.local"), "SECRET=2\n");
  write_text(L(".env.example"), "SECRET=\n");
  write_text(L("server.pem"), "pem\n");
  write_text(L("keys/id_ed25519"), "key\n");
  write_text(L("logs/a.log"), "log\n");
  write_text(L("src/.gitignore"), "*.o\n!keep.o\n/generated/\n");
  write_text(L("src/x.o"), "obj\n");
  write_text(L("src/keep.o"), "kept\n");
  fs::create_directories(L("src/generated"));
  write_text(L("src/generated/g.c"), "gen\n");
  fs::create_directories(L("src/deep/generated"));
  write_text(L("src/deep/generated/ok.c"), "not anchored here\n");
  // Odd names.
  write_text(L("with space.txt"), "space\n");
  write_text(L("new\nline.txt"), "newline\n");
  write_text(L("ünïcødé-文件.txt"), "unicode\n");
  std::string longdir = std::string(120, 'd') + "/" + std::string(90, 'e');
  fs::create_directories(L(longdir));
  write_text(L(longdir + "/" + std::string(150, 'f') + ".txt"), "long\n");
  // Symlinks: relative, absolute, dangling, to a directory.
  fs::create_symlink("README.md", L("link-to-readme"));
  fs::create_symlink("/etc/hostname", L("abs-link"));
  fs::create_symlink("does/not/exist", L("dangling"));
  fs::create_symlink("src/deep", L("dir-link"));
  fs::create_symlink(std::string(150, 'z'), L("long-target-link"));
  sh("touch -d '2001-02-03 04:05:06.123456789' " + q(L("README.md")) + "");

  ssh::SyncOptions o;
  o.exclude = {"node_modules/", "*.log"};
  o.include = {".env.example"};
  std::vector<ssh::SyncProgress> seen;
  auto st = ssh::sync(p.s, p.local, p.remote, o,
                      [&](const ssh::SyncProgress& pr) { seen.push_back(pr); });
  CHECK(st.files_sent == st.files_total);
  CHECK(st.files_sent > 10);
  CHECK_FALSE(st.used_sftp);
  REQUIRE_FALSE(seen.empty());
  CHECK(seen.back().files_done == seen.back().files_todo);
  CHECK(seen.back().bytes_done == seen.back().bytes_todo);

  auto R = [&](const std::string& rel) { return p.r(rel); };
  CHECK(test::read_text(R("README.md")) == "readme\n");
  CHECK(sh("stat -c '%a' " + q(R("run.sh")) + " " + q(R("private.txt")) + "") == "755\n600\n");
  CHECK(sh("stat -c '%y' " + q(R("README.md")) + "").rfind("2001-02-03 04:05:06.123456789", 0) ==
        0);
  CHECK(test::read_text(R("new\nline.txt")) == "newline\n");
  CHECK(test::read_text(R("with space.txt")) == "space\n");
  CHECK(test::read_text(R("ünïcødé-文件.txt")) == "unicode\n");
  CHECK(test::read_text(R(longdir + "/" + std::string(150, 'f') + ".txt")) == "long\n");
  CHECK(fs::read_symlink(R("link-to-readme")) == "README.md");
  CHECK(fs::read_symlink(R("abs-link")) == "/etc/hostname");
  CHECK(fs::read_symlink(R("dangling")) == "does/not/exist");
  CHECK(fs::read_symlink(R("dir-link")) == "src/deep");
  CHECK(fs::read_symlink(R("long-target-link")) == std::string(150, 'z'));
  // Excluded: defaults, user patterns, .gitignore (anchored and negated rules).
  for (auto ex : {".env", ".env.local", "server.pem", "keys/id_ed25519", ".git", "node_modules",
                  "logs/a.log", "src/x.o", "src/generated"})
    CHECK_FALSE(exists(R(ex)));
  CHECK(exists(R(".env.example")));
  CHECK(exists(R("src/keep.o")));
  CHECK(exists(R("src/deep/generated/ok.c")));
  CHECK(exists(R("src/.gitignore")));

  // Warm, nothing changed: nothing sent.
  st = ssh::sync(p.s, p.local, p.remote, o);
  CHECK(st.files_sent == 0);
  CHECK(st.bytes_sent == 0);
  CHECK(st.deleted == 0);

  // One file changed (same size, new content), one only touched (big: hashed, not sent).
  sh("sleep 0.01; printf 'README\\n' > " + q(L("README.md")) + "");
  sh("touch " + q(L("src/deep/er/data.bin")) + "");
  st = ssh::sync(p.s, p.local, p.remote, o);
  CHECK(st.files_sent == 1);
  CHECK(st.bytes_sent == 7);
  CHECK(test::read_text(R("README.md")) == "README\n");
  CHECK(sh("stat -c %Y " + q(L("src/deep/er/data.bin")) + " " + q(R("src/deep/er/data.bin")) +
           " | uniq | wc -l") == "1\n");
  st = ssh::sync(p.s, p.local, p.remote, o);
  CHECK(st.files_sent == 0);

  // Deletions: kept by default, removed with delete_extra; excluded remote files stay.
  fs::remove(L("with space.txt"));
  fs::remove_all(L("src/deep"));
  write_text(R("remote-only.log"), "remote log\n");
  st = ssh::sync(p.s, p.local, p.remote, o);
  CHECK(exists(R("with space.txt")));
  o.delete_extra = true;
  st = ssh::sync(p.s, p.local, p.remote, o);
  CHECK(st.deleted == 2);
  CHECK_FALSE(exists(R("with space.txt")));
  CHECK_FALSE(exists(R("src/deep")));
  CHECK(exists(R("remote-only.log")));

  // Type changes: file -> directory, directory -> symlink.
  fs::remove(L("src/main.c"));
  fs::create_directories(L("src/main.c"));
  write_text(L("src/main.c/inner"), "inner\n");
  fs::remove_all(L(longdir.substr(0, 120)));
  fs::create_symlink("src", L(longdir.substr(0, 120)));
  st = ssh::sync(p.s, p.local, p.remote, o);
  CHECK(test::read_text(R("src/main.c/inner")) == "inner\n");
  CHECK(fs::is_symlink(R(longdir.substr(0, 120))));

  // The remote now mirrors the local tree minus the excluded entries.
  std::string mirror = p.sshd.dir() + "/mirror";
  sh("cp -a " + q(p.local) + " " + q(mirror) + " && cd " + q(mirror) +
     " && rm -rf .env .env.local server.pem keys/id_ed25519 .git node_modules logs/a.log "
     "src/x.o src/generated");
  write_text(mirror + "/remote-only.log", "remote log\n");
  sh("touch -r " + q(R("remote-only.log")) + " " + q(mirror + "/remote-only.log"));
  auto strip_dirs = [](std::string s) {
    // Directory sizes and mtimes differ between file systems and runs.
    std::string out, line;
    std::istringstream in(s);
    while (std::getline(in, line))
      if (line.rfind("d ", 0) != 0) out += line + "\n";
    return out;
  };
  CHECK(strip_dirs(listing(p.remote)) == strip_dirs(listing(mirror)));

  // fetch: the reverse, into a fresh directory.
  std::string back = p.sshd.dir() + "/back";
  auto fst = ssh::fetch(p.s, p.remote, back);
  CHECK(fst.files > 10);
  CHECK(strip_dirs(listing(back)) == strip_dirs(listing(p.remote)));
  // A single file.
  ssh::fetch(p.s, p.r("README.md"), p.sshd.dir() + "/one/readme.txt");
  CHECK(test::read_text(p.sshd.dir() + "/one/readme.txt") == "README\n");
  CHECK_THROWS_WITH(ssh::fetch(p.s, p.r("missing"), back + "2"), Catch::Contains("no such file"));
}

TEST_CASE("ssh sync: SFTP fallback when the remote has no tar", "[ssh][sync]") {
  SyncPeer p;
  fs::create_directories(p.l("a/b"));
  write_text(p.l("a/b/f.txt"), "f\n", 0640);
  write_text(p.l("top.sh"), "#!/bin/sh\n", 0755);
  fs::create_symlink("a/b/f.txt", p.l("ln"));
  ssh::SyncOptions o;
  o.remote_tar = "no-such-tar-binary";
  auto st = ssh::sync(p.s, p.local, p.remote, o);
  CHECK(st.used_sftp);
  CHECK(st.files_sent == 3);
  CHECK(test::read_text(p.r("a/b/f.txt")) == "f\n");
  CHECK(sh("stat -c %a " + q(p.r("a/b/f.txt")) + " " + q(p.r("top.sh")) + "") == "640\n755\n");
  CHECK(fs::read_symlink(p.r("ln")) == "a/b/f.txt");
  CHECK(ssh::sync(p.s, p.local, p.remote, o).files_sent == 0);
}

TEST_CASE("ssh sync: a big file arrives intact (EPHRUN_BIG_FILE_MB)", "[ssh][sync][big]") {
  SyncPeer p;
  long mb = 1024;
  if (const char* e = std::getenv("EPHRUN_BIG_FILE_MB")) mb = std::atol(e);
  if (mb <= 0) return;
  sh("openssl enc -aes-128-ctr -nosalt -pass pass:ephrun -in /dev/zero 2>/dev/null | head -c " +
     std::to_string(mb) + "M > " + q(p.l("big.bin")) + "");
  auto t0 = ssh::Clock::now();
  auto st = ssh::sync(p.s, p.local, p.remote);
  auto took = std::chrono::duration<double>(ssh::Clock::now() - t0).count();
  WARN("synced " << mb << " MiB in " << took << " s (" << mb / took << " MiB/s)");
  CHECK(st.bytes_sent == static_cast<std::uint64_t>(mb) << 20);
  auto local_sum = sh("sha256sum < " + q(p.l("big.bin")) + "");
  auto remote_sum = p.s.run("sha256sum < " + q(p.r("big.bin"))).out;
  CHECK(local_sum == remote_sum);
}

TEST_CASE("ssh sync: a cancel stops the transfer and the remote tar", "[ssh][sync]") {
  SyncPeer p;
  sh("head -c 300M /dev/zero > " + q(p.l("zeros.bin")) + "");
  CancelToken tok;
  std::jthread canceller([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    tok.cancel("SIGINT");
  });
  auto t0 = ssh::Clock::now();
  ssh::ErrorKind kind = ssh::ErrorKind::other;
  try {
    ssh::sync(p.s, p.local, p.remote, {}, {}, tok);
  } catch (const ssh::Error& e) {
    kind = e.kind();
  }
  CHECK(kind == ssh::ErrorKind::cancelled);
  // A generous sanity bound: the cancel lands within about a second when the machine is
  // quiet; sanitizers and a loaded CI machine stretch that.
  CHECK(ssh::Clock::now() - t0 < std::chrono::seconds(15));
  bool gone = false;
  for (int i = 0; i < 30 && !gone; ++i) {
    // Only a tar working in this test's directory (others may run in parallel).
    gone = test::sh("for t in $(pgrep -u ephrun-test -x tar); do readlink /proc/$t/cwd; done; true")
               .find(p.remote) == std::string::npos;
    if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  CHECK(gone);
  CHECK(p.s.run("echo still usable").code == 0);
}

TEST_CASE("ssh download: setuid, setgid, sticky and world-writable bits stay behind",
          "[ssh][sync]") {
  SyncPeer p;
  fs::create_directories(p.remote);
  ::umask(022);
  // Owned by root on the remote side, as a compromised box would serve it.
  write_text(p.r("id"), "#!/bin/sh\nid -u\n", 04755);
  write_text(p.r("wide"), "x", 02777);
  write_text(p.r("plain"), "x", 0664);
  for (auto [name, want] : {std::pair{"id", 0755}, {"wide", 0755}, {"plain", 0644}}) {
    std::string local = p.local + "/" + name;
    ssh::download(p.s, p.r(name), local);
    struct stat st {};
    REQUIRE(::stat(local.c_str(), &st) == 0);
    CHECK((st.st_mode & 07777) == static_cast<unsigned>(want));
  }
}

TEST_CASE("ssh sync: a directory swapped for a symlink mid-transfer is not followed",
          "[ssh][sync]") {
  SyncPeer p;
  std::string outside = p.sshd.dir() + "/outside";
  fs::create_directories(outside);
  write_text(outside + "/x", "SECRET\n");
  fs::create_directories(p.l("a/deeper"));
  write_text(p.l("0first"), "first\n");
  write_text(p.l("a/x"), "inside\n");
  write_text(p.l("a/deeper/y"), "inside\n");
  fs::create_directories(outside + "/deeper");
  write_text(outside + "/deeper/y", "SECRET\n");
  // The first progress report comes while 0first is read, before anything in a/ is
  // opened: that is when the directory becomes a symlink out of the tree.
  bool swapped = false;
  auto st = ssh::sync(p.s, p.local, p.remote, {}, [&](const ssh::SyncProgress&) {
    if (swapped) return;
    swapped = true;
    fs::rename(p.l("a"), p.l("a.moved"));
    fs::create_symlink(outside, p.l("a"));
  });
  REQUIRE(swapped);
  CHECK(test::read_text(p.r("0first")) == "first\n");
  CHECK(test::read_text(p.r("a/x")).find("SECRET") == std::string::npos);
  CHECK(test::read_text(p.r("a/deeper/y")).find("SECRET") == std::string::npos);
  CHECK(st.files_sent < 3);
}
