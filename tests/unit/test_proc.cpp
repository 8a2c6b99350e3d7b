// host/sys/proc: spawning, signal state, timeouts, the child registry.
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <csignal>
#include <string>
#include <thread>

#include "sys/proc.hpp"

using namespace ephrun;
using namespace std::chrono_literals;

namespace {
bool pid_exists(pid_t pid) {
  struct stat st {};
  return ::stat(("/proc/" + std::to_string(pid)).c_str(), &st) == 0;
}

sys::SpawnOptions argv(std::vector<std::string> a) {
  sys::SpawnOptions o;
  o.argv = std::move(a);
  return o;
}

// The host blocks these in every thread; children must not inherit that.
struct BlockSignals {
  sigset_t set, old;
  BlockSignals() {
    sigemptyset(&set);
    for (int s : {SIGINT, SIGTERM, SIGHUP, SIGUSR2}) sigaddset(&set, s);
    pthread_sigmask(SIG_BLOCK, &set, &old);
  }
  ~BlockSignals() { pthread_sigmask(SIG_SETMASK, &old, nullptr); }
};
}  // namespace

TEST_CASE("run a program: output, exit code, env, cwd, stdin", "[proc]") {
  auto o = argv({"sh", "-c", "printf '%s %s' \"$A\" \"$(pwd)\"; cat; echo e >&2; exit 3"});
  o.env["A"] = "va";
  o.cwd = "/usr";
  o.stdin_data = "|in";
  std::vector<std::string> lines;
  std::mutex mu;
  o.on_line = [&](bool is_err, std::string_view l) {
    std::lock_guard lk(mu);
    lines.push_back((is_err ? "E:" : "O:") + std::string(l));
  };
  sys::Process p(std::move(o));
  REQUIRE(p.wait_for(10s));
  auto st = p.status();
  CHECK(st.code == 3);
  CHECK(st.signal == 0);
  CHECK(st.out == "va /usr|in");
  CHECK(st.err == "e\n");
  CHECK_FALSE(p.running());
  std::sort(lines.begin(), lines.end());
  CHECK(lines == std::vector<std::string>{"E:e", "O:va /usr|in"});
}

TEST_CASE("children get an empty signal mask and default dispositions", "[proc]") {
  BlockSignals blocked;
  struct sigaction ign {
  }, old{};
  ign.sa_handler = SIG_IGN;
  sigaction(SIGPIPE, &ign, &old);  // as libraries often leave it
  sys::Process p(argv({"sh", "-c", "grep -E '^Sig(Blk|Ign)' /proc/self/status"}));
  REQUIRE(p.wait_for(10s));
  sigaction(SIGPIPE, &old, nullptr);
  // Standard signals (1-31) only: glibc keeps its internal real-time ones.
  auto out = p.status().out;
  auto field = [&](const std::string& name) {
    auto at = out.find(name + ":\t");
    REQUIRE(at != std::string::npos);
    return std::stoull(out.substr(at + name.size() + 2, 16), nullptr, 16) & 0x7fffffffULL;
  };
  CHECK(field("SigBlk") == 0);
  CHECK(field("SigIgn") == 0);

  sys::Process sleeper(argv({"sleep", "30"}));
  CHECK(sleeper.signal(SIGTERM));
  REQUIRE(sleeper.wait_for(5s));
  CHECK(sleeper.status().signal == SIGTERM);
  CHECK_FALSE(sleeper.signal(SIGTERM));  // reaped: nothing is signalled any more
}

TEST_CASE("each child leads its own process group", "[proc]") {
  sys::Process p(argv({"sh", "-c", "ps -o pgid= -p $$; ps -o pgid= -p $PPID"}));
  REQUIRE(p.wait_for(10s));
  auto out = p.status().out;
  auto nl = out.find('\n');
  REQUIRE(nl != std::string::npos);
  CHECK(std::stoi(out.substr(0, nl)) == p.pid());
  CHECK(std::stoi(out.substr(nl + 1)) == ::getpgrp());
}

TEST_CASE("wait_for times out and stops on cancellation; terminate escalates to KILL", "[proc]") {
  sys::Process p(argv({"sleep", "30"}));
  auto t0 = std::chrono::steady_clock::now();
  CHECK_FALSE(p.wait_for(100ms));
  CancelToken tok;
  std::thread canceller([&] {
    std::this_thread::sleep_for(100ms);
    tok.cancel("x");
  });
  CHECK_FALSE(p.wait_for(30s, &tok));
  canceller.join();
  CHECK(std::chrono::steady_clock::now() - t0 < 2s);
  CHECK(p.running());

  // A child that ignores TERM is killed after the grace period.
  sys::Process stubborn(
      argv({"sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"}));
  std::this_thread::sleep_for(200ms);  // let the trap be set
  t0 = std::chrono::steady_clock::now();
  stubborn.terminate(300ms);
  CHECK_FALSE(stubborn.running());
  CHECK(std::chrono::steady_clock::now() - t0 < 3s);
  REQUIRE(stubborn.wait_for(5s));
  CHECK(stubborn.status().signal == SIGKILL);
}

TEST_CASE("missing programs and bad directories fail with a clear message", "[proc]") {
  CHECK_THROWS_WITH(sys::Process(argv({"no-such-program-ephrun"})),
                    "command not found: no-such-program-ephrun");
  auto o = argv({"true"});
  o.cwd = "/no/such/dir";
  CHECK_THROWS_WITH(sys::Process(std::move(o)), Catch::Contains("/no/such/dir"));
  // env={PATH=...} is where the program is looked up
  auto e = argv({"sh", "-c", "true"});
  e.env["PATH"] = "/nonexistent";
  CHECK_THROWS_WITH(sys::Process(std::move(e)), "command not found: sh");
}

TEST_CASE("terminate_all_children stops every live child", "[proc]") {
  auto a = std::make_unique<sys::Process>(argv({"sleep", "30"}));
  auto b = std::make_unique<sys::Process>(argv({"sh", "-c", "trap '' TERM; sleep 30"}));
  pid_t pa = a->pid(), pb = b->pid();
  int before = sys::live_children();
  CHECK(before >= 2);
  std::this_thread::sleep_for(100ms);
  auto t0 = std::chrono::steady_clock::now();
  CHECK(sys::terminate_all_children(500ms) == before);
  CHECK(std::chrono::steady_clock::now() - t0 < 3s);
  CHECK(sys::live_children() == 0);
  CHECK_FALSE(pid_exists(pa));
  CHECK_FALSE(pid_exists(pb));
  CHECK_FALSE(a->running());
}

TEST_CASE("a destroyed Process takes its child with it", "[proc]") {
  pid_t pid;
  {
    sys::Process p(argv({"sleep", "30"}));
    pid = p.pid();
    CHECK(pid_exists(pid));
  }
  CHECK_FALSE(pid_exists(pid));
}

TEST_CASE("output beyond max_capture keeps the tail", "[proc]") {
  auto o = argv({"sh", "-c", "seq 1 200000"});
  o.max_capture = 1000;
  sys::Process p(std::move(o));
  REQUIRE(p.wait_for(10s));
  auto st = p.status();
  CHECK(st.out_truncated);
  CHECK(st.out.size() == 1000);
  CHECK(st.out.substr(st.out.size() - 7) == "200000\n");
}

TEST_CASE("helpers: which, describe_command, signal_number", "[proc]") {
  CHECK(sys::which("sh", "/nonexistent:/usr/bin") == "/usr/bin/sh");
  CHECK(sys::which("sh", "/nonexistent:/bin") == "/bin/sh");
  CHECK(sys::which("no-such-program-ephrun").empty());
  CHECK(sys::describe_command({"git", "commit", "-m", "it's done", ""}) ==
        "git commit -m 'it'\\''s done' ''");
  CHECK(sys::signal_number("TERM") == SIGTERM);
  CHECK(sys::signal_number("sigkill") == SIGKILL);
  CHECK(sys::signal_number("2") == 2);
  CHECK(sys::signal_number("NOPE") == -1);
}
