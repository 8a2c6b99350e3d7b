-- `ephrun reaper install|status|remove [host=...]`: a job that runs
-- `ephrun reap --expired --yes` every few minutes (a systemd user timer, or a
-- crontab line where there is no systemd user session), for providers whose
-- lifetime timer only stops the CPU. On this machine, or with `host=` on a
-- permanent server reached through the `static` provider (ephrun must be
-- installed there). See stdlib/ephrun/reaper.lua.
local ephrun = require "ephrun"
local reaper = require "ephrun.reaper"

local q = ephrun.shell_quote

local function fail(msg)
  error(msg, 0)
end

-- Where the job lives: this machine, or a server over SSH. Both run the same
-- shell snippets, so what is installed is the same text either way.
local function local_target()
  return {
    where = "this machine",
    sh = function(script, stdin)
      local r, err = ephrun.proc.run({ script }, { shell = true, stdin = stdin, check = false, stream = false })
      return r or { ok = false, stdout = "", stderr = tostring(err) }
    end,
  }
end

local function remote_target(p)
  local opts = { host = p.host, port = p.port, user = p.user ~= "" and p.user or nil,
    key_file = p.key_file ~= "" and p.key_file or nil, known_hosts = p.known_hosts ~= "" and p.known_hosts or nil }
  local box = ephrun.provider("static", opts):attach()
  local session = box:ssh()
  return {
    where = box.id, host = box.id, session = session,
    sh = function(script, stdin)
      local r = session:run("sh -c " .. q(script), { stdin = stdin, check = false, stream = false })
      r.ok = r.code == 0 and not r.signal
      return r
    end,
  }
end

-- The remote's own paths (its HOME, its ephrun); placeholders under --dry-run.
local function remote_paths(t, p)
  local r = t.sh([[printf '%s\n' "$HOME"; command -v ephrun || true]])
  local home, found = (r.stdout or ""):match("^([^\n]*)\n?([^\n]*)")
  if ephrun.dry_run() then return "<remote $HOME>", p.bin ~= "" and p.bin or "<remote ephrun>" end
  if not home or home:sub(1, 1) ~= "/" then fail("reaper: cannot read $HOME on " .. t.where .. ": " .. (r.stderr or "")) end
  local bin = p.bin ~= "" and p.bin or found
  if (not bin or bin == "") and p.action == "install" then
    fail(("reaper: ephrun is not installed on %s (not on its PATH): copy the binary there, with ephrun-http.so "
      .. "beside it, or give bin=/path/to/ephrun"):format(t.where))
  end
  return home, bin or ""
end

local function settings(p, t)
  local every = p.every
  if every < 60 or every > 3600 or every % 60 ~= 0 then
    fail(("reaper: every=%s: give whole minutes from 1m to 1h (e.g. every=5m)"):format(
      ephrun.time.format_duration(every)))
  end
  local o = { every = math.tointeger(every), providers = p.providers, env = reaper.passed_env(), host = t.host }
  if t.host then
    local home, bin = remote_paths(t, p)
    -- The server's ephrun uses its own default state directory, so its job is `ephrun-reaper`.
    o.key, o.bin, o.home = "ephrun-reaper", bin, home .. "/.local/state/ephrun"
    o.env_dir = p.env_dir ~= "" and p.env_dir or (home .. "/.config/ephrun")
    o.units_dir = home .. "/.config/systemd/user"
  else
    o.key, o.home, o.units_dir = reaper.key(), require("ephrun.cloud").state_dir(), reaper.units_dir()
    o.bin = p.bin ~= "" and p.bin or ephrun.fs.realpath("/proc/self/exe")
    o.env_dir = p.env_dir ~= "" and p.env_dir or reaper.config_dir()
    if not o.bin then fail("reaper: cannot tell where the ephrun binary is: give bin=/path/to/ephrun") end
  end
  for _, k in ipairs { "home", "env_dir", "bin" } do
    if o[k]:sub(1, 1) ~= "/" and not ephrun.dry_run() and (k ~= "bin" or p.action == "install") then
      fail(("reaper: %s %s is not an absolute path; the job runs from another directory"):format(
        k == "home" and "EPHRUN_HOME" or k, o[k]))
    end
  end
  return o
end

-- The job reads VULTR_API_KEY from env_dir/.env: say so when it is not there,
-- or readable by others. Only grep's answer crosses the wire, never the key.
local function check_env_file(t, o)
  local needs = false
  for _, prov in ipairs(o.providers) do needs = needs or prov == "vultr" end
  if not needs or ephrun.dry_run() then return end
  local path = o.env_dir .. "/.env"
  local r = t.sh(("grep -Eq '^[[:space:]]*(export[[:space:]]+)?VULTR_API_KEY[[:space:]]*=[[:space:]]*[^[:space:]]' %s"
    .. " && stat -c %%a %s"):format(q(path), q(path)))
  if not r.ok then
    ephrun.log.warn("reaper: %s on %s has no VULTR_API_KEY; the job fails until you add the line "
      .. "VULTR_API_KEY=... to it (chmod 600 %s). The key is read there at run time so that no crontab or unit "
      .. "file holds it", path, t.where, path)
    return
  end
  local mode = tonumber((r.stdout or ""):match("%d+") or "600", 8)
  if mode & 0x3f ~= 0 then
    ephrun.log.warn("reaper: %s holds a secret and is readable by others (mode %o): chmod 600 %s", path, mode, path)
  end
end

local function crontab_lines(t)
  local r = t.sh("crontab -l")
  -- `crontab -l` exits 1 with "no crontab for USER" when there is none.
  if not r or (not r.ok and not (r.stderr or ""):match("no crontab")) then
    fail(("reaper: crontab -l on %s failed: %s"):format(t.where, r and r.stderr or "cannot run crontab"))
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

local function must(r, what)
  if not r.ok then fail(("reaper: %s failed: %s"):format(what, (r.stderr or ""):gsub("%s+$", ""))) end
  return r
end

local function write_crontab(t, lines, what, details)
  ephrun.effect { kind = "crontab", what = what, where = "crontab on " .. t.where, details = details,
    run = function()
      -- the job was all there was: leave no empty crontab behind
      if #lines == 0 then must(t.sh("crontab -r 2>/dev/null || ! crontab -l >/dev/null 2>&1"), "crontab -r") return end
      must(t.sh("crontab -", table.concat(lines, "\n") .. "\n"), "crontab -")
    end }
end

-- systemd on the target: "systemd" when its user manager answers, else "cron"
-- when crontab exists. Locally only files are looked at (a --dry-run spawns nothing).
local function detect(t)
  if not t.host then return reaper.detect() end
  local r = t.sh([[if [ -S "${XDG_RUNTIME_DIR:-/nonexistent}/systemd/private" ] && command -v systemctl >/dev/null;
    then echo systemd; elif command -v crontab >/dev/null; then echo cron; fi]])
  local via = (r.stdout or ""):match("%a+")
  if ephrun.dry_run() then via = via or "cron" end
  if via then return via end
  return nil, ("%s has no systemd user session and no crontab program: install cron there"):format(t.where)
end

local function install_units(t, o)
  for name, text in pairs(reaper.units(o)) do
    local path = o.units_dir .. "/" .. name
    local details = {}
    for l in text:gmatch("[^\n]+") do details[#details + 1] = l end
    ephrun.effect { kind = "write", what = "write " .. path, where = t.where, details = details,
      run = function()
        must(t.sh(("mkdir -p %s && cat > %s"):format(q(o.units_dir), q(path)), text), "writing " .. path)
      end }
  end
  local r = t.sh(("systemctl --user daemon-reload && systemctl --user enable --now %s"):format(q(o.key .. ".timer")))
  if not r.ok then
    t.sh(("rm -f %s %s"):format(q(o.units_dir .. "/" .. o.key .. ".timer"), q(o.units_dir .. "/" .. o.key .. ".service")))
    fail(("reaper: the systemd user manager on %s did not take the timer (%s); without a user session, "
      .. "install with via=cron"):format(t.where, (r.stderr or ""):gsub("%s+$", "")))
  end
  local linger = t.sh([[u=$(id -un); test -e "/var/lib/systemd/linger/$u" || echo "$u"]])
  local user = (linger.stdout or ""):match("%S+")
  if user and not ephrun.dry_run() then
    ephrun.log.warn("reaper: systemd runs user timers only while %s is logged in; to keep it running after "
      .. "logout: loginctl enable-linger %s", user, user)
  end
end

local function write_record(record)
  ephrun.effect { kind = "write", what = "record the reaper in " .. reaper.record_path(),
    where = "this machine", run = function()
      assert(ephrun.fs.mkdir_p(require("ephrun.cloud").state_dir(), "0700"))
      assert(ephrun.fs.write(reaper.record_path(), ephrun.json.encode(record), { mode = "0600" }))
    end }
end

local function install(t, o, via)
  check_env_file(t, o)
  -- the job's working directory, and the state directory its log goes to
  ephrun.effect { kind = "mkdir", what = "create " .. o.env_dir .. " and " .. o.home, where = t.where,
    run = function()
      must(t.sh(("mkdir -p -m 700 %s %s"):format(q(o.env_dir), q(o.home))), "mkdir " .. o.env_dir .. " " .. o.home)
    end }
  if via == "cron" then
    local lines = without_job(crontab_lines(t), o.key)
    local job = reaper.cron_lines(o)
    for _, l in ipairs(job) do lines[#lines + 1] = l end
    write_crontab(t, lines, "add the reaper's line to the crontab", job)
  else
    install_units(t, o)
  end
  write_record { via = via, key = o.key, every = o.every, providers = o.providers, env_dir = o.env_dir,
    bin = o.bin, home = o.home, units_dir = o.units_dir, env = o.env, host = o.host,
    installed = ephrun.time.iso8601(ephrun.time.now()) }
  if not ephrun.dry_run() then
    io.stdout:write(("Reaper installed on %s (%s, %s): every %s it runs\n  %s\nin %s, logging to %s.\n"):format(
      t.where, via, o.key, ephrun.time.format_duration(o.every), table.concat(reaper.argv(o), " "), o.env_dir,
      o.home .. "/reaper.log"))
  end
end

local function remove(t, o)
  local r = reaper.record()
  if r and r.host ~= o.host then r = nil end
  local via = r and r.via
  if not via then
    local has_timer = t.sh(("test -e %s"):format(q(o.units_dir .. "/" .. o.key .. ".timer")))
    via = (has_timer.ok and not has_timer.dry_run) and "systemd" or "cron"
  end
  if via == "cron" then
    local lines, found = without_job(crontab_lines(t), o.key)
    if found then write_crontab(t, lines, "remove the reaper's line from the crontab") end
  else
    local timer, service = o.units_dir .. "/" .. o.key .. ".timer", o.units_dir .. "/" .. o.key .. ".service"
    ephrun.effect { kind = "delete", what = "disable and remove " .. timer .. " and " .. service, where = t.where,
      run = function()
        t.sh(("systemctl --user disable --now %s; rm -f %s %s; systemctl --user daemon-reload"):format(
          q(o.key .. ".timer"), q(timer), q(service)))
      end }
  end
  if r then
    ephrun.effect { kind = "delete", what = "remove " .. reaper.record_path(), where = "this machine",
      run = function() ephrun.fs.remove(reaper.record_path()) end }
  end
  if not ephrun.dry_run() then io.stdout:write(("Reaper %s removed from %s.\n"):format(o.key, t.where)) end
end

local function status(t, o)
  local r = reaper.record()
  if not r or r.host ~= o.host then
    io.stdout:write(("No reaper is installed on %s for %s: `ephrun reaper install` adds one.\n"):format(t.where,
      o.host and "this machine's launches" or o.home))
    return
  end
  local live
  if r.via == "cron" then
    local _, found = without_job(crontab_lines(t), r.key)
    live = found and "its crontab line is present" or nil
  else
    live = t.sh("systemctl --user is-active " .. q(r.key .. ".timer")).ok and "its timer is active" or nil
  end
  io.stdout:write(("Reaper %s on %s (%s), installed %s: every %s, providers %s, .env read from %s.\n"):format(r.key,
    t.where, r.via, tostring(r.installed), ephrun.time.format_duration(r.every), table.concat(r.providers, ","),
    r.env_dir))
  local log = t.sh("tail -n 5 " .. q(r.home .. "/reaper.log") .. " 2>/dev/null").stdout or ""
  if log ~= "" then io.stdout:write("Last lines of ", r.home, "/reaper.log:\n  ", (log:gsub("\n$", ""):gsub("\n", "\n  ")), "\n") end
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
    bin = { default = "", doc = "the ephrun the job runs (default: this one, or the server's on its PATH)" },
    host = { default = "", doc = "install on this permanent server (the static provider) instead of here" },
    port = { default = 22, doc = "with host: its SSH port" },
    user = { default = "", doc = "with host: the login user (default root)" },
    key_file = { default = "", doc = "with host: the login key (default ~/.ssh/id_ed25519, else the agent)" },
    known_hosts = { default = "", doc = "with host: where its host key is (default ~/.ssh/known_hosts)" },
  },
  run = function(p)
    if p.action ~= "install" and p.action ~= "remove" and p.action ~= "status" then
      fail(("reaper: unknown action '%s': ephrun reaper install | status | remove"):format(p.action))
    end
    local t = p.host ~= "" and remote_target(p) or local_target()
    local o = settings(p, t)
    if p.action == "install" then
      local via = p.via
      if via == "auto" then
        local why
        via, why = detect(t)
        if not via then fail("reaper: " .. why) end
      elseif via ~= "systemd" and via ~= "cron" then
        fail(("reaper: via=%s: give auto, systemd or cron"):format(p.via))
      end
      install(t, o, via)
    elseif p.action == "remove" then
      remove(t, o)
    else
      status(t, o)
    end
  end,
}
