-- Launches one spot instance through ephrun.aws (tagged, terminate on shutdown)
-- and prints its id; test_aws_standin.py reads it back with the aws CLI.
local ephrun = require "ephrun"
local aws = require "ephrun.aws"

return ephrun.recipe {
  name = "aws-standin-launch",
  params = { tag = { default = "standin" } },
  run = function(p)
    local s = aws.session()
    local r = s:ec2("RunInstances", {
      ImageId = "ami-12345678", MinCount = 1, MaxCount = 1, InstanceType = "c7i.large",
      InstanceInitiatedShutdownBehavior = "terminate",
      InstanceMarketOptions = { MarketType = "spot", SpotOptions = { SpotInstanceType = "one-time" } },
      ClientToken = "ephrun-" .. p.tag,
      TagSpecification = { { ResourceType = "instance", Tag = {
        { Key = "ephrun-run", Value = p.tag }, { Key = "Purpose", Value = "stand-in test" } } } },
    })
    print(r.instancesSet[1].instanceId)
  end,
}
