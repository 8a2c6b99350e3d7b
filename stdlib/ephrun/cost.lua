--- Cost before money is spent. Every paid launch of a run passes one gate
--- (`cloud:launch` calls it before anything is made): the run's worst case so
--- far (every launch summed) is checked against the limit, then confirmed.
---
--- The limit is the lower of yours (`--max-cost`, else `EPHRUN_MAX_COST`,
--- else `max_cost` in the config file) and the recipe's `budget`; a worst case
--- that is unknown is above any limit. A worst case within your limit needs
--- no confirmation; otherwise a terminal is asked, `--yes` answers, and with
--- neither the launch is refused. A free launch (the local provider) never asks.
--- The warning threshold is `--warn-cost`, else `EPHRUN_WARN_COST`, else the
--- launch's or the recipe's `warn_cost`, else `warn_cost` in the config file.
local ephrun = require "ephrun"
local core = require "ephrun._core"

---@class ephrun.cost
local M = {}

-- This run's worst case: the sum over the launches that passed the gate, and
-- why it is unknown when one of them had no bound.
local run = { total = 0, launches = 0, unknown = nil, warned = false }
local recipe = {}
local gate_mutex

local function usd(n)
  return ("$%.2f"):format(n)
end

-- Two amounts in cents, or to a hundredth of a cent where cents would show them equal.
local function usd_pair(a, b)
  if usd(a) ~= usd(b) then return usd(a), usd(b) end
  return ("$%.4f"):format(a), ("$%.4f"):format(b)
end

local function env_usd(name)
  local v = os.getenv(name)
  if v == nil or v == "" then return nil end
  local n = tonumber((v:gsub("^%$", "")))
  if not n or n ~= n or n < 0 or n == math.huge then
    error(("%s must be an amount of USD such as 5 or 12.50, not '%s'"):format(name, v), 0)
  end
  return n
end

--- Records the running recipe's `budget` and `warn_cost` (called at start-up).
---@param def table the recipe table
---@param path string its file
function M._set_recipe(def, path)
  recipe = { budget = def.budget, warn_cost = def.warn_cost, name = def.name, path = path }
end

--- Your own limit and where it came from: `--max-cost`, `EPHRUN_MAX_COST`
--- or the config file's `max_cost`, in that order; nil when none is set.
---@return number|nil usd, string? source
function M.user_limit()
  local o = core.options()
  if o.max_cost then return o.max_cost, "--max-cost" end
  local e = env_usd("EPHRUN_MAX_COST")
  if e then return e, "EPHRUN_MAX_COST" end
  local c, where = require("ephrun.config").get("max_cost")
  if c then return c, "max_cost in " .. where end
end

--- The limit a run's worst case must stay within, and where it came from:
--- the lower of your limit (`user_limit`) and the recipe's `budget`.
---@return number|nil usd, string? source
function M.limit()
  local u, src = M.user_limit()
  local b = recipe.budget
  if b and (not u or b < u) then
    return b, ("budget = %s in recipe %s (%s)"):format(tostring(b), tostring(recipe.name), tostring(recipe.path))
  end
  return u, src
end

--- The cost-warning threshold and where it came from: `--warn-cost`,
--- `EPHRUN_WARN_COST`, then `given` (a launch's `warn_cost`), the recipe's
--- `warn_cost`, the config file's; nil when none is set.
---@param given? number
---@return number|nil usd, string? source
function M.warn_threshold(given)
  local o = core.options()
  if o.warn_cost then return o.warn_cost, "--warn-cost" end
  local e = env_usd("EPHRUN_WARN_COST")
  if e then return e, "EPHRUN_WARN_COST" end
  if given ~= nil and given ~= false then
    local n = tonumber(given)
    if not n or n < 0 then error(("launch: warn_cost must be an amount of USD, not '%s'"):format(tostring(given)), 0) end
    return n, "the launch's warn_cost"
  end
  if recipe.warn_cost then return recipe.warn_cost, "warn_cost in recipe " .. tostring(recipe.name) end
  local c, where = require("ephrun.config").get("warn_cost")
  if c then return c, "warn_cost in " .. where end
end

--- This run's worst case so far: USD (nil when unknown), the number of
--- paid launches, and why it is unknown.
---@return number|nil usd, integer launches, string? why
function M.run_worst()
  return (not run.unknown) and run.total or nil, run.launches, run.unknown
end

local function so_far(total, n)
  return total and ("%s (%d paid launch%s)"):format(usd(total), n, n == 1 and "" or "es")
    or ("unknown (%d paid launch%s)"):format(n, n == 1 and "" or "es")
end

-- Refuses what the limit does not allow; the same in a dry run, so a dry
-- run fails wherever the real run would.
local function check_limit(l, what, total, worst)
  local limit, source = M.limit()
  if not limit then return end
  if total == nil then
    error(("refusing to launch %s: the worst case of this run is unknown, so it is above any limit "
      .. "(%s from %s): %s. %s; nothing was created"):format(what, usd(limit), source,
      (l.worst and run.unknown) or l.unknown or "a launch has no bound", (l.worst and run.remedy) or l.remedy
      or "bound it first"), 0)
  end
  if total > limit + 1e-9 then
    local earlier = total - worst
    local total_text, limit_text = usd_pair(total, limit)
    error(("refusing to launch %s: the worst case of this run would be %s%s, above the limit %s (%s); "
      .. "nothing was created. Raise the limit (--max-cost USD), or use a smaller plan or a shorter ttl")
      :format(what, total_text, earlier > 0 and (" (this launch %s + %s before it)"):format(usd(worst), usd(earlier))
        or "", limit_text, source), 0)
  end
end

-- What answers the question without asking: --yes, or your own limit when the run is within it.
local function answered(total)
  if core.options().yes then return "--yes" end
  local ulimit, usrc = M.user_limit()
  if ulimit and total and total <= ulimit + 1e-9 then return ("your limit, %s from %s"):format(usd(ulimit), usrc) end
end

local function confirm(what, l, total, n)
  local by = answered(total)
  if by then
    ephrun.log.info("launch %s: this run's worst case %s; confirmed by %s", what, so_far(total, n), by)
    return
  end
  local worst_text = l.worst and usd(l.worst) or ("unknown: " .. l.unknown)
  local question = ("Launch %s: worst case %s%s. This run's worst case so far: %s. Proceed?"):format(what,
    worst_text, l.basis and (" (" .. l.basis .. ")") or "", so_far(total, n))
  if not core.isatty(0) then
    error(("refusing to launch %s: worst case %s, this run's %s; there is no terminal to confirm on: pass --yes "
      .. "to accept it, or --max-cost USD to accept a worst case up to USD; nothing was created")
      :format(what, worst_text, so_far(total, n)), 0)
  end
  if not ephrun.confirm(question) then
    error(("launch of %s declined at the prompt; nothing was created"):format(what), 0)
  end
end

---@class ephrun.cost.Launch
---@field what string the launch, as the plan names it
---@field worst number|nil its worst-case USD; nil when unknown
---@field unknown? string why the worst case is unknown
---@field remedy? string what bounds it
---@field basis? string how the worst case was computed
---@field provider? string
---@field plan? string
---@field warn_cost? number the launch's own warning threshold

--- The gate of a launch, before anything is made: adds its worst case to the
--- run's, refuses it above the limit, asks to confirm a paid one (see the
--- module's comment), warns past the threshold. Returns lines for the plan.
---@param l ephrun.cost.Launch
---@return string[]
function M.gate_launch(l)
  if l.worst == 0 then return {} end
  gate_mutex = gate_mutex or ephrun.mutex()
  -- Parallel launches ask one at a time, each seeing the ones before it.
  local _ <close> = gate_mutex:lock()
  local total = (l.worst and not run.unknown) and (run.total + l.worst) or nil
  local n = run.launches + 1
  check_limit(l, l.what, total, l.worst or 0)
  local lines = {}
  if core.dry_run() then
    local limit, source = M.limit()
    local by = answered(total)
    lines[#lines + 1] = ("this run's worst case so far: %s%s; %s"):format(so_far(total, n),
      limit and (", within the limit %s (%s)"):format(usd(limit), source) or "",
      by and ("a real run goes ahead without asking (" .. by .. ")")
        or "a real run asks to confirm it on the terminal (or pass --yes)")
  else
    confirm(l.what, l, total, n)
  end
  run.launches = n
  if l.worst then run.total = run.total + l.worst end
  if not l.worst and not run.unknown then run.remedy = l.remedy end
  if not l.worst then run.unknown = run.unknown or l.unknown or "a launch has no bound" end
  if not run.warned then
    local threshold, source = M.warn_threshold(l.warn_cost)
    if threshold and (total == nil or total > threshold) then
      run.warned = true
      require("ephrun.notify").check_cost(total, { provider = l.provider, plan = l.plan, warn_cost = threshold,
        source = source })
    end
  end
  return lines
end

return M
