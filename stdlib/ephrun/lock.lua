--- The team lock: `ephrun.lock(name, {lease=...})` makes sure one run at a time
--- does a job ("one build at a time"), across processes (the file backend, under
--- `$EPHRUN_HOME/locks/`) or across a team (the S3 backend: an object written
--- with `If-None-Match: *`). The lock names its holder (user, host, run id,
--- since, lease), is renewed while the run lives, released by the run's cleanup,
--- and may be taken over once its lease has expired (its run was killed).
local ephrun = require "ephrun"

local M = {}

local DEFAULT_LEASE = 300

---@class ephrun.LockHolder
---@field name string
---@field user string
---@field host string
---@field run_id string
---@field recipe string
---@field pid integer
---@field since number epoch seconds it was taken
---@field lease number seconds a renewal extends it by
---@field expires number epoch seconds it lapses unless renewed

---@class ephrun.LockOpts
---@field lease? number|string how long the lock outlives a silent holder (default 5m); renewed every third of it
---@field backend? "file"|"s3" default "file"
---@field bucket? string S3 backend: the bucket
---@field key? string S3 backend: the object key (default `ephrun-locks/<name>.json`)
---@field session? table S3 backend: an `ephrun.aws` session (default `aws.session()`)

local function seconds(v, what)
  if type(v) == "number" then return v end
  local s, err = ephrun.time.parse_duration(tostring(v))
  if not s then error(("ephrun.lock: %s: %s"):format(what, err), 3) end
  return s
end

local function check_name(name)
  if type(name) ~= "string" or not name:match("^[%w][%w._-]*$") or #name > 128 then
    error(("ephrun.lock: the name must be letters, digits, '.', '_' or '-' (got %q)"):format(tostring(name)), 3)
  end
end

--- How long until `holder`'s lease lapses (negative once it has).
---@param holder ephrun.LockHolder
---@param now? number
---@return number
function M.left(holder, now)
  return (tonumber(holder.expires) or 0) - (now or ephrun.time.now())
end

--- "user@host (run R, since T)" for messages.
---@param holder ephrun.LockHolder
---@return string
function M.describe(holder)
  return ("%s@%s (run %s of %s, pid %s, since %s)"):format(holder.user or "?", holder.host or "?",
    holder.run_id or "?", holder.recipe or "?", tostring(holder.pid or "?"),
    holder.since and ephrun.time.iso8601(holder.since) or "?")
end

local function refuse(name, holder, level)
  local left = M.left(holder)
  error(("lock '%s' is held by %s; its lease has %s left. Wait for that run to finish, or, if it is gone, "
    .. "`ephrun lock break %s` (the lease lapses by itself at %s)"):format(name, M.describe(holder),
    ephrun.time.format_duration(math.max(0, math.floor(left))), name, ephrun.time.iso8601(holder.expires)), level)
end

local function decode(text)
  local ok, h = pcall(ephrun.json.decode, text)
  if ok and type(h) == "table" then return h end
  return nil
end

local function new_holder(name, lease)
  local id = require("ephrun.notify").identity()
  local now = ephrun.time.now()
  local pid = tonumber((ephrun.fs.read("/proc/self/stat") or ""):match("^(%d+)"))
  return { name = name, user = id.user, host = id.host, run_id = ephrun.run_id(),
    recipe = rawget(ephrun, "recipe_name") or "?", pid = pid, since = now, lease = lease, expires = now + lease }
end

local function same(a, b)
  return a and b and a.run_id == b.run_id and a.since == b.since and a.expires == b.expires
end

-- File backend ------------------------------------------------------------

local File = {}
File.__index = File

--- The directory of the file locks: `$EPHRUN_HOME/locks`.
---@return string
function M.dir()
  return require("ephrun.cloud").state_dir() .. "/locks"
end

local function new_file(name)
  return setmetatable({ name = name, path = M.dir() .. "/" .. name .. ".json" }, File)
end

--- Where the lock lives (a path or an s3:// URL).
function File:where() return self.path end

--- The holder on record (nil when free).
function File:read()
  local text = ephrun.fs.read(self.path)
  if not text then return nil end
  return decode(text) or { name = self.name, user = "?", host = "?", expires = 0, corrupt = true }
end

-- Creates the lock file only if it does not exist. Returns true, or false when
-- someone else holds it.
--- Creates the lock only if it is free; false when another holder has it.
function File:create(holder)
  ephrun.fs.mkdir_p(M.dir(), "0700")
  local ok, err, code = ephrun.fs.write(self.path, ephrun.json.encode(holder), { mode = "0600", exclusive = true })
  if ok then return true end
  if code == "EEXIST" then return false end
  error(("lock '%s': %s"):format(self.name, err), 0)
end

-- Removes an expired holder's file, only if it is still the one we saw: it is
-- renamed aside first (one rename wins), checked, and put back if it changed.
--- Removes the expired holder `seen`, and only it.
function File:take_over(seen)
  local aside = self.path .. ".stale-" .. ephrun.run_id()
  if not os.rename(self.path, aside) then return end -- gone already, or another taker won
  local now = decode(ephrun.fs.read(aside) or "")
  if now and not same(now, seen) and M.left(now) > 0 then
    -- renewed or taken meanwhile: give it back unless a newer one appeared
    ephrun.fs.write(self.path, ephrun.fs.read(aside), { mode = "0600", exclusive = true })
  end
  ephrun.fs.remove(aside)
end

--- Extends the lease; false (and the holder on record) once the lock is no longer ours.
function File:renew(holder)
  local cur = self:read()
  if not cur or cur.run_id ~= holder.run_id then return false, cur end
  local ok, err = ephrun.fs.write(self.path, ephrun.json.encode(holder), { mode = "0600" })
  if not ok then error(("lock '%s': cannot renew: %s"):format(self.name, err), 0) end
  return true
end

--- Removes the lock if it is still ours.
function File:release(holder)
  local cur = self:read()
  if cur and cur.run_id == holder.run_id then ephrun.fs.remove(self.path) end
end

--- Removes the lock whoever holds it (`ephrun lock break`).
function File:force_remove()
  ephrun.fs.remove(self.path)
end

-- S3 backend --------------------------------------------------------------

local S3 = {}
S3.__index = S3

local function new_s3(name, opts)
  if type(opts.bucket) ~= "string" or opts.bucket == "" then
    error("ephrun.lock: backend 's3' needs bucket=\"...\"", 4)
  end
  local session = opts.session or require("ephrun.aws").session()
  return setmetatable({ name = name, bucket = opts.bucket, key = opts.key or ("ephrun-locks/" .. name .. ".json"),
    session = session }, S3)
end

--- Where the lock lives (a path or an s3:// URL).
function S3:where() return ("s3://%s/%s"):format(self.bucket, self.key) end

local function s3_call(self, method, headers, body)
  local aws = require "ephrun.aws"
  local resp, err = self.session:request("s3", {
    method = method, path = "/" .. aws.uri_encode(self.bucket) .. "/" .. aws.uri_encode(self.key, true),
    headers = headers, body = body, timeout = 20, deadline = 60,
  })
  if not resp then error(("lock '%s': %s %s: %s"):format(self.name, method, self:where(), tostring(err)), 0) end
  return resp
end

local function s3_fail(self, resp, what)
  local e = require("ephrun.aws").response_error(resp, { service = "s3", action = what .. " " .. self:where() })
  error(("lock '%s': %s %s failed: %s"):format(self.name, what, self:where(), tostring(e)), 0)
end

--- The holder on record, or nil when the lock is free.
function S3:read()
  local resp = s3_call(self, "GET")
  if resp.status == 404 then return nil end
  if not resp.ok then s3_fail(self, resp, "GET") end
  local h = decode(resp.body) or { name = self.name, user = "?", host = "?", expires = 0, corrupt = true }
  h.etag = resp.headers.etag
  self.etag_seen = resp.headers.etag
  return h
end

--- Creates the lock only if it is free; false when another holder has it.
function S3:create(holder)
  local resp = s3_call(self, "PUT", { ["If-None-Match"] = "*", ["Content-Type"] = "application/json" },
    ephrun.json.encode(holder))
  if resp.dry_run then return true end
  if resp.status == 412 or resp.status == 409 then return false end
  if not resp.ok then s3_fail(self, resp, "PUT") end
  self.etag = resp.headers.etag
  return true
end

--- Removes the expired holder `seen`, and only it.
function S3:take_over(seen)
  -- If-Match: only the expired object we read is deleted, never a renewed one.
  local resp = s3_call(self, "DELETE", { ["If-Match"] = seen.etag })
  if resp.ok or resp.status == 404 or resp.status == 412 then return end
  s3_fail(self, resp, "DELETE")
end

--- Extends the lease; false (and the holder on record) once the lock is no longer ours.
function S3:renew(holder)
  local resp = s3_call(self, "PUT", { ["If-Match"] = self.etag, ["Content-Type"] = "application/json" },
    ephrun.json.encode(holder))
  if resp.status == 412 or resp.status == 404 then return false, self:read() end
  if not resp.ok then s3_fail(self, resp, "PUT") end
  self.etag = resp.headers.etag
  return true
end

--- Removes the lock if it is still ours.
function S3:release()
  if not self.etag then return end
  local resp = s3_call(self, "DELETE", { ["If-Match"] = self.etag })
  if resp.ok or resp.status == 404 or resp.status == 412 then return end
  s3_fail(self, resp, "DELETE")
end

--- Removes the lock whoever holds it (`ephrun lock break`).
function S3:force_remove()
  local resp = s3_call(self, "DELETE")
  if not resp.ok and resp.status ~= 404 then s3_fail(self, resp, "DELETE") end
end

--- The backend object for `name` (used by `ephrun lock`).
---@param name string
---@param opts? ephrun.LockOpts
---@return table
function M.backend(name, opts)
  opts = opts or {}
  local b = opts.backend or "file"
  if b == "file" then return new_file(name) end
  if b == "s3" then return new_s3(name, opts) end
  error(("ephrun.lock: unknown backend '%s' (file or s3)"):format(tostring(b)), 3)
end

-- The lock handle ---------------------------------------------------------

---@class ephrun.Lock
---@field name string
---@field holder ephrun.LockHolder
---@field where string
local Lock = {}
Lock.__index = Lock

--- Releases the lock now (also done by the run's cleanup); idempotent.
function Lock:release()
  if self.deferred then self.deferred:close() end
end
Lock.__close = Lock.release

local function renew_loop(lock, backend, every)
  while true do
    ephrun.time.sleep(every)
    -- a renewal in flight when the lock was released must not bring it back
    if lock.released then return end
    local h = lock.holder
    local next_h = {}
    for k, v in pairs(h) do next_h[k] = v end
    next_h.expires = ephrun.time.now() + h.lease
    local ok, res, other = pcall(backend.renew, backend, next_h)
    if lock.released then return end
    if not ok then
      ephrun.log.warn(("lock '%s': renewal failed (%s); retrying"):format(lock.name, tostring(res)))
    elseif not res then
      error(("lock '%s' was taken from this run%s; stopping"):format(lock.name,
        other and (" by " .. M.describe(other)) or " (broken)"), 0)
    else
      lock.holder = next_h
    end
  end
end

--- Takes the team lock `name` for the rest of the run, or raises naming who
--- holds it and how long its lease has left. Released by the run's cleanup (or
--- `lock:release()`, or `<close>`). Under --dry-run the holder is still read,
--- so the dry-run fails where the real run would be refused.
---@param name string
---@param opts? ephrun.LockOpts
---@return ephrun.Lock
function M.lock(name, opts)
  check_name(name)
  opts = opts or {}
  if type(opts) ~= "table" then error("ephrun.lock: options must be a table", 2) end
  local lease = seconds(opts.lease or DEFAULT_LEASE, "lease")
  if lease < 3 then error("ephrun.lock: lease must be at least 3s", 2) end
  local backend = M.backend(name, opts)
  local holder = new_holder(name, lease)
  for _ = 1, 5 do
    local cur = backend:read()
    if cur and M.left(cur) > 0 then refuse(name, cur, 3) end
    local took = ephrun.effect {
      kind = "lock", what = ("take lock '%s' (lease %s, renewed while the run lives)")
        :format(name, ephrun.time.format_duration(lease)),
      where = backend:where(),
      details = cur and { "takes over the expired lock of " .. M.describe(cur) } or nil,
      run = function()
        if cur then
          ephrun.log.warn(("lock '%s': taking over the expired lease of %s"):format(name, M.describe(cur)))
          backend:take_over(cur)
        end
        return backend:create(holder)
      end,
      -- a dry-run holds nothing, so nothing is renewed
      placeholder = "planned",
    }
    if took then
      local lock = setmetatable({ name = name, holder = holder, where = backend:where() }, Lock)
      local task
      if took ~= "planned" then
        task = ephrun.spawn("lock " .. name, renew_loop, lock, backend, math.max(1, lease / 3))
      end
      lock.deferred = ephrun.defer(function()
        lock.released = true
        if task then task:cancel("the lock is released") end
        ephrun.effect { kind = "unlock", what = ("release lock '%s'"):format(name), where = backend:where(),
          run = function() backend:release(lock.holder) end }
      end, ("release lock '%s'"):format(name), "ephrun lock break " .. name)
      return lock
    end
    -- lost a race with another taker: look again
  end
  local cur = backend:read()
  if cur then refuse(name, cur, 3) end
  error(("lock '%s': could not be taken (%s keeps changing)"):format(name, backend:where()), 2)
end

return M
