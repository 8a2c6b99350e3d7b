#include <sys/stat.h>

#include <catch2/catch.hpp>

#include "../support/sshd_fixture.hpp"
#include "ssh/keys.hpp"
#include "ssh/session.hpp"
#include "ssh/sftp.hpp"

using namespace ephrun;
using namespace std::chrono_literals;
using test::sh;

TEST_CASE("ssh sftp: round trips, atomic replace, mode, mkdir_p, stat, remove", "[ssh][sftp]") {
  test::Sshd sshd;
  auto key = ssh::generate_ed25519("sftp");
  sshd.authorize(key.public_line);
  ssh::ConnectOptions o;
  o.host = "127.0.0.1";
  o.port = sshd.port();
  o.user = sshd.user();
  o.private_key = key.private_pem;
  o.host_key = sshd.host_key_pub();
  auto s = ssh::Session::connect(o);

  std::string rdir = sshd.home() + "/sftp-" + std::to_string(sshd.port());
  ssh::mkdir_p(s, rdir + "/a/b/c");
  ssh::mkdir_p(s, rdir + "/a/b/c");  // idempotent
  auto st = ssh::stat(s, rdir + "/a/b/c");
  REQUIRE(st);
  CHECK(st->type == ssh::RemoteStat::Type::dir);

  ssh::put_string(s, rdir + "/a/hello.txt", "hello\n", 0640);
  CHECK(ssh::get_string(s, rdir + "/a/hello.txt") == "hello\n");
  st = ssh::stat(s, rdir + "/a/hello.txt");
  REQUIRE(st);
  CHECK(st->type == ssh::RemoteStat::Type::file);
  CHECK(st->mode == 0640);
  CHECK(st->size == 6);
  // Replacing an existing file works (and leaves no temp file behind).
  ssh::put_string(s, rdir + "/a/hello.txt", "second\n");
  CHECK(ssh::get_string(s, rdir + "/a/hello.txt") == "second\n");
  CHECK(sh("ls -A " + rdir + "/a") == "b\nhello.txt\n");
  CHECK_FALSE(ssh::stat(s, rdir + "/missing"));
  CHECK_THROWS_WITH(ssh::get_string(s, rdir + "/missing"), Catch::Contains("no such file"));

  // Binary file of a few MB with mode 0751: upload, download, compare.
  std::string local = sshd.dir() + "/blob.bin";
  sh("head -c 5000000 /dev/urandom > " + local + " && chmod 0751 " + local +
     " && touch -d @1600000000 " + local);
  CHECK(ssh::upload(s, local, rdir + "/blob.bin") == 5000000);
  CHECK(ssh::upload(s, local, rdir + "/blob.bin") == 5000000);  // over an existing file
  CHECK(sh("cmp " + local + " " + rdir + "/blob.bin && stat -c '%a %Y' " + rdir + "/blob.bin") ==
        "751 1600000000\n");
  std::string back = sshd.dir() + "/back.bin";
  CHECK(ssh::download(s, rdir + "/blob.bin", back) == 5000000);
  CHECK(sh("cmp " + local + " " + back + " && stat -c %a " + back) == "751\n");

  CHECK(ssh::remove(s, rdir + "/a/hello.txt"));
  CHECK_FALSE(ssh::remove(s, rdir + "/a/hello.txt"));
  CHECK(ssh::remove(s, rdir + "/a/b/c"));
  CHECK_FALSE(ssh::stat(s, rdir + "/a/b/c"));
  sh("rm -rf " + rdir);
}
