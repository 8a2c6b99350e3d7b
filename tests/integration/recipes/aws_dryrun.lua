-- ephrun.aws under --dry-run (test_aws_lua.py): reads act, writes are plan
-- steps, a credential_process is not run and missing keys are a plan note.
local ephrun = require "ephrun"
local aws = require "ephrun.aws"

return ephrun.recipe {
  name = "aws-dryrun",
  params = { keys = { default = true } },
  run = function(p)
    local s = aws.session()
    local c = s:credentials()
    print("credentials from " .. c.source .. (c.placeholder and " (placeholder)" or ""))
    if p.keys then
      local r = s:ec2("DescribeInstances")
      print("read reservations: " .. #r.reservationSet)
    end
    local run = s:ec2("RunInstances", { ImageId = "ami-12345678", MinCount = 1, MaxCount = 1 })
    print("run placeholder: " .. tostring(run.dry_run))
  end,
}
