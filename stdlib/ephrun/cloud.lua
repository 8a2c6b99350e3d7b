--- Providers and the instance lifecycle: `ephrun.provider(name)` returns a
--- cloud whose `launch` creates an instance that is destroyed when the run
--- ends, whatever happens. Every step goes through `ephrun.effect`, so a
--- --dry-run prints the same steps a real run takes.
local ephrun = require "ephrun"

local M = {}

---@class ephrun.Cloud
---@field name string
local Cloud = {}
Cloud.__index = Cloud

--- Loads provider `name`: a built-in (`providers/<name>.lua`), or a module of
--- that name in the recipe's directory or on EPHRUN_PATH.
---@param name string local | vultr | aws | static, or a provider a pack adds
---@param opts? table provider options
---@return ephrun.Cloud
function M.provider(name, opts)
  if type(name) ~= "string" or not name:match("^[%w_%-]+$") then
    error(("provider name must be a word, got %s"):format(tostring(name)), 2)
  end
  local ok, impl = pcall(require, "providers." .. name)
  if not ok then
    error(("unknown provider '%s' (built-in: local, vultr, aws, static): %s"):format(name, impl), 2)
  end
  return setmetatable({ name = name, impl = impl, opts = opts or {} }, Cloud)
end

--- Hourly price in USD of an instance of `spec`, or nil when unknown.
---@param spec table
---@return number|nil
function Cloud:price(spec)
  if not self.impl.price then return nil end
  return self.impl.price(spec, self.opts)
end

local function describe(self, spec)
  local parts = { self.name }
  for _, k in ipairs { "plan", "region", "image", "snapshot" } do
    if spec[k] and spec[k] ~= "" then parts[#parts + 1] = k .. "=" .. tostring(spec[k]) end
  end
  return table.concat(parts, " ")
end

---@class ephrun.Instance
---@field id string
---@field cloud ephrun.Cloud
---@field host string
---@field port integer
local Instance = {}
Instance.__index = Instance

--- Launches an instance for this run and registers its destroy on the
--- cleanup stack before returning. `spec.ttl` (default 1h) bounds its life:
--- the instance ends itself at expiry even if ephrun is killed.
---@param spec {plan?: string, region?: string, image?: string, snapshot?: string, ttl?: number|string, keep?: boolean, label?: string}
---@return ephrun.Instance
function Cloud:launch(spec)
  spec = spec or {}
  local ttl = spec.ttl or "1h"
  if type(ttl) == "string" then
    local secs, why = ephrun.time.parse_duration(ttl)
    if not secs then error("launch: ttl " .. why, 2) end
    ttl = secs
  end
  local prev = ephrun.phase("launch")
  local hourly = self:price(spec)
  local worst = hourly and hourly * ttl / 3600 or nil
  local expires = ephrun.time.now() + ttl
  local tags = {
    ["ephrun-run"] = ephrun.run_id(),
    ["ephrun-recipe"] = rawget(ephrun, "recipe_name") or "?",
    ["ephrun-expires"] = ephrun.time.iso8601(expires),
  }
  local what = describe(self, spec)

  ephrun.effect {
    kind = "keys", what = "generate this run's ed25519 client key and instance host key",
    run = function() end,
  }
  local details = {
    ("lifetime %s: the instance powers off and ends itself at %s"):format(
      ephrun.time.format_duration(ttl), tags["ephrun-expires"]),
    ("tags: ephrun-run=%s ephrun-recipe=%s"):format(tags["ephrun-run"], tags["ephrun-recipe"]),
  }
  if hourly then
    details[#details + 1] = ("price $%.4f/hour × %s = $%.2f worst case"):format(
      hourly, ephrun.time.format_duration(ttl), worst)
  end
  local inst = ephrun.effect {
    kind = "launch", what = what, where = self.name, cost = worst, details = details,
    run = function()
      if not self.impl.launch then error("provider '" .. self.name .. "' cannot launch instances") end
      return self.impl.launch({ plan = spec.plan, region = spec.region, image = spec.image,
        snapshot = spec.snapshot, ttl = ttl, tags = tags, label = spec.label }, self.opts)
    end,
    placeholder = function() return { id = "<new " .. self.name .. " instance>", host = "<address>", port = 22 } end,
  }
  local obj = setmetatable({ id = inst.id, cloud = self, host = inst.host, port = inst.port or 22,
    raw = inst, ttl = ttl }, Instance)
  if spec.keep then
    ephrun.log.warn("keep=true: instance %s will NOT be destroyed; it ends itself at %s",
      obj.id, tags["ephrun-expires"])
  else
    obj._destroy = ephrun.defer(function() obj:destroy() end, "destroy " .. self.name .. " instance " .. obj.id,
      self.impl.destroy_hint and self.impl.destroy_hint(inst, self.opts) or nil)
  end
  ephrun.phase(prev)
  return obj
end

--- Destroys the instance (idempotent).
function Instance:destroy()
  if self._destroyed then return end
  ephrun.effect {
    kind = "destroy", what = self.cloud.name .. " instance " .. self.id, where = self.cloud.name,
    run = function() self.cloud.impl.destroy(self.raw, self.cloud.opts) end,
  }
  self._destroyed = true
  if self._destroy then self._destroy:cancel() end
end
Instance.close = Instance.destroy
Instance.__close = Instance.destroy

--- Waits for SSH with the instance's pinned host key and returns a session.
---@param opts? {deadline?: number|string}
---@return table session
function Instance:ssh(opts)
  opts = opts or {}
  local prev = ephrun.phase("ssh")
  local deadline = opts.deadline or "5m"
  local session = ephrun.effect {
    kind = "ssh",
    what = ("wait for SSH (host key pinned to this run's key, deadline %s)"):format(deadline),
    where = self.host .. ":" .. tostring(self.port),
    run = function()
      return ephrun.ssh.wait { host = self.host, port = self.port, user = self.raw.user,
        key = self.raw.client_key, host_key = self.raw.host_key, deadline = deadline }
    end,
    placeholder = function() return M.plan_session(self.host) end,
  }
  ephrun.phase(prev)
  return session
end

local PlanSession = {}
PlanSession.__index = PlanSession

--- A session that only records what a real one would do (for --dry-run).
---@param host string
function M.plan_session(host)
  return setmetatable({ host = host }, PlanSession)
end

--- Records a remote command (see ephrun.ssh Session:run).
function PlanSession:run(cmd, opts)
  ephrun.effect { kind = "run", what = cmd, where = self.host, run = function() end }
  return { code = 0, stdout = "", stderr = "", duration = 0, dry_run = true, opts = opts }
end

--- Records a sync with the local file and byte counts and the excludes.
function PlanSession:sync(local_dir, remote_dir, opts)
  opts = opts or {}
  local details = {}
  local ssh = require "ephrun.ssh"
  local stats = ssh.scan_local(local_dir, opts)
  stats.dry_run = true
  do
    details[#details + 1] = ("%d files, %s (%d excluded)"):format(stats.files_total,
      ssh.human_bytes(stats.bytes_total),
      stats.excluded or 0)
  end
  local ex = { ".env*", "*.pem", "id_*", ".git" }
  for _, e in ipairs(opts.exclude or {}) do ex[#ex + 1] = e end
  details[#details + 1] = "excludes: " .. table.concat(ex, " ")
  ephrun.effect { kind = "sync", what = local_dir .. " → " .. remote_dir, where = self.host,
    details = details, run = function() end }
  return stats
end

--- Records a fetch.
function PlanSession:fetch(remote, local_dir)
  ephrun.effect { kind = "fetch", what = remote .. " → " .. local_dir, where = self.host, run = function() end }
  return { files = 0, bytes = 0, dry_run = true }
end

--- Nothing to close.
function PlanSession.close(_) end
PlanSession.__close = PlanSession.close

return M
