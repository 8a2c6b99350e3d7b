#include "lua/bind.hpp"

#include <vector>

namespace ephrun::lua {

namespace {
struct Entry {
  const char* name;
  lua_CFunction open;
};
std::vector<Entry>& registry() {
  static std::vector<Entry> r;
  return r;
}
}  // namespace

ModuleRegistration::ModuleRegistration(const char* name, lua_CFunction open) {
  registry().push_back({name, open});
}

void preload_all(lua_State* L) {
  for (const auto& e : registry()) preload(L, e.name, e.open);
}

void preload(lua_State* L, const char* name, lua_CFunction open) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, open);
  lua_setfield(L, -2, name);
  lua_pop(L, 1);
}

void define_class(lua_State* L, const char* name, const luaL_Reg* methods, const luaL_Reg* meta) {
  luaL_newmetatable(L, name);
  if (meta) luaL_setfuncs(L, meta, 0);
  if (methods) {
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
  }
  lua_pushstring(L, name);
  lua_setfield(L, -2, "__name");
  lua_pop(L, 1);
}

std::string opt_string_field(lua_State* L, int idx, const char* key, const std::string& def) {
  if (lua_type(L, idx) != LUA_TTABLE) return def;
  lua_getfield(L, idx, key);
  std::string out = def;
  if (!lua_isnil(L, -1)) {
    size_t n = 0;
    const char* s = lua_tolstring(L, -1, &n);
    if (!s) luaL_error(L, "field '%s' must be a string", key);
    out.assign(s, n);
  }
  lua_pop(L, 1);
  return out;
}

double opt_number_field(lua_State* L, int idx, const char* key, double def) {
  if (lua_type(L, idx) != LUA_TTABLE) return def;
  lua_getfield(L, idx, key);
  double out = def;
  if (!lua_isnil(L, -1)) {
    int ok = 0;
    out = lua_tonumberx(L, -1, &ok);
    if (!ok) luaL_error(L, "field '%s' must be a number", key);
  }
  lua_pop(L, 1);
  return out;
}

bool opt_bool_field(lua_State* L, int idx, const char* key, bool def) {
  if (lua_type(L, idx) != LUA_TTABLE) return def;
  lua_getfield(L, idx, key);
  bool out = lua_isnil(L, -1) ? def : lua_toboolean(L, -1);
  lua_pop(L, 1);
  return out;
}

}  // namespace ephrun::lua
