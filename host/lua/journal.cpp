// ephrun.journal: the run's record of what it creates, written before each
// create call so `ephrun ls` and `ephrun reap` find what a killed run left.
// Under --dry-run every write is a no-op (dry runs are not journalled).
#include "journal/journal.hpp"

#include <cmath>
#include <memory>
#include <nlohmann/json.hpp>

#include "lua/bind.hpp"
#include "runtime/runtime.hpp"

namespace ephrun {
namespace {

using nlohmann::json;

constexpr const char* kWriterKey = "ephrun.journal.writer";
constexpr const char* kReaderKey = "ephrun.journal.reader";

struct Handle {
  static constexpr const char* kMeta = "ephrun.journal.Handle";
  std::unique_ptr<journal::Journal> db;
};

bool dry_run(lua_State* L) {
  Runtime* rt = Runtime::maybe(L);
  return rt && rt->options().dry_run;
}

journal::Journal* cached(lua_State* L, const char* key) {
  lua_getfield(L, LUA_REGISTRYINDEX, key);
  auto* h = lua::test<Handle>(L, -1);
  lua_pop(L, 1);
  return h && h->db ? h->db.get() : nullptr;
}

journal::Journal& open(lua_State* L, const char* key, bool read_only) {
  if (auto* j = cached(L, key)) return *j;
  auto j = std::make_unique<journal::Journal>(journal::default_path(), read_only);
  auto* h = lua::push_new<Handle>(L);
  h->db = std::move(j);
  lua_setfield(L, LUA_REGISTRYINDEX, key);
  return *h->db;
}

// The connection that writes, opened (creating the file) on the first write.
journal::Journal& writer(lua_State* L) { return open(L, kWriterKey, false); }

// Reads go through the writer when this process already writes, else through
// a read-only connection: `ephrun ls` and `history` never create the file,
// never take a write lock, and never wait behind another run's writes.
journal::Journal& reader(lua_State* L) {
  if (auto* j = cached(L, kWriterKey)) return *j;
  return open(L, kReaderKey, true);
}

json to_json(lua_State* L, int idx, int depth) {
  if (depth > 50) throw std::runtime_error("journal: extra is nested too deeply");
  idx = lua_absindex(L, idx);
  switch (lua_type(L, idx)) {
    case LUA_TBOOLEAN:
      return static_cast<bool>(lua_toboolean(L, idx));
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) return static_cast<int64_t>(lua_tointeger(L, idx));
      if (!std::isfinite(lua_tonumber(L, idx))) return nullptr;
      return lua_tonumber(L, idx);
    case LUA_TSTRING:
      return std::string(lua_tostring(L, idx));
    case LUA_TTABLE: {
      auto n = static_cast<lua_Integer>(lua_rawlen(L, idx));
      if (n > 0) {
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
        if (lua_type(L, -2) == LUA_TSTRING) {
          json v = to_json(L, -1, depth + 1);
          if (!v.is_null()) obj[lua_tostring(L, -2)] = std::move(v);
        }
        lua_pop(L, 1);
      }
      return obj;
    }
    default:
      return nullptr;  // functions, userdata: not data a provider can reload
  }
}

void push_json(lua_State* L, const json& j) {
  switch (j.type()) {
    case json::value_t::boolean:
      lua_pushboolean(L, j.get<bool>());
      break;
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
      lua_pushinteger(L, j.get<int64_t>());
      break;
    case json::value_t::number_float:
      lua_pushnumber(L, j.get<double>());
      break;
    case json::value_t::string:
      lua_pushstring(L, j.get<std::string>().c_str());
      break;
    case json::value_t::array: {
      lua_createtable(L, static_cast<int>(j.size()), 0);
      lua_Integer i = 0;
      for (const auto& v : j) {
        push_json(L, v);
        lua_rawseti(L, -2, ++i);
      }
      break;
    }
    case json::value_t::object:
      lua_createtable(L, 0, static_cast<int>(j.size()));
      for (const auto& [k, v] : j.items()) {
        push_json(L, v);
        lua_setfield(L, -2, k.c_str());
      }
      break;
    default:
      lua_pushnil(L);
  }
}

void set_str(lua_State* L, const char* k, const std::string& v) {
  lua_pushlstring(L, v.data(), v.size());
  lua_setfield(L, -2, k);
}

void set_opt(lua_State* L, const char* k, const std::optional<double>& v) {
  if (!v) return;
  lua_pushnumber(L, *v);
  lua_setfield(L, -2, k);
}

void push_tags(lua_State* L, const journal::Tags& tags) {
  lua_createtable(L, 0, static_cast<int>(tags.size()));
  for (const auto& [k, v] : tags) set_str(L, k.c_str(), v);
}

void push_resource(lua_State* L, const journal::Resource& r) {
  lua_createtable(L, 0, 20);
  lua_pushinteger(L, r.key);
  lua_setfield(L, -2, "key");
  set_str(L, "run_id", r.run_id);
  set_str(L, "recipe", r.recipe);
  set_str(L, "provider", r.provider);
  set_str(L, "kind", r.kind);
  if (!r.id.empty()) set_str(L, "id", r.id);
  set_str(L, "token", r.token);
  push_tags(L, r.tags);
  lua_setfield(L, -2, "tags");
  push_json(L, json::parse(r.extra, nullptr, false));
  lua_setfield(L, -2, "extra");
  lua_pushnumber(L, r.intended);
  lua_setfield(L, -2, "intended");
  set_opt(L, "created", r.created);
  set_opt(L, "destroyed", r.destroyed);
  set_opt(L, "hourly_price", r.hourly_price);
  set_opt(L, "expires_at", r.expires_at);
  set_str(L, "status", r.status);
  if (!r.error.empty()) set_str(L, "error", r.error);
  if (r.run_known) set_str(L, "run_status", r.run_status);
  lua_pushboolean(L, r.run_alive);
  lua_setfield(L, -2, "run_alive");
}

std::string checked_string_field(lua_State* L, int idx, const char* key) {
  std::string v = lua::opt_string_field(L, idx, key, "");
  if (v.empty()) luaL_error(L, "journal.intent: field '%s' is required", key);
  return v;
}

std::optional<double> opt_number(lua_State* L, int idx, const char* key) {
  lua_getfield(L, idx, key);
  std::optional<double> out;
  if (!lua_isnil(L, -1)) {
    int ok = 0;
    double d = lua_tonumberx(L, -1, &ok);
    if (!ok) luaL_error(L, "journal.intent: field '%s' must be a number", key);
    out = d;
  }
  lua_pop(L, 1);
  return out;
}

// journal.intent{run_id=, provider=, kind=, tags=, hourly_price=, expires_at=, token=} -> key
int l_journal_intent(lua_State* L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  journal::Intent in;
  in.run_id = lua::opt_string_field(L, 1, "run_id", "");
  if (in.run_id.empty())
    if (Runtime* rt = Runtime::maybe(L)) in.run_id = rt->run_id();
  in.provider = checked_string_field(L, 1, "provider");
  in.kind = lua::opt_string_field(L, 1, "kind", "instance");
  in.recipe = lua::opt_string_field(L, 1, "recipe", "");
  in.token = lua::opt_string_field(L, 1, "token", "");
  in.hourly_price = opt_number(L, 1, "hourly_price");
  in.expires_at = opt_number(L, 1, "expires_at");
  if (lua_getfield(L, 1, "tags") == LUA_TTABLE) {
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      if (lua_type(L, -2) == LUA_TSTRING) {
        const char* v = luaL_tolstring(L, -1, nullptr);
        in.tags[lua_tostring(L, -3)] = v;
        lua_pop(L, 1);
      }
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  if (dry_run(L)) {
    lua_pushinteger(L, 0);
    return 1;
  }
  lua_pushinteger(L, writer(L).intent(in));
  return 1;
}

// journal.created(key, resource_id, extra)
int l_journal_created(lua_State* L) {
  lua_Integer key = luaL_checkinteger(L, 1);
  std::string id = luaL_checkstring(L, 2);
  std::string extra = "{}";
  if (!lua_isnoneornil(L, 3)) {
    luaL_checktype(L, 3, LUA_TTABLE);
    json j = to_json(L, 3, 0);
    if (j.is_array() && j.empty()) j = json::object();
    extra = j.dump();
  }
  if (dry_run(L) || key == 0) return 0;
  writer(L).created(key, id, extra);
  return 0;
}

int l_journal_kept(lua_State* L) {
  lua_Integer key = luaL_checkinteger(L, 1);
  if (dry_run(L) || key == 0) return 0;
  writer(L).kept(key);
  return 0;
}

// journal.detached(key, info): the run leaves it with its job going; info is
// what `ephrun finish` needs (stored as extra.detach).
int l_journal_detached(lua_State* L) {
  lua_Integer key = luaL_checkinteger(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  json info = to_json(L, 2, 0);
  if (info.is_array() && info.empty()) info = json::object();
  if (dry_run(L) || key == 0) return 0;
  writer(L).detached(key, info.dump());
  return 0;
}

int l_journal_finished(lua_State* L) {
  lua_Integer key = luaL_checkinteger(L, 1);
  if (dry_run(L) || key == 0) return 0;
  writer(L).finished(key);
  return 0;
}

int l_journal_destroyed(lua_State* L) {
  lua_Integer key = luaL_checkinteger(L, 1);
  if (dry_run(L) || key == 0) return 0;
  writer(L).destroyed(key);
  return 0;
}

int l_journal_failed(lua_State* L) {
  lua_Integer key = luaL_checkinteger(L, 1);
  std::string msg = luaL_optstring(L, 2, "create failed");
  if (dry_run(L) || key == 0) return 0;
  writer(L).failed(key, msg);
  return 0;
}

// journal.resources{live=, run_id=} -> array
int l_journal_resources(lua_State* L) {
  bool live = lua::opt_bool_field(L, 1, "live", false);
  std::string run = lua::opt_string_field(L, 1, "run_id", "");
  auto rows = reader(L).resources(live, run.empty() ? std::nullopt : std::optional(run));
  lua_createtable(L, static_cast<int>(rows.size()), 0);
  lua_Integer i = 0;
  for (const auto& r : rows) {
    push_resource(L, r);
    lua_rawseti(L, -2, ++i);
  }
  return 1;
}

void push_run(lua_State* L, const journal::Run& r) {
  lua_createtable(L, 0, 10);
  set_str(L, "id", r.id);
  set_str(L, "recipe", r.recipe);
  set_str(L, "params_hash", r.params_hash);
  lua_pushnumber(L, r.started);
  lua_setfield(L, -2, "started");
  set_opt(L, "ended", r.ended);
  set_str(L, "status", r.status);
  if (!r.detail.empty()) set_str(L, "detail", r.detail);
  lua_pushinteger(L, r.process.pid);
  lua_setfield(L, -2, "pid");
  lua_pushboolean(L, r.alive);
  lua_setfield(L, -2, "alive");
}

// journal.runs{limit=20} -> array, newest first
int l_journal_runs(lua_State* L) {
  int limit = static_cast<int>(lua::opt_number_field(L, 1, "limit", 20));
  auto rows = reader(L).runs(limit);
  lua_createtable(L, static_cast<int>(rows.size()), 0);
  lua_Integer i = 0;
  for (const auto& r : rows) {
    push_run(L, r);
    lua_rawseti(L, -2, ++i);
  }
  return 1;
}

// journal.run(id) -> run | nil
int l_journal_run(lua_State* L) {
  auto r = reader(L).run(luaL_checkstring(L, 1));
  if (!r) return 0;
  push_run(L, *r);
  return 1;
}

int l_journal_path(lua_State* L) {
  std::string p = journal::default_path();
  lua_pushlstring(L, p.data(), p.size());
  return 1;
}

const luaL_Reg kJournalFns[] = {
    {"intent", lua::safe<l_journal_intent>},     {"created", lua::safe<l_journal_created>},
    {"kept", lua::safe<l_journal_kept>},         {"destroyed", lua::safe<l_journal_destroyed>},
    {"failed", lua::safe<l_journal_failed>},     {"resources", lua::safe<l_journal_resources>},
    {"runs", lua::safe<l_journal_runs>},         {"run", lua::safe<l_journal_run>},
    {"path", lua::safe<l_journal_path>},         {"detached", lua::safe<l_journal_detached>},
    {"finished", lua::safe<l_journal_finished>}, {nullptr, nullptr},
};

const luaL_Reg kHandleMeta[] = {{"__gc", lua::destroy<Handle>}, {nullptr, nullptr}};

int luaopen_ephrun_journal(lua_State* L) {
  lua::define_class(L, Handle::kMeta, nullptr, kHandleMeta);
  luaL_newlib(L, kJournalFns);
  return 1;
}

}  // namespace
}  // namespace ephrun

EPHRUN_MODULE("ephrun.journal", ephrun::luaopen_ephrun_journal);
