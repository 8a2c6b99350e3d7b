-- A Phase-2 style poll loop with time compressed: `polls` HTTP polls of a
-- status endpoint, `ticks` sleeps between two polls (a progress ticker), as a
-- launcher that checks a two-day job would make them. Prints the process's
-- threads and RSS (from /proc/self/status) at the start, the peaks, and the end.
local ephrun = require "ephrun"

local function status()
  local out = {}
  for line in io.lines("/proc/self/status") do
    local k, v = line:match("^(%w+):%s*(%d+)")
    if k == "Threads" or k == "VmRSS" then out[k] = tonumber(v) end
  end
  return out
end

return ephrun.recipe {
  name = "poll48h",
  summary = "100,000 sleeps and 10,000 HTTP polls with time compressed; threads and RSS",
  params = {
    url = { required = true, doc = "the status endpoint (bench/poll48h.py serves one)" },
    polls = { type = "number", default = 10000 },
    ticks = { type = "number", default = 10, doc = "sleeps between two polls" },
    tick = { type = "number", default = 0.0001, doc = "seconds per sleep (48 h / 100,000 = 1.7 s, compressed)" },
  },
  run = function(p)
    local http, time, json = ephrun.http, ephrun.time, ephrun.json
    local function poll(i)
      local r = assert(http.request { url = p.url .. "?i=" .. i, timeout = 10 })
      local doc = assert(json.decode(r.body))
      if doc.state ~= "running" then error("unexpected state " .. tostring(doc.state)) end
    end
    -- Warm up: the HTTP module is loaded and one of each wait has run.
    poll(0)
    time.sleep(p.tick)
    collectgarbage()
    local start = status()
    local peak_threads, peak_rss = start.Threads, start.VmRSS
    local t0 = time.monotonic()
    local sleeps = 0
    for i = 1, p.polls do
      poll(i)
      for _ = 1, p.ticks do
        time.sleep(p.tick)
        sleeps = sleeps + 1
      end
      if i % 100 == 0 then
        local s = status()
        peak_threads = math.max(peak_threads, s.Threads)
        peak_rss = math.max(peak_rss, s.VmRSS)
      end
    end
    local elapsed = time.monotonic() - t0
    local fin = status()
    print(("RESULT polls=%d sleeps=%d elapsed=%.2f threads_start=%d threads_peak=%d threads_end=%d "
      .. "rss_start_kb=%d rss_peak_kb=%d rss_end_kb=%d"):format(p.polls, sleeps, elapsed, start.Threads,
      math.max(peak_threads, fin.Threads), fin.Threads, start.VmRSS, math.max(peak_rss, fin.VmRSS), fin.VmRSS))
  end,
}
