// ephrun.keys: SSH key pairs (ed25519, openssh-key-v1) and fingerprints.
#include "ssh/keys.hpp"

#include "lua/bind.hpp"
#include "runtime/runtime.hpp"
#include "runtime/secrets.hpp"

namespace ephrun {
namespace {

void set_str(lua_State* L, const char* k, const std::string& v) {
  lua_pushlstring(L, v.data(), v.size());
  lua_setfield(L, -2, k);
}

// keys.generate([comment]) -> {private_key, public_key, fingerprint}
// The private key is registered as a secret: it never reaches a log or plan.
int l_keys_generate(lua_State* L) {
  std::string comment = luaL_optstring(L, 1, "ephrun");
  ssh::KeyPair kp = ssh::generate_ed25519(comment);
  Secrets::global().add("ssh-private-key", kp.private_pem);
  lua_createtable(L, 0, 3);
  set_str(L, "private_key", kp.private_pem);
  set_str(L, "public_key", kp.public_line);
  set_str(L, "fingerprint", kp.fingerprint);
  return 1;
}

// keys.write(pair, path): private key at `path` (0600), public at `path.pub`.
int l_keys_write(lua_State* L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  std::string path = luaL_checkstring(L, 2);
  ssh::KeyPair kp;
  kp.private_pem = lua::opt_string_field(L, 1, "private_key", "");
  kp.public_line = lua::opt_string_field(L, 1, "public_key", "");
  kp.fingerprint = lua::opt_string_field(L, 1, "fingerprint", "");
  if (kp.private_pem.empty() || kp.public_line.empty())
    return luaL_argerror(L, 1, "expected a key pair from keys.generate()");
  if (!Runtime::of(L).effect(
          Step{"write", "SSH key " + path + " (mode 0600)", "local", {}, {}, {}}))
    return 0;
  ssh::write_key_files(kp, path);
  return 0;
}

// keys.load(path [, passphrase]) -> {type, public_key, fingerprint, encrypted}
int l_keys_load(lua_State* L) {
  std::string path = luaL_checkstring(L, 1);
  std::string pass = luaL_optstring(L, 2, "");
  ssh::LoadedKey k = ssh::load_private_key_file(path, pass);
  lua_createtable(L, 0, 4);
  set_str(L, "type", k.type);
  set_str(L, "public_key", k.public_line);
  set_str(L, "fingerprint", k.fingerprint);
  lua_pushboolean(L, k.encrypted);
  lua_setfield(L, -2, "encrypted");
  return 1;
}

// keys.fingerprint(public_line) -> "SHA256:..."
int l_keys_fingerprint(lua_State* L) {
  std::string fp = ssh::fingerprint_of_publine(luaL_checkstring(L, 1));
  lua_pushstring(L, fp.c_str());
  return 1;
}

const luaL_Reg kKeysFns[] = {
    {"generate", lua::safe<l_keys_generate>},
    {"write", lua::safe<l_keys_write>},
    {"load", lua::safe<l_keys_load>},
    {"fingerprint", lua::safe<l_keys_fingerprint>},
    {nullptr, nullptr},
};

int luaopen_ephrun_keys(lua_State* L) {
  luaL_newlib(L, kKeysFns);
  return 1;
}

}  // namespace
}  // namespace ephrun

EPHRUN_MODULE("ephrun.keys", ephrun::luaopen_ephrun_keys);
