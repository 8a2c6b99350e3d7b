-- Drives the AWS provider against the stand-in for tests/integration/test_aws_provider.py:
-- `hang` launches, prints READY and the instance id, and sleeps (for signals and reap);
-- `ops` launches `count` in parallel and checks the run's listing (one key pair, one
-- security group), then halt/start; `in-use` shows a security group refusing deletion
-- while its instance lives; `resize` changes the type (`to`) and reports the outcome;
-- `fleet` launches `count` in parallel, waits until all run, then destroys them all.
local ephrun = require "ephrun"
local errors = require "ephrun.errors"

return ephrun.recipe {
  name = "aws-ops",
  params = {
    mode = { default = "ops", doc = "hang | ops | in-use | resize | fleet" },
    count = { type = "number", default = 2, doc = "instances launched in parallel (ops)" },
    to = { default = "t3.large", doc = "type to resize to (resize)" },
  },
  run = function(p)
    local cloud = ephrun.provider("aws")
    local function check(cond, what)
      if not cond then error("check failed: " .. what, 2) end
    end
    local spec = { plan = "t3.micro", region = "eu-west-1", ttl = "30m" }
    if p.mode == "hang" then
      local box <close> = cloud:launch(spec)
      print("READY " .. box.id)
      io.stdout:flush()
      ephrun.time.sleep(600)
      return
    end
    if p.mode == "ops" then
      local boxes = ephrun.parallel({ 1, 2, 3, 4 }, function(i)
        if i > p.count then return false end
        return cloud:launch(spec)
      end)
      local kinds = {}
      for _, r in ipairs(cloud:list { tags = { ["ephrun-run"] = ephrun.run_id() } }) do
        local k = r.kind or "instance"
        kinds[k] = (kinds[k] or 0) + 1
      end
      check(kinds.instance == p.count, ("listed %s instances, launched %d"):format(tostring(kinds.instance), p.count))
      check(kinds["key-pair"] == 1 and kinds["security-group"] == 1,
        ("one key pair and one security group for the run, found %s and %s"):format(
          tostring(kinds["key-pair"]), tostring(kinds["security-group"])))
      boxes[1]:halt()
      boxes[1]:start()
      check(cloud.impl.get(boxes[1].id, cloud.opts).state == "running", "running again")
      print("OPS OK")
      return
    end
    if p.mode == "fleet" then
      local items = {}
      for i = 1, p.count do items[i] = i end
      local boxes = ephrun.parallel(items, function() return cloud:launch(spec) end)
      print("FLEET RUNNING " .. #boxes)
      io.stdout:flush()
      ephrun.parallel(boxes, function(b) b:destroy() end)
      print("FLEET DESTROYED")
      return
    end
    if p.mode == "in-use" then
      local box <close> = cloud:launch(spec)
      local sg
      for _, r in ipairs(cloud:list { tags = { ["ephrun-run"] = ephrun.run_id() } }) do
        if r.kind == "security-group" then sg = r end
      end
      check(sg, "the run's security group is listed")
      local ok, err = pcall(cloud.impl.destroy, sg, cloud.opts)
      check(not ok and errors.is(err, "locked") and err.retry, "deleting a group in use is a retryable 'locked': "
        .. tostring(err))
      print("IN USE: " .. tostring(err))
      box:close()
      cloud.impl.destroy(sg, cloud.opts)
      print("GROUP DELETED")
      return
    end
    if p.mode == "resize" then
      local box <close> = cloud:launch(spec)
      local ok, err = pcall(box.resize, box, p.to)
      local cur = cloud.impl.get(box.id, cloud.opts)
      print(("RESIZE %s %s %s %s"):format(ok and "ok" or "failed", ok and "-" or (type(err) == "table" and err.kind or "?"),
        cur.plan, cur.state))
      if not ok then io.stderr:write(tostring(err), "\n") end
      return
    end
    error("unknown mode " .. p.mode)
  end,
}
