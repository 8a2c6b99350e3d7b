--- Providers and the instance lifecycle: `ephrun.provider(name)` returns a
--- cloud whose `launch` creates an instance that is destroyed when the run
--- ends, whatever happens. Every step goes through `ephrun.effect`, so a
--- --dry-run prints the same steps a real run takes.
local ephrun = require "ephrun"

---@class ephrun.cloud
local M = {}

---@class ephrun.Cloud
---@field name string
local Cloud = {}
Cloud.__index = Cloud

--- Where ephrun keeps state: `$EPHRUN_HOME`, else `~/.local/state/ephrun`.
---@return string
function M.state_dir()
  local h = os.getenv("EPHRUN_HOME")
  if h and h ~= "" then return h end
  return (os.getenv("HOME") or "/tmp") .. "/.local/state/ephrun"
end

-- The built-in module (embedded, or from EPHRUN_LUA_DIR), found without the
-- recipe-directory and EPHRUN_PATH searchers so that no file there shadows it.
local function load_builtin(modname)
  local searcher = package.searchers[3]
  if not searcher then return nil end
  local loader, extra = searcher(modname)
  if type(loader) ~= "function" then return nil end
  local mod = loader(modname, extra)
  if mod == nil then mod = true end
  package.loaded[modname] = mod
  return mod
end

--- Names of the providers shipped with ephrun (the `providers/*.lua` compiled
--- in, or in EPHRUN_LUA_DIR), sorted. `filter.can` keeps those that have that
--- contract function (e.g. "snapshot"); `filter.creates` drops those that only
--- attach to existing servers (static).
---@param filter? {can?: string, creates?: boolean}
---@return string[]
function M.builtin_providers(filter)
  filter = filter or {}
  local out = {}
  for _, file in ipairs(require("ephrun._core").builtin_files("providers")) do
    local name = file:match("^([%w%-][%w_%-]*)%.lua$")
    local impl = name and (package.loaded["providers." .. name] or load_builtin("providers." .. name))
    -- a shared helper module beside the providers is not one
    if type(impl) == "table" and (impl.launch or impl.attach)
      and (not filter.can or type(impl[filter.can]) == "function")
      and not (filter.creates and impl.static) then
      out[#out + 1] = name
    end
  end
  return out
end

--- Loads provider `name`: a built-in (`providers/<name>.lua`) first, then a
--- module `providers/<name>.lua` or `<name>.lua` in the recipe's directory or
--- on EPHRUN_PATH.
---@param name string a built-in (see `builtin_providers`), or a provider a pack adds
---@param opts? table provider options
---@return ephrun.Cloud
function M.provider(name, opts)
  if type(name) == "string" and name:match("^[%w_][%w_%-]*/[%w_][%w_%-]*$") then
    return M.pack_provider(name, opts)
  end
  if type(name) ~= "string" or not name:match("^[%w_%-]+$") then
    error(("provider name must be a word, or PACK/NAME for a pack's, got %s"):format(tostring(name)), 2)
  end
  local modname = "providers." .. name
  local impl = package.loaded[modname] or load_builtin(modname)
  if not impl then
    local ok, m = pcall(require, modname)
    if not ok and tostring(m):match("module '" .. modname:gsub("%p", "%%%0") .. "' not found") then
      local ok2, m2 = pcall(require, name)
      if ok2 and type(m2) == "table" and (m2.launch or m2.list) then ok, m = ok2, m2 end
    end
    if not ok then
      error(("unknown provider '%s' (built-in: %s; a pack adds one as providers/%s.lua beside the recipe "
        .. "or on EPHRUN_PATH): %s"):format(name, table.concat(M.builtin_providers(), ", "), name, m), 2)
    end
    impl = m
  end
  if type(impl) ~= "table" then error(("provider '%s' did not return a table"):format(name), 2) end
  return setmetatable({ name = name, impl = impl, opts = opts or {} }, Cloud)
end

--- Loads provider `PACK/NAME` from a locked pack, verified against ephrun.lock
--- (a pack's provider never takes a built-in's bare name).
---@param spec string "PACK/NAME"
---@param opts? table provider options
---@return ephrun.Cloud
function M.pack_provider(spec, opts)
  local modname = "providers." .. spec
  local impl = package.loaded[modname]
  if not impl then
    local ok, src, path = pcall(require("ephrun.packs").provider_file, spec)
    if not ok then error(("provider '%s': %s"):format(spec, tostring(src)), 3) end
    local chunk, err = load(src, "@" .. path, "t")
    if not chunk then error(err, 3) end
    impl = chunk(modname, path)
    package.loaded[modname] = impl
  end
  if type(impl) ~= "table" then error(("provider '%s' did not return a table"):format(spec), 3) end
  return setmetatable({ name = spec, impl = impl, opts = opts or {} }, Cloud)
end

--- Hourly price in USD of an instance of `spec`, or nil when unknown.
---@param spec table
---@return number|nil
function Cloud:price(spec)
  if not self.impl.price then return nil end
  return self.impl.price(spec, self.opts)
end

--- Instances of this provider whose tags include `filter.tags` (provider tables).
---@param filter? {tags?: table<string,string>}
---@return table[]
function Cloud:list(filter)
  if not self.impl.list then error("provider '" .. self.name .. "' cannot list instances", 2) end
  return self.impl.list(filter or {}, self.opts)
end

local function seconds(v, what)
  if v == nil or type(v) == "number" then return v end
  local s, why = ephrun.time.parse_duration(v)
  if not s then error(what .. " " .. why, 3) end
  return s
end

-- Only a structured error (ephrun.errors) that says so is retried; what its
-- text says never matters, so a provider words its messages for people.
local retryable = require("ephrun.errors").retryable

-- How long a destroy keeps trying: the caller's deadline, else the provider's, else 10m.
local function destroy_deadline(cloud, given)
  return seconds(given, "destroy: deadline")
    or (cloud.impl.destroy_deadline and seconds(cloud.impl.destroy_deadline(cloud.opts),
      cloud.name .. " destroy_deadline")) or 600
end

-- Calls the provider's destroy, retrying while its error says `retry` (locked,
-- rate-limited, a 5xx, no answer), until `deadline` seconds pass; then raises an
-- error that names the instance and the command that removes it.
local function destroy_retrying(cloud, raw, deadline, hint)
  local limit = ephrun.time.monotonic() + deadline
  local delay = 1
  while true do
    local ok, err = pcall(cloud.impl.destroy, raw, cloud.opts)
    if ok then return end
    if not retryable(err) then error(err, 0) end
    if ephrun.time.monotonic() + delay > limit then
      error(("%s instance %s is NOT destroyed after %s of trying (%s); it may still be billing. Remove it: %s")
        :format(cloud.name, tostring(raw.id), ephrun.time.format_duration(deadline), tostring(err), hint()), 0)
    end
    ephrun.log.warn("destroy %s instance %s: %s; retrying in %ds", cloud.name, tostring(raw.id), tostring(err), delay)
    ephrun.time.sleep(delay)
    delay = math.min(delay * 2, 30)
  end
end

--- Destroys a provider instance table (e.g. one from `list`) without the
--- lifecycle around it (used by `ephrun reap`). Idempotent; retries a locked
--- or rate-limited instance as `instance:destroy` does.
---@param inst table
---@param opts? {deadline?: number|string}
function Cloud:destroy(inst, opts)
  destroy_retrying(self, inst, destroy_deadline(self, (opts or {}).deadline), function()
    return self.impl.destroy_hint and self.impl.destroy_hint(inst, self.opts) or "ephrun reap"
  end)
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
---@field user string
---@field keep boolean
---@field plan? string the plan it was launched with
local Instance = {}
Instance.__index = Instance

local function journal()
  return require "ephrun.journal"
end

-- What the provider needs to destroy the instance later, as the journal stores it.
local function journal_extra(inst)
  local extra = {}
  for k, v in pairs(inst) do
    if type(v) ~= "function" and type(v) ~= "userdata" then extra[k] = v end
  end
  return extra
end

-- This run's client key pair and its key directory, made once per run.
local run_keys

local q = ephrun.shell_quote

local function client_keys(keep)
  if run_keys then return run_keys end
  local run_id = ephrun.run_id()
  local dir = M.state_dir() .. "/runs/" .. run_id
  assert(ephrun.fs.mkdir_p(dir, "0700"))
  local pair = ephrun.keys.generate("ephrun-run-" .. run_id)
  ephrun.keys.write(pair, dir .. "/id_ed25519")
  run_keys = { pair = pair, dir = dir, keep = keep }
  -- Decided when the run ends: a later launch with keep=true still needs the key.
  run_keys.cleanup = ephrun.defer(function()
    if not run_keys.keep then ephrun.fs.remove(dir, { recursive = true }) end
  end, "remove this run's keys in " .. dir, "rm -rf " .. q(dir))
  return run_keys
end

-- Providers already warned about in this process (fifty launches, one warning).
local warned_no_reaper = {}

-- The idempotency token of journal intent `key`, which the provider sends with
-- its create (AWS's ClientToken), so a resumed or retried create makes nothing twice.
local function intent_token(j, key)
  for _, r in ipairs(j.resources { run_id = ephrun.run_id(), live = true }) do
    if r.key == key then return r.token end
  end
end

-- What this provider's lifetime timer does (its `ttl_effect`), and what bounds
-- the bill: `grace` seconds past the expiry (the reaper's interval) when
-- billing ends at all, nil when nothing ends it without the launcher.
local function lifetime(self, ttl, expires_text)
  local effect = self.impl.ttl_effect or "unknown"
  if effect == "ends billing" then
    return 0, { ("lifetime %s: %s's timer ends billing: the instance ends itself at %s"):format(
      ephrun.time.format_duration(ttl), self.name, expires_text) }
  end
  local rec = require("ephrun.reaper").covers(self.name) and require("ephrun.reaper").record()
  local what = effect == "stops the CPU only"
    and ("lifetime %s: %s's timer stops the CPU only: at %s the instance powers off, and a halted instance still bills")
      :format(ephrun.time.format_duration(ttl), self.name, expires_text)
    or ("lifetime %s: %s does not declare what its timer does (ttl_effect): at %s it may only power off and keep "
      .. "billing"):format(ephrun.time.format_duration(ttl), self.name, expires_text)
  if rec then
    return rec.every, { what, ("the reaper (%s, every %s) deletes it once expired"):format(rec.key,
      ephrun.time.format_duration(rec.every)) }
  end
  return nil, { what, "WARNING: no reaper is installed: if ephrun is killed, nothing ends the billing "
    .. "(worst case unbounded); install one: ephrun reaper install" }
end

-- What the cost gate (ephrun.cost) is told about a launch: its worst case, or
-- why it has none and what would give it one.
local function launch_cost(self, what, spec, hourly, ttl, grace, worst)
  local extra = spec.extra_cost
  local extra_usd = extra and tonumber(extra.usd) or 0
  if worst and extra_usd > 0 then worst = worst + extra_usd end
  local l = { what = what, worst = worst, provider = self.name, plan = spec.plan, warn_cost = spec.warn_cost }
  if worst then
    l.basis = worst > 0 and ("$%.4f/hour × %s%s%s"):format(hourly, ephrun.time.format_duration(ttl),
      grace > 0 and (" + " .. ephrun.time.format_duration(grace) .. " reaper interval") or "",
      extra_usd > 0 and (" + $%.2f %s"):format(extra_usd, extra.what or "other charges") or "") or nil
  elseif not hourly then
    l.unknown = ("%s has no price for %s"):format(self.name, tostring(spec.plan or "the default plan"))
    l.remedy = "Use a plan whose price the provider knows, or run without a limit and confirm the launch"
  elseif not ttl then
    l.unknown = "ttl=false: no lifetime bounds how long it bills"
    l.remedy = "Give it a lifetime (ttl=2h)"
  else
    l.unknown = ("%s's lifetime timer only stops the CPU (a halted instance still bills) and no reaper is "
      .. "installed, so nothing ends the billing if ephrun is killed"):format(self.name)
    l.remedy = "Install the reaper (ephrun reaper install), which deletes it once expired"
  end
  return l
end

--- Launches an instance for this run: generates the run's client key and a
--- host key, builds cloud-init user-data (host key, authorized key, lifetime
--- timer), tags it (run id, recipe, expiry), writes the journal intent, creates
--- it, registers its destroy on the cleanup stack and waits for `running`.
--- `spec.ttl` (default 1h; `false` for none) bounds its life: the instance
--- ends itself at expiry even if ephrun is killed. `keep=true` skips the
--- destroy (loudly). `detach=true` tags it for `instance:detach`; `tags` adds
--- the recipe's own tags (ephrun's `ephrun-*` tags are never replaced).
---@param spec {plan?: string, region?: string, image?: string, snapshot?: string, ttl?: number|string|false, keep?: boolean, detach?: boolean, label?: string, boot_delay?: number, deadline?: number|string, warn_cost?: number, extra_cost?: {usd: number, what?: string}, tags?: table<string, string>, volumes?: {size: integer, type?: string, device?: string, iops?: integer, throughput?: integer}[]}
---@return ephrun.Instance
function Cloud:launch(spec)
  -- A permanent server (the static provider) is attached to, never created.
  if self.impl.static then return self:attach(spec) end
  spec = spec or {}
  local ttl = spec.ttl
  if ttl == nil then ttl = "1h" end
  ttl = ttl and seconds(ttl, "launch: ttl") or false
  local prev = ephrun.phase("launch")
  -- Credentials are checked before anything is made (a dry-run lists missing ones).
  if self.impl.preflight then self.impl.preflight(self.opts) end
  local hourly = self:price(spec)
  local started = ephrun.time.now()
  local expires = ttl and started + ttl or nil
  local grace, lifetime_lines
  if ttl then grace, lifetime_lines = lifetime(self, ttl, ephrun.time.iso8601(expires)) end
  local worst = hourly and ttl and grace and hourly * (ttl + grace) / 3600 or nil
  if hourly == 0 then worst = 0 end -- free: no lifetime makes it cost anything
  local tags = {
    ["ephrun-run"] = ephrun.run_id(),
    ["ephrun-recipe"] = rawget(ephrun, "recipe_name") or "?",
    ["ephrun-expires"] = expires and ephrun.time.iso8601(expires) or "never",
  }
  -- `ephrun reap` leaves a kept instance alone until it expires, even when it finds it
  -- only by its tags.
  if spec.keep then tags["ephrun-keep"] = "true" end
  -- A run that will leave its job going is found by this tag from any machine.
  if spec.detach then tags["ephrun-detach"] = M.detach_id() end
  -- The recipe's own tags (a team's Project/CostCenter...) go beside ephrun's, never over them
  -- (nor take an ephrun-* name).
  local own = {}
  for k, v in pairs(spec.tags or {}) do
    if tags[k] == nil and not tostring(k):match("^ephrun%-") then
      tags[k] = tostring(v)
      own[#own + 1] = k .. "=" .. tostring(v)
    end
  end
  table.sort(own)
  local what = describe(self, spec)
  -- Refused or confirmed before anything is made, the run's keys included.
  local cost_lines = require("ephrun.cost").gate_launch(launch_cost(self, what, spec, hourly, ttl, grace, worst))

  local keys = ephrun.effect {
    kind = "keys", what = "generate this run's ed25519 client key and instance host key",
    where = M.state_dir() .. "/runs/" .. ephrun.run_id(),
    run = function()
      local ck = client_keys(spec.keep or spec.detach)
      return { client = ck.pair, host = ephrun.keys.generate("ephrun-host-" .. ephrun.run_id()), dir = ck.dir }
    end,
    placeholder = {},
  }
  local details = {}
  if ttl then
    for _, line in ipairs(lifetime_lines) do details[#details + 1] = line end
  else
    details[#details + 1] = "no lifetime timer (ttl=false): only the cleanup stack and `ephrun reap` end it"
  end
  details[#details + 1] = "user-data: this run's host key (ssh_keys), its authorized key" ..
    (ttl and (", shutdown -h +%dm"):format(math.max(1, math.ceil(ttl / 60))) or "") .. "; no secrets"
  details[#details + 1] = ("tags: ephrun-run=%s ephrun-recipe=%s%s"):format(tags["ephrun-run"], tags["ephrun-recipe"],
    own[1] and (" " .. table.concat(own, " ")) or "")
  for _, v in ipairs(spec.volumes or {}) do
    details[#details + 1] = ("extra volume: %s GB %s, deleted with the instance"):format(tostring(v.size), v.type or "gp3")
  end
  if hourly then
    details[#details + 1] = (ttl and grace) and ("price $%.4f/hour × %s%s = $%.2f worst case"):format(hourly,
      ephrun.time.format_duration(ttl), grace > 0 and (" + " .. ephrun.time.format_duration(grace) .. " reaper interval")
      or "", worst) or hourly == 0 and "price $0/hour: free, however long it runs"
      or ("price $%.4f/hour, worst case unbounded"):format(hourly)
  end
  if hourly and self.impl.price_basis then details[#details + 1] = self.impl.price_basis end
  if self.impl.plan_details then
    for _, line in ipairs(self.impl.plan_details({ plan = spec.plan, region = spec.region, ttl = ttl or nil },
      self.opts) or {}) do details[#details + 1] = line end
  end
  for _, line in ipairs(cost_lines) do details[#details + 1] = line end
  if spec.keep then details[#details + 1] = "keep=true: NOT destroyed at the end of the run" end
  local obj = ephrun.effect {
    kind = "launch", what = what, where = self.name, cost = worst, details = details,
    run = function()
      -- Said once per provider in a real run (the plan already carries it as a line).
      if ttl and not grace and not warned_no_reaper[self.name] then
        warned_no_reaper[self.name] = true
        ephrun.log.warn("%s: the lifetime timer only powers the instance off and no reaper is installed: if ephrun "
          .. "is killed, it bills until deleted. Install one: ephrun reaper install", self.name)
      end
      if not self.impl.launch then error("provider '" .. self.name .. "' cannot launch instances") end
      local user_data = require("ephrun.cloudinit").user_data {
        host_key = keys.host, authorized_keys = { keys.client.public_key }, ttl = ttl,
        comment = "ephrun run " .. ephrun.run_id() .. " (" .. tags["ephrun-recipe"] .. ")",
      }
      -- No journal, no resource: the intent is committed before the create, or nothing is made.
      local j = journal()
      local jkey = j.intent { run_id = ephrun.run_id(), provider = self.name, kind = "instance", tags = tags,
        hourly_price = hourly, expires_at = expires,
        token = ephrun.fs.hash_string(ephrun.run_id() .. "/" .. tostring(started) .. "/" .. math.random()) }
      local ok, inst = pcall(self.impl.launch, {
        plan = spec.plan, region = spec.region, image = spec.image, snapshot = spec.snapshot,
        ttl = ttl or nil, tags = tags, label = spec.label, user_data = user_data,
        client_token = jkey and intent_token(j, jkey), volumes = spec.volumes,
        boot_delay = spec.boot_delay }, self.opts)
      if not ok then
        pcall(j.failed, jkey, tostring(inst)) -- the create's own error is the one to report
        error(inst, 0)
      end
      local o = setmetatable({ id = inst.id, cloud = self, raw = inst, ttl = ttl, tags = tags,
        keep = spec.keep and true or false, client_key = keys.client.private_key,
        host_key = keys.host.public_key, key_dir = keys.dir, journal_key = jkey,
        hourly = hourly, started = started, expires = expires, plan = spec.plan }, Instance)
      -- The undo is on the cleanup stack before anything else can fail, the journal write
      -- included. A kept instance has it too until its launch is complete.
      local hinted, hint = pcall(o.destroy_hint, o)
      o._destroy = ephrun.defer(function() o:destroy() end, "destroy " .. self.name .. " instance " .. tostring(o.id),
        hinted and hint or nil)
      local recorded, jerr = pcall(j.created, jkey, inst.id, journal_extra(inst))
      if not recorded then
        error(("journal: cannot record %s instance %s (%s); it is being destroyed"):format(self.name,
          tostring(o.id), tostring(jerr)), 0)
      end
      o:_endpoint()
      if self.impl.wait then
        local waited = self.impl.wait(inst, "running", seconds(spec.deadline, "launch: deadline") or 600, self.opts)
        if type(waited) == "table" then
          for k, v in pairs(waited) do o.raw[k] = v end
          o:_endpoint()
        end
      end
      if spec.keep then o:_keep() end
      return o
    end,
    placeholder = function()
      return setmetatable({ id = "<new " .. self.name .. " instance>", cloud = self, host = "<address>", port = 22,
        raw = {}, ttl = ttl, tags = tags, keep = spec.keep and true or false, dry = true }, Instance)
    end,
  }
  ephrun.phase(prev)
  return obj
end

function Instance:_endpoint()
  local ep = self.cloud.impl.ssh_endpoint and self.cloud.impl.ssh_endpoint(self.raw, self.cloud.opts) or self.raw
  self.host, self.port, self.user = ep.host, ep.port or 22, ep.user
end

--- A command that removes this instance by hand.
---@return string
function Instance:destroy_hint()
  if self.cloud.impl.destroy_hint then return self.cloud.impl.destroy_hint(self.raw, self.cloud.opts) end
  return "ephrun reap   # instance " .. tostring(self.id) .. " of provider " .. self.cloud.name
end

--- Destroys the instance (idempotent), retrying while the provider says it
--- is locked, rate-limited or failing (5xx) for up to `opts.deadline` (default 10m).
---@param opts? {deadline?: number|string}
function Instance:destroy(opts)
  if self._destroyed then return end
  opts = opts or {}
  local deadline = destroy_deadline(self.cloud, opts.deadline)
  ephrun.effect {
    kind = "destroy", what = self.cloud.name .. " instance " .. self.id, where = self.cloud.name,
    run = function()
      destroy_retrying(self.cloud, self.raw, deadline, function() return self:destroy_hint() end)
      ephrun.log.info("destroyed %s instance %s", self.cloud.name, self.id)
      if self.journal_key then
        -- The instance is gone: a journal that cannot say so must not make the cleanup fail.
        local ok, err = pcall(journal().destroyed, self.journal_key)
        if not ok then
          ephrun.log.warn("destroyed %s instance %s, but the journal could not record it (%s); "
            .. "`ephrun reap` tidies the entry later", self.cloud.name, self.id, tostring(err))
        end
      end
    end,
  }
  self._destroyed = true
  self.destroyed_at = ephrun.time.now()
  if self._destroy then self._destroy:cancel() end
end

--- The whole `ssh` command that logs in to the instance by hand: this run's
--- key, the port, the user, and its pinned host key (in the run's key
--- directory), never "accept any host key".
---@return string
function Instance:ssh_command()
  local parts = { "ssh" }
  if self.key_dir then
    parts[#parts + 1] = "-i " .. q(self.key_dir .. "/id_ed25519") .. " -o IdentitiesOnly=yes"
    parts[#parts + 1] = "-o " .. q("UserKnownHostsFile=" .. self.key_dir .. "/known_hosts")
      .. " -o StrictHostKeyChecking=yes"
  end
  if self.port and self.port ~= 22 then parts[#parts + 1] = "-p " .. tostring(self.port) end
  parts[#parts + 1] = q((self.user and (self.user .. "@") or "") .. tostring(self.host))
  return table.concat(parts, " ")
end

-- The instance outlives the run: its pinned host key goes beside the run's key
-- (for `ssh_command` and later commands), and the run's key directory stays.
local function leave_running(self)
  if self.key_dir and self.host_key and self.host then
    local who = (self.port and self.port ~= 22) and ("[" .. self.host .. "]:" .. self.port) or self.host
    assert(ephrun.fs.write(self.key_dir .. "/known_hosts", who .. " " .. self.host_key .. "\n", { mode = "0600" }))
  end
  if run_keys and run_keys.dir == self.key_dir then run_keys.keep = true end
end

-- keep=true, once the launch is complete: the destroy guard goes, the journal marks it
-- kept until its TTL, and the log says how to reach and remove it.
function Instance:_keep()
  leave_running(self)
  -- what the instance still uses past the run's end (AWS: its run's security group)
  if self.cloud.impl.detach then self.cloud.impl.detach(self.raw, self.cloud.opts) end
  if self.journal_key then journal().kept(self.journal_key) end
  if self._destroy then self._destroy:cancel() end
  self._destroy = nil
  ephrun.log.warn("KEPT %s instance %s (keep=true): NOT destroyed by this run; it %s. Log in: %s   Remove it: %s",
    self.cloud.name, self.id, self.ttl and ("ends itself at " .. self.tags["ephrun-expires"])
      or "has NO lifetime timer", self:ssh_command(), self:destroy_hint())
end

--- The id `ephrun status/attach/finish` know a detached run by: this run's,
--- or, while a command relaunches an interrupted run, that run's.
---@return string
function M.detach_id()
  return rawget(M, "_adopted") or ephrun.run_id()
end

--- Leaves the instance running with `job` (from `sh:run_detached`) when the
--- run ends: launched with `detach=true`, it is journalled `detached` (not
--- orphaned; `ephrun reap` leaves it until its TTL), its destroy is taken off
--- the cleanup stack, and the run's key and what `ephrun status`, `attach` and
--- `finish` need stay under EPHRUN_HOME. See docs/api/detach.md.
---@param job {pid: integer, log: string, status_file: string}
---@param opts? {done?: string, checkpoint?: string, interruptions?: integer}
---@return string run the id to give `ephrun status`, `attach` and `finish`
function Instance:detach(job, opts)
  if not self.tags or not self.tags["ephrun-detach"] then
    error("instance:detach needs an instance launched with detach=true (cloud:launch{detach=true, ...}), so that "
      .. "its tags let `ephrun status` find it from another machine", 2)
  end
  if type(job) ~= "table" or not job.log then
    error("instance:detach(job): job must be what sh:run_detached returned ({pid, log, status_file})", 2)
  end
  local detach = require "ephrun.detach"
  local run = ephrun.effect {
    kind = "detach", what = ("leave %s instance %s running its job (log %s)"):format(self.cloud.name, self.id, job.log),
    where = self.cloud.name,
    details = { self.ttl and ("it ends itself at " .. self.tags["ephrun-expires"] .. " (its TTL) unless `ephrun finish` "
      .. "ends it first") or "it has NO lifetime timer: only `ephrun finish` or `ephrun reap` ends it" },
    run = function()
      leave_running(self)
      local run = detach.record(self, job, opts or {})
      if self._destroy then self._destroy:cancel() end
      self._destroy = nil
      self.keep = true
      if self.cloud.impl.detach then self.cloud.impl.detach(self.raw, self.cloud.opts) end
      detach.announce(self, run, job)
      return run
    end,
    placeholder = self.tags["ephrun-detach"],
  }
  self.keep = true -- a dry-run's plan shows no destroy either
  return run
end

--- An instance object for a provider instance this process did not launch
--- (a detached run's, rebuilt by `ephrun status/attach/finish`).
---@param cloud ephrun.Cloud
---@param fields table id, raw, tags, key_dir, host_key, client_key, journal_key, hourly, started, expires, ttl
---@return ephrun.Instance
function M._rebuild(cloud, fields)
  fields.cloud = cloud
  fields.raw = fields.raw or { id = fields.id }
  local o = setmetatable(fields, Instance)
  o:_endpoint()
  return o
end

--- Closes the instance: destroys it, unless it was launched with keep=true.
function Instance:close()
  if self.keep then return end
  self:destroy()
end
Instance.__close = Instance.close

--- Cost so far in USD (hourly price × time alive), or nil when the price is unknown.
---@return number|nil
function Instance:cost()
  if not self.hourly or not self.started then return self.hourly and 0 or nil end
  local stop = self.destroyed_at or ephrun.time.now()
  return (self.cost_before or 0) + self.hourly * (stop - self.started) / 3600
end

local function impl_fn(self, name, verb)
  local f = self.cloud.impl[name]
  if not f then
    local can = M.builtin_providers { can = name }
    error(("provider '%s' cannot %s (it has no `%s`)%s"):format(self.cloud.name, verb, name,
      #can > 0 and ("; built-in providers that can: " .. table.concat(can, ", ")) or ""), 3)
  end
  return f
end

--- Takes a snapshot and (unless `wait=false`) waits until it is complete;
--- returns its id. A snapshot still being made when the run fails or is
--- interrupted is deleted by the cleanup: only a complete one outlives the run.
---@param opts? {description?: string, wait?: boolean, deadline?: number|string}
---@return string id
function Instance:snapshot(opts)
  opts = opts or {}
  local f = impl_fn(self, "snapshot", "take snapshots")
  local deadline = seconds(opts.deadline, "snapshot: deadline") or 3600
  local prev = ephrun.phase("snapshot")
  local id = ephrun.effect {
    kind = "snapshot", what = ("snapshot %s instance %s%s"):format(self.cloud.name, self.id,
      opts.description and (" as '" .. opts.description .. "'") or ""),
    where = self.cloud.name,
    details = { "kept after the run (snapshots are billed by size); deleted only if it is not complete when the run ends" },
    run = function()
      local sid = f(self.raw, { description = opts.description }, self.cloud.opts)
      local hint = self.cloud.impl.snapshot_hint and self.cloud.impl.snapshot_hint(sid, self.cloud.opts)
        or ("delete snapshot %s of provider %s in its console"):format(sid, self.cloud.name)
      local del = self.cloud.impl.delete_snapshot
      local guard = del and ephrun.defer(function() del(sid, self.cloud.opts) end,
        "delete incomplete " .. self.cloud.name .. " snapshot " .. sid, hint)
      ephrun.log.info("%s snapshot %s of instance %s started", self.cloud.name, sid, self.id)
      if opts.wait ~= false and self.cloud.impl.wait_snapshot then
        self.cloud.impl.wait_snapshot(sid, deadline, self.cloud.opts)
        ephrun.log.info("%s snapshot %s is complete", self.cloud.name, sid)
        if guard then guard:cancel() end
      elseif guard then
        guard:cancel()
      end
      return sid
    end,
    placeholder = "<new " .. self.cloud.name .. " snapshot>",
  }
  ephrun.phase(prev)
  return id
end

--- Changes the instance's size to `plan` and waits until it runs with it.
---@param plan string
---@param opts? {deadline?: number|string}
function Instance:resize(plan, opts)
  opts = opts or {}
  local f = impl_fn(self, "resize", "resize instances")
  local new_hourly = self.cloud:price { plan = plan }
  ephrun.effect {
    kind = "resize", what = ("resize %s instance %s to %s"):format(self.cloud.name, self.id, plan),
    where = self.cloud.name,
    details = new_hourly and { ("new price $%.4f/hour"):format(new_hourly) } or nil,
    run = function()
      local ok, inst = pcall(f, self.raw, plan, seconds(opts.deadline, "resize: deadline"), self.cloud.opts)
      if not ok then
        -- A failed resize may still have moved the instance (AWS: stopped, started again on the
        -- old type, at a new address): what comes next must reach it where it is now.
        local got, cur = pcall(self.cloud.impl.get, self.id, self.cloud.opts)
        if got and type(cur) == "table" then
          for k, v in pairs(cur) do self.raw[k] = v end
          self:_endpoint()
        end
        error(inst, 0)
      end
      if type(inst) == "table" then
        for k, v in pairs(inst) do self.raw[k] = v end
        self:_endpoint()
      end
      if new_hourly and self.hourly and self.started then
        -- bill what ran at the old price, then continue at the new one
        self.cost_before = self:cost()
        self.started = ephrun.time.now()
      end
      self.hourly = new_hourly or self.hourly
    end,
  }
end

--- Powers the instance off (it keeps its disk, and on most clouds keeps billing)
--- and waits until it is off, for up to `opts.deadline`.
---@param opts? {deadline?: number|string}
function Instance:halt(opts)
  opts = opts or {}
  local f = impl_fn(self, "halt", "halt instances")
  local deadline = seconds(opts.deadline, "halt: deadline")
  ephrun.effect {
    kind = "halt", what = ("power off %s instance %s"):format(self.cloud.name, self.id), where = self.cloud.name,
    run = function()
      local inst = f(self.raw, deadline, self.cloud.opts)
      if type(inst) == "table" then for k, v in pairs(inst) do self.raw[k] = v end end
    end,
  }
end

--- Powers a halted instance on and waits until it runs, for up to `opts.deadline`.
---@param opts? {deadline?: number|string}
function Instance:start(opts)
  opts = opts or {}
  local f = impl_fn(self, "start", "start instances")
  local deadline = seconds(opts.deadline, "start: deadline")
  ephrun.effect {
    kind = "start", what = ("power on %s instance %s"):format(self.cloud.name, self.id), where = self.cloud.name,
    run = function()
      local inst = f(self.raw, deadline, self.cloud.opts)
      if type(inst) == "table" then
        for k, v in pairs(inst) do self.raw[k] = v end
        self:_endpoint()
      end
    end,
  }
end

--- An existing instance of this provider, by id, to work on (snapshot, halt,
--- resize, start, ssh): nothing is created, and this run never destroys it.
--- SSH uses the key and the pinned host key of the ephrun run that launched
--- it (its `ephrun-run` tag names the run's key directory, which `keep=true`
--- leaves), so it must have been launched from this machine's state directory.
---@param id string
---@return ephrun.Instance
function Cloud:adopt(id)
  if type(id) ~= "string" or id == "" then error("adopt: expected an instance id", 2) end
  if not self.impl.get then error("provider '" .. self.name .. "' cannot look instances up", 2) end
  local raw = self.impl.get(id, self.opts)
  if not raw or raw.state == "terminated" then
    error(("%s instance %s does not exist (or is terminated): `ephrun ls` shows what is alive"):format(self.name, id), 0)
  end
  local run = raw.tags and raw.tags["ephrun-run"]
  local dir = run and (M.state_dir() .. "/runs/" .. run)
  local key = dir and ephrun.fs.read(dir .. "/id_ed25519")
  local known = dir and ephrun.fs.read(dir .. "/known_hosts")
  local host_key = known and known:match("^%S+%s+(%S+%s+%S+)")
  if not key or not host_key then
    error(("%s instance %s was not kept by an ephrun run of this machine (%s): its login key and pinned host key "
      .. "are not here; launch it with keep=true, or use the provider's console"):format(self.name, id,
      dir and ("no key in " .. dir) or "it has no ephrun-run tag"), 0)
  end
  local o = setmetatable({ id = id, cloud = self, raw = raw, tags = raw.tags or {}, keep = true, adopted = true,
    client_key = key, host_key = host_key, key_dir = dir, hourly = self:price { plan = raw.plan, region = raw.region },
    started = ephrun.time.now() }, Instance)
  o:_endpoint()
  ephrun.log.info("adopted %s instance %s (plan %s, launched by run %s); it is not destroyed by this run",
    self.name, id, tostring(raw.plan), run)
  return o
end

--- Snapshots this provider holds (`filter.description` narrows them).
---@param filter? {description?: string}
---@return table[]
function Cloud:snapshots(filter)
  if not self.impl.snapshots then error("provider '" .. self.name .. "' has no snapshots", 2) end
  return self.impl.snapshots(filter or {}, self.opts)
end

--- Deletes snapshot `id` (already gone is fine).
---@param id string
function Cloud:delete_snapshot(id)
  if not self.impl.delete_snapshot then error("provider '" .. self.name .. "' has no snapshots", 2) end
  ephrun.effect {
    kind = "delete", what = ("delete %s snapshot %s"):format(self.name, id), where = self.name,
    run = function() self.impl.delete_snapshot(id, self.opts) end,
  }
end

--- Waits for SSH with the instance's pinned host key and returns a session.
---@param opts? {deadline?: number|string}
---@return table session
function Instance:ssh(opts)
  opts = opts or {}
  local prev = ephrun.phase("ssh")
  local deadline = opts.deadline or "5m"
  local session = ephrun.effect {
    kind = "ssh",
    what = ("wait for SSH (host key pinned to this run's key, deadline %s)"):format(
      type(deadline) == "number" and ephrun.time.format_duration(deadline) or deadline),
    where = self.host .. ":" .. tostring(self.port),
    run = function()
      local s = ephrun.ssh.wait { host = self.host, port = self.port, user = self.user,
        key = self.client_key, host_key = self.host_key, deadline = deadline }
      if self.expires then
        s.lifetime = { expires = self.expires, ttl = self.ttl, what = self.cloud.name .. " instance " .. self.id }
      end
      -- which instance, for the figures ephrun.measure reports (many share an address)
      s.instance = { provider = self.cloud.name, id = self.id, plan = self.plan }
      return s
    end,
    placeholder = function() return M.plan_session(self.host) end,
  }
  ephrun.phase(prev)
  return session
end

--- The recording session used under --dry-run (see `ephrun.ssh.plan_session`).
---@param host string
---@return ephrun.ssh.Session
function M.plan_session(host)
  return ephrun.ssh.plan_session(host)
end

-- An existing server (the static provider): the instance methods, except that
-- nothing is destroyed and SSH uses the user's key and known_hosts.
local Attached = setmetatable({}, { __index = Instance })
Attached.__index = Attached

local function keyscan_hint(raw)
  local kh = raw.known_hosts
  return ("ssh-keyscan -p %d %s > /tmp/hostkey && ssh-keygen -lf /tmp/hostkey   # compare with the "
    .. "fingerprint your provider's console or the server itself (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub) "
    .. "shows; only if it matches: cat /tmp/hostkey >> %s"):format(raw.port, raw.host, q(kh))
end

-- The server's own answer when known_hosts does not know it: connecting reads
-- its host key (and trusts nothing) so the error can show the fingerprint to
-- compare. It is an effect: a dry-run does not connect and shows no fingerprint.
local function presented_key(raw)
  return ephrun.effect {
    kind = "ssh", what = "read the host key the server presents (to show its fingerprint; nothing is trusted)",
    where = raw.host .. ":" .. tostring(raw.port),
    run = function()
      -- The host key is checked before authentication, so the agent is never asked.
      local ok, s = pcall(ephrun.ssh.connect, { host = raw.host, port = raw.port, user = raw.user, agent = true,
        known_hosts = raw.known_hosts, timeout = "10s" })
      if ok then s:close() return nil end
      return type(s) == "table" and s.kind == "host_key_unknown" and tostring(s) or nil
    end,
  }
end

-- What the real ssh() would refuse, checked in both modes so a dry-run fails
-- where the run would: a login key, and a known_hosts file that knows the server.
local function check_attach(raw)
  if raw.key_file then
    if not ephrun.fs.exists(raw.key_file) then
      error(("static server %s: key_file %s does not exist: give the private key you log in with "
        .. "(key_file=~/.ssh/id_ed25519) or use an ssh-agent (agent=true)"):format(raw.id, raw.key_file), 0)
    end
  elseif not raw.agent then
    error(("static server %s: no login key: %s does not exist and no ssh-agent is running (SSH_AUTH_SOCK is unset); "
      .. "set key_file (e.g. key_file=~/.ssh/id_ed25519) or start an ssh-agent"):format(raw.id,
      (os.getenv("HOME") or "~") .. "/.ssh/id_ed25519"), 0)
  elseif not os.getenv("SSH_AUTH_SOCK") or os.getenv("SSH_AUTH_SOCK") == "" then
    error(("static server %s: agent=true but no ssh-agent is running (SSH_AUTH_SOCK is unset): "
      .. "start one (eval $(ssh-agent) && ssh-add) or set key_file"):format(raw.id), 0)
  end
  if not ephrun.fs.exists(raw.known_hosts) then
    error(("static server %s: known_hosts file %s does not exist, so its host key cannot be verified. "
      .. "Add the server's key after checking its fingerprint:\n  %s"):format(raw.id, raw.known_hosts,
      keyscan_hint(raw)), 0)
  end
  local entries, why = ephrun.ssh._known_host_entries(raw.known_hosts, raw.host, raw.port)
  if not entries then error(("static server %s: %s"):format(raw.id, why), 0) end
  for _, e in ipairs(entries) do
    if not e.revoked then return end
  end
  local seen = presented_key(raw)
  error(("static server %s is not in %s%s, so its host key cannot be verified: refusing to connect.%s\n"
    .. "To trust it, verify its fingerprint, then:\n  %s"):format(raw.id, raw.known_hosts,
    #entries > 0 and " (its only entries are @revoked)" or "", seen and ("\n" .. seen) or "", keyscan_hint(raw)), 0)
end

--- Attaches to an existing, permanent server (the static provider): nothing is
--- created, nothing is journalled, and closing or destroying the instance does
--- nothing. `spec` fields override the provider's options. The login key and
--- the server's known_hosts entry are checked here, in a dry-run too; no network
--- is used until `instance:ssh()` (except to show the fingerprint of a server
--- known_hosts does not know).
---@param spec? {host?: string, port?: integer, user?: string, key_file?: string, passphrase_env?: string, agent?: boolean, known_hosts?: string}
---@return ephrun.Instance
function Cloud:attach(spec)
  if not self.impl.attach then
    error(("provider '%s' creates instances (cloud:launch); only a provider of existing servers, "
      .. "like static, can attach"):format(self.name), 2)
  end
  local prev = ephrun.phase("attach")
  local inst = self.impl.attach(spec or {}, self.opts)
  check_attach(inst)
  ephrun.effect {
    kind = "attach", what = "existing server " .. inst.id, where = self.name, cost = 0,
    details = {
      "permanent server: nothing is created, and it is never destroyed",
      "login key: " .. (inst.key_file or "the ssh-agent"),
      "host key verified against " .. inst.known_hosts,
    },
    run = function() end,
  }
  local o = setmetatable({ id = inst.id, cloud = self, raw = inst, tags = inst.tags or {}, keep = true,
    static = true, hourly = 0, started = ephrun.time.now() }, Attached)
  o:_endpoint()
  ephrun.phase(prev)
  return o
end

--- Connects to the server with the user's key (`key_file`, else the agent),
--- verifying its host key against `known_hosts`; returns a session. A server
--- presenting another key than known_hosts holds is refused with what to do next.
---@param opts? {timeout?: number|string}
---@return table session
function Attached:ssh(opts)
  opts = opts or {}
  local raw = self.raw
  local prev = ephrun.phase("ssh")
  local ok, s = pcall(ephrun.ssh.connect, { host = self.host, port = self.port, user = self.user,
    key_file = raw.key_file, passphrase_env = raw.passphrase_env, agent = raw.agent,
    known_hosts = raw.known_hosts, timeout = opts.timeout or "30s" })
  if ok then
    ephrun.phase(prev)
    return s
  end
  local kind = type(s) == "table" and s.kind
  if kind == "host_key_unknown" then
    error(("%s\nThe server is unknown: refusing to connect. To trust it, verify its fingerprint, then:\n  %s")
      :format(tostring(s), keyscan_hint(raw)), 0)
  elseif kind == "host_key_mismatch" then
    error(("%s\nIf the server was really reinstalled, remove the stale entry (ssh-keygen -R %s -f %s) and "
      .. "add the new key after verifying it:\n  %s"):format(tostring(s),
      q(raw.port == 22 and raw.host or ("[" .. raw.host .. "]:" .. raw.port)), q(raw.known_hosts),
      keyscan_hint(raw)), 0)
  end
  error(s, 0)
end

--- Does nothing: ephrun never destroys a permanent server.
function Attached.destroy(_) end

--- Does nothing (also `<close>`): the server stays.
function Attached.close(_) end
Attached.__close = Attached.close

return M
