-- Drives the Vultr provider's less common operations against the stand-in:
-- tags and user-data on the created instance, paged listing, halt and start,
-- resize (and the price that follows it), snapshots listed and deleted.
local ephrun = require "ephrun"

return ephrun.recipe {
  name = "vultr-ops",
  params = {
    count = { type = "number", default = 3, doc = "instances launched in parallel" },
    mode = { default = "ops", doc = "ops | hang (launch, print READY, sleep) | wait-fails (launch with a short deadline)" },
    snapshot = { default = "", doc = "boot from this snapshot" },
    deadline = { default = "10m", doc = "launch deadline" },
  },
  run = function(p)
    local cloud = ephrun.provider("vultr")
    local function check(cond, what)
      if not cond then error("check failed: " .. what, 2) end
    end
    if p.mode == "hang" then
      local box <close> = cloud:launch { plan = "vc2-1c-1gb", region = "ewr",
        snapshot = p.snapshot ~= "" and p.snapshot or nil, deadline = p.deadline }
      print("READY " .. box.id)
      io.stdout:flush()
      ephrun.time.sleep(600)
      return
    end
    if p.mode == "wait-fails" then
      local box <close> = cloud:launch { plan = "vc2-1c-1gb", region = "ewr", deadline = p.deadline }
      error("launch should have failed, got " .. box.id)
    end

    local boxes = ephrun.parallel({ 1, 2, 3, 4, 5, 6, 7, 8 }, function(i)
      if i > p.count then return false end
      return cloud:launch { plan = "vc2-1c-1gb", region = "ewr" }
    end)
    local mine = cloud:list { tags = { ["ephrun-run"] = ephrun.run_id() } }
    local instances, keys = 0, 0
    for _, inst in ipairs(mine) do
      if inst.kind == "ssh-key" then
        keys = keys + 1
      else
        instances = instances + 1
        check(inst.tags["ephrun-recipe"] == "vultr-ops", "recipe tag on " .. inst.id)
      end
    end
    check(instances == p.count, ("listed %d instances of this run, launched %d"):format(instances, p.count))
    check(keys == 1, "one SSH key registered for the run, found " .. keys)

    local box = boxes[1]
    local sh <close> = box:ssh()
    check(sh:run("echo hi").stdout == "hi\n", "ssh works")
    sh:close()

    box:halt()
    check(cloud.impl.get(box.id, cloud.opts).power_status == "stopped", "halted")
    box:start()
    check(cloud.impl.get(box.id, cloud.opts).state == "running", "started")
    local before = box.hourly
    box:resize("vc2-2c-4gb")
    check(box.raw.plan == "vc2-2c-4gb", "resized, plan is " .. tostring(box.raw.plan))
    check(math.abs(box.hourly - 20 / 730) < 1e-9 and box.hourly > before, "price follows the plan")

    local sid = box:snapshot { description = "vultr-ops " .. ephrun.run_id() }
    local found = cloud:snapshots { description = "vultr-ops " .. ephrun.run_id() }
    check(#found == 1 and found[1].id == sid and found[1].status == "complete", "snapshot listed as complete")
    cloud:delete_snapshot(sid)
    check(cloud.impl.get_snapshot(sid, cloud.opts) == nil, "snapshot deleted")
    for _, b in ipairs(boxes) do
      if b then b:close() end
    end
    print("OPS OK")
  end,
}
