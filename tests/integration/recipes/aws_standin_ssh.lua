-- The groundwork end to end against the AWS stand-in (test_aws_standin.py):
-- RunInstances with ephrun's own cloud-init user-data through ephrun.aws, wait
-- for `running`, SSH in with ephrun.ssh pinning the user-data's host key, then
-- power off from inside and see the instance terminate
-- (InstanceInitiatedShutdownBehavior=terminate).
local ephrun = require "ephrun"
local aws = require "ephrun.aws"

local function describe(s, iid)
  local r = s:ec2("DescribeInstances", { InstanceId = { iid } })
  return r.reservationSet[1].instancesSet[1]
end

local function wait_state(s, iid, state)
  local deadline = ephrun.time.monotonic() + 60
  while true do
    local i = describe(s, iid)
    if i.instanceState.name == state then return i end
    if ephrun.time.monotonic() > deadline then
      error(("instance %s is %s, not %s, after 60 s"):format(iid, i.instanceState.name, state))
    end
    ephrun.time.sleep(0.1)
  end
end

return ephrun.recipe {
  name = "aws-standin-ssh",
  run = function()
    local s = aws.session()
    local client, host = ephrun.keys.generate("client"), ephrun.keys.generate("host")
    local ud = ephrun.cloudinit.user_data { host_key = host, authorized_keys = { client.public_key } }
    local r = s:ec2("RunInstances", { ImageId = "ami-12345678", MinCount = 1, MaxCount = 1, InstanceType = "t3.micro",
      UserData = ephrun.fs.base64_encode(ud), InstanceInitiatedShutdownBehavior = "terminate" })
    local iid = r.instancesSet[1].instanceId
    ephrun.defer(function() s:ec2("TerminateInstances", { InstanceId = { iid } }) end,
      "terminate " .. iid)
    local i = wait_state(s, iid, "running")
    local sh <close> = ephrun.ssh.wait { host = i.ipAddress, port = tonumber(os.getenv("EPHRUN_AWS_SSH_PORT")),
      user = os.getenv("EPHRUN_AWS_SSH_USER"), key = client.private_key, host_key = host.public_key, deadline = 60 }
    print("ssh says " .. sh:run("echo hello from $EPHRUN_AWS_INSTANCE", { stream = false }).stdout:gsub("\n$", ""))
    -- The machine going down may cut the session before the command returns.
    pcall(sh.run, sh, "shutdown -P now", { check = false, stream = false })
    local gone = wait_state(s, iid, "terminated")
    print("terminated: " .. gone.stateReason.code)
  end,
}
