---@meta
--- ephrun.proc: local programs, run from an argv vector (no shell unless
--- `shell=true`). Waiting happens off the Lua thread, so other tasks run
--- meanwhile; a signal or `task:cancel` stops the child (SIGTERM, then SIGKILL
--- after `grace`). Each child gets a clean signal state and its own process
--- group; whatever still runs when ephrun ends is terminated.
---
--- Secrets: pass them in `env`, never in argv (any local user can read a
--- process's argv). Commands in errors, logs and the plan are redacted; the
--- plan lists env names only.
---@class ephrun.proc
local proc = {}

---@class ephrun.proc.Opts
---@field env? table<string, string|number|false> set on top of ephrun's environment; false unsets
---@field env_clear? boolean start from an empty environment (then `env` only)
---@field cwd? string working directory
---@field stdin? string fed to the child's stdin (default: /dev/null)
---@field capture? boolean keep stdout/stderr in the result (default true; up to 64 MiB each, then the tail)
---@field stream? boolean log each output line as "[prefix] line" (default true)
---@field prefix? string log prefix (default: the program's name)
---@field timeout? number|string seconds or "90s": then SIGTERM, SIGKILL after `grace`
---@field grace? number|string between SIGTERM and SIGKILL (default 5 s)
---@field check? boolean raise when the command fails (default true)
---@field shell? boolean run through /bin/sh -c: argv may be a string, or a table {script, $1, $2...}

---@class ephrun.proc.Result
---@field code? integer exit code (nil when killed by a signal or timed out)
---@field signal? integer the signal that ended it
---@field stdout string
---@field stderr string
---@field duration number seconds
---@field ok boolean exited with 0
---@field timed_out? boolean
---@field pid? integer
---@field dry_run? boolean true for the placeholder returned under --dry-run

--- Runs a program to its end. With `check` (the default) a non-zero exit, a
--- signal or a timeout raises an error naming the command (redacted), the exit
--- code and the last stderr lines; a program that cannot start raises too.
--- With `check=false` it returns the result, or nil and a message when the
--- program could not start. Under --dry-run it records a "spawn" step and
--- returns `{code=0, stdout="", stderr="", ok=true, dry_run=true}`.
---@param argv string[]|string
---@param opts? ephrun.proc.Opts
---@return ephrun.proc.Result|nil result, string? err
function proc.run(argv, opts) end

---@class ephrun.proc.Process
local Process = {} -- luacheck: ignore 241

--- Waits for the exit (at most `timeout` seconds); returns the result, or
--- nil, "timeout" with the child still running. Follows `check` like
--- proc.run, except that dying from a signal sent by `:kill` is not an error.
--- A cancelled wait terminates the child.
---@param timeout? number|string
---@return ephrun.proc.Result|nil result, string? err
function Process:wait(timeout) end

--- Sends a signal to the child's process group; false when it already exited.
---@param sig? string|integer "TERM" (default), "INT", "KILL", "HUP", 9...
---@return boolean
function Process:kill(sig) end

--- The child's pid (nil under --dry-run or once closed).
---@return integer|nil
function Process:pid() end

--- True until the child has exited.
---@return boolean
function Process:running() end

--- Terminates the child if it still runs (SIGTERM, SIGKILL after `grace`).
--- Idempotent; also run by `<close>` and by garbage collection.
function Process:close() end

--- Starts a program and returns at once. Same options as proc.run (`timeout`
--- does not apply; use `:wait(timeout)`). nil and a message when it cannot
--- start. Under --dry-run: records a "spawn" step and returns a handle whose
--- wait returns the placeholder result.
---@param argv string[]|string
---@param opts? ephrun.proc.Opts
---@return ephrun.proc.Process|nil p, string? err
function proc.spawn(argv, opts) end

--- The full path of `name` found in PATH, or nil.
---@param name string
---@return string|nil
function proc.which(name) end

return proc
