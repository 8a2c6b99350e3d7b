-- `ephrun check RECIPE... [name=value ...] [--json]`: what can be known about a
-- recipe before it spends money. Per file: it compiles; luacheck (Debian's
-- lua-check) finds no undefined globals or unused variables; it loads and its
-- ephrun.recipe{} table is sound (name, summary, params: types, defaults within
-- min/max, choices); a --dry-run with its defaults, or the given name=value's,
-- runs to its end. The load and the dry run happen in a child ephrun, so
-- nothing the recipe does at load time can act for real here.
local ephrun = require "ephrun"
local authoring = require "ephrun.authoring"
local json = require "ephrun.json"

local USAGE = "ephrun check RECIPE... [name=value ...] [--json]"

-- luacheck warnings that are taste, not mistakes, in a recipe: line length.
local LUACHECK_IGNORE = { "631" }

-- A dry run plans and touches nothing: minutes mean it is stuck.
local DRY_RUN_TIMEOUT = 300

local function self_exe()
  return ephrun.fs.realpath("/proc/self/exe") or error("check: cannot tell where the ephrun binary is", 0)
end

--- "file:12: message" (or "ephrun: error in phase 'load': file:12: message") as file, line, message.
local function split_where(text, file)
  text = text:gsub("^ephrun: ", ""):gsub("^error in phase '[%w_-]+': ", ""):gsub("^error: ", "")
  local f, line, msg = text:match("^([^:\n]+):(%d+): (.*)$")
  if f then return f, tonumber(line), msg end
  return file, nil, text
end

-- The line that declares the recipe, for problems with the table as a whole.
local function recipe_line(text)
  local n = 0
  for line in (text .. "\n"):gmatch("(.-)\n") do
    n = n + 1
    if line:find("ephrun.recipe", 1, true) and not line:match("^%s*%-%-") then return n end
  end
  return 1
end

-- The line of the problem: the parameter's own line for a message about one
-- ("parameter 'n': ..."), else the one Lua named, else the recipe's.
local function where_in(text, line, msg)
  local param = msg:match("^parameter '([%w_]+)'")
  if param then
    local n, from = 0, recipe_line(text)
    for l in (text .. "\n"):gmatch("(.-)\n") do
      n = n + 1
      if n >= from and (l:match("^%s*" .. param .. "%s*=") or l:match("[{,]%s*" .. param .. "%s*=%s*{")) then return n end
    end
  end
  return line or recipe_line(text)
end

local Checker = {}
Checker.__index = Checker

--- Records one problem; `line` may be nil.
function Checker:add(check, file, line, message)
  self.problems[#self.problems + 1] = { check = check, file = file, line = line, message = message }
end

--- The file compiles; else a problem at the line Lua names.
function Checker:syntax(file)
  local chunk, err = loadfile(file, "t")
  if chunk then return true end
  local f, line, msg = split_where(err, file)
  self:add("syntax", f, line, msg)
  return false
end

--- luacheck's warnings, one problem each.
function Checker:lint(file)
  local argv = { "luacheck", "--formatter", "plain", "--codes", "--no-color", "--std", "lua54",
    "--ignore", table.concat(LUACHECK_IGNORE, " "), "--", file }
  local r, err = ephrun.proc.run(argv, { check = false, stream = false })
  if not r then
    self.lint_missing = self.lint_missing or ("luacheck cannot run (%s): install Debian's lua-check; "
      .. "undefined globals and unused variables were not checked"):format(err)
    return
  end
  local found = false
  for line in r.stdout:gmatch("[^\n]+") do
    local f, l, msg = line:match("^(.-):(%d+):%d+: (.*)$")
    if f then
      self:add("lint", f, tonumber(l), msg)
      found = true
    end
  end
  if r.code ~= 0 and not found then
    self:add("lint", file, nil, "luacheck failed: " .. ((r.stderr ~= "" and r.stderr or r.stdout):gsub("%s+$", "")))
  end
end

-- The child's one-line complaints (stderr "ephrun: ..." lines, without hints).
local function complaints(stderr)
  local out = {}
  for line in stderr:gmatch("[^\n]+") do
    local m = line:match("^ephrun: (.*)$")
    if m and not m:match("^note: ") then out[#out + 1] = m end
  end
  return out
end

--- The recipe loads in a child ephrun and has a summary; false when it does not load.
function Checker:load(file, text)
  local r = assert(ephrun.proc.run({ self.exe, file, "--help" }, { check = false, stream = false }))
  if r.code ~= 0 then
    local said = complaints(r.stderr)
    if #said == 0 then said = { (r.stderr:gsub("%s+$", "")) } end
    for _, m in ipairs(said) do
      local f, line, msg = split_where(m, file)
      self:add("recipe", f, f == file and where_in(text, line, msg) or line, msg)
    end
    return false
  end
  -- The first line of --help: "name — summary", or the name alone.
  local first = r.stdout:match("^[^\n]*")
  if not first:find(" — ", 1, true) then
    self:add("recipe", file, recipe_line(text), "the recipe has no summary: add summary = \"what it does, in one line\" "
      .. "(ephrun --list and --help show it)")
  end
  return true
end

--- A --dry-run with the given values (or the defaults) completes.
function Checker:dry_run(file, text)
  local argv = { self.exe, "--dry-run", "--json", "--yes", file }
  for _, a in ipairs(self.values) do argv[#argv + 1] = a end
  local r = assert(ephrun.proc.run(argv, { check = false, stream = false, timeout = DRY_RUN_TIMEOUT }))
  if r.code == 0 then return end
  if r.timed_out then
    self:add("dry-run", file, recipe_line(text), ("the dry run did not finish in %s; a dry run only plans, so "
      .. "something in the recipe waits on a condition that a placeholder never meets"):format(
      ephrun.time.format_duration(DRY_RUN_TIMEOUT)))
    return
  end
  local ok, plan = pcall(json.decode, r.stdout)
  local msgs
  if ok and type(plan) == "table" and type(plan.errors) == "table" and #plan.errors > 0 then
    msgs = plan.errors
  elseif ok and type(plan) == "table" and type(plan.error) == "string" then
    msgs = { plan.error }
  else
    msgs = complaints(r.stderr)
  end
  if #msgs == 0 then msgs = { ("the dry run exited %s: %s"):format(tostring(r.code), r.stderr:gsub("%s+$", "")) } end
  local given = #self.values > 0 and ("with " .. table.concat(self.values, " ")) or "with the defaults"
  for _, m in ipairs(msgs) do
    local f, line, msg = split_where(tostring(m), file)
    self:add("dry-run", f, f == file and where_in(text, line, msg) or line, ("dry run %s: %s"):format(given, msg))
  end
end

--- Every check of one file, stopping where a later one cannot run.
function Checker:file(file)
  local st = ephrun.fs.stat(file, { follow = true })
  if not st or st.type ~= "file" then
    self:add("file", file, nil, st and "not a file" or "no such file")
    return
  end
  local text = assert(ephrun.fs.read(file))
  if not self:syntax(file) then return end
  self:lint(file)
  if self:load(file, text) then self:dry_run(file, text) end
end

local function report(c, files)
  if ephrun.options().json then
    local list = json.array()
    for i, p in ipairs(c.problems) do list[i] = p end
    local out = { ok = #c.problems == 0, files = files, problems = list }
    if c.lint_missing then out.warnings = { c.lint_missing } end
    io.stdout:write(json.encode(out, { pretty = true }), "\n")
  else
    for _, p in ipairs(c.problems) do
      io.stdout:write(("%s:%s%s\n"):format(p.file, p.line and (p.line .. ": ") or " ", p.message))
    end
  end
  io.stdout:flush()
  if c.lint_missing then ephrun.log.warn("check: %s", c.lint_missing) end
end

return ephrun.recipe {
  name = "check",
  summary = "Check recipes before they spend money: syntax, recipe table, luacheck, a dry run.",
  usage = "RECIPE... [name=value ...] [--json]",
  params = {
    words = { default = "", doc = "RECIPE files, then name=value's for their dry run (" .. USAGE .. ")" },
  },
  run = function(p)
    local files, values = {}, {}
    for _, w in ipairs(authoring.words(p.words)) do
      if w:match("^[%w_]+=") then values[#values + 1] = w else files[#files + 1] = w end
    end
    if #files == 0 then error("check: give the recipe files to check: " .. USAGE, 0) end
    -- Under --dry-run the children would not run, and every file would pass.
    if ephrun.dry_run() then error("check: drop --dry-run; check already dry-runs each recipe, in a child ephrun", 0) end
    local c = setmetatable({ problems = {}, values = values, exe = self_exe() }, Checker)
    for _, f in ipairs(files) do c:file(f) end
    report(c, files)
    if #c.problems > 0 then
      error(("check: %d problem%s in %d file%s"):format(#c.problems, #c.problems == 1 and "" or "s", #files,
        #files == 1 and "" or "s"), 0)
    end
    if not ephrun.options().json then
      io.stdout:write(("ok: %d file%s checked\n"):format(#files, #files == 1 and "" or "s"))
    end
  end,
}
