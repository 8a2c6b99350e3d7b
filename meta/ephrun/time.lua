---@meta
--- ephrun.time: clocks, durations, and sleeping without blocking other tasks.
---@class ephrun.time
local time = {}

--- Sleeps; other tasks run meanwhile and a signal or cancel interrupts it.
---@param d number|string seconds, or a duration such as "90s", "45m", "1h30m"
function time.sleep(d) end

--- Wall-clock time in seconds since the epoch.
---@return number
function time.now() end

--- A monotonic clock in seconds, for measuring intervals.
---@return number
function time.monotonic() end

--- Seconds in a duration string ("90s", "45m", "3h", "1h30m", "250ms", "2d";
--- a bare number is seconds); nil and a message when it is not one.
---@param text string|number
---@return number|nil seconds, string? err
function time.parse_duration(text) end

--- A short readable duration: "350ms", "4.2s", "3m 20s", "1h 05m".
---@param seconds number
---@return string
function time.format_duration(seconds) end

--- UTC time as ISO 8601 ("2026-11-25T16:31:00Z"); now when omitted.
---@param t? number seconds since the epoch
---@return string
function time.iso8601(t) end

return time
