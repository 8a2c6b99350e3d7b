---@meta
--- ephrun.log: leveled logging. Lines are prefixed with the task's name and
--- every registered secret is redacted before any sink sees it.
---@class ephrun.log
local log = {}

--- Logs at trace level (shown with -vv). With a `%` in the first argument and
--- more arguments, formats like string.format; otherwise joins like print.
---@param fmt any
---@param ... any
function log.trace(fmt, ...) end

--- Logs at debug level (shown with -v).
---@param fmt any
---@param ... any
function log.debug(fmt, ...) end

--- Logs at info level (the default).
---@param fmt any
---@param ... any
function log.info(fmt, ...) end

--- Logs a warning (shown even with -q).
---@param fmt any
---@param ... any
function log.warn(fmt, ...) end

--- Logs an error (shown even with -q).
---@param fmt any
---@param ... any
function log.error(fmt, ...) end

--- True when a message at `level` would be written somewhere.
---@param level "trace"|"debug"|"info"|"warn"|"error"
---@return boolean
function log.enabled(level) end

return log
