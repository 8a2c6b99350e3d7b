--- The static provider: a permanent server that already exists. Nothing is
--- created and nothing is ever destroyed; `cloud:attach` (or `cloud:launch`,
--- which attaches for this provider) returns an instance whose `ssh()` logs in
--- with your own key (`key_file`, else the agent) and verifies the host key
--- against `known_hosts` — never accept-anything.
---
--- Options, in `ephrun.provider("static", opts)` and/or the attach spec (the
--- spec wins): `host` (required), `port` (22), `user` ("root"), `key_file`,
--- `passphrase_env`, `agent`, `known_hosts` (default `~/.ssh/known_hosts`).
local ephrun = require "ephrun"
local errors = require "ephrun.errors"

local M = {}

--- Tells `ephrun.cloud` that this provider attaches to existing servers.
M.static = true

--- No lifetime timer: a permanent server is never ended by ephrun.
M.ttl_effect = "none"

local function home()
  return os.getenv("HOME") or "/root"
end

local function expand(p)
  if type(p) == "string" and (p == "~" or p:sub(1, 2) == "~/") then return home() .. p:sub(2) end
  return p
end

-- spec over opts, with defaults; raises when `host` is missing.
local function settings(spec, opts)
  spec, opts = spec or {}, opts or {}
  local function pick(k)
    local v = spec[k]
    if v == nil or v == "" then v = opts[k] end
    if v == "" then v = nil end
    return v
  end
  local host = pick("host")
  if type(host) ~= "string" then
    errors.raise { kind = "invalid",
      message = "static provider: give the server's address: ephrun.provider(\"static\", {host = \"203.0.113.7\"})" }
  end
  local port = tonumber(pick("port") or 22)
  if not port or port < 1 or port > 65535 or port % 1 ~= 0 then
    errors.raise { kind = "invalid", message = ("static provider: port must be 1-65535, got %s"):format(tostring(pick("port"))) }
  end
  local s = {
    host = host, port = math.tointeger(port), user = pick("user") or "root",
    key_file = expand(pick("key_file")), passphrase_env = pick("passphrase_env"), agent = pick("agent"),
    known_hosts = expand(pick("known_hosts")) or (home() .. "/.ssh/known_hosts"),
  }
  if not s.key_file and s.agent == nil then
    local def = home() .. "/.ssh/id_ed25519"
    if ephrun.fs.exists(def) then
      s.key_file = def
    elseif os.getenv("SSH_AUTH_SOCK") then
      s.agent = true
    end
  end
  return s
end

--- The instance table for the server described by `spec` and `opts`; no
--- network is used.
---@param spec table
---@param opts? table
---@return table instance
function M.attach(spec, opts)
  local s = settings(spec, opts)
  return {
    id = ("%s@%s:%d"):format(s.user, s.host, s.port), host = s.host, port = s.port, user = s.user,
    state = "running", tags = {}, provider = "static", key_file = s.key_file,
    passphrase_env = s.passphrase_env, agent = s.agent, known_hosts = s.known_hosts,
  }
end

--- Same as `attach`: a static server is never created.
function M.launch(spec, opts)
  return M.attach(spec, opts)
end

--- nil: the provider keeps no record of servers.
function M.get(_id, _opts)
  return nil
end

--- Nothing to list: ephrun made none of these servers, so `reap` must never touch them.
---@return table[]
function M.list(_filter, _opts)
  return {}
end

--- Does nothing: a permanent server is never destroyed by ephrun.
function M.destroy(_inst, _opts) end

--- The server is always taken to be running.
function M.wait(inst, _state, _deadline, _opts)
  return inst
end

--- What ephrun pays for it: nothing it started.
---@return number
function M.price(_spec, _opts)
  return 0
end

--- Where to connect: {host, port, user}.
function M.ssh_endpoint(inst, _opts)
  return { host = inst.host, port = inst.port, user = inst.user }
end

--- There is nothing to remove by hand.
function M.destroy_hint(inst, _opts)
  return "nothing to remove: " .. tostring(inst.id) .. " is a permanent server that ephrun never destroys"
end

-- No snapshot or resize: the lifecycle says "provider 'static' cannot ...";
-- use the server's own cloud's provider for those.

return M
