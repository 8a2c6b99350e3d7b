// ephrun.log: leveled logging through spdlog, prefixed with the task's name,
// with every registered secret redacted by the sink.
#include <spdlog/sinks/sink.h>
#include <spdlog/spdlog.h>

#include <cstring>

#include "lua/bind.hpp"
#include "runtime/runtime.hpp"

namespace ephrun {
namespace {

// Message from the arguments: string.format when the first has a '%' and
// more follow, else the tostring of each joined by spaces (like print).
std::string message(lua_State* L) {
  int n = lua_gettop(L);
  if (n >= 2 && lua_type(L, 1) == LUA_TSTRING && strchr(lua_tostring(L, 1), '%')) {
    lua_getglobal(L, "string");
    lua_getfield(L, -1, "format");
    lua_insert(L, 1);
    lua_pop(L, 1);
    lua_call(L, n, 1);
    return lua_tostring(L, -1);
  }
  std::string out;
  for (int i = 1; i <= n; ++i) {
    if (i > 1) out += ' ';
    out += luaL_tolstring(L, i, nullptr);
    lua_pop(L, 1);
  }
  return out;
}

template <spdlog::level::level_enum Level>
int l_log(lua_State* L) {
  std::string msg = message(L);
  Runtime* rt = Runtime::maybe(L);
  Task* t = rt ? rt->scheduler().task_of(L) : nullptr;
  if (t && t->name != "main")
    spdlog::log(Level, "[{}] {}", t->name, msg);
  else
    spdlog::log(Level, "{}", msg);
  return 0;
}

int l_log_enabled(lua_State* L) {
  static const char* const names[] = {"trace", "debug", "info", "warn", "error", nullptr};
  int lvl = luaL_checkoption(L, 1, "info", names);
  bool on = false;
  for (const auto& s : spdlog::default_logger()->sinks())
    if (s->should_log(static_cast<spdlog::level::level_enum>(lvl))) on = true;
  lua_pushboolean(L, on);
  return 1;
}

const luaL_Reg kLogFns[] = {
    {"trace", lua::safe<l_log<spdlog::level::trace>>},
    {"debug", lua::safe<l_log<spdlog::level::debug>>},
    {"info", lua::safe<l_log<spdlog::level::info>>},
    {"warn", lua::safe<l_log<spdlog::level::warn>>},
    {"error", lua::safe<l_log<spdlog::level::err>>},
    {"enabled", lua::safe<l_log_enabled>},
    {nullptr, nullptr},
};

int luaopen_ephrun_log(lua_State* L) {
  luaL_newlib(L, kLogFns);
  return 1;
}

}  // namespace
}  // namespace ephrun

EPHRUN_MODULE("ephrun.log", ephrun::luaopen_ephrun_log);
