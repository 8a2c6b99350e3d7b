-- `ephrun lock ls` / `ephrun lock break NAME`: the team locks taken with
-- `ephrun.lock`, their holders and leases; breaking one asks first and says
-- whose lock it breaks.
local ephrun = require "ephrun"
local common = require "ephrun.cmd.common"
local lock = require "ephrun.lock"

local function row(name, h, now)
  local left = lock.left(h, now)
  return {
    name = name, user = h.user, host = h.host, run_id = h.run_id, recipe = h.recipe, pid = h.pid,
    since = h.since, lease = h.lease, expires = h.expires, lease_left = left, expired = left <= 0,
  }
end

local function list(p)
  local now = ephrun.time.now()
  local out = {}
  if p.backend == "s3" then
    local b = lock.backend(p.name, { backend = "s3", bucket = p.bucket, key = p.key ~= "" and p.key or nil })
    local h = b:read()
    if h then out[1] = row(p.name, h, now) end
  else
    local names = ephrun.fs.list(lock.dir()) or {}
    for _, f in ipairs(names) do
      local name = f:match("^(.+)%.json$")
      if name then
        local h = lock.backend(name):read()
        if h then out[#out + 1] = row(name, h, now) end
      end
    end
  end
  if ephrun.options().json then
    local arr = ephrun.json.array()
    for i, r in ipairs(out) do arr[i] = r end
    io.stdout:write(ephrun.json.encode({ locks = arr }, { pretty = true }), "\n")
    return
  end
  if #out == 0 then
    io.stdout:write("No locks held", p.backend == "s3" and "" or (" (" .. lock.dir() .. ")"), ".\n")
    return
  end
  local cells = {}
  for _, r in ipairs(out) do
    cells[#cells + 1] = { r.name, (r.user or "?") .. "@" .. (r.host or "?"), r.run_id or "?", r.recipe or "?",
      r.since and common.local_time(r.since) or "?", r.expired and "expired" or common.short_duration(r.lease_left) }
  end
  common.table({ "NAME", "HOLDER", "RUN", "RECIPE", "SINCE", "LEASE LEFT" }, cells)
end

local function break_lock(p)
  if p.name == "" then error("ephrun lock break needs the lock's name: `ephrun lock break NAME`", 0) end
  local b = lock.backend(p.name, { backend = p.backend, bucket = p.bucket, key = p.key ~= "" and p.key or nil })
  local h = b:read()
  if not h then
    io.stdout:write(("Lock '%s' is not held (%s).\n"):format(p.name, b:where()))
    return
  end
  local left = lock.left(h)
  local question = ("Break lock '%s' held by %s%s?"):format(p.name, lock.describe(h),
    left > 0 and (", whose lease has " .. common.short_duration(left) .. " left") or " (lease expired)")
  if not ephrun.confirm(question) then
    io.stdout:write("Left alone.\n")
    return
  end
  ephrun.effect { kind = "unlock", what = ("break lock '%s' of %s"):format(p.name, lock.describe(h)),
    where = b:where(), run = function() b:force_remove() end }
  if not ephrun.dry_run() then
    io.stdout:write(("Broke lock '%s' of %s.\n"):format(p.name, lock.describe(h)))
  end
end

return ephrun.recipe {
  name = "lock",
  summary = "List team locks (`ephrun lock ls`) or break one (`ephrun lock break NAME`, asks first).",
  params = {
    action = { default = "ls", choices = { "ls", "break" }, doc = "list the locks, or break one" },
    name = { default = "", doc = "the lock (for break, and for ls with backend=s3)" },
    backend = { default = "file", choices = { "file", "s3" }, doc = "where the lock lives: file is $EPHRUN_HOME/locks" },
    bucket = { default = "", doc = "backend=s3: the bucket" },
    key = { default = "", doc = "backend=s3: the object key (default ephrun-locks/NAME.json)" },
  },
  run = function(p)
    if p.action == "break" then return break_lock(p) end
    return list(p)
  end,
}
