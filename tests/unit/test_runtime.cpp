// The runtime's C++ pieces: durations, redaction, the plan, and the scheduler
// driven through small Lua snippets.
#include <catch2/catch.hpp>
#include <chrono>
#include <string>

#include "runtime/duration.hpp"
#include "runtime/plan.hpp"
#include "runtime/runtime.hpp"
#include "runtime/secrets.hpp"

using namespace ephrun;

TEST_CASE("durations parse as people write them", "[duration]") {
  CHECK(parse_duration("90s") == 90);
  CHECK(parse_duration("45m") == 2700);
  CHECK(parse_duration("3h") == 10800);
  CHECK(parse_duration("1h30m") == 5400);
  CHECK(parse_duration("1h 30m") == 5400);
  CHECK(parse_duration("2d") == 172800);
  CHECK(parse_duration("250ms") == Approx(0.25));
  CHECK(parse_duration("12") == 12);
  CHECK_FALSE(parse_duration(""));
  CHECK_FALSE(parse_duration("soon"));
  CHECK_FALSE(parse_duration("-5s"));
  CHECK_FALSE(parse_duration("1h5"));
  CHECK_FALSE(parse_duration("5 parsecs"));
  CHECK_FALSE(parse_duration("inf"));
  CHECK(format_duration(0.35) == "350ms");
  CHECK(format_duration(4.2) == "4.2s");
  CHECK(format_duration(200) == "3m 20s");
  CHECK(format_duration(3900) == "1h 05m");
}

TEST_CASE("secrets are replaced whole, longest first", "[secrets]") {
  Secrets s;
  s.add("A", "abcd1234");
  s.add("B", "abcd1234-extended");
  s.add("SHORT", "ab");  // too short to redact safely
  CHECK(s.redact("x abcd1234-extended y abcd1234 ab") == "x <secret:B> y <secret:A> ab");
  CHECK(s.redact("abcd1234abcd1234") == "<secret:A><secret:A>");
}

TEST_CASE("the plan numbers steps, totals cost and redacts", "[plan]") {
  Secrets::global().add("PLAN_TOKEN", "plan-secret-123");
  Plan p;
  p.add({"launch", "box with plan-secret-123", "vultr", 1.5, "launch", {"ttl 1h"}});
  p.add({"run", "make", "host", std::nullopt, "build", {}});
  std::string text = p.render_text("demo");
  CHECK(text.find("1. launch") != std::string::npos);
  CHECK(text.find("2. run") != std::string::npos);
  CHECK(text.find("plan-secret-123") == std::string::npos);
  CHECK(text.find("<secret:PLAN_TOKEN>") != std::string::npos);
  CHECK(text.find("Total worst-case cost: $1.50") != std::string::npos);
  auto j = p.render_json("demo");
  CHECK(j["steps"].size() == 2);
  CHECK(j["steps"][1]["cost"].is_null());
  CHECK(j["total_cost"] == 1.5);
}

namespace {

// Runs `code` as the body of a root task; returns "ok" or the error message.
std::string run_task(Runtime& rt, const char* code) {
  lua_State* L = rt.L();
  if (luaL_loadstring(L, code) != LUA_OK) return lua_tostring(L, -1);
  Task* t = rt.scheduler().spawn(L, 0, "main", nullptr);
  rt.scheduler().run_until(t);
  rt.scheduler().drain();
  return t->ok ? "ok" : t->error;
}

}  // namespace

TEST_CASE("native waits in four tasks overlap", "[scheduler]") {
  Runtime rt(Options{});
  auto t0 = std::chrono::steady_clock::now();
  CHECK(run_task(rt, R"(
    local ephrun = require "ephrun"
    local ts = {}
    for i = 1, 4 do ts[i] = ephrun.spawn(function() ephrun.time.sleep(0.5) end) end
    for i = 1, 4 do ts[i]:wait() end
  )") == "ok");
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(secs < 1.5);  // sequential would be 2 s
}

TEST_CASE("errors carry the chunk's file:line and exact text", "[scheduler]") {
  Runtime rt(Options{});
  CHECK(run_task(rt, "local x = 1\nerror('broken on two')") ==
        "[string \"local x = 1...\"]:2: broken on two");
  CHECK(run_task(rt, "require('ephrun').time.sleep('soon')").find("'soon' is not a duration") !=
        std::string::npos);
}

TEST_CASE("a native wait outside any yieldable context runs inline", "[scheduler]") {
  Runtime rt(Options{});
  CHECK(run_task(rt, R"(
    local time = require("ephrun").time
    local t = setmetatable({}, { __index = function() time.sleep(0.01); return 7 end })
    assert(t.x == 7)
    local ok = pcall(function() table.sort({3, 1, 2}, function(a, b) time.sleep(0); return a < b end) end)
    assert(ok)
  )") == "ok");
}

TEST_CASE("a failing task reaches its parent", "[scheduler]") {
  Runtime rt(Options{});
  std::string err = run_task(rt, R"(
    local ephrun = require "ephrun"
    ephrun.spawn(function() error("child failed", 0) end)
    ephrun.time.sleep(5)
  )");
  CHECK(err == "child failed");
}

TEST_CASE("a cleanup that fails is counted and the rest still run", "[cleanup]") {
  Runtime rt(Options{});
  CHECK(run_task(rt, R"(
    local ephrun = require "ephrun"
    _G.order = {}
    ephrun.defer(function() table.insert(_G.order, "a") end, "a")
    ephrun.defer(function() error("b fails") end, "b")
    ephrun.defer(function() table.insert(_G.order, "c") end, "c")
  )") == "ok");
  CHECK(rt.pending_cleanups().size() == 3);
}

TEST_CASE("native work beyond the worker pool's bound waits its turn", "[scheduler]") {
  setenv("EPHRUN_WORKERS", "2", 1);
  Runtime rt(Options{});
  unsetenv("EPHRUN_WORKERS");
  REQUIRE(rt.scheduler().max_workers() == 2);
  // Work that holds its worker thread for 0.2 s.
  lua_register(rt.L(), "hold_a_worker", [](lua_State* L) {
    return await(L, "hold a worker", [](const CancelToken& tok) {
      tok.sleep_for(std::chrono::milliseconds(200));
      return Outcome{};
    });
  });
  auto t0 = std::chrono::steady_clock::now();
  CHECK(run_task(rt, R"(
    local ephrun = require "ephrun"
    local ts = {}
    for i = 1, 6 do ts[i] = ephrun.spawn(hold_a_worker) end
    for i = 1, 6 do ts[i]:wait() end
  )") == "ok");
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(rt.scheduler().workers() == 2);
  CHECK(secs >= 0.55);  // six jobs on two threads: three rounds at least
  CHECK(rt.scheduler().live_tasks() == 0);
}

TEST_CASE("a cleanup task started after a cancel is not cancelled, and its waits work",
          "[scheduler]") {
  Runtime rt(Options{});
  Scheduler& s = rt.scheduler();
  lua_State* L = rt.L();
  REQUIRE(luaL_loadstring(L, R"(
    local ephrun = require "ephrun"
    ephrun.defer(function() ephrun.time.sleep(0.05); _G.cleaned = true end, "sleepy cleanup")
    ephrun.time.sleep(30)
  )") == LUA_OK);
  Task* root = s.spawn(L, 0, "main", nullptr);
  REQUIRE(luaL_loadstring(L, "require('ephrun').time.sleep(0.01)") == LUA_OK);
  s.run_until(s.spawn(L, 0, "ticker", nullptr));  // root is asleep by now
  s.cancel(root, "interrupted by SIGINT");        // what a Ctrl-C does
  s.run_until(root);
  CHECK_FALSE(root->ok);
  CHECK(root->error == "interrupted by SIGINT");
  // What Runtime::run does next: each cleanup runs as a task of its own.
  CHECK(rt.run_cleanup(L, 1));
  lua_getglobal(L, "cleaned");
  CHECK(lua_toboolean(L, -1));
  lua_pop(L, 1);
}
