-- Launches one Vultr instance and destroys it through cloud:destroy while the
-- stand-in answers the DELETEs with the faults the test injected first: the
-- lifecycle must retry on the error's kind, whatever the body's text says.
local ephrun = require "ephrun"
local errors = require "ephrun.errors"

return ephrun.recipe {
  name = "vultr-error-kinds",
  run = function()
    local cloud = ephrun.provider("vultr")
    local box <close> = cloud:launch { plan = "vc2-1c-1gb", region = "ewr", ttl = "10m" }
    -- first DELETE: 403 whose body says "locked": auth, so not retried
    local ok, err = pcall(cloud.destroy, cloud, box.raw, { deadline = 120 })
    if ok then error("destroy should have failed on the 403") end
    print(("FIRST kind=%s retry=%s status=%s: %s"):format(tostring(errors.is(err) and err.kind),
      tostring(err.retry), tostring(err.status), tostring(err)))
    -- then a 423 whose body says nothing of a lock (locked, retried), then the real delete
    cloud:destroy(box.raw, { deadline = 120 })
    if cloud.impl.get(box.id, cloud.opts) ~= nil then error("instance " .. box.id .. " still exists") end
    print("DESTROYED " .. box.id)
    -- <close> destroys once more: the 404 is success
  end,
}
