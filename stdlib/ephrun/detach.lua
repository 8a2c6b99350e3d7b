--- Detached runs: a recipe starts its job with `sh:run_detached`, calls
--- `box:detach(job)` and ends; the instance keeps running under its TTL. This
--- module records what the later commands need (in the journal, as the
--- resource's `extra.detach`, and in `runs/<id>/detach.json` beside the run's
--- key), and gives `ephrun status`, `attach` and `finish` what they share:
--- finding the run, rebuilding its instance, reading the job's state, loading
--- the recipe again for its `finish` and `on_interrupt` steps.
local ephrun = require "ephrun"
local cloudlib = require "ephrun.cloud"

local q = ephrun.shell_quote
local common = require "ephrun.cmd.common"

---@class ephrun.detach
local M = {}

local INFO_FILE = "detach.json"

-- Where the recipe came from, so `ephrun finish` can load it again: a file
-- (its absolute path), a built-in (its path in the binary), or a pack's recipe.
local function recipe_source()
  local r = rawget(ephrun, "_recipe")
  if not r then return { name = rawget(ephrun, "recipe_name") or "?" } end
  local src = { name = r.def and r.def.name or "?", invoked = r.invoked }
  if r.path == r.invoked then
    src.kind, src.path = "file", ephrun.fs.realpath(r.path) or r.path
  elseif r.invoked:match("^[%w_][%w_%-]*/[%w_][%w_%-]*$") then
    src.kind, src.path = "pack", r.invoked
  else
    src.kind, src.path = "builtin", r.path
  end
  return src
end

-- The bound parameters as name=value arguments, secrets left out: `ephrun
-- finish` reads them again (their @env:/@file: default, or a prompt).
local function params_args(r)
  if not r or not r.params then return {} end
  local specs = (r.def or {}).params or {}
  local out = {}
  for line in (require("ephrun.params").canonical(r.params, specs) .. "\n"):gmatch("(.-)\n") do
    local name = line:match("^([^=]+)=")
    if name and not (specs[name] and specs[name].type == "secret") then out[#out + 1] = line end
  end
  return out
end

local function plain(t)
  local out = {}
  for k, v in pairs(t or {}) do
    if type(k) == "string" and (type(v) == "string" or type(v) == "number" or type(v) == "boolean") then out[k] = v end
  end
  return out
end

local function run_dir(id)
  return cloudlib.state_dir() .. "/runs/" .. id
end

local function write_info(dir, info)
  assert(ephrun.fs.mkdir_p(dir, "0700"))
  assert(ephrun.fs.write(dir .. "/" .. INFO_FILE, ephrun.json.encode(info, { pretty = true }) .. "\n",
    { mode = "0600" }))
end

-- The spot poller: watches IMDSv2 spot/instance-action until the job ends; on a
-- notice it appends it to the job's log, runs the checkpoint step, then marks
-- the job interrupted (`<log>.interrupted` holds the notice).
local function poller_script(job, checkpoint, every)
  local log, mark = q(job.log), q(job.log .. ".interrupted")
  return table.concat({
    'ep=${AWS_EC2_METADATA_SERVICE_ENDPOINT:-http://169.254.169.254/}',
    'case "$ep" in */) ;; *) ep="$ep/";; esac',
    "while [ ! -f " .. q(job.status_file) .. " ]; do",
    '  tok=$(curl -sf -m 5 -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 300" "${ep}latest/api/token") &&',
    '  doc=$(curl -sf -m 5 -H "X-aws-ec2-metadata-token: $tok" "${ep}latest/meta-data/spot/instance-action") && {',
    '    echo "$(date -u +%FT%TZ) ephrun: spot interruption notice: $doc" >> ' .. log,
    checkpoint and ("    ( " .. checkpoint .. "\n    ) >> " .. log .. " 2>&1") or "    :",
    "    printf '%s\\n' \"$doc\" > " .. mark .. ".tmp && mv " .. mark .. ".tmp " .. mark,
    "    exit 0; }",
    "  sleep " .. tostring(every),
    "done",
  }, "\n")
end

local function start_poller(inst, job, opts)
  local sh = opts.ssh or inst:ssh()
  local every = tonumber(os.getenv("EPHRUN_SPOT_POLL") or "") or 5
  local p = sh:run_detached(poller_script(job, opts.checkpoint, every), { log = job.log .. ".spot.log" })
  ephrun.log.info("spot poller started on %s instance %s (IMDSv2 spot/instance-action every %ss)",
    inst.cloud.name, inst.id, tostring(every))
  return { pid = p.pid, log = p.log }
end

--- Records a detached run (called by `instance:detach`): the journal row
--- becomes `detached` with what finish needs, and the same goes to
--- `runs/<id>/detach.json`. Returns the run id.
---@param inst ephrun.Instance
---@param job {pid: integer, log: string, status_file: string}
---@param opts {done?: string, checkpoint?: string, interruptions?: integer, cost_before?: number, ssh?: table}
---@return string
function M.record(inst, job, opts)
  local r = rawget(ephrun, "_recipe") or {}
  local def = r.def or {}
  local adopted = rawget(M, "_context")
  local checkpoint = opts.checkpoint or (adopted and adopted.checkpoint)
    or (type(def.checkpoint) == "string" and def.checkpoint) or nil
  local info = {
    version = 1, run = inst.tags["ephrun-detach"], launched_by = ephrun.run_id(),
    recipe = adopted and adopted.recipe or recipe_source(),
    params = adopted and adopted.params or params_args(r),
    provider = inst.cloud.name, provider_opts = plain(inst.cloud.opts), instance = inst.id,
    host = inst.host, port = inst.port, user = inst.user, host_key = inst.host_key, key_dir = inst.key_dir,
    job = { pid = job.pid, log = job.log, status_file = job.status_file },
    -- the provider's view once running (the journal's `extra` is the one at create: no address yet)
    raw = plain(inst.raw),
    done = opts.done or (adopted and adopted.done) or (type(def.done) == "string" and def.done) or nil,
    done_fn = (adopted and adopted.done_fn) or type(def.done) == "function" or nil,
    checkpoint = checkpoint, spot = inst.raw.spot and true or nil,
    interruptions = opts.interruptions or (adopted and adopted.interruptions) or 0,
    cost_before = opts.cost_before or (adopted and adopted.cost_before) or nil,
    hourly = inst.hourly, started = inst.started, expires = inst.expires, ttl = inst.ttl,
    detached_at = ephrun.time.now(),
  }
  if inst.raw.spot then info.poller = start_poller(inst, job, { ssh = opts.ssh, checkpoint = checkpoint }) end
  write_info(inst.key_dir, info)
  -- runs/<id>/ alone is enough to reach the job: a relaunch's key is copied there too,
  -- and that directory is what another machine needs.
  if run_dir(info.run) ~= inst.key_dir then
    write_info(run_dir(info.run), info)
    for _, f in ipairs { "id_ed25519", "known_hosts" } do
      local data = ephrun.fs.read(inst.key_dir .. "/" .. f)
      if data then assert(ephrun.fs.write(run_dir(info.run) .. "/" .. f, data, { mode = "0600" })) end
    end
  end
  if inst.journal_key then ephrun.journal.detached(inst.journal_key, info) end
  return info.run
end

--- Logs how to come back to a detached run.
function M.announce(inst, run, job)
  ephrun.log.warn("DETACHED run %s: %s instance %s keeps running its job (log %s) and %s. Check on it: ephrun status %s"
    .. "   Follow its log: ephrun attach %s   End it: ephrun finish %s", run, inst.cloud.name, inst.id, job.log,
    inst.ttl and ("ends itself at " .. inst.tags["ephrun-expires"]) or "has NO lifetime timer", run, run, run)
end

-- ------------------------------------------------------------------ finding

local function read_json(path)
  local text = ephrun.fs.read(path)
  if not text then return nil end
  local ok, v = pcall(ephrun.json.decode, text)
  return ok and type(v) == "table" and v or nil
end

--- The journal rows of detached run `id` (every instance it had, oldest
--- first), and the newest one's detach info; or the detach.json of
--- `runs/<id>/` when the journal does not know it (copied from another machine).
---@param id string
---@return {id: string, info: table|nil, row: table|nil, rows: table[]}|nil
function M.find(id)
  local rows = {}
  for _, r in ipairs(ephrun.journal.resources {}) do
    local d = type(r.extra) == "table" and r.extra.detach or nil
    if r.kind == "instance" and ((d and d.run == id) or (r.run_id == id)) then rows[#rows + 1] = r end
  end
  local newest = rows[#rows]
  if newest then
    return { id = id, info = type(newest.extra) == "table" and newest.extra.detach or nil, row = newest, rows = rows }
  end
  local info = read_json(run_dir(id) .. "/" .. INFO_FILE)
  if info then
    info.key_dir = run_dir(id) -- the copy here, not the path on the machine that wrote it
    return { id = id, info = info, rows = {} }
  end
  return nil
end

--- Detached runs the journal holds as still going, newest first.
---@return string[]
function M.live_ids()
  local seen, out = {}, {}
  for _, r in ipairs(ephrun.journal.resources { live = true }) do
    local d = type(r.extra) == "table" and r.extra.detach or nil
    if r.status == "detached" and d and not seen[d.run] then
      seen[d.run] = true
      table.insert(out, 1, d.run)
    end
  end
  return out
end

--- Instances carrying `ephrun-detach=id` (or `ephrun-run=id`) at `providers`.
---@param id string
---@param providers string[]
---@return {provider: string, inst: table}[]
function M.by_tags(id, providers)
  local out = {}
  for _, name in ipairs(providers) do
    local ok, cloud = pcall(ephrun.provider, name)
    if ok and type(cloud.impl.list) == "function" then
      for _, key in ipairs { "ephrun-detach", "ephrun-run" } do
        local lok, list = pcall(cloud.impl.list, { tags = { [key] = id } }, cloud.opts)
        if lok then
          for _, inst in ipairs(list) do
            if (inst.kind or "instance") == "instance" then out[#out + 1] = { provider = name, inst = inst } end
          end
        end
        if #out > 0 then return out end
      end
    end
  end
  return out
end

-- ------------------------------------------------------------------ the instance

--- The instance of a found run, as an ephrun.Instance (destroy, ssh, cost).
---@param rec table from `find`
---@return ephrun.Instance
function M.instance(rec)
  local info, row = rec.info or {}, rec.row
  local cloud = ephrun.provider(info.provider or row.provider, info.provider_opts)
  local raw = {}
  if row and type(row.extra) == "table" then
    for k, v in pairs(row.extra) do if k ~= "detach" then raw[k] = v end end
  end
  for k, v in pairs(info.raw or {}) do raw[k] = v end
  raw.id = raw.id or info.instance or (row and row.id)
  raw.tags = raw.tags or (row and row.tags) or {}
  local key = info.key_dir and ephrun.fs.read(info.key_dir .. "/id_ed25519")
  -- Without the journal row, the endpoint is the one the run recorded.
  if not (row and type(row.extra) == "table") then
    raw.host, raw.port, raw.user, raw.login_user = info.host, info.port, info.user, info.user
  end
  local o = cloudlib._rebuild(cloud, { id = raw.id, raw = raw, tags = raw.tags, key_dir = info.key_dir,
    host_key = info.host_key, client_key = key, journal_key = row and row.key, keep = true,
    hourly = info.hourly or (row and row.hourly_price), started = info.started or (row and (row.created or row.intended)),
    expires = info.expires or (row and row.expires_at), ttl = info.ttl, cost_before = info.cost_before })
  -- The address the run reached the job at, which its pinned host key belongs to.
  if info.host then o.host, o.port, o.user = info.host, info.port or o.port, info.user or o.user end
  return o
end

--- What the provider says of the instance now: state ("terminated" when it
--- no longer knows it) and, where it tells, the reason of its last change.
---@param inst ephrun.Instance
---@return {state: string, reason?: string, raw?: table}
function M.provider_state(inst)
  local get = inst.cloud.impl.get
  if not get then return { state = "unknown" } end
  local cur = get(inst.id, inst.cloud.opts)
  if not cur then return { state = "terminated" } end
  local reason = cur.state_reason
  return { state = cur.state or "unknown", reason = reason ~= "" and reason or nil, raw = cur }
end

--- A session to the instance with the run's key and its pinned host key.
---@param inst ephrun.Instance
---@param opts? {timeout?: number|string}
function M.session(inst, opts)
  if not inst.client_key then
    error(("the run's key is not here (%s/id_ed25519): copy the launching machine's %s to this machine's "
      .. "EPHRUN_HOME to reach the job"):format(tostring(inst.key_dir), tostring(inst.key_dir)), 0)
  end
  return ephrun.ssh.connect { host = inst.host, port = inst.port, user = inst.user, key = inst.client_key,
    host_key = inst.host_key, timeout = (opts or {}).timeout or "20s" }
end

-- `done` with the word LOG standing for the job's log path, quoted.
local function done_command(info)
  if not info.done then return nil end
  return (info.done:gsub("%f[%w_]LOG%f[^%w_]", function() return q(info.job.log) end))
end

--- The job's state, over SSH, in one round trip: `{state = "running" |
--- "exited" | "gone", exit_code?, interrupted? (the spot notice), done?, tail}`.
---@param sh table a session
---@param info table the run's detach info
---@param lines? integer how many log lines (default 10)
function M.job_state(sh, info, lines)
  local job = info.job
  local log, sf = q(job.log), q(job.status_file)
  local done = done_command(info)
  local script = table.concat({
    "if [ -f " .. sf .. " ]; then echo \"exit $(cat " .. sf .. ")\";",
    "elif kill -0 " .. math.tointeger(job.pid) .. " 2>/dev/null && ! ps -o stat= -p " .. math.tointeger(job.pid)
      .. " 2>/dev/null | grep -q '^Z'; then echo running; else echo gone; fi",
    "if [ -f " .. q(job.log .. ".interrupted") .. " ]; then echo \"interrupted $(head -c 400 "
      .. q(job.log .. ".interrupted") .. " | tr '\\n' ' ')\"; fi",
    done and ("if ( " .. done .. " ) >/dev/null 2>&1; then echo done; fi") or "",
    "echo @@tail; tail -n " .. math.tointeger(lines or 10) .. " -- " .. log .. " 2>/dev/null; true",
  }, "\n")
  local r = sh:run(script, { stream = false, check = false })
  local head, tail = r.stdout:match("^(.-)@@tail\n(.*)$")
  head, tail = head or r.stdout, tail or ""
  local st = { tail = tail }
  local code = head:match("exit (%-?%d+)")
  if code then
    st.state, st.exit_code = "exited", tonumber(code)
  elseif head:match("running") then
    st.state = "running"
  else
    st.state = "gone"
  end
  st.interrupted = head:match("interrupted ([^\n]*)")
  st.done = head:match("\ndone") ~= nil or head:match("^done") ~= nil
  return st
end

-- ------------------------------------------------------------------ the recipe again

local function load_recipe_chunk(src)
  if src.kind == "file" then
    local chunk, err = loadfile(src.path, "t")
    if not chunk then error(("cannot load recipe %s again: %s"):format(src.path, err), 0) end
    return chunk, src.path
  elseif src.kind == "pack" then
    local path, _, _, text = require("ephrun.packs").recipe_file(src.path)
    return assert(load(text, "@" .. path, "t")), path
  elseif src.kind == "builtin" then
    local text = require("ephrun._core").builtin_text(src.path)
    if not text then error(("this ephrun has no built-in recipe %s any more"):format(src.path), 0) end
    return assert(load(text, "@" .. src.path, "t")), src.path
  end
  error(("the journal does not say where recipe %s came from"):format(tostring(src.name)), 0)
end

--- Loads the run's recipe again and binds its journalled parameters plus
--- `extra` name=value arguments (secrets are read again: their default
--- source, or a prompt). Returns the recipe and the parameters.
---@param info table
---@param extra? string[]
---@return table recipe, table params
function M.recipe(info, extra)
  local chunk, path = load_recipe_chunk(info.recipe or {})
  local ok, def = pcall(chunk)
  if not ok then error(("recipe %s failed to load: %s"):format(path, tostring(def)), 0) end
  if not ephrun.is_recipe(def) then error(("%s does not return an ephrun.recipe"):format(path), 0) end
  local args, given = {}, {}
  for _, a in ipairs(extra or {}) do given[a:match("^([^=]+)=") or a] = true end
  for _, a in ipairs(info.params or {}) do
    local name = a:match("^([^=]+)=")
    if name and def.params[name] and not given[name] then args[#args + 1] = a end
  end
  for _, a in ipairs(extra or {}) do args[#args + 1] = a end
  local p, err = require("ephrun.params").bind(def, args)
  if not p then
    error(("recipe %s: %s (give the parameter after the run id: ephrun finish %s name=value)"):format(def.name,
      err, info.run), 0)
  end
  return def, p
end

---@class ephrun.DetachedRun
---@field id string the run id (`ephrun status ID`)
---@field info table what the run journalled (recipe, params, job, instance, ...)
---@field instance ephrun.Instance
---@field job {pid: integer, log: string, status_file: string}
---@field log string the job's log on the instance
---@field interruptions integer spot interruptions so far
---@field gone boolean the instance no longer exists
---@field reason? string the provider's reason for its last state change
local Run = {}
Run.__index = Run

--- A session to the instance (opened once).
function Run:ssh()
  if not self._sh then self._sh = M.session(self.instance) end
  return self._sh
end

--- The job's state (see `ephrun.detach.job_state`).
function Run:state(lines)
  return M.job_state(self:ssh(), self.info, lines)
end

--- True when the run's done test passes (its `done` shell test, else the job exited 0).
function Run:done()
  local st = self:state(0)
  if self.info.done then return st.done end
  return st.state == "exited" and st.exit_code == 0
end

--- The cost of the whole run so far in USD: every instance it had.
function Run:cost()
  return M.cost(self.rec)
end

--- The object a recipe's `finish(p, run)` and `on_interrupt(p, run)` get.
function M.run_object(rec, inst, pstate)
  local info = rec.info or {}
  return setmetatable({ id = rec.id, rec = rec, info = info, instance = inst, job = info.job,
    log = info.job and info.job.log, interruptions = info.interruptions or 0,
    gone = pstate and pstate.state == "terminated" or false, reason = pstate and pstate.reason }, Run)
end

--- USD of every instance of the run, from the journal (hourly × time alive).
function M.cost(rec)
  local total, known = 0, false
  local now = ephrun.time.now()
  for _, r in ipairs(rec.rows or {}) do
    if r.hourly_price then
      known = true
      local from = r.created or r.intended
      local to = r.destroyed or now
      total = total + r.hourly_price * math.max(0, to - from) / 3600
    end
  end
  return known and total or nil
end

--- Runs the recipe's `on_interrupt(p, run)` for a run whose spot instance got
--- its notice (or is gone with the spot reason): launches inside it carry the
--- run's id and record it as the same run. Returns true when it ran.
function M.interrupted(rec, inst, pstate, extra)
  local def, p = M.recipe(rec.info, extra)
  if type(def.on_interrupt) ~= "function" then
    ephrun.log.warn("run %s was interrupted (spot) and recipe %s has no on_interrupt: nothing relaunches it",
      rec.id, def.name)
    return false
  end
  -- One relaunch per interruption, whichever watcher (attach, status, another shell) sees it first.
  local lok, lock = pcall(require("ephrun.lock").lock, "ephrun-relaunch-" .. rec.id, { lease = "15m" })
  if not lok then
    ephrun.log.warn("run %s: not relaunching it here: %s", rec.id, tostring(lock))
    return false
  end
  local _ <close> = lock
  local fresh = M.find(rec.id)
  if fresh and fresh.row and rec.row and fresh.row.key ~= rec.row.key then
    ephrun.log.info("run %s was relaunched meanwhile (instance %s)", rec.id, tostring(fresh.row.id))
    return true
  end
  local run = M.run_object(rec, inst, pstate)
  run.interruptions = run.interruptions + 1
  ephrun.log.warn("run %s: spot interruption %d; running %s's on_interrupt", rec.id, run.interruptions, def.name)
  cloudlib._adopted = rec.id
  M._context = { recipe = rec.info.recipe, params = rec.info.params, interruptions = run.interruptions,
    cost_before = M.cost(rec), done = rec.info.done, done_fn = rec.info.done_fn, checkpoint = rec.info.checkpoint }
  rawset(ephrun, "recipe_name", def.name)
  local ok, err = pcall(def.on_interrupt, p, run)
  cloudlib._adopted, M._context = nil, nil
  -- The interrupted instance is gone or going: the journal stops counting it.
  if inst.journal_key and inst.journal_key ~= 0 then pcall(ephrun.journal.destroyed, inst.journal_key) end
  if not ok then error(err, 0) end
  return true
end

--- Removes the key directories of a run that is over (every instance it had).
---@param rec table from `find`
function M.forget(rec)
  local dirs = { [run_dir(rec.id)] = true }
  for _, r in ipairs(rec.rows or {}) do
    local d = type(r.extra) == "table" and type(r.extra.detach) == "table" and r.extra.detach.key_dir
    if d then dirs[d] = true end
  end
  for dir in pairs(dirs) do
    if ephrun.fs.exists(dir) then ephrun.fs.remove(dir, { recursive = true }) end
  end
end

-- ------------------------------------------------------------------ status


--- The `words` a command got (`ephrun status RUN n=v ...`): the run id, its
--- name=value options as a table, and the same as a list of arguments.
---@param w string words separated by the unit separator
---@return string|nil run, table<string,string> opts, string[] args
function M.words(w)
  local run, opts, rest = nil, {}, {}
  for word in (w or ""):gmatch("[^\31]+") do
    local k, v = word:match("^([%w_]+)=(.*)$")
    if k then
      opts[k] = v
      rest[#rest + 1] = word
    elseif not run then
      run = word
    else
      error(("unexpected argument '%s' (one run id, then name=value)"):format(word), 0)
    end
  end
  return run, opts, rest
end

local function providers_to_scan(opts, rec)
  local names, seen = {}, {}
  local function add(n)
    if n and n ~= "" and not seen[n] then seen[n] = true; names[#names + 1] = n end
  end
  for n in (opts.providers or ""):gmatch("[^,%s]+") do add(n) end
  if rec and rec.info then add(rec.info.provider) end
  for _, r in ipairs(ephrun.journal.resources {}) do add(r.provider) end
  add("local")
  return names
end

-- Why an instance that is gone went, and the word status shows for it.
local function gone_reason(rec, ps, now)
  if ps.reason == "Server.SpotInstanceTermination" then return "interrupted", "a spot interruption ended it" end
  local row = rec.row
  local why
  if ps.reason == "Client.InstanceInitiatedShutdown" then
    why = "its lifetime timer (TTL) shut it down"
  elseif row and row.status == "destroyed" then
    why = "it was destroyed by `ephrun reap` or a cleanup" .. (row.error and (" (" .. row.error .. ")") or "")
  elseif row and row.expires_at and row.expires_at <= now then
    why = "its TTL passed and its lifetime timer (or the reaper) ended it"
  elseif ps.reason then
    why = "the provider ended it (" .. ps.reason .. ")"
  else
    why = "it was ended outside this run (TTL, reaper or the provider's scheduler)"
  end
  return "forced", why
end

-- A run its TTL or the provider ended had nobody to say so when it happened:
-- the first status that finds it gone sends `terminated` (once per run, marked
-- in the run's directory). `ephrun reap` sends its own when it destroys one.
local function notify_forced(id, out, row)
  if row and row.status == "destroyed" then return end
  local dir = run_dir(id)
  if not ephrun.fs.exists(dir) or ephrun.fs.exists(dir .. "/forced.notified") then return end
  require("ephrun.notify").send("terminated", { recipe = out.recipe, run_id = id, provider = out.provider,
    id = out.instance, detail = out.why })
  ephrun.fs.write(dir .. "/forced.notified", out.why .. "\n", { mode = "0600" })
end

--- The status of run `id` as a table (what --json prints).
function M.report(id, opts)
  opts = opts or {}
  local now = ephrun.time.now()
  local rec = M.find(id)
  if not rec then return M.from_tags(id, opts, now) end
  local info, row = rec.info or {}, rec.row
  local inst = M.instance(rec)
  local out = { run = id, recipe = (info.recipe or {}).name or (row and row.recipe), provider = inst.cloud.name,
    instance = inst.id, detached = rec.info ~= nil, interruptions = info.interruptions, unknown = ephrun.json.array() }
  local born = inst.started or (row and common.born(row))
  out.age = born and (now - born) or nil
  out.ttl_left = inst.expires and (inst.expires - now) or nil
  out.expires_at = inst.expires
  out.cost = M.cost(rec) or inst:cost()
  local ok, ps = pcall(M.provider_state, inst)
  if not ok then
    ps = { state = "unknown" }
    out.unknown[#out.unknown + 1] = "the instance's state: " .. tostring(ps)
  end
  out.state, out.reason = ps.state, ps.reason
  if row and row.status == "finished" then
    out.status = "finished"
  elseif ps.state == "terminated" then
    out.status, out.why = gone_reason(rec, ps, now)
    if row and row.destroyed then out.cost = M.cost(rec) end
    if out.status == "forced" then notify_forced(id, out, row) end
  elseif not rec.info then
    out.status = row and row.status or "unknown"
  end
  if out.status == nil and info.job then
    out.log = info.job.log
    local sok, sh = pcall(M.session, inst)
    if not sok then
      out.status = "unknown"
      out.unknown[#out.unknown + 1] = "the job's state and log: " .. tostring(sh)
    else
      local jok, st = pcall(M.job_state, sh, info, tonumber(opts.lines) or 10)
      sh:close()
      if not jok then
        out.status = "unknown"
        out.unknown[#out.unknown + 1] = "the job's state: " .. tostring(st)
      else
        out.job = { state = st.state, exit_code = st.exit_code, done = st.done, interrupted = st.interrupted,
          pid = info.job.pid }
        out.log_tail = st.tail
        if st.interrupted then
          out.status = "interrupted"
        elseif st.done then
          out.status = "done"
        elseif st.state == "exited" then
          out.status = "exited " .. tostring(st.exit_code)
        else
          out.status = st.state
        end
      end
    end
  end
  out.status = out.status or "unknown"
  return out, rec, inst, ps
end

--- What the provider's tags say of run `id` when this machine has neither
--- its journal row nor its key.
function M.from_tags(id, opts, now)
  local names = providers_to_scan(opts)
  local found = M.by_tags(id, names)
  if #found == 0 then
    error(("no run %s: this journal (%s) does not know it, there is no %s/runs/%s/detach.json, and no instance "
      .. "tagged ephrun-detach=%s or ephrun-run=%s at %s. From another machine, name the run's provider: "
      .. "ephrun status %s providers=aws"):format(id, ephrun.journal.path(), require("ephrun.cloud").state_dir(), id,
      id, id, table.concat(names, ", "), id), 0)
  end
  local f = found[#found]
  local inst, tags = f.inst, f.inst.tags or {}
  local cloud = ephrun.provider(f.provider)
  local hourly = (pcall(cloud.price, cloud, { plan = inst.plan }) and cloud:price { plan = inst.plan }) or nil
  local expires = common.parse_iso8601(tags["ephrun-expires"])
  local born = type(inst.created) == "number" and inst.created or nil
  local out = { run = id, recipe = tags["ephrun-recipe"], provider = f.provider, instance = tostring(inst.id),
    state = inst.state, reason = inst.state_reason ~= "" and inst.state_reason or nil,
    detached = tags["ephrun-detach"] ~= nil, from_tags = true,
    age = born and (now - born) or nil, ttl_left = expires and (expires - now) or nil, expires_at = expires,
    cost = hourly and born and hourly * (now - born) / 3600 or nil, status = inst.state == "terminated" and "forced"
      or "unknown" }
  out.unknown = ephrun.json.array()
  out.unknown[1] = ("the job's state and its log: they need the run's key, which stays on the machine that "
    .. "launched it (EPHRUN_HOME/runs/%s there). Run `ephrun status %s` there, or copy that directory to %s/runs/%s "
    .. "here"):format(tags["ephrun-run"] or id, id, require("ephrun.cloud").state_dir(), id)
  return out
end

--- Writes a report (from `report`) for a person.
function M.show(r)
  local w = io.stdout
  w:write(("run %s  recipe %s  %s\n"):format(r.run, r.recipe or "?", r.status))
  w:write(("  instance  %s %s  %s%s\n"):format(r.provider, r.instance, r.state,
    r.reason and (" (" .. r.reason .. ")") or ""))
  w:write(("  age %s  cost so far %s  TTL left %s\n"):format(common.short_duration(r.age), common.money(r.cost),
    r.ttl_left and common.short_duration(r.ttl_left) or "none"))
  if r.why then w:write("  ended: ", r.why, "\n") end
  if r.job then
    local j = r.job
    w:write(("  job       %s (pid %s, log %s)%s%s\n"):format(j.state == "exited" and ("exited " .. j.exit_code)
      or j.state, tostring(j.pid), r.log, j.done and ", done" or "",
      j.interrupted and (", spot notice " .. j.interrupted) or ""))
  end
  if (r.interruptions or 0) > 0 then w:write(("  spot interruptions so far: %d\n"):format(r.interruptions)) end
  if r.log_tail and r.log_tail ~= "" then
    w:write("  last log lines:\n")
    for line in r.log_tail:gmatch("[^\n]+") do w:write("    ", line, "\n") end
  end
  for _, u in ipairs(r.unknown or {}) do w:write("  unknown: ", u, "\n") end
  if r.status ~= "finished" and r.status ~= "forced" then
    w:write(("  next: ephrun attach %s   |   ephrun finish %s\n"):format(r.run, r.run))
  end
end

return M
