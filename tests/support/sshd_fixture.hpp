// A throwaway OpenSSH sshd on 127.0.0.1 for tests: its own config, generated host
// key and AuthorizedKeysFile, logging in as the plain user `ephrun-test` (root's
// shell startup is slow, and UsePAM=no refuses locked accounts, hence `usermod -p '*'`).
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace ephrun::test {

/// Runs `cmd` with /bin/sh; returns its stdout; throws when it exits non-zero.
inline std::string sh(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) throw std::runtime_error("popen failed: " + cmd);
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int st = ::pclose(p);
  if (st != 0) throw std::runtime_error("command failed (" + std::to_string(st) + "): " + cmd);
  return out;
}

/// Like sh() but returns the exit status and ignores failure.
inline int sh_status(const std::string& cmd) {
  int st = std::system(cmd.c_str());
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

inline std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void write_text(const std::string& path, const std::string& data, mode_t mode = 0644) {
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << data;
  }
  ::chmod(path.c_str(), mode);
}

/// A port that was free a moment ago (bind to 0, read it back, close).
inline int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  int port = ntohs(a.sin_port);
  ::close(fd);
  return port;
}

class Sshd {
 public:
  static constexpr const char* kUser = "ephrun-test";

  /// Prepares config, host key and user; starts sshd unless `start_now` is false.
  explicit Sshd(bool start_now = true) {
    ensure_user();
    ::mkdir("/run/sshd", 0755);
    char tmpl[] = "/tmp/ephrun-sshd-XXXXXX";
    if (!::mkdtemp(tmpl)) throw std::runtime_error("mkdtemp failed");
    dir_ = tmpl;
    ::chmod(dir_.c_str(), 0755);
    sh("ssh-keygen -q -t ed25519 -N '' -C test-host -f " + dir_ + "/host_ed25519");
    host_key_pub_ = read_text(dir_ + "/host_ed25519.pub");
    while (!host_key_pub_.empty() && host_key_pub_.back() == '\n') host_key_pub_.pop_back();
    write_text(dir_ + "/authorized_keys", "", 0644);
    port_ = free_port();
    std::ofstream cfg(dir_ + "/sshd_config");
    cfg << "Port " << port_ << "\n"
        << "ListenAddress 127.0.0.1\n"
        << "HostKey " << dir_ << "/host_ed25519\n"
        << "PidFile none\n"
        << "AuthorizedKeysFile " << dir_ << "/authorized_keys\n"
        << "UsePAM no\nStrictModes no\nPasswordAuthentication no\n"
        << "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        << "AllowUsers " << kUser << "\n"
        << "MaxStartups 200\nMaxSessions 200\nPrintMotd no\nUseDNS no\n"
        << "Subsystem sftp internal-sftp\n"
        << "LogLevel VERBOSE\n";
    cfg.close();
    if (start_now) start();
  }
  Sshd(const Sshd&) = delete;
  Sshd& operator=(const Sshd&) = delete;
  ~Sshd() {
    stop();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  /// Starts sshd and waits (up to 10 s) until it accepts connections.
  void start() {
    if (pid_ > 0) return;
    std::string cfg = dir_ + "/sshd_config", log = dir_ + "/sshd.log";
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    std::vector<std::string> args = {"/usr/sbin/sshd", "-D", "-e", "-f", cfg};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    int rc = posix_spawn(&pid_, argv[0], &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) throw std::runtime_error("cannot start sshd");
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < until) {
      int fd = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      a.sin_port = htons(static_cast<uint16_t>(port_));
      bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
      ::close(fd);
      if (ok) return;
      int st;
      if (::waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        throw std::runtime_error("sshd exited at start: " + read_text(log));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    throw std::runtime_error("sshd did not start listening: " + read_text(log));
  }

  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    int st;
    ::waitpid(pid_, &st, 0);
    pid_ = -1;
  }

  /// Appends a public-key line to the AuthorizedKeysFile.
  void authorize(const std::string& pub_line) {
    std::ofstream out(dir_ + "/authorized_keys", std::ios::app);
    out << pub_line << "\n";
  }

  [[nodiscard]] int port() const { return port_; }
  [[nodiscard]] const std::string& host_key_pub() const { return host_key_pub_; }
  [[nodiscard]] const std::string& dir() const { return dir_; }
  [[nodiscard]] std::string user() const { return kUser; }
  [[nodiscard]] std::string home() const { return std::string("/home/") + kUser; }
  [[nodiscard]] std::string log() const { return read_text(dir_ + "/sshd.log"); }

  /// Creates the test user once per machine (plain /bin/sh, unlocked for keys).
  static void ensure_user() {
    if (sh_status(std::string("id -u ") + kUser + " >/dev/null 2>&1") != 0) {
      sh_status(std::string("useradd -m -s /bin/sh ") + kUser + " >/dev/null 2>&1");
    }
    sh(std::string("usermod -p '*' ") + kUser);
  }

 private:
  std::string dir_;
  std::string host_key_pub_;
  int port_ = 0;
  pid_t pid_ = -1;
};

}  // namespace ephrun::test
