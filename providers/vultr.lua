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
-- at most `rate` per second. A 429 pushes everyone's next slot back.
local pacers = {}

local function pace(c)
  local p = pacers[c.url]
  if not p then
    p = { next = 0 }
    pacers[c.url] = p
  end
  local now = ephrun.time.monotonic()
  local slot = math.max(now, p.next)
  p.next = slot + 1 / c.rate
  if slot > now then ephrun.time.sleep(slot - now) end
end

local function hold_back(c, seconds)
  local p = pacers[c.url]
  if p then p.next = math.max(p.next, ephrun.time.monotonic() + seconds) end
end

-- Counters for the summary a benchmark or a curious user wants.
M.stats = { requests = 0, throttled = 0, retried = 0 }

local function message_of(resp)
  local ok, doc = pcall(ephrun.json.decode, resp.body or "")
  if ok and type(doc) == "table" and doc.error then return tostring(doc.error) end
  local body = (resp.body or ""):gsub("%s+", " ")
  return body:sub(1, 300)
end

-- The contract's error kind for an answer (or for no answer at all).
local function kind_of(status, resp)
  if not resp then return "network" end
  if status == 423 or (status == 500 and message_of(resp):find(LOCKED, 1, true)) then return "locked" end
  if status == 429 then return "rate_limited" end
  if status >= 500 then return "server" end
  if status == 404 then return "not_found" end
  if status == 401 or status == 403 then return "auth" end
  return "invalid"
end

local function retry_after(resp)
  local v = resp and resp.headers and tonumber(resp.headers["retry-after"])
  if v and v >= 0 and v <= 300 then return v end
end

--- One API call. Returns the decoded reply (or true for an empty one), and the
--- response. 429 is always retried (nothing was done); 5xx and transport
--- failures are retried for idempotent methods, and for others when
--- `o.retry` is set. `o.allow` lists statuses returned instead of raised.
local function call(c, opts, method, path, body, o)
  o = o or {}
  local key
  if not o.no_auth then key = api_key(opts) end
  local deadline = ephrun.time.monotonic() + (o.deadline or 300)
  local idempotent = method == "GET" or method == "DELETE" or method == "PUT"
  local delay, attempt = 0.5, 0
  while true do
    attempt = attempt + 1
    pace(c)
    M.stats.requests = M.stats.requests + 1
    local headers = { Accept = "application/json" }
    if key then headers.Authorization = "Bearer " .. key end
    if body then headers["Content-Type"] = "application/json" end
    local resp, err = ephrun.http.request {
      method = method, url = c.url .. path, headers = headers, retries = 0,
      body = body and ephrun.json.encode(body) or nil, timeout = o.timeout or 30, connect_timeout = 10,
    }
    local status = resp and resp.status or 0
    if resp and (resp.ok or (o.allow and o.allow[status])) then
      if resp.body == nil or resp.body == "" then return true, resp end
      local ok, doc = pcall(ephrun.json.decode, resp.body)
      if not ok then
        errors.raise { kind = "server", status = status,
          message = ("vultr: %s %s: reply is not JSON: %s"):format(method, path, resp.body:sub(1, 200)) }
      end
      return doc, resp
    end
    local why = resp and ("HTTP %d: %s"):format(status, message_of(resp)) or tostring(err)
    local again = status == 429 or ((status >= 500 or not resp) and (idempotent or o.retry))
    if o.is_locked and status == 500 and message_of(resp):find(LOCKED, 1, true) then again = false end
    local wait = retry_after(resp) or (delay / 2 + math.random() * delay / 2)
    if not again or ephrun.time.monotonic() + wait > deadline or attempt >= (o.attempts or math.huge) then
      local e = ("vultr: %s %s failed: %s"):format(method, path, why)
      if status == 401 or status == 403 then
        e = e .. " (check VULTR_API_KEY and that this machine's address is allowed under Account → API)"
      end
      errors.raise { kind = kind_of(status, resp), message = e, status = resp and status or nil }
    end
    if status == 429 then
      M.stats.throttled = M.stats.throttled + 1
      hold_back(c, wait)
    end
    M.stats.retried = M.stats.retried + 1
    ephrun.log.debug("vultr: %s %s: %s; retry %d in %.1fs", method, path, why, attempt, wait)
    ephrun.time.sleep(wait)
    delay = math.min(delay * 2, 16)
  end
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
  local out, cursor = {}, nil
  for _ = 1, 1000 do
    local p = { { "per_page", c.page_size } }
    for _, kv in ipairs(params or {}) do p[#p + 1] = kv end
    p[#p + 1] = { "cursor", cursor }
    local doc = call(c, opts, "GET", path .. query(p), nil, o)
    for _, item in ipairs(doc[field] or {}) do out[#out + 1] = item end
    local links = doc.meta and doc.meta.links
    cursor = links and links.next
    if cursor == nil or cursor == "" or cursor == ephrun.json.null then return out end
  end
  error("vultr: " .. path .. ": more than 1000 pages")
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

-- Runs fn(...) for one task at a time per `key`; the others wait their turn
-- and then usually find what it fetched already cached.
local turns = {}

local function one_at_a_time(key, fn, ...)
  local m = turns[key]
  if not m then
    m = ephrun.mutex()
    turns[key] = m
  end
  local _ <close> = m:lock()
  return fn(...)
end

-- Plans, fetched once per API URL (no key needed).
local plans_cache = {}

local function plans(c, opts)
  -- One fetch serves every task that asks meanwhile (fifty parallel launches price at once).
  return one_at_a_time("plans " .. c.url, function()
    if plans_cache[c.url] then return plans_cache[c.url] end
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
    plans_cache[c.url] = found
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
local run_keys = {}

local function run_key(c, opts, public_key)
  return one_at_a_time("ssh-key " .. c.url, function()
    local k = run_keys[c.url]
    if k and k.public_key == public_key then return k.id end
    local doc = call(c, opts, "POST", "/ssh-keys", { name = "ephrun-run-" .. ephrun.run_id(), ssh_key = public_key })
    local id = doc.ssh_key.id
    run_keys[c.url] = { id = id, public_key = public_key }
    ephrun.defer(function()
      call(c, opts, "DELETE", "/ssh-keys/" .. id, nil, { allow = { [404] = true } })
      if run_keys[c.url] and run_keys[c.url].id == id then run_keys[c.url] = nil end
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
  -- Until the create's reply is in hand, a cleanup looks for the label and
  -- deletes what it finds: a run interrupted mid-create leaves nothing.
  local guard = ephrun.defer(function()
    -- cloud:destroy retries while the instance is locked, as the run's own destroy does
    local cloud = ephrun.provider("vultr", opts)
    for _, raw in ipairs(list_all(c, opts, "/instances", "instances", { { "label", label } })) do
      cloud:destroy(to_instance(raw, c))
    end
  end, "delete the Vultr instance labelled " .. label .. " if its create went through",
    ("curl -H \"Authorization: Bearer $VULTR_API_KEY\" %s   # then delete the instance it lists"):format(
      q(c.url .. "/instances?label=" .. label)))
  -- A 5xx or a lost reply may hide a create that happened: look for the label
  -- before trying again, so a retry never makes a second, unseen instance.
  local deadline = ephrun.time.monotonic() + 300
  local delay = 1
  while true do
    local ok, doc = pcall(call, c, opts, "POST", "/instances", body, { deadline = 120 })
    if ok then
      guard:cancel()
      return to_instance(doc.instance, c)
    end
    local err = tostring(doc)
    if not err:match("HTTP 5%d%d") and not err:match("failed: [^H]") then error(doc, 0) end
    local found = list_all(c, opts, "/instances", "instances", { { "label", label } })
    if found[1] then
      ephrun.log.warn("vultr: create answered '%s' but instance %s exists; using it", err, found[1].id)
      guard:cancel()
      return to_instance(found[1], c)
    end
    if ephrun.time.monotonic() + delay > deadline then error(doc, 0) end
    ephrun.log.warn("%s; no instance was made, retrying in %ds", err, delay)
    ephrun.time.sleep(delay)
    delay = math.min(delay * 2, 30)
  end
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

-- Waiting tasks of a run share one listing per poll: with 50 instances
-- booting, one GET per interval instead of fifty.
local boards = {}

local PENDING = { status = "pending", power_status = "stopped", server_status = "none", main_ip = "0.0.0.0" }
local FIRST_POLL = 0.25

local function signature(list)
  local parts = {}
  for _, r in ipairs(list) do
    parts[#parts + 1] = table.concat({ r.id, tostring(r.status), tostring(r.power_status), tostring(r.server_status),
      tostring(r.main_ip), tostring(r.plan) }, "/")
  end
  table.sort(parts)
  return table.concat(parts, ",")
end

-- The instance's latest state and how long to wait before asking again. The
-- run's board is refreshed at most every `interval` seconds, which starts
-- short, grows while nothing changes and shrinks again when something does.
local function observe(c, opts, inst, delay)
  local run = inst.tags and inst.tags["ephrun-run"]
  if not run then
    local doc, resp = call(c, opts, "GET", "/instances/" .. inst.id, nil, { allow = { [404] = true } })
    return resp.status ~= 404 and doc.instance or nil, math.min(delay * 1.5, c.poll)
  end
  local key = c.url .. "\0" .. run
  local b = boards[key]
  if not b then
    b = { at = -math.huge, by_id = {}, missing = {}, interval = math.min(FIRST_POLL, c.poll) }
    boards[key] = b
  end
  one_at_a_time("board " .. key, function()
    if ephrun.time.monotonic() - b.at < b.interval then return end
    local list = list_all(c, opts, "/instances", "instances", { { "tag", "ephrun-run=" .. run } })
    local sig = signature(list)
    b.interval = sig == b.sig and math.min(b.interval * 1.5, c.poll) or math.min(FIRST_POLL, c.poll)
    b.by_id, b.at, b.sig = {}, ephrun.time.monotonic(), sig
    for _, raw in ipairs(list) do b.by_id[raw.id] = raw end
  end)
  -- Wake just after the next refresh is due; a little spread keeps the waiters from all asking at once.
  local next_in = math.max(0.02, b.at + b.interval - ephrun.time.monotonic()) + math.random() * 0.01
  if b.by_id[inst.id] then
    b.missing[inst.id] = nil
    return b.by_id[inst.id], next_in
  end
  -- Not in the listing: created after it was taken, or gone. Ask for this one
  -- only when it stays missing, so fifty fresh instances cost no extra calls.
  local since = b.missing[inst.id]
  if not since then
    b.missing[inst.id] = ephrun.time.monotonic()
    b.interval = math.min(FIRST_POLL, c.poll)
    return PENDING, next_in
  end
  if ephrun.time.monotonic() - since < 2 then return PENDING, next_in end
  b.missing[inst.id] = nil
  local doc, resp = call(c, opts, "GET", "/instances/" .. inst.id, nil, { allow = { [404] = true } })
  return resp.status ~= 404 and doc.instance or nil, next_in
end

local function poll_until(c, opts, inst, deadline, what, done)
  local limit = ephrun.time.monotonic() + (deadline or 600)
  local delay = math.min(FIRST_POLL, c.poll)
  local raw
  while true do
    raw, delay = observe(c, opts, inst, delay)
    if not raw then
      errors.raise { kind = "not_found", message = ("vultr instance %s no longer exists (waiting for %s)"):format(inst.id, what) }
    end
    if done(raw) then return raw end
    if ephrun.time.monotonic() + delay > limit then
      errors.raise { kind = "timeout", message = ("vultr instance %s is still %s after %s, not %s"):format(inst.id,
        summary(raw), ephrun.time.format_duration(deadline or 600), what) }
    end
    ephrun.time.sleep(delay)
  end
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
  local limit = ephrun.time.monotonic() + (deadline or 3600)
  local delay = math.min(0.25, c.poll)
  while true do
    local s = M.get_snapshot(id, opts)
    if not s or s.status == "deleted" then
      errors.raise { kind = "not_found", message = "vultr snapshot " .. id .. " disappeared while being made" }
    end
    if s.status == "complete" then return s end
    if ephrun.time.monotonic() + delay > limit then
      errors.raise { kind = "timeout", message = ("vultr snapshot %s is still %s after %s"):format(id,
        tostring(s.status), ephrun.time.format_duration(deadline or 3600)) }
    end
    ephrun.time.sleep(delay)
    delay = math.min(delay * 1.5, c.poll * 2)
  end
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
