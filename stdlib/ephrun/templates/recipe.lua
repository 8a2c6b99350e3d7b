--- __NAME__: rent a machine, run one command on it, give it back.
---
--- Before it spends anything:  ephrun check __FILE__
--- See what it would do:       ephrun --dry-run __FILE__
--- Run it:                     ephrun __FILE__ command='make test'
--- Its parameters:             ephrun __FILE__ --help
--- Editor completion:          ephrun meta install   (then open this directory in an editor with LuaLS)
local ephrun = require "ephrun"

-- A recipe file returns one ephrun.recipe{}. ephrun reads its params, binds
-- name=value arguments to them (type from `type` or the default, checked
-- against min/max/choices) and calls run(p) with the result.
return ephrun.recipe {
  name = "__NAME__",
  summary = "Run one command on a temporary __PROVIDER__ instance, then destroy it.",
  params = {
    provider = { default = "__PROVIDER__", doc = "where the instance runs" },
    plan = { default = "__PLAN__", doc = "instance size (the provider's plan name; empty: its default)" },
    command = { default = "uname -a", doc = "what to run on the instance" },
    ttl = { type = "duration", default = "30m", min = "1m", max = "12h",
      doc = "hard lifetime: the instance ends then even if ephrun is killed" },
  },
  run = function(p)
    local cloud = ephrun.provider(p.provider)
    -- `<close>` destroys the instance when this scope ends: on success, on an
    -- error, on Ctrl-C. Under --dry-run nothing is launched; the plan says what
    -- would be, with its worst-case cost.
    local box <close> = cloud:launch { plan = p.plan ~= "" and p.plan or nil, ttl = p.ttl }
    -- Waits until SSH answers with the host key this run gave the instance.
    local sh <close> = box:ssh()
    -- Output is streamed; a non-zero exit raises, and the cleanup still runs.
    sh:run(p.command)
  end,
}
