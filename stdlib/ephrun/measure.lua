--- ephrun.measure: CPU, memory, swap, disk and network figures of an instance
--- while a job runs, sampled once a second from /proc over the job's own SSH
--- session.
---
--- The native session runs one channel at a time (its lock is held for the
--- whole of a `run`), so the sampler cannot be a second channel beside the
--- job: it is a detached shell loop started over the session just before the
--- job and stopped (with a last sample) just after. It stops by itself when
--- its stop file appears, when the SSH connection that started it is gone, or
--- after `max` seconds, so a launcher that died leaves nothing running.
---
--- Inside a memory-limited cgroup (a local instance's plan, a container) the
--- figures are the cgroup's, not the host's /proc/meminfo, which there would
--- show memory the job cannot have.
local log = require "ephrun.log"

local M = {}

local function q(s) return "'" .. tostring(s):gsub("'", [['\'']]) .. "'" end

-- One record: lines tagged t, cpu*, cpus, load, mem, net, cg, df, oomlog and a
-- closing ".". A record cut off by the stop is dropped by the parser.
local SAMPLE_SH = [=[
cg_init() {
  cgv=; cgm=; cgc=
  p=$(sed -n 's/^0:://p' /proc/self/cgroup 2>/dev/null)
  if [ -n "$p" ] && [ -f "/sys/fs/cgroup$p/memory.max" ]; then
    cgv=2; cgm=/sys/fs/cgroup$p; cgc=$cgm
  else
    p=$(sed -n 's/^[0-9]*:memory://p' /proc/self/cgroup 2>/dev/null)
    if [ -n "$p" ] && [ -f "/sys/fs/cgroup/memory$p/memory.limit_in_bytes" ]; then
      cgv=1; cgm=/sys/fs/cgroup/memory$p
      c=$(sed -n 's/^[0-9]*:[^:]*cpuacct[^:]*://p' /proc/self/cgroup 2>/dev/null)
      for m in /sys/fs/cgroup/cpuacct /sys/fs/cgroup/cpu,cpuacct; do
        [ -f "$m$c/cpuacct.usage" ] && cgc=$m$c && break
      done
    fi
  fi
}
cg_line() {
  if [ "$cgv" = 2 ]; then
    echo "cg $(cat $cgm/memory.current) $(sed 's/^max$/0/' $cgm/memory.max)" \
      "$(awk '$1=="inactive_file"{print $2}' $cgm/memory.stat)" \
      "$(cat $cgm/memory.swap.current 2>/dev/null || echo 0)" \
      "$(awk '$1=="usage_usec"{print $2}' $cgc/cpu.stat 2>/dev/null || echo -)" \
      "$(awk '$1=="oom_kill"{print $2}' $cgm/memory.events 2>/dev/null)" \
      "$(cat $cgm/memory.peak 2>/dev/null || echo 0)"
  elif [ "$cgv" = 1 ]; then
    u=$(cat $cgm/memory.usage_in_bytes)
    s=0; [ -f $cgm/memory.memsw.usage_in_bytes ] && s=$(( $(cat $cgm/memory.memsw.usage_in_bytes) - u ))
    c=-; [ -n "$cgc" ] && c=$(( $(cat $cgc/cpuacct.usage) / 1000 ))
    echo "cg $u $(cat $cgm/memory.limit_in_bytes)" \
      "$(awk '$1=="total_inactive_file"{print $2}' $cgm/memory.stat)" "$s" "$c" \
      "$(awk '$1=="oom_kill"{print $2}' $cgm/memory.oom_control)" "$(cat $cgm/memory.max_usage_in_bytes)"
  fi
}
# v1's high-water mark starts again at this job where the instance let us
# (the local provider gives its user that file): a mark left by an earlier,
# bigger job would hide this one's peak between two samples. v2's
# memory.peak resets only for the file descriptor that wrote it, so v2 keeps
# the mark of the whole cgroup and the parse uses it only when it rose.
cg_reset() {
  [ "$cgv" = 1 ] && [ -w "$cgm/memory.max_usage_in_bytes" ] && echo 0 > "$cgm/memory.max_usage_in_bytes"
  return 0
}
oom_line() {
  n=$(dmesg 2>/dev/null | grep -ciE 'out of memory|oom-kill|killed process') || true
  if dmesg >/dev/null 2>&1; then echo "oomlog $n"; else echo "oomlog -"; fi
}
sample() {
  echo "t $(date +%s.%N)"
  grep '^cpu' /proc/stat
  echo "cpus $(nproc 2>/dev/null || echo 1) $(sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' /proc/self/status)"
  echo "load $(cat /proc/loadavg)"
  awk '/^(MemTotal|MemAvailable|SwapTotal|SwapFree):/ { v[$1] = $2 }
    END { print "mem", v["MemTotal:"] + 0, v["MemAvailable:"] + 0, v["SwapTotal:"] + 0, v["SwapFree:"] + 0 }' /proc/meminfo
  awk 'NR > 2 { sub(/^ +/, ""); n = split($0, a, /[: ]+/); if (a[1] != "lo") { rx += a[2]; tx += a[10] } }
    END { print "net", rx + 0, tx + 0 }' /proc/net/dev
  cg_line 2>/dev/null
  for p in @PATHS@; do
    df -Pk "$p" 2>/dev/null | awk -v p="$p" 'NR == 2 { print "df", $3, $2, p }'
  done
  echo .
}
]=]

-- The sampling functions with the disk paths (already shell-quoted words) in place.
local function sample_sh(dir, paths)
  return "d=" .. q(dir) .. "\n" .. SAMPLE_SH:gsub("@PATHS@", function() return paths end)
end

-- The detached loop. It also ends with the SSH connection that started it
-- (`conn`, the sshd process the session's commands are children of), so a
-- launcher killed mid-job leaves no sampler behind.
local function sampler_script(dir, paths, max, conn)
  return ("%s\ncg_init\nend=$(( $(date +%%s) + %d ))\nconn=%s\n"):format(sample_sh(dir, paths), max,
    q(conn or "")) .. [[
while sleep 1 && [ ! -e "$d/stop" ] && [ "$(date +%s)" -lt "$end" ] && { [ -z "$conn" ] || [ -d "/proc/$conn" ]; }; do
  sample
done
]]
end

-- Ends the loop (its process group: setsid made it a leader), takes the last
-- sample, prints every sample and removes the directory.
local function stop_script(dir, pid, paths)
  return sample_sh(dir, paths) .. ([[
: > "$d/stop"
kill -TERM -- -%d 2>/dev/null || kill -TERM %d 2>/dev/null
cg_init
cat "$d/first" "$d/samples" 2>/dev/null
echo
sample
oom_line
rm -rf -- "$d"
]]):format(pid, pid)
end

local function random_name()
  local t = {}
  for i = 1, 12 do t[i] = string.char(string.byte("a") + math.random(0, 25)) end
  return table.concat(t)
end

--- Starts sampling on `sh` (a real session). Returns a handle for `stop`.
---@param sh ephrun.ssh.Session
---@param opts? {paths?: string[], max?: number}
---@return table handle
function M.start(sh, opts)
  opts = opts or {}
  local paths = {}
  for _, p in ipairs(opts.paths or { "/", "." }) do paths[#paths + 1] = q(p) end
  local dir = "/tmp/ephrun-measure-" .. random_name()
  local plist = table.concat(paths, " ")
  -- The first sample is taken before the job starts, whatever the loop's pace.
  local first = sh:run(sample_sh(dir, plist) .. '\nmkdir -p "$d" && cg_init && cg_reset 2>/dev/null && { oom_line; sample; } > "$d/first"'
    .. ' && echo "conn $PPID"', { stream = false })
  local conn = first.stdout:match("conn (%d+)")
  local job = sh:run_detached(sampler_script(dir, plist, math.floor(opts.max or 86400), conn),
    { log = dir .. "/samples" })
  return { sh = sh, dir = dir, pid = job.pid, paths = plist }
end

--- Stops the sampler and returns its raw text.
---@return string
function M.stop_raw(h)
  local r = h.sh:run(stop_script(h.dir, h.pid, h.paths), { stream = false, check = false })
  return r.stdout or ""
end

local function nums(line)
  local out = {}
  for w in line:gmatch("%S+") do out[#out + 1] = tonumber(w) end
  return out
end

-- Raw text → records: {t, cpu = {[name] = {busy, total}}, allowed, ncpu, load,
-- mem = {total, avail, swap_total, swap_free} (kB), net = {rx, tx}, cg = {...}, df = {...}}
local function parse_records(text)
  local records, cur, oom = {}, nil, {}
  for line in text:gmatch("[^\n]+") do
    local tag, rest = line:match("^(%S+)%s*(.*)$")
    if tag == "t" then
      cur = { t = tonumber(rest), cpu = {}, df = {} }
    elseif tag == "oomlog" then
      oom[#oom + 1] = tonumber(rest) or false
    elseif cur then
      if tag == "." then
        if cur.t and cur.mem then records[#records + 1] = cur end
        cur = nil
      elseif tag:match("^cpu%d*$") then
        local v = nums(rest)
        local idle = (v[4] or 0) + (v[5] or 0)
        local total = 0
        for i = 1, math.min(#v, 8) do total = total + v[i] end
        cur.cpu[tag] = { busy = total - idle, total = total }
      elseif tag == "cpus" then
        local n, list = rest:match("^(%d+)%s*(.*)$")
        cur.ncpu, cur.allowed = tonumber(n), list
      elseif tag == "load" then
        cur.load = nums(rest)[1]
      elseif tag == "mem" then
        local v = nums(rest)
        cur.mem = { total = v[1], avail = v[2], swap_total = v[3], swap_free = v[4] }
      elseif tag == "net" then
        local v = nums(rest)
        cur.net = { rx = v[1], tx = v[2] }
      elseif tag == "cg" then
        local v = {}
        for w in rest:gmatch("%S+") do v[#v + 1] = w end
        local limit = tonumber(v[2]) or 0
        -- cgroup v1 says "no limit" with a huge number
        if limit >= 2 ^ 60 then limit = 0 end
        cur.cg = { usage = tonumber(v[1]) or 0, limit = limit, inactive = tonumber(v[3]) or 0,
          swap = math.max(0, tonumber(v[4]) or 0), cpu_usec = tonumber(v[5]), oom_kill = tonumber(v[6]), peak = tonumber(v[7]) or 0 }
      elseif tag == "df" then
        local used, size, path = rest:match("^(%d+)%s+(%d+)%s+(.*)$")
        if used then cur.df[#cur.df + 1] = { path = path, used = tonumber(used) * 1024, size = tonumber(size) * 1024 } end
      end
    end
  end
  return records, oom
end

-- "0-1,3" → {0, 1, 3}
local function cpu_list(s)
  local out = {}
  for part in (s or ""):gmatch("[^,%s]+") do
    local a, b = part:match("^(%d+)-(%d+)$")
    if a then
      for i = tonumber(a), tonumber(b) do out[#out + 1] = i end
    elseif tonumber(part) then
      out[#out + 1] = tonumber(part)
    end
  end
  return out
end

local function pct(busy, total)
  if not total or total <= 0 then return 0 end
  return math.max(0, math.min(100, 100 * busy / total))
end

-- CPU use between two records: overall % of the CPUs the job may use, and per core.
local function cpu_between(a, b, confined)
  local cores = {}
  for _, i in ipairs(cpu_list(b.allowed)) do
    local x, y = a.cpu["cpu" .. i], b.cpu["cpu" .. i]
    if x and y then cores[#cores + 1] = pct(y.busy - x.busy, y.total - x.total) end
  end
  local dt = b.t - a.t
  if confined and a.cg.cpu_usec and b.cg.cpu_usec and dt > 0 then
    return pct(b.cg.cpu_usec - a.cg.cpu_usec, dt * 1e6 * (b.ncpu or 1)), cores
  end
  if #cores > 0 then
    local s = 0
    for _, c in ipairs(cores) do s = s + c end
    return s / #cores, cores
  end
  local x, y = a.cpu.cpu, b.cpu.cpu
  return x and y and pct(y.busy - x.busy, y.total - x.total) or 0, cores
end

local function mem_of(r, confined)
  local swap = ((r.mem.swap_total or 0) - (r.mem.swap_free or 0)) * 1024
  if confined then
    -- with no swap on the host, v1's memsw - usage is only accounting noise
    return math.max(0, r.cg.usage - r.cg.inactive), r.cg.limit, (r.mem.swap_total or 0) > 0 and r.cg.swap or 0
  end
  return ((r.mem.total or 0) - (r.mem.avail or 0)) * 1024, (r.mem.total or 0) * 1024, swap
end

--- Turns the sampler's raw text into figures: `samples` (one a second: t,
--- cpu %, cores %, load, mem, swap, disk, net), `peak_mem`, `peak_swap`,
--- `cpu_avg`, `cpu_peak` (percent of the CPUs the job may use), `mem_total`,
--- `vcpu`, `net_rx`, `net_tx`, `disk_peak` ({path → percent}), `oom_kills`
--- and `warnings`.
---@param text string
---@param opts? {swap_warn?: number, disk_warn?: number}
---@return table
function M.parse(text, opts)
  opts = opts or {}
  local records, oom = parse_records(text)
  local out = { samples = {}, peak_mem = 0, peak_swap = 0, cpu_avg = 0, cpu_peak = 0, mem_total = 0,
    net_rx = 0, net_tx = 0, disk_peak = {}, oom_kills = 0, warnings = {}, duration = 0 }
  if #records == 0 then
    out.warnings[1] = "no samples were taken (the sampler did not run on the remote)"
    return out
  end
  local first, last = records[1], records[#records]
  local confined = first.cg ~= nil and first.cg.limit > 0
  out.vcpu = last.ncpu
  out.source = confined and "cgroup" or "/proc"
  local swap0 = select(3, mem_of(first, confined))
  for i, r in ipairs(records) do
    local used, total, swap = mem_of(r, confined)
    local s = { t = r.t - first.t, load = r.load, mem = used, mem_total = total, swap = swap, disk = {} }
    if i > 1 then s.cpu, s.cores = cpu_between(records[i - 1], r, confined) end
    if r.net and first.net then s.net_rx, s.net_tx = r.net.rx - first.net.rx, r.net.tx - first.net.tx end
    for _, d in ipairs(r.df) do
      local p = d.size > 0 and 100 * d.used / d.size or 0
      s.disk[d.path] = p
      out.disk_peak[d.path] = math.max(out.disk_peak[d.path] or 0, p)
    end
    out.samples[i] = s
    out.peak_mem = math.max(out.peak_mem, used)
    out.peak_swap = math.max(out.peak_swap, swap)
    out.mem_total = math.max(out.mem_total, total)
    out.load_peak = math.max(out.load_peak or 0, r.load or 0)
    out.cpu_peak = math.max(out.cpu_peak, s.cpu or 0)
  end
  out.duration = last.t - first.t
  if confined and first.cg.oom_kill and last.cg.oom_kill then
    out.oom_kills = last.cg.oom_kill - first.cg.oom_kill
  end
  -- A peak between two samples (a short job, one the OOM killer ended) is
  -- seen by the kernel's own high-water mark when it rose during the job.
  -- That mark counts page cache too, so the cache still held at the end is
  -- taken off: a job that read many files does not report them as its memory.
  if confined and last.cg.peak > first.cg.peak then
    out.peak_mem = math.max(out.peak_mem, math.min(last.cg.peak - last.cg.inactive, out.mem_total))
  end
  if #records > 1 then out.cpu_avg = cpu_between(first, last, confined) end
  if last.net and first.net then out.net_rx, out.net_tx = last.net.rx - first.net.rx, last.net.tx - first.net.tx end
  if oom[1] and oom[#oom] and #oom > 1 then out.oom_kills = math.max(out.oom_kills, oom[#oom] - oom[1]) end
  out.swapped = math.max(0, out.peak_swap - swap0)

  local human = require("ephrun.ssh").human_bytes
  local w = out.warnings
  if out.swapped > (opts.swap_warn or 64e6) then
    w[#w + 1] = ("the job swapped %s: a plan with more memory would be faster"):format(human(out.swapped))
  end
  if out.oom_kills > 0 then
    w[#w + 1] = ("the OOM killer ended %d process(es) during the job (memory peaked at %s of %s): "
      .. "choose a plan with more memory or add swap"):format(out.oom_kills, human(out.peak_mem), human(out.mem_total))
  end
  local paths = {}
  for p in pairs(out.disk_peak) do paths[#paths + 1] = p end
  table.sort(paths)
  for _, p in ipairs(paths) do
    if out.disk_peak[p] > (opts.disk_warn or 90) then
      w[#w + 1] = ("disk %s was %.0f%% full during the job: free space or choose a larger disk"):format(p, out.disk_peak[p])
    end
  end
  return out
end

--- One line for the run summary.
---@param m table what `parse` returns
---@return string
function M.summary(m)
  local human = require("ephrun.ssh").human_bytes
  return ("cpu avg %.0f%% (peak %.0f%%) of %s vCPU, memory peak %s of %s, swap peak %s, load peak %.2f, "
    .. "net in %s out %s, %d samples"):format(m.cpu_avg, m.cpu_peak, tostring(m.vcpu or "?"), human(m.peak_mem),
    human(m.mem_total), human(m.peak_swap), m.load_peak or 0, human(m.net_rx), human(m.net_tx), #m.samples)
end

-- Every command measured in this run, in the order they ended: the run
-- summary and `--json` report them once the run is over.
local recorded = {}

-- Where a session runs, as a person tells instances apart: every local
-- instance is 127.0.0.1, so its id and plan say more than the address.
local function where_of(sh)
  local i = sh.instance
  if i and i.id then return ("%s instance %s%s"):format(i.provider, i.id, i.plan and (" (" .. i.plan .. ")") or "") end
  return sh.host
end

local RECORDED = { "peak_mem", "peak_swap", "swapped", "cpu_avg", "cpu_peak", "mem_total", "vcpu", "load_peak",
  "net_rx", "net_tx", "disk_peak", "oom_kills", "warnings", "source", "duration" }

local function record(h, what, m)
  local i = h.sh.instance or {}
  local r = { what = what, command = h.command, host = h.sh.host, where = where_of(h.sh), provider = i.provider,
    instance = i.id, plan = i.plan, samples = #m.samples }
  for _, k in ipairs(RECORDED) do r[k] = m[k] end
  recorded[#recorded + 1] = r
end

--- The figures of every command measured so far in this run (what `finish`
--- saw, without the per-second samples): `what`, `command`, `host`, `where`,
--- `provider`, `instance`, `plan`, `samples` (how many) and the figures of
--- `parse`. The run summary and `--json` of a real run list them.
---@return table[]
function M.recorded()
  return recorded
end

--- The run summary's lines for the recorded commands: each command's figures
--- (`level = "info"`), then its warnings (`level = "warn"`). Empty when
--- nothing was measured.
---@return {level: "info"|"warn", text: string}[]
function M.run_summary()
  local human = require("ephrun.ssh").human_bytes
  local out = {}
  for n, r in ipairs(recorded) do
    out[#out + 1] = { level = "info", text = ("%d. %s on %s: %.1f s, cpu avg %.0f%% (peak %.0f%%) of %s vCPU, "
      .. "memory peak %s of %s, swap peak %s%s, %d samples"):format(n, r.what, r.where, r.duration or 0, r.cpu_avg,
      r.cpu_peak, tostring(r.vcpu or "?"), human(r.peak_mem), human(r.mem_total), human(r.peak_swap),
      (r.oom_kills or 0) > 0 and (", OOM kills " .. r.oom_kills) or "", r.samples) }
    for _, w in ipairs(r.warnings or {}) do out[#out + 1] = { level = "warn", text = "   warning: " .. w } end
  end
  return out
end

--- Stops the sampler, parses, logs the summary and warnings, records the
--- figures for the run summary, and copies them onto `into` (a run result)
--- when given.
---@return table figures
function M.finish(h, what, opts, into)
  local m = M.parse(M.stop_raw(h), opts)
  log.info("measure %s on %s: %s", what, where_of(h.sh), M.summary(m))
  for _, w in ipairs(m.warnings) do log.warn("measure %s on %s: %s", what, where_of(h.sh), w) end
  record(h, what, m)
  if into then
    for _, k in ipairs { "samples", "peak_mem", "peak_swap", "cpu_avg", "cpu_peak", "mem_total", "vcpu",
      "load_peak", "net_rx", "net_tx", "disk_peak", "oom_kills", "swapped", "warnings", "source" } do
      into[k] = m[k]
    end
  end
  return m
end

return M
