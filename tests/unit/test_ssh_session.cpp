#include <catch2/catch.hpp>
#include <thread>

#include "../support/sshd_fixture.hpp"
#include "ssh/keys.hpp"
#include "ssh/session.hpp"

using namespace ephrun;
using namespace std::chrono_literals;
using test::sh;
using test::sh_status;

namespace {

struct Peer {
  test::Sshd sshd;
  ssh::KeyPair key = ssh::generate_ed25519("unit");
  explicit Peer(bool start = true) : sshd(start) { sshd.authorize(key.public_line); }
  ssh::ConnectOptions opts() const {
    ssh::ConnectOptions o;
    o.host = "127.0.0.1";
    o.port = sshd.port();
    o.user = sshd.user();
    o.private_key = key.private_pem;
    o.host_key = sshd.host_key_pub();
    o.connect_timeout = 5s;
    return o;
  }
};

ssh::ErrorKind kind_of(const std::function<void()>& fn, std::string* msg = nullptr) {
  try {
    fn();
  } catch (const ssh::Error& e) {
    if (msg) *msg = e.what();
    return e.kind();
  }
  FAIL("no ssh::Error thrown");
  return ssh::ErrorKind::other;
}

bool remote_proc_gone(const std::string& pattern) {
  for (int i = 0; i < 30; ++i) {
    if (sh_status("pgrep -u ephrun-test -f '" + pattern + "' >/dev/null") != 0) return true;
    std::this_thread::sleep_for(100ms);
  }
  return false;
}

}  // namespace

TEST_CASE("ssh session: pinned host key by line and by fingerprint", "[ssh][session]") {
  Peer p;
  auto s = ssh::Session::connect(p.opts());
  CHECK(s.is_open());
  CHECK(s.host_key_fingerprint() == ssh::fingerprint_of_publine(p.sshd.host_key_pub()));
  auto r = s.run("echo hello; whoami");
  CHECK(r.code == 0);
  CHECK(r.out == "hello\nephrun-test\n");

  auto o = p.opts();
  o.host_key = ssh::fingerprint_of_publine(p.sshd.host_key_pub());
  CHECK(ssh::Session::connect(o).run("true").code == 0);

  s.close();
  s.close();
  CHECK_FALSE(s.is_open());
  CHECK_THROWS_AS(s.run("true"), ssh::Error);
}

TEST_CASE("ssh session: known_hosts with a hashed entry", "[ssh][session]") {
  Peer p;
  auto kh = p.sshd.dir() + "/known_hosts";
  auto line = p.sshd.host_key_pub();
  line = line.substr(0, line.rfind(' '));
  test::write_text(
      kh,
      "# comment\nother.example ssh-ed25519 "
      "AAAAC3NzaC1lZDI1NTE5AAAAIHlR1hQHzB1r5b1h0+PnIk9Tgl3g1Wl+gm2l2yHTuUHq\n[127.0.0.1]:" +
          std::to_string(p.sshd.port()) + " " + line + "\n");
  sh("ssh-keygen -q -H -f " + kh + " 2>/dev/null");
  REQUIRE(test::read_text(kh).find("|1|") != std::string::npos);
  REQUIRE(test::read_text(kh).find("127.0.0.1") == std::string::npos);
  auto o = p.opts();
  o.host_key.clear();
  o.known_hosts = kh;
  CHECK(ssh::Session::connect(o).run("true").code == 0);

  // Same file, another port: no entry.
  auto other = ssh::generate_ed25519("x");
  test::write_text(kh, "[127.0.0.1]:1 " + line + "\n");
  std::string msg;
  CHECK(kind_of([&] { ssh::Session::connect(o); }, &msg) == ssh::ErrorKind::host_key_unknown);
  // An entry with a different key is a mismatch.
  test::write_text(kh,
                   "[127.0.0.1]:" + std::to_string(p.sshd.port()) + " " + other.public_line + "\n");
  CHECK(kind_of([&] { ssh::Session::connect(o); }, &msg) == ssh::ErrorKind::host_key_mismatch);
  CHECK_THAT(msg, Catch::Contains(other.fingerprint));
}

TEST_CASE("ssh session: host key mismatch names both fingerprints", "[ssh][session]") {
  Peer p;
  auto wrong = ssh::generate_ed25519("impostor");
  auto o = p.opts();
  o.host_key = wrong.public_line;
  std::string msg;
  CHECK(kind_of([&] { ssh::Session::connect(o); }, &msg) == ssh::ErrorKind::host_key_mismatch);
  CHECK_THAT(msg, Catch::Contains(wrong.fingerprint));
  CHECK_THAT(msg, Catch::Contains(ssh::fingerprint_of_publine(p.sshd.host_key_pub())));
  o.host_key = wrong.fingerprint;
  CHECK(kind_of([&] { ssh::Session::connect(o); }) == ssh::ErrorKind::host_key_mismatch);
  // No host key at all is refused before connecting.
  o.host_key.clear();
  CHECK_THROWS_WITH(ssh::Session::connect(o), Catch::Contains("host_key"));
  o.insecure_accept_any_host_key = true;
  CHECK(ssh::Session::connect(o).run("true").code == 0);
}

TEST_CASE("ssh session: auth failure says which user and key", "[ssh][session]") {
  Peer p;
  auto stranger = ssh::generate_ed25519("stranger");
  auto o = p.opts();
  o.private_key = stranger.private_pem;
  std::string msg;
  CHECK(kind_of([&] { ssh::Session::connect(o); }, &msg) == ssh::ErrorKind::auth);
  CHECK_THAT(msg, Catch::Contains("ephrun-test") && Catch::Contains(stranger.fingerprint) &&
                      Catch::Contains("authorized_keys"));
  // A key file works too.
  ssh::write_key_files(p.key, p.sshd.dir() + "/id_user");
  o.private_key.clear();
  o.key_file = p.sshd.dir() + "/id_user";
  CHECK(ssh::Session::connect(o).run("true").code == 0);
}

TEST_CASE("ssh session: refused and cancelled connects", "[ssh][session]") {
  ssh::ConnectOptions o;
  o.host = "127.0.0.1";
  o.port = test::free_port();
  o.user = "nobody";
  o.private_key = ssh::generate_ed25519("").private_pem;
  o.insecure_accept_any_host_key = true;
  CHECK(kind_of([&] { ssh::Session::connect(o); }) == ssh::ErrorKind::refused);
  // wait() gives up at its deadline with the last kind.
  auto t0 = ssh::Clock::now();
  CHECK(kind_of([&] { ssh::wait(o, ssh::Clock::now() + 700ms); }) == ssh::ErrorKind::refused);
  CHECK(ssh::Clock::now() - t0 < 1500ms);
  // A cancel interrupts wait() promptly.
  CancelToken tok;
  std::jthread canceller([&] {
    std::this_thread::sleep_for(300ms);
    tok.cancel("SIGINT");
  });
  t0 = ssh::Clock::now();
  CHECK(kind_of([&] { ssh::wait(o, ssh::Clock::now() + 30s, tok); }) == ssh::ErrorKind::cancelled);
  CHECK(ssh::Clock::now() - t0 < 1000ms);
  canceller.join();
}

TEST_CASE("ssh session: wait() until sshd starts 2 s later", "[ssh][session]") {
  Peer p(false);
  std::jthread starter([&] {
    std::this_thread::sleep_for(2s);
    p.sshd.start();
  });
  int retries = 0;
  auto t0 = ssh::Clock::now();
  auto s = ssh::wait(p.opts(), ssh::Clock::now() + 20s, {}, [&](const ssh::Error& e, int) {
    CHECK(e.kind() == ssh::ErrorKind::refused);
    ++retries;
  });
  auto took = ssh::Clock::now() - t0;
  starter.join();
  CHECK(retries >= 3);
  CHECK(took >= 2s);
  CHECK(took < 6s);  // generous: CI runs tests two at a time
  CHECK(s.run("true").code == 0);
}

TEST_CASE("ssh exec: exit codes, stderr, stdin, cwd, streaming", "[ssh][exec]") {
  Peer p;
  auto s = ssh::Session::connect(p.opts());
  CHECK(s.run("exit 3").code == 3);
  auto r = s.run("echo out; echo err >&2; exit 7");
  CHECK(r.code == 7);
  CHECK(r.out == "out\n");
  CHECK(r.err == "err\n");
  CHECK_THAT(r.failure_message("x"), Catch::Contains("code 7") && Catch::Contains("err"));

  ssh::ExecOptions eo;
  eo.stdin_data = "line one\nline two\n";
  CHECK(s.run("wc -l", eo).out == "2\n");

  eo = {};
  eo.cwd = "/tmp";
  CHECK(s.run("pwd", eo).out == "/tmp\n");
  eo.cwd = "/nonexistent-dir";
  CHECK(s.run("pwd", eo).code == 125);

  std::vector<std::string> lines, errs;
  eo = {};
  eo.on_stdout_line = [&](std::string_view l) { lines.emplace_back(l); };
  eo.on_stderr_line = [&](std::string_view l) { errs.emplace_back(l); };
  r = s.run("for i in 1 2 3; do echo $i; done; printf tail; echo e >&2", eo);
  CHECK(lines == std::vector<std::string>{"1", "2", "3", "tail"});
  CHECK(errs == std::vector<std::string>{"e"});

  // Bounded capture keeps the tail.
  eo = {};
  eo.max_capture = 1000;
  r = s.run("seq 1 100000", eo);
  CHECK(r.out.size() == 1000);
  CHECK(r.out_truncated);
  CHECK(r.out.substr(r.out.size() - 7) == "100000\n");

  // Killed by a signal.
  r = s.run("kill -KILL $$");
  CHECK(r.signal == "KILL");
  CHECK(r.code == -1);
}

TEST_CASE("ssh exec: env values never reach a command line", "[ssh][exec]") {
  Peer p;
  auto s = ssh::Session::connect(p.opts());
  ssh::ExecOptions eo;
  std::string secret = "s3cr3t-'quoted' $(not run) `x`\nsecond line";
  eo.env = {{"EPHRUN_SECRET", secret}, {"OTHER", "2"}};
  auto r = s.run(
      "printf '%s' \"$EPHRUN_SECRET\"; echo; echo $OTHER; sleep 1 & "
      "ps -eo args > /tmp/ephrun-ps-$$.txt; cat /tmp/ephrun-ps-$$.txt; rm -f /tmp/ephrun-ps-$$.txt",
      eo);
  REQUIRE(r.code == 0);
  CHECK(r.out.rfind(secret + "\n2\n", 0) == 0);
  auto ps = r.out.substr(secret.size() + 3);
  CHECK(ps.find("s3cr3t") == std::string::npos);
  CHECK(sh("ps -eo args").find("s3cr3t") == std::string::npos);
  eo.env = {{"BAD NAME", "x"}};
  CHECK_THROWS_AS(s.run("true", eo), ssh::Error);
  // stdin still reaches the command after the env preamble.
  eo.env = {{"A", "1"}};
  eo.stdin_data = "payload";
  CHECK(s.run("echo $A; cat", eo).out == "1\npayload");
}

TEST_CASE("ssh exec: timeout and cancel stop the remote process", "[ssh][exec]") {
  Peer p;
  auto s = ssh::Session::connect(p.opts());
  ssh::ExecOptions eo;
  eo.timeout = 500ms;
  auto t0 = ssh::Clock::now();
  std::string msg;
  CHECK(kind_of([&] { s.run("sleep 301; echo done", eo); }, &msg) == ssh::ErrorKind::timeout);
  CHECK(ssh::Clock::now() - t0 < 1500ms);
  CHECK_THAT(msg, Catch::Contains("sleep 301"));
  CHECK(remote_proc_gone("sleep 301"));

  // A child ignoring its stdin in a pipeline, cancelled from another thread.
  CancelToken tok;
  std::jthread canceller([&] {
    std::this_thread::sleep_for(400ms);
    tok.cancel("interrupted");
  });
  t0 = ssh::Clock::now();
  CHECK(kind_of([&] { s.run("sleep 302 | cat; sleep 303", {}, tok); }) ==
        ssh::ErrorKind::cancelled);
  CHECK(ssh::Clock::now() - t0 < 1400ms);
  canceller.join();
  CHECK(remote_proc_gone("sleep 30[23]"));
  // The session is still usable.
  CHECK(s.run("echo ok").out == "ok\n");
}

TEST_CASE("ssh exec: detached jobs survive the connection", "[ssh][exec]") {
  Peer p;
  ssh::DetachedJob job;
  {
    auto s = ssh::Session::connect(p.opts());
    ssh::DetachedOptions d;
    d.log = "/tmp/ephrun-job-" + std::to_string(p.sshd.port()) + ".log";
    d.env = {{"MSG", "from-env"}};
    auto t0 = ssh::Clock::now();
    job = s.run_detached("echo start $MSG; sleep 2; echo finish; exit 4", d);
    WARN("launch took " << std::chrono::duration<double>(ssh::Clock::now() - t0).count());
    CHECK(job.pid > 1);
    CHECK(job.log == d.log);
    CHECK(s.job_alive(job));
  }
  // New connection: still running, then finishes.
  auto s = ssh::Session::connect(p.opts());
  CHECK(s.job_alive(job));
  CHECK_FALSE(s.job_exit_code(job).has_value());
  CHECK(s.job_wait(job, ssh::Clock::now() + 10s, {}, 200ms) == 4);
  CHECK_FALSE(s.job_alive(job));
  CHECK(s.job_tail(job, 5) == "start from-env\nfinish\n");
  CHECK(s.job_exit_code(job) == 4);
  sh("rm -f " + job.log + " " + job.status_file);

  auto j2 = s.run_detached("echo default-log");
  CHECK(j2.log.rfind("/home/ephrun-test/.ephrun/jobs/", 0) == 0);
  CHECK(s.job_wait(j2, ssh::Clock::now() + 5s, {}, 100ms) == 0);
}

TEST_CASE("ssh session: ssh-agent keys, reconnect", "[ssh][session]") {
  Peer p;
  std::string sock = p.sshd.dir() + "/agent.sock";
  auto out = sh("ssh-agent -a " + sock + " -s");
  auto pos = out.find("SSH_AGENT_PID=");
  REQUIRE(pos != std::string::npos);
  std::string agent_pid = out.substr(pos + 14, out.find(';', pos) - pos - 14);
  ssh::write_key_files(p.key, p.sshd.dir() + "/id_agent");
  sh("SSH_AUTH_SOCK=" + sock + " ssh-add -q " + p.sshd.dir() + "/id_agent 2>&1");
  const char* old = std::getenv("SSH_AUTH_SOCK");
  std::string saved = old ? old : "";
  ::setenv("SSH_AUTH_SOCK", sock.c_str(), 1);
  auto o = p.opts();
  o.private_key.clear();
  o.agent = true;
  std::string err;
  try {
    auto s = ssh::Session::connect(o);
    CHECK(s.run("echo agent").out == "agent\n");
    s.reconnect();
    CHECK(s.run("echo again").out == "again\n");
    CHECK(s.keepalive() > 0);
    CHECK(s.run("echo after keepalive").code == 0);
  } catch (const std::exception& e) {
    err = e.what();
  }
  // An agent without the right key: auth error naming what was tried.
  sh("SSH_AUTH_SOCK=" + sock + " ssh-add -q -D 2>&1");
  auto other = ssh::generate_ed25519("other");
  ssh::write_key_files(other, p.sshd.dir() + "/id_other");
  sh("SSH_AUTH_SOCK=" + sock + " ssh-add -q " + p.sshd.dir() + "/id_other 2>&1");
  std::string msg;
  auto kind = kind_of([&] { ssh::Session::connect(o); }, &msg);
  if (saved.empty())
    ::unsetenv("SSH_AUTH_SOCK");
  else
    ::setenv("SSH_AUTH_SOCK", saved.c_str(), 1);
  sh("kill " + agent_pid);
  CHECK(err.empty());
  CHECK(kind == ssh::ErrorKind::auth);
  CHECK_THAT(msg, Catch::Contains(other.fingerprint));
}

TEST_CASE("ssh session: a port that accepts but does not speak SSH is a banner error",
          "[ssh][session]") {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  REQUIRE(::listen(fd, 8) == 0);
  std::jthread server([fd] {
    // First client: closed at once. Second: sent garbage. Third: silence.
    for (int i = 0; i < 3; ++i) {
      int c = ::accept(fd, nullptr, nullptr);
      if (c < 0) return;
      if (i == 1) (void)!::write(c, "HTTP/1.1 400 Bad Request\r\n\r\n", 28);
      if (i == 2) std::this_thread::sleep_for(1500ms);
      ::close(c);
    }
  });
  ssh::ConnectOptions o;
  o.host = "127.0.0.1";
  o.port = ntohs(a.sin_port);
  o.user = "x";
  o.private_key = ssh::generate_ed25519("").private_pem;
  o.insecure_accept_any_host_key = true;
  o.connect_timeout = 800ms;
  std::string msg;
  CHECK(kind_of([&] { ssh::Session::connect(o); }, &msg) == ssh::ErrorKind::banner);
  CHECK(kind_of([&] { ssh::Session::connect(o); }, &msg) == ssh::ErrorKind::banner);
  CHECK(kind_of([&] { ssh::Session::connect(o); }, &msg) == ssh::ErrorKind::banner);
  CHECK_THAT(msg, Catch::Contains("greeting"));
  server.join();
  ::close(fd);
}

TEST_CASE("ssh exec: a throwing line callback stops the remote command", "[ssh][exec]") {
  Peer p;
  auto s = ssh::Session::connect(p.opts());
  ssh::ExecOptions eo;
  eo.on_stdout_line = [](std::string_view) { throw std::runtime_error("consumer failed"); };
  CHECK_THROWS_WITH(s.run("echo first; sleep 304", eo), "consumer failed");
  CHECK(remote_proc_gone("sleep 304"));
  CHECK(s.run("echo ok").out == "ok\n");
}
