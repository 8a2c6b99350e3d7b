-- Launches `count` instances one after another (each destroyed when the run
-- ends) and prints LAUNCHED <id> for each; test_cost.py drives the cost gate
-- with it. COST_TEST_BUDGET sets the recipe's budget.
local ephrun = require "ephrun"

return ephrun.recipe {
  name = "cost-launch",
  summary = "Launch count instances one after another (test_cost.py drives the cost gate with it).",
  budget = tonumber(os.getenv("COST_TEST_BUDGET") or ""),
  params = {
    provider = { default = "aws" },
    plan = { default = "t3.micro" },
    ttl = { default = "1h", type = "duration" },
    count = { default = 1 },
    no_ttl = { default = false, doc = "launch with ttl=false" },
  },
  run = function(p)
    local cloud = ephrun.provider(p.provider)
    for _ = 1, p.count do
      local box = cloud:launch { plan = p.plan, ttl = (not p.no_ttl) and p.ttl }
      print("LAUNCHED " .. box.id)
      io.stdout:flush()
    end
  end,
}
