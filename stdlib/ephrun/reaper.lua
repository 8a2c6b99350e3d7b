--- The reaper: a job on this machine (a systemd user timer, or a crontab line
--- where there is no systemd user session) that runs `ephrun reap --expired
--- --yes` every few minutes, so an instance whose provider's lifetime timer
--- only stops the CPU (Vultr: a halted instance still bills) is deleted at its
--- expiry even when the launcher is gone.
---
--- The job carries no secret: it runs in `env_dir` (default
--- `~/.config/ephrun`), where ephrun reads `VULTR_API_KEY` from `.env` at run
--- time, as for any recipe. Each installation is keyed by its `EPHRUN_HOME`,
--- so several state directories can each have their own job, and `remove`
--- takes away only its own. `$EPHRUN_HOME/reaper.json` records what was
--- installed; the plan reads it (a file, so a --dry-run spawns nothing).
local ephrun = require "ephrun"

local M = {}

local q = ephrun.shell_quote

local function state_dir()
  return require("ephrun.cloud").state_dir()
end

local function home()
  return os.getenv("HOME") or "/root"
end

--- `$XDG_CONFIG_HOME/ephrun`, else `~/.config/ephrun`: where the job reads `.env`.
---@return string
function M.config_dir()
  local x = os.getenv("XDG_CONFIG_HOME")
  if x and x ~= "" then return x .. "/ephrun" end
  return home() .. "/.config/ephrun"
end

--- The name of this state directory's job: `ephrun-reaper`, with a short hash of
--- `EPHRUN_HOME` when it is set.
---@return string
function M.key()
  local h = os.getenv("EPHRUN_HOME")
  if not h or h == "" then return "ephrun-reaper" end
  return "ephrun-reaper-" .. ephrun.fs.hash_string(state_dir()):sub(1, 8)
end

--- Where the record of the installed job is kept.
---@return string
function M.record_path()
  return state_dir() .. "/reaper.json"
end

-- True when cron's spool can be read (as root) and holds no line of job `key`
-- for this user: the job was removed by hand (crontab -e), the record is stale.
local function cron_job_gone(key)
  local spool = "/var/spool/cron/crontabs"
  if not ephrun.fs.list(spool) then return false end
  -- cron names the file after the user of our uid (USER may be unset, or stale under su)
  local id = tonumber((ephrun.fs.read("/proc/self/status") or ""):match("\nUid:%s*(%d+)"))
  local user
  for line in (ephrun.fs.read("/etc/passwd") or ""):gmatch("[^\n]+") do
    local name, uid = line:match("^([^:]*):[^:]*:(%d+):")
    if uid and tonumber(uid) == id then user = name break end
  end
  if not user then return false end
  local text = ephrun.fs.read(spool .. "/" .. user) or ""
  for line in text:gmatch("[^\n]+") do
    if line:sub(1, 1) ~= "#" and line:sub(-(#key + 2)) == "# " .. key then return false end
  end
  return true
end

--- The record `install` wrote (`{via, key, every, providers, env_dir, bin, units?}`), or nil. A
--- job seen to be gone (a systemd timer file, or a crontab line where the spool is readable) counts as none.
---@return table|nil
function M.record()
  local text = ephrun.fs.read(M.record_path())
  if not text then return nil end
  local ok, r = pcall(ephrun.json.decode, text)
  if not ok or type(r) ~= "table" then return nil end
  if r.via == "systemd" and not r.host and not ephrun.fs.exists(r.units_dir .. "/" .. r.key .. ".timer") then
    return nil
  end
  if r.via == "cron" and not r.host and cron_job_gone(r.key) then return nil end
  return r
end

--- True when a reaper is installed for this state directory and scans `provider`.
---@param provider string
---@return boolean
function M.covers(provider)
  local r = M.record()
  if not r then return false end
  for _, p in ipairs(r.providers or {}) do
    if p == provider then return true end
  end
  return false
end

-- Settings (never secrets) the job needs to reach the same endpoints as the
-- user who installs it; taken from the installer's environment.
local PASSED = { "VULTR_API_URL", "EPHRUN_VULTR_RATE", "EPHRUN_VULTR_PAGE_SIZE", "EPHRUN_VULTR_DESTROY_DEADLINE",
  "AWS_PROFILE", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2" }

--- The job's environment besides `EPHRUN_HOME`: `{{name, value}...}` of the
--- non-secret endpoint settings set now.
---@return string[][]
function M.passed_env()
  local out = {}
  for _, name in ipairs(PASSED) do
    local v = os.getenv(name)
    if v and v ~= "" then out[#out + 1] = { name, v } end
  end
  return out
end

--- The reap command the job runs, as argv.
---@param o {bin: string, providers: string[]}
---@return string[]
function M.argv(o)
  return { o.bin, "reap", "--expired", "--yes", "-q", "providers=" .. table.concat(o.providers, ",") }
end

--- The crontab lines of the job (a comment and the entry), both ending in the
--- job's marker so `remove` finds exactly them.
---@param o {key: string, every: integer, env_dir: string, home: string, bin: string, providers: string[], env: string[][]}
---@return string[]
function M.cron_lines(o)
  local minutes = math.max(1, o.every // 60)
  local when = minutes >= 60 and "0 * * * *" or ("*/%d * * * *"):format(minutes)
  local words = {}
  for i, w in ipairs(M.argv(o)) do words[i] = q(w) end
  local marker = "# " .. o.key
  -- `%` ends a cron command (the rest becomes stdin); escape it in the paths.
  local env = { "EPHRUN_HOME=" .. q(o.home) }
  for _, kv in ipairs(o.env or {}) do env[#env + 1] = kv[1] .. "=" .. q(kv[2]) end
  -- flock -n: a reap still retrying a locked instance is not joined by the next one,
  -- which exits 75 (EX_TEMPFAIL); a systemd timer never starts its service twice either.
  local cmd = ("cd %s && %s exec flock -n -E 75 %s %s >>%s 2>&1"):format(q(o.env_dir), table.concat(env, " "),
    q(o.home .. "/reaper.lock"), table.concat(words, " "), q(o.home .. "/reaper.log")):gsub("%%", "\\%%")
  return {
    marker .. ": ephrun reap --expired every " .. ephrun.time.format_duration(o.every)
      .. " (VULTR_API_KEY from " .. o.env_dir .. "/.env); `ephrun reaper remove` deletes it",
    when .. " " .. cmd .. " " .. marker,
  }
end

-- A systemd unit value: `%` is a specifier, and words with spaces need quotes.
local function unit_word(s)
  s = tostring(s):gsub("%%", "%%%%")
  if s:match("^[%w%-%._/=,:@+]+$") then return s end
  return '"' .. s:gsub('[\\"]', "\\%0") .. '"'
end

--- The two systemd user units: `{[key..".service"] = text, [key..".timer"] = text}`.
---@param o {key: string, every: integer, env_dir: string, home: string, bin: string, providers: string[], env: string[][]}
---@return table<string, string>
function M.units(o)
  local words = {}
  for i, w in ipairs(M.argv(o)) do words[i] = unit_word(w) end
  local service = table.concat({
    "[Unit]",
    "Description=ephrun reaper: destroy expired ephrun instances (ephrun reap --expired)",
    "",
    "[Service]",
    "Type=oneshot",
    -- ephrun reads VULTR_API_KEY from .env in its working directory: no secret in this file.
    -- a path here is taken as it is (no quotes), only `%` is special
    "WorkingDirectory=" .. o.env_dir:gsub("%%", "%%%%"),
    "Environment=" .. unit_word("EPHRUN_HOME=" .. o.home),
  }, "\n")
  for _, kv in ipairs(o.env or {}) do service = service .. "\nEnvironment=" .. unit_word(kv[1] .. "=" .. kv[2]) end
  service = service .. "\nExecStart=" .. table.concat(words, " ") .. "\n"
  local every = ("%ds"):format(o.every)
  local timer = table.concat({
    "[Unit]",
    "Description=run ephrun reap --expired every " .. ephrun.time.format_duration(o.every),
    "",
    "[Timer]",
    "OnActiveSec=" .. every,
    "OnUnitActiveSec=" .. every,
    "Unit=" .. o.key .. ".service",
    "",
    "[Install]",
    "WantedBy=timers.target",
    "",
  }, "\n")
  return { [o.key .. ".service"] = service, [o.key .. ".timer"] = timer }
end

--- The directory systemd reads user units from.
---@return string
function M.units_dir()
  return M.config_dir():gsub("/ephrun$", "") .. "/systemd/user"
end

local function on_path(prog)
  for dir in (os.getenv("PATH") or "/usr/bin:/bin"):gmatch("[^:]+") do
    if ephrun.fs.exists(dir .. "/" .. prog) then return dir .. "/" .. prog end
  end
end

--- How a job can be installed here: "systemd" when a systemd user manager
--- answers (its private socket exists), else "cron" when `crontab` is on PATH,
--- else nil and why. Looks at files only, so a --dry-run spawns nothing.
---@return string|nil via, string? why
function M.detect()
  local rt = os.getenv("XDG_RUNTIME_DIR")
  if rt and rt ~= "" and ephrun.fs.exists(rt .. "/systemd/private") and on_path("systemctl") then
    return "systemd"
  end
  if on_path("crontab") then return "cron" end
  return nil, "there is no systemd user session and no crontab program: install cron (apt-get install cron), "
    .. "or run `ephrun reap --expired --yes` every few minutes from your own scheduler"
end

return M
