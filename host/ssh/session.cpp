#include "ssh/session.hpp"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include "ssh/keys.hpp"
#include "ssh/session_impl.hpp"
#include "ssh/util.hpp"

namespace ephrun::ssh {
namespace {

using std::chrono::milliseconds;

void global_init() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (libssh2_init(0) != 0) throw Error(ErrorKind::other, "libssh2_init failed");
  });
}

std::string endpoint(const ConnectOptions& o) { return o.host + ":" + std::to_string(o.port); }

milliseconds remaining(Clock::time_point deadline) {
  auto now = Clock::now();
  if (deadline <= now) return milliseconds(0);
  if (deadline == Clock::time_point::max()) return milliseconds(3600 * 1000);
  return std::chrono::duration_cast<milliseconds>(deadline - now) + milliseconds(1);
}

void check_token(const CancelToken& token) {
  if (token.cancelled()) {
    auto r = token.reason();
    throw Error(ErrorKind::cancelled, "cancelled" + (r.empty() ? std::string() : ": " + r));
  }
}

// ---- TCP ----------------------------------------------------------------------

int tcp_connect(const ConnectOptions& o, Clock::time_point deadline, const CancelToken& token) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  std::string port = std::to_string(o.port);
  int gai = ::getaddrinfo(o.host.c_str(), port.c_str(), &hints, &res);
  if (gai != 0)
    throw Error(ErrorKind::other, "cannot resolve host " + o.host + ": " + ::gai_strerror(gai));
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard(res, &::freeaddrinfo);

  ErrorKind last_kind = ErrorKind::refused;
  std::string last_msg;
  for (addrinfo* ai = res; ai; ai = ai->ai_next) {
    int fd =
        ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) continue;
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    int rc = ::connect(fd, ai->ai_addr, ai->ai_addrlen);
    int err = rc == 0 ? 0 : errno;
    if (rc != 0 && err == EINPROGRESS) {
      for (;;) {
        try {
          check_token(token);
        } catch (...) {
          ::close(fd);
          throw;
        }
        auto left = remaining(deadline);
        if (left.count() == 0) {
          err = ETIMEDOUT;
          break;
        }
        pollfd p{fd, POLLOUT, 0};
        int pr = ::poll(&p, 1, static_cast<int>(std::min<long>(left.count(), 50)));
        if (pr > 0) {
          socklen_t len = sizeof err;
          ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
          break;
        }
        if (pr < 0 && errno != EINTR) {
          err = errno;
          break;
        }
      }
    }
    if (err == 0) return fd;
    ::close(fd);
    if (err == ECONNREFUSED) {
      last_kind = ErrorKind::refused;
      last_msg = "connection refused by " + endpoint(o) + " (is sshd running yet?)";
    } else if (err == ETIMEDOUT) {
      last_kind = ErrorKind::timeout;
      last_msg = "timed out connecting to " + endpoint(o);
    } else {
      last_kind = (err == ECONNRESET) ? ErrorKind::refused : ErrorKind::other;
      last_msg = "cannot connect to " + endpoint(o) + ": " + std::strerror(err);
    }
  }
  if (last_msg.empty()) last_msg = "cannot connect to " + endpoint(o) + ": no usable address";
  throw Error(last_kind, last_msg);
}

// ---- host keys ----------------------------------------------------------------

const char* kDefaultHostKeyOrder =
    "ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,ssh-rsa";

struct KnownKey {
  std::string type;
  std::string blob;
  bool revoked = false;
};

bool glob_match(std::string_view pat, std::string_view s) {
  if (pat.empty()) return s.empty();
  if (pat[0] == '*') {
    for (std::size_t i = 0; i <= s.size(); ++i)
      if (glob_match(pat.substr(1), s.substr(i))) return true;
    return false;
  }
  if (s.empty()) return false;
  if (pat[0] == '?' || std::tolower(static_cast<unsigned char>(pat[0])) ==
                           std::tolower(static_cast<unsigned char>(s[0])))
    return glob_match(pat.substr(1), s.substr(1));
  return false;
}

bool host_field_matches(const std::string& field, const std::string& name) {
  if (field.rfind("|1|", 0) == 0) {
    auto bar = field.find('|', 3);
    if (bar == std::string::npos) return false;
    std::string salt, want;
    try {
      salt = base64_decode(field.substr(3, bar - 3));
      want = base64_decode(field.substr(bar + 1));
    } catch (const Error&) {
      return false;
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    HMAC(EVP_sha1(), salt.data(), static_cast<int>(salt.size()),
         reinterpret_cast<const unsigned char*>(name.data()), name.size(), md, &len);
    return want == std::string(reinterpret_cast<char*>(md), len);
  }
  bool matched = false;
  std::stringstream ss(field);
  std::string pat;
  while (std::getline(ss, pat, ',')) {
    bool neg = !pat.empty() && pat[0] == '!';
    if (neg) pat.erase(0, 1);
    if (glob_match(pat, name)) {
      if (neg) return false;
      matched = true;
    }
  }
  return matched;
}

std::vector<KnownKey> known_keys_for(const std::string& path, const std::string& host, int port) {
  std::ifstream in(path);
  if (!in) throw Error(ErrorKind::other, "cannot read known_hosts file " + path);
  std::string name = port == 22 ? host : "[" + host + "]:" + std::to_string(port);
  std::vector<KnownKey> keys;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string first, hosts, type, b64;
    if (!(ls >> first) || first[0] == '#') continue;
    bool revoked = false;
    if (first[0] == '@') {
      if (first == "@revoked")
        revoked = true;
      else
        continue;  // @cert-authority: certificates are not supported
      ls >> hosts;
    } else {
      hosts = first;
    }
    if (!(ls >> type >> b64)) continue;
    if (!host_field_matches(hosts, name)) continue;
    try {
      keys.push_back({type, base64_decode(b64), revoked});
    } catch (const Error&) {
    }
  }
  return keys;
}

std::string hostkey_prefs(const std::vector<std::string>& preferred) {
  std::string out;
  std::set<std::string> seen;
  auto add = [&](const std::string& t) {
    if (t.empty() || !seen.insert(t).second) return;
    if (!out.empty()) out += ',';
    out += t;
  };
  for (auto& t : preferred) add(t);
  std::stringstream ss(kDefaultHostKeyOrder);
  std::string t;
  while (std::getline(ss, t, ',')) add(t);
  return out;
}

}  // namespace

std::vector<KnownHostEntry> known_host_entries(const std::string& path, const std::string& host,
                                               int port) {
  std::vector<KnownHostEntry> out;
  for (const auto& k : known_keys_for(path, host, port)) out.push_back({k.type, k.revoked});
  return out;
}

// ---- Impl basics -----------------------------------------------------------------

void Session::Impl::disconnect() noexcept {
  if (sftp) {
    libssh2_session_set_blocking(s, 1);
    libssh2_session_set_timeout(s, 300);
    libssh2_sftp_shutdown(sftp);
    sftp = nullptr;
  }
  if (s) {
    libssh2_session_set_blocking(s, 1);
    libssh2_session_set_timeout(s, 300);
    libssh2_session_disconnect(s, "ephrun closing");
    libssh2_session_free(s);
    s = nullptr;
  }
  if (sock >= 0) {
    ::close(sock);
    sock = -1;
  }
}

void Session::Impl::require_open() const {
  if (!s) throw Error(ErrorKind::other, "SSH session to " + endpoint(opts) + " is closed");
}

std::string Session::Impl::last_error() const {
  if (!s) return "session closed";
  char* msg = nullptr;
  int len = 0;
  libssh2_session_last_error(s, &msg, &len, 0);
  return msg ? std::string(msg, static_cast<std::size_t>(len)) : "unknown error";
}

void Session::Impl::fail(const std::string& what) const {
  throw Error(ErrorKind::other, what + " on " + endpoint(opts) + ": " + last_error());
}

void Session::Impl::wait_socket(Clock::time_point deadline, const CancelToken& token,
                                const std::string& what) {
  check_token(token);
  auto left = remaining(deadline);
  if (left.count() == 0)
    throw Error(ErrorKind::timeout, what + " timed out (" + endpoint(opts) + ")");
  // A keepalive must not be interleaved with a packet libssh2 has only partly sent
  // (it would complete that one and report ours sent), so only when not blocked
  // on output.
  if (s && opts.keepalive_interval.count() > 0 && Clock::now() >= next_keepalive &&
      !(libssh2_session_block_directions(s) & LIBSSH2_SESSION_BLOCK_OUTBOUND)) {
    int next = 0;
    libssh2_keepalive_send(s, &next);
    next_keepalive = Clock::now() + std::chrono::seconds(std::max(next, 1));
  }
  short events = 0;
  int dir = s ? libssh2_session_block_directions(s) : 0;
  if (dir & LIBSSH2_SESSION_BLOCK_INBOUND) events |= POLLIN;
  if (dir & LIBSSH2_SESSION_BLOCK_OUTBOUND) events |= POLLOUT;
  if (events == 0) events = POLLIN;
  pollfd p{sock, events, 0};
  int pr = ::poll(&p, 1, static_cast<int>(std::min<long>(left.count(), 50)));
  if (pr < 0 && errno != EINTR)
    throw Error(ErrorKind::other, what + ": poll failed: " + std::strerror(errno));
  check_token(token);
}

LIBSSH2_CHANNEL* Session::Impl::open_channel(Clock::time_point deadline, const CancelToken& token) {
  require_open();
  for (;;) {
    LIBSSH2_CHANNEL* ch = libssh2_channel_open_session(s);
    if (ch) return ch;
    if (libssh2_session_last_errno(s) != LIBSSH2_ERROR_EAGAIN) fail("cannot open a channel");
    wait_socket(deadline, token, "opening a channel");
  }
}

void Session::Impl::close_channel(LIBSSH2_CHANNEL* ch, Clock::time_point deadline) noexcept {
  if (!ch) return;
  CancelToken none;
  try {
    retry([&] { return libssh2_channel_close(ch); }, deadline, none, "closing channel");
    retry([&] { return libssh2_channel_wait_closed(ch); }, deadline, none, "closing channel");
  } catch (...) {
  }
  try {
    auto later = Clock::now() + milliseconds(500);
    retry([&] { return libssh2_channel_free(ch); }, later, none, "freeing channel");
  } catch (...) {
  }
}

// ---- connect ----------------------------------------------------------------

namespace {

std::unique_ptr<Session::Impl> do_connect(const ConnectOptions& o, const CancelToken& token) {
  global_init();
  if (o.user.empty()) throw Error(ErrorKind::other, "ssh connect: no user given");
  int auth_methods = (!o.private_key.empty()) + (!o.key_file.empty()) + (o.agent ? 1 : 0);
  if (auth_methods != 1)
    throw Error(ErrorKind::other,
                "ssh connect: give exactly one of private_key, key_file or agent");
  if (o.host_key.empty() && o.known_hosts.empty() && !o.insecure_accept_any_host_key)
    throw Error(ErrorKind::other,
                "ssh connect to " + endpoint(o) +
                    ": no host key to verify against; give host_key (the server's .pub line or "
                    "SHA256 fingerprint) or known_hosts");

  // Resolve the expected host keys before touching the network.
  std::vector<KnownKey> known;
  std::vector<std::string> preferred;
  std::string pinned_blob, pinned_fp;
  if (!o.host_key.empty()) {
    if (o.host_key.rfind("SHA256:", 0) == 0) {
      pinned_fp = o.host_key;
      while (!pinned_fp.empty() && pinned_fp.back() == '=') pinned_fp.pop_back();
    } else {
      std::istringstream ls(o.host_key);
      std::string type, b64;
      ls >> type >> b64;
      pinned_blob = base64_decode(b64);
      if (pinned_blob.empty() || key_type_of_blob(pinned_blob) != type)
        throw Error(ErrorKind::other, "host_key is not a valid public-key line: " + o.host_key);
      pinned_fp = fingerprint_of_blob(pinned_blob);
      preferred.push_back(type);
    }
  } else if (!o.known_hosts.empty()) {
    known = known_keys_for(o.known_hosts, o.host, o.port);
    for (auto& k : known)
      if (!k.revoked) preferred.push_back(k.type);
  }

  std::string key_pem, key_desc, key_fp;
  if (!o.agent) {
    auto lk = o.key_file.empty() ? parse_private_key(o.private_key, o.passphrase, "private key")
                                 : load_private_key_file(o.key_file, o.passphrase);
    key_pem = lk.private_pem;
    key_fp = lk.fingerprint;
    key_desc = o.key_file.empty() ? "the given " + lk.type + " key" : "key file " + o.key_file;
  }

  auto deadline = Clock::now() + o.connect_timeout;
  auto impl = std::make_unique<Session::Impl>();
  impl->opts = o;
  impl->sock = tcp_connect(o, deadline, token);
  impl->s = libssh2_session_init();
  if (!impl->s) throw Error(ErrorKind::other, "libssh2_session_init failed");
  libssh2_session_set_blocking(impl->s, 0);
  libssh2_session_method_pref(impl->s, LIBSSH2_METHOD_HOSTKEY, hostkey_prefs(preferred).c_str());
  // AES-CTR uses AES-NI; it is what libssh2 1.10 does fastest.
  libssh2_session_method_pref(impl->s, LIBSSH2_METHOD_CRYPT_CS, "aes128-ctr,aes256-ctr,aes192-ctr");
  libssh2_session_method_pref(impl->s, LIBSSH2_METHOD_CRYPT_SC, "aes128-ctr,aes256-ctr,aes192-ctr");
  if (o.keepalive_interval.count() > 0)
    libssh2_keepalive_config(impl->s, 1, static_cast<unsigned>(o.keepalive_interval.count()));

  int rc = 0;
  try {
    rc = impl->retry([&] { return libssh2_session_handshake(impl->s, impl->sock); }, deadline,
                     token, "SSH handshake");
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::timeout) throw;
    throw Error(ErrorKind::banner, endpoint(o) +
                                       " accepted the connection but sent no SSH greeting before "
                                       "the deadline; the server may still be starting");
  }
  if (rc != 0) {
    std::string msg = impl->last_error();
    switch (rc) {
      case LIBSSH2_ERROR_BANNER_RECV:
      case LIBSSH2_ERROR_BANNER_SEND:
      case LIBSSH2_ERROR_SOCKET_RECV:
      case LIBSSH2_ERROR_SOCKET_SEND:
      case LIBSSH2_ERROR_SOCKET_DISCONNECT:
      case LIBSSH2_ERROR_TIMEOUT:
        throw Error(ErrorKind::banner, endpoint(o) +
                                           " accepted the connection but did not complete the "
                                           "SSH greeting (" +
                                           msg + "); the server may still be starting");
      default:
        throw Error(ErrorKind::other, "SSH handshake with " + endpoint(o) + " failed: " + msg);
    }
  }

  // Host key: always verified.
  std::size_t hk_len = 0;
  int hk_type = 0;
  const char* hk = libssh2_session_hostkey(impl->s, &hk_len, &hk_type);
  if (!hk) impl->fail("no host key received");
  std::string blob(hk, hk_len);
  impl->host_fp = fingerprint_of_blob(blob);
  std::string actual = key_type_of_blob(blob) + " " + impl->host_fp;
  if (!o.host_key.empty()) {
    bool ok = pinned_blob.empty() ? impl->host_fp == pinned_fp : blob == pinned_blob;
    if (!ok)
      throw Error(ErrorKind::host_key_mismatch,
                  "HOST KEY MISMATCH for " + endpoint(o) + ": expected " + pinned_fp +
                      ", server presented " + actual +
                      ". Refusing to connect: the server may be an impostor, or it was "
                      "reinstalled and the pinned key is stale.");
  } else if (!o.known_hosts.empty()) {
    bool ok = false;
    std::string expected;
    for (auto& k : known) {
      if (k.blob == blob && k.revoked)
        throw Error(ErrorKind::host_key_mismatch, "host key " + actual + " of " + endpoint(o) +
                                                      " is marked @revoked in " + o.known_hosts);
      if (k.revoked) continue;
      if (k.blob == blob) ok = true;
      if (!expected.empty()) expected += ", ";
      expected += k.type + " " + fingerprint_of_blob(k.blob);
    }
    if (!ok && expected.empty())
      throw Error(ErrorKind::host_key_unknown,
                  "host " + endpoint(o) + " is not in " + o.known_hosts + " (server key " + actual +
                      "). Verify the fingerprint out of band, then add it with ssh-keyscan.");
    if (!ok)
      throw Error(ErrorKind::host_key_mismatch,
                  "HOST KEY MISMATCH for " + endpoint(o) + ": expected " + expected + " (from " +
                      o.known_hosts + "), server presented " + actual + ". Refusing to connect.");
  } else {
    spdlog::warn("ssh: NOT verifying the host key of {} (insecure_accept_any_host_key); it is {}",
                 endpoint(o), actual);
  }

  // Authentication.
  auto auth_error = [&](const std::string& detail) {
    return Error(ErrorKind::auth,
                 "authentication failed for user '" + o.user + "' on " + endpoint(o) + " with " +
                     detail +
                     ". Check that the user exists on the server, that the public key is in "
                     "its authorized_keys (~" +
                     o.user +
                     "/.ssh/authorized_keys, readable by that user, not group/world-writable), "
                     "and that the key type is ed25519 or ecdsa (RSA cannot work with libssh2 "
                     "1.10).");
  };
  const char* methods = nullptr;
  for (;;) {
    methods = libssh2_userauth_list(impl->s, o.user.c_str(), static_cast<unsigned>(o.user.size()));
    if (methods || libssh2_userauth_authenticated(impl->s)) break;
    if (libssh2_session_last_errno(impl->s) != LIBSSH2_ERROR_EAGAIN) {
      auto e = libssh2_session_last_errno(impl->s);
      if (e == LIBSSH2_ERROR_SOCKET_DISCONNECT || e == LIBSSH2_ERROR_SOCKET_RECV)
        throw Error(ErrorKind::banner,
                    "server " + endpoint(o) +
                        " closed the connection before authentication: " + impl->last_error());
      impl->fail("cannot list authentication methods");
    }
    impl->wait_socket(deadline, token, "authentication");
  }
  if (methods && !std::strstr(methods, "publickey"))
    throw auth_error(std::string("a key, but the server does not accept public keys (offers: ") +
                     methods + ")");
  if (!libssh2_userauth_authenticated(impl->s)) {
    if (o.agent) {
      LIBSSH2_AGENT* agent = libssh2_agent_init(impl->s);
      if (!agent) impl->fail("cannot use ssh-agent");
      std::unique_ptr<LIBSSH2_AGENT, void (*)(LIBSSH2_AGENT*)> ag(agent, [](LIBSSH2_AGENT* a) {
        libssh2_agent_disconnect(a);
        libssh2_agent_free(a);
      });
      if (libssh2_agent_connect(agent) != 0)
        throw Error(ErrorKind::auth,
                    "cannot reach ssh-agent (is SSH_AUTH_SOCK set?): " + impl->last_error());
      if (libssh2_agent_list_identities(agent) != 0)
        throw Error(ErrorKind::auth, "cannot list ssh-agent keys: " + impl->last_error());
      libssh2_agent_publickey* id = nullptr;
      libssh2_agent_publickey* prev = nullptr;
      bool ok = false;
      std::string tried;
      while (libssh2_agent_get_identity(agent, &id, prev) == 0) {
        prev = id;
        tried += (tried.empty() ? "" : ", ") +
                 fingerprint_of_blob(std::string(reinterpret_cast<char*>(id->blob), id->blob_len));
        int arc = impl->retry([&] { return libssh2_agent_userauth(agent, o.user.c_str(), id); },
                              deadline, token, "agent authentication");
        if (arc == 0) {
          ok = true;
          break;
        }
      }
      if (!ok) throw auth_error("ssh-agent keys [" + (tried.empty() ? "none" : tried) + "]");
    } else {
      int arc = impl->retry(
          [&] {
            return libssh2_userauth_publickey_frommemory(
                impl->s, o.user.c_str(), o.user.size(), nullptr, 0, key_pem.data(), key_pem.size(),
                o.passphrase.empty() ? nullptr : o.passphrase.c_str());
          },
          deadline, token, "authentication");
      if (arc != 0) {
        std::string why = impl->last_error();
        if (arc == LIBSSH2_ERROR_FILE || arc == LIBSSH2_ERROR_METHOD_NOT_SUPPORTED ||
            why.find("nable to extract") != std::string::npos)
          throw Error(ErrorKind::auth,
                      "cannot use " + key_desc + " (" + why +
                          "): it must be an OpenSSH ed25519 or ecdsa private key" +
                          (o.passphrase.empty() ? std::string()
                                                : std::string(", and the passphrase must match")));
        throw auth_error(key_desc + (key_fp.empty() ? std::string() : " (" + key_fp + ")") + " [" +
                         why + "]");
      }
    }
  }
  impl->next_keepalive = Clock::now() + o.keepalive_interval;
  return impl;
}

}  // namespace

Session::Session(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Session::Session(Session&&) noexcept = default;
Session& Session::operator=(Session&&) noexcept = default;
Session::~Session() = default;

Session Session::connect(const ConnectOptions& opts, const CancelToken& token) {
  return Session(do_connect(opts, token));
}

void Session::close() noexcept {
  if (impl_) impl_->disconnect();
}
bool Session::is_open() const noexcept { return impl_ && impl_->s; }

void Session::reconnect(const CancelToken& token) {
  auto opts = options();
  if (impl_) impl_->disconnect();
  impl_ = do_connect(opts, token);
}

int Session::keepalive() {
  auto& im = impl();
  im.require_open();
  int next = 0;
  int rc = libssh2_keepalive_send(im.s, &next);
  if (rc != 0 && rc != LIBSSH2_ERROR_EAGAIN) im.fail("keepalive failed");
  im.next_keepalive = Clock::now() + std::chrono::seconds(std::max(next, 1));
  return next;
}

const ConnectOptions& Session::options() const {
  if (!impl_) throw Error(ErrorKind::other, "SSH session was moved from");
  return impl_->opts;
}
const std::string& Session::host_key_fingerprint() const {
  if (!impl_) throw Error(ErrorKind::other, "SSH session was moved from");
  return impl_->host_fp;
}
std::string Session::label() const {
  auto& o = options();
  return o.user + "@" + o.host + (o.port == 22 ? "" : ":" + std::to_string(o.port));
}
Session::Impl& Session::impl() {
  if (!impl_) throw Error(ErrorKind::other, "SSH session was moved from");
  return *impl_;
}

Session wait(const ConnectOptions& opts, Clock::time_point deadline, const CancelToken& token,
             const std::function<void(const Error&, int attempt)>& on_retry) {
  auto backoff = milliseconds(100);
  for (int attempt = 1;; ++attempt) {
    check_token(token);
    ConnectOptions o = opts;
    auto left = remaining(deadline);
    if (left.count() == 0)
      throw Error(ErrorKind::timeout, "timed out waiting for SSH on " + endpoint(opts));
    o.connect_timeout = std::min<milliseconds>(opts.connect_timeout, left);
    try {
      return Session::connect(o, token);
    } catch (const Error& e) {
      switch (e.kind()) {
        case ErrorKind::refused:
        case ErrorKind::timeout:
        case ErrorKind::banner:
        case ErrorKind::auth:  // cloud-init may not have installed the key yet
          break;
        default:
          throw;
      }
      if (on_retry) on_retry(e, attempt);
      if (Clock::now() + backoff >= deadline)
        throw Error(e.kind(), "gave up waiting for SSH on " + endpoint(opts) + " after " +
                                  std::to_string(attempt) + " attempts; last error: " + e.what());
      if (!token.sleep_for(backoff)) check_token(token);
      backoff = std::min<milliseconds>(backoff * 2, milliseconds(1000));
    }
  }
}

}  // namespace ephrun::ssh
