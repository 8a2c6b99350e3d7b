--- ephrun.ssh: verified SSH sessions, streamed remote commands, SFTP and sync.
--- Host keys are always verified (a pinned key or known_hosts). Connecting is
--- an effect: under --dry-run nothing connects and a plan session, made from
--- the real session's method table, records what each call would do.
local native = require "ephrun._ssh"
local log = require "ephrun.log"
local time = require "ephrun.time"
local core = require "ephrun._core"

---@class ephrun.ssh
local M = {}

---@class ephrun.ssh.Session
---@field host string
---@field lifetime? {expires: number, ttl: number, what: string} set by instance:ssh(); errors past it say so
---@field instance? {provider: string, id: string, plan?: string} set by instance:ssh(); names the instance in measured figures
local Session = {}
Session.__index = Session

local function seconds(v, what)
  if v == nil or type(v) == "number" then return v end
  local s, why = time.parse_duration(v)
  if not s then error(what .. ": " .. why, 3) end
  return s
end

local function raise(msg, kind, level)
  error(setmetatable({ message = msg, kind = kind }, {
    __tostring = function(e) return e.message end,
  }), level)
end

local function check_opts(opts, fname)
  if type(opts) ~= "table" then error(fname .. " expects a table of options", 3) end
  if not opts.host_key and not opts.known_hosts and not opts.insecure_accept_any_host_key then
    error(fname .. ": give host_key (a .pub line or SHA256:...) or known_hosts; there is no accept-anything default", 3)
  end
  if opts.insecure_accept_any_host_key then
    log.warn("ssh %s: insecure_accept_any_host_key is set: the server's identity is NOT verified", opts.host)
    core.plan_add { kind = "warning", what = "SSH to " .. tostring(opts.host) .. " accepts any host key (insecure)" }
  end
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.timeout = seconds(opts.timeout, "timeout")
  o.deadline = seconds(opts.deadline, "deadline")
  if o.passphrase_env then
    o.passphrase = require("ephrun").secret(o.passphrase_env)
    o.passphrase_env = nil
  end
  return o
end

-- An encrypted key_file needs its passphrase: EPHRUN_SSH_PASSPHRASE, else the
-- terminal. Only a connection that really happens asks.
local function unlock_key(o)
  if not o.key_file or o.passphrase then return end
  local ok, info = pcall(require("ephrun.keys").load, o.key_file)
  if not ((ok and info.encrypted) or (not ok and tostring(info):find("encrypted", 1, true))) then return end
  local env = os.getenv("EPHRUN_SSH_PASSPHRASE")
  if env and env ~= "" then
    core.secret_add("EPHRUN_SSH_PASSPHRASE", env)
    o.passphrase = env
    return
  end
  local pass, why = core.read_password("Passphrase for " .. o.key_file .. ": ")
  if not pass then
    error(o.key_file .. " is encrypted and there is " .. why .. ": set EPHRUN_SSH_PASSPHRASE or passphrase_env", 0)
  end
  o.passphrase = pass
end

local function wrap(s, opts)
  return setmetatable({ _s = s, host = opts.host, port = opts.port or 22, user = opts.user }, Session)
end

local function host_key_source(o)
  if o.host_key then return "pinned host key" end
  if o.known_hosts then return "host key checked against " .. o.known_hosts end
  return "ANY host key (insecure)"
end

-- Connecting is the effect: under --dry-run the plan session stands in.
local function open(o, verb, connect)
  return require("ephrun").effect {
    kind = "ssh", what = ("%s %s@%s:%d (%s)"):format(verb, o.user or "?", o.host, o.port or 22, host_key_source(o)),
    where = o.host .. ":" .. tostring(o.port or 22),
    run = function()
      unlock_key(o)
      local s, err, kind = connect(o)
      if not s then raise(err, kind, 0) end
      return wrap(s, o)
    end,
    placeholder = function() return M.plan_session(o.host, o) end,
  }
end

--- Connects once. Raises on failure: the message says refused, timeout,
--- banner, auth or host-key mismatch (with both fingerprints).
---@param opts {host: string, port?: integer, user?: string, key?: string, key_file?: string, passphrase?: string, passphrase_env?: string, agent?: boolean, host_key?: string, known_hosts?: string, insecure_accept_any_host_key?: boolean, timeout?: number|string, keepalive?: integer}
---@return ephrun.ssh.Session
function M.connect(opts)
  return open(check_opts(opts, "ssh.connect"), "connect to", native.connect)
end

--- Polls until the server answers and accepts the key (backoff 100 ms → 1 s),
--- or `deadline` (default 5m) passes. A signal interrupts it.
---@param opts {host: string, port?: integer, user?: string, key?: string, key_file?: string, agent?: boolean, host_key?: string, known_hosts?: string, deadline?: number|string}
---@return ephrun.ssh.Session
function M.wait(opts)
  local o = check_opts(opts, "ssh.wait")
  o.deadline = o.deadline or 300
  return open(o, "wait for SSH on", native.wait)
end

-- known_hosts entries for host:port, read as a connection reads them (for the
-- static provider's checks before anything connects).
M._known_host_entries = native._known_host_entries

--- What a sync of `dir` would consider (files, bytes, excluded), without a network.
---@param dir string
---@param opts? {exclude?: string[], include?: string[], gitignore?: boolean}
---@return {files_total: integer, bytes_total: integer, excluded: integer}
function M.scan_local(dir, opts)
  return native.scan_local(dir, opts or {})
end

--- The patterns no sync (nor deploy-to-server's tarball) ever sends unless an
--- `include` names them: `.env*`, `*.pem`, `id_*`, `.git`, matched against every
--- path component, ignoring case. A fresh copy each call.
---@return string[]
function M.never_send()
  return native.never_send()
end

--- Whether `path` (relative, '/'-separated) is never sent: some component of it
--- matches `never_send()`, ignoring case (`.ENV`, `keys/ID_RSA`, `key.PEM`).
---@param path string
---@return boolean
function M.never_sent(path)
  return native.never_sent(path)
end

-- A session to a launched instance knows when its lifetime ends (`lifetime`,
-- set by ephrun.cloud): a failure past that time says the timer ended the
-- instance, instead of only `transport read`.
local function explain(self, msg)
  local l = rawget(self, "lifetime")
  if not l or time.now() < l.expires - 1 then return msg end
  return ("%s reached the end of its lifetime (ttl %s, at %s): its lifetime timer ended it while this ran; "
    .. "give it a longer ttl. (%s)"):format(l.what, time.format_duration(math.tointeger(l.ttl) or l.ttl),
    time.iso8601(l.expires), msg)
end

local function call(self, name, ...)
  local r, err, kind = self._s[name](self._s, ...)
  if r == nil and err then raise(explain(self, err), kind, 3) end
  return r
end

local function last_lines(text, n)
  local lines = {}
  for l in text:gmatch("[^\n]+") do lines[#lines + 1] = l end
  return table.concat(lines, "\n", math.max(1, #lines - n + 1))
end

--- Runs `cmd` remotely, streaming its output line by line with a host prefix.
--- Environment values travel through the SSH channel, never in the command
--- line. A non-zero exit raises (naming the command, code and last stderr
--- lines) unless `check=false`. On timeout or a signal the remote process is stopped.
---@param cmd string
--- With `measure=true` (or a table {paths?, swap_warn?, disk_warn?}) the
--- instance is sampled once a second while `cmd` runs (see ephrun.measure):
--- the result also has `peak_mem`, `peak_swap`, `cpu_avg`, `cpu_peak`,
--- `samples` and `warnings`, and the summary and warnings are logged.
---@param cmd string
--- With `stdout=true` the remote stdout is written to ephrun's own stdout, line by line, instead of the log.
---@param opts? {env?: table<string,string>, cwd?: string, stdin?: string, timeout?: number|string, check?: boolean, stream?: boolean, prefix?: string, stdout?: boolean, measure?: boolean|{paths?: string[], swap_warn?: number, disk_warn?: number}}
---@return {code: integer, signal?: string, stdout: string, stderr: string, duration: number, peak_mem?: integer, peak_swap?: integer, cpu_avg?: number, cpu_peak?: number, samples?: table[], warnings?: string[]}
function Session:run(cmd, opts)
  opts = opts or {}
  if opts.measure then
    local plain = {}
    for k, v in pairs(opts) do plain[k] = v end
    plain.measure = nil
    return (self:measure(function() return self:run(cmd, plain) end, opts.measure, cmd))
  end
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.measure = nil
  o.timeout = seconds(opts.timeout, "timeout")
  if o.prefix == nil then o.prefix = "[" .. self.host .. "] " end
  local r = call(self, "run", cmd, o)
  if opts.check ~= false and (r.code ~= 0 or r.signal) then
    local what = r.signal and ("was killed by SIG" .. r.signal) or ("exited with code " .. r.code)
    local tail = last_lines(r.stderr, 10)
    raise(explain(self, ("command `%s` on %s %s%s"):format(cmd, self.host, what,
      tail ~= "" and (":\n" .. tail) or "")), "exit", 2)
  end
  return r
end

-- The session being measured: a run inside measure() is not measured again.
local measuring = setmetatable({}, { __mode = "k" })

--- Samples the instance once a second (CPU per core, load, memory, swap,
--- disk on `opts.paths`, network; see ephrun.measure) while `fn(self)` runs,
--- then logs a summary and warnings (swap in use, the OOM killer, a disk over
--- 90%). Returns fn's first result (a table gets the figures copied onto it)
--- and the figures.
---@param fn fun(sh: ephrun.ssh.Session): any
---@param opts? boolean|{paths?: string[], swap_warn?: number, disk_warn?: number, max?: number}
---@return any result, table figures
function Session:measure(fn, opts, what)
  if measuring[self] then return fn(self), nil end
  local mopts = type(opts) == "table" and opts or {}
  local m = require "ephrun.measure"
  local h = m.start(self, mopts)
  h.command = what
  measuring[self] = true
  local ok, r = pcall(fn, self)
  measuring[self] = nil
  local label = "job"
  if what then
    local first = what:match("^[^\n]*")
    label = "`" .. (#first > 60 and first:sub(1, 57) .. "..." or first) .. (first ~= what and " ..." or "") .. "`"
  end
  local fok, figures = pcall(m.finish, h, label, mopts, ok and type(r) == "table" and r or nil)
  if not ok then
    if not fok then log.debug("measure: could not stop the sampler: %s", tostring(figures)) end
    error(r, 0)
  end
  if not fok then error(figures, 0) end
  return r, figures
end

--- Starts `cmd` detached (setsid/nohup): it survives the connection. Returns a
--- job {pid, log, status_file} that a later run can check, tail and wait for.
---@param cmd string
---@param opts? {log?: string, env?: table<string,string>, cwd?: string}
---@return {pid: integer, log: string, status_file: string}
function Session:run_detached(cmd, opts) return call(self, "run_detached", cmd, opts or {}) end

--- {alive=bool, exit_code=n|nil} of a detached job.
function Session:job_status(job) return call(self, "job_status", job) end
--- The last `lines` (default 20) lines of a detached job's log.
function Session:job_tail(job, lines) return call(self, "job_tail", job, lines) end
--- Waits for a detached job to end; returns its exit code (-1 if unknown).
function Session:job_wait(job, timeout) return call(self, "job_wait", job, seconds(timeout, "timeout")) end
--- Uploads a file atomically, keeping its mode; returns bytes sent.
function Session:upload(local_path, remote) return call(self, "upload", local_path, remote) end
--- Downloads a file atomically, keeping its mode; returns bytes received.
function Session:download(remote, local_path) return call(self, "download", remote, local_path) end
--- Writes `data` to a remote file atomically.
function Session:put_string(remote, data, mode) return call(self, "put_string", remote, data, mode) end
--- Reads a whole remote file.
function Session:get_string(remote) return call(self, "get_string", remote) end
--- mkdir -p on the remote.
function Session:mkdir_p(remote, mode) return call(self, "mkdir_p", remote, mode) end
--- {type, size, mode, mtime} of a remote path, or false when it does not exist.
function Session:stat(remote) return call(self, "stat", remote) end
--- Removes a remote file, symlink or empty directory; false when it did not exist.
function Session:remove(remote) return call(self, "remove", remote) end

local function human(n)
  if n >= 1e9 then return ("%.1f GB"):format(n / 1e9) end
  if n >= 1e6 then return ("%.1f MB"):format(n / 1e6) end
  if n >= 1e3 then return ("%.1f kB"):format(n / 1e3) end
  return ("%d B"):format(n)
end
--- A byte count as text: "3.2 MB", "512 B".
---@type fun(n: number): string
M.human_bytes = human

--- Makes `remote_dir` hold `local_dir`: only new or changed files are sent, as
--- one tar stream. `.env*`, `*.pem`, `id_*` and `.git` (`never_send()`, in any
--- case) are never sent unless `include` names them; `.gitignore` files are
--- honoured. Prints a summary.
---@param local_dir string
---@param remote_dir string
---@param opts? {exclude?: string[], include?: string[], delete?: boolean, gitignore?: boolean, progress?: boolean}
---@return {files_total: integer, bytes_total: integer, files_sent: integer, bytes_sent: integer, deleted: integer, excluded: integer, duration: number}
function Session:sync(local_dir, remote_dir, opts)
  local st = call(self, "sync", local_dir, remote_dir, opts or {})
  log.info("sync %s → %s:%s: %d of %d files sent (%s), %d deleted, %d excluded, %s",
    local_dir, self.host, remote_dir, st.files_sent, st.files_total, human(st.bytes_sent),
    st.deleted, st.excluded, time.format_duration(st.duration))
  return st
end

--- Copies a remote file or directory to `local_path` with one tar stream.
---@return {files: integer, bytes: integer, duration: number}
function Session:fetch(remote, local_path)
  local st = call(self, "fetch", remote, local_path)
  log.info("fetch %s:%s → %s: %d files, %s", self.host, remote, local_path, st.files, human(st.bytes))
  return st
end

--- Drops and re-establishes the connection (same options).
function Session:reconnect() return call(self, "reconnect") end
--- The verified host key's SHA256 fingerprint.
function Session:fingerprint() return self._s:fingerprint() end
--- Closes the session (idempotent; also `<close>`).
function Session:close() self._s:close() end
Session.__close = Session.close

-- The native session's methods (its metatable's __index, as luaL_getmetatable
-- finds it). A native method with no wrapper above is still reachable from
-- Lua, with the same nil-message-to-error rule; the plan session below is made
-- from this completed table, so neither can fall behind the native one.
local native_methods = debug.getregistry()["ephrun.ssh.Session"].__index
for name in pairs(native_methods) do
  if Session[name] == nil then
    Session[name] = function(self, ...) return call(self, name, ...) end
  end
end

-- Under --dry-run, what each method records (a plan step, or nil for a look
-- at the session's own state) and what it returns in place of a result.
-- Arguments are those of the Session method.
local planned = {}

planned.run = function(_, cmd, opts)
  local r = { code = 0, stdout = "", stderr = "", duration = 0, dry_run = true }
  if not (opts or {}).measure then return { kind = "run", what = cmd }, r end
  r.samples, r.warnings, r.peak_mem, r.peak_swap, r.cpu_avg, r.cpu_peak = {}, {}, 0, 0, 0, 0
  return { kind = "run", what = cmd, details = { "measured: CPU, memory, swap, disk and network sampled once a second" } }, r
end
planned.run_detached = function(_, cmd, opts)
  local job_log = (opts or {}).log or "<job log>"
  return { kind = "run", what = cmd, details = { "detached: survives the connection; log " .. job_log } },
    { pid = 0, log = job_log, status_file = job_log .. ".exit", dry_run = true }
end
planned.job_status = function(_, job)
  return { kind = "read", what = "status of job " .. tostring((job or {}).log) }, { alive = false, exit_code = 0 }
end
planned.job_tail = function(_, job, lines)
  return { kind = "read", what = ("last %d lines of %s"):format(lines or 20, tostring((job or {}).log)) }, ""
end
planned.job_wait = function(_, job)
  return { kind = "wait", what = "wait for job " .. tostring((job or {}).log) }, 0
end
planned.upload = function(_, local_path, remote)
  local st = require("ephrun.fs").stat(local_path)
  return { kind = "upload", what = local_path .. " → " .. remote,
    details = st and { human(st.size or 0) } or nil }, st and st.size or 0
end
planned.download = function(_, remote, local_path)
  return { kind = "download", what = remote .. " → " .. local_path }, 0
end
planned.put_string = function(_, remote, data, mode)
  return { kind = "write", what = ("%s (%s%s)"):format(remote, human(#tostring(data)),
    mode and (", mode %o"):format(mode) or "") }, true
end
planned.get_string = function(_, remote)
  return { kind = "read", what = remote }, ""
end
planned.mkdir_p = function(_, remote, mode)
  return { kind = "mkdir", what = "mkdir -p " .. remote .. (mode and (" (mode %o)"):format(mode) or "") }, true
end
-- A path is taken not to exist, so the plan shows the steps that would create it.
planned.stat = function(_, remote)
  return { kind = "read", what = "stat " .. remote }, false
end
planned.remove = function(_, remote)
  return { kind = "remove", what = remote }, true
end
-- The sync is shown with what it would consider locally: files, bytes, excludes.
planned.sync = function(_, local_dir, remote_dir, opts)
  opts = opts or {}
  local st = M.scan_local(local_dir, opts)
  local ex = M.never_send()
  for _, e in ipairs(opts.exclude or {}) do ex[#ex + 1] = e end
  st.files_sent, st.bytes_sent, st.deleted, st.duration, st.dry_run = st.files_total, st.bytes_total, 0, 0, true
  return { kind = "sync", what = local_dir .. " → " .. remote_dir, details = {
    ("%d files, %s (%d excluded)"):format(st.files_total, human(st.bytes_total), st.excluded or 0),
    "excludes: " .. table.concat(ex, " "),
  } }, st
end
planned.fetch = function(_, remote, local_path)
  return { kind = "fetch", what = remote .. " → " .. local_path }, { files = 0, bytes = 0, duration = 0, dry_run = true }
end
planned.reconnect = function(self)
  return { kind = "ssh", what = "reconnect to " .. self.host }, true
end
planned.fingerprint = function() return nil, "<host key fingerprint>" end
planned.label = function(self) return nil, self.host end
planned.is_open = function() return nil, true end
planned.close = function() return nil end

local PlanSession = { __name = "ephrun.ssh.PlanSession" }
PlanSession.__index = PlanSession

for name, real in pairs(Session) do
  if type(real) == "function" and name ~= "__close" then
    local describe = planned[name] or function(_, ...)
      local args = {}
      for i = 1, select("#", ...) do args[i] = tostring((select(i, ...))) end
      return { kind = name, what = table.concat(args, " ") }, true
    end
    PlanSession[name] = function(self, ...)
      local step, result = describe(self, ...)
      if not step then return result end
      step.where = step.where or self.host
      -- Only a dry-run makes a plan session; a real run never reaches here.
      step.run = function() error("ssh: a plan session cannot " .. name .. " (nothing is connected)", 0) end
      step.placeholder = function() return result end
      return require("ephrun").effect(step)
    end
  end
end
PlanSession.__close = PlanSession.close

-- measure() runs its function in a dry-run too, so the plan shows the steps
-- inside it; the sampler itself is one step.
PlanSession.measure = function(self, fn, _opts)
  require("ephrun").effect { kind = "measure", where = self.host,
    what = "sample CPU, memory, swap, disk and network once a second while the job runs",
    run = function() error("ssh: a plan session cannot measure (nothing is connected)", 0) end,
    placeholder = function() return true end }
  return fn(self), { samples = {}, peak_mem = 0, peak_swap = 0, cpu_avg = 0, cpu_peak = 0, warnings = {}, dry_run = true }
end

--- The recording session `connect` and `wait` return under --dry-run: it has
--- every method of a real session; each records a plan step through
--- `ephrun.effect` and returns a placeholder (`run` → `{code=0, stdout=""}`,
--- `sync` → the local scan, `stat` → false, ...).
---@param host string
---@param opts? {port?: integer, user?: string}
---@return ephrun.ssh.Session
function M.plan_session(host, opts)
  opts = opts or {}
  return setmetatable({ host = host, port = opts.port or 22, user = opts.user, dry_run = true }, PlanSession)
end

return M
