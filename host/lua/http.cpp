// ephrun.http: HTTP requests with retries, downloads and AWS SigV4, done off
// the Lua thread (host/http/client.cpp does the work).
#include <algorithm>
#include <cctype>
#include <set>

#include "http/client.hpp"
#include "lua/bind.hpp"
#include "runtime/duration.hpp"
#include "runtime/runtime.hpp"
#include "runtime/scheduler.hpp"
#include "runtime/secrets.hpp"

namespace ephrun {
namespace {

constexpr size_t kSnippet = 300;

const char* reason_phrase(long status) {
  switch (status) {
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 409:
      return "Conflict";
    case 412:
      return "Precondition Failed";
    case 422:
      return "Unprocessable Entity";
    case 429:
      return "Too Many Requests";
    case 500:
      return "Internal Server Error";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    default:
      return "";
  }
}

/// "http: POST https://host/p?x=<redacted> returned 503 Service Unavailable: {...}"
std::string status_error(const std::string& method, const std::string& url, long status,
                         std::string_view body) {
  std::string msg =
      "http: " + method + " " + http::redact_url(url) + " returned " + std::to_string(status);
  if (const char* p = reason_phrase(status); *p) msg += std::string(" ") + p;
  std::string snip;
  for (char c : body.substr(0, kSnippet)) {
    bool space = std::isspace(static_cast<unsigned char>(c));
    if (space && (snip.empty() || snip.back() == ' ')) continue;
    snip += space ? ' ' : (std::isprint(static_cast<unsigned char>(c)) ? c : '?');
  }
  while (!snip.empty() && snip.back() == ' ') snip.pop_back();
  if (!snip.empty()) msg += ": " + snip + (body.size() > kSnippet ? " ..." : "");
  return redact(std::move(msg));
}

double seconds_field(lua_State* L, int idx, const char* key, double def) {
  lua_getfield(L, idx, key);
  double out = def;
  if (lua_type(L, -1) == LUA_TNUMBER) {
    out = lua_tonumber(L, -1);
  } else if (lua_type(L, -1) == LUA_TSTRING) {
    const char* s = lua_tostring(L, -1);
    auto d = parse_duration(s);
    if (!d) luaL_error(L, "http: '%s' = '%s' is not a duration (try 30, \"30s\", \"2m\")", key, s);
    out = *d;
  } else if (!lua_isnil(L, -1)) {
    luaL_error(L, "http: '%s' must be seconds or a duration string", key);
  }
  lua_pop(L, 1);
  if (out < 0) luaL_error(L, "http: '%s' must not be negative", key);
  return out;
}

std::string required_string(lua_State* L, int idx, const char* key, const char* where) {
  lua_getfield(L, idx, key);
  size_t n = 0;
  const char* s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &n) : nullptr;
  if (!s || n == 0) luaL_error(L, "%s needs a non-empty string '%s'", where, key);
  std::string out(s, n);
  lua_pop(L, 1);
  return out;
}

const std::set<std::string, std::less<>> kOptions = {
    "method",  "url",   "headers",  "body",      "timeout",  "connect_timeout", "deadline",
    "retries", "retry", "download", "aws_sigv4", "insecure", "follow",          "raise"};

/// Reads the request table at `idx`; raises on misuse.
http::Request read_request(lua_State* L, int idx, bool& raise) {
  idx = lua_absindex(L, idx);
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING || !kOptions.contains(lua_tostring(L, -1)))
      luaL_error(L, "http.request: unknown option '%s'", luaL_tolstring(L, -1, nullptr));
  }
  http::Request r;
  r.method = lua::opt_string_field(L, idx, "method", "GET");
  for (auto& c : r.method) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (r.method.empty() || r.method.find_first_of(" \t\r\n") != std::string::npos)
    luaL_error(L, "http.request: bad method '%s'", r.method.c_str());
  r.url = required_string(L, idx, "url", "http.request");
  if (!r.url.starts_with("http://") && !r.url.starts_with("https://"))
    luaL_error(L, "http.request: url must start with http:// or https:// (got '%s')",
               http::redact_url(r.url).c_str());

  if (lua_getfield(L, idx, "headers") == LUA_TTABLE) {
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      if (lua_type(L, -2) != LUA_TSTRING || !lua_tostring(L, -1))
        luaL_error(L, "http.request: headers must map names to strings");
      size_t kn = 0, vn = 0;
      const char* k = lua_tolstring(L, -2, &kn);
      lua_pushvalue(L, -1);  // tolstring on a copy: numbers stay numbers in the table
      const char* v = lua_tolstring(L, -1, &vn);
      std::string name(k, kn), value(v, vn);
      lua_pop(L, 2);
      if (name.find_first_of(":\r\n") != std::string::npos ||
          value.find_first_of("\r\n") != std::string::npos)
        luaL_error(L, "http.request: header '%s' has a newline or colon in it", name.c_str());
      if (http::sensitive_header(name)) Secrets::global().add("header " + name, value);
      r.headers.emplace_back(std::move(name), std::move(value));
    }
  } else if (!lua_isnil(L, -1)) {
    luaL_error(L, "http.request: headers must be a table");
  }
  lua_pop(L, 1);

  lua_getfield(L, idx, "body");
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "http.request: body must be a string");
    size_t n = 0;
    const char* b = lua_tolstring(L, -1, &n);
    r.body.assign(b, n);
    r.has_body = true;
  }
  lua_pop(L, 1);

  r.download = lua::opt_string_field(L, idx, "download", "");
  r.timeout = seconds_field(L, idx, "timeout", r.download.empty() ? 30 : 0);
  r.connect_timeout = seconds_field(L, idx, "connect_timeout", 10);
  // By default every attempt gets its whole timeout: the deadline is 300 s or
  // the timeout when longer, and none when there is no timeout.
  r.deadline = seconds_field(L, idx, "deadline", r.timeout > 0 ? std::max(300.0, r.timeout) : 0);
  double retries = lua::opt_number_field(L, idx, "retries", -1);
  if (retries != -1 && (retries < 0 || retries > 100 || retries != static_cast<int>(retries)))
    luaL_error(L, "http.request: retries must be an integer from 0 to 100");
  r.retries = static_cast<int>(retries);
  r.retry = lua::opt_bool_field(L, idx, "retry", false);
  r.insecure = lua::opt_bool_field(L, idx, "insecure", false);
  r.follow = lua::opt_bool_field(L, idx, "follow", true);
  raise = lua::opt_bool_field(L, idx, "raise", false);

  if (lua_getfield(L, idx, "aws_sigv4") == LUA_TTABLE) {
    int t = lua_gettop(L);
    http::SigV4 s;
    s.provider = lua::opt_string_field(L, t, "provider", "aws:amz");
    s.region = required_string(L, t, "region", "http.request: aws_sigv4");
    s.service = required_string(L, t, "service", "http.request: aws_sigv4");
    s.access_key = required_string(L, t, "access_key", "http.request: aws_sigv4");
    s.secret_key = required_string(L, t, "secret_key", "http.request: aws_sigv4");
    s.session_token = lua::opt_string_field(L, t, "session_token", "");
    Secrets::global().add("aws_secret_key", s.secret_key);
    if (!s.session_token.empty()) Secrets::global().add("aws_session_token", s.session_token);
    r.sigv4 = std::move(s);
  } else if (!lua_isnil(L, -1)) {
    luaL_error(L, "http.request: aws_sigv4 must be a table");
  }
  lua_pop(L, 1);
  return r;
}

void push_headers(lua_State* L, const http::Headers& headers) {
  lua_createtable(L, 0, static_cast<int>(headers.size()));
  for (const auto& [k, v] : headers) {
    lua_pushlstring(L, v.data(), v.size());
    lua_setfield(L, -2, k.c_str());
  }
}

void set_string(lua_State* L, const char* key, const std::string& v) {
  lua_pushlstring(L, v.data(), v.size());
  lua_setfield(L, -2, key);
}

int push_response(lua_State* L, const std::string& method, http::Response& r) {
  lua_createtable(L, 0, 10);
  lua_pushinteger(L, r.status);
  lua_setfield(L, -2, "status");
  lua_pushboolean(L, r.status >= 200 && r.status < 300);
  lua_setfield(L, -2, "ok");
  push_headers(L, r.headers);
  lua_setfield(L, -2, "headers");
  set_string(L, "body", r.body);
  set_string(L, "url", r.url);
  set_string(L, "method", method);
  lua_pushinteger(L, r.attempts);
  lua_setfield(L, -2, "attempts");
  lua_pushnumber(L, r.duration);
  lua_setfield(L, -2, "duration");
  lua_pushinteger(L, r.size);
  lua_setfield(L, -2, "size");
  if (!r.downloaded.empty()) set_string(L, "path", r.downloaded);
  return 1;
}

/// The dry-run stand-in: the recipe goes on as if the request had succeeded.
int push_placeholder(lua_State* L, const http::Request& req) {
  lua_createtable(L, 0, 10);
  lua_pushinteger(L, 0);
  lua_setfield(L, -2, "status");
  lua_pushboolean(L, 1);
  lua_setfield(L, -2, "ok");
  lua_newtable(L);
  lua_setfield(L, -2, "headers");
  set_string(L, "body", "");
  set_string(L, "url", req.url);
  set_string(L, "method", req.method);
  lua_pushinteger(L, 0);
  lua_setfield(L, -2, "attempts");
  lua_pushnumber(L, 0);
  lua_setfield(L, -2, "duration");
  lua_pushinteger(L, 0);
  lua_setfield(L, -2, "size");
  lua_pushboolean(L, 1);
  lua_setfield(L, -2, "dry_run");
  return 1;
}

/// Sends the request described by the table at `idx`.
int do_request(lua_State* L, int idx) {
  bool raise = false;
  http::Request req = read_request(L, idx, raise);

  // Reads go through even under --dry-run (price look-ups need them);
  // anything else, or a download that writes a file, is an effect.
  const bool read = (req.method == "GET" || req.method == "HEAD") && req.download.empty();
  if (!read) {
    if (Runtime* rt = Runtime::maybe(L)) {
      Step step;
      step.kind = "http";
      step.what = req.method + " " + http::redact_url(req.url);
      if (!req.download.empty()) step.what += " -> " + redact(req.download);
      step.where = http::url_host(req.url);
      if (!rt->effect(std::move(step))) return push_placeholder(L, req);
    }
  }

  std::string what = "http " + req.method + " " + http::redact_url(req.url);
  return await(L, std::move(what), [req = std::move(req), raise](const CancelToken& tok) {
    http::Result res;
    try {
      res = http::perform(req, tok);
    } catch (const std::exception& e) {
      res.failure.message = req.method + " " + http::redact_url(req.url) + ": " + e.what();
      res.failure.code = 23;  // CURLE_WRITE_ERROR: the download file could not be made
    }
    if (!res.response) {
      if (res.failure.cancelled) return Outcome::fail(res.failure.message);
      if (raise) return Outcome::fail("http: " + redact(res.failure.message));
      return Outcome{[f = std::move(res.failure)](lua_State* L) {
        lua_pushnil(L);
        std::string msg = redact(f.message);
        lua_pushlstring(L, msg.data(), msg.size());
        lua_pushinteger(L, f.code);
        return 3;
      }};
    }
    http::Response& r = *res.response;
    if (raise && (r.status < 200 || r.status >= 300))
      return Outcome::fail(
          status_error(req.method, r.url.empty() ? req.url : r.url, r.status, r.body));
    auto shared = std::make_shared<http::Response>(std::move(r));
    return Outcome{
        [shared, method = req.method](lua_State* L) { return push_response(L, method, *shared); }};
  });
}

int l_http_request(lua_State* L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  return do_request(L, 1);
}

/// Copies the options table at `opts_idx` (may be absent) into a new table
/// with method, url and (when `body_idx` > 0) body set, then sends it.
int convenience(lua_State* L, const char* method, int body_idx, int opts_idx) {
  lua_settop(L, opts_idx);  // absent arguments become nil: the indexes below stay put
  const char* url = luaL_checkstring(L, 1);
  if (body_idx > 0 && !lua_isnoneornil(L, body_idx)) luaL_checktype(L, body_idx, LUA_TSTRING);
  if (!lua_isnoneornil(L, opts_idx)) luaL_checktype(L, opts_idx, LUA_TTABLE);
  lua_newtable(L);
  int t = lua_gettop(L);
  if (lua_istable(L, opts_idx)) {
    lua_pushnil(L);
    while (lua_next(L, opts_idx)) {
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_settable(L, t);
    }
  }
  lua_pushstring(L, method);
  lua_setfield(L, t, "method");
  lua_pushstring(L, url);
  lua_setfield(L, t, "url");
  if (body_idx > 0 && !lua_isnoneornil(L, body_idx)) {
    lua_pushvalue(L, body_idx);
    lua_setfield(L, t, "body");
  }
  return do_request(L, t);
}

int l_http_get(lua_State* L) { return convenience(L, "GET", 0, 2); }
int l_http_head(lua_State* L) { return convenience(L, "HEAD", 0, 2); }
int l_http_delete(lua_State* L) { return convenience(L, "DELETE", 0, 2); }
int l_http_post(lua_State* L) { return convenience(L, "POST", 2, 3); }
int l_http_put(lua_State* L) { return convenience(L, "PUT", 2, 3); }
int l_http_patch(lua_State* L) { return convenience(L, "PATCH", 2, 3); }

/// check(resp) or check(nil, message, code): returns resp when it is 2xx (or a
/// dry-run placeholder); raises otherwise.
int l_http_check(lua_State* L) {
  if (lua_isnoneornil(L, 1)) {
    const char* msg = luaL_optstring(L, 2, "request failed");
    return luaL_error(L, "http: %s", msg);
  }
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  if (lua_getfield(L, 1, "dry_run") != LUA_TNIL && lua_toboolean(L, -1)) {
    lua_settop(L, 1);
    return 1;
  }
  lua_pop(L, 1);
  lua_Integer status = 0;
  if (lua_getfield(L, 1, "status") == LUA_TNUMBER) status = lua_tointeger(L, -1);
  lua_pop(L, 1);
  if (status >= 200 && status < 300) return 1;
  std::string method = lua::opt_string_field(L, 1, "method", "?");
  std::string url = lua::opt_string_field(L, 1, "url", "?");
  std::string body = lua::opt_string_field(L, 1, "body", "");
  std::string msg = status_error(method, url, static_cast<long>(status), body);
  return luaL_error(L, "%s", msg.c_str());
}

/// redact_url(url): the URL as shown in logs and plans.
int l_http_redact_url(lua_State* L) {
  std::string s = http::redact_url(luaL_checkstring(L, 1));
  lua_pushlstring(L, s.data(), s.size());
  return 1;
}

const luaL_Reg kHttpFns[] = {
    {"request", lua::safe<l_http_request>},
    {"get", lua::safe<l_http_get>},
    {"head", lua::safe<l_http_head>},
    {"delete", lua::safe<l_http_delete>},
    {"post", lua::safe<l_http_post>},
    {"put", lua::safe<l_http_put>},
    {"patch", lua::safe<l_http_patch>},
    {"check", lua::safe<l_http_check>},
    {"redact_url", lua::safe<l_http_redact_url>},
    {nullptr, nullptr},
};

int luaopen_ephrun_http(lua_State* L) {
  luaL_newlib(L, kHttpFns);
  return 1;
}

}  // namespace
}  // namespace ephrun

// Built as the loadable module ephrun-http.so (see host/lua/http_loader.cpp):
// libcurl and its dependency tree are loaded only when a recipe uses HTTP.
extern "C" __attribute__((visibility("default"))) int ephrun_open_http(lua_State* L) {
  return ephrun::luaopen_ephrun_http(L);
}
