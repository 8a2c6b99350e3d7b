-- Launches `count` AWS instances in parallel; each task waits until its instance runs
-- and destroys it (terminate, wait until terminated). Used by bench/aws_fleet.py against
-- the AWS stand-in.
local ephrun = require "ephrun"

return ephrun.recipe {
  name = "aws-fleet",
  params = {
    count = { type = "number", default = 50, doc = "instances" },
    region = { default = "eu-west-1", doc = "AWS region" },
  },
  run = function(p)
    local cloud = ephrun.provider("aws")
    local t = ephrun.time
    local t0 = t.monotonic()
    local items = {}
    for i = 1, p.count do items[i] = i end
    local ready = {}
    ephrun.parallel(items, function(i)
      local b = cloud:launch { plan = "t3.micro", region = p.region, ttl = "10m" }
      ready[i] = t.monotonic()
      b:destroy()
    end)
    local t1 = math.max(table.unpack(ready))
    local t2 = t.monotonic()
    local s = cloud.impl.stats
    print(("FLEET launched=%d last_running_s=%.3f last_destroy_s=%.3f total_s=%.3f requests=%d throttled=%d retried=%d")
      :format(#items, t1 - t0, t2 - t1, t2 - t0, s.requests, s.throttled, s.retried or 0))
  end,
}
