// ephrun.fs: local files. Reads act in every mode; writes, removals, mkdir and
// chmod are effects (recorded, not done, under --dry-run). The work is in
// host/sys/fs.cpp.
#include "sys/fs.hpp"

#include <fmt/format.h>

#include <chrono>

#include "lua/bind.hpp"
#include "runtime/runtime.hpp"
#include "runtime/scheduler.hpp"
#include "ssh/error.hpp"
#include "ssh/util.hpp"

namespace ephrun {
namespace {

int push_error(lua_State* L, const sys::Error& e) {
  lua_pushnil(L);
  lua_pushstring(L, e.what());
  std::string code = e.code_name();
  if (code.empty()) return 2;
  lua_pushstring(L, code.c_str());
  return 3;
}

std::string check_string(lua_State* L, int idx) {
  size_t n = 0;
  const char* s = luaL_checklstring(L, idx, &n);
  return {s, n};
}

/// A mode from a string of octal digits ("0644") or a number (its value).
mode_t mode_value(lua_State* L, int idx, const char* what) {
  if (lua_type(L, idx) == LUA_TNUMBER) {
    lua_Integer m = luaL_checkinteger(L, idx);
    if (m < 0 || m > 07777)
      luaL_error(L, "%s: mode %d is out of range (write modes as strings: \"0644\")", what,
                 static_cast<int>(m));
    return static_cast<mode_t>(m);
  }
  const char* s = luaL_checkstring(L, idx);
  auto m = sys::parse_mode(s);
  if (!m) luaL_error(L, "%s: '%s' is not an octal mode like \"0644\"", what, s);
  return *m;
}

/// opts.mode (a field of the table at `idx`) or `def`.
mode_t opt_mode(lua_State* L, int idx, mode_t def, const char* what) {
  if (lua_type(L, idx) != LUA_TTABLE) return def;
  lua_getfield(L, idx, "mode");
  mode_t m = lua_isnil(L, -1) ? def : mode_value(L, lua_gettop(L), what);
  lua_pop(L, 1);
  return m;
}

bool act(lua_State* L, std::string what, const std::string& where) {
  Runtime* rt = Runtime::maybe(L);
  if (!rt) return true;
  return rt->effect(Step{.kind = "write", .what = std::move(what), .where = where});
}

int l_fs_read(lua_State* L) {
  std::string path = check_string(L, 1);
  try {
    std::string data = sys::read_file(path);
    lua_pushlstring(L, data.data(), data.size());
    return 1;
  } catch (const sys::Error& e) {
    return push_error(L, e);
  }
}

int l_fs_write(lua_State* L) {
  std::string path = check_string(L, 1);
  std::string data = check_string(L, 2);
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  mode_t mode = opt_mode(L, 3, 0644, "fs.write");
  bool atomic = lua::opt_bool_field(L, 3, "atomic", true);
  bool exclusive = lua::opt_bool_field(L, 3, "exclusive", false);
  if (exclusive && !atomic) luaL_error(L, "fs.write: exclusive=true needs atomic=true");
  if (!act(L, fmt::format("write {} bytes (mode {})", data.size(), sys::format_mode(mode)), path)) {
    lua_pushboolean(L, 1);
    return 1;
  }
  try {
    sys::write_file(path, data, mode, atomic, exclusive);
  } catch (const sys::Error& e) {
    return push_error(L, e);
  }
  lua_pushboolean(L, 1);
  return 1;
}

int l_fs_append(lua_State* L) {
  std::string path = check_string(L, 1);
  std::string data = check_string(L, 2);
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  mode_t mode = opt_mode(L, 3, 0644, "fs.append");
  if (!act(L, fmt::format("append {} bytes", data.size()), path)) {
    lua_pushboolean(L, 1);
    return 1;
  }
  try {
    sys::append_file(path, data, mode);
  } catch (const sys::Error& e) {
    return push_error(L, e);
  }
  lua_pushboolean(L, 1);
  return 1;
}

int l_fs_mkdir_p(lua_State* L) {
  std::string path = check_string(L, 1);
  mode_t mode = lua_isnoneornil(L, 2) ? 0755 : mode_value(L, 2, "fs.mkdir_p");
  if (!act(L, "mkdir -p (mode " + sys::format_mode(mode) + ")", path)) {
    lua_pushboolean(L, 1);
    return 1;
  }
  try {
    sys::mkdir_p(path, mode);
  } catch (const sys::Error& e) {
    return push_error(L, e);
  }
  lua_pushboolean(L, 1);
  return 1;
}

int l_fs_exists(lua_State* L) {
  lua_pushboolean(L, sys::exists(check_string(L, 1)));
  return 1;
}

int l_fs_stat(lua_State* L) {
  std::string path = check_string(L, 1);
  bool follow = lua::opt_bool_field(L, 2, "follow", false);
  try {
    sys::Stat s = sys::stat(path, follow);
    lua_createtable(L, 0, 5);
    lua_pushinteger(L, static_cast<lua_Integer>(s.size));
    lua_setfield(L, -2, "size");
    lua_pushnumber(L, s.mtime);
    lua_setfield(L, -2, "mtime");
    lua_pushinteger(L, static_cast<lua_Integer>(s.mode));
    lua_setfield(L, -2, "mode");
    lua_pushstring(L, sys::format_mode(s.mode).c_str());
    lua_setfield(L, -2, "perm");
    lua_pushstring(L, s.type.c_str());
    lua_setfield(L, -2, "type");
    return 1;
  } catch (const sys::Error& e) {
    return push_error(L, e);
  }
}

void push_strings(lua_State* L, const std::vector<std::string>& v) {
  lua_createtable(L, static_cast<int>(v.size()), 0);
  for (size_t i = 0; i < v.size(); ++i) {
    lua_pushlstring(L, v[i].data(), v[i].size());
    lua_rawseti(L, -2, static_cast<lua_Integer>(i + 1));
  }
}

int l_fs_list(lua_State* L) {
  std::string dir = check_string(L, 1);
  try {
    push_strings(L, sys::list(dir));
    return 1;
  } catch (const sys::Error& e) {
    return push_error(L, e);
  }
}

int l_fs_remove(lua_State* L) {
  std::string path = check_string(L, 1);
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
  bool recursive = lua::opt_bool_field(L, 2, "recursive", false);
  if (!act(L, recursive ? "remove recursively" : "remove", path)) {
    lua_pushboolean(L, 1);
    return 1;
  }
  try {
    sys::remove(path, recursive);
  } catch (const sys::Error& e) {
    return push_error(L, e);
  }
  lua_pushboolean(L, 1);
  return 1;
}

// The cleanup registered by tempdir: removes the directory in its upvalue.
int l_fs_tempdir_cleanup(lua_State* L) {
  std::string path = lua_tostring(L, lua_upvalueindex(1));
  try {
    sys::remove(path, true);
  } catch (const sys::Error& e) {
    return luaL_error(L, "%s", e.what());
  }
  return 0;
}

int l_fs_tempdir(lua_State* L) {
  std::string prefix = luaL_optstring(L, 1, "ephrun-");
  if (prefix.find('/') != std::string::npos)
    return luaL_argerror(L, 1, "the prefix cannot contain '/'");
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
  bool keep = lua::opt_bool_field(L, 2, "keep", false);
  Runtime* rt = Runtime::maybe(L);
  if (rt && rt->options().dry_run) {
    rt->effect(Step{.kind = "write",
                    .what = "create a temporary directory" + std::string(keep ? " (kept)" : ""),
                    .where = prefix + "XXXXXX"});
    const char* t = std::getenv("TMPDIR");
    std::string p = std::string(t && *t ? t : "/tmp") + "/" + prefix + "dry-run-placeholder";
    lua_pushstring(L, p.c_str());
    return 1;
  }
  std::string path;
  try {
    path = sys::make_tempdir(prefix);
  } catch (const sys::Error& e) {
    return push_error(L, e);
  }
  if (rt) {
    rt->effect(Step{.kind = "write", .what = "create a temporary directory", .where = path});
    if (!keep) {
      lua_pushstring(L, path.c_str());
      lua_pushcclosure(L, l_fs_tempdir_cleanup, 1);
      rt->push_cleanup(L, lua_gettop(L), "remove temporary directory " + path, "rm -rf " + path);
      lua_pop(L, 1);
    }
  }
  lua_pushstring(L, path.c_str());
  return 1;
}

int l_fs_glob(lua_State* L) {
  push_strings(L, sys::glob(check_string(L, 1)));
  return 1;
}

int l_fs_hash(lua_State* L) {
  std::string path = check_string(L, 1);
  std::string algo = luaL_optstring(L, 2, "sha256");
  return await(L, algo + " " + path, [path, algo](const CancelToken& tok) -> Outcome {
    try {
      std::string h = sys::hash_file(path, algo, &tok);
      return Outcome{[h](lua_State* L) {
        lua_pushstring(L, h.c_str());
        return 1;
      }};
    } catch (const sys::Error& e) {
      if (tok.cancelled()) return Outcome::fail(tok.reason());
      if (e.code() == 0) return Outcome::fail(e.what());  // unknown algorithm: misuse
      std::string msg = e.what(), code = e.code_name();
      return Outcome{[msg, code](lua_State* L) {
        lua_pushnil(L);
        lua_pushstring(L, msg.c_str());
        lua_pushstring(L, code.c_str());
        return 3;
      }};
    }
  });
}

int l_fs_hash_string(lua_State* L) {
  std::string data = check_string(L, 1);
  std::string algo = luaL_optstring(L, 2, "sha256");
  std::string h = sys::hash_string(data, algo);  // an unknown algorithm raises
  lua_pushstring(L, h.c_str());
  return 1;
}

// base64 is the SSH layer's (ssh/util.hpp), used for key files too.
int l_fs_base64_encode(lua_State* L) {
  std::string out = ssh::base64_encode(check_string(L, 1));
  lua_pushlstring(L, out.data(), out.size());
  return 1;
}

int l_fs_base64_decode(lua_State* L) {
  std::string text = check_string(L, 1);
  // Padding is required here (the SSH decoder also takes unpadded fingerprints).
  std::size_t chars = 0;
  for (char c : text)
    if (c != ' ' && c != '\n' && c != '\r' && c != '\t') chars++;
  std::string out;
  bool ok = chars % 4 == 0;
  if (ok) {
    try {
      out = ssh::base64_decode(text);
    } catch (const ssh::Error&) {
      ok = false;
    }
  }
  if (!ok) {
    lua_pushnil(L);
    lua_pushstring(L, "not valid base64");
    return 2;
  }
  lua_pushlstring(L, out.data(), out.size());
  return 1;
}

int l_fs_chmod(lua_State* L) {
  std::string path = check_string(L, 1);
  mode_t mode = mode_value(L, 2, "fs.chmod");
  if (!act(L, "chmod " + sys::format_mode(mode), path)) {
    lua_pushboolean(L, 1);
    return 1;
  }
  try {
    sys::chmod(path, mode);
  } catch (const sys::Error& e) {
    return push_error(L, e);
  }
  lua_pushboolean(L, 1);
  return 1;
}

int l_fs_realpath(lua_State* L) {
  std::string path = check_string(L, 1);
  try {
    std::string r = sys::realpath(path);
    lua_pushstring(L, r.c_str());
    return 1;
  } catch (const sys::Error& e) {
    return push_error(L, e);
  }
}

int l_fs_basename(lua_State* L) {
  lua_pushstring(L, sys::basename(check_string(L, 1)).c_str());
  return 1;
}

int l_fs_dirname(lua_State* L) {
  lua_pushstring(L, sys::dirname(check_string(L, 1)).c_str());
  return 1;
}

int l_fs_join(lua_State* L) {
  std::vector<std::string> parts;
  int n = lua_gettop(L);
  for (int i = 1; i <= n; ++i) parts.push_back(check_string(L, i));
  lua_pushstring(L, sys::join(parts).c_str());
  return 1;
}

const luaL_Reg kFsFns[] = {
    {"read", lua::safe<l_fs_read>},
    {"write", lua::safe<l_fs_write>},
    {"append", lua::safe<l_fs_append>},
    {"mkdir_p", lua::safe<l_fs_mkdir_p>},
    {"exists", lua::safe<l_fs_exists>},
    {"stat", lua::safe<l_fs_stat>},
    {"list", lua::safe<l_fs_list>},
    {"remove", lua::safe<l_fs_remove>},
    {"tempdir", lua::safe<l_fs_tempdir>},
    {"glob", lua::safe<l_fs_glob>},
    {"hash", lua::safe<l_fs_hash>},
    {"hash_string", lua::safe<l_fs_hash_string>},
    {"base64_encode", lua::safe<l_fs_base64_encode>},
    {"base64_decode", lua::safe<l_fs_base64_decode>},
    {"chmod", lua::safe<l_fs_chmod>},
    {"realpath", lua::safe<l_fs_realpath>},
    {"basename", lua::safe<l_fs_basename>},
    {"dirname", lua::safe<l_fs_dirname>},
    {"join", lua::safe<l_fs_join>},
    {nullptr, nullptr},
};

int luaopen_ephrun_fs(lua_State* L) {
  luaL_newlib(L, kFsFns);
  return 1;
}

}  // namespace
}  // namespace ephrun

EPHRUN_MODULE("ephrun.fs", ephrun::luaopen_ephrun_fs);
