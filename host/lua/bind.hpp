// Small helpers shared by every native module: checked userdata, exception
// trampolines and module registration.
#pragma once

#include <exception>
#include <lua.hpp>
#include <new>
#include <string>
#include <utility>

namespace ephrun::lua {

/// Userdata types name their metatable: `static constexpr const char* kMeta`.
template <class T>
T* check(lua_State* L, int idx) {
  return static_cast<T*>(luaL_checkudata(L, idx, T::kMeta));
}

template <class T>
T* test(lua_State* L, int idx) {
  return static_cast<T*>(luaL_testudata(L, idx, T::kMeta));
}

/// Placement-new a T into fresh userdata carrying T's metatable, which must
/// already exist (see `define_class`).
template <class T, class... Args>
T* push_new(lua_State* L, Args&&... args) {
  void* mem = lua_newuserdatauv(L, sizeof(T), 1);
  T* obj = new (mem) T(std::forward<Args>(args)...);
  luaL_setmetatable(L, T::kMeta);
  return obj;
}

/// `__gc` for types whose destructor is their only cleanup.
template <class T>
int destroy(lua_State* L) {
  T* obj = static_cast<T*>(luaL_checkudata(L, 1, T::kMeta));
  obj->~T();
  return 0;
}

/// Creates T's metatable with `methods` as `__index` plus `meta` entries.
/// Leaves nothing on the stack.
void define_class(lua_State* L, const char* name, const luaL_Reg* methods, const luaL_Reg* meta);

/// Wraps a native function so a C++ exception becomes a Lua error with the
/// caller's `file:line` prefix instead of escaping through the interpreter.
template <lua_CFunction F>
int safe(lua_State* L) {
  std::string msg;
  try {
    return F(L);
  } catch (const std::bad_alloc&) {
    msg = "out of memory";
  } catch (const std::exception& e) {
    msg = e.what();
  }
  luaL_where(L, 1);
  lua_pushlstring(L, msg.data(), msg.size());
  lua_concat(L, 2);
  return lua_error(L);
}

/// Registers `open` as `package.preload[name]`.
void preload(lua_State* L, const char* name, lua_CFunction open);

/// Native modules announce themselves at static-initialisation time; the
/// runtime preloads every registered module into each new state.
struct ModuleRegistration {
  ModuleRegistration(const char* name, lua_CFunction open);
};
void preload_all(lua_State* L);

/// Reads an optional field of the table at `idx`.
std::string opt_string_field(lua_State* L, int idx, const char* key, const std::string& def);
double opt_number_field(lua_State* L, int idx, const char* key, double def);
bool opt_bool_field(lua_State* L, int idx, const char* key, bool def);

}  // namespace ephrun::lua

#define EPHRUN_CONCAT_(a, b) a##b
#define EPHRUN_CONCAT(a, b) EPHRUN_CONCAT_(a, b)
/// Registers a native module: `EPHRUN_MODULE("ephrun.json", ns::luaopen_ephrun_json);`
#define EPHRUN_MODULE(name, fn)                                                                    \
  static const ::ephrun::lua::ModuleRegistration EPHRUN_CONCAT(ephrun_module_reg_, __LINE__)(name, \
                                                                                             fn)
