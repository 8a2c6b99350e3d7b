--- Notifications: a Slack-compatible JSON POST (`text` plus structured fields)
--- to the webhook given by `--notify URL` or `EPHRUN_NOTIFY_URL`, on a run's
--- start, success and failure, on forced termination (`ephrun reap`) and when a
--- launch's worst-case cost passes `warn_cost`. A webhook that fails never fails
--- the run: it is retried with backoff for a few seconds, then a warning says so.
local ephrun = require "ephrun"
local core = require "ephrun._core"

---@class ephrun.notify
local M = {}

-- Slack attachment colours per event.
local COLOURS = {
  start = "#439FE0", success = "good", failure = "danger", terminated = "danger", cost_warning = "warning",
}

local TITLES = {
  start = "started", success = "succeeded", failure = "failed", terminated = "was terminated",
  cost_warning = "may cost more than its limit",
}

local url_cache

--- The webhook URL (`--notify`, else `EPHRUN_NOTIFY_URL`), registered as a
--- secret, or nil when notifications are off.
---@return string|nil
function M.url()
  if url_cache ~= nil then return url_cache or nil end
  local u = core.options().notify_url
  if u == nil or u == "" then u = os.getenv("EPHRUN_NOTIFY_URL") end
  if u == nil or u == "" then
    -- the config file names where the URL is kept (@env:VAR, @file:PATH), never the URL
    local ref, where = require("ephrun.config").get("notify")
    if ref then
      local v, why = require("ephrun.params").resolve_secret(ref)
      if not v then error(("notify in %s: %s"):format(where, why), 0) end
      u = v
    end
  end
  if u == nil or u == "" then
    url_cache = false
    return nil
  end
  -- The path of a Slack webhook is its credential: the whole URL is a secret.
  core.secret_add("EPHRUN_NOTIFY_URL", u)
  if not u:match("^https?://") then
    error("the notification URL (--notify or EPHRUN_NOTIFY_URL) must start with http:// or https://", 0)
  end
  url_cache = u
  return u
end

local function hostname()
  local h = ephrun.fs.read("/proc/sys/kernel/hostname") or os.getenv("HOSTNAME") or "?"
  return (h:gsub("%s+$", ""))
end

-- USER is unset under cron and in containers: the uid's name from /etc/passwd then.
local function username()
  local u = os.getenv("USER") or os.getenv("LOGNAME")
  if u and u ~= "" then return u end
  local uid = (ephrun.fs.read("/proc/self/status") or ""):match("\nUid:%s+(%d+)")
  for line in ((uid and ephrun.fs.read("/etc/passwd")) or ""):gmatch("[^\n]+") do
    local name, id = line:match("^([^:]*):[^:]*:(%d+):")
    if id == uid then return name end
  end
  return uid and ("uid " .. uid) or "?"
end

--- Who and where, as the lock and the notifications name them.
---@return {user: string, host: string}
function M.identity()
  return { user = username(), host = hostname() }
end

--- The message for `event`: Slack reads `text` and `attachments`; other
--- receivers can read the flat fields (`event`, `run_id`, `recipe`, ...).
---@param event string start|success|failure|terminated|cost_warning
---@param info table recipe, run_id, detail, and any other fields to show
---@return table
function M.payload(event, info)
  local id = M.identity()
  local body = {
    event = event, recipe = info.recipe or ephrun.recipe_name or "?", run_id = info.run_id or ephrun.run_id(),
    user = id.user, host = id.host, time = ephrun.time.iso8601(), detail = info.detail,
  }
  local fields = {}
  local keys = {}
  for k in pairs(info) do
    if body[k] == nil and k ~= "recipe" and k ~= "run_id" and k ~= "detail" then keys[#keys + 1] = k end
  end
  table.sort(keys)
  for _, k in ipairs(keys) do body[k] = info[k] end
  for _, k in ipairs { "run_id", "user", "host", table.unpack(keys) } do
    fields[#fields + 1] = { title = k, value = tostring(body[k]), short = true }
  end
  body.text = ("ephrun: %s %s%s"):format(body.recipe, TITLES[event] or event,
    body.detail and (": " .. core.redact(tostring(body.detail))) or "")
  body.attachments = { { color = COLOURS[event] or "#cccccc", fields = fields } }
  if body.detail then body.detail = core.redact(tostring(body.detail)) end
  return body
end

--- Sends one notification; never raises for the webhook's sake. Returns true
--- when it was delivered (or notifications are off), false otherwise.
---@param event string start|success|failure|terminated|cost_warning
---@param info? table fields shown with it (recipe, run_id, detail, ...)
---@return boolean
function M.send(event, info)
  local u = M.url()
  if not u then return true end
  local body = ephrun.json.encode(M.payload(event, info or {}))
  -- POSTs are retried only on request: a duplicate message is better than none.
  -- Once the webhook has failed a whole send, later ones try once, so a dead
  -- receiver delays the run by seconds, not by every message's retries.
  local ok, resp, err = pcall(ephrun.http.post, u, body, {
    headers = { ["Content-Type"] = "application/json" }, retry = true, retries = M.unreachable and 0 or 3,
    timeout = 5, connect_timeout = 3, deadline = 10,
  })
  if ok and resp and resp.ok then
    M.unreachable = false
    return true
  end
  M.unreachable = true
  local why = not ok and tostring(resp) or resp and ("HTTP " .. tostring(resp.status)) or tostring(err)
  ephrun.log.warn(("notification '%s' not delivered (%s); the run goes on"):format(event, core.redact(why)))
  return false
end

--- Called where a recipe's run starts: sends `start` and pushes, at the bottom
--- of the cleanup stack, the `success`/`failure` message, so it goes after
--- everything the run made is gone. Returns a to-be-closed value that records
--- how the recipe's body ended (its error, if any).
---@param recipe string
---@return table
function M.run_started(recipe)
  if not M.url() then return setmetatable({}, { __close = function() end }) end
  local outcome = { recipe = recipe }
  M.send("start", { recipe = recipe })
  ephrun.defer(function()
    local sig = core.signal()
    if outcome.ok and sig == 0 then
      M.send("success", { recipe = recipe })
    else
      local names = { [1] = "SIGHUP", [2] = "SIGINT", [15] = "SIGTERM" }
      local detail = sig ~= 0 and ("interrupted by " .. (names[sig] or ("signal " .. sig)))
        or outcome.err or "the run did not finish"
      M.send("failure", { recipe = recipe, detail = detail })
    end
  end, "notify the end of the run")
  return setmetatable(outcome, {
    __close = function(o, err)
      if err == nil then
        o.ok = true
      else
        local mt = getmetatable(err)
        o.err = (type(err) == "string" or (mt and mt.__tostring)) and tostring(err) or "the recipe raised an error"
      end
    end,
  })
end

--- Warns (log and notification) when a launch's worst-case cost passes the
--- threshold: `spec.warn_cost`, else `EPHRUN_WARN_COST` (USD). An unbounded
--- worst case (no TTL or no price) passes any threshold.
---@param worst number|nil worst-case USD
---@param info table provider, plan, warn_cost
function M.check_cost(worst, info)
  local limit = info.warn_cost or os.getenv("EPHRUN_WARN_COST")
  if limit == nil or limit == "" or limit == false then return end
  local n = tonumber(limit)
  if not n then error(("warn_cost must be a number of USD, not '%s'"):format(tostring(limit)), 0) end
  if worst and worst <= n then return end
  local detail = worst and ("worst case $%.2f is over the $%.2f limit"):format(worst, n)
    or ("worst case is unbounded (no TTL or no price); the limit is $%.2f"):format(n)
  ephrun.log.warn(("cost warning for %s %s: %s"):format(info.provider or "?", info.plan or "", detail))
  M.send("cost_warning", { detail = detail, provider = info.provider, plan = info.plan, worst_cost = worst })
end

return M
