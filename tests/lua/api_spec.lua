-- ephrun.api, the providers' toolkit, with real HTTP against tests/support/http_server.py.
local ephrun = require "ephrun"
local api = require "ephrun.api"
local errors = require "ephrun.errors"
local spec = require "ephrun.spec"
local it, eq, ok, raises, contains = spec.it, spec.eq, spec.ok, spec.raises, spec.contains
local http, json, time = ephrun.http, ephrun.json, ephrun.time

local function source_dir()
  local env = os.getenv("EPHRUN_SOURCE_DIR")
  if env and env ~= "" then return env end
  local here = debug.getinfo(1, "S").source:match("^@(.*)/tests/lua/[^/]*$")
  return here or "."
end

-- The test HTTP server, started once; it stops when its stdin closes.
local server
local function srv()
  if server then return server end
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. dir))
  local pipe = assert(io.popen(("exec python3 %s/tests/support/http_server.py --port-file %s/port --log %s/log")
    :format(source_dir(), dir, dir), "w"))
  local port
  for _ = 1, 200 do
    local f = io.open(dir .. "/port")
    if f then port = f:read("n"); f:close() end
    if port then break end
    time.sleep(0.05)
  end
  assert(port, "the test HTTP server did not start")
  ephrun.defer(function()
    pipe:close()
    os.execute("rm -rf " .. dir)
  end, "stop the test HTTP server")
  server = {
    url = function(path) return "http://127.0.0.1:" .. port .. path end,
    count = function(name)
      return json.decode(http.get("http://127.0.0.1:" .. port .. "/count/" .. name).body).count
    end,
    hits = function(prefix)
      local f = io.open(dir .. "/log")
      local s = f and f:read("a") or ""
      if f then f:close() end
      local n = 0
      for line in s:gmatch("[^\n]+") do
        if line:find(prefix, 1, true) then n = n + 1 end
      end
      return n
    end,
  }
  return server
end

-- One HTTP attempt as a provider makes it: a failure becomes a structured error.
local function attempt(method, url)
  local resp, err = http.request { method = method, url = url, retries = 0, timeout = 10 }
  if resp and resp.ok then return resp end
  error(api.http_error(resp, ("%s %s: %s"):format(method, url, resp and ("HTTP " .. resp.status) or tostring(err))), 0)
end

it("a pacer spaces requests at its rate, in the order tasks ask, and is shared by its key", function()
  local p = api.pacer("spec spacing", 20)
  eq(api.pacer("spec spacing", 20), p, "the same key gives the same pacer")
  local stamps = {}
  local t0 = time.monotonic()
  ephrun.parallel({ 1, 2, 3 }, function()
    for _ = 1, 4 do
      api.pacer("spec spacing", 20):take()
      stamps[#stamps + 1] = time.monotonic() - t0
    end
  end)
  eq(#stamps, 12)
  table.sort(stamps)
  for k, s in ipairs(stamps) do
    ok(s >= (k - 1) / 20 - 0.002, ("request %d left at %.3fs, before its slot %.3fs"):format(k, s, (k - 1) / 20))
  end
  eq(p.sent, 12)
end)

it("a pacer's tasks woken late catch up, never more than its rate in a sliding second", function()
  local p = api.pacer("spec late", 20)
  local left = {}
  local tasks = {}
  for i = 1, 6 do tasks[i] = ephrun.spawn(function() p:take(); left[#left + 1] = time.monotonic() end) end
  ephrun.yield() -- every task has its slot (0, 50, ..., 250 ms) and sleeps
  local t0 = time.monotonic()
  while time.monotonic() - t0 < 0.4 do end -- the Lua thread is busy: every slot passes meanwhile
  local busy_end = time.monotonic()
  for _, t in ipairs(tasks) do t:wait() end
  table.sort(left)
  eq(#left, 6)
  -- Six in one second is within 20/s: the late wake-ups are not carried over
  -- to the requests after them (evenly spaced departures took 0.25 s more).
  ok(left[6] - busy_end < 0.2, ("the last left %.3fs after the busy spell"):format(left[6] - busy_end))
end)

it("a pacer never lets more than floor(rate) + burst - 1 leave in a sliding second plus slack", function()
  local p = api.pacer("spec window", 40, 1, 0.01)
  local left = {}
  ephrun.parallel({ 1, 2, 3 }, function()
    for _ = 1, 20 do
      p:take()
      left[#left + 1] = time.monotonic()
      -- now and then the Lua thread is busy, as when launches generate keys
      if #left % 7 == 0 then
        local t0 = time.monotonic()
        while time.monotonic() - t0 < 0.1 do end
      end
    end
  end)
  table.sort(left)
  eq(#left, 60)
  for k = 41, #left do
    ok(left[k] - left[k - 40] >= 1.01 - 0.002, ("requests %d and %d left %.3fs apart"):format(k - 40, k,
      left[k] - left[k - 40]))
  end
  raises(function() api.pacer("spec bad", 1, 1, -1) end, "slack must be")
end)

it("a pacer's burst lets that many leave at once, then paces; hold sends nobody for a while", function()
  local p = api.pacer("spec burst", 10, 5)
  local t0 = time.monotonic()
  for _ = 1, 5 do p:take() end
  eq(p.waited, 0, "five of a burst of five waited for no slot")
  p:take()
  ok(time.monotonic() - t0 >= 0.1 - 0.002, "the sixth waited for a token")
  local q = api.pacer("spec hold", 100)
  q:take()
  q:hold(0.3)
  local t1 = time.monotonic()
  q:take()
  ok(time.monotonic() - t1 >= 0.3 - 0.002, "a hold delays the next request")
  raises(function() api.pacer("spec bad", 0) end, "rate must be a positive number")
  raises(function() api.pacer("spec bad", 1, 0) end, "burst must be")
end)

it("Retry-After is read as seconds or as an HTTP date in any of its three forms", function()
  local at = 1792567680 -- Wed, 21 Oct 2026 07:28:00 GMT
  eq(api.retry_after("120"), 120)
  eq(api.retry_after(" 1.5 "), 1.5)
  eq(api.retry_after("Wed, 21 Oct 2026 07:28:00 GMT", at - 30), 30)
  eq(api.retry_after("Wednesday, 21-Oct-26 07:28:00 GMT", at - 30), 30)
  eq(api.retry_after("Wed Oct 21 07:28:00 2026", at - 30), 30)
  eq(api.retry_after("Wed, 21 Oct 2026 07:28:00 GMT", at + 5), 0, "a date in the past: now")
  eq(api.retry_after("soon"), nil)
  eq(api.retry_after("-3"), nil)
  eq(api.retry_after(nil), nil)
end)

it("http_error gives each status its kind and keeps Retry-After", function()
  local s = srv()
  local kinds = {}
  for _, status in ipairs { 400, 401, 403, 404, 423, 429, 500, 503 } do
    local _, err = pcall(attempt, "GET", s.url("/status/" .. status))
    ok(errors.is(err), "a structured error for " .. status)
    kinds[#kinds + 1] = err.kind .. (err.retry and "+" or "-")
    eq(err.status, status)
  end
  eq(kinds, { "invalid-", "auth-", "auth-", "not_found-", "locked+", "rate_limited+", "server+", "server+" })
  local _, err = pcall(attempt, "GET", s.url("/seq/ra?s=429:7"))
  eq(err.retry_after, 7)
  local _, gone = pcall(attempt, "GET", "http://127.0.0.1:9/nothing-listens")
  eq(gone.kind, "network")
end)

it("call retries 5xx only when the call is idempotent, and 429 always", function()
  local s = srv()
  local n = 0
  local r = api.call(function(a)
    n = a
    return attempt("GET", s.url("/seq/idem?s=503,500,200"))
  end, { idempotent = true, delay = 0.05 })
  eq(r.status, 200); eq(n, 3)
  local err = raises(function()
    api.call(function() return attempt("POST", s.url("/seq/post?s=503,200")) end, { delay = 0.05 })
  end, "HTTP 503")
  ok(err)
  eq(s.count("post"), 1, "a POST answered 5xx may have been carried out: not sent again")
  local stats = {}
  r = api.call(function() return attempt("POST", s.url("/seq/post429?s=429,429,200")) end,
    { delay = 0.05, stats = stats })
  eq(r.status, 200)
  eq(stats, { requests = 3, retried = 2, throttled = 2 })
end)

it("call never retries what is not a structured error saying retry, whatever its text", function()
  for _, e in ipairs {
    "HTTP 503: Server is currently locked (429)",
    errors.new { kind = "not_found", message = "HTTP 500 gone" },
    errors.new { kind = "server", retry = false, message = "capacity, as a 500" },
  } do
    local n = 0
    raises(function() api.call(function() n = n + 1; error(e, 0) end, { idempotent = true, delay = 0.01 }) end)
    eq(n, 1, tostring(e))
  end
  local n = 0
  raises(function()
    api.call(function() n = n + 1; errors.raise { kind = "locked", message = "locked" } end,
      { idempotent = true, delay = 0.01 })
  end, "locked")
  eq(n, 1, "locked is the lifecycle's to retry, unless the call lists it")
  n = 0
  api.call(function()
    n = n + 1
    if n < 3 then errors.raise { kind = "locked", message = "locked" } end
  end, { kinds = { locked = true }, delay = 0.01 })
  eq(n, 3)
end)

it("call waits what Retry-After says, in seconds or as a date, and holds the pacer for everyone", function()
  local s = srv()
  local t0 = time.monotonic()
  api.call(function() return attempt("GET", s.url("/seq/ra1?s=429:1,200")) end, { delay = 0.01 })
  ok(time.monotonic() - t0 >= 1 - 0.01, "waited the second Retry-After asked for")
  t0 = time.monotonic()
  api.call(function() return attempt("GET", s.url("/seq/radate?s=503:date:2,200")) end,
    { idempotent = true, delay = 0.01 })
  -- the date has whole seconds: 2 s ahead is at least 1 s ahead
  ok(time.monotonic() - t0 >= 1 - 0.01, "waited until the date Retry-After gave")
  local p = api.pacer("spec held", 50)
  local answered = ephrun.event()
  local other
  ephrun.parallel({ 1, 2 }, function(i)
    if i == 1 then
      api.call(function(n)
        local okk, err = pcall(attempt, "GET", s.url("/seq/held?s=429:1,200"))
        -- the other task runs once this one sleeps, after the hold
        if n == 1 then answered:set() end
        if not okk then error(err, 0) end
        return err
      end, { pacer = p, delay = 0.01 })
    else
      answered:wait()
      local t1 = time.monotonic()
      p:take()
      other = time.monotonic() - t1
    end
  end)
  ok(other >= 1 - 0.02, ("another task's request waited out the hold (%.2fs)"):format(other))
end)

it("call gives up at its deadline or after its attempts, raising the last error", function()
  local s = srv()
  local t0 = time.monotonic()
  local n = 0
  local err = raises(function()
    api.call(function() n = n + 1; return attempt("GET", s.url("/status/503")) end,
      { idempotent = true, deadline = 2, delay = 0.1, max_delay = 0.2 })
  end, "HTTP 503")
  ok(err)
  ok(n >= 3, "retried until the deadline: " .. n)
  ok(time.monotonic() - t0 < 10, "and stopped there")
  n = 0
  raises(function()
    api.call(function() n = n + 1; return attempt("GET", s.url("/status/503")) end,
      { idempotent = true, attempts = 2, delay = 0.01 })
  end, "HTTP 503")
  eq(n, 2)
  n = 0
  raises(function()
    api.call(function() n = n + 1; return attempt("GET", s.url("/seq/long?s=429:60,200")) end, { deadline = 5 })
  end, "HTTP 429")
  eq(n, 1, "a Retry-After past the deadline is not waited for")
end)

it("paged walks every page as the loop needs it and stops on an empty or null cursor", function()
  local pages = { [""] = { { 1, 2 }, "b" }, b = { { 3 }, "c" }, c = { {}, "d" }, d = { { 4, 5 }, json.null } }
  local asked = {}
  local function fetch(cursor)
    asked[#asked + 1] = cursor or ""
    local p = pages[cursor or ""]
    return p[1], p[2]
  end
  eq(api.all(fetch), { 1, 2, 3, 4, 5 })
  eq(asked, { "", "b", "c", "d" })
  asked = {}
  for item in api.paged(fetch) do
    if item == 2 then break end
  end
  eq(asked, { "" }, "the second page was never fetched")
  eq(api.all(function() return { "x" }, "" end), { "x" })
  eq(api.all(function() return nil end), {})
  raises(function() api.all(function() return { 1 }, "same" end) end, "same page cursor twice")
  local k = 0
  raises(function() api.all(function() k = k + 1; return {}, "p" .. k end, { max_pages = 3 }) end, "more than 3 pages")
end)

it("paged over real HTTP: the NextToken of each reply", function()
  local s = srv()
  local got = api.all(function(token)
    local r = attempt("GET", s.url("/echo/page?token=" .. (token or "first")))
    local q = json.decode(r.body).query
    local n = tonumber(q:match("token=p(%d)")) or 0
    return { q }, n < 2 and ("p" .. (n + 1)) or nil
  end)
  eq(got, { "token=first", "token=p1", "token=p2" })
end)

it("single_flight: concurrent identical look-ups share one request, and its error", function()
  local s = srv()
  local calls = 0
  local function lookup()
    calls = calls + 1
    return json.decode(attempt("GET", s.url("/delay/1/sf")).body).path, calls
  end
  local before = s.hits("/delay/1/sf")
  local got = ephrun.parallel({ 1, 2, 3, 4, 5 }, function()
    local path, n = api.single_flight("spec sf", lookup)
    return path .. "#" .. n
  end)
  eq(got, { "/delay/1/sf#1", "/delay/1/sf#1", "/delay/1/sf#1", "/delay/1/sf#1", "/delay/1/sf#1" })
  eq(s.hits("/delay/1/sf") - before, 1)
  api.single_flight("spec sf", lookup)
  eq(calls, 2, "nothing is kept once the flight has landed")
  local failures = ephrun.parallel({ 1, 2, 3 }, function()
    local okk, err = pcall(api.single_flight, "spec sf err", function()
      time.sleep(0.1)
      errors.raise { kind = "auth", message = "denied" }
    end)
    return (not okk) and errors.is(err, "auth")
  end)
  eq(failures, { true, true, true })
end)

it("single_flight: when the task doing it is cancelled, a waiter does it instead", function()
  local runs = 0
  local started = ephrun.event()
  local leader = ephrun.spawn(function()
    api.single_flight("spec sf cancel", function() runs = runs + 1; started:set(); time.sleep(30) end)
  end)
  started:wait()
  local waiter = ephrun.spawn(function()
    return api.single_flight("spec sf cancel", function() runs = runs + 1; return "done by the waiter" end)
  end)
  time.sleep(0.05)
  leader:cancel("stop")
  ok(not pcall(leader.wait, leader))
  eq(waiter:wait(), "done by the waiter")
  eq(runs, 2)
end)

it("once keeps a success for the process, not a failure; forget drops it", function()
  local n = 0
  local function f() n = n + 1; return "v" .. n end
  eq(api.once("spec once", f), "v1")
  eq(api.once("spec once", f), "v1")
  api.forget("spec once")
  eq(api.once("spec once", f), "v2")
  local tries = 0
  raises(function() api.once("spec once fail", function() tries = tries + 1; error("no") end) end, "no")
  eq(api.once("spec once fail", function() tries = tries + 1; return "yes" end), "yes")
  eq(tries, 2)
end)

it("a board answers many waiters with one listing per interval and looks up what stays missing", function()
  local s = srv()
  local state = { a = "pending", b = "pending", c = "pending" }
  local lookups = {}
  local started = {}
  local b = api.board("spec board", {
    fetch = function()
      started[#started + 1] = time.monotonic()
      attempt("GET", s.url("/echo/board-listing"))
      local map = {}
      for id, st in pairs(state) do map[id] = { id = id, state = st } end
      return map
    end,
    signature = function(raw) return raw.state end,
    lookup = function(id) lookups[#lookups + 1] = id; return nil end,
    first = 0.05, max = 0.2, grace = 0.3,
  })
  eq(api.board("spec board", {}), b, "shared by its key")
  local before = s.hits("/echo/board-listing")
  local gets = 0
  local ids = {}
  for i = 1, 12 do ids[i] = ({ "a", "b", "c" })[i % 3 + 1] end
  ephrun.parallel(ids, function(id)
    local polls = 0
    while true do
      local raw, next_in = b:get(id)
      gets, polls = gets + 1, polls + 1
      if raw and raw.state == "running" then return end
      if polls == 5 then state[id] = "running" end
      time.sleep(next_in)
    end
  end)
  local listings = s.hits("/echo/board-listing") - before
  eq(listings, b.listings)
  ok(listings < gets, ("%d listings answered %d gets"):format(listings, gets))
  -- however many ask, a listing starts at least `first` after the last one ended
  for k = 2, #started do
    ok(started[k] - started[k - 1] >= 0.05 - 0.002, ("listings %d and %d started %.3fs apart"):format(k - 1, k,
      started[k] - started[k - 1]))
  end
  local raw = b:get("new")
  eq(raw, false, "missing from the listing: not yet listed")
  eq(lookups, {})
  local gone = api.poll_until(function()
    local r = b:get("new")
    if r == false then return false end
    return true, r
  end, { deadline = 10, delay = 0.05 })
  eq(gone, nil)
  eq(lookups, { "new" }, "looked up once it stayed missing past the grace")
end)

it("poll_until returns the state once done, backs off, and honours the probe's wait", function()
  local n, stamps = 0, {}
  local t0 = time.monotonic()
  local got = api.poll_until(function()
    n = n + 1
    stamps[n] = time.monotonic() - t0
    return n == 4, "state " .. n
  end, { delay = 0.1, factor = 2, max_delay = 0.3 })
  eq(got, "state 4")
  ok(stamps[2] - stamps[1] >= 0.1 - 0.002 and stamps[3] - stamps[2] >= 0.2 - 0.002
    and stamps[4] - stamps[3] >= 0.3 - 0.002, "pauses of 0.1, 0.2 and then at most 0.3")
  n = 0
  t0 = time.monotonic()
  api.poll_until(function() n = n + 1; return n == 2, nil, 0.5 end, { delay = 0.01 })
  ok(time.monotonic() - t0 >= 0.5 - 0.002, "the probe's wait replaced the backoff")
end)

it("poll_until raises a timeout error at its deadline and reports progress on long waits", function()
  local seen = {}
  local ok_, err = pcall(api.poll_until, function() return false, "still booting" end, {
    deadline = 0.6, delay = 0.1, max_delay = 0.1, what = "instance 7 to be running",
    progress = function(elapsed, state) seen[#seen + 1] = { elapsed >= 0.2, state } end, progress_every = 0.2,
  })
  eq(ok_, false)
  ok(errors.is(err, "timeout"), tostring(err))
  contains(tostring(err), "instance 7 to be running: not done after")
  ok(#seen >= 1, "progress was reported")
  eq(seen[1], { true, "still booting" })
  local _, e2 = pcall(api.poll_until, function() return false, "pending" end, {
    deadline = 0.2, delay = 0.05, timeout_message = function(state, d) return ("still %s after %ss"):format(state, d) end,
  })
  eq(tostring(e2), "still pending after 0.2s")
  -- subject + show (+ goal): the providers' wording, derived
  local _, e3 = pcall(api.poll_until, function() return false, { s = "pending" } end, {
    deadline = 0.2, delay = 0.05, subject = "aws instance i-1", show = function(st) return st.s end, goal = "running",
  })
  ok(errors.is(e3, "timeout"), tostring(e3))
  contains(tostring(e3), "aws instance i-1 is still pending after ")
  contains(tostring(e3), ", not running")
  raises(function() api.poll_until(function() error("gone", 0) end) end, "^gone$")
end)

it("create: a failure that may hide a create looks before retrying and uses what it finds", function()
  local s = srv()
  local made = false
  local attempts = 0
  local during
  local got = api.create {
    what = "spec: delete the thing labelled x if its create went through",
    create = function(a)
      attempts = a
      during = ephrun.pending_cleanups()[1]
      -- the first POST was carried out but answered 503 (a lost reply)
      local r = attempt("POST", s.url("/seq/create-lost?s=503,200"))
      return "created " .. r.status
    end,
    lookup = function() made = attempts == 1; return made and "found x" or nil end,
    undo = function() end, delay = 0.01,
  }
  eq(got, "found x")
  eq(attempts, 1)
  eq(s.count("create-lost"), 1, "not created twice")
  eq(during, "spec: delete the thing labelled x if its create went through")
  for _, c in ipairs(ephrun.pending_cleanups()) do
    ok(c ~= during, "the guard is gone once something was in hand")
  end
  attempts = 0
  got = api.create {
    what = "spec: guard 2",
    create = function(a) attempts = a; return "created " .. attempt("POST", s.url("/seq/create-2?s=500,200")).status end,
    lookup = function() return nil end, undo = function() end, delay = 0.01,
  }
  eq(got, "created 200")
  eq(attempts, 2, "nothing was found, so it was sent again")
end)

it("create decides on the error's kind, never its text", function()
  for _, e in ipairs {
    "vultr: POST /instances failed: HTTP 503: try again",
    errors.new { kind = "capacity", message = "HTTP 500: no room for this plan" },
    errors.new { kind = "server", retry = false, message = "HTTP 500 that must not be repeated" },
  } do
    local attempts, looked = 0, 0
    raises(function()
      api.create { what = "spec: by kind", undo = function() end, delay = 0.01,
        create = function() attempts = attempts + 1; error(e, 0) end,
        lookup = function() looked = looked + 1 end }
    end)
    eq({ attempts, looked }, { 1, 0 }, tostring(e))
  end
  local attempts = 0
  eq(api.create { what = "spec: network", undo = function() end, delay = 0.01, lookup = function() end,
    create = function()
      attempts = attempts + 1
      if attempts == 1 then errors.raise { kind = "network", message = "connection reset" } end
      return "made"
    end }, "made")
end)

it("create: a refusal is raised at once, its guard kept for the run's cleanup", function()
  local s = srv()
  local looked, undone = 0, 0
  local err = raises(function()
    api.create {
      what = "spec: guard kept",
      create = function() return attempt("POST", s.url("/status/400")) end,
      lookup = function() looked = looked + 1 end,
      undo = function() undone = undone + 1 end,
    }
  end, "HTTP 400")
  ok(err)
  eq(looked, 0)
  local found = false
  for _, c in ipairs(ephrun.pending_cleanups()) do found = found or c == "spec: guard kept" end
  ok(found, "the guard stays registered")
end)

return spec.recipe("api")
