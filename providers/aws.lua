--- The AWS EC2 provider (Query API through `ephrun.aws`). An instance is an
--- EC2 instance of type `plan` in `region`, booted from `image` (an AMI id;
--- default: the newest official Debian 12, else Ubuntu 24.04, for the type's
--- architecture) or `snapshot` (an AMI made by `snapshot`), with a gp3 root
--- volume, the run's tags on the instance and its volumes, IMDSv2 required,
--- `InstanceInitiatedShutdownBehavior=terminate` (so the lifetime timer's
--- `shutdown` ends billing), the run's cloud-init user-data, and a per-run key
--- pair and security group (SSH from `ssh_cidr` only) that the run's cleanup
--- removes once its instances are terminated.
---
--- Settings, from the provider options or the environment (credentials, region
--- and endpoints as `ephrun.aws` finds them: AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL...):
---   region     the region when a launch names none (default: the session's)
---   profile    an AWS profile (overrides AWS_PROFILE)
---   image      EPHRUN_AWS_IMAGE, an AMI id used when a launch names none
---   volume_size EPHRUN_AWS_VOLUME_SIZE, root gp3 volume in GB (default 8)
---   ssh_cidr   EPHRUN_AWS_SSH_CIDR, who may reach port 22 (default: this machine's
---              public address as checkip.amazonaws.com sees it; 127.0.0.1/32 for a
---              loopback endpoint)
---   spot       EPHRUN_AWS_SPOT=true for a one-time spot instance, terminated on interruption
---   max_price  EPHRUN_AWS_MAX_PRICE, the spot MaxPrice in USD/hour (the plan's worst case)
---   instance_profile EPHRUN_AWS_INSTANCE_PROFILE, an IAM instance profile name or ARN
---   ssh_port   EPHRUN_AWS_SSH_PORT (default 22)
---   user       EPHRUN_AWS_SSH_USER (default admin, Debian's; ubuntu for Ubuntu AMIs)
---   poll       EPHRUN_AWS_POLL, longest pause between status polls in seconds (default 2;
---              waiting tasks of a run share each poll: one DescribeInstances per pause)
---   rate       EPHRUN_AWS_RATE, EC2 requests per second this process sends to a region at
---              most (default 20; EC2 throttles each account and region, answering
---              RequestLimitExceeded, which is retried with backoff)
---   destroy_deadline EPHRUN_AWS_DESTROY_DEADLINE (default 10m)
---   cleanup_deadline EPHRUN_AWS_CLEANUP_DEADLINE, how long deleting the security group
---              retries DependencyViolation (default 5m)
---   regions    EPHRUN_AWS_REGIONS, the regions `list` (and so `ephrun reap`) scans, comma
---              separated, besides the session's region and any `filter.regions`
---   scheduler, scheduler_role, scheduler_grace: the second timer (providers/aws/scheduler.lua)
local ephrun = require "ephrun"
local api = require "ephrun.api"
local errors = require "ephrun.errors"
local aws = require "ephrun.aws"
local PRICES = require "providers.aws.prices"
local scheduler = require "providers.aws.scheduler"
local auth = require "providers.aws.auth"

local M = {}

--- The lifetime timer runs `shutdown` in the guest, and the instance is
--- launched with InstanceInitiatedShutdownBehavior=terminate: billing ends.
M.ttl_effect = "ends billing"

M.price_basis = ("EC2 on-demand price of %s (providers/aws/prices.lua, %s) plus its gp3 volumes; "
  .. "spot: MaxPrice"):format("the type in its region", PRICES.date)

local q = ephrun.shell_quote

-- Official image owners and name patterns, newest first by creationDate.
local IMAGES = {
  { owner = "136693071363", name = "debian-12-%s-*", user = "admin" },
  { owner = "099720109477", name = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-%s-server-*", user = "ubuntu" },
}

local STATES = { pending = "pending", running = "running", ["shutting-down"] = "stopping",
  terminated = "terminated", stopping = "stopping", stopped = "stopped" }

local function setting(opts, key, env, default)
  local v = opts and opts[key]
  if v == nil or v == "" then v = os.getenv(env) end
  if v == nil or v == "" then return default end
  return v
end

local function positive(v, what)
  local n = tonumber(v)
  if not n or n <= 0 then
    errors.raise { kind = "invalid", message = ("aws: %s must be a positive number, got '%s'"):format(what, tostring(v)) }
  end
  return n
end

local function config(opts)
  opts = opts or {}
  local spot = setting(opts, "spot", "EPHRUN_AWS_SPOT", false)
  local c = {
    opts = opts,
    region = opts.region,
    image = setting(opts, "image", "EPHRUN_AWS_IMAGE", nil),
    volume_size = math.tointeger(positive(setting(opts, "volume_size", "EPHRUN_AWS_VOLUME_SIZE", 8),
      "volume_size (EPHRUN_AWS_VOLUME_SIZE)")),
    ssh_cidr = setting(opts, "ssh_cidr", "EPHRUN_AWS_SSH_CIDR", nil),
    spot = spot == true or spot == "true" or spot == "1",
    max_price = setting(opts, "max_price", "EPHRUN_AWS_MAX_PRICE", nil),
    instance_profile = setting(opts, "instance_profile", "EPHRUN_AWS_INSTANCE_PROFILE", nil),
    ssh_port = math.tointeger(positive(setting(opts, "ssh_port", "EPHRUN_AWS_SSH_PORT", 22),
      "ssh_port (EPHRUN_AWS_SSH_PORT)")),
    user = setting(opts, "user", "EPHRUN_AWS_SSH_USER", nil),
    poll = positive(setting(opts, "poll", "EPHRUN_AWS_POLL", 2), "poll (EPHRUN_AWS_POLL)"),
    rate = positive(setting(opts, "rate", "EPHRUN_AWS_RATE", 20), "rate (EPHRUN_AWS_RATE)"),
    cleanup_deadline = setting(opts, "cleanup_deadline", "EPHRUN_AWS_CLEANUP_DEADLINE", 300),
    regions = setting(opts, "regions", "EPHRUN_AWS_REGIONS", nil),
  }
  if type(c.regions) == "string" then
    local list = {}
    for r in c.regions:gmatch("[^%s,]+") do list[#list + 1] = r end
    c.regions = list
  end
  if not c.volume_size then errors.raise { kind = "invalid", message = "aws: volume_size must be whole GB" } end
  if c.max_price then c.max_price = positive(c.max_price, "max_price (EPHRUN_AWS_MAX_PRICE)") end
  if type(c.cleanup_deadline) == "string" then
    c.cleanup_deadline = ephrun.time.parse_duration(c.cleanup_deadline)
      or errors.raise { kind = "invalid", message = "aws: cleanup_deadline must be seconds or a duration (5m)" }
  end
  return c
end

-- One session per region and profile, shared by every task: credentials are
-- read (and registered as secrets) once.
local sessions = {}

local function session(c, region)
  local key = tostring(region or c.region or "") .. "\0" .. tostring(c.opts.profile or "")
  local s = sessions[key]
  if not s then
    s = aws.session { region = region or c.region, profile = c.opts.profile, credentials = c.opts.credentials }
    sessions[key] = s
  end
  return s
end

local function region_of(c, region)
  region = session(c, region):region()
  -- deploy-fast's default region is Vultr's "ewr": say so before signing for it
  if not region:match("^%l%l%-[%l%-]+%-%d+$") then
    errors.raise { kind = "invalid", message = ("aws: region '%s' is not an AWS region: pass region=us-east-1 "
      .. "(or another AWS region)"):format(region) }
  end
  return region
end

-- An ephrun.aws error as the contract's structured error (ephrun.errors),
-- keeping AWS's code; the lifecycle decides on `kind` and `retry` only.
local LIFT = { conflict = "invalid" }

local function lift(e, s)
  if not aws.is_error(e) then return e end
  return errors.new { kind = LIFT[e.kind] or e.kind, retry = e.retry, code = e.code, status = e.status,
    message = "aws: " .. tostring(e) .. ((e.kind == "auth" and s) and (" -- " .. auth.advice(s, e)) or "") }
end

local NO_RETRIES = { retries = 0 }

--- Counters for a benchmark or a curious user.
M.stats = { requests = 0, throttled = 0, retried = 0 }

-- Throttling (RequestLimitExceeded) refused the request, so it is always sent
-- again; 5xx and transport failures only for reads and calls that are safe to repeat.
local REPEATABLE = { rate_limited = true, server = true }

-- EC2 counts an account's requests per sliding second; what leaves here 1 s
-- apart can arrive closer than that (a busy machine, a slow connection), so
-- the window the pacer counts in is this much longer.
local SLACK = 0.02

-- One EC2 call, paced per region's endpoint with every task of the process.
-- `o.idempotent` (and any Describe*) may be sent again after a 5xx.
-- `o.once`: one attempt (figures that only label something must not hold a run up).
local function call(c, region, action, params, o)
  o = o or {}
  local s = session(c, region)
  local repeatable = o.idempotent or action:match("^Describe") ~= nil
  return api.call(function()
    -- retries = 0: api.call is the one place that decides, so a capacity
    -- error answered with a 500 is never sent again by the HTTP layer
    local ok, r = pcall(s.ec2, s, action, params, NO_RETRIES)
    if ok then return r end
    error(lift(r, s), 0)
  end, { what = "aws: " .. action, pacer = api.pacer("aws ec2 " .. s:endpoint("ec2") .. " " .. region, c.rate, 1, SLACK),
    kinds = repeatable and REPEATABLE or nil, deadline = o.deadline or 300, attempts = o.once and 1 or nil,
    delay = 0.25, max_delay = 12, stats = M.stats })
end

local function tag_list(tags)
  local out = {}
  for k, v in pairs(tags or {}) do out[#out + 1] = { Key = k, Value = tostring(v) } end
  table.sort(out, function(a, b) return a.Key < b.Key end)
  return out
end

local function endpoint_flag(c, region)
  local url = session(c, region):endpoint("ec2")
  if url:match("%.amazonaws%.com[%.%w]*$") then return "" end
  return " --endpoint-url " .. q(url)
end

local function to_instance(raw, region)
  local st = raw.instanceState and raw.instanceState.name
  return {
    id = raw.instanceId, state = STATES[st] or "pending", aws_state = st, region = region,
    tags = aws.tags(raw.tagSet), plan = raw.instanceType, host = raw.ipAddress, private_ip = raw.privateIpAddress,
    image = raw.imageId, spot = raw.instanceLifecycle == "spot" or nil, key_name = raw.keyName,
    created = aws.parse_time(raw.launchTime), state_reason = raw.stateReason and raw.stateReason.code or nil,
  }
end

local function instances_of(reply, region, out)
  out = out or {}
  for _, res in ipairs(aws.list(reply.reservationSet)) do
    for _, raw in ipairs(aws.list(res.instancesSet)) do out[#out + 1] = to_instance(raw, region) end
  end
  return out
end

-- Every instance the filters match, across pages (NextToken).
local function describe(c, region, filters)
  local out = {}
  for page in api.paged(function(token)
    local r = call(c, region, "DescribeInstances", { Filter = filters, MaxResults = 1000, NextToken = token })
    return { r }, r.nextToken
  end, { what = "aws: DescribeInstances" }) do
    instances_of(page, region, out)
  end
  return out
end

local LIVE = { Name = "instance-state-name", Value = { "pending", "running", "shutting-down", "stopping", "stopped" } }

--- Checks the settings and finds the credentials (registered as secrets) before anything is made.
function M.preflight(opts)
  local c = config(opts)
  session(c):credentials()
end

--- How long the lifecycle's destroy retries (seconds or a duration).
---@return number|string
function M.destroy_deadline(opts)
  return setting(opts, "destroy_deadline", "EPHRUN_AWS_DESTROY_DEADLINE", 600)
end

-- What several tasks of a run need once (the run's key pair and security
-- group, an image look-up): the first asker does it, everyone waits for it.
local function once(key, fn)
  return api.once("aws " .. key, fn)
end

local function run_name()
  return "ephrun-run-" .. ephrun.run_id()
end

-- The run's key pair in `region`, imported once; its cleanup (registered
-- before the import is sent, deleting by name) runs after the run's
-- instances are destroyed, the cleanup stack being last-in first-out.
local function run_key_pair(c, region, public_key, tags)
  local name = run_name()
  return once("key-pair " .. region .. " " .. name, function()
    ephrun.defer(function()
      call(c, region, "DeleteKeyPair", { KeyName = name }, { idempotent = true })
      ephrun.log.info("deleted AWS key pair %s (%s)", name, region)
    end, "delete this run's AWS key pair " .. name,
      ("aws ec2 delete-key-pair --region %s --key-name %s%s"):format(q(region), q(name), endpoint_flag(c, region)))
    local ok, err = pcall(call, c, region, "ImportKeyPair", {
      KeyName = name, PublicKeyMaterial = ephrun.fs.base64_encode(public_key),
      TagSpecification = { { ResourceType = "key-pair", Tag = tag_list { ["ephrun-run"] = tags["ephrun-run"] } } },
    })
    -- The same run imported it before (a resumed launch): it is this run's key.
    if not ok and not (type(err) == "table" and tostring(err.code):match("Duplicate")) then error(err, 0) end
    return name
  end)
end

-- DependencyViolation ("locked"): an instance in the group is not terminated
-- yet, so the delete is tried again with backoff until the deadline.
local function delete_group(c, region, id, deadline)
  api.call(function()
    local ok, err = pcall(call, c, region, "DeleteSecurityGroup", { GroupId = id })
    if ok or errors.is(err, "not_found") then return end
    error(err, 0)
  end, { what = "aws: delete security group " .. id, kinds = { locked = true }, deadline = deadline,
    delay = 2, max_delay = 15 })
end

local function group_by_name(c, region, name)
  local r = call(c, region, "DescribeSecurityGroups", { Filter = { { Name = "group-name", Value = { name } } } })
  for _, g in ipairs(aws.list(r.securityGroupInfo)) do
    if g.groupName == name then return g.groupId end
  end
end

-- Who may reach port 22: the setting, else the address SSH will come from.
local function ssh_cidr(c, region)
  if c.ssh_cidr then return c.ssh_cidr end
  local host = session(c, region):endpoint("ec2"):match("^%a+://%[?([^/%]]+)")
  host = host and host:gsub(":%d+$", "")
  if host == "localhost" or (host and host:match("^127%.")) then return "127.0.0.1/32" end
  local resp = ephrun.http.request { url = "https://checkip.amazonaws.com/", timeout = 10, connect_timeout = 5 }
  local ip = resp and resp.ok and resp.body:match("^%s*(%d+%.%d+%.%d+%.%d+)%s*$")
  if not ip then
    errors.raise { kind = "invalid", message = "aws: cannot tell this machine's public address (checkip.amazonaws.com "
      .. "did not answer): set ssh_cidr (EPHRUN_AWS_SSH_CIDR), e.g. 203.0.113.7/32" }
  end
  return ip .. "/32"
end

-- The cleanups deleting this run's security groups, by region (a detached
-- instance still uses its group when the run ends).
local group_cleanups = {}

-- Regions where this run launched a kept instance (keep=true): its group must
-- stay with it (deleting it would retry DependencyViolation until the deadline);
-- `ephrun reap` removes it once the instance is gone.
local kept_in = {}

-- The run's security group in `region`: SSH from `ssh_cidr` only. Deleted by
-- the run's cleanup after its instances, retrying DependencyViolation.
local function run_security_group(c, region, tags)
  local name = run_name()
  if tags["ephrun-keep"] == "true" then kept_in[region] = true end
  return once("security-group " .. region .. " " .. name, function()
    local cidr = ssh_cidr(c, region)
    group_cleanups[region] = ephrun.defer(function()
      if kept_in[region] then
        ephrun.log.info("kept: AWS security group %s (%s) stays with this run's kept instance; `ephrun reap` "
          .. "removes it once the instance is gone", name, region)
        return
      end
      local id = group_by_name(c, region, name)
      if id then delete_group(c, region, id, c.cleanup_deadline) end
      ephrun.log.info("deleted AWS security group %s (%s)", name, region)
    end, "delete this run's AWS security group " .. name,
      ("aws ec2 delete-security-group --region %s --group-name %s%s"):format(q(region), q(name), endpoint_flag(c, region)))
    local id = group_by_name(c, region, name)
    if not id then
      local r = call(c, region, "CreateSecurityGroup", {
        GroupName = name, GroupDescription = "ephrun run " .. ephrun.run_id() .. ": SSH from " .. cidr,
        TagSpecification = { { ResourceType = "security-group", Tag = tag_list { ["ephrun-run"] = tags["ephrun-run"] } } },
      })
      id = r.groupId
      call(c, region, "AuthorizeSecurityGroupIngress", { GroupId = id, IpPermissions = { {
        IpProtocol = "tcp", FromPort = 22, ToPort = 22,
        IpRanges = { { CidrIp = cidr, Description = "ephrun SSH" } } } } }, { idempotent = true })
    end
    return id
  end)
end

local function arch_of(plan)
  -- Graviton families carry a `g` after the generation: t4g, c7g, m6gd, r8g...
  if tostring(plan):match("^%a+%d+g[%a%-]*%.") then return "arm64", "arm64" end
  return "amd64", "x86_64"
end

-- The newest official Debian 12 (else Ubuntu 24.04) AMI for the type's architecture.
local function default_image(c, region, plan)
  local short, arch = arch_of(plan)
  return once("image " .. region .. " " .. arch, function()
    for _, img in ipairs(IMAGES) do
      local r = call(c, region, "DescribeImages", { Owner = { img.owner }, Filter = {
        { Name = "name", Value = { img.name:format(short) } }, { Name = "architecture", Value = { arch } },
        { Name = "state", Value = { "available" } } } })
      local best
      for _, i in ipairs(aws.list(r.imagesSet)) do
        if not best or tostring(i.creationDate) > tostring(best.creationDate) then best = i end
      end
      if best then return { id = best.imageId, user = img.user, root = best.rootDeviceName } end
    end
    errors.raise { kind = "invalid", message = ("aws: no official Debian 12 or Ubuntu 24.04 %s image found in %s: "
      .. "pass image=ami-... (or set EPHRUN_AWS_IMAGE)"):format(arch, region) }
  end)
end

-- The image's root device, looked up once for all launches of the process.
local function root_device(c, region, image)
  return once("root-device " .. region .. " " .. image, function()
    local r = call(c, region, "DescribeImages", { ImageId = { image } })
    local img = aws.list(r.imagesSet)[1]
    if not img then
      errors.raise { kind = "invalid", message = ("aws: image %s does not exist in %s"):format(image, region) }
    end
    return img.rootDeviceName or "/dev/xvda"
  end)
end

local launches = 0

-- RunInstances' parameters for `spec`.
local function run_params(c, region, spec, token)
  local ud = require("ephrun.cloudinit").parse(spec.user_data)
  local image, root, user = spec.snapshot or spec.image or c.image
  if image and image ~= "" then
    root = root_device(c, region, image)
  else
    local d = default_image(c, region, spec.plan)
    image, root, user = d.id, d.root, d.user
  end
  local tags = {}
  for k, v in pairs(spec.tags or {}) do tags[k] = v end
  tags.Name = tags.Name or spec.label
  tags["ephrun-token"] = token
  local p = {
    ImageId = image, InstanceType = spec.plan, MinCount = 1, MaxCount = 1, ClientToken = token,
    UserData = ephrun.fs.base64_encode(spec.user_data),
    SecurityGroupId = { run_security_group(c, region, tags) },
    InstanceInitiatedShutdownBehavior = "terminate",
    MetadataOptions = { HttpTokens = "required", HttpEndpoint = "enabled" },
    BlockDeviceMapping = { { DeviceName = root or "/dev/xvda",
      Ebs = { VolumeSize = c.volume_size, VolumeType = "gp3", DeleteOnTermination = true } } },
    TagSpecification = { { ResourceType = "instance", Tag = tag_list(tags) },
      { ResourceType = "volume", Tag = tag_list(tags) } },
  }
  -- Extra EBS volumes (a build's scratch disk) from /dev/sdf on, deleted with the instance.
  for i, v in ipairs(spec.volumes or {}) do
    p.BlockDeviceMapping[#p.BlockDeviceMapping + 1] = { DeviceName = v.device or ("/dev/sd" .. string.char(101 + i)),
      Ebs = { VolumeSize = math.tointeger(v.size), VolumeType = v.type or "gp3", Iops = v.iops, Throughput = v.throughput,
        DeleteOnTermination = true } }
  end
  if ud.authorized_keys[1] then p.KeyName = run_key_pair(c, region, ud.authorized_keys[1], tags) end
  if c.spot then
    p.InstanceMarketOptions = { MarketType = "spot", SpotOptions = { SpotInstanceType = "one-time",
      InstanceInterruptionBehavior = "terminate", MaxPrice = c.max_price and ("%.4f"):format(c.max_price) or nil } }
  end
  if c.instance_profile then
    p.IamInstanceProfile = c.instance_profile:match("^arn:") and { Arn = c.instance_profile } or { Name = c.instance_profile }
  end
  return p, user
end

-- The instance tags a RunInstances request carries.
local function params_tags(params)
  for _, ts in ipairs(params.TagSpecification or {}) do
    if ts.ResourceType == "instance" then
      local out = {}
      for _, t in ipairs(ts.Tag) do out[t.Key] = t.Value end
      return out
    end
  end
  return {}
end

local function by_token(c, region, token)
  return describe(c, region, { { Name = "tag:ephrun-token", Value = { token } }, LIVE })
end

local function terminate(c, region, id)
  local ok, err = pcall(call, c, region, "TerminateInstances", { InstanceId = { id } }, { idempotent = true })
  if ok then return true end
  if errors.is(err, "not_found") or tostring(err.code):match("^InvalidInstanceID") then return false end
  error(err, 0)
end

--- Creates an instance and returns at once (state `pending`). The ClientToken
--- is the journal's (`spec.client_token`), so a resumed launch cannot make a
--- second instance.
---@return table instance
function M.launch(spec, opts)
  local c = config(opts)
  local function needs(what) errors.raise { kind = "invalid", message = "aws: launch needs " .. what } end
  if not spec.plan or spec.plan == "" then needs("a plan (an instance type, e.g. t3.micro)") end
  if not spec.user_data then needs("user_data (from ephrun.cloudinit)") end
  local region = region_of(c, spec.region)
  launches = launches + 1
  local token = tostring(spec.client_token or ("%s-%d"):format(run_name(), launches)):sub(1, 64)
  local params, login_user = run_params(c, region, spec, token)
  local function made(inst)
    inst.login_user = login_user
    inst.schedule = scheduler.arm(session(c, region), region, inst, spec, c.opts)
    -- the reply may carry no tags; the board of the run's waiters is found by them
    if next(inst.tags) == nil then inst.tags = params_tags(params) end
    return inst
  end
  -- Until the reply is in hand, a cleanup terminates whatever carries the token:
  -- a run interrupted mid-create leaves nothing. A lost or failed reply may hide
  -- a create that happened: the token is looked up before trying again.
  return api.create {
    name = "aws: RunInstances",
    create = function()
      -- throttling refused the request: it is sent again here, the pacer held for
      -- everyone; any other failure is the guard's to look into before a retry
      local ok, r = pcall(call, c, region, "RunInstances", params, { deadline = 120 })
      if ok then return made(instances_of({ reservationSet = { r } }, region)[1]) end
      if type(r) == "table" and r.code == "IdempotentInstanceTerminated" then
        errors.raise { kind = "invalid", message = ("aws: the instance of ClientToken %s was already made and "
          .. "terminated; this launch is not repeated"):format(token) }
      end
      error(r, 0)
    end,
    lookup = function()
      local found = by_token(c, region, token)[1]
      return found and made(found) or nil
    end,
    describe = function(inst) return "instance " .. inst.id end,
    retry = errors.retryable,
    undo = function()
      for _, i in ipairs(by_token(c, region, token)) do M.destroy(i, opts) end
    end,
    what = "terminate the EC2 instance with ClientToken " .. token .. " if its create went through",
    hint = ("aws ec2 describe-instances --region %s --filters Name=tag:ephrun-token,Values=%s%s   # then terminate it")
      :format(q(region), q(token), endpoint_flag(c, region)),
  }
end

local function get_in(c, region, id)
  local ok, r = pcall(call, c, region, "DescribeInstances", { InstanceId = { id } })
  if not ok then
    if type(r) == "table" and tostring(r.code):match("^InvalidInstanceID") then return nil end
    error(r, 0)
  end
  return instances_of(r, region)[1]
end

--- The instance `id`, or nil when EC2 does not know it.
---@return table|nil
function M.get(id, opts)
  local c = config(opts)
  return get_in(c, region_of(c), id)
end

local function run_of(name, tags)
  return tags["ephrun-run"] or tostring(name or ""):match("^ephrun%-run%-(.+)$")
end

-- The per-run key pairs and security groups (of `run`, or every run): each
-- kind's listing call, the reply's item set, and its name and id fields.
local RUN_RESOURCES = {
  { kind = "security-group", action = "DescribeSecurityGroups", set = "securityGroupInfo", name = "groupName",
    id = "groupId" },
  { kind = "key-pair", action = "DescribeKeyPairs", set = "keySet", name = "keyName", id = "keyName" },
}

local function run_resources(c, region, run)
  local out = {}
  for _, rk in ipairs(RUN_RESOURCES) do
    local reply = call(c, region, rk.action, {})
    for _, raw in ipairs(aws.list(reply[rk.set])) do
      local name = raw[rk.name]
      local tags = aws.tags(raw.tagSet)
      local r = run_of(name, tags)
      if r and name == "ephrun-run-" .. r and (not run or r == run) then
        tags["ephrun-run"] = r
        out[#out + 1] = { id = raw[rk.id], kind = rk.kind, state = "running", region = region, label = name,
          tags = tags }
      end
    end
  end
  return out
end

-- The session's region, the `regions` setting and `filter.regions` (those
-- `ephrun reap` found in the journal or was given), each once.
local function regions_to_scan(c, filter)
  local out, seen = {}, {}
  local function add(r)
    if r and r ~= "" and not seen[r] then
      seen[r] = true
      out[#out + 1] = r
    end
  end
  local ok, own = pcall(region_of, c)
  for _, r in ipairs(c.regions or {}) do add(r) end
  for _, r in ipairs((filter or {}).regions or {}) do add(r) end
  if ok then add(own) elseif #out == 0 then error(own, 0) end
  for _, r in ipairs(out) do region_of(c, r) end
  return out
end

--- Instances not terminated whose tags include every `filter.tags` pair (all
--- of ephrun's when none are given), in the session's region, the `regions`
--- setting and `filter.regions`, then, unless a tag other than
--- `ephrun-run` is asked for, the runs' security groups (`kind =
--- "security-group"`), key pairs (`kind = "key-pair"`) and EventBridge
--- schedules (`kind = "schedule"`), which `ephrun reap` removes after the instances.
---@param filter? {tags?: table<string,string>, regions?: string[]}
---@return table[]
function M.list(filter, opts)
  local c = config(opts)
  local want = (filter or {}).tags or {}
  local filters, other = { LIVE }, false
  for k, v in pairs(want) do
    filters[#filters + 1] = { Name = "tag:" .. k, Value = { v } }
    if k ~= "ephrun-run" then other = true end
  end
  if next(want) == nil then filters[#filters + 1] = { Name = "tag-key", Value = { "ephrun-run" } } end
  local out = {}
  for _, region in ipairs(regions_to_scan(c, filter)) do
    for _, i in ipairs(describe(c, region, filters)) do out[#out + 1] = i end
    if not other then
      for _, r in ipairs(run_resources(c, region, want["ephrun-run"])) do out[#out + 1] = r end
      -- last: a reap stopped halfway leaves the timer of what it did not end
      for _, r in ipairs(scheduler.leftovers(session(c, region), region, want["ephrun-run"], c.opts)) do
        out[#out + 1] = r
      end
    end
  end
  return out
end

-- Waiting tasks of a run share one DescribeInstances of its instances per
-- poll (single-flight per region and run): fifty instances booting cost one
-- request per interval, not fifty.
local function run_board(c, region, run)
  return api.board(("aws ec2 %s %s %s"):format(session(c, region):endpoint("ec2"), region, run), {
    fetch = function()
      local by_id = {}
      for _, i in ipairs(describe(c, region, { { Name = "tag:ephrun-run", Value = { run } } })) do by_id[i.id] = i end
      return by_id
    end,
    signature = function(i) return table.concat({ tostring(i.aws_state), tostring(i.host), tostring(i.plan) }, "/") end,
    lookup = function(id) return get_in(c, region, id) end,
    first = math.min(0.25, c.poll), max = c.poll,
  })
end

-- The instance now (nil: EC2 does not know it), and when to ask again when a board answered.
local function observe(c, region, inst)
  local run = inst.tags and inst.tags["ephrun-run"]
  if not run then return get_in(c, region, inst.id) end
  local cur, next_in = run_board(c, region, run):get(inst.id)
  if cur == false then cur = { id = inst.id, state = "pending", aws_state = "pending", region = region, tags = inst.tags } end
  return cur, next_in
end

local function poll_until(c, inst, deadline, what, done)
  deadline = deadline or 600
  local region = region_of(c, inst.region)
  local function shown(cur) return cur and cur.aws_state or "gone" end
  return api.poll_until(function()
    local cur, next_in = observe(c, region, inst)
    local r = done(cur)
    if r == nil then
      errors.raise { kind = "not_found", message = ("aws instance %s is %s: it cannot become %s"):format(inst.id,
        shown(cur), what) }
    end
    return r, cur, next_in
  end, {
    deadline = deadline, delay = math.min(0.25, c.poll), max_delay = c.poll,
    subject = "aws instance " .. inst.id, show = shown, goal = what,
  })
end

local function gone(cur) return cur == nil or cur.state == "terminated" end

--- Terminates the instance and waits until it is `terminated` (or deletes a
--- run's security group or key pair from `list`). Idempotent.
---@param inst table|string
function M.destroy(inst, opts)
  if type(inst) == "string" then inst = { id = inst } end
  local c = config(inst.region and setmetatable({ region = inst.region }, { __index = opts or {} }) or opts)
  local region = region_of(c, inst.region)
  if inst.kind == "key-pair" then
    call(c, region, "DeleteKeyPair", { KeyName = inst.id }, { idempotent = true })
    return
  elseif inst.kind == "security-group" then
    local ok, err = pcall(call, c, region, "DeleteSecurityGroup", { GroupId = inst.id })
    if ok or errors.is(err, "not_found") then return end
    if errors.is(err, "locked") then
      errors.raise { kind = "locked", message = ("aws security group %s is still used by an instance that is not "
        .. "terminated yet"):format(inst.id) }
    end
    error(err, 0)
  elseif inst.kind == "schedule" then
    scheduler.disarm(session(c, region), region, inst.id)
    return
  end
  if terminate(c, region, inst.id) then
    poll_until(c, { id = inst.id, region = region, tags = inst.tags }, 600, "terminated", function(cur)
      if gone(cur) then return true end
      return false
    end)
  end
  -- The timer has nothing left to end; the run's cleanup deletes it again if this fails.
  if inst.schedule then
    local ok, err = pcall(scheduler.disarm, session(c, region), region, inst.schedule)
    if not ok then ephrun.log.warn("aws: %s (the run's cleanup tries again)", tostring(err)) end
  end
end

--- The run leaves `inst` running (a detached run): its security group stays
--- until `release` (after `ephrun finish`) or `ephrun reap` deletes it.
function M.detach(inst, opts)
  local c = config(opts)
  local d = group_cleanups[region_of(c, inst.region)]
  if d then d:cancel() end
end

--- After a detached instance is terminated: deletes the security group of the
--- run that launched it (retrying while EC2 still counts the instance in it).
function M.release(inst, opts)
  local c = config(opts)
  local region = region_of(c, inst.region)
  local run = (inst.tags or {})["ephrun-run"]
  if not run then return end
  local id = group_by_name(c, region, "ephrun-run-" .. run)
  if id then
    delete_group(c, region, id, c.cleanup_deadline)
    ephrun.log.info("deleted AWS security group ephrun-run-%s (%s)", run, region)
  end
end

--- The command that removes the instance (or security group, key pair) by hand.
---@return string
function M.destroy_hint(inst, opts)
  local c = config(opts)
  local ok, region = pcall(region_of, c, inst.region)
  region = ok and region or "REGION"
  local ep = ok and endpoint_flag(c, region) or ""
  if inst.kind == "key-pair" then
    return ("aws ec2 delete-key-pair --region %s --key-name %s%s"):format(q(region), q(inst.id), ep)
  elseif inst.kind == "security-group" then
    return ("aws ec2 delete-security-group --region %s --group-id %s%s"):format(q(region), q(inst.id), ep)
  elseif inst.kind == "schedule" then
    return scheduler.hint(session(c, ok and region or nil), region, inst.id)
  end
  return ("aws ec2 terminate-instances --region %s --instance-ids %s%s   # or: ephrun reap"):format(q(region),
    q(inst.id), ep)
end

--- Polls until the instance is `state` (`running` also needs its public
--- address); raises `not_found` when it is terminated first.
---@return table instance
function M.wait(inst, state, deadline, opts)
  local c = config(opts)
  return poll_until(c, inst, deadline, state, function(cur)
    if cur and cur.state == state and (state ~= "running" or cur.host) then return true end
    if gone(cur) and state ~= "terminated" then return nil end
    return false
  end)
end

--- The launch step's plan lines about the EventBridge Scheduler timer.
---@return string[]
function M.plan_details(spec, opts)
  local c = config(opts)
  local region = region_of(c, spec.region)
  return scheduler.plan_lines(session(c, region), region, spec.ttl, c.opts)
end

--- Where to connect: the public address, the configured SSH port and user.
function M.ssh_endpoint(inst, opts)
  local c = config(opts)
  return { host = inst.host, port = c.ssh_port, user = c.user or inst.login_user or "admin" }
end

--- Hourly USD for `spec`: the on-demand price of the type in its region (or
--- the spot MaxPrice) plus the gp3 root and extra volumes; nil when the table does not
--- have the type there.
---@return number|nil
function M.price(spec, opts)
  local c = config(opts)
  local plan = spec.plan
  if plan == nil or plan == "" then return nil end
  if not tostring(plan):match("^%l[%l%d%-]*%.%w+$") then
    errors.raise { kind = "invalid", message = ("aws: '%s' is not an EC2 instance type (e.g. t3.micro, c7i.8xlarge)")
      :format(tostring(plan)) }
  end
  local region
  if spec.region or c.region then
    region = region_of(c, spec.region or c.region)
  else
    local ok, r = pcall(region_of, c)
    region = ok and r or nil
  end
  local table_ = region and PRICES.regions[region]
  local od = table_ and table_.instances[plan]
  local hourly = c.spot and c.max_price or od
  if not hourly then return nil end
  local gb = c.volume_size
  for _, v in ipairs(spec.volumes or {}) do gb = gb + (tonumber(v.size) or 0) end
  return hourly + gb * (table_ and table_.gp3_gb_month or 0) / PRICES.hours_per_month
end

--- vCPU, memory (MiB) and hourly price (`price`) of `spec.plan`
--- (DescribeInstanceTypes and the price table), for tables that compare plans
--- (size-sweep) and for checking a resized instance (resize-instance); nil when
--- EC2 does not know the type or cannot be reached. One attempt: the figures
--- only label and check, so no network (a dry-run offline) must not hold it up.
---@param spec {plan?: string, region?: string}
---@return {plan: string, vcpu: integer, memory_mb: integer, price: number|nil}|nil
function M.plan_info(spec, opts)
  local plan = spec and spec.plan
  if plan == nil or plan == "" then return nil end
  local c = config(opts)
  local ok, r = pcall(call, c, region_of(c, spec.region or c.region), "DescribeInstanceTypes",
    { InstanceType = { plan } }, { once = true })
  local t = ok and aws.list(r.instanceTypeSet)[1]
  if not t then return nil end
  local pok, price = pcall(M.price, spec, opts)
  return { plan = plan, vcpu = tonumber((t.vCpuInfo or {}).defaultVCpus),
    memory_mb = tonumber((t.memoryInfo or {}).sizeInMiB), price = pok and price or nil }
end

local function image_of(raw)
  local st = raw.imageState
  return { id = raw.imageId, description = raw.description, name = raw.name,
    status = st == "available" and "complete" or st, created = aws.parse_time(raw.creationDate),
    snapshots = (function()
      local ids = {}
      for _, b in ipairs(aws.list(raw.blockDeviceMapping)) do
        if b.ebs and b.ebs.snapshotId then ids[#ids + 1] = b.ebs.snapshotId end
      end
      return ids
    end)() }
end

--- Makes an AMI of the instance (CreateImage, NoReboot) and returns its id.
---@param sopts? {description?: string}
---@return string id
function M.snapshot(inst, sopts, opts)
  local c = config(opts)
  local region = region_of(c, inst.region)
  sopts = sopts or {}
  launches = launches + 1
  local name = ("%s-%s-%d"):format(run_name(), inst.id, launches)
  local r = call(c, region, "CreateImage", { InstanceId = inst.id, Name = name, NoReboot = true,
    Description = sopts.description or ("ephrun " .. ephrun.run_id()),
    TagSpecification = { { ResourceType = "image", Tag = tag_list(inst.tags) } } })
  return r.imageId
end

--- The AMI `id` (status `complete` when available), or nil when it is gone.
---@return table|nil
function M.get_snapshot(id, opts)
  local c = config(opts)
  local ok, r = pcall(call, c, region_of(c), "DescribeImages", { ImageId = { id } })
  if not ok then
    if type(r) == "table" and tostring(r.code):match("^InvalidAMIID") then return nil end
    error(r, 0)
  end
  local raw = aws.list(r.imagesSet)[1]
  if not raw or raw.imageState == "deregistered" then return nil end
  return image_of(raw)
end

--- This account's AMIs, those described as `filter.description` when given.
---@return table[]
function M.snapshots(filter, opts)
  local c = config(opts)
  local r = call(c, region_of(c), "DescribeImages", { Owner = { "self" } })
  local out = {}
  for _, raw in ipairs(aws.list(r.imagesSet)) do
    if not (filter or {}).description or raw.description == filter.description then out[#out + 1] = image_of(raw) end
  end
  return out
end

--- Polls until the AMI is available.
---@return table snapshot
function M.wait_snapshot(id, deadline, opts)
  local c = config(opts)
  deadline = deadline or 3600
  return api.poll_until(function()
    local s = M.get_snapshot(id, opts)
    if not s or s.status == "failed" then
      errors.raise { kind = "not_found", message = "aws image " .. id .. " failed or disappeared while being made" }
    end
    return s.status == "complete", s
  end, {
    deadline = deadline, delay = math.min(0.25, c.poll), max_delay = c.poll * 2,
    subject = "aws image " .. id, show = function(s) return tostring(s.status) end,
  })
end

--- Deregisters the AMI and deletes its EBS snapshots (already gone is fine).
function M.delete_snapshot(id, opts)
  local c = config(opts)
  local region = region_of(c)
  local s = M.get_snapshot(id, opts)
  if not s then return end
  local ok, err = pcall(call, c, region, "DeregisterImage", { ImageId = id }, { idempotent = true })
  if not ok and not tostring(err.code):match("^InvalidAMIID") then error(err, 0) end
  for _, sid in ipairs(s.snapshots) do
    local dok, derr = pcall(call, c, region, "DeleteSnapshot", { SnapshotId = sid }, { idempotent = true })
    if not dok and not errors.is(derr, "not_found") then error(derr, 0) end
  end
end

--- The commands that delete the AMI `id` by hand.
---@return string
function M.snapshot_hint(id, opts)
  local c = config(opts)
  local ok, region = pcall(region_of, c)
  region = ok and region or "REGION"
  return ("aws ec2 deregister-image --region %s --image-id %s%s   # then delete-snapshot of its EBS snapshots"):format(
    q(region), q(id), ok and endpoint_flag(c, region) or "")
end

local function state_is(state)
  return function(cur)
    if cur and cur.state == state and (state ~= "running" or cur.host) then return true end
    if gone(cur) then return nil end
    return false
  end
end

--- Stops the instance and waits until it is `stopped`.
---@return table instance
function M.halt(inst, deadline, opts)
  local c = config(opts)
  local region = region_of(c, inst.region)
  call(c, region, "StopInstances", { InstanceId = { inst.id } }, { idempotent = true })
  return poll_until(c, inst, deadline or 600, "stopped", state_is("stopped"))
end

--- Starts a stopped instance and waits until it runs again.
---@return table instance
function M.start(inst, deadline, opts)
  local c = config(opts)
  local region = region_of(c, inst.region)
  call(c, region, "StartInstances", { InstanceId = { inst.id } }, { idempotent = true })
  return poll_until(c, inst, deadline or 600, "running", state_is("running"))
end

--- Stop, change the type, start, verify. When the start is refused for lack
--- of capacity, the old type is put back and started, and the capacity error raised.
---@return table instance
function M.resize(inst, plan, deadline, opts)
  local c = config(opts)
  local region = region_of(c, inst.region)
  local cur = M.get(inst.id, opts) or errors.raise { kind = "not_found", message = "aws instance " .. inst.id .. " is gone" }
  if cur.plan == plan and cur.state == "running" then return cur end
  local old = cur.plan
  if cur.state ~= "stopped" then M.halt(inst, deadline, opts) end
  local function set_type(t)
    call(c, region, "ModifyInstanceAttribute", { InstanceId = inst.id, InstanceType = { Value = t } }, { idempotent = true })
  end
  set_type(plan)
  local ok, err = pcall(M.start, inst, deadline, opts)
  if not ok then
    if errors.is(err, "capacity") then
      ephrun.log.warn("aws: no capacity to start %s as %s; putting back %s", inst.id, plan, old)
      set_type(old)
      M.start(inst, deadline, opts)
    end
    error(err, 0)
  end
  local now = M.get(inst.id, opts)
  if not now or now.plan ~= plan then
    errors.raise { kind = "server", retry = false, message = ("aws instance %s runs as %s after the resize, not %s")
      :format(inst.id, now and now.plan or "?", plan) }
  end
  return now
end

return M
