// ephrun.xml: XML replies (EC2's Query API) to Lua tables and back, through
// pugixml. The mapping lives in host/sys/xml.cpp and docs/api/xml.md.
#include "sys/xml.hpp"

#include <algorithm>

#include "lua/bind.hpp"

namespace ephrun {
namespace {

void push_value(lua_State* L, const sys::XmlValue& v, int depth = 0) {
  if (depth > 200) luaL_error(L, "XML nested too deeply");
  luaL_checkstack(L, 4, "XML nested too deeply");
  switch (v.kind) {
    case sys::XmlValue::Kind::text:
      lua_pushlstring(L, v.text.data(), v.text.size());
      return;
    case sys::XmlValue::Kind::array: {
      lua_createtable(L, static_cast<int>(v.items.size()), 0);
      lua_Integer i = 1;
      for (const auto& item : v.items) {
        push_value(L, item, depth + 1);
        lua_rawseti(L, -2, i++);
      }
      return;
    }
    case sys::XmlValue::Kind::table:
      lua_createtable(L, 0, static_cast<int>(v.field.size()));
      for (const auto& [k, f] : v.field) {
        lua_pushlstring(L, k.data(), k.size());
        push_value(L, f, depth + 1);
        lua_rawset(L, -3);
      }
      return;
  }
}

// xml.decode(text[, {arrays={names}}]) -> value, root_name | nil, err
int l_xml_decode(lua_State* L) {
  size_t n = 0;
  const char* s = luaL_checklstring(L, 1, &n);
  std::set<std::string> arrays;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    if (lua_getfield(L, 2, "arrays") == LUA_TTABLE) {
      lua_Integer len = luaL_len(L, -1);
      for (lua_Integer i = 1; i <= len; ++i) {
        lua_geti(L, -1, i);
        if (const char* a = lua_tostring(L, -1)) arrays.insert(a);
        lua_pop(L, 1);
      }
    }
    lua_pop(L, 1);
  }
  sys::XmlDecoded d = sys::xml_decode(std::string(s, n), arrays);
  if (!d.ok) {
    lua_pushnil(L);
    lua_pushstring(L, d.error.c_str());
    return 2;
  }
  push_value(L, d.value);
  lua_pushstring(L, d.root.c_str());
  return 2;
}

sys::XmlValue to_value(lua_State* L, int idx, int depth) {
  if (depth > 200) luaL_error(L, "xml.encode: table nested too deeply (a cycle?)");
  idx = lua_absindex(L, idx);
  switch (lua_type(L, idx)) {
    case LUA_TSTRING:
    case LUA_TNUMBER: {
      size_t n = 0;
      const char* s = lua_tolstring(L, idx, &n);
      return sys::XmlValue::str(std::string(s, n));
    }
    case LUA_TBOOLEAN:
      return sys::XmlValue::str(lua_toboolean(L, idx) ? "true" : "false");
    case LUA_TTABLE:
      break;
    default:
      luaL_error(L, "xml.encode: cannot encode a %s", luaL_typename(L, idx));
  }
  luaL_checkstack(L, 4, "xml.encode: nested too deeply");
  sys::XmlValue v;
  lua_Integer len = static_cast<lua_Integer>(lua_rawlen(L, idx));
  if (len > 0) {
    v.kind = sys::XmlValue::Kind::array;
    for (lua_Integer i = 1; i <= len; ++i) {
      lua_rawgeti(L, idx, i);
      v.items.push_back(to_value(L, -1, depth + 1));
      lua_pop(L, 1);
    }
    return v;
  }
  v.kind = sys::XmlValue::Kind::table;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_type(L, -2) != LUA_TSTRING) luaL_error(L, "xml.encode: keys must be strings");
    std::string k = lua_tostring(L, -2);
    v.field.emplace_back(k, to_value(L, -1, depth + 1));
    lua_pop(L, 1);
  }
  // Lua tables have no order: sort for a stable document.
  std::sort(v.field.begin(), v.field.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  return v;
}

// xml.encode(value, root) -> text
int l_xml_encode(lua_State* L) {
  const char* root = luaL_checkstring(L, 2);
  sys::XmlValue v = to_value(L, 1, 0);
  std::string out = sys::xml_encode(v, root);
  lua_pushlstring(L, out.data(), out.size());
  return 1;
}

const luaL_Reg kXmlFns[] = {
    {"decode", lua::safe<l_xml_decode>},
    {"encode", lua::safe<l_xml_encode>},
    {nullptr, nullptr},
};

int luaopen_ephrun_xml(lua_State* L) {
  luaL_newlib(L, kXmlFns);
  return 1;
}

}  // namespace
}  // namespace ephrun

EPHRUN_MODULE("ephrun.xml", ephrun::luaopen_ephrun_xml);
