-- Launches `count` Vultr instances in parallel; each task waits until its instance runs
-- and destroys it. Used by bench/vultr_fleet.py against the stand-in.
local ephrun = require "ephrun"

return ephrun.recipe {
  name = "vultr-fleet",
  params = { count = { type = "number", default = 50, doc = "instances" } },
  run = function(p)
    local cloud = ephrun.provider("vultr")
    local t = ephrun.time
    local t0 = t.monotonic()
    local items = {}
    for i = 1, p.count do items[i] = i end
    -- Each task launches its instance, waits until it runs, and destroys it.
    local ready = {}
    ephrun.parallel(items, function(i)
      local b = cloud:launch { plan = "vc2-1c-1gb", region = "ewr", ttl = "10m" }
      ready[i] = t.monotonic()
      b:destroy()
    end)
    local boxes = items
    local t1 = math.max(table.unpack(ready))
    local t2 = t.monotonic()
    local s = cloud.impl.stats
    print(("FLEET launched=%d last_running_s=%.3f last_destroy_s=%.3f total_s=%.3f requests=%d throttled=%d retried=%d")
      :format(#boxes, t1 - t0, t2 - t1, t2 - t0, s.requests, s.throttled, s.retried))
  end,
}
