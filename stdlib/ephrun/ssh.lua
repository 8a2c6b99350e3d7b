--- ephrun.ssh: verified SSH sessions, streamed remote commands, SFTP and sync.
--- Host keys are always verified (a pinned key or known_hosts); under
--- --dry-run nothing connects and a recording session stands in.
local native = require "ephrun._ssh"
local log = require "ephrun.log"
local time = require "ephrun.time"
local core = require "ephrun._core"

local M = {}

---@class ephrun.ssh.Session
---@field host string
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
  if o.key_file and not o.passphrase and not core.dry_run() then
    local ok, info = pcall(require("ephrun.keys").load, o.key_file)
    if (ok and info.encrypted) or (not ok and tostring(info):find("encrypted", 1, true)) then
      local env = os.getenv("EPHRUN_SSH_PASSPHRASE")
      if env and env ~= "" then
        core.secret_add("EPHRUN_SSH_PASSPHRASE", env)
        o.passphrase = env
      else
        local pass, why = core.read_password("Passphrase for " .. o.key_file .. ": ")
        if not pass then
          error(o.key_file .. " is encrypted and there is " .. why ..
            ": set EPHRUN_SSH_PASSPHRASE or passphrase_env", 3)
        end
        o.passphrase = pass
      end
    end
  end
  return o
end

local function wrap(s, opts)
  return setmetatable({ _s = s, host = opts.host, port = opts.port or 22, user = opts.user }, Session)
end

--- Connects once. Raises on failure: the message says refused, timeout,
--- banner, auth or host-key mismatch (with both fingerprints).
---@param opts {host: string, port?: integer, user?: string, key?: string, key_file?: string, passphrase?: string, passphrase_env?: string, agent?: boolean, host_key?: string, known_hosts?: string, insecure_accept_any_host_key?: boolean, timeout?: number|string, keepalive?: integer}
---@return ephrun.ssh.Session
function M.connect(opts)
  local o = check_opts(opts, "ssh.connect")
  if core.dry_run() then return require("ephrun.cloud").plan_session(o.host) end
  local s, err, kind = native.connect(o)
  if not s then raise(err, kind, 2) end
  return wrap(s, o)
end

--- Polls until the server answers and accepts the key (backoff 100 ms → 1 s),
--- or `deadline` (default 5m) passes. A signal interrupts it.
---@param opts {host: string, port?: integer, user?: string, key?: string, key_file?: string, agent?: boolean, host_key?: string, known_hosts?: string, deadline?: number|string}
---@return ephrun.ssh.Session
function M.wait(opts)
  local o = check_opts(opts, "ssh.wait")
  o.deadline = o.deadline or 300
  if core.dry_run() then return require("ephrun.cloud").plan_session(o.host) end
  local s, err, kind = native.wait(o)
  if not s then raise(err, kind, 2) end
  return wrap(s, o)
end

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

local function call(self, name, ...)
  local r, err, kind = self._s[name](self._s, ...)
  if r == nil and err then raise(err, kind, 3) end
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
---@param opts? {env?: table<string,string>, cwd?: string, stdin?: string, timeout?: number|string, check?: boolean, stream?: boolean, prefix?: string}
---@return {code: integer, signal?: string, stdout: string, stderr: string, duration: number}
function Session:run(cmd, opts)
  opts = opts or {}
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.timeout = seconds(opts.timeout, "timeout")
  if o.prefix == nil then o.prefix = "[" .. self.host .. "] " end
  local r = call(self, "run", cmd, o)
  if opts.check ~= false and (r.code ~= 0 or r.signal) then
    local what = r.signal and ("was killed by SIG" .. r.signal) or ("exited with code " .. r.code)
    local tail = last_lines(r.stderr, 10)
    raise(("command `%s` on %s %s%s"):format(cmd, self.host, what,
      tail ~= "" and (":\n" .. tail) or ""), "exit", 2)
  end
  return r
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

return M
