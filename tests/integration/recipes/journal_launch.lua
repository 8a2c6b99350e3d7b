-- Launches one instance and holds it, for the journal tests: `ephrun ls`
-- shows it; SIGKILL leaves it orphaned for `ephrun reap`.
--   via=cloud   the real lifecycle (cloud:launch: journal intent, create, destroy at exit)
--   via=direct  journals and creates through the provider module itself, the
--               way the lifecycle does, for test-double providers without SSH
local ephrun = require "ephrun"

return ephrun.recipe {
  name = "journal-launch",
  params = {
    provider = { default = "local" },
    via = { default = "cloud", choices = { "cloud", "direct" } },
    ttl = { type = "duration", default = "1h" },
    hold = { type = "duration", default = "0s", doc = "sleep this long after READY" },
    keep = { default = false, doc = "leave the instance behind at the end (cloud: launch with keep=true)" },
    price = { type = "number", default = 0 },
  },
  run = function(p)
    local inst
    if p.via == "cloud" then
      inst = ephrun.provider(p.provider):launch { ttl = p.ttl, keep = p.keep }
    else
      local impl = ephrun.provider(p.provider).impl
      local now = ephrun.time.now()
      local tags = { ["ephrun-run"] = ephrun.run_id(), ["ephrun-recipe"] = "journal-launch",
        ["ephrun-expires"] = ephrun.time.iso8601(now + p.ttl) }
      local key = ephrun.journal.intent { run_id = ephrun.run_id(), provider = p.provider, tags = tags,
        hourly_price = p.price > 0 and p.price or nil, expires_at = now + p.ttl, token = "t-" .. ephrun.run_id() }
      local raw = impl.launch { tags = tags, ttl = p.ttl }
      ephrun.journal.created(key, raw.id, raw)
      inst = raw
      if not p.keep then
        ephrun.defer(function()
          impl.destroy(raw)
          ephrun.journal.destroyed(key)
        end, "destroy " .. raw.id)
      end
    end
    print("READY " .. inst.id)
    io.stdout:flush()
    if p.hold > 0 then ephrun.time.sleep(p.hold) end
  end,
}
