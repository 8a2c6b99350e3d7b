-- `ephrun reaper install|status|remove`: a job on this machine that runs
-- `ephrun reap --expired --yes` every few minutes (a systemd user timer, or a
-- crontab line where there is no systemd user session), for providers whose
-- lifetime timer only stops the CPU. See stdlib/ephrun/reaper.lua.
local ephrun = require "ephrun"
local reaper = require "ephrun.reaper"

local function fail(msg)
  error(msg, 0)
end

local function settings(p)
  local every = p.every
  if every < 60 or every > 3600 or every % 60 ~= 0 then
    fail(("reaper: every=%s: give whole minutes from 1m to 1h (e.g. every=5m)"):format(
      ephrun.time.format_duration(every)))
  end
  local bin = p.bin ~= "" and p.bin or ephrun.fs.realpath("/proc/self/exe")
  if not bin then fail("reaper: cannot tell where the ephrun binary is: give bin=/path/to/ephrun") end
  local o = { key = reaper.key(), every = math.tointeger(every), providers = p.providers, bin = bin,
    env_dir = p.env_dir ~= "" and p.env_dir or reaper.config_dir(),
    home = require("ephrun.cloud").state_dir(), units_dir = reaper.units_dir(), env = reaper.passed_env() }
  for _, k in ipairs { "home", "env_dir", "bin" } do
    if o[k]:sub(1, 1) ~= "/" then
      fail(("reaper: %s %s is not an absolute path; the job runs from another directory"):format(
        k == "home" and "EPHRUN_HOME" or k, o[k]))
    end
  end
  return o
end

-- The job reads VULTR_API_KEY from env_dir/.env: say so when it is not there, or readable by others.
local function check_env_file(o)
  local needs = false
  for _, prov in ipairs(o.providers) do needs = needs or prov == "vultr" end
  if not needs then return end
  local path = o.env_dir .. "/.env"
  local text = ephrun.fs.read(path)
  if not text or not text:match("%f[%w_]VULTR_API_KEY%s*=%s*%S") then
    ephrun.log.warn("reaper: %s has no VULTR_API_KEY; the job fails until you add the line VULTR_API_KEY=... "
      .. "to it (chmod 600 %s). The key is read there at run time so that no crontab or unit file holds it",
      path, path)
    return
  end
  local st = ephrun.fs.stat(path)
  if st and st.mode & 0x3f ~= 0 then
    ephrun.log.warn("reaper: %s holds a secret and is readable by others (mode %s): chmod 600 %s", path, st.perm, path)
  end
end

local function crontab_lines()
  local r = ephrun.proc.run({ "crontab", "-l" }, { check = false, stream = false })
  -- `crontab -l` exits 1 with "no crontab for USER" when there is none.
  if not r or (not r.ok and not (r.stderr or ""):match("no crontab")) then
    fail("reaper: crontab -l failed: " .. (r and r.stderr or "cannot run crontab"))
  end
  local lines = {}
  for line in (r.stdout or ""):gmatch("[^\n]+") do lines[#lines + 1] = line end
  return lines
end

local function without_job(lines, key)
  local out, found = {}, false
  local marker = "# " .. key
  for _, line in ipairs(lines) do
    if line:sub(-#marker) == marker or line:sub(1, #marker + 1) == marker .. ":" then
      found = true
    else
      out[#out + 1] = line
    end
  end
  return out, found
end

local function write_crontab(lines, what, details)
  ephrun.effect { kind = "crontab", what = what, where = "crontab of " .. (os.getenv("USER") or "this user"),
    details = details, run = function()
      ephrun.proc.run({ "crontab", "-" }, { stdin = table.concat(lines, "\n") .. (#lines > 0 and "\n" or ""),
        stream = false })
    end }
end

local function systemctl(...)
  return ephrun.proc.run({ "systemctl", "--user", ... }, { stream = false })
end

local function install(o, via)
  check_env_file(o)
  ephrun.effect { kind = "mkdir", what = "create " .. o.env_dir, where = o.env_dir,
    run = function() assert(ephrun.fs.mkdir_p(o.env_dir, "0700")) end }
  local record = { via = via, key = o.key, every = o.every, providers = o.providers, env_dir = o.env_dir,
    bin = o.bin, home = o.home, units_dir = o.units_dir, env = o.env, installed = ephrun.time.iso8601(ephrun.time.now()) }
  if via == "cron" then
    local lines = without_job(crontab_lines(), o.key)
    local job = reaper.cron_lines(o)
    for _, l in ipairs(job) do lines[#lines + 1] = l end
    write_crontab(lines, "add the reaper's line to the crontab", job)
  else
    for name, text in pairs(reaper.units(o)) do
      local path = o.units_dir .. "/" .. name
      local details = {}
      for l in text:gmatch("[^\n]+") do details[#details + 1] = l end
      ephrun.effect { kind = "write", what = "write " .. path, where = o.units_dir, details = details,
        run = function()
          assert(ephrun.fs.mkdir_p(o.units_dir, "0755"))
          assert(ephrun.fs.write(path, text, { mode = "0644" }))
        end }
    end
    local ok, err = pcall(function()
      systemctl("daemon-reload")
      systemctl("enable", "--now", o.key .. ".timer")
    end)
    if not ok then
      for name in pairs(reaper.units(o)) do ephrun.fs.remove(o.units_dir .. "/" .. name) end
      fail(("reaper: the systemd user manager did not take the timer (%s); without a user session, "
        .. "install with via=cron"):format(tostring(err)))
    end
    local user = os.getenv("USER") or os.getenv("LOGNAME") or ""
    if user ~= "" and not ephrun.fs.exists("/var/lib/systemd/linger/" .. user) then
      ephrun.log.warn("reaper: systemd runs user timers only while %s is logged in; to keep it running after "
        .. "logout: loginctl enable-linger %s", user, user)
    end
  end
  ephrun.effect { kind = "write", what = "record the reaper in " .. reaper.record_path(), where = o.home,
    run = function()
      assert(ephrun.fs.mkdir_p(o.home, "0700"))
      assert(ephrun.fs.write(reaper.record_path(), ephrun.json.encode(record), { mode = "0600" }))
    end }
  if not ephrun.dry_run() then
    io.stdout:write(("Reaper installed (%s, %s): every %s it runs\n  %s\nin %s, logging to %s.\n"):format(via,
      o.key, ephrun.time.format_duration(o.every), table.concat(reaper.argv(o), " "), o.env_dir,
      o.home .. "/reaper.log"))
  end
end

local function remove(o)
  local r = reaper.record()
  local via = r and r.via or ((ephrun.fs.exists(o.units_dir .. "/" .. o.key .. ".timer")) and "systemd" or "cron")
  if via == "cron" then
    local lines, found = without_job(crontab_lines(), o.key)
    if found then write_crontab(lines, "remove the reaper's line from the crontab") end
  else
    local units_dir = r and r.units_dir or o.units_dir
    ephrun.proc.run({ "systemctl", "--user", "disable", "--now", o.key .. ".timer" }, { stream = false, check = false })
    for _, ext in ipairs { ".timer", ".service" } do
      local path = units_dir .. "/" .. o.key .. ext
      ephrun.effect { kind = "delete", what = "remove " .. path, where = units_dir,
        run = function() ephrun.fs.remove(path) end }
    end
    ephrun.proc.run({ "systemctl", "--user", "daemon-reload" }, { stream = false, check = false })
  end
  ephrun.effect { kind = "delete", what = "remove " .. reaper.record_path(), where = o.home,
    run = function() ephrun.fs.remove(reaper.record_path()) end }
  if not ephrun.dry_run() then io.stdout:write(("Reaper %s removed.\n"):format(o.key)) end
end

local function status(o)
  local r = reaper.record()
  if not r then
    io.stdout:write(("No reaper is installed for %s: `ephrun reaper install` adds one.\n"):format(o.home))
    return
  end
  local live
  if r.via == "cron" then
    local _, found = without_job(crontab_lines(), r.key)
    live = found and "its crontab line is present" or nil
  else
    local res = ephrun.proc.run({ "systemctl", "--user", "is-active", r.key .. ".timer" },
      { stream = false, check = false })
    live = res and res.ok and "its timer is active" or nil
  end
  io.stdout:write(("Reaper %s (%s), installed %s: every %s, providers %s, .env read from %s.\n"):format(r.key,
    r.via, tostring(r.installed), ephrun.time.format_duration(r.every), table.concat(r.providers, ","), r.env_dir))
  local log = ephrun.fs.read(r.home .. "/reaper.log")
  if log and log ~= "" then
    local tail = {}
    for l in log:gmatch("[^\n]+") do tail[#tail + 1] = l end
    io.stdout:write("Last lines of ", r.home, "/reaper.log:\n  ",
      table.concat(tail, "\n  ", math.max(1, #tail - 4)), "\n")
  end
  if not live and not ephrun.dry_run() then
    fail(("reaper: %s is recorded as installed with %s, but %s; reinstall it: ephrun reaper install"):format(
      r.key, r.via, r.via == "cron" and "the crontab has no line for it" or "its timer is not active"))
  end
  if live then io.stdout:write("OK: ", live, ".\n") end
end

return ephrun.recipe {
  name = "reaper",
  summary = "Install, show or remove a job that runs `ephrun reap --expired --yes` every few minutes.",
  params = {
    action = { default = "status", doc = "install | status | remove (ephrun reaper install)" },
    every = { type = "duration", default = "5m", doc = "how often the job runs (whole minutes, 1m to 1h)" },
    providers = { type = "list", default = { "vultr" }, doc = "providers the job scans by tag" },
    via = { default = "auto", doc = "auto | systemd | cron (auto: systemd when a user session answers, else cron)" },
    env_dir = { default = "", doc = "directory the job runs in; it reads secrets from .env there "
      .. "(default ~/.config/ephrun)" },
    bin = { default = "", doc = "the ephrun the job runs (default: this one)" },
  },
  run = function(p)
    local o = settings(p)
    if p.action == "install" then
      local via = p.via
      if via == "auto" then
        local why
        via, why = reaper.detect()
        if not via then fail("reaper: " .. why) end
      elseif via ~= "systemd" and via ~= "cron" then
        fail(("reaper: via=%s: give auto, systemd or cron"):format(p.via))
      end
      install(o, via)
    elseif p.action == "remove" then
      remove(o)
    elseif p.action == "status" then
      status(o)
    else
      fail(("reaper: unknown action '%s': ephrun reaper install | status | remove"):format(p.action))
    end
  end,
}
