---@meta
--- ephrun.journal: the SQLite record of runs and of every resource a run
--- creates, at `$EPHRUN_HOME/journal.sqlite`. The instance lifecycle writes
--- the intent before the provider's create call, so `ephrun ls` and
--- `ephrun reap` find what a killed run left. Under --dry-run every write is a
--- no-op (dry runs are not journalled) and reads never create the file.
---@class ephrun.journal
local journal = {}

---@class ephrun.journal.Intent
---@field run_id? string default: this run's id
---@field provider string
---@field kind? string default "instance"
---@field recipe? string default: the `ephrun-recipe` tag
---@field tags? table<string,string>
---@field hourly_price? number USD per hour
---@field expires_at? number seconds since the epoch
---@field token? string the idempotency token sent with the create call

---@class ephrun.journal.Resource
---@field key integer
---@field run_id string
---@field recipe string
---@field provider string
---@field kind string
---@field id? string the provider's id (nil until `created`)
---@field token string
---@field tags table<string,string>
---@field extra table what the provider needs to destroy it
---@field intended number when the intent was written
---@field created? number
---@field destroyed? number
---@field hourly_price? number
---@field expires_at? number
---@field status "pending"|"live"|"kept"|"detached"|"destroyed"|"finished"|"failed"
---@field error? string
---@field run_status? string the run's status; nil when the run is not in this journal
---@field run_alive boolean the run's process is still running

---@class ephrun.journal.Run
---@field id string
---@field recipe string
---@field params_hash string
---@field started number
---@field ended? number
---@field status "running"|"ok"|"failed"|"interrupted"
---@field detail? string the error or the signal
---@field pid integer
---@field alive boolean still running (status "running" and its process exists)

--- Records, durably (committed and fsync'd), that a resource is about to be
--- created; call it before the provider's create. Returns its key (0 under --dry-run).
---@param intent ephrun.journal.Intent
---@return integer key
function journal.intent(intent) end

--- Records the provider's id and what is needed to destroy it later (stored as JSON).
---@param key integer
---@param id string
---@param extra? table
function journal.created(key, id, extra) end

--- Marks a created resource kept (keep=true): left on purpose, reaped only once
--- it expired or when `ephrun reap kept=true` asks.
---@param key integer
function journal.kept(key) end

--- Marks a created resource detached: its run ended with its job going
--- (`instance:detach`); `info` is stored as `extra.detach`. Reaped only once expired.
---@param key integer
---@param info table
function journal.detached(key, info) end

--- Marks a detached resource finished: `ephrun finish` destroyed it.
---@param key integer
function journal.finished(key) end

--- Marks the resource destroyed (idempotent).
---@param key integer
function journal.destroyed(key) end

--- Marks a create that failed: nothing exists.
---@param key integer
---@param message? string
function journal.failed(key, message) end

--- Resources, oldest first; `live=true` keeps pending, live, kept and detached ones only.
---@param filter? {live?: boolean, run_id?: string}
---@return ephrun.journal.Resource[]
function journal.resources(filter) end

--- Runs, newest first (`limit` default 20; 0 for all).
---@param opts? {limit?: integer}
---@return ephrun.journal.Run[]
function journal.runs(opts) end

--- One run by id, or nil.
---@param id string
---@return ephrun.journal.Run|nil
function journal.run(id) end

--- The journal file's path.
---@return string
function journal.path() end

return journal
