// ephrun.time: sleeping without blocking other tasks, clocks, durations.
#include <chrono>

#include "lua/bind.hpp"
#include "runtime/duration.hpp"
#include "runtime/scheduler.hpp"

namespace ephrun {
namespace {

/// Seconds from a number or a duration string at `idx`; raises otherwise.
double check_seconds(lua_State* L, int idx) {
  if (lua_type(L, idx) == LUA_TNUMBER) return lua_tonumber(L, idx);
  const char* s = luaL_checkstring(L, idx);
  auto d = parse_duration(s);
  if (!d) luaL_argerror(L, idx, lua_pushfstring(L, "'%s' is not a duration (try 90s, 45m, 3h)", s));
  return *d;
}

int l_time_sleep(lua_State* L) {
  double secs = check_seconds(L, 1);
  if (secs < 0) secs = 0;
  // In a task a sleep is a timer the scheduler keeps: no thread waits for it.
  Scheduler* s = Scheduler::of(L);
  if (s && s->yieldable_task(L)) return s->sleep(L, secs);
  return await(L, "sleep " + format_duration(secs), [secs](const CancelToken& tok) {
    tok.sleep_for(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(secs)));
    return Outcome{};
  });
}

int l_time_now(lua_State* L) {
  auto now = std::chrono::system_clock::now().time_since_epoch();
  lua_pushnumber(L, std::chrono::duration<double>(now).count());
  return 1;
}

int l_time_monotonic(lua_State* L) {
  auto now = std::chrono::steady_clock::now().time_since_epoch();
  lua_pushnumber(L, std::chrono::duration<double>(now).count());
  return 1;
}

int l_time_parse_duration(lua_State* L) {
  if (lua_type(L, 1) == LUA_TNUMBER) {
    lua_pushnumber(L, lua_tonumber(L, 1));
    return 1;
  }
  const char* s = luaL_checkstring(L, 1);
  auto d = parse_duration(s);
  if (!d) {
    lua_pushnil(L);
    lua_pushfstring(L, "'%s' is not a duration (try 90s, 45m, 3h, 1h30m)", s);
    return 2;
  }
  lua_pushnumber(L, *d);
  return 1;
}

int l_time_format_duration(lua_State* L) {
  std::string s = format_duration(luaL_checknumber(L, 1));
  lua_pushlstring(L, s.data(), s.size());
  return 1;
}

int l_time_iso8601(lua_State* L) {
  auto t = static_cast<std::time_t>(luaL_optnumber(
      L, 1,
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count()));
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  lua_pushstring(L, buf);
  return 1;
}

const luaL_Reg kTimeFns[] = {
    {"sleep", lua::safe<l_time_sleep>},
    {"now", l_time_now},
    {"monotonic", l_time_monotonic},
    {"parse_duration", lua::safe<l_time_parse_duration>},
    {"format_duration", lua::safe<l_time_format_duration>},
    {"iso8601", l_time_iso8601},
    {nullptr, nullptr},
};

int luaopen_ephrun_time(lua_State* L) {
  luaL_newlib(L, kTimeFns);
  return 1;
}

}  // namespace
}  // namespace ephrun

EPHRUN_MODULE("ephrun.time", ephrun::luaopen_ephrun_time);
