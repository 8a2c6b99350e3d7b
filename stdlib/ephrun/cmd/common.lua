--- Shared by the built-in commands `ephrun ls`, `ephrun reap` and `ephrun history`:
--- what state a journalled resource is in, and plain-text tables.
local ephrun = require "ephrun"

local M = {}

--- Seconds since the epoch of an ISO 8601 UTC time ("2026-11-25T16:31:00Z"), or nil.
function M.parse_iso8601(s)
  if type(s) ~= "string" then return nil end
  local y, mo, d, h, mi, sec = s:match("^(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)")
  if not y then return nil end
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  -- days from civil (Howard Hinnant), independent of the local time zone
  if mo <= 2 then y = y - 1 end
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local mp = (mo + 9) % 12
  local doy = (153 * mp + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  local days = era * 146097 + doe - 719468
  return days * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(sec)
end

--- When the resource started to exist (or to be asked for).
function M.born(r)
  return r.created or r.intended
end

--- Why a journalled (pending, live, kept or detached) resource may be reaped, or nil when
--- its run is alive and it has not expired: "expired", "orphaned", or "kept"
--- (only with `opts.kept`: a kept instance otherwise stays until it expires).
function M.reason(r, now, opts)
  if r.expires_at and r.expires_at < now then return "expired" end
  if r.status == "kept" then return (opts and opts.kept) and "kept" or nil end
  -- a detached run ended its launcher on purpose: its job goes on until the TTL or `ephrun finish`
  if r.status == "detached" then return nil end
  if r.run_status == nil then return "orphaned" end -- its run is not in this journal
  if r.run_status ~= "running" then return "orphaned" end -- the run ended; the resource stayed
  if not r.run_alive then return "orphaned" end -- the run's process died (SIGKILL, crash)
  return nil
end

--- The word `ephrun ls` shows for a resource.
function M.state(r, now)
  local why = M.reason(r, now)
  if why then return why end
  if r.status == "kept" or r.status == "detached" then return r.status end
  return r.status == "pending" and "creating" or "running"
end

--- Cost so far in USD (hourly price × age), or nil when the price is unknown.
function M.cost(r, now)
  if not r.hourly_price then return nil end
  return r.hourly_price * math.max(0, now - M.born(r)) / 3600
end

--- USD as "$1.23", "?" when unknown.
function M.money(x)
  if x == nil then return "?" end
  return ("$%.2f"):format(x)
end

--- Seconds as "5m", "-" when unknown, "expired" when negative.
function M.short_duration(secs)
  if secs == nil then return "-" end
  if secs < 0 then return "expired" end
  if secs < 1 then return "0s" end
  return ephrun.time.format_duration(math.floor(secs))
end

--- Seconds since the epoch as local "YYYY-MM-DD HH:MM:SS".
function M.local_time(t)
  return os.date("%Y-%m-%d %H:%M:%S", math.floor(t))
end

--- Writes `rows` (arrays of strings) under `header` in aligned columns.
function M.table(header, rows, out)
  out = out or io.stdout
  local width = {}
  for _, row in ipairs { header, table.unpack(rows) } do
    for i, cell in ipairs(row) do width[i] = math.max(width[i] or 0, utf8.len(cell) or #cell) end
  end
  local function line(row)
    local parts = {}
    for i, cell in ipairs(row) do
      local pad = i < #row and (" "):rep(width[i] - (utf8.len(cell) or #cell)) or ""
      parts[i] = cell .. pad
    end
    out:write(table.concat(parts, "  "), "\n")
  end
  line(header)
  for _, row in ipairs(rows) do line(row) end
end

return M
