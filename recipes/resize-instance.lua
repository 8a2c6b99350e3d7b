--- resize-instance: change the size of an instance the way it is done by hand,
--- with the checks people skip: snapshot the root volume first, stop it,
--- change the type (AWS) or plan (Vultr, local), start it, and verify over SSH
--- that `nproc` and the memory it sees match the new size. When the start is
--- refused for lack of capacity, the old type is put back and started again,
--- verified, and the run fails saying so.
---
--- It works on an existing instance (`instance=ID`, one kept by an earlier
--- ephrun run on this machine, `keep=true`, whose key it uses) or launches one
--- of size `from` to show the round trip (destroyed at the end).
local ephrun = require "ephrun"
local errors = require "ephrun.errors"

-- What each provider launches and resizes to when `from` and `to` are not given.
-- A Vultr plan cannot shrink its disk, so its example grows.
local DEFAULTS = {
  aws = { from = "t3.large", to = "t3.micro" },
  vultr = { from = "vc2-1c-1gb", to = "vc2-2c-4gb" },
  ["local"] = { from = "local-2c-1g", to = "local-1c-512m" },
}

-- Prints what the instance's sessions see: CPUs, and the memory they can use
-- (the machine's, or less when a cgroup or an address-space limit bounds it).
local SEE = table.concat({
  "n=$(nproc)",
  "mem=$(awk '/^MemTotal:/ { print int($2 / 1024) }' /proc/meminfo)",
  [[lower() { [ -n "$1" ] && [ "$1" -lt "$mem" ] && mem=$1; }]],
  [[m=$(cat "/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)/memory.max" 2>/dev/null)]],
  [[case "$m" in ''|max) ;; *) lower $((m / 1048576)) ;; esac]],
  [[m=$(cat "/sys/fs/cgroup/memory$(sed -n 's/^[0-9]*:memory://p' /proc/self/cgroup)/memory.limit_in_bytes" 2>/dev/null)]],
  [[[ -n "$m" ] && [ ${#m} -lt 16 ] && lower $((m / 1048576))]],
  [[v=$(ulimit -v); [ "$v" != unlimited ] && lower $((v / 1024))]],
  [[echo "nproc=$n memory_mb=$mem"; free -m]],
}, "; ")

-- The size `plan` promises, or nil when the provider cannot say.
local function size_of(cloud, plan)
  local info = cloud.impl.plan_info and cloud.impl.plan_info({ plan = plan }, cloud.opts)
  if info and info.vcpu and info.memory_mb then return info end
end

-- Logs in and checks the instance against `plan`: the same CPU count, and
-- between 80% (a VM's kernel keeps some) and 105% of its memory. Returns the
-- figures seen, or raises naming what differs.
local function verify(cloud, box, plan)
  local sh <close> = box:ssh()
  local r = sh:run(SEE, { stream = false })
  if sh.dry_run then return "(checked by a real run)" end
  local n, mem = r.stdout:match("nproc=(%d+) memory_mb=(%d+)")
  n, mem = tonumber(n), tonumber(mem)
  local want = size_of(cloud, plan)
  if not want then
    ephrun.log.warn("%s cannot say how big %s is: seen nproc=%s, %s MiB, not compared", cloud.name, plan,
      tostring(n), tostring(mem))
    return ("nproc %s, %s MiB (not compared)"):format(tostring(n), tostring(mem))
  end
  local seen = ("nproc %d, %d MiB (plan %s: %d vCPU, %d MiB)"):format(n or -1, mem or -1, plan, want.vcpu,
    want.memory_mb)
  if n ~= want.vcpu or not mem or mem < want.memory_mb * 0.8 or mem > want.memory_mb * 1.05 then
    error(("%s instance %s does not look like %s after the resize: %s. `free -m` says:\n%s"):format(cloud.name,
      box.id, plan, seen, r.stdout:match("\n(.*)$") or ""), 0)
  end
  return seen
end

return ephrun.recipe {
  name = "resize-instance",
  summary = "Snapshot, stop, change the type, start and verify an instance; back to the old type if there is no capacity.",
  params = {
    provider = { default = "local", doc = "local | vultr | aws", choices = ephrun.cloud.builtin_providers { can = "resize" } },
    instance = { default = "",
      doc = "id of the instance to resize (one kept by an ephrun run here); empty: launch one of size `from` to show it" },
    from = { default = "",
      doc = "size of the instance launched when `instance` is empty (default per provider: t3.large, vc2-1c-1gb, local-2c-1g)" },
    to = { default = "", doc = "the new size (default per provider: t3.micro, vc2-2c-4gb, local-1c-512m)" },
    region = { default = "", doc = "region of the launched instance (default ewr for vultr; AWS_REGION for aws)" },
    snapshot = { default = true, doc = "snapshot the root volume first (providers without snapshots skip it, saying so)" },
    ttl = { type = "duration", default = "1h", doc = "lifetime of the launched instance" },
  },
  run = function(p)
    local cloud = ephrun.provider(p.provider)
    local defaults = DEFAULTS[cloud.name] or {}
    local to = p.to ~= "" and p.to or defaults.to
    if not to then error(("resize-instance: give the new size, to=PLAN (provider %s has no default)"):format(cloud.name), 0) end
    local box
    if p.instance ~= "" then
      box = cloud:adopt(p.instance)
    else
      local from = p.from ~= "" and p.from or defaults.from
      local region = p.region ~= "" and p.region or (cloud.name == "vultr" and "ewr" or nil)
      box = cloud:launch { plan = from, region = region, ttl = p.ttl }
      box.raw.plan = box.raw.plan or from
    end
    local old = box.raw.plan
    if old == to then error(("%s instance %s is already %s: nothing to do"):format(cloud.name, box.id, to), 0) end

    ephrun.phase("snapshot")
    local sid
    if p.snapshot and cloud.impl.snapshot then
      sid = box:snapshot { description = ("before resize of %s from %s to %s"):format(box.id, tostring(old), to) }
    elseif p.snapshot then
      ephrun.log.warn("%s cannot take snapshots: resizing %s without one", cloud.name, box.id)
    end

    ephrun.phase("stop")
    box:halt()
    ephrun.phase("resize")
    -- The provider changes the type and starts the instance; on a capacity error it
    -- has put the old type back and started that.
    local ok, err = pcall(box.resize, box, to)
    ephrun.phase("verify")
    if not ok then
      if not errors.is(err, "capacity") then error(err, 0) end
      local seen = verify(cloud, box, old)
      error(("no capacity to start %s instance %s as %s (%s); it runs again as %s, verified: %s%s"):format(
        cloud.name, box.id, to, tostring(err), tostring(old), seen,
        sid and ("; snapshot " .. sid .. " was kept") or ""), 0)
    end
    local seen = verify(cloud, box, to)
    ephrun.effect { kind = "report", what = "print what was resized and the snapshot kept", run = function()
      print(("resize-instance: %s instance %s resized from %s to %s; verified: %s"):format(cloud.name, box.id,
        tostring(old), to, seen))
      if sid then
        print(("  snapshot %s kept (billed by size until deleted): %s"):format(sid, cloud.impl.snapshot_hint
          and cloud.impl.snapshot_hint(sid, cloud.opts) or ("delete snapshot " .. sid)))
      end
    end }
  end,
}
