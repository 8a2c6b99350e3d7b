// ephrun.json: JSON <-> Lua through nlohmann/json. Arrays decode with a
// marker metatable so they encode back as arrays even when empty;
// `json.null` stands for JSON null.
#include <cmath>
#include <nlohmann/json.hpp>

#include "lua/bind.hpp"

namespace ephrun {
namespace {

using nlohmann::json;

constexpr const char* kArrayMeta = "ephrun.json.array";
int g_null_marker;  // its address is json.null

void push_json(lua_State* L, const json& j, int depth = 0) {
  if (depth > 200) luaL_error(L, "JSON nested too deeply");
  luaL_checkstack(L, 3, "JSON nested too deeply");
  switch (j.type()) {
    case json::value_t::null:
      lua_pushlightuserdata(L, &g_null_marker);
      break;
    case json::value_t::boolean:
      lua_pushboolean(L, j.get<bool>());
      break;
    case json::value_t::number_integer:
      lua_pushinteger(L, j.get<int64_t>());
      break;
    case json::value_t::number_unsigned:
      lua_pushinteger(L, static_cast<lua_Integer>(j.get<uint64_t>()));
      break;
    case json::value_t::number_float:
      lua_pushnumber(L, j.get<double>());
      break;
    case json::value_t::string: {
      const auto& s = j.get_ref<const std::string&>();
      lua_pushlstring(L, s.data(), s.size());
      break;
    }
    case json::value_t::array: {
      lua_createtable(L, static_cast<int>(j.size()), 0);
      lua_Integer i = 1;
      for (const auto& v : j) {
        push_json(L, v, depth + 1);
        lua_rawseti(L, -2, i++);
      }
      luaL_setmetatable(L, kArrayMeta);
      break;
    }
    case json::value_t::object: {
      lua_createtable(L, 0, static_cast<int>(j.size()));
      for (const auto& [k, v] : j.items()) {
        lua_pushlstring(L, k.data(), k.size());
        push_json(L, v, depth + 1);
        lua_rawset(L, -3);
      }
      break;
    }
    default:
      lua_pushnil(L);
  }
}

json to_json(lua_State* L, int idx, int depth) {
  if (depth > 200) throw std::runtime_error("table nested too deeply (a cycle?)");
  idx = lua_absindex(L, idx);
  switch (lua_type(L, idx)) {
    case LUA_TNIL:
      return nullptr;
    case LUA_TBOOLEAN:
      return static_cast<bool>(lua_toboolean(L, idx));
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) return static_cast<int64_t>(lua_tointeger(L, idx));
      {
        double d = lua_tonumber(L, idx);
        if (!std::isfinite(d))
          throw std::runtime_error("cannot encode " + std::to_string(d) + " as JSON");
        return d;
      }
    case LUA_TSTRING: {
      size_t n = 0;
      const char* s = lua_tolstring(L, idx, &n);
      return std::string(s, n);
    }
    case LUA_TLIGHTUSERDATA:
      if (lua_touserdata(L, idx) == &g_null_marker) return nullptr;
      break;
    case LUA_TTABLE: {
      bool marked_array = false;
      if (lua_getmetatable(L, idx)) {
        luaL_getmetatable(L, kArrayMeta);
        marked_array = lua_rawequal(L, -1, -2);
        lua_pop(L, 2);
      }
      lua_Integer n = static_cast<lua_Integer>(lua_rawlen(L, idx));
      // A table is an array when its keys are exactly 1..n (n > 0) or it is marked.
      size_t count = 0;
      lua_pushnil(L);
      while (lua_next(L, idx)) {
        ++count;
        lua_pop(L, 1);
      }
      if (marked_array || (n > 0 && static_cast<size_t>(n) == count)) {
        json arr = json::array();
        for (lua_Integer i = 1; i <= n; ++i) {
          lua_rawgeti(L, idx, i);
          arr.push_back(to_json(L, -1, depth + 1));
          lua_pop(L, 1);
        }
        return arr;
      }
      json obj = json::object();
      lua_pushnil(L);
      while (lua_next(L, idx)) {
        std::string key;
        if (lua_type(L, -2) == LUA_TSTRING) {
          key = lua_tostring(L, -2);
        } else if (lua_type(L, -2) == LUA_TNUMBER) {
          lua_pushvalue(L, -2);
          key = lua_tostring(L, -1);
          lua_pop(L, 1);
        } else {
          throw std::runtime_error(std::string("cannot encode a ") + luaL_typename(L, -2) +
                                   " key as JSON");
        }
        obj[key] = to_json(L, -1, depth + 1);
        lua_pop(L, 1);
      }
      return obj;
    }
    default:
      break;
  }
  throw std::runtime_error(std::string("cannot encode a ") + luaL_typename(L, idx) + " as JSON");
}

// json.encode(value [, {pretty=true}]) -> string
int l_json_encode(lua_State* L) {
  luaL_checkany(L, 1);
  bool pretty = lua::opt_bool_field(L, 2, "pretty", false);
  std::string s = to_json(L, 1, 0).dump(pretty ? 2 : -1);
  lua_pushlstring(L, s.data(), s.size());
  return 1;
}

// json.decode(text) -> value | nil, "line L, column C: message"
int l_json_decode(lua_State* L) {
  size_t n = 0;
  const char* s = luaL_checklstring(L, 1, &n);
  json j;
  try {
    j = json::parse(s, s + n);
  } catch (const json::parse_error& e) {
    // Position as line and column, which a person can find in the text.
    size_t line = 1, col = 1;
    for (size_t i = 0; i + 1 < e.byte && i < n; ++i) {
      if (s[i] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    std::string what = e.what();
    auto p = what.find(": ");
    std::string detail = p == std::string::npos ? what : what.substr(p + 2);
    std::string msg = "invalid JSON at line " + std::to_string(line) + ", column " +
                      std::to_string(col) + " (byte " + std::to_string(e.byte) + "): " + detail;
    lua_pushnil(L);
    lua_pushlstring(L, msg.data(), msg.size());
    return 2;
  }
  push_json(L, j);
  return 1;
}

// json.array([t]) marks t (or a new table) to encode as an array.
int l_json_array(lua_State* L) {
  if (lua_isnoneornil(L, 1)) lua_newtable(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  luaL_setmetatable(L, kArrayMeta);
  return 1;
}

const luaL_Reg kJsonFns[] = {
    {"encode", lua::safe<l_json_encode>},
    {"decode", lua::safe<l_json_decode>},
    {"array", lua::safe<l_json_array>},
    {nullptr, nullptr},
};

int luaopen_ephrun_json(lua_State* L) {
  luaL_newmetatable(L, kArrayMeta);
  lua_pop(L, 1);
  luaL_newlib(L, kJsonFns);
  lua_pushlightuserdata(L, &g_null_marker);
  lua_setfield(L, -2, "null");
  return 1;
}

}  // namespace
}  // namespace ephrun

EPHRUN_MODULE("ephrun.json", ephrun::luaopen_ephrun_json);
