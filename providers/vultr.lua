--- The Vultr provider (API v2). An instance is a Vultr cloud compute
--- instance created from an OS image (`image`, an os_id; Debian 12 by default)
--- or a snapshot (`snapshot`), tagged with the run's tags, given the run's
--- cloud-init user-data (base64) and the run's SSH key, registered through
--- `/ssh-keys` and deleted by the run's cleanup.
---
--- Settings, from the provider options or the environment:
---   api_key   VULTR_API_KEY (environment or .env; a secret, redacted everywhere)
---   url       VULTR_API_URL (default https://api.vultr.com/v2)
---   ssh_port  EPHRUN_VULTR_SSH_PORT (default 22)
---   user      EPHRUN_VULTR_SSH_USER (default root)
---   rate      EPHRUN_VULTR_RATE, requests per second this process sends at most (default 28;
---             Vultr answers 429 above ~30 per second and IP)
---   poll      EPHRUN_VULTR_POLL, longest pause between status polls in seconds (default 2;
---             waiting tasks of a run share each poll, so this costs one request per pause)
---   destroy_deadline EPHRUN_VULTR_DESTROY_DEADLINE, how long a destroy retries a locked
---             instance before the run fails naming it (default 10m)
---   page_size EPHRUN_VULTR_PAGE_SIZE, items per page of a list (default 500, the most Vultr allows)
---
--- Every request goes through one pacer shared by all tasks, so 50 parallel
--- launches queue instead of tripping the rate limit; 429 and 5xx answers are
--- retried with backoff. Waiting tasks share one listing of the run's
--- instances per poll instead of one GET each.
local ephrun = require "ephrun"
local api = require "ephrun.api"
local errors = require "ephrun.errors"

local M = {}

--- What the lifetime timer does: `shutdown -h` halts the instance, and Vultr
--- bills a halted instance until it is deleted; `ephrun reaper install` adds
--- the job that deletes it at its expiry.
M.ttl_effect = "stops the CPU only"

local DEFAULT_URL = "https://api.vultr.com/v2"
local DEFAULT_OS_ID = 2136 -- Debian 12 x64 (bookworm)
local LOCKED = "Server is currently locked"

local q = ephrun.shell_quote

local function setting(opts, key, env, default)
  local v = opts and opts[key]
  if v == nil or v == "" then v = os.getenv(env) end
  if v == nil or v == "" then return default end
  return v
end

local function config(opts)
  opts = opts or {}
  local c = {
    url = tostring(setting(opts, "url", "VULTR_API_URL", DEFAULT_URL)):gsub("/+$", ""),
    ssh_port = tonumber(setting(opts, "ssh_port", "EPHRUN_VULTR_SSH_PORT", 22)),
    user = setting(opts, "user", "EPHRUN_VULTR_SSH_USER", "root"),
    rate = tonumber(setting(opts, "rate", "EPHRUN_VULTR_RATE", 28)),
    poll = tonumber(setting(opts, "poll", "EPHRUN_VULTR_POLL", 2)),
    page_size = math.tointeger(tonumber(setting(opts, "page_size", "EPHRUN_VULTR_PAGE_SIZE", 500))),
  }
  if not c.page_size or c.page_size < 1 or c.page_size > 500 then
    error("vultr: page_size (EPHRUN_VULTR_PAGE_SIZE) must be a whole number from 1 to 500", 3)
  end
  if not c.ssh_port then error("vultr: ssh_port (EPHRUN_VULTR_SSH_PORT) must be a number", 3) end
  if not c.rate or c.rate <= 0 then error("vultr: rate (EPHRUN_VULTR_RATE) must be a positive number", 3) end
  if not c.poll or c.poll <= 0 then error("vultr: poll (EPHRUN_VULTR_POLL) must be a positive number", 3) end
  return c
end

local function api_key(opts)
  if opts and opts.api_key and opts.api_key ~= "" then
    return opts.api_key
  end
  return ephrun.secret("VULTR_API_KEY")
end

--- How long the lifecycle's destroy retries a locked instance (seconds or a duration).
---@return number|string
function M.destroy_deadline(opts)
  return setting(opts, "destroy_deadline", "EPHRUN_VULTR_DESTROY_DEADLINE", 600)
end

--- Checks the settings and reads the API key before anything is made.
function M.preflight(opts)
  config(opts)
  api_key(opts)
end

-- One pacer per API URL, shared by every task of this process: requests leave
-- at most `rate` per second. A 429 holds everyone back.
local function pacer(c)
  return api.pacer("vultr " .. c.url, c.rate)
end

-- Counters for the summary a benchmark or a curious user wants.
M.stats = { requests = 0, throttled = 0, retried = 0 }

local function message_of(resp)
  local ok, doc = pcall(ephrun.json.decode, resp.body or "")
  if ok and type(doc) == "table" and doc.error then return tostring(doc.error) end
  local body = (resp.body or ""):gsub("%s+", " ")
  return body:sub(1, 300)
end

-- Vultr answers a change to an instance that is still installing or booting
-- from a snapshot with a 500 saying so: the contract's "locked", not "server".
local function locked(resp)
  return resp and resp.status == 500 and message_of(resp):find(LOCKED, 1, true) ~= nil
end

-- What a call sends again by itself: 429 always (nothing was done); 5xx, a
-- locked instance and no answer only for a call that is safe to repeat. A
-- destroy leaves "locked" to the lifecycle, which retries it until its deadline.
local REPEAT = { rate_limited = true, server = true, network = true, locked = true }
local REPEAT_NOT_LOCKED = { rate_limited = true, server = true, network = true }

--- One API call. Returns the decoded reply (or true for an empty one), and the
--- response. 429 is always retried (nothing was done); 5xx and transport
--- failures are retried for idempotent methods, and for others when
--- `o.retry` is set. `o.allow` lists statuses returned instead of raised.
local function call(c, opts, method, path, body, o)
  o = o or {}
  local key
  if not o.no_auth then key = api_key(opts) end
  local idempotent = method == "GET" or method == "DELETE" or method == "PUT"
  local kinds
  if idempotent or o.retry then kinds = o.is_locked and REPEAT_NOT_LOCKED or REPEAT end
  local headers = { Accept = "application/json" }
  if key then headers.Authorization = "Bearer " .. key end
  if body then headers["Content-Type"] = "application/json" end
  local payload = body and ephrun.json.encode(body) or nil
  return api.call(function()
    local resp, err = ephrun.http.request {
      method = method, url = c.url .. path, headers = headers, retries = 0,
      body = payload, timeout = o.timeout or 30, connect_timeout = 10,
    }
    local status = resp and resp.status or 0
    if resp and (resp.ok or (o.allow and o.allow[status])) then
      if resp.body == nil or resp.body == "" then return true, resp end
      local ok, doc = pcall(ephrun.json.decode, resp.body)
      if not ok then
        errors.raise { kind = "server", retry = false, status = status,
          message = ("vultr: %s %s: reply is not JSON: %s"):format(method, path, resp.body:sub(1, 200)) }
      end
      return doc, resp
    end
    local why = resp and ("HTTP %d: %s"):format(status, message_of(resp)) or tostring(err)
    local e = ("vultr: %s %s failed: %s"):format(method, path, why)
    if status == 401 or status == 403 then
      e = e .. " (check VULTR_API_KEY and that this machine's address is allowed under Account → API)"
    end
    error(api.http_error(resp, e, { kind = locked(resp) and "locked" or nil }), 0)
  end, { what = "vultr: " .. method .. " " .. path, pacer = pacer(c), kinds = kinds, deadline = o.deadline or 300,
    attempts = o.attempts, stats = M.stats })
end

local function query(params)
  local parts = {}
  for _, kv in ipairs(params) do
    if kv[2] ~= nil and kv[2] ~= "" then
      parts[#parts + 1] = kv[1] .. "=" .. tostring(kv[2]):gsub("[^%w%-%._~]", function(ch)
        return ("%%%02X"):format(ch:byte())
      end)
    end
  end
  return #parts > 0 and ("?" .. table.concat(parts, "&")) or ""
end

-- Every item of a cursor-paged list.
local function list_all(c, opts, path, field, params, o)
  return api.all(function(cursor)
    local p = { { "per_page", c.page_size } }
    for _, kv in ipairs(params or {}) do p[#p + 1] = kv end
    p[#p + 1] = { "cursor", cursor }
    local doc = call(c, opts, "GET", path .. query(p), nil, o)
    local links = doc.meta and doc.meta.links
    return doc[field], links and links.next
  end, { what = "vultr: " .. path })
end

local function tag_list(tags)
  local out = {}
  for k, v in pairs(tags or {}) do out[#out + 1] = k .. "=" .. tostring(v) end
  table.sort(out)
  return out
end

local function tag_map(list)
  local out = {}
  for _, t in ipairs(list or {}) do
    local k, v = tostring(t):match("^([^=]+)=(.*)$")
    if k then out[k] = v else out[tostring(t)] = "" end
  end
  return out
end

local function has_ip(raw)
  return raw.main_ip and raw.main_ip ~= "" and raw.main_ip ~= "0.0.0.0"
end

-- Vultr's three status fields mapped onto the contract's five states.
local function state_of(raw)
  if raw.status == "active" and raw.power_status == "running" and raw.server_status == "ok" and has_ip(raw) then
    return "running"
  end
  if raw.status == "active" and raw.power_status == "stopped" and raw.server_status == "ok" then return "stopped" end
  if raw.status == "suspended" then return "stopped" end
  return "pending"
end

local function to_instance(raw, c)
  local inst = {
    id = raw.id, host = has_ip(raw) and raw.main_ip or nil, port = c.ssh_port, user = c.user,
    state = state_of(raw), tags = tag_map(raw.tags), provider = "vultr", kind = "instance",
    label = raw.label, region = raw.region, plan = raw.plan, os_id = raw.os_id, main_ip = raw.main_ip,
    status = raw.status, power_status = raw.power_status, server_status = raw.server_status,
    date_created = raw.date_created, api_url = c.url,
  }
  return inst
end

local function summary(raw)
  return ("status=%s power_status=%s server_status=%s main_ip=%s"):format(tostring(raw.status),
    tostring(raw.power_status), tostring(raw.server_status), tostring(raw.main_ip))
end

-- Plans, fetched once per API URL (no key needed); one fetch serves every
-- task that asks meanwhile (fifty parallel launches price at once).
local function plans(c, opts)
  return api.once("vultr plans " .. c.url, function()
    local found = {}
    for _, path in ipairs { "/plans", "/plans-metal" } do
      -- No key is needed, and a dry-run on a machine without network should not wait long.
      local ok, list = pcall(list_all, c, opts, path, path == "/plans" and "plans" or "plans_metal", nil,
        { no_auth = true, deadline = 8, timeout = 5, attempts = 2 })
      if ok then
        for _, p in ipairs(list) do found[p.id] = p end
      elseif path == "/plans" then
        error(list, 0)
      end
    end
    return found
  end)
end

--- Hourly price in USD: `/plans` has only `monthly_cost`, and Vultr bills by
--- the hour up to that cap, so hourly = monthly_cost / 730.
---@param spec {plan?: string}
---@return number|nil
function M.price(spec, opts)
  local c = config(opts)
  if not spec.plan or spec.plan == "" then return nil end
  local ok, all = pcall(plans, c, opts)
  if not ok then
    ephrun.log.warn("vultr: could not read plan prices from %s/plans: %s", c.url, tostring(all))
    return nil
  end
  local p = all[spec.plan]
  if not p then
    local names = {}
    for id in pairs(all) do names[#names + 1] = id end
    table.sort(names)
    errors.raise { kind = "invalid",
      message = ("vultr: unknown plan '%s'; plans offered: %s"):format(spec.plan, table.concat(names, ", ")) }
  end
  return (tonumber(p.monthly_cost) or 0) / 730
end

--- vCPU, memory and hourly price of a plan from `/plans` (for tables such as
--- size-sweep's); nil when the plan list cannot be read.
---@param spec {plan?: string}
---@return {plan: string, vcpu: integer, memory_mb: integer, disk_gb?: integer, price: number}|nil
function M.plan_info(spec, opts)
  local ok, all = pcall(plans, config(opts), opts)
  local p = ok and spec and all[spec.plan]
  if not p then return nil end
  return { plan = spec.plan, vcpu = tonumber(p.vcpu_count), memory_mb = tonumber(p.ram), disk_gb = tonumber(p.disk),
    price = (tonumber(p.monthly_cost) or 0) / 730 }
end

--- How the price is computed, printed in the plan.
M.price_basis = "Vultr price: hourly = monthly_cost / 730 from /plans (billed by the hour up to the monthly cap)"

-- This run's SSH key, registered once per API URL and deleted at the end of the run.
local function run_key(c, opts, public_key)
  local key = "vultr ssh-key " .. c.url .. " " .. public_key
  return api.once(key, function()
    local doc = call(c, opts, "POST", "/ssh-keys", { name = "ephrun-run-" .. ephrun.run_id(), ssh_key = public_key })
    local id = doc.ssh_key.id
    ephrun.defer(function()
      call(c, opts, "DELETE", "/ssh-keys/" .. id, nil, { allow = { [404] = true } })
      api.forget(key)
      ephrun.log.info("deleted Vultr SSH key %s", id)
    end, "delete this run's Vultr SSH key " .. id,
      ("curl -X DELETE -H \"Authorization: Bearer $VULTR_API_KEY\" %s"):format(q(c.url .. "/ssh-keys/" .. id)))
    return id
  end)
end

local launches = 0

--- Creates an instance and returns at once (state `pending`). `spec.image` is
--- an os_id (default 2136, Debian 12); `spec.snapshot` a snapshot id.
---@return table instance
function M.launch(spec, opts)
  local c = config(opts)
  local function needs(what) errors.raise { kind = "invalid", message = "vultr: launch needs " .. what } end
  if not spec.plan or spec.plan == "" then needs("a plan (e.g. vc2-1c-1gb)") end
  if not spec.region or spec.region == "" then needs("a region (e.g. ewr)") end
  if not spec.user_data then needs("user_data (from ephrun.cloudinit)") end
  local ud = require("ephrun.cloudinit").parse(spec.user_data)
  local sshkey_ids = {}
  if ud.authorized_keys[1] then sshkey_ids[1] = run_key(c, opts, ud.authorized_keys[1]) end
  launches = launches + 1
  local label = spec.label or ("ephrun-%s-%d"):format(ephrun.run_id(), launches)
  local body = {
    region = spec.region, plan = spec.plan, label = label, hostname = label:gsub("[^%w%-]", "-"),
    tags = tag_list(spec.tags), sshkey_id = sshkey_ids, backups = "disabled", enable_ipv6 = false,
    user_data = ephrun.fs.base64_encode(spec.user_data),
  }
  if spec.snapshot and spec.snapshot ~= "" then
    body.snapshot_id = spec.snapshot
  else
    local os_id = tonumber(spec.image or DEFAULT_OS_ID)
    if not os_id then
      errors.raise { kind = "invalid", message = ("vultr: image must be an os_id number, got '%s'"):format(tostring(spec.image)) }
    end
    body.os_id = os_id
  end
  local function labelled()
    return list_all(c, opts, "/instances", "instances", { { "label", label } })
  end
  -- Until the create's reply is in hand, a cleanup looks for the label and
  -- deletes what it finds: a run interrupted mid-create leaves nothing. A 5xx
  -- or a lost reply may hide a create that happened: the label is looked up
  -- before trying again, so a retry never makes a second, unseen instance.
  return api.create {
    name = "vultr: create",
    create = function() return to_instance(call(c, opts, "POST", "/instances", body, { deadline = 120 }).instance, c) end,
    lookup = function()
      local found = labelled()[1]
      return found and to_instance(found, c) or nil
    end,
    describe = function(inst) return "instance " .. inst.id end,
    undo = function()
      -- cloud:destroy retries while the instance is locked, as the run's own destroy does
      local cloud = ephrun.provider("vultr", opts)
      for _, raw in ipairs(labelled()) do cloud:destroy(to_instance(raw, c)) end
    end,
    what = "delete the Vultr instance labelled " .. label .. " if its create went through",
    hint = ("curl -H \"Authorization: Bearer $VULTR_API_KEY\" %s   # then delete the instance it lists"):format(
      q(c.url .. "/instances?label=" .. label)),
  }
end

--- The instance `id`, or nil when Vultr does not know it.
---@param id string
---@return table|nil
function M.get(id, opts)
  local c = config(opts)
  local doc, resp = call(c, opts, "GET", "/instances/" .. id, nil, { allow = { [404] = true } })
  if resp.status == 404 then return nil end
  return to_instance(doc.instance, c)
end

local function keys_of_runs(c, opts, run)
  local out = {}
  for _, k in ipairs(list_all(c, opts, "/ssh-keys", "ssh_keys")) do
    local r = tostring(k.name or ""):match("^ephrun%-run%-(.+)$")
    if r and (not run or r == run) then
      out[#out + 1] = { id = k.id, kind = "ssh-key", state = "running", provider = "vultr", api_url = c.url,
        label = k.name, tags = { ["ephrun-run"] = r }, date_created = k.date_created }
    end
  end
  return out
end

--- Instances (and per-run SSH keys, `kind = "ssh-key"`) whose tags include
--- every `filter.tags` pair.
---@param filter? {tags?: table<string,string>}
---@return table[]
function M.list(filter, opts)
  local c = config(opts)
  filter = filter or {}
  local want = filter.tags or {}
  local params = {}
  if want["ephrun-run"] then params[1] = { "tag", "ephrun-run=" .. want["ephrun-run"] } end
  local out = {}
  for _, raw in ipairs(list_all(c, opts, "/instances", "instances", params)) do
    local inst = to_instance(raw, c)
    local match = true
    for k, v in pairs(want) do
      if inst.tags[k] ~= v then match = false end
    end
    if match then out[#out + 1] = inst end
  end
  local only_run = want["ephrun-run"]
  local other = false
  for k in pairs(want) do
    if k ~= "ephrun-run" then other = true end
  end
  if not other then
    for _, k in ipairs(keys_of_runs(c, opts, only_run)) do out[#out + 1] = k end
  end
  return out
end

--- Deletes the instance (or a per-run SSH key from `list`). Idempotent: one
--- that is already gone is fine. A locked instance (still installing or
--- booting from a snapshot) raises an error saying so, which the lifecycle
--- retries until its deadline.
---@param inst table|string
function M.destroy(inst, opts)
  local c = config(opts)
  if type(inst) == "string" then inst = { id = inst } end
  if inst.kind == "ssh-key" then
    call(c, opts, "DELETE", "/ssh-keys/" .. inst.id, nil, { allow = { [404] = true } })
    return
  end
  local ok, err = pcall(call, c, opts, "DELETE", "/instances/" .. inst.id, nil,
    { allow = { [404] = true }, is_locked = true })
  if not ok then
    if errors.is(err, "locked") then
      errors.raise { kind = "locked", status = err.status,
        message = ("vultr instance %s is locked (still installing or booting); delete refused for now"):format(inst.id) }
    end
    error(err, 0)
  end
end

--- The command that deletes the instance by hand.
---@return string
function M.destroy_hint(inst, opts)
  local c = config(opts)
  if inst.kind == "ssh-key" then
    return ("curl -X DELETE -H \"Authorization: Bearer $VULTR_API_KEY\" %s"):format(q(c.url .. "/ssh-keys/" .. inst.id))
  end
  return ("curl -X DELETE -H \"Authorization: Bearer $VULTR_API_KEY\" %s   # or: ephrun reap"):format(
    q(c.url .. "/instances/" .. inst.id))
end

local PENDING = { status = "pending", power_status = "stopped", server_status = "none", main_ip = "0.0.0.0" }
local FIRST_POLL = 0.25

local function get_raw(c, opts, id)
  local doc, resp = call(c, opts, "GET", "/instances/" .. id, nil, { allow = { [404] = true } })
  return resp.status ~= 404 and doc.instance or nil
end

-- Waiting tasks of a run share one listing per poll: with 50 instances
-- booting, one GET per interval instead of fifty.
local function board(c, opts, run)
  return api.board("vultr " .. c.url .. "\0" .. run, {
    fetch = function()
      local by_id = {}
      for _, raw in ipairs(list_all(c, opts, "/instances", "instances", { { "tag", "ephrun-run=" .. run } })) do
        by_id[raw.id] = raw
      end
      return by_id
    end,
    signature = function(r)
      return table.concat({ tostring(r.status), tostring(r.power_status), tostring(r.server_status),
        tostring(r.main_ip), tostring(r.plan) }, "/")
    end,
    lookup = function(id) return get_raw(c, opts, id) end,
    first = math.min(FIRST_POLL, c.poll), max = c.poll,
  })
end

-- The instance's latest state (nil: gone) and, from the run's board, when to
-- ask again. One the listing does not have yet (created after it was taken)
-- is pending, so fifty fresh instances cost no extra calls.
local function observe(c, opts, inst)
  local run = inst.tags and inst.tags["ephrun-run"]
  if not run then return get_raw(c, opts, inst.id) end
  local raw, next_in = board(c, opts, run):get(inst.id)
  if raw == false then return PENDING, next_in end
  return raw, next_in
end

local function poll_until(c, opts, inst, deadline, what, done)
  deadline = deadline or 600
  return api.poll_until(function()
    local raw, next_in = observe(c, opts, inst)
    if not raw then
      errors.raise { kind = "not_found", message = ("vultr instance %s no longer exists (waiting for %s)"):format(inst.id, what) }
    end
    return done(raw), raw, next_in
  end, {
    deadline = deadline, delay = math.min(FIRST_POLL, c.poll) * 1.5, max_delay = c.poll,
    subject = "vultr instance " .. inst.id, show = summary, goal = what,
  })
end

--- Polls until the instance is `running` (status active, power running,
--- server_status ok, main_ip set) or `stopped`, or `deadline` seconds pass.
---@return table instance
function M.wait(inst, state, deadline, opts)
  local c = config(opts)
  local raw = poll_until(c, opts, inst, deadline, state, function(r) return state_of(r) == state end)
  return to_instance(raw, c)
end

--- Where to connect: main_ip, the configured SSH port and user.
function M.ssh_endpoint(inst, opts)
  local c = config(opts)
  return { host = inst.host or inst.main_ip, port = c.ssh_port, user = c.user }
end

local function to_snapshot(raw)
  return { id = raw.id, description = raw.description, status = raw.status, size = raw.size,
    compressed_size = raw.compressed_size, os_id = raw.os_id, date_created = raw.date_created }
end

--- Takes a snapshot of the instance and returns its id (it is `pending` until `complete`).
---@param sopts? {description?: string}
---@return string id
function M.snapshot(inst, sopts, opts)
  local c = config(opts)
  sopts = sopts or {}
  local doc = call(c, opts, "POST", "/snapshots",
    { instance_id = inst.id, description = sopts.description or ("ephrun " .. ephrun.run_id()) })
  return doc.snapshot.id
end

--- The snapshot `id`, or nil when it is gone.
---@return table|nil
function M.get_snapshot(id, opts)
  local c = config(opts)
  local doc, resp = call(c, opts, "GET", "/snapshots/" .. id, nil, { allow = { [404] = true } })
  if resp.status == 404 then return nil end
  return to_snapshot(doc.snapshot)
end

--- Snapshots, optionally those whose description is `filter.description`.
---@return table[]
function M.snapshots(filter, opts)
  local c = config(opts)
  filter = filter or {}
  local out = {}
  for _, raw in ipairs(list_all(c, opts, "/snapshots", "snapshots", { { "description", filter.description } })) do
    out[#out + 1] = to_snapshot(raw)
  end
  return out
end

--- Polls until snapshot `id` is `complete` (raises if it disappears or the deadline passes).
---@return table snapshot
function M.wait_snapshot(id, deadline, opts)
  local c = config(opts)
  deadline = deadline or 3600
  return api.poll_until(function()
    local s = M.get_snapshot(id, opts)
    if not s or s.status == "deleted" then
      errors.raise { kind = "not_found", message = "vultr snapshot " .. id .. " disappeared while being made" }
    end
    return s.status == "complete", s
  end, {
    deadline = deadline, delay = math.min(0.25, c.poll), max_delay = c.poll * 2,
    subject = "vultr snapshot " .. id, show = function(s) return tostring(s.status) end,
  })
end

--- Deletes snapshot `id` (already gone is fine).
function M.delete_snapshot(id, opts)
  local c = config(opts)
  call(c, opts, "DELETE", "/snapshots/" .. id, nil, { allow = { [404] = true } })
end

--- The command that deletes snapshot `id` by hand.
---@return string
function M.snapshot_hint(id, opts)
  local c = config(opts)
  return ("curl -X DELETE -H \"Authorization: Bearer $VULTR_API_KEY\" %s"):format(q(c.url .. "/snapshots/" .. id))
end

--- Changes the plan (`PATCH plan`) and waits until the instance reports it and runs again
--- (a halted instance keeps its new plan powered off: it is started).
---@return table instance
function M.resize(inst, plan, deadline, opts)
  local c = config(opts)
  call(c, opts, "PATCH", "/instances/" .. inst.id, { plan = plan })
  local raw = poll_until(c, opts, inst, deadline or 1800, "plan " .. plan, function(r)
    local st = state_of(r)
    return r.plan == plan and (st == "running" or st == "stopped")
  end)
  if state_of(raw) == "stopped" then return M.start(inst, deadline, opts) end
  return to_instance(raw, c)
end

--- Powers the instance off and waits for `power_status=stopped`.
---@return table instance
function M.halt(inst, deadline, opts)
  local c = config(opts)
  call(c, opts, "POST", "/instances/" .. inst.id .. "/halt", nil, { retry = true })
  return to_instance(poll_until(c, opts, inst, deadline or 600, "stopped", function(r)
    return r.power_status == "stopped"
  end), c)
end

--- Powers the instance on and waits until it is running again.
---@return table instance
function M.start(inst, deadline, opts)
  local c = config(opts)
  call(c, opts, "POST", "/instances/" .. inst.id .. "/start", nil, { retry = true })
  return to_instance(poll_until(c, opts, inst, deadline or 600, "running", function(r)
    return state_of(r) == "running"
  end), c)
end

return M
