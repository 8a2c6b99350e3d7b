#include "ssh/keys.hpp"

#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>

#include "ssh/error.hpp"
#include "ssh/util.hpp"

namespace ephrun::ssh {
namespace {

constexpr std::string_view kBegin = "-----BEGIN OPENSSH PRIVATE KEY-----";
constexpr std::string_view kEnd = "-----END OPENSSH PRIVATE KEY-----";
constexpr std::string_view kMagic{"openssh-key-v1\0", 15};

[[noreturn]] void fail(const std::string& msg) { throw Error(ErrorKind::other, msg); }

struct PkeyDeleter {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyDeleter>;

std::string ed25519_blob(std::string_view pub) {
  std::string blob;
  detail::put_string(blob, "ssh-ed25519");
  detail::put_string(blob, pub);
  return blob;
}

// openssh-key-v1 as ssh-keygen writes it (sshkey.c: sshkey_private_to_blob2).
std::string openssh_private_pem(std::string_view seed, std::string_view pub,
                                const std::string& comment) {
  std::uint32_t check = 0;
  if (RAND_bytes(reinterpret_cast<unsigned char*>(&check), sizeof check) != 1)
    fail("random number generator failed");
  std::string priv;
  detail::put_u32(priv, check);
  detail::put_u32(priv, check);
  detail::put_string(priv, "ssh-ed25519");
  detail::put_string(priv, pub);
  detail::put_string(priv, std::string(seed) + std::string(pub));
  detail::put_string(priv, comment);
  for (char pad = 1; priv.size() % 8 != 0; ++pad) priv.push_back(pad);

  std::string raw(kMagic);
  detail::put_string(raw, "none");
  detail::put_string(raw, "none");
  detail::put_string(raw, "");
  detail::put_u32(raw, 1);
  detail::put_string(raw, ed25519_blob(pub));
  detail::put_string(raw, priv);

  std::string b64 = base64_encode(raw);
  std::string pem(kBegin);
  pem += '\n';
  for (std::size_t i = 0; i < b64.size(); i += 70) {
    pem += b64.substr(i, 70);
    pem += '\n';
  }
  pem += kEnd;
  pem += '\n';
  return pem;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read key file " + path + ": " + std::strerror(errno));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string pem_body(std::string_view pem, std::string_view begin, std::string_view end) {
  auto b = pem.find(begin);
  auto e = pem.find(end);
  if (b == std::string_view::npos || e == std::string_view::npos || e < b) return {};
  return std::string(pem.substr(b + begin.size(), e - b - begin.size()));
}

const std::string kRsaAdvice =
    "RSA user keys cannot be used: libssh2 1.10 only signs with ssh-rsa (SHA-1), which "
    "OpenSSH 8.8 and later refuse (no rsa-sha2-256/512 support). Use an ed25519 key "
    "instead: ssh-keygen -t ed25519 -f ~/.ssh/id_ed25519, then add the .pub line to the "
    "server's authorized_keys";

}  // namespace

std::string fingerprint_of_blob(const std::string& blob) {
  std::string fp = base64_encode(sha256(blob));
  while (!fp.empty() && fp.back() == '=') fp.pop_back();
  return "SHA256:" + fp;
}

std::string key_type_of_blob(const std::string& blob) {
  std::size_t pos = 0;
  return std::string(detail::get_string(blob, pos));
}

std::string fingerprint_of_publine(const std::string& line) {
  std::istringstream in(line);
  std::string a, b;
  in >> a >> b;
  std::string blob;
  if (b.empty()) {
    blob = base64_decode(a);
  } else {
    blob = base64_decode(b);
    if (key_type_of_blob(blob) != a)
      fail("public key line names type " + a + " but holds a " + key_type_of_blob(blob) + " key");
  }
  return fingerprint_of_blob(blob);
}

KeyPair generate_ed25519(const std::string& comment) {
  EVP_PKEY* raw = nullptr;
  std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)> ctx(
      EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, nullptr), &EVP_PKEY_CTX_free);
  if (!ctx || EVP_PKEY_keygen_init(ctx.get()) != 1 || EVP_PKEY_keygen(ctx.get(), &raw) != 1)
    fail("ed25519 key generation failed (OpenSSL)");
  PkeyPtr key(raw);
  std::string seed(32, '\0'), pub(32, '\0');
  std::size_t seed_len = seed.size(), pub_len = pub.size();
  if (EVP_PKEY_get_raw_private_key(key.get(), reinterpret_cast<unsigned char*>(seed.data()),
                                   &seed_len) != 1 ||
      EVP_PKEY_get_raw_public_key(key.get(), reinterpret_cast<unsigned char*>(pub.data()),
                                  &pub_len) != 1 ||
      seed_len != 32 || pub_len != 32)
    fail("cannot export ed25519 key (OpenSSL)");
  KeyPair kp;
  kp.private_pem = openssh_private_pem(seed, pub, comment);
  OPENSSL_cleanse(seed.data(), seed.size());
  std::string blob = ed25519_blob(pub);
  kp.public_line = "ssh-ed25519 " + base64_encode(blob);
  if (!comment.empty()) kp.public_line += " " + comment;
  kp.fingerprint = fingerprint_of_blob(blob);
  return kp;
}

LoadedKey load_private_key_file(const std::string& path, const std::string& passphrase) {
  return parse_private_key(read_file(path), passphrase, path);
}

LoadedKey parse_private_key(const std::string& text, const std::string& passphrase,
                            const std::string& path) {
  LoadedKey k;
  k.private_pem = text;
  k.passphrase = passphrase;
  const std::string& pem = k.private_pem;

  if (pem.find(kBegin) != std::string::npos) {
    std::string raw = base64_decode(pem_body(pem, kBegin, kEnd));
    if (raw.compare(0, kMagic.size(), kMagic) != 0) fail(path + ": not an openssh-key-v1 key");
    std::size_t pos = kMagic.size();
    std::string cipher(detail::get_string(raw, pos));
    detail::get_string(raw, pos);  // kdf name
    detail::get_string(raw, pos);  // kdf options
    if (detail::get_u32(raw, pos) != 1) fail(path + ": holds more than one key");
    std::string blob(detail::get_string(raw, pos));
    k.type = key_type_of_blob(blob);
    k.encrypted = cipher != "none";
    k.public_line = k.type + " " + base64_encode(blob);
    k.fingerprint = fingerprint_of_blob(blob);
  } else if (pem.find("BEGIN RSA PRIVATE KEY") != std::string::npos) {
    fail(path + ": " + kRsaAdvice);
  } else if (pem.find("BEGIN EC PRIVATE KEY") != std::string::npos) {
    k.type = "ecdsa";
    k.encrypted = pem.find("ENCRYPTED") != std::string::npos;
  } else if (pem.find("BEGIN ENCRYPTED PRIVATE KEY") != std::string::npos) {
    fail(path +
         ": encrypted PKCS#8 keys are not supported; convert it with "
         "`ssh-keygen -p -f " +
         path + "` (which rewrites it in OpenSSH format)");
  } else if (pem.find("BEGIN PRIVATE KEY") != std::string::npos) {
    // PKCS#8: libssh2 1.10 cannot read ed25519 in this form, so convert it.
    std::unique_ptr<BIO, decltype(&BIO_free)> bio(
        BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), &BIO_free);
    PkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
    if (!key) fail(path + ": unreadable PKCS#8 private key");
    int id = EVP_PKEY_get_base_id(key.get());
    if (id == EVP_PKEY_RSA) fail(path + ": " + kRsaAdvice);
    if (id == EVP_PKEY_ED25519) {
      std::string seed(32, '\0'), pub(32, '\0');
      std::size_t sl = 32, pl = 32;
      if (EVP_PKEY_get_raw_private_key(key.get(), reinterpret_cast<unsigned char*>(seed.data()),
                                       &sl) != 1 ||
          EVP_PKEY_get_raw_public_key(key.get(), reinterpret_cast<unsigned char*>(pub.data()),
                                      &pl) != 1)
        fail(path + ": cannot read ed25519 key");
      k.private_pem = openssh_private_pem(seed, pub, "");
      OPENSSL_cleanse(seed.data(), seed.size());
      std::string blob = ed25519_blob(pub);
      k.type = "ssh-ed25519";
      k.public_line = k.type + " " + base64_encode(blob);
      k.fingerprint = fingerprint_of_blob(blob);
    } else if (id == EVP_PKEY_EC) {
      k.type = "ecdsa";
    } else {
      fail(path + ": unsupported key type (use ed25519)");
    }
  } else if (pem.find("PUTTY") != std::string::npos) {
    fail(path + ": PuTTY keys are not supported; export it in OpenSSH format");
  } else {
    fail(path + ": not a private key file (expected an OpenSSH ed25519 or ecdsa key)");
  }
  if (k.type == "ssh-rsa") fail(path + ": " + kRsaAdvice);
  if (k.type.rfind("ssh-ed25519", 0) != 0 && k.type.rfind("ecdsa", 0) != 0)
    fail(path + ": unsupported key type " + k.type + " (use ed25519)");
  if (k.encrypted && passphrase.empty())
    fail(path + " is encrypted: give its passphrase (prompt or environment variable)");
  return k;
}

void write_key_files(const KeyPair& kp, const std::string& path) {
  auto write = [](const std::string& p, const std::string& data, mode_t mode) {
    std::string tmp = p + ".tmp" + std::to_string(::getpid());
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0) fail("cannot write " + p + ": " + std::strerror(errno));
    ::fchmod(fd, mode);  // the umask must not widen or narrow it
    std::size_t off = 0;
    while (off < data.size()) {
      ssize_t n = ::write(fd, data.data() + off, data.size() - off);
      if (n < 0) {
        if (errno == EINTR) continue;
        int e = errno;
        ::close(fd);
        ::unlink(tmp.c_str());
        fail("cannot write " + p + ": " + std::strerror(e));
      }
      off += static_cast<std::size_t>(n);
    }
    if (::fsync(fd) != 0 || ::close(fd) != 0 || ::rename(tmp.c_str(), p.c_str()) != 0) {
      int e = errno;
      ::unlink(tmp.c_str());
      fail("cannot write " + p + ": " + std::strerror(e));
    }
  };
  write(path, kp.private_pem, 0600);
  write(path + ".pub", kp.public_line + "\n", 0644);
}

}  // namespace ephrun::ssh
