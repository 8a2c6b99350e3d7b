// The journal without Lua: schema, intents before creates, runs, liveness,
// read-only opening, several connections at once.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "journal/journal.hpp"

using namespace ephrun::journal;
namespace fs = std::filesystem;

namespace {

struct TempHome {
  fs::path dir;
  TempHome() {
    char tmpl[] = "/tmp/ephrun-journal-XXXXXX";
    dir = mkdtemp(tmpl);
  }
  ~TempHome() { fs::remove_all(dir); }
  [[nodiscard]] std::string file() const { return (dir / "state" / "journal.sqlite").string(); }
};

Intent sample(const std::string& run) {
  Intent in;
  in.run_id = run;
  in.provider = "local";
  in.tags = {{"ephrun-run", run}, {"ephrun-recipe", "deploy-fast"}};
  in.hourly_price = 0.5;
  in.expires_at = 2e9;
  in.token = "tok-1";
  return in;
}

}  // namespace

TEST_CASE("journal: creates its directory 0700 and file 0600 with the schema version",
          "[journal]") {
  TempHome h;
  Journal j(h.file());
  struct stat st {};
  REQUIRE(::stat(h.file().c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  REQUIRE(::stat((h.dir / "state").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0700);
  CHECK(j.resources(false, std::nullopt).empty());
  CHECK(j.runs(10).empty());
  // Re-opening an existing journal keeps what was written.
  j.run_started("r1", "demo", "abc");
  Journal again(h.file());
  CHECK(again.runs(10).size() == 1);
}

TEST_CASE("journal: the resource lifecycle intent → created → destroyed", "[journal]") {
  TempHome h;
  Journal j(h.file());
  j.run_started("r1", "deploy-fast", "hash");
  auto key = j.intent(sample("r1"));
  CHECK(key > 0);
  auto r = j.resource(key);
  REQUIRE(r);
  CHECK(r->status == "pending");
  CHECK(r->recipe == "deploy-fast");
  CHECK(r->tags.at("ephrun-run") == "r1");
  CHECK(r->hourly_price == 0.5);
  CHECK(r->expires_at == 2e9);
  CHECK_FALSE(r->created);
  CHECK(r->run_known);
  CHECK(r->run_alive);  // this very process
  CHECK(j.resources(true, std::nullopt).size() == 1);

  j.created(key, "inst-42", R"({"dir":"/tmp/x","port":2222})");
  r = j.resource(key);
  CHECK(r->status == "live");
  CHECK(r->id == "inst-42");
  CHECK(r->extra == R"({"dir":"/tmp/x","port":2222})");
  CHECK(r->created);

  j.destroyed(key);
  r = j.resource(key);
  CHECK(r->status == "destroyed");
  CHECK(r->destroyed);
  CHECK(j.resources(true, std::nullopt).empty());
  CHECK(j.resources(false, std::string("r1")).size() == 1);
  CHECK(j.resources(false, std::string("other")).empty());
  j.destroyed(key);  // idempotent
}

TEST_CASE("journal: a kept resource stays listed as kept until destroyed", "[journal]") {
  TempHome h;
  Journal j(h.file());
  j.run_started("r1", "deploy-fast", "hash");
  auto key = j.intent(sample("r1"));
  j.created(key, "inst-7", "{}");
  j.kept(key);
  j.run_ended("r1", "ok", "");
  auto live = j.resources(true, std::nullopt);
  REQUIRE(live.size() == 1);
  CHECK(live[0].status == "kept");
  CHECK(live[0].expires_at == 2e9);
  j.created(key, "inst-7", "{}");  // a later write does not make it live again
  CHECK(j.resource(key)->status == "kept");
  j.destroyed(key);
  CHECK(j.resources(true, std::nullopt).empty());
  CHECK_THROWS(j.kept(999));
}

TEST_CASE("journal: a detached resource keeps what finish needs and stays live until finished",
          "[journal]") {
  TempHome h;
  Journal j(h.file());
  j.run_started("r1", "phase2-worker", "hash");
  auto key = j.intent(sample("r1"));
  j.created(key, "inst-8", R"({"dir":"/x"})");
  j.detached(key, R"({"run":"r1","params":["note=hi"]})");
  j.run_ended("r1", "ok", "");
  auto live = j.resources(true, std::nullopt);
  REQUIRE(live.size() == 1);
  CHECK(live[0].status == "detached");
  auto extra = nlohmann::json::parse(live[0].extra);
  CHECK(extra["dir"] == "/x");  // what the provider's destroy needs is still there
  CHECK(extra["detach"]["params"][0] == "note=hi");
  j.finished(key);
  CHECK(j.resource(key)->status == "finished");
  CHECK(j.resource(key)->destroyed);
  CHECK(j.resources(true, std::nullopt).empty());
  CHECK_THROWS(j.detached(key, "[1]"));
  CHECK_THROWS(j.detached(999, "{}"));
  CHECK_THROWS(j.finished(999));
}

TEST_CASE("journal: a failed create is not live; unknown keys are errors", "[journal]") {
  TempHome h;
  Journal j(h.file());
  auto key = j.intent(sample("r2"));
  j.failed(key, "quota exceeded");
  auto r = j.resource(key);
  CHECK(r->status == "failed");
  CHECK(r->error == "quota exceeded");
  CHECK_FALSE(r->run_known);
  CHECK(j.resources(true, std::nullopt).empty());
  CHECK_THROWS(j.destroyed(9999));
  CHECK_THROWS(j.created(key, "x", "not json"));
  Intent bad;
  CHECK_THROWS(j.intent(bad));
}

TEST_CASE("journal: runs record start, end, status, newest first", "[journal]") {
  TempHome h;
  Journal j(h.file());
  j.run_started("a", "one", "h1");
  j.run_started("b", "two", "h2");
  j.run_ended("a", "failed", "boom");
  auto runs = j.runs(20);
  REQUIRE(runs.size() == 2);
  CHECK(runs[0].id == "b");
  CHECK(runs[0].status == "running");
  CHECK(runs[0].alive);
  CHECK(runs[1].status == "failed");
  CHECK(runs[1].detail == "boom");
  CHECK(runs[1].ended);
  CHECK_FALSE(runs[1].alive);
  CHECK(j.runs(1).size() == 1);
  CHECK(j.run("a")->recipe == "one");
  CHECK_FALSE(j.run("zzz"));
}

TEST_CASE("journal: a run whose process is gone is not alive", "[journal]") {
  TempHome h;
  Journal j(h.file());
  pid_t child = fork();
  if (child == 0) _exit(0);
  // Killed but not yet reaped: a zombie counts as dead.
  usleep(100000);
  ProcessId zombie{child, 0, ProcessId::self().boot_id};
  CHECK_FALSE(zombie.alive());
  int status = 0;
  waitpid(child, &status, 0);
  ProcessId dead{child, 12345, ProcessId::self().boot_id};
  CHECK_FALSE(dead.alive());
  ProcessId reused{getpid(), ProcessId::self().start_ticks + 1, ProcessId::self().boot_id};
  CHECK_FALSE(reused.alive());  // same pid, different start: pid reuse
  ProcessId other_boot = ProcessId::self();
  other_boot.boot_id = "another-boot";
  CHECK_FALSE(other_boot.alive());
  CHECK(ProcessId::self().alive());

  j.run_started("dead", "demo", "", dead);
  auto key = j.intent(sample("dead"));
  auto r = j.resource(key);
  CHECK(r->run_status == "running");
  CHECK_FALSE(r->run_alive);
}

TEST_CASE("journal: read-only never creates the file", "[journal]") {
  TempHome h;
  {
    Journal ro(h.file(), true);
    CHECK(ro.resources(false, std::nullopt).empty());
    CHECK(ro.runs(5).empty());
    CHECK_THROWS(ro.intent(sample("x")));
  }
  CHECK_FALSE(fs::exists(h.file()));
  {
    Journal rw(h.file());
    rw.intent(sample("x"));
  }
  Journal ro(h.file(), true);
  CHECK(ro.resources(true, std::nullopt).size() == 1);
}

TEST_CASE("journal: concurrent writers from several connections all succeed", "[journal]") {
  TempHome h;
  { Journal init(h.file()); }
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      Journal j(h.file());
      for (int i = 0; i < 25; ++i) {
        auto k = j.intent(sample("run" + std::to_string(t)));
        j.created(k, "id" + std::to_string(i), "{}");
      }
    });
  for (auto& th : threads) th.join();
  Journal j(h.file());
  CHECK(j.resources(true, std::nullopt).size() == 100);
}

TEST_CASE("journal: home follows EPHRUN_HOME; sha256", "[journal]") {
  const char* old = std::getenv("EPHRUN_HOME");
  std::string saved = old ? old : "";
  setenv("EPHRUN_HOME", "/tmp/somewhere", 1);
  CHECK(default_path() == "/tmp/somewhere/journal.sqlite");
  if (old)
    setenv("EPHRUN_HOME", saved.c_str(), 1);
  else
    unsetenv("EPHRUN_HOME");
  CHECK(sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

// Processes (not threads: each has its own SQLite locks) opening a journal that
// does not exist yet, all at once: every one must open it and record its run.
// Two connections switching a fresh file to WAL together could get SQLITE_BUSY
// without their busy handler ever being called.
TEST_CASE("journal: parallel first opens from many processes all succeed", "[journal]") {
  constexpr int kProcs = 16, kTrials = 20;
  for (int trial = 0; trial < kTrials; ++trial) {
    TempHome h;
    int gate[2];
    REQUIRE(pipe(gate) == 0);
    std::vector<pid_t> kids;
    for (int i = 0; i < kProcs; ++i) {
      pid_t pid = fork();
      REQUIRE(pid >= 0);
      if (pid == 0) {
        ::close(gate[1]);
        char c;
        (void)!::read(gate[0], &c, 1);  // returns at EOF: every child starts together
        try {
          Journal j(h.file());
          j.run_started("run-" + std::to_string(i), "demo", "");
          j.intent(sample("run-" + std::to_string(i)));
        } catch (const std::exception& e) {
          fprintf(stderr, "child %d: %s\n", i, e.what());
          _exit(1);
        }
        _exit(0);
      }
      kids.push_back(pid);
    }
    ::close(gate[0]);
    ::close(gate[1]);
    int failed = 0;
    for (pid_t k : kids) {
      int st = 0;
      waitpid(k, &st, 0);
      if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) ++failed;
    }
    INFO("trial " << trial);
    REQUIRE(failed == 0);
    Journal j(h.file(), true);
    REQUIRE(j.runs(0).size() == kProcs);
  }
}
