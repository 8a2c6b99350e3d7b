#include <sys/stat.h>

#include <catch2/catch.hpp>

#include "../support/sshd_fixture.hpp"
#include "ssh/error.hpp"
#include "ssh/keys.hpp"

using namespace ephrun;
using test::sh;

TEST_CASE("ssh keys: generated ed25519 pair is what ssh-keygen reads", "[ssh][keys]") {
  auto kp = ssh::generate_ed25519("ephrun-test@unit");
  REQUIRE(kp.private_pem.rfind("-----BEGIN OPENSSH PRIVATE KEY-----\n", 0) == 0);
  REQUIRE(kp.public_line.rfind("ssh-ed25519 AAAA", 0) == 0);
  REQUIRE(kp.public_line.substr(kp.public_line.size() - 16) == "ephrun-test@unit");

  char tmpl[] = "/tmp/ephrun-keys-XXXXXX";
  REQUIRE(::mkdtemp(tmpl));
  std::string dir = tmpl, path = dir + "/id_test";
  ssh::write_key_files(kp, path);
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);

  // ssh-keygen derives the same public key and fingerprint from our private key.
  auto derived = sh("ssh-keygen -y -f " + path);
  CHECK(derived.substr(0, derived.find(' ', 12)) ==
        kp.public_line.substr(0, kp.public_line.find(' ', 12)));
  auto listed = sh("ssh-keygen -l -f " + path);
  CHECK(listed.find(kp.fingerprint) != std::string::npos);
  CHECK(ssh::fingerprint_of_publine(kp.public_line) == kp.fingerprint);

  // And a key ssh-keygen made is loaded with the fingerprint ssh-keygen prints.
  sh("ssh-keygen -q -t ed25519 -N '' -C other -f " + dir + "/id_other");
  auto loaded = ssh::load_private_key_file(dir + "/id_other");
  CHECK(loaded.type == "ssh-ed25519");
  CHECK_FALSE(loaded.encrypted);
  CHECK(sh("ssh-keygen -l -f " + dir + "/id_other").find(loaded.fingerprint) != std::string::npos);

  sh("ssh-keygen -q -t ecdsa -N '' -f " + dir + "/id_ecdsa");
  CHECK(ssh::load_private_key_file(dir + "/id_ecdsa").type == "ecdsa-sha2-nistp256");

  sh("ssh-keygen -q -t ed25519 -N 'sekrit' -f " + dir + "/id_enc");
  CHECK_THROWS_WITH(ssh::load_private_key_file(dir + "/id_enc"), Catch::Contains("passphrase"));
  CHECK(ssh::load_private_key_file(dir + "/id_enc", "sekrit").encrypted);

  sh("ssh-keygen -q -t rsa -b 2048 -N '' -f " + dir + "/id_rsa");
  CHECK_THROWS_WITH(ssh::load_private_key_file(dir + "/id_rsa"),
                    Catch::Contains("ed25519") && Catch::Contains("rsa-sha2"));
  sh("ssh-keygen -q -t rsa -b 2048 -m PEM -N '' -f " + dir + "/id_rsa_pem");
  CHECK_THROWS_WITH(ssh::load_private_key_file(dir + "/id_rsa_pem"), Catch::Contains("RSA"));

  // PKCS#8 ed25519 (what `openssl genpkey` writes) is converted to openssh-key-v1.
  sh("openssl genpkey -algorithm ed25519 -out " + dir + "/p8.pem 2>/dev/null");
  auto p8 = ssh::load_private_key_file(dir + "/p8.pem");
  CHECK(p8.private_pem.rfind("-----BEGIN OPENSSH PRIVATE KEY-----", 0) == 0);
  test::write_text(dir + "/p8conv", p8.private_pem, 0600);
  CHECK(sh("ssh-keygen -y -f " + dir + "/p8conv").rfind("ssh-ed25519 ", 0) == 0);

  CHECK_THROWS_AS(ssh::fingerprint_of_publine("ssh-ed25519 !!!"), ssh::Error);
  sh("rm -rf " + dir);
}
