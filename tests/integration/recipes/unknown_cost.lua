-- Launches priced or not, for the dry-run total: `known` adds a priced launch.
local ephrun = require "ephrun"
return ephrun.recipe {
  name = "unknown_cost",
  params = { known = { type = "number", default = 0 } },
  run = function(p)
    if p.known > 0 then
      ephrun.effect { kind = "launch", what = "a priced machine", cost = p.known, run = function() end }
    end
    ephrun.effect { kind = "launch", what = "a machine nobody could price", run = function() end }
  end,
}
