--- The AWS provider's second lifetime timer: a one-time EventBridge Scheduler
--- schedule, `at(expiry + grace)`, whose target is the universal target
--- `ec2:terminateInstances` for one instance. It needs neither ephrun nor the
--- guest, so it ends an instance whose guest hangs (its own `shutdown` never
--- runs) and whose launcher was killed. `ActionAfterCompletion=DELETE`: once it
--- has fired it deletes itself; destroy and the run's cleanup delete it earlier.
---
--- Settings (provider option, else environment):
---   scheduler        EPHRUN_AWS_SCHEDULER = auto | true | false (default auto: armed when a
---                    role is set and the Scheduler answers; the plan and the log say when not)
---   scheduler_role   EPHRUN_AWS_SCHEDULER_ROLE, the role ARN the Scheduler assumes to
---                    terminate (docs/providers.md gives its trust and permission policies)
---   scheduler_grace  EPHRUN_AWS_SCHEDULER_GRACE, how long after the expiry it fires (default 10m)
---
--- Schedules live in the `default` group (no group to create, none to leak) and
--- are named `ephrun-<run>-<instance>`: Scheduler schedules carry no tags, so
--- `ephrun reap` finds them by that name.
local ephrun = require "ephrun"
local errors = require "ephrun.errors"
local aws = require "ephrun.aws"

local M = {}

M.TARGET = "arn:aws:scheduler:::aws-sdk:ec2:terminateInstances"
M.GROUP = "default"
M.PREFIX = "ephrun-"

local function setting(opts, key, env, default)
  local v = opts and opts[key]
  if v == nil or v == "" then v = os.getenv(env) end
  if v == nil or v == "" then return default end
  return v
end

--- The scheduler settings: `mode` ("auto", "true", "false"), `role`, `grace` (seconds).
---@param opts table provider options
---@return {mode: string, role?: string, grace: number}
function M.settings(opts)
  local mode = tostring(setting(opts, "scheduler", "EPHRUN_AWS_SCHEDULER", "auto")):lower()
  if mode == "1" or mode == "yes" then mode = "true" elseif mode == "0" or mode == "no" then mode = "false" end
  if mode ~= "auto" and mode ~= "true" and mode ~= "false" then
    errors.raise { kind = "invalid", message = ("aws: scheduler (EPHRUN_AWS_SCHEDULER) must be auto, true or false, "
      .. "got '%s'"):format(mode) }
  end
  local grace = setting(opts, "scheduler_grace", "EPHRUN_AWS_SCHEDULER_GRACE", 600)
  if type(grace) ~= "number" then
    grace = ephrun.time.parse_duration(grace) or errors.raise { kind = "invalid",
      message = ("aws: scheduler_grace (EPHRUN_AWS_SCHEDULER_GRACE) must be seconds or a duration (10m), got '%s'")
        :format(tostring(grace)) }
  end
  local role = setting(opts, "scheduler_role", "EPHRUN_AWS_SCHEDULER_ROLE", nil)
  if role and not tostring(role):match("^arn:aws[%w%-]*:iam::%d+:role/.+") then
    errors.raise { kind = "invalid", message = ("aws: scheduler_role (EPHRUN_AWS_SCHEDULER_ROLE) must be an IAM role "
      .. "ARN (arn:aws:iam::123456789012:role/ephrun-scheduler), got '%s'"):format(tostring(role)) }
  end
  return { mode = mode, role = role, grace = grace }
end

--- The schedule's name for instance `id` of run `run` (64 characters at most).
---@return string
function M.name(run, id)
  return (M.PREFIX .. run .. "-" .. id):sub(1, 64)
end

--- The run and instance a schedule name stands for, or nil for another's schedule.
---@return string|nil run, string|nil instance
function M.parse_name(name)
  return tostring(name):match("^ephrun%-(%d+%-%d+%-%x+)%-(i%-%x+)$")
end

local function q(s) return ephrun.shell_quote(s) end

-- The CLI's --endpoint-url when the Scheduler is not AWS's own ("" when it is or is unknown).
local function endpoint_flag(s)
  local ok, url = pcall(s.endpoint, s, "scheduler")
  if not ok or url:match("%.amazonaws%.com[%.%w]*$") then return "" end
  return " --endpoint-url " .. q(url)
end

--- The aws CLI command that deletes schedule `name` by hand.
---@return string
function M.hint(s, region, name)
  return ("aws scheduler delete-schedule --region %s --group-name %s --name %s%s"):format(q(region), M.GROUP, q(name),
    endpoint_flag(s))
end

-- A REST-JSON error (`x-amzn-ErrorType` or the body's `__type`, and `message`)
-- as an ephrun.aws error, so kinds are decided as for every AWS call.
local function rest_error(resp, action)
  local doc = resp.body and resp.body:match("^%s*{") and ephrun.json.decode(resp.body) or nil
  doc = type(doc) == "table" and doc or {}
  local code = (resp.headers or {})["x-amzn-errortype"] or doc.__type or doc.code or doc.Code
  code = code and tostring(code):gsub(":.*$", ""):gsub("^.*#", "") or ("HTTP" .. tostring(resp.status))
  local msg = doc.message or doc.Message or (resp.body or ""):sub(1, 200)
  return aws.error(code, tostring(msg), { status = resp.status, service = "scheduler", action = action })
end

local function send(s, action, req)
  local resp, err = s:request("scheduler", req)
  if not resp then
    error(aws.error("ConnectionError", ("scheduler %s: %s"):format(action, tostring(err)),
      { service = "scheduler", action = action }), 0)
  end
  if resp.dry_run then return {} end
  if not resp.ok then error(rest_error(resp, action), 0) end
  local doc = resp.body ~= "" and ephrun.json.decode(resp.body) or {}
  return type(doc) == "table" and doc or {}
end

-- One Scheduler call; raises an ephrun.aws error when it is not answered 2xx.
-- Every call here is safe to repeat (a create by name answers Conflict the
-- second time), so throttling and 5xx are sent again with backoff until
-- `deadline` seconds pass (0: once), as the EC2 calls are; this loop is the
-- only one, ephrun.http's own retries are off.
local function call(s, region, action, req, deadline)
  req.region, req.retries = region, 0
  local limit = ephrun.time.monotonic() + (deadline or 120)
  local delay = 0.25
  while true do
    local ok, r = pcall(send, s, action, req)
    if ok then return r end
    if not (aws.is_error(r) and r.retry and r.kind ~= "locked") or ephrun.time.monotonic() + delay > limit then
      error(r, 0)
    end
    ephrun.log.debug("aws: scheduler %s: %s; again in %.1fs", action, tostring(r), delay)
    ephrun.time.sleep(delay * (1 + math.random() * 0.5))
    delay = math.min(delay * 2, 8)
  end
end

-- Whether the Scheduler answers in `region` (one read per region and process):
-- true, or false and why not. A throttled or failing answer is an answer, so
-- a storm does not cost the instance its timer.
-- Fifty parallel launches ask once: the first starts the read, the others wait for it.
local reachable, asking = {}, {}

local function ask(s, region)
  local ok, err = pcall(call, s, region, "ListSchedules", { method = "GET", path = "/schedules",
    query = { NamePrefix = M.PREFIX, MaxResults = 1 }, timeout = 10, connect_timeout = 5 }, 0)
  -- throttled or failing for a moment: it answers, and the create retries
  if ok or (aws.is_error(err) and (err.kind == "rate_limited" or err.kind == "server") and err.status) then
    return true
  end
  return tostring(err)
end

local function probe(s, region)
  if reachable[region] == nil then
    local task = asking[region]
    if not task then
      task = ephrun.spawn("aws scheduler probe " .. region, function() return ask(s, region) end)
      asking[region] = task
    end
    local ok, r = pcall(task.wait, task)
    if asking[region] == task then asking[region] = nil end
    if not ok then error(r, 0) end
    reachable[region] = r
  end
  local r = reachable[region]
  if r == true then return true end
  return false, r
end

-- Why no schedule is made, or nil when one is (raises when `true` cannot be kept).
local function why_not(s, region, set)
  if set.mode == "false" then return "scheduler=false" end
  if not set.role then
    if set.mode == "true" then
      errors.raise { kind = "invalid", message = "aws: scheduler=true needs scheduler_role (EPHRUN_AWS_SCHEDULER_ROLE), "
        .. "the ARN of a role EventBridge Scheduler may assume to terminate instances (docs/providers.md)" }
    end
    return "no scheduler_role (EPHRUN_AWS_SCHEDULER_ROLE) is set"
  end
  local ok, err = probe(s, region)
  if ok then return nil end
  if set.mode == "true" then
    errors.raise { kind = "invalid", message = ("aws: scheduler=true but EventBridge Scheduler does not answer in %s "
      .. "(%s): fix the endpoint or the permissions (scheduler:ListSchedules), or set scheduler=auto"):format(region,
      err) }
  end
  return ("EventBridge Scheduler does not answer in %s (%s)"):format(region, err)
end

--- The launch step's plan lines about the second timer.
---@return string[]
function M.plan_lines(s, region, ttl, opts)
  local set = M.settings(opts)
  if not ttl then return {} end
  local why = why_not(s, region, set)
  if why then
    return { ("no second timer: %s; only the guest's own shutdown ends the instance if ephrun dies"):format(why) }
  end
  return { ("second timer: EventBridge Scheduler terminates the instance at expiry + %s even if the guest hangs "
    .. "(one-time schedule %sRUN-INSTANCE, role %s), deleted by destroy"):format(
    ephrun.time.format_duration(set.grace), M.PREFIX, set.role) }
end

-- Warned once per process: fifty launches, one line.
local warned = {}

--- Arms the timer for `inst` (just answered by RunInstances): registers its
--- deletion on the cleanup stack, then creates the schedule. Returns its name,
--- or nil when none is made (auto mode says why in the log).
---@return string|nil
function M.arm(s, region, inst, spec, opts)
  local set = M.settings(opts)
  local expires = spec.tags and aws.parse_time(spec.tags["ephrun-expires"])
  if not spec.ttl or not expires then return nil end
  local why = why_not(s, region, set)
  if why then
    if not warned[why] then
      warned[why] = true
      ephrun.log.warn("aws: no EventBridge Scheduler timer: %s; if ephrun dies and the guest hangs, nothing but "
        .. "`ephrun reap` ends the instance", why)
    end
    return nil
  end
  local run = spec.tags["ephrun-run"] or ephrun.run_id()
  local name = M.name(run, inst.id)
  -- A kept instance (keep=true) outlives the run: so does its timer, until destroy or its firing.
  if spec.tags["ephrun-keep"] ~= "true" then
    ephrun.defer(function() M.disarm(s, region, name) end, "delete the EventBridge schedule " .. name,
      M.hint(s, region, name))
  end
  local at = ephrun.time.iso8601(math.ceil(expires + set.grace)):gsub("Z$", "")
  local body = ephrun.json.encode {
    ScheduleExpression = ("at(%s)"):format(at), ScheduleExpressionTimezone = "UTC",
    FlexibleTimeWindow = { Mode = "OFF" }, ActionAfterCompletion = "DELETE", GroupName = M.GROUP,
    Description = ("ephrun run %s: terminate %s if it outlives its lifetime (%s)"):format(run, inst.id,
      spec.tags["ephrun-expires"]),
    ClientToken = name,
    Target = { Arn = M.TARGET, RoleArn = set.role, Input = ephrun.json.encode { InstanceIds = { inst.id } },
      RetryPolicy = { MaximumRetryAttempts = 185, MaximumEventAgeInSeconds = 86400 } },
  }
  local ok, err = pcall(call, s, region, "CreateSchedule", { method = "POST", path = "/schedules/" .. name,
    body = body, headers = { ["Content-Type"] = "application/json" } }, 300)
  -- Conflict: a create sent again whose first answer was lost; the name is this instance's.
  if not ok and not (aws.is_error(err) and err.code == "ConflictException") then
    if set.mode == "true" then
      errors.raise { kind = aws.is_error(err) and err.kind or "server", message = ("aws: cannot create the "
        .. "EventBridge schedule for %s (scheduler=true): %s"):format(inst.id, tostring(err)) }
    end
    ephrun.log.warn("aws: no EventBridge Scheduler timer for %s: %s (scheduler=auto; set scheduler=false to skip it)",
      inst.id, tostring(err))
    return nil
  end
  ephrun.log.info("aws: EventBridge schedule %s terminates %s at %s UTC unless destroyed first", name, inst.id, at)
  return name
end

--- Deletes schedule `name` (one already gone, fired or deleted, is success).
function M.disarm(s, region, name)
  local ok, err = pcall(call, s, region, "DeleteSchedule", { method = "DELETE", path = "/schedules/" .. name,
    query = { groupName = M.GROUP } })
  if ok or (aws.is_error(err) and err.kind == "not_found") then return end
  if aws.is_error(err) then
    error(errors.new { kind = err.kind, retry = err.retry, code = err.code,
      message = ("aws: cannot delete EventBridge schedule %s: %s"):format(name, tostring(err)) }, 0)
  end
  error(err, 0)
end

--- This account's ephrun schedules in `region` (of run `run` when given), as
--- `list` entries of kind "schedule"; throttling is retried for `deadline` seconds (default 120).
---@return table[]
function M.list(s, region, run, deadline)
  local out, token = {}, nil
  repeat
    local doc = call(s, region, "ListSchedules", { method = "GET", path = "/schedules",
      query = { NamePrefix = M.PREFIX, MaxResults = 100, NextToken = token } }, deadline)
    for _, sc in ipairs(doc.Schedules or {}) do
      local r, iid = M.parse_name(sc.Name)
      if r and (not run or r == run) and (sc.GroupName == nil or sc.GroupName == M.GROUP) then
        out[#out + 1] = { id = sc.Name, kind = "schedule", state = "running", region = region, label = sc.Name,
          instance = iid, tags = { ["ephrun-run"] = r } }
      end
    end
    token = doc.NextToken
  until token == nil or token == "" or token == ephrun.json.null
  return out
end

--- `list`, for `ephrun reap`: a Scheduler that cannot be listed (not enabled,
--- no permission) is said, not fatal, so instances, groups and keys still go.
---@return table[]
function M.leftovers(s, region, run, opts)
  if M.settings(opts).mode == "false" then return {} end
  local ok, list
  if type(reachable[region]) == "string" then
    ok, list = false, reachable[region]   -- this process found it silent already
  else
    ok, list = pcall(M.list, s, region, run, 30)
  end
  if ok then return list end
  ephrun.log.warn("aws: cannot list EventBridge schedules in %s (%s); list them with: aws scheduler list-schedules "
    .. "--region %s --name-prefix %s%s", region, tostring(list), q(region), M.PREFIX, endpoint_flag(s))
  return {}
end

return M
