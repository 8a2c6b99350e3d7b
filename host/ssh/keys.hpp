// SSH user keys: generate ed25519 pairs in OpenSSH's own formats, load key files,
// compute fingerprints exactly as `ssh-keygen -l` prints them.
#pragma once

#include <string>

namespace ephrun::ssh {

/// A freshly generated key pair.
struct KeyPair {
  std::string
      private_pem;  ///< "-----BEGIN OPENSSH PRIVATE KEY-----..." (openssh-key-v1, unencrypted)
  std::string
      public_line;  ///< "ssh-ed25519 AAAA... comment" (authorized_keys / .pub line, no newline)
  std::string fingerprint;  ///< "SHA256:..." (base64 without padding)
};

/// Generates an ed25519 key pair with OpenSSL. The private key is written in the
/// exact format `ssh-keygen -t ed25519 -N ''` produces, which libssh2 1.10 reads
/// from memory.
KeyPair generate_ed25519(const std::string& comment);

/// "SHA256:..." of a public-key line ("type base64 [comment]") or of a bare base64
/// blob. Throws ssh::Error(other) when the line is malformed.
std::string fingerprint_of_publine(const std::string& line);

/// "SHA256:..." of a raw public-key blob (the wire encoding, e.g. a server host key).
std::string fingerprint_of_blob(const std::string& blob);

/// The key type named inside a raw blob ("ssh-ed25519", "ecdsa-sha2-nistp256", ...).
std::string key_type_of_blob(const std::string& blob);

/// A private key loaded from a file, ready for Session (ConnectOptions::private_key).
struct LoadedKey {
  std::string private_pem;  ///< file contents (possibly converted to openssh-key-v1)
  std::string passphrase;   ///< passed to libssh2 when the key is encrypted
  std::string type;         ///< "ssh-ed25519", "ecdsa-sha2-nistp256", ...
  std::string public_line;  ///< "type base64" when it could be derived without decrypting
  std::string fingerprint;  ///< "SHA256:..." when public_line is known, else empty
  bool encrypted = false;
};

/// Loads an OpenSSH private key file (ed25519 or ecdsa; openssh-key-v1, PEM "EC PRIVATE
/// KEY", or unencrypted PKCS#8, which is converted). RSA keys are refused with an
/// explanation (libssh2 1.10 has no rsa-sha2-*, so OpenSSH >= 8.8 rejects them).
/// An encrypted key needs `passphrase`; a wrong passphrase shows up at authentication.
/// Throws ssh::Error(other).
LoadedKey load_private_key_file(const std::string& path, const std::string& passphrase = "");

/// Same as load_private_key_file for key text held in memory; `source` names it in
/// error messages.
LoadedKey parse_private_key(const std::string& text, const std::string& passphrase = "",
                            const std::string& source = "private key");

/// Writes `kp.private_pem` to `path` (mode 0600, created atomically) and
/// `kp.public_line` + "\n" to `path + ".pub"` (mode 0644). Throws ssh::Error(other).
void write_key_files(const KeyPair& kp, const std::string& path);

}  // namespace ephrun::ssh
