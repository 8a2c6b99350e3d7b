--- The local provider: an "instance" is a real sshd on 127.0.0.1 at a free
--- port, with this run's host key and authorized key, and a private working
--- directory. It costs nothing and needs no cloud account.
---
--- Layout: `$EPHRUN_HOME/local/<id>/` holds meta.json (tags, port, expiry),
--- the host key, sshd_config, sshd's pid and log, and `destroy.sh`, which ends
--- the instance by hand (`sh destroy.sh`). A detached watchdog boots sshd after
--- `boot_delay` and ends the instance at its expiry even if ephrun was killed;
--- it carries its whole program in its argv and a minimal environment, so it
--- still ends everything when `$EPHRUN_HOME` was deleted meanwhile.
---
--- As root, each instance gets its own login user `ephrun-<id>` with its own
--- home (mode 0700), where sessions start; destroy ends every process of that
--- user and removes the user with its home, so two instances cannot read or
--- write each other's files and nothing a session left (even detached and
--- without the instance marker) outlives the destroy. As a normal user, the
--- login user is yourself and sessions start in `<dir>/work`: instances are not
--- isolated from each other, and destroy finds session processes by the
--- `EPHRUN_LOCAL_INSTANCE` marker and sshd's process tree only.
local ephrun = require "ephrun"
local errors = require "ephrun.errors"

local M = {}

--- What the lifetime timer does: the watchdog destroys the instance at its expiry.
M.ttl_effect = "ends billing"

local SSHD = "/usr/sbin/sshd"

local q = ephrun.shell_quote

-- `local-<N>c-<M>m|g` → {vcpu, memory_mb}; nil for any other name.
local function plan_spec(name)
  local n, m, unit = tostring(name or ""):match("^local%-(%d+)c%-(%d+)([mg])$")
  if not n or tonumber(n) < 1 or tonumber(m) < 1 then return nil end
  return { vcpu = tonumber(n), memory_mb = tonumber(m) * (unit == "g" and 1024 or 1) }
end

local function read(path)
  local f = io.open(path, "r")
  if not f then return nil end
  local d = f:read("a")
  f:close()
  return d
end

local function base_dir()
  return require("ephrun.cloud").state_dir() .. "/local"
end

local function uid()
  local st = read("/proc/self/status") or ""
  return tonumber(st:match("\nUid:%s*(%d+)")) or -1
end

-- name, home of a passwd entry selected by name or uid
local function passwd(by_name, by_uid)
  for line in (read("/etc/passwd") or ""):gmatch("[^\n]+") do
    local name, id, home = line:match("^([^:]*):[^:]*:(%d+):%d+:[^:]*:([^:]*):")
    if name and ((by_name and name == by_name) or (by_uid and tonumber(id) == by_uid)) then
      return name, home
    end
  end
end

-- The login user of instance `id` when ephrun runs as root: one per instance.
local function user_of(id)
  return "ephrun-" .. id:gsub("^loc%-", "")
end

-- Runs an account command, again while another process holds the passwd
-- lock (useradd and userdel fail at once then); `done()` says whether it took.
local function account(argv, done)
  local delay, r = 0.02, nil
  for _ = 1, 12 do
    r = ephrun.proc.run(argv, { stream = false, check = false })
    if done() then return end
    ephrun.time.sleep(delay)
    delay = math.min(delay * 2, 1)
  end
  error(("local provider: %s failed: %s"):format(table.concat(argv, " "),
    r and (r.stderr or ""):gsub("%s+$", "") or "cannot run it"))
end

-- The login user and the directory its sessions start in. As root a new
-- user with its own home (0700); with `UsePAM no` sshd refuses accounts whose
-- password is locked ('!'), even for keys, hence `-p '*'`.
local function login_user(id, dir)
  if uid() == 0 then
    local name = user_of(id)
    if passwd(name) then error("local provider: user " .. name .. " already exists; remove it: userdel -r " .. name) end
    account({ "useradd", "-m", "-s", "/bin/sh", "-p", "*", "-c", "ephrun local instance " .. id, name },
      function() return passwd(name) ~= nil end)
    local _, home = passwd(name)
    assert(ephrun.fs.chmod(home, "0700"))
    return name, home, true
  end
  local name = passwd(nil, uid()) or os.getenv("USER") or os.getenv("LOGNAME")
  if not name then error("local provider: cannot tell the current user's name") end
  return name, dir .. "/work", false
end

-- Ports someone listens on (IPv4 and IPv6), from /proc/net.
local function listening_ports()
  local ports = {}
  for _, f in ipairs { "/proc/net/tcp", "/proc/net/tcp6" } do
    for line in (read(f) or ""):gmatch("[^\n]+") do
      local port, st = line:match("^%s*%d+: %x+:(%x+) %x+:%x+ (%x+)")
      if port and st == "0A" then ports[tonumber(port, 16)] = true end
    end
  end
  return ports
end

-- Ports are drawn below the kernel's ephemeral range: a port in that range
-- can be taken by any outgoing connection between the pick and sshd's bind.
local function port_range()
  local low = tonumber((read("/proc/sys/net/ipv4/ip_local_port_range") or ""):match("^%s*(%d+)"))
  if low and low > 12000 then return 10000, low - 1 end
  return 20000, 59999
end

local function free_port()
  local used = listening_ports()
  local lo, hi = port_range()
  for _ = 1, 200 do
    local p = math.random(lo, hi)
    if not used[p] then return p end
  end
  errors.raise { kind = "capacity", message = ("local provider: no free port found in %d-%d"):format(lo, hi) }
end

local function new_id()
  local seed = table.concat({ ephrun.run_id(), tostring(ephrun.time.now()), tostring(math.random()),
    tostring({}) }, "/")
  return "loc-" .. ephrun.fs.hash_string(seed):sub(1, 10)
end

local function load_meta(dir)
  local text = read(dir .. "/meta.json")
  if not text then return nil end
  local ok, m = pcall(ephrun.json.decode, text)
  if ok and type(m) == "table" then return m end
end

local function pid_alive(pid)
  if not pid then return false end
  local st = read("/proc/" .. pid .. "/stat")
  if not st then return false end
  return not st:match("^%d+ %b() Z") -- a zombie is gone for our purposes
end

local function state_of(m)
  local dir = m.dir
  if not ephrun.fs.exists(dir) then return "terminated" end
  if ephrun.fs.exists(dir .. "/destroying") then return "stopping" end
  local st = (read(dir .. "/state") or ""):match("%a+")
  if st == "running" then
    -- the watchdog's own record of sshd: one that died while starting is stopped, not pending
    local started = tonumber(read(dir .. "/sshd.started") or "")
    if started and not pid_alive(started) then return "stopped" end
    local pid = tonumber(read(dir .. "/sshd.pid") or "")
    if not pid then return "pending" end -- sshd has not written its pid file yet
    if not pid_alive(pid) then return "stopped" end
    if not listening_ports()[m.port] then return "pending" end
    return "running"
  end
  if st == "failed" then return "stopped" end
  return "pending"
end

local function to_instance(m)
  return {
    id = m.id, host = "127.0.0.1", port = m.port, user = m.user, state = state_of(m),
    tags = m.tags or {}, dir = m.dir, workdir = m.workdir, created = m.created,
    expires_at = m.expires_at, provider = "local", plan = m.plan, limits = m.limits,
  }
end

local function sshd_config(o)
  return table.concat({
    "# sshd for ephrun local instance " .. o.id,
    "Port " .. o.port,
    "ListenAddress 127.0.0.1",
    "HostKey " .. o.dir .. "/host_ed25519",
    "PidFile " .. o.dir .. "/sshd.pid",
    "AuthorizedKeysFile " .. o.workdir .. "/.ssh/authorized_keys",
    "AllowUsers " .. o.user,
    "UsePAM no",
    "StrictModes no",
    "PasswordAuthentication no",
    "KbdInteractiveAuthentication no",
    "PubkeyAuthentication yes",
    "PermitRootLogin no",
    "PrintMotd no",
    "PrintLastLog no",
    "UseDNS no",
    "MaxStartups 100",
    "MaxSessions 100",
    "AcceptEnv *",
    -- Marks every session process, so destroy finds them even when detached.
    "SetEnv EPHRUN_LOCAL_INSTANCE=" .. o.id .. " HOME=" .. o.workdir,
    -- Sessions (and SFTP) start in the working area, not the user's home.
    [[ForceCommand cd "$HOME" || exit 125; if [ -n "${SSH_ORIGINAL_COMMAND+x}" ]; then ]] ..
      [[c=$SSH_ORIGINAL_COMMAND; unset SSH_ORIGINAL_COMMAND; exec /bin/sh -c "$c"; fi; exec /bin/sh -l]],
    "Subsystem sftp /usr/lib/openssh/sftp-server",
    "LogLevel INFO",
  }, "\n") .. "\n"
end

-- Shell that defines `end_instance`, which ends the instance: sshd, every
-- process of its sessions (children of sshd, marked by SetEnv, and as root
-- every process of its own user), then the user and the directories. Safe to
-- run twice. It needs no file of the instance: the watchdog carries it in its
-- argv and knows sshd's pid, so it still works when the state directory is gone.
local function end_instance_sh(o)
  return ([=[
id=%s
dir=%s
work=%s
user=%s
cgroups=%s
uid=
[ -n "$user" ] && uid=$(id -u "$user" 2>/dev/null)
kill_instance_processes() {
  n=0
  while [ $n -lt 100 ]; do
    n=$((n + 1))
    l=$(cat "$dir/sshd.pid" 2>/dev/null)
    [ -n "$l" ] || l=$sshd_pid
    # Session processes carry the SetEnv marker; an sshd still starting up has
    # no pid file yet but its config path in its command line.
    marked=$( (grep -lzs "^EPHRUN_LOCAL_INSTANCE=$id\$" /proc/[0-9]*/environ;
      grep -lsF "$dir/sshd_config" /proc/[0-9]*/cmdline) 2>/dev/null | cut -d/ -f3 | grep -vx "$$")
    all=$(ps -e -o pid=,ppid=,stat=,uid= | awk -v root="$l" -v marked="$marked" -v uid="$uid" '
      { parent[$1] = $2; if ($3 !~ /^Z/) alive[$1] = 1; if (uid != "" && $4 == uid) keep[$1] = 1 }
      END {
        n = split(marked, m, /[ \n]+/); for (i = 1; i <= n; i++) if (m[i] != "") keep[m[i]] = 1
        if (root != "") keep[root] = 1
        do { n = 0; for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; n++ } } while (n)
        for (p in keep) if (p in alive) printf "%%s ", p
      }')
    [ -z "$all" ] && break
    kill -KILL $all 2>/dev/null
    sleep 0.02
  done
}
end_instance() {
  [ -d "$dir" ] && : > "$dir/destroying"
  kill_instance_processes
  # userdel refuses while another account command holds the passwd lock: try again.
  n=0
  while [ -n "$user" ] && id -u "$user" >/dev/null 2>&1 && [ $n -lt 50 ]; do
    n=$((n + 1))
    pkill -KILL -u "$user" 2>/dev/null
    userdel -r "$user" 2>/dev/null || sleep 0.1
  done
  # cgroups made after the launch (a resize to a plan), which this script could not know
  cgroups="$cgroups $(cat "$dir/cgroups.later" 2>/dev/null)"
  rm -rf "$work" "$dir"
  # The plan's cgroups, empty once every process above has ended. Whatever
  # is still inside (it escaped the walk above, or is still exiting on a
  # loaded machine) is this instance's too: end it and wait, up to 30 s.
  for c in $cgroups; do n=0; while [ -d "$c" ] && ! rmdir "$c" 2>/dev/null && [ $n -lt 300 ]; do
    n=$((n + 1)); p=$(cat "$c/cgroup.procs" 2>/dev/null); [ -n "$p" ] && kill -KILL $p 2>/dev/null
    sleep 0.1; done; done
}
]=]):format(q(o.id), q(o.dir), q(o.workdir), q(o.as_root and o.user or ""), q(o.limits.cgroups))
end

-- The by-hand destroy: ends the watchdog first, then the instance.
local function destroy_script(o)
  return ("#!/bin/sh\n# Ends ephrun local instance %s: sh %s/destroy.sh\n%s"):format(o.id, o.dir, end_instance_sh(o)) .. [[
[ -d "$dir" ] || [ -d "$work" ] || [ -n "$uid" ] || exit 0
is_watchdog() {
  grep -qasF ephrun-watchdog "/proc/$1/cmdline" && grep -qasF "$dir" "/proc/$1/cmdline"
}
# Inside execve (setsid, then sh) a process's command line reads empty for a
# moment; a zombie's stays empty.
execing() {
  [ -e "/proc/$1/cmdline" ] && [ -z "$(tr -d '\0' < "/proc/$1/cmdline" 2>/dev/null)" ] &&
    ! grep -qs '^[0-9]* (.*) Z' "/proc/$1/stat"
}
# The recorded pid only while it still runs this instance's watchdog (a pid
# can be reused); and, record or not, whatever runs that program (the
# watchdog when the launch was cut off before recording it, a subshell it is
# forking), so a destroy at any moment of the watchdog's start finds it.
w=$(cat "$dir/watchdog.pid" 2>/dev/null)
n=0
while [ -n "$w" ] && ! is_watchdog "$w"; do
  n=$((n + 1))
  if [ $n -gt 100 ] || ! execing "$w"; then w=; break; fi
  sleep 0.01
done
for p in $(grep -lasF "$dir" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3 | grep -vx "$$"); do
  [ "$p" != "$w" ] && is_watchdog "$p" && w="$w $p"
done
# The watchdog's shell first, so it cannot boot sshd or end the instance
# meanwhile; sshd (its child) stays up until end_instance has walked its tree.
[ -n "$w" ] && kill -KILL $w 2>/dev/null
sshd_pid=$(cat "$dir/sshd.started" 2>/dev/null)
end_instance
# Then what the watchdog started (its sleep, an sshd being started), by its
# process group, and until it has ended: gone, not only signalled.
n=0
while [ -n "$w" ] && [ $n -lt 250 ]; do
  n=$((n + 1))
  for p in $w; do kill -KILL "-$p" 2>/dev/null; done
  ps -e -o pid=,pgid=,stat= | awk -v w=" $w " '$3 !~ /^Z/ && (index(w, " " $1 " ") || index(w, " " $2 " ")) { f = 1 }
    END { exit !f }' || break
  sleep 0.02
done
exit 0
]]
end

-- Boots sshd after the boot delay, then waits until the expiry (or until the
-- state directory disappears: then nothing could find the instance any more)
-- and ends it. Runs in its own session, so it outlives ephrun, even a SIGKILL.
local function watchdog_script(o)
  return ("# Watchdog of ephrun local instance %s: boots sshd, ends the instance at expiry.\n%s"):format(
    o.id, end_instance_sh(o)) .. ([[
end=$(( $(date +%%s) + %d ))
# (The launch has recorded this pid too: replace it whole, never truncate it
# in place, or a destroy reading it meanwhile would find no watchdog.)
echo $$ > "$dir/watchdog.pid.new" && mv -f "$dir/watchdog.pid.new" "$dir/watchdog.pid"
sleep %s
%s -D -f "$dir/sshd_config" -E "$dir/sshd.log" &
sshd_pid=$!
echo "$sshd_pid" > "$dir/sshd.started"
echo running > "$dir/state"
while [ -d "$dir" ]; do
  now=$(date +%%s)
  [ "$now" -ge "$end" ] && break
  left=$((end - now))
  [ "$left" -gt 5 ] && left=5
  sleep "$left"
done
if [ -d "$dir" ]; then
  echo "$(date -u +%%FT%%TZ) lifetime reached: ending the instance" >> "$dir/watchdog.log"
else
  echo "$(date -u +%%FT%%TZ) $dir is gone: ending the instance"
fi
end_instance
]]):format(math.max(1, math.ceil(o.ttl)), tostring(o.boot_delay), o.limits.argv)
end

-- The environment of the watchdog, and so of sshd: nothing of ephrun's (no
-- secret such as VULTR_API_KEY can be read from its /proc/<pid>/environ).
local WATCHDOG_ENV = { PATH = "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL = "C" }

local function write_file(path, data)
  local f = io.open(path, "w")
  if not f then return false end
  local ok = f:write(data)
  ok = f:close() and ok
  return ok and true or false
end

local function host_cpus()
  local r = ephrun.proc.run({ "nproc" }, { stream = false, check = false })
  return tonumber((r.stdout or ""):match("%d+")) or 1
end

-- A memory cgroup for the instance (v2, else v1 with a cpuacct group for CPU
-- figures), or nil when this host cannot make one (not root, no delegation).
local function make_cgroups(id, bytes, user)
  local fs = ephrun.fs
  local name = "ephrun-" .. id
  local v2 = read("/sys/fs/cgroup/cgroup.controllers")
  if v2 and v2:find("memory", 1, true) then
    write_file("/sys/fs/cgroup/cgroup.subtree_control", "+memory")
    local d = "/sys/fs/cgroup/" .. name
    if fs.mkdir_p(d) and write_file(d .. "/memory.max", tostring(bytes)) then return { d }, "cgroup v2 memory.max" end
    pcall(fs.remove, d)
  end
  local d = "/sys/fs/cgroup/memory/" .. name
  if fs.exists("/sys/fs/cgroup/memory/memory.limit_in_bytes") and fs.mkdir_p(d) then
    if write_file(d .. "/memory.limit_in_bytes", tostring(bytes)) then
      write_file(d .. "/memory.memsw.limit_in_bytes", tostring(bytes))
      -- the instance's user may reset the high-water mark, so each measured
      -- job on it sees its own peak (ephrun.measure)
      ephrun.proc.run({ "chown", user, d .. "/memory.max_usage_in_bytes" }, { stream = false, check = false })
      local dirs = { d }
      for _, m in ipairs { "/sys/fs/cgroup/cpuacct", "/sys/fs/cgroup/cpu,cpuacct" } do
        if fs.exists(m .. "/cpuacct.usage") and fs.mkdir_p(m .. "/" .. name) then
          dirs[#dirs + 1] = m .. "/" .. name
          break
        end
      end
      return dirs, "cgroup v1 memory.limit_in_bytes"
    end
    pcall(fs.remove, d)
  end
end

-- How sshd is started: inside the plan's cgroups and CPU set, or plainly.
local function limits(o, spec)
  local p = plan_spec(spec.plan)
  if not p then return { argv = SSHD, cgroups = "" } end
  local n = host_cpus()
  if p.vcpu > n then
    errors.raise { kind = "capacity", message = ("local provider: plan %s wants %d CPUs; this machine has %d: "
      .. "choose local-%dc-..."):format(spec.plan, p.vcpu, n, n) }
  end
  local bytes = p.memory_mb * 1024 * 1024
  local cpus = p.vcpu == 1 and "0" or ("0-" .. (p.vcpu - 1))
  local dirs, how = nil, nil
  if o.as_root then dirs, how = make_cgroups(o.id, bytes, o.user) end
  local argv = "taskset -c " .. cpus .. " " .. SSHD
  if dirs then
    argv = "/bin/sh -c 'for c in $1; do echo $$ > \"$c/cgroup.procs\" || exit 1; done; shift; exec \"$@\"' enter "
      .. q(table.concat(dirs, " ")) .. " " .. argv
  else
    how = "RLIMIT_AS (prlimit --as) per process"
    argv = "prlimit --as=" .. bytes .. " " .. argv
  end
  return { argv = argv, cgroups = dirs and table.concat(dirs, " ") or "", cpus = cpus,
    memory = bytes, how = how, vcpu = p.vcpu }
end

-- Writes the instance's files and starts its watchdog (which boots sshd).
local function start(o, ud, spec, as_root)
  local fs = ephrun.fs
  local dir, workdir, user, id, ttl = o.dir, o.workdir, o.user, o.id, o.ttl
  assert(fs.mkdir_p(base_dir(), "0700"))
  assert(fs.mkdir_p(dir, "0700"))
  assert(fs.mkdir_p(workdir .. "/.ssh", "0700"))
  assert(fs.write(dir .. "/host_ed25519", ud.host_private, { mode = "0600" }))
  assert(fs.write(dir .. "/host_ed25519.pub", ud.host_public .. "\n", { mode = "0644" }))
  assert(fs.write(workdir .. "/.ssh/authorized_keys", table.concat(ud.authorized_keys, "\n") .. "\n",
    { mode = "0600" }))
  if as_root then
    -- sshd started as root needs its privilege-separation directory.
    if not fs.exists("/run/sshd") then assert(fs.mkdir_p("/run/sshd", "0755")) end
    ephrun.proc.run({ "chown", "-R", user .. ":", workdir .. "/.ssh" }, { stream = false })
  end
  assert(fs.write(dir .. "/sshd_config", sshd_config(o), { mode = "0600" }))
  assert(fs.write(dir .. "/destroy.sh", destroy_script(o), { mode = "0700" }))
  local now = ephrun.time.now()
  local meta = { id = id, dir = dir, workdir = workdir, user = user, port = o.port, tags = spec.tags or {},
    created = now, expires_at = now + ttl, boot_delay = o.boot_delay, run_id = ephrun.run_id(),
    plan = spec.plan, limits = o.limits.how and { cpus = o.limits.cpus, memory = o.limits.memory,
      how = o.limits.how, cgroups = o.limits.cgroups } or nil }
  assert(fs.write(dir .. "/meta.json", ephrun.json.encode(meta), { mode = "0600" }))
  -- setsid makes the watchdog a session leader: it survives ephrun, and
  -- destroy can end it with its sleep as one process group. Its program is
  -- its argv, so deleting the state directory cannot take it away.
  local r = ephrun.proc.run({ [[setsid /bin/sh -c "$1" ephrun-watchdog </dev/null >>"$2" 2>&1 & echo $!]],
    watchdog_script(o), dir .. "/watchdog.log" }, { shell = true, stream = false, env_clear = true, env = WATCHDOG_ENV })
  local wpid = tonumber(r.stdout:match("%d+"))
  if wpid then fs.write(dir .. "/watchdog.pid", wpid .. "\n") end
  return meta
end

-- Plans: `local-<N>c-<M>m` or `local-<N>c-<G>g` (any such name works; these
-- are the ones listed). A plan maps to what the kernel enforces on the
-- instance's sshd and so on every session: a CPU set (taskset) and a memory
-- limit (a cgroup's memory.max on cgroup v2, memory.limit_in_bytes on v1,
-- else RLIMIT_AS per process through prlimit). Other plan names (say a
-- Vultr plan in a recipe's default) stay a label with no limit.
M.plans = { "local-1c-256m", "local-1c-512m", "local-2c-1g", "local-2c-2g", "local-2c-4g" }

--- vCPU and memory of a plan, for tables such as size-sweep's; nil for a
--- plan name that is only a label. Price 0: a local instance costs nothing.
---@param spec {plan?: string}
---@return {plan: string, vcpu: integer, memory_mb: integer, price: number, enforced: string}|nil
function M.plan_info(spec, _opts)
  local p = plan_spec(spec and spec.plan)
  if not p then return nil end
  p.plan, p.price = spec.plan, 0
  p.enforced = "taskset CPU set; memory by cgroup where writable, else RLIMIT_AS per process"
  return p
end

--- Hourly price: always 0.
---@return number
function M.price(_spec, _opts)
  return 0
end

--- Starts an instance. `spec.user_data` (what ephrun.cloudinit builds) gives
--- the host key and authorized keys; `spec.ttl` (seconds) its lifetime;
--- `spec.boot_delay` or `opts.boot_delay` (seconds) simulates boot time.
---@return table instance
function M.launch(spec, opts)
  opts = opts or {}
  if not spec.user_data then
    errors.raise { kind = "invalid", message = "local provider: launch needs user_data (from ephrun.cloudinit)" }
  end
  local ud = require("ephrun.cloudinit").parse(spec.user_data)
  if not ud.host_private or not ud.host_public then
    errors.raise { kind = "invalid", message = "local provider: user_data has no ssh_keys host key" }
  end
  if not ephrun.fs.exists(SSHD) then
    error("local provider: " .. SSHD .. " not found: install openssh-server (bash scripts/setup.sh)", 0)
  end
  local ttl = spec.ttl or 3600
  local boot_delay = tonumber(spec.boot_delay or opts.boot_delay or 0) or 0
  local id = new_id()
  local dir = base_dir() .. "/" .. id
  local user, workdir, as_root = login_user(id, dir)
  local o = { id = id, dir = dir, workdir = workdir, user = user, port = free_port(), ttl = ttl,
    boot_delay = boot_delay, as_root = as_root }
  local lok, lim = pcall(limits, o, spec)
  if not lok then
    pcall(M.destroy, { id = id, dir = dir, workdir = workdir })
    error(lim, 0)
  end
  o.limits = lim
  local ok, meta = pcall(start, o, ud, spec, as_root)
  if not ok then
    -- A half-made instance: end whatever started and remove its files.
    pcall(M.destroy, { id = id, dir = dir, workdir = workdir })
    for c in lim.cgroups:gmatch("%S+") do pcall(ephrun.fs.remove, c) end
    error(meta, 0)
  end
  return to_instance(meta)
end

--- The instance `id` (a table with `state`), or nil when it is unknown.
---@param id string
---@return table|nil
function M.get(id, _opts)
  local dir = base_dir() .. "/" .. id
  local m = load_meta(dir)
  if not m then return nil end
  return to_instance(m)
end

--- Instances whose tags include every `filter.tags` pair (all when none given).
---@param filter? {tags?: table<string,string>}
---@return table[]
function M.list(filter, _opts)
  filter = filter or {}
  local out = {}
  local names = ephrun.fs.list(base_dir()) or {}
  for _, name in ipairs(names) do
    local m = load_meta(base_dir() .. "/" .. name)
    if m then
      local match = true
      for k, v in pairs(filter.tags or {}) do
        if (m.tags or {})[k] ~= v then match = false end
      end
      if match then out[#out + 1] = to_instance(m) end
    end
  end
  return out
end

local function dir_of(inst)
  if type(inst) == "string" then return base_dir() .. "/" .. inst end
  return inst.dir or (base_dir() .. "/" .. inst.id)
end

--- Ends the instance: kills sshd, its sessions and the watchdog, removes its
--- directories. Idempotent: an instance already gone is fine.
---@param inst table|string an instance or its id
function M.destroy(inst, _opts)
  local dir = dir_of(inst)
  if not ephrun.fs.exists(dir .. "/destroy.sh") then
    -- half made (or already gone): its own user, if it got one, goes too
    local id = type(inst) == "table" and inst.id or inst
    if uid() == 0 and type(id) == "string" and passwd(user_of(id)) then
      local name = user_of(id)
      account({ "sh", "-c", 'pkill -KILL -u "$1"; userdel -r "$1"', "userdel", name },
        function() return passwd(name) == nil end)
    end
    local work = type(inst) == "table" and inst.workdir
    if work and ephrun.fs.exists(work) then ephrun.fs.remove(work, { recursive = true }) end
    if ephrun.fs.exists(dir) then ephrun.fs.remove(dir, { recursive = true }) end
    return
  end
  ephrun.proc.run({ "/bin/sh", dir .. "/destroy.sh" }, { stream = false })
end

--- The command that removes the instance by hand.
---@return string
function M.destroy_hint(inst, _opts)
  return "sh " .. q(dir_of(inst) .. "/destroy.sh") .. "   # or: ephrun reap"
end

--- Polls until the instance reaches `state` or `deadline` (seconds) passes.
---@return table instance
function M.wait(inst, state, deadline, _opts)
  local limit = ephrun.time.monotonic() + (deadline or 300)
  local delay = 0.005
  while true do
    local cur = M.get(inst.id)
    local st = cur and cur.state or "terminated"
    if st == state then return cur or { id = inst.id, state = st } end
    if st == "terminated" or (state == "running" and st == "stopped") then
      local log = read(dir_of(inst) .. "/sshd.log") or ""
      errors.raise { kind = st == "terminated" and "not_found" or "server", retry = false,
        message = ("local instance %s is %s, not %s%s"):format(inst.id, st, state,
          log ~= "" and (": " .. log:gsub("%s+$", "")) or "") }
    end
    if ephrun.time.monotonic() > limit then
      errors.raise { kind = "timeout",
        message = ("local instance %s is still %s after %ss, not %s"):format(inst.id, st, deadline, state) }
    end
    ephrun.time.sleep(delay)
    delay = math.min(delay * 2, 0.1)
  end
end

--- Where to connect: {host, port, user}.
function M.ssh_endpoint(inst, _opts)
  return { host = "127.0.0.1", port = inst.port, user = inst.user }
end

-- What the instance's scripts are made from, rebuilt from its meta.json.
local function shape_of(m)
  return { id = m.id, dir = m.dir, workdir = m.workdir, user = m.user, as_root = uid() == 0,
    limits = { cgroups = m.limits and m.limits.cgroups or "" } }
end

local function live_meta(inst)
  local m = load_meta(dir_of(inst))
  if not m then
    errors.raise { kind = "not_found", message = ("local instance %s is gone"):format(tostring(inst.id or inst)) }
  end
  return m
end

--- Powers the instance off: sshd and every process of its sessions end (as
--- a halted machine's would); its files and its lifetime watchdog stay.
---@return table instance
function M.halt(inst, deadline, _opts)
  local m = live_meta(inst)
  ephrun.proc.run({ "/bin/sh", "-c", end_instance_sh(shape_of(m)) .. [[
sshd_pid=$(cat "$dir/sshd.started" 2>/dev/null)
kill_instance_processes
rm -f "$dir/sshd.pid"
]] }, { stream = false })
  return M.wait(inst, "stopped", deadline or 60)
end

--- Powers a halted instance on: sshd starts again inside its plan's limits
--- (which `resize` may have changed). Raises `capacity` when this machine
--- cannot give the plan its CPUs.
---@return table instance
function M.start(inst, deadline, _opts)
  local m = live_meta(inst)
  if state_of(m) == "running" then return to_instance(m) end
  local o = shape_of(m)
  local lim = limits(o, { plan = m.plan })
  m.limits = lim.how and { cpus = lim.cpus, memory = lim.memory, how = lim.how,
    cgroups = lim.cgroups ~= "" and lim.cgroups or o.limits.cgroups } or nil
  if lim.cgroups ~= "" and lim.cgroups ~= o.limits.cgroups then
    -- the destroy script and the watchdog were written with the launch's list: tell them
    assert(ephrun.fs.write(m.dir .. "/cgroups.later", lim.cgroups .. "\n", { mode = "0600" }))
  end
  assert(ephrun.fs.write(m.dir .. "/meta.json", ephrun.json.encode(m), { mode = "0600" }))
  ephrun.fs.remove(m.dir .. "/sshd.pid")
  local cmd = ("exec %s -D -f %s -E %s"):format(lim.argv, q(m.dir .. "/sshd_config"), q(m.dir .. "/sshd.log"))
  local r = ephrun.proc.run({ [[setsid /bin/sh -c "$1" ephrun-sshd </dev/null >>"$2" 2>&1 & echo $!]], cmd,
    m.dir .. "/watchdog.log" }, { shell = true, stream = false, env_clear = true, env = WATCHDOG_ENV })
  local pid = tonumber(r.stdout:match("%d+"))
  if pid then assert(ephrun.fs.write(m.dir .. "/sshd.started", pid .. "\n")) end
  return M.wait(inst, "running", deadline or 60)
end

--- Changes the plan (`local-<N>c-<M>m|g`): halts the instance, sets the plan,
--- starts it inside the new limits. When this machine has not the CPUs for
--- it, the old plan is put back and started, and the capacity error raised.
---@return table instance
function M.resize(inst, plan, deadline, opts)
  if not plan_spec(plan) then
    errors.raise { kind = "invalid", message = ("local provider: '%s' is not a local plan (local-<N>c-<M>m or "
      .. "local-<N>c-<G>g, e.g. %s)"):format(tostring(plan), M.plans[1]) }
  end
  local m = live_meta(inst)
  local old = m.plan
  if old == plan and state_of(m) == "running" then return to_instance(m) end
  if state_of(m) ~= "stopped" then M.halt(inst, deadline, opts) end
  local function set_plan(name)
    local cur = live_meta(inst)
    cur.plan = name
    assert(ephrun.fs.write(cur.dir .. "/meta.json", ephrun.json.encode(cur), { mode = "0600" }))
  end
  set_plan(plan)
  local ok, err = pcall(M.start, inst, deadline, opts)
  if not ok then
    if errors.is(err, "capacity") then
      ephrun.log.warn("local: no capacity to start %s as %s; putting back %s", tostring(inst.id), plan, tostring(old))
      set_plan(old)
      M.start(inst, deadline, opts)
    end
    error(err, 0)
  end
  return M.get(inst.id)
end

-- No snapshot: a local instance has no disk image, and the lifecycle says
-- "provider 'local' cannot take snapshots".

return M
