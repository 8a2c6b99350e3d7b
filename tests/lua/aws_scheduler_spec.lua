-- The AWS provider's EventBridge Scheduler timer (providers/aws/scheduler.lua):
-- its settings refuse what AWS would refuse later, naming the setting, and
-- `ephrun reap` can tell an ephrun schedule's run and instance from its name.
local spec = require "ephrun.spec"
local scheduler = require "providers.aws.scheduler"
local it, eq, raises = spec.it, spec.eq, spec.raises

local ROLE = "arn:aws:iam::123456789012:role/ephrun-scheduler"

it("defaults: auto, no role, fires 10 minutes after the expiry", function()
  eq(scheduler.settings { scheduler_role = ROLE }, { mode = "auto", role = ROLE, grace = 600 })
  eq(scheduler.settings { scheduler = "false", scheduler_grace = "1h" }.grace, 3600)
  eq(scheduler.settings { scheduler = "1" }.mode, "true")
end)

it("bad settings are refused naming the setting and its variable", function()
  raises(function() scheduler.settings { scheduler = "sometimes" } end,
    "scheduler (EPHRUN_AWS_SCHEDULER) must be auto, true or false, got 'sometimes'", true)
  raises(function() scheduler.settings { scheduler_role = "ephrun-scheduler" } end,
    "scheduler_role (EPHRUN_AWS_SCHEDULER_ROLE) must be an IAM role ARN", true)
  raises(function() scheduler.settings { scheduler_grace = "soon" } end,
    "scheduler_grace (EPHRUN_AWS_SCHEDULER_GRACE) must be seconds or a duration", true)
end)

it("a schedule's name carries its run and instance, within Scheduler's 64 characters", function()
  local name = scheduler.name("20261201-171744-0123abcd", "i-0123456789abcdef0")
  eq(name, "ephrun-20261201-171744-0123abcd-i-0123456789abcdef0")
  spec.ok(#name <= 64)
  eq({ scheduler.parse_name(name) }, { "20261201-171744-0123abcd", "i-0123456789abcdef0" })
  eq({ scheduler.parse_name("ephrun-nightly-backup") }, {})
  eq({ scheduler.parse_name("someone-else-i-0123") }, {})
end)

return spec.recipe("aws_scheduler")
