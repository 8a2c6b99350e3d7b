// host/sys/fs: files, modes, glob, hashing and path strings, without Lua.
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <string>

#include "sys/fs.hpp"

using namespace ephrun;

namespace {
struct TempDir {
  std::string path = sys::make_tempdir("ephrun-test-fs-");
  ~TempDir() { sys::remove(path, true); }
  [[nodiscard]] std::string operator/(const std::string& rel) const {
    return sys::join({path, rel});
  }
};
}  // namespace

TEST_CASE("modes parse from octal text only", "[fs]") {
  CHECK(sys::parse_mode("0644") == 0644);
  CHECK(sys::parse_mode("755") == 0755);
  CHECK(sys::parse_mode("0o600") == 0600);
  CHECK_FALSE(sys::parse_mode("0999"));
  CHECK_FALSE(sys::parse_mode("rwx"));
  CHECK_FALSE(sys::parse_mode(""));
  CHECK(sys::format_mode(0755) == "0755");
}

TEST_CASE("atomic write replaces the file and leaves no temporary behind", "[fs]") {
  TempDir d;
  std::string p = d / "f";
  sys::write_file(p, "one", 0644, true);
  struct stat before {};
  REQUIRE(::stat(p.c_str(), &before) == 0);
  sys::write_file(p, "two", 0600, true);
  struct stat after {};
  REQUIRE(::stat(p.c_str(), &after) == 0);
  CHECK(sys::read_file(p) == "two");
  CHECK(before.st_ino != after.st_ino);
  CHECK((after.st_mode & 07777) == 0600);
  CHECK(sys::list(d.path) == std::vector<std::string>{"f"});
  // the mode is exact, whatever the umask
  mode_t old = ::umask(077);
  sys::write_file(d / "g", "x", 0644, false);
  ::umask(old);
  CHECK(sys::stat(d / "g", false).mode == 0644);
}

TEST_CASE("failures carry errno and the path", "[fs]") {
  try {
    sys::read_file("/no/such/file");
    FAIL("no error");
  } catch (const sys::Error& e) {
    CHECK(e.code() == ENOENT);
    CHECK(e.code_name() == "ENOENT");
    CHECK(std::string(e.what()) == "cannot read /no/such/file: No such file or directory");
  }
  TempDir d;
  sys::write_file(d / "file", "", 0644, true);
  CHECK_THROWS_AS(sys::mkdir_p(d / "file/sub", 0755), sys::Error);
  CHECK_THROWS_AS(sys::write_file(d / "nodir/x", "", 0644, true), sys::Error);
}

TEST_CASE("mkdir_p, remove, stat types", "[fs]") {
  TempDir d;
  sys::mkdir_p(d / "a/b/c", 0755);
  sys::mkdir_p(d / "a/b/c", 0755);
  CHECK(sys::stat(d / "a/b", false).type == "dir");
  sys::write_file(d / "a/b/c/f", "x", 0644, true);
  REQUIRE(::symlink("/", (d / "a/root").c_str()) == 0);
  CHECK(sys::stat(d / "a/root", false).type == "link");
  CHECK(sys::stat(d / "a/root", true).type == "dir");
  CHECK_THROWS_AS(sys::remove(d / "a", false), sys::Error);
  CHECK(sys::remove(d / "a", true));
  CHECK_FALSE(sys::exists(d / "a"));
  CHECK_FALSE(sys::remove(d / "a", true));  // already gone
  CHECK(sys::exists("/"));                  // the symlink to / was not followed
}

TEST_CASE("glob matches *, ?, [] and **", "[fs]") {
  TempDir d;
  for (const char* f : {"a.c", "b.c", "ab.h", ".x.c", "s/t/u.c", "s/v.c"}) {
    sys::mkdir_p(sys::dirname(d / f), 0755);
    sys::write_file(d / f, "", 0644, false);
  }
  auto rel = [&](const std::vector<std::string>& v) {
    std::vector<std::string> out;
    for (const auto& p : v) out.push_back(p.substr(d.path.size() + 1));
    return out;
  };
  using V = std::vector<std::string>;
  CHECK(rel(sys::glob(d / "*.c")) == V{"a.c", "b.c"});
  CHECK(rel(sys::glob(d / "?b.*")) == V{"ab.h"});
  CHECK(rel(sys::glob(d / "**/*.c")) == V{"a.c", "b.c", "s/t/u.c", "s/v.c"});
  CHECK(rel(sys::glob(d / "s/**/*.c")) == V{"s/t/u.c", "s/v.c"});
  CHECK(rel(sys::glob(d / "**/**/u.c")) == V{"s/t/u.c"});
  CHECK(sys::glob(d / "zz*").empty());
}

TEST_CASE("hashes match known vectors, streamed or not, and stop when cancelled", "[fs]") {
  CHECK(sys::hash_string("abc", "sha256") ==
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(sys::hash_string("", "md5") == "d41d8cd98f00b204e9800998ecf8427e");
  CHECK_THROWS_WITH(sys::hash_string("", "nope"), Catch::Contains("unknown hash algorithm"));
  TempDir d;
  std::string big(3u << 20, 'z');
  sys::write_file(d / "big", big, 0644, true);
  CHECK(sys::hash_file(d / "big", "sha256") == sys::hash_string(big, "sha256"));
  CancelToken tok;
  tok.cancel("stopped");
  CHECK_THROWS_WITH(sys::hash_file(d / "big", "sha256", &tok), "stopped");
}

TEST_CASE("path strings", "[fs]") {
  CHECK(sys::basename("/a/b/") == "b");
  CHECK(sys::basename("") == ".");
  CHECK(sys::basename("//") == "/");
  CHECK(sys::dirname("/a/b") == "/a");
  CHECK(sys::dirname("//a") == "/");
  CHECK(sys::dirname("a/b") == "a");
  CHECK(sys::dirname("a") == ".");
  CHECK(sys::join({"a/", "/b/", "c"}) == "a/b/c");
  CHECK(sys::join({"", "/x"}) == "/x");
}

TEST_CASE("tempdirs are private and honour TMPDIR", "[fs]") {
  TempDir outer;
  const char* old = std::getenv("TMPDIR");
  std::string saved = old ? old : "";
  ::setenv("TMPDIR", outer.path.c_str(), 1);
  std::string t = sys::make_tempdir("p-");
  if (old)
    ::setenv("TMPDIR", saved.c_str(), 1);
  else
    ::unsetenv("TMPDIR");
  CHECK(sys::dirname(t) == outer.path);
  CHECK(sys::basename(t).rfind("p-", 0) == 0);
  CHECK(sys::stat(t, false).mode == 0700);
}
