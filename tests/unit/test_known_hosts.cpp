// ssh::known_host_entries: the lookup the static provider's attach check uses
// before anything connects must find what a connection would check.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "ssh/error.hpp"
#include "ssh/session.hpp"

using ephrun::ssh::known_host_entries;

namespace {

const char* kKey = "AAAAC3NzaC1lZDI1NTE5AAAAIHlR1hQHzB1r5b1h0+PnIk9Tgl3g1Wl+gm2l2yHTuUHq";

std::string write_known_hosts(const std::string& text) {
  auto dir = std::filesystem::temp_directory_path() / ("ephrun-kh-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto path = (dir / "known_hosts").string();
  std::ofstream(path) << text;
  return path;
}

}  // namespace

TEST_CASE("known_host_entries finds plain, port-qualified, hashed and revoked entries",
          "[known_hosts]") {
  std::string k = std::string(" ssh-ed25519 ") + kKey + "\n";
  auto path = write_known_hosts("# comment\nserver.example" + k + "[10.0.0.5]:2222" + k +
                                "@revoked bad.example" + k + "*.corp,!secret.corp" + k);
  CHECK(known_host_entries(path, "server.example", 22).size() == 1);
  CHECK(known_host_entries(path, "server.example", 2222).empty());
  CHECK(known_host_entries(path, "10.0.0.5", 2222).size() == 1);
  CHECK(known_host_entries(path, "10.0.0.5", 22).empty());
  auto revoked = known_host_entries(path, "bad.example", 22);
  REQUIRE(revoked.size() == 1);
  CHECK(revoked[0].revoked);
  CHECK(revoked[0].type == "ssh-ed25519");
  CHECK(known_host_entries(path, "build.corp", 22).size() == 1);
  CHECK(known_host_entries(path, "secret.corp", 22).empty());

  // Hashed the way `ssh-keygen -H` hashes ~/.ssh/known_hosts.
  REQUIRE(std::system(("ssh-keygen -q -H -f " + path + " >/dev/null 2>&1").c_str()) == 0);
  CHECK(known_host_entries(path, "server.example", 22).size() == 1);
  CHECK(known_host_entries(path, "10.0.0.5", 2222).size() == 1);
  CHECK(known_host_entries(path, "other.example", 22).empty());
  std::filesystem::remove_all(std::filesystem::path(path).parent_path());
}

TEST_CASE("known_host_entries on a file that cannot be read throws", "[known_hosts]") {
  CHECK_THROWS_AS(known_host_entries("/nonexistent/known_hosts", "h", 22), ephrun::ssh::Error);
}
