--- The ephrun standard library: `local ephrun = require "ephrun"`.
--- Native modules are fields loaded on first use (`ephrun.http`, `ephrun.fs`, ...).
local core = require "ephrun._core"

-- Each module is a typed field, so `ephrun.fs.` completes in an editor
-- (tests/lua/annotations_spec.lua keeps this list and `modules` below equal).
---@class ephrun
---@field log ephrun.log
---@field json ephrun.json
---@field time ephrun.time
---@field http ephrun.http
---@field fs ephrun.fs
---@field proc ephrun.proc
---@field xml ephrun.xml
---@field ssh ephrun.ssh
---@field keys ephrun.keys
---@field params ephrun.params
---@field cloud ephrun.cloud
---@field journal ephrun.journal
---@field cloudinit ephrun.cloudinit
---@field aws ephrun.aws
---@field notify ephrun.notify
---@field recipe_name? string the running recipe's name, once its parameters are bound
local M = {}

--- Modules reachable as fields; loaded lazily so start-up stays fast.
local modules = {
  log = "ephrun.log", json = "ephrun.json", time = "ephrun.time", http = "ephrun.http",
  fs = "ephrun.fs", proc = "ephrun.proc", xml = "ephrun.xml", ssh = "ephrun.ssh",
  keys = "ephrun.keys", params = "ephrun.params", cloud = "ephrun.cloud",
  journal = "ephrun.journal", cloudinit = "ephrun.cloudinit", aws = "ephrun.aws",
  notify = "ephrun.notify",
}

setmetatable(M, {
  __index = function(t, k)
    local name = modules[k]
    if not name then error("ephrun has no field '" .. tostring(k) .. "'", 2) end
    local mod = require(name)
    rawset(t, k, mod)
    return mod
  end,
})

--- Loads a provider (see `ephrun.cloud.provider`).
---@param name string
---@param opts? table
---@return ephrun.Cloud
function M.provider(name, opts)
  return require("ephrun.cloud").provider(name, opts)
end

--- Takes the team lock `name` for the rest of the run, or raises naming its
--- holder and the lease it has left (see `ephrun.lock` in docs/api/lock.md).
---@param name string
---@param opts? ephrun.LockOpts
---@return ephrun.Lock
function M.lock(name, opts)
  -- a tail call, so the errors of ephrun.lock point at the recipe's line
  return require("ephrun.lock").lock(name, opts)
end

local recipe_marker = {}

---@class ephrun.ParamSpec
---@field type? "string"|"number"|"bool"|"duration"|"path"|"list"|"secret" inferred from `default` when omitted
---@field default? any a secret's default is "@env:VAR" or "@file:PATH"; `false` lets a number or duration be turned off (`ttl=none`)
---@field required? boolean
---@field doc? string
---@field choices? string[]
---@field min? number|string lowest allowed value (durations also as text, "1m"); without it a value must be more than 0 (or 0 when the default is 0)
---@field max? number|string highest allowed value; without it 10 years for durations, 2^53 for numbers

---@alias ephrun.Param ephrun.ParamSpec

---@alias ephrun.RecipeSpec ephrun.RecipeDef

---@class ephrun.RecipeDef
---@field name string
---@field summary? string
---@field usage? string what follows `ephrun NAME` in the --help usage line (default "[name=value ...] [--dry-run] ...")
---@field params? table<string, ephrun.ParamSpec>
---@field budget? number USD: a run whose worst case is above it is refused (the lower of it and --max-cost wins)
---@field warn_cost? number USD: warn and notify when the run's worst case passes it (below --warn-cost and EPHRUN_WARN_COST)
---@field run fun(p: table): any
---@field done? string|fun(p: table, run: ephrun.DetachedRun): boolean a detached run's "done" test (`LOG` is its log), for `ephrun status`
---@field finish? fun(p: table, run: ephrun.DetachedRun) what `ephrun finish` runs before it destroys the instance
---@field on_interrupt? fun(p: table, run: ephrun.DetachedRun) a detached spot run's relaunch on an interruption
---@field checkpoint? string shell step the spot poller runs on the instance at the interruption notice

--- Declares a recipe; a recipe file returns the result.
---@param def ephrun.RecipeDef
---@return ephrun.RecipeDef
function M.recipe(def)
  -- Level 3: the recipe file, above the C frame keep_frame adds.
  if type(def) ~= "table" then error("ephrun.recipe expects a table", 3) end
  if type(def.name) ~= "string" or def.name == "" then error("ephrun.recipe: 'name' must be a non-empty string", 3) end
  if type(def.run) ~= "function" then error("ephrun.recipe: 'run' must be a function", 3) end
  for _, k in ipairs { "budget", "warn_cost" } do
    local v = def[k]
    if v ~= nil and (type(v) ~= "number" or v ~= v or v < 0 or v == math.huge) then
      error(("ephrun.recipe: '%s' must be an amount of USD (a number such as 20), got %s"):format(k, tostring(v)), 3)
    end
  end
  def.params = def.params or {}
  require("ephrun.params").validate_specs(def.params, 4)
  def[recipe_marker] = true
  return def
end
-- `return ephrun.recipe{...}` is a tail call; the C frame keeps the file's
-- line for the errors above.
M.recipe = require("ephrun._keep_frame")(M.recipe)

--- True if `t` came from `ephrun.recipe`.
---@param t any
---@return boolean
function M.is_recipe(t)
  return type(t) == "table" and t[recipe_marker] == true
end

---@class ephrun.Deferred
---@field what string
local Deferred = {}
Deferred.__index = Deferred

--- Runs the cleanup now (once); later calls do nothing.
---@return boolean ok
function Deferred:close()
  local fn = core.cleanup_take(self.id)
  if not fn then return true end
  local ok, err = pcall(M.shield, fn) -- a cancel of this task waits until the cleanup has run
  core.cleanup_finish(self.id, ok, ok and "" or tostring(err))
  return ok
end
Deferred.__close = Deferred.close

--- Forgets the cleanup without running it (the resource was handed on).
function Deferred:cancel()
  core.cleanup_dismiss(self.id)
end

--- Pushes `fn` onto the run's cleanup stack. Cleanups run last-in first-out
--- when the run ends: on success, on error, on SIGINT/SIGTERM/SIGHUP. The
--- returned handle is closable, so `local d <close> = ephrun.defer(...)` runs
--- it at the end of the enclosing scope instead.
---@param fn fun()
---@param what string what is being cleaned up, shown if it fails or is slow
---@param hint? string a command that removes it by hand, printed if it fails
---@return ephrun.Deferred
function M.defer(fn, what, hint)
  if type(fn) ~= "function" then error("ephrun.defer: expected a function", 2) end
  what = what or "cleanup"
  return setmetatable({ id = core.cleanup_push(fn, what, hint), what = what }, Deferred)
end

--- What is still on the cleanup stack, newest first.
---@return string[]
function M.pending_cleanups()
  return core.cleanup_pending()
end

---@class ephrun.Task
---@field wait fun(self: ephrun.Task): ... waits for the task; returns its results or raises its error
---@field cancel fun(self: ephrun.Task, reason?: string)
---@field done fun(self: ephrun.Task): boolean
---@field status fun(self: ephrun.Task): "running"|"ok"|"failed", string?
---@field name fun(self: ephrun.Task): string

--- Starts `fn(...)` as a concurrent task. An optional leading string names it
--- (the name prefixes its log lines). If it fails, its siblings are
--- cancelled and the error reaches the task that spawned it.
---@param fn string|function name, or the function
---@param ... any the function (after a name) and its arguments
---@return ephrun.Task
function M.spawn(fn, ...)
  if type(fn) == "string" then return core.spawn(fn, ...) end
  return core.spawn(nil, fn, ...)
end

--- Runs `fn(item, i)` for every item, at most `opts.limit` at a time, and
--- returns the results in order. The first error cancels the rest and is raised.
---@param items any[]
---@param fn fun(item: any, i: integer): any
---@param opts? {limit?: integer, name?: string}
---@return any[]
function M.parallel(items, fn, opts)
  opts = opts or {}
  local n = #items
  local limit = math.max(1, math.min(opts.limit or n, n))
  local results, next_i = {}, 0
  local function worker()
    while true do
      next_i = next_i + 1
      local i = next_i
      if i > n then return end
      results[i] = fn(items[i], i)
    end
  end
  local tasks = {}
  for w = 1, (n > 0 and limit or 0) do
    tasks[w] = core.spawn((opts.name or "parallel") .. "#" .. w, worker)
  end
  -- On the first error every worker is cancelled and waited for, so their
  -- cleanups have run before the error reaches the caller.
  local first_err
  for _, t in ipairs(tasks) do
    local ok, err = pcall(M.shield, t.wait, t) -- a cancel of this task reaches the workers too
    if not ok and first_err == nil then
      first_err = err
      for _, o in ipairs(tasks) do o:cancel("cancelled: a sibling failed") end
    end
  end
  core.checkpoint() -- this task's own cancellation, if any, rather than a worker's
  if first_err ~= nil then error(first_err, 0) end
  return results
end

--- `s` as one single-quoted POSIX shell word: `it's` → `'it'\''s'`.
---@param s any converted with tostring
---@return string
function M.shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

--- Lets other tasks run before continuing.
function M.yield()
  coroutine.yield()
end

-- One dotenv value: quotes removed ('…' literal, "…" with \n \" \\
-- escapes), an unquoted value ends at " #" (a comment).
local function dotenv_value(v)
  local q = v:sub(1, 1)
  if q == "'" or q == '"' then
    local close = v:find(q, 2, true)
    if q == '"' then
      local i = 2
      while true do
        local c = v:sub(i, i)
        if c == "" then close = nil break end
        if c == "\\" then i = i + 2 elseif c == '"' then close = i break else i = i + 1 end
      end
    end
    if close then
      local inner = v:sub(2, close - 1)
      if q == '"' then
        inner = inner:gsub("\\(.)", { n = "\n", r = "\r", t = "\t", ['"'] = '"', ["\\"] = "\\" })
      end
      return inner
    end
  end
  return (v:gsub("%s+#.*$", ""):gsub("^#.*$", ""))
end

-- Reads `name` from the dotenv file at `path` (the last assignment wins).
-- Only a regular file is read: a fifo or a device there would block the run
-- where no signal can stop it.
local function dotenv_lookup(path, name)
  local st = M.fs.stat(path, { follow = true })
  if not st then return nil end
  if st.type ~= "file" then
    error(("%s is not a regular file: a .env file must be a plain file of NAME=value lines"):format(path), 0)
  end
  local f = io.open(path, "r")
  if not f then return nil end
  local found
  local first = true
  for line in f:lines() do
    if first and line:sub(1, 3) == "\239\187\191" then line = line:sub(4) end -- UTF-8 BOM
    first = false
    line = line:gsub("\r$", "")
    local k, v = line:match("^%s*export%s+([%w_]+)%s*=%s*(.-)%s*$")
    if not k then k, v = line:match("^%s*([%w_]+)%s*=%s*(.-)%s*$") end
    if k == name then found = dotenv_value(v) end
  end
  f:close()
  return found
end

--- Reads a secret: the environment, then `.env` in the recipe's directory,
--- then `.env` in the current directory. The value is registered for
--- redaction: it never appears in logs, plans or error messages.
---@param name string
---@param opts? {optional?: boolean}
---@return string|nil
function M.secret(name, opts)
  opts = opts or {}
  local v = os.getenv(name)
  if v == nil or v == "" then
    local dir = core.recipe_dir()
    if dir ~= "" then v = dotenv_lookup(dir .. "/.env", name) end
    if v == nil then v = dotenv_lookup(".env", name) end
  end
  if v == nil or v == "" then
    if opts.optional then return nil end
    if core.dry_run() then
      core.plan_add { kind = "secret", what = name .. " is not set; a real run will need it" }
      return "<secret:" .. name .. ">"
    end
    error(("secret %s is not set: export %s=... or add %s=... to a .env file next to the recipe or in the current directory")
      :format(name, name, name), 2)
  end
  core.secret_add(name, v)
  return v
end

---@class ephrun.Effect
---@field kind string short verb: launch, destroy, run, sync, http, write, ...
---@field what string one readable line
---@field where? string provider, region, host or path
---@field cost? number worst-case USD
---@field details? string[]
---@field run fun(): ... does it (not called under --dry-run)
---@field placeholder? any|fun(): ... returned instead under --dry-run

--- The choke point for side effects. Records a plan step; under --dry-run
--- returns the placeholder instead of calling `run`.
---@param e ephrun.Effect
---@return any
function M.effect(e)
  if type(e) ~= "table" or type(e.run) ~= "function" then
    error("ephrun.effect expects {kind=, what=, run=function}", 2)
  end
  -- The host's gate (Runtime::effect) records the step and says whether to
  -- act; native effects ask the same gate, so --dry-run is decided only there.
  if core.effect(e) then return e.run() end
  local p = e.placeholder
  if type(p) == "function" then return p() end
  return p
end

--- True under --dry-run. For reporting only (a command saying "would");
--- recipes and providers never branch on it: an effect's placeholder carries
--- the dry-run's answer, and a check that the real run would fail runs in both.
---@return boolean
function M.dry_run()
  return core.dry_run()
end

--- Sets the current phase (shown with errors and in the plan); returns the previous one.
---@param name? string
---@return string
function M.phase(name)
  return core.phase(name)
end

--- This run's id (also tagged on every resource it creates).
---@return string
function M.run_id()
  return core.options().run_id
end

--- The command-line options: dry_run, json, yes, verbosity, run_id, notify_url,
--- and max_cost / warn_cost (USD, nil unless --max-cost / --warn-cost is given).
---@return {dry_run: boolean, json: boolean, yes: boolean, verbosity: integer, run_id: string, notify_url: string, max_cost?: number, warn_cost?: number}
function M.options()
  return core.options()
end

--- Asks the user to confirm `question` (y/N) on the terminal. True under
--- --yes or --dry-run; raises when there is no terminal to ask on. Ctrl-C
--- while it waits cancels the run like anywhere else (other tasks go on
--- meanwhile).
---@param question string
---@return boolean
function M.confirm(question)
  local o = core.options()
  if o.yes or o.dry_run then return true end
  if not core.isatty(0) then
    error(question .. " — no terminal to confirm on; pass --yes to proceed", 2)
  end
  io.stderr:write(question, " [y/N] ")
  io.stderr:flush()
  local answer = core.read_line(0)
  if answer == nil then io.stderr:write("\n") end
  return (answer or ""):match("^%s*[yY]") ~= nil
end

---@class ephrun.Cancelled
---@field kind "cancelled"
---@field reason string why: "interrupted by SIGINT", a `task:cancel` reason, ...
---@field retry false

--- The metatable of the error a cancelled task raises: `getmetatable(err) == ephrun.Cancelled`.
M.Cancelled = core.Cancelled()

--- True when `err` is the error of a cancellation (`ephrun.Cancelled`).
---@param err any
---@return boolean
function M.is_cancelled(err)
  return core.is_cancelled(err)
end

--- Runs `fn(...)` so that a cancel of this task does not interrupt it: its
--- waits run to their end, and the cancellation is raised at the first wait
--- after it returns. For short sections that must not be cut in two, such as
--- creating a resource and registering its undo.
---@param fn function
---@param ... any
---@return any ...
function M.shield(fn, ...)
  local _ <close> = core.shield()
  return fn(...)
end

---@class ephrun.Mutex
---@field lock fun(self: ephrun.Mutex): ephrun.Mutex waits until this task holds it; closable, so `local _ <close> = m:lock()` unlocks at scope end
---@field unlock fun(self: ephrun.Mutex) hands it to the task that waited longest
---@field locked fun(self: ephrun.Mutex): boolean

--- A lock for the tasks of this run (in-process only, not shared with other
--- ephrun processes). Waiting tasks queue in order without polling.
---@return ephrun.Mutex
function M.mutex()
  return core.mutex()
end

---@class ephrun.Event
---@field wait fun(self: ephrun.Event, timeout?: number): boolean true once set; false when `timeout` seconds pass first
---@field set fun(self: ephrun.Event) wakes every waiting task; stays set until `clear`
---@field clear fun(self: ephrun.Event)
---@field is_set fun(self: ephrun.Event): boolean

--- A flag tasks of this run wait on without polling.
---@return ephrun.Event
function M.event()
  return core.event()
end

return M
