// `require "ephrun.http"` loads ephrun-http.so from beside the executable.
// Linking libcurl into the binary would load its ~30 libraries on every start,
// which is most of ephrun's start-up time; most runs and all --help/--dry-run
// reviews that make no request never pay for it now.
#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <string>

#include "lua/bind.hpp"

namespace ephrun {
namespace {

std::string module_path() {
  if (const char* p = getenv("EPHRUN_HTTP_MODULE"); p && *p) return p;
  char buf[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  std::string exe = n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string("ephrun");
  auto slash = exe.rfind('/');
  std::string dir = slash == std::string::npos ? "." : exe.substr(0, slash);
  // Beside the binary in a build tree; PREFIX/lib/ephrun once installed.
  std::string beside = dir + "/ephrun-http.so";
  std::string installed = dir + "/../lib/ephrun/ephrun-http.so";
  return access(beside.c_str(), R_OK) != 0 && access(installed.c_str(), R_OK) == 0 ? installed
                                                                                   : beside;
}

int l_load_http(lua_State* L) {
  std::string path = module_path();
  void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    const char* why = dlerror();
    return luaL_error(L,
                      "cannot load the HTTP module %s (it is built beside the ephrun binary and "
                      "installed in PREFIX/lib/ephrun; `cmake --install` puts both in place): %s",
                      path.c_str(), why ? why : "unknown error");
  }
  auto open = reinterpret_cast<lua_CFunction>(dlsym(h, "ephrun_open_http"));
  if (!open) return luaL_error(L, "%s has no ephrun_open_http", path.c_str());
  return open(L);
}

}  // namespace
}  // namespace ephrun

EPHRUN_MODULE("ephrun.http", ephrun::l_load_http);
