--- ephrun.api: what every provider needs to talk to a cloud's API, written
--- once: a pacer per endpoint shared by all tasks of the process, a retrying
--- call that decides on the structured error (`ephrun.errors`) and honours
--- `Retry-After`, paging as an iterator, single-flight look-ups, a board that
--- answers many waiters of one run with one listing per interval, the
--- mid-create guard, and `poll_until`.
---
--- ```lua
--- local api = require "ephrun.api"
--- local pacer = api.pacer("vultr " .. url, 28)
--- local doc = api.call(function() return one_request() end, { pacer = pacer, idempotent = true })
--- for item in api.paged(function(cursor) return fetch_page(cursor) end) do ... end
--- ```
local ephrun = require "ephrun"
local errors = require "ephrun.errors"

local M = {}

local function now() return ephrun.time.monotonic() end

---------------------------------------------------------------------- pacer

---@class ephrun.api.Pacer
---@field key string the endpoint it paces
---@field rate number requests per second, sustained
---@field burst integer requests that may leave at once after a quiet spell
---@field slack number seconds added to the sliding second the departures are counted in
---@field sent integer requests paced so far
---@field waited number seconds tasks spent waiting for a slot
local Pacer = {}
Pacer.__index = Pacer

local pacers = {}

--- The token bucket of endpoint `key`, shared by every task of this process
--- (made on first use): requests leave at most `rate` per second, `burst` at
--- once after a quiet spell (default 1: evenly spaced). A later call with a
--- new rate, burst or slack changes them for everyone. The requests that
--- really leave are also kept to at most floor(rate) + burst - 1 in any
--- sliding second plus `slack` (the window a throttle such as EC2's counts in;
--- `slack` covers the jitter between leaving here and arriving there).
---@param key string e.g. "vultr https://api.vultr.com/v2", "aws ec2 https://ec2.us-east-1.amazonaws.com"
---@param rate number requests per second (> 0)
---@param burst? integer default 1
---@param slack? number seconds added to the sliding window (default 0)
---@return ephrun.api.Pacer
function M.pacer(key, rate, burst, slack)
  if type(rate) ~= "number" or rate <= 0 then error("api.pacer: rate must be a positive number", 2) end
  burst = burst or 1
  if math.type(burst) ~= "integer" or burst < 1 then error("api.pacer: burst must be a whole number >= 1", 2) end
  slack = slack or 0
  if type(slack) ~= "number" or slack < 0 then error("api.pacer: slack must be a number >= 0", 2) end
  local p = pacers[key]
  if not p then
    -- tat: the theoretical arrival time of the next request (GCRA, the
    -- token bucket written as one timestamp); left: when the latest requests
    -- really left, oldest first
    p = setmetatable({ key = key, tat = -math.huge, dep = -math.huge, left = {}, sent = 0, waited = 0 }, Pacer)
    pacers[key] = p
  end
  p.rate, p.burst, p.slack = rate, burst, slack
  return p
end

--- Waits until this task may send one request. Slots are handed out in the
--- order tasks ask, so fifty tasks queue instead of racing.
function Pacer:take()
  local t = now()
  local tat = math.max(self.tat, t)
  local at = tat - (self.burst - 1) / self.rate
  self.tat = tat + 1 / self.rate
  self.sent = self.sent + 1
  if at > t then
    self.waited = self.waited + (at - t)
    ephrun.time.sleep(at - t)
  end
  -- Tasks woken late (the Lua thread was busy elsewhere) would leave together
  -- and could trip a limit that counts arrivals, so departures are kept to
  -- the limit's own rule: n in any sliding window. An even spacing of the
  -- departures instead would carry each late wake-up over to every request
  -- after it (at 19/s, fifty RunInstances went out at 16/s on a busy machine).
  local whole = math.max(1, math.floor(self.rate + 1e-9))
  local n, window = whole + self.burst - 1, whole / self.rate + self.slack
  local left = self.left
  while true do
    t = now()
    local oldest = #left >= n and left[#left - n + 1] or -math.huge
    local at2 = math.max(self.dep, oldest + window)
    if at2 <= t then
      left[#left + 1] = t
      while #left > n do table.remove(left, 1) end
      return
    end
    self.waited = self.waited + (at2 - t)
    ephrun.time.sleep(at2 - t)
  end
end

--- Sends nobody for `seconds` (after a 429 or a throttling error, which is
--- about the endpoint, not the one task that got it).
---@param seconds number
function Pacer:hold(seconds)
  local t = now() + seconds + (self.burst - 1) / self.rate
  if t > self.tat then self.tat = t end
  if t > self.dep then self.dep = t end
end

---------------------------------------------------------------------- errors of HTTP answers

local MONTHS = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6, Jul = 7, Aug = 8, Sep = 9, Oct = 10,
  Nov = 11, Dec = 12 }

-- Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar (H. Hinnant).
local function days_from_civil(y, m, d)
  y = m <= 2 and y - 1 or y
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local doy = (153 * (m + (m > 2 and -3 or 9)) + 2) // 5 + d - 1
  return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
end

--- Seconds to wait that a `Retry-After` value asks for: delay-seconds
--- ("120") or an HTTP date ("Wed, 21 Oct 2026 07:28:00 GMT", also the
--- RFC 850 and asctime forms), counted from `epoch_now` (default
--- `ephrun.time.now()`); a date in the past is 0. Nil when absent or unreadable.
---@param value any a header value
---@param epoch_now? number
---@return number|nil
function M.retry_after(value, epoch_now)
  if value == nil then return nil end
  local v = tostring(value):match("^%s*(.-)%s*$")
  local n = tonumber(v)
  if n then return n >= 0 and n or nil end
  local d, mon, y, h, mi, s = v:match("^%a+,%s*(%d+)[%s%-](%a+)[%s%-](%d+)%s+(%d+):(%d+):(%d+)%s+GMT$")
  if not d then mon, d, h, mi, s, y = v:match("^%a+%s+(%a+)%s+(%d+)%s+(%d+):(%d+):(%d+)%s+(%d+)$") end
  if not d or not MONTHS[mon] then return nil end
  y = tonumber(y)
  if y < 100 then y = y + (y < 70 and 2000 or 1900) end
  local t = days_from_civil(y, MONTHS[mon], tonumber(d)) * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(s)
  return math.max(0, t - (epoch_now or ephrun.time.now()))
end

--- The contract's error kind for an HTTP status (0 or nil: no answer).
---@param status? integer
---@return ephrun.ErrorKind
function M.kind_of(status)
  if not status or status == 0 then return "network" end
  if status == 423 then return "locked" end
  if status == 429 then return "rate_limited" end
  if status >= 500 then return "server" end
  if status == 404 then return "not_found" end
  if status == 401 or status == 403 then return "auth" end
  return "invalid"
end

--- A structured error for a failed HTTP exchange: `kind` from the status
--- (`o.kind` overrides it, e.g. a cloud's "locked" that arrives as a 500),
--- `retry_after` from the response's `Retry-After`, `status` kept.
---@param resp? ephrun.http.Response nil when there was no answer
---@param message string what failed, for people
---@param o? {kind?: ephrun.ErrorKind, retry?: boolean}
---@return ephrun.Error
function M.http_error(resp, message, o)
  o = o or {}
  local status = resp and resp.status or nil
  return errors.new { kind = o.kind or M.kind_of(status), retry = o.retry, status = status, message = message,
    retry_after = resp and resp.headers and M.retry_after(resp.headers["retry-after"]) or nil }
end

---------------------------------------------------------------------- the retrying call

-- What a call retries by itself: throttling refused the request, so sending
-- it again is always safe; a 5xx or no answer may hide one that was carried
-- out, so only calls that are safe to repeat send those again.
local ONCE = { rate_limited = true }
local REPEATABLE = { rate_limited = true, server = true, network = true }

---@class ephrun.api.CallOpts
---@field what? string names the call in logs, e.g. "vultr: GET /instances"
---@field pacer? ephrun.api.Pacer every attempt takes a slot; a rate_limited error holds it back for everyone
---@field idempotent? boolean safe to send twice: server and network errors are retried too (default: only rate_limited)
---@field kinds? table<ephrun.ErrorKind, boolean> the kinds retried, instead of the default above
---@field deadline? number seconds for all attempts and waits (default 300)
---@field attempts? integer most attempts (default: no limit but the deadline)
---@field delay? number first backoff in seconds (default 0.5), doubled each retry
---@field max_delay? number longest backoff (default 16)
---@field stats? {requests?: integer, retried?: integer, throttled?: integer} counters to add to

--- Calls `fn(attempt)` until it returns, retrying a structured error whose
--- `retry` is set and whose `kind` is one the call retries (see
--- `CallOpts.idempotent`, `kinds`). The wait is the error's `retry_after`
--- (the server's `Retry-After`) when it has one, else a jittered backoff
--- (half the delay plus up to half again). Raises the last error when it may
--- not be retried, when `attempts` are used up, or when waiting would pass
--- the deadline. Any other error (a plain string, a cancellation) is raised
--- at once: the decision never reads message text.
---@param fn fun(attempt: integer): ...
---@param o? ephrun.api.CallOpts
---@return ...
function M.call(fn, o)
  o = o or {}
  local limit = now() + (o.deadline or 300)
  local kinds = o.kinds or (o.idempotent and REPEATABLE or ONCE)
  local delay, max_delay = o.delay or 0.5, o.max_delay or 16
  local stats = o.stats
  local attempt = 0
  while true do
    attempt = attempt + 1
    if o.pacer then o.pacer:take() end
    if stats then stats.requests = (stats.requests or 0) + 1 end
    local res = table.pack(pcall(fn, attempt))
    if res[1] then return table.unpack(res, 2, res.n) end
    local err = res[2]
    if not (errors.retryable(err) and kinds[err.kind]) then error(err, 0) end
    local wait = tonumber(err.retry_after) or (delay / 2 + math.random() * delay / 2)
    if attempt >= (o.attempts or math.huge) or now() + wait > limit then error(err, 0) end
    if err.kind == "rate_limited" then
      if stats then stats.throttled = (stats.throttled or 0) + 1 end
      if o.pacer then o.pacer:hold(wait) end
    end
    if stats then stats.retried = (stats.retried or 0) + 1 end
    ephrun.log.debug("%s: %s; retry %d in %.1fs", o.what or "api", tostring(err), attempt, wait)
    ephrun.time.sleep(wait)
    delay = math.min(delay * 2, max_delay)
  end
end

---------------------------------------------------------------------- paging

local function more(cursor)
  return (type(cursor) == "string" and cursor ~= "") or type(cursor) == "number"
end

--- Every item of a paged listing, as an iterator. `fetch(cursor)` gets one
--- page (`cursor` is nil for the first) and returns its items and the next
--- cursor (Vultr's `meta.links.next`, EC2's `NextToken`); a missing, empty
--- or JSON-null cursor ends it. Pages are fetched as the loop needs them.
--- Raises when a cursor repeats or there are more than `o.max_pages` (1000).
---
--- ```lua
--- for raw in api.paged(function(token)
---   local r = call("DescribeInstances", { NextToken = token }); return instances(r), r.nextToken
--- end) do ... end
--- ```
---@param fetch fun(cursor: any): any[], any
---@param o? {what?: string, max_pages?: integer}
---@return fun(): any
function M.paged(fetch, o)
  o = o or {}
  local max = o.max_pages or 1000
  local items, i, cursor, pages, last = {}, 0, nil, 0, false
  return function()
    while true do
      if i < #items then
        i = i + 1
        return items[i]
      end
      if last then return nil end
      pages = pages + 1
      if pages > max then error(("%s: more than %d pages"):format(o.what or "api.paged", max), 0) end
      local nxt
      items, nxt = fetch(cursor)
      items, i = items or {}, 0
      if not more(nxt) then
        last = true
      elseif nxt == cursor then
        error(("%s: the API sent the same page cursor twice"):format(o.what or "api.paged"), 0)
      else
        cursor = nxt
      end
    end
  end
end

--- Every item of `api.paged(fetch, o)` in a list.
---@param fetch fun(cursor: any): any[], any
---@param o? {what?: string, max_pages?: integer}
---@return any[]
function M.all(fetch, o)
  local out = {}
  for item in M.paged(fetch, o) do out[#out + 1] = item end
  return out
end

---------------------------------------------------------------------- single-flight

local flights = {}

--- Runs `fn(...)` once for all tasks that ask for `key` while it runs: the
--- first caller does the request, the others wait (without polling) and get
--- its results or its error. Nothing is kept afterwards (see `api.once`).
--- When the caller doing it is cancelled, a waiter does it instead.
---@param key string
---@param fn fun(...): ...
---@return ...
function M.single_flight(key, fn, ...)
  local f = flights[key]
  while f do
    f.done:wait()
    if not f.cancelled then
      if f.ok then return table.unpack(f.results, 1, f.results.n) end
      error(f.err, 0)
    end
    f = flights[key]
  end
  f = { done = ephrun.event() }
  flights[key] = f
  -- Landed however it ends: a cancellation raised after the pcall (a pcall
  -- cannot swallow one) still wakes the waiters, and one of them redoes it.
  local _ <close> = setmetatable({}, { __close = function()
    if flights[key] == f then flights[key] = nil end
    if f.ok == nil then f.cancelled = true end
    f.done:set()
  end })
  local res = table.pack(pcall(fn, ...))
  if res[1] then
    f.results, f.ok = table.pack(table.unpack(res, 2, res.n)), true
    return table.unpack(f.results, 1, f.results.n)
  end
  f.err, f.ok, f.cancelled = res[2], false, getmetatable(res[2]) == ephrun.Cancelled
  error(f.err, 0)
end

local memo = {}

--- `api.single_flight(key, fn, ...)`, and its results kept for the rest of
--- the process: later calls return them without calling `fn`. A failure is
--- not kept (the next call tries again). For what a run needs once: a plan
--- list, its key pair, an image look-up.
---@param key string
---@param fn fun(...): ...
---@return ...
function M.once(key, fn, ...)
  local m = memo[key]
  if not m then
    m = table.pack(M.single_flight("once\0" .. key, fn, ...))
    memo[key] = m
  end
  return table.unpack(m, 1, m.n)
end

--- Drops what `api.once(key, ...)` kept (the resource was deleted).
---@param key string
function M.forget(key)
  memo[key] = nil
end

---------------------------------------------------------------------- the shared board

---@class ephrun.api.BoardOpts
---@field fetch fun(): table<string, any> one listing of everything the board watches, by id
---@field signature fun(raw: any): string what of an item counts as a change
---@field lookup fun(id: string): any|nil one item by id (nil: it is gone), for an id the listing keeps missing
---@field first? number seconds between listings after a change (default 0.25)
---@field max? number longest interval, reached while nothing changes (default 2)
---@field grace? number seconds an id may be missing before `lookup` is asked (default 2)

---@class ephrun.api.Board
---@field key string
---@field interval number seconds until the next listing may be taken
---@field listings integer listings taken so far
local Board = {}
Board.__index = Board

local boards = {}

--- The board `key` (made on first use with `o`; shared by every task of the
--- process): many tasks waiting on items of one listing (the instances of a
--- run) share one `fetch` per interval, which starts at `first`, grows by
--- 1.5 while nothing changes, up to `max`, and shrinks again when something does.
---@param key string e.g. the API URL and the run id
---@param o ephrun.api.BoardOpts
---@return ephrun.api.Board
function M.board(key, o)
  local b = boards[key]
  if not b then
    local first = math.min(o.first or 0.25, o.max or 2)
    b = setmetatable({ key = key, o = o, at = -math.huge, by_id = {}, missing = {}, first = first,
      interval = first, listings = 0 }, Board)
    boards[key] = b
  end
  return b
end

local function signature_of(b, map)
  local parts = {}
  for id, raw in pairs(map) do parts[#parts + 1] = tostring(id) .. "\0" .. b.o.signature(raw) end
  table.sort(parts)
  return table.concat(parts, "\1")
end

-- Takes a listing when the last is older than the interval (one task does it; the others wait for it).
local function refresh(b)
  M.single_flight("board\0" .. b.key, function()
    if now() - b.at < b.interval then return end
    local map = b.o.fetch()
    local sig = signature_of(b, map)
    b.interval = sig == b.sig and math.min(b.interval * 1.5, b.o.max or 2) or b.first
    b.by_id, b.at, b.sig = map, now(), sig
    b.listings = b.listings + 1
  end)
end

--- Item `id` as the latest listing shows it, and the seconds until asking
--- again is worth it. An id the listing does not have yet (made after it was
--- taken) gives `false` for up to `grace` seconds; after that `lookup(id)` is
--- asked once and its answer returned (nil: the item is gone).
---@param id string
---@return any|false|nil item, number next_in
function Board:get(id)
  refresh(self)
  -- Wake just after the next listing is due; a little spread keeps the waiters from all asking at once.
  local next_in = math.max(0.02, self.at + self.interval - now()) + math.random() * 0.01
  local raw = self.by_id[id]
  if raw ~= nil then
    self.missing[id] = nil
    return raw, next_in
  end
  local since = self.missing[id]
  if not since then
    self.missing[id] = now()
    self.interval = self.first
    return false, next_in
  end
  if now() - since < (self.o.grace or 2) then return false, next_in end
  self.missing[id] = nil
  return self.o.lookup(id), next_in
end

---------------------------------------------------------------------- polling

---@class ephrun.api.PollOpts
---@field deadline? number seconds (default 600)
---@field delay? number first pause (default 0.25)
---@field max_delay? number longest pause (default 2)
---@field factor? number growth of the pause per poll (default 1.5)
---@field what? string what is awaited, for the timeout error ("vultr instance 42 to be running")
---@field timeout_message? fun(state: any, deadline: number): string the timeout error's message instead
---@field progress? fun(elapsed: number, state: any) called every `progress_every` seconds of a long wait
---@field progress_every? number default 30
---@field subject? string with `show`: what is awaited, e.g. "aws instance i-1"; the timeout error then says
--- "SUBJECT is still SHOWN after D[, not GOAL]" and every `progress_every` seconds the log says
--- "SUBJECT: still SHOWN after T[, waiting for GOAL]" (unless `timeout_message`/`progress` are given)
---@field show? fun(state: any): string the awaited thing's state in words ("pending")
---@field goal? string the state awaited ("running")

--- Calls `probe()` until it says done, pausing between calls with backoff.
--- `probe` returns `done, state[, wait]`: when `done`, `state` is returned;
--- `wait` (seconds) replaces the backoff's next pause (a shared board knows
--- when its next listing is due). A pause that would pass the deadline
--- raises a `timeout` error instead. `probe` raises to give up early (the
--- thing awaited is gone).
---@param probe fun(): boolean, any, number?
---@param o? ephrun.api.PollOpts
---@return any state
function M.poll_until(probe, o)
  o = o or {}
  if o.subject and o.show then
    local goal = o.goal
    o.timeout_message = o.timeout_message or function(state, deadline)
      return ("%s is still %s after %s%s"):format(o.subject, o.show(state), ephrun.time.format_duration(deadline),
        goal and (", not " .. goal) or "")
    end
    o.progress = o.progress or function(elapsed, state)
      ephrun.log.info("%s: still %s after %s%s", o.subject, o.show(state), ephrun.time.format_duration(elapsed),
        goal and (", waiting for " .. goal) or "")
    end
  end
  local deadline = o.deadline or 600
  local started = now()
  local limit = started + deadline
  local every = o.progress_every or 30
  local next_progress = started + every
  local delay, max_delay, factor = o.delay or 0.25, o.max_delay or 2, o.factor or 1.5
  delay = math.min(delay, max_delay)
  while true do
    local done, state, wait = probe()
    if done then return state end
    local t = now()
    if o.progress and t >= next_progress then
      o.progress(t - started, state)
      next_progress = t + every
    end
    local pause = wait or delay
    if t + pause > limit then
      errors.raise { kind = "timeout", message = o.timeout_message and o.timeout_message(state, deadline)
        or ("%s: not done after %s"):format(o.what or "wait", ephrun.time.format_duration(deadline)) }
    end
    ephrun.time.sleep(pause)
    if not wait then delay = math.min(delay * factor, max_delay) end
  end
end

---------------------------------------------------------------------- the mid-create guard

-- A create that failed so may have happened all the same (a 5xx, a lost
-- reply), or was refused before anything was done (throttling).
local CREATE_RETRY = { server = true, network = true, rate_limited = true }

---@class ephrun.api.CreateOpts
---@field create fun(attempt: integer): any one attempt (not retried inside on a 5xx or a lost reply); its result is returned
---@field lookup fun(): any|nil finds what an attempt made, by the unique label, tag or token the create carries
---@field undo fun() the guard: removes whatever `lookup` finds; runs if the run ends before a reply arrives
---@field what string the guard cleanup's description ("delete the Vultr instance labelled X if its create went through")
---@field hint? string a command that removes it by hand
---@field name? string names the create in logs ("vultr: create", "aws: RunInstances")
---@field describe? fun(found: any): string names what `lookup` found in logs ("instance 42")
---@field retry? fun(err: any): boolean which failures are tried again (default: structured, `retry` set, kind server, network or rate_limited)
---@field deadline? number seconds for all attempts (default 300)
---@field delay? number first pause (default 1), doubled up to `max_delay` (default 30)

--- Creates something billable so that a retry never makes a second, unseen
--- one and an interrupted run leaves nothing: the guard cleanup `undo` is
--- registered before the first attempt and dismissed once a reply is in
--- hand; after a failure that may hide a create, `lookup` runs before the
--- next attempt, and what it finds is returned as the result. A failure
--- that is not retried is raised with the guard still registered, so the
--- run's cleanup looks once more.
---@param o ephrun.api.CreateOpts
---@return any
function M.create(o)
  local guard = ephrun.defer(o.undo, o.what, o.hint)
  local retry = o.retry or function(err) return errors.retryable(err) and CREATE_RETRY[err.kind] == true end
  local limit = now() + (o.deadline or 300)
  local delay, attempt = o.delay or 1, 0
  local name = o.name or "create"
  while true do
    attempt = attempt + 1
    local ok, r = pcall(o.create, attempt)
    if ok then
      guard:cancel()
      return r
    end
    if not retry(r) then error(r, 0) end
    local found = o.lookup()
    if found then
      ephrun.log.warn("%s answered '%s' but %s exists; using it", name, tostring(r),
        o.describe and o.describe(found) or "what it made")
      guard:cancel()
      return found
    end
    if now() + delay > limit then error(r, 0) end
    ephrun.log.warn("%s; nothing was made, retrying in %gs", tostring(r), delay)
    ephrun.time.sleep(delay)
    delay = math.min(delay * 2, o.max_delay or 30)
  end
end

return M
