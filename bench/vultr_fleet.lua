-- Launches `count` Vultr instances in parallel (each waits for `running`), then destroys
-- them all in parallel. Used by bench/vultr_fleet.py against the stand-in.
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
    local boxes = ephrun.parallel(items, function()
      return cloud:launch { plan = "vc2-1c-1gb", region = "ewr", ttl = "10m" }
    end)
    local t1 = t.monotonic()
    ephrun.parallel(boxes, function(b) b:destroy() end)
    local t2 = t.monotonic()
    local s = cloud.impl.stats
    print(("FLEET launched=%d launch_s=%.3f destroy_s=%.3f total_s=%.3f requests=%d throttled=%d retried=%d")
      :format(#boxes, t1 - t0, t2 - t1, t2 - t0, s.requests, s.throttled, s.retried))
  end,
}
