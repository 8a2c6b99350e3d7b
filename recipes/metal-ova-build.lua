--- metal-ova-build: the prewarmed OVA build on a bare-metal EC2 instance
--- (c5n.metal; m5zn.metal as the alternative) with a 500 GB gp3 scratch volume,
--- one build at a time (the team lock), a cost estimate confirmed before
--- launch, a hard 3-hour lifetime that holds if ephrun dies and a 3.5-hour
--- launcher timeout. The build is streamed with the disk usage sampled every
--- minute; on success the OVA, its SHA-256 and a metadata JSON go to
--- s3://BUCKET/prewarmed/BUILD_ID/ and are verified there; on failure the build
--- log goes there instead. Everything it made is removed either way.
--- Replaces the team's Terraform + bash + watchdog Lambda + DynamoDB + SNS.
--- Runs on the local provider too, with a bucket or a local `dest` directory.
local ephrun = require "ephrun"
local s3 = require "ephrun.s3"

local q = ephrun.shell_quote

-- The extra volume, formatted and mounted where the build runs (AWS only: a
-- local instance has no block device of its own).
local MOUNT = [[
set -e
dev=$(lsblk -dpno NAME,TYPE | awk '$2=="disk"{print $1}' | while read -r d; do
  [ -z "$(lsblk -no MOUNTPOINT,FSTYPE "$d" | tr -d ' \n')" ] && echo "$d"; done | head -n 1)
[ -n "$dev" ] || { echo "no unused disk found for the build volume" >&2; exit 1; }
sudo mkfs.ext4 -q -F "$dev"
mkdir -p "$HOME/build"
sudo mount "$dev" "$HOME/build"
sudo chown "$(id -u):$(id -g)" "$HOME/build"
echo "build volume $dev mounted at $HOME/build"
]]

-- The build, streamed and appended to build.log, with the disk usage of the
-- build directory shown at once, every `every` seconds, and at the end. The
-- sampler's sleep writes nowhere, so it never holds the session's output open.
local function wrapped(build, every)
  return table.concat({
    "cd build || exit 1",
    ": > build.log",
    "disk() { echo \"[disk] $(df -Ph . | awk 'NR>1{print $3\" used of \"$2\" (\"$5\") on \"$6}')\" | tee -a build.log; }",
    ("( while :; do disk; sleep %d >/dev/null 2>&1 </dev/null; done ) &"):format(every),
    "sampler=$!",
    ("{ ( %s ) 2>&1; echo $? > .ephrun-build-rc; } | tee -a build.log"):format(build),
    "kill $sampler 2>/dev/null",
    "rc=$(cat .ephrun-build-rc 2>/dev/null || echo 1)",
    "disk",
    "exit $rc",
  }, "\n")
end

-- Where the results go: an S3 prefix, or a local directory.
local function destination(p, prefix)
  if p.bucket ~= "" then
    local b = s3.bucket(p.bucket, { region = p.region ~= "" and p.region or nil })
    return {
      bucket = b,
      url = function(name) return b:url(prefix .. name) end,
      file = function(name, path) return b:put(prefix .. name, { file = path }) end,
      body = function(name, text, ct) return b:put(prefix .. name, { body = text }, { content_type = ct }) end,
    }
  end
  local dir = p.dest .. "/" .. prefix
  local function verified(name, path)
    local sha = ephrun.fs.hash(path, "sha256")
    local st = ephrun.fs.stat(path)
    return { key = dir .. name, size = st and st.size or 0, sha256 = sha }
  end
  return {
    url = function(name) return dir .. name end,
    file = function(name, path)
      ephrun.fs.mkdir_p(ephrun.fs.dirname(dir .. name))
      ephrun.proc.run({ "cp", path, dir .. name }, { stream = false })
      return ephrun.effect { kind = "check", what = "verify " .. dir .. name, run = function()
        local r = verified(name, dir .. name)
        local want = ephrun.fs.hash(path, "sha256")
        if r.sha256 ~= want then error(("%s: copied file's SHA-256 %s is not %s"):format(dir .. name, r.sha256, want), 0) end
        return r
      end, placeholder = { key = dir .. name, size = 0, sha256 = "" } }
    end,
    body = function(name, text)
      ephrun.fs.mkdir_p(dir)
      ephrun.fs.write(dir .. name, text)
      return { key = dir .. name, size = #text, sha256 = ephrun.fs.hash_string(text) }
    end,
  }
end

-- The git branch and commit of `src`, for the metadata (empty outside a repository).
local function git_info(src, p)
  local function git(...)
    local r = ephrun.proc.run({ "git", "-C", src, ... }, { check = false, stream = false })
    return r and r.ok and (r.stdout or ""):match("^%s*(.-)%s*$") or ""
  end
  local branch = p.branch ~= "" and p.branch or git("rev-parse", "--abbrev-ref", "HEAD")
  local commit = p.commit ~= "" and p.commit or git("rev-parse", "HEAD")
  return branch, commit
end

-- The history row: what `ephrun history` shows beside the run's status.
local function record(result)
  local dir = ephrun.cloud.state_dir() .. "/history"
  ephrun.fs.mkdir_p(dir, "0700")
  ephrun.fs.write(dir .. "/" .. ephrun.run_id() .. ".json", ephrun.json.encode(result), { mode = "0600" })
end

local function estimate(cloud, p, spec, upload_from)
  if p.provider ~= "aws" then return 0, { cloud.name .. " provider: no instance, volume or transfer charges" }, 0 end
  local hours = p.ttl / 3600
  local total_h = cloud:price(spec)
  local base_h = cloud:price { plan = spec.plan, region = spec.region }
  local transfer = upload_from == "launcher" and p.ova_gb * p.transfer_per_gb or 0
  if not total_h then return nil, { "no price known for " .. tostring(spec.plan) }, transfer end
  local ebs_h = total_h - (base_h or total_h)
  local lines = {
    ("instance %s: $%.4f/h x %s = $%.2f"):format(spec.plan or "local", base_h or 0,
      ephrun.time.format_duration(p.ttl), (base_h or 0) * hours),
    ("EBS %d GB gp3: $%.4f/h x %s = $%.2f"):format(p.volume_gb, ebs_h, ephrun.time.format_duration(p.ttl), ebs_h * hours),
    ("transfer to S3: %s"):format(upload_from == "launcher"
      and ("~%d GB out of EC2 to the launcher at $%.3f/GB = $%.2f"):format(p.ova_gb, p.transfer_per_gb, transfer)
      or "none billed (from the instance, same region)"),
  }
  return total_h * hours + transfer, lines, transfer
end

return ephrun.recipe {
  name = "metal-ova-build",
  summary = "Build the prewarmed OVA on a c5n.metal under a hard 3-hour limit; upload it, its SHA-256 and metadata to S3.",
  params = {
    provider = { default = "local", choices = { "local", "aws" }, doc = "aws, or local to try it offline" },
    instance_type = { default = "c5n.metal", doc = "EC2 type (m5zn.metal is the alternative)" },
    region = { default = "", doc = "AWS region of the instance and the bucket (default: AWS_REGION / the profile's)" },
    volume_gb = { default = 500, doc = "gp3 build volume in GB" },
    ttl = { type = "duration", default = "3h", doc = "hard lifetime of the instance (holds if ephrun dies)" },
    timeout = { type = "duration", default = "3h30m", doc = "the launcher gives up after this long" },
    src = { type = "path", default = ".", doc = "project directory synced to the instance" },
    build = { default = "packer build packer/prewarmed-build.pkr.hcl", doc = "build command, run in the synced directory" },
    ova = { default = "output/*.ova", doc = "the OVA the build makes (a glob, relative to the synced directory)" },
    build_id = { default = "", doc = "BuildID tag and S3 prefix (default: the run id)" },
    branch = { default = "", doc = "for the metadata (default: git's, of src)" },
    commit = { default = "", doc = "for the metadata (default: git's, of src)" },
    bucket = { default = "", doc = "S3 bucket for the results (required on aws)" },
    prefix = { default = "prewarmed", doc = "results go under PREFIX/BUILD_ID/" },
    dest = { default = "ova-builds", doc = "without a bucket: the local directory the results go to" },
    instance_profile = { default = "", doc = "IAM instance profile: the instance uploads with `aws s3 cp` itself" },
    project = { default = "prewarmed-ova", doc = "Project tag" },
    cost_center = { default = "build", doc = "CostCenter tag" },
    lock = { default = "metal-ova-build", doc = "the team lock's name (one build at a time)" },
    lock_lease = { type = "duration", default = "10m", doc = "how long the lock outlives a killed launcher" },
    lock_bucket = { default = "", doc = "aws: the lock's bucket (default: bucket)" },
    disk_every = { type = "duration", default = "1m", doc = "how often the build's disk usage is shown" },
    prepare = { default = "auto", choices = { "auto", "none" }, doc = "auto: format and mount the build volume (aws)" },
    ova_gb = { default = 20, doc = "expected OVA size in GB, for the transfer estimate" },
    transfer_per_gb = { default = 0.09, min = 0, doc = "USD per GB leaving EC2 (uploads through the launcher)" },
    ssh_deadline = { type = "duration", default = "10m", doc = "metal instances take minutes to boot" },
  },
  run = function(p)
    local t0 = ephrun.time.now()
    ephrun.phase("check")
    if p.provider == "aws" and p.bucket == "" then
      error("bucket=NAME is required on aws: the OVA, its SHA-256 and metadata go to s3://NAME/" .. p.prefix .. "/BUILD_ID/", 0)
    end
    if p.bucket == "" and p.dest == "" then
      error("give bucket=NAME (S3) or dest=DIR (a local directory) for the results", 0)
    end
    if p.instance_profile ~= "" and (p.provider ~= "aws" or p.bucket == "") then
      error("instance_profile= needs provider=aws and a bucket (the instance uploads to S3 itself)", 0)
    end
    local st = ephrun.fs.stat(p.src, { follow = true })
    if not st or st.type ~= "dir" then error(("src=%s is not a directory"):format(p.src), 0) end
    local upload_from = p.instance_profile ~= "" and "instance" or "launcher"
    local build_id = p.build_id ~= "" and p.build_id or ephrun.run_id()
    local prefix = p.prefix .. "/" .. build_id .. "/"
    local out = destination(p, prefix)
    local branch, commit = git_info(p.src, p)

    ephrun.phase("lock")
    local lock_opts = { lease = p.lock_lease }
    if p.provider == "aws" then
      lock_opts.backend, lock_opts.bucket = "s3", p.lock_bucket ~= "" and p.lock_bucket or p.bucket
      lock_opts.session = ephrun.aws.session { region = p.region ~= "" and p.region or nil }
    end
    local lock = ephrun.lock(p.lock, lock_opts)

    ephrun.phase("estimate")
    local cloud = ephrun.provider(p.provider, p.provider == "aws"
      and { instance_profile = p.instance_profile ~= "" and p.instance_profile or nil } or nil)
    local spec = {
      plan = p.provider == "aws" and p.instance_type or nil, region = p.region ~= "" and p.region or nil,
      ttl = p.ttl, deadline = "30m",
      volumes = p.provider == "aws" and { { size = math.floor(p.volume_gb), type = "gp3" } } or nil,
      tags = { Project = p.project, Purpose = "prewarmed-build", BuildID = build_id, AutoDelete = "true",
        CostCenter = p.cost_center, MaxLifetime = "3hours" },
    }
    local worst, lines, transfer = estimate(cloud, p, spec, upload_from)
    ephrun.effect { kind = "estimate", where = cloud.name,
      what = worst and ("cost estimate: at most $%.2f (instance + EBS + transfer)"):format(worst)
        or "cost estimate: unknown",
      details = lines, run = function()
        ephrun.log.info("cost estimate: " .. table.concat(lines, "; "))
      end }
    ephrun.effect { kind = "upload", what = ("results to %s (%s)"):format(out.url(""),
      upload_from == "instance" and ("uploaded from the instance with aws s3 cp, instance profile "
        .. p.instance_profile) or (p.bucket ~= "" and "fetched to the launcher and uploaded from there"
        or "fetched to the launcher and copied")), run = function() end }
    -- The launch's own gate confirms it (or refuses it above --max-cost) with the transfer included.
    spec.extra_cost = transfer > 0 and { usd = transfer, what = "transfer to S3" } or nil

    ephrun.phase("launch")
    local box <close> = cloud:launch(spec)
    local sh <close> = box:ssh { deadline = p.ssh_deadline }
    if p.prepare == "auto" and p.provider == "aws" then
      ephrun.phase("prepare")
      sh:run(MOUNT)
    end
    ephrun.phase("sync")
    sh:sync(p.src, "build", { exclude = { "node_modules", "output" } })

    ephrun.phase("build")
    local result = { build_id = build_id, status = "failed", prefix = out.url(""), keys = {} }
    -- The launcher's own limit: whatever the instance's lifetime, it gives up at `timeout`.
    local left = math.max(1, t0 + p.timeout - ephrun.time.now())
    local ok, err = pcall(sh.run, sh, wrapped(p.build, math.max(1, math.floor(p.disk_every))), { timeout = left })
    if not ok then
      if ephrun.is_cancelled(err) then error(err, 0) end
      if ephrun.time.now() >= t0 + p.timeout - 1 then
        err = ("launcher timeout: the build was still running after %s (timeout=%s)"):format(
          ephrun.time.format_duration(math.floor(ephrun.time.now() - t0)), ephrun.time.format_duration(p.timeout))
      end
      ephrun.phase("logs")
      -- The build's error is the one to report: a log that cannot be saved is only a warning.
      local saved, up = pcall(function()
        local tmp = ephrun.fs.tempdir("ephrun-ova-")
        sh:fetch("build/build.log", tmp .. "/build.log")
        return out.file("logs/build.log", tmp .. "/build.log")
      end)
      if not saved and ephrun.is_cancelled(up) then error(up, 0) end
      local where
      if saved then
        result.keys[#result.keys + 1] = out.url("logs/build.log")
        ephrun.log.info(("build log: %s (%d bytes)"):format(out.url("logs/build.log"), up.size or 0))
        where = "its log is at " .. out.url("logs/build.log")
      else
        ephrun.log.warn(("the build log could not be saved to %s: %s"):format(out.url("logs/build.log"), tostring(up)))
        where = "its log could not be saved (see the output above)"
      end
      result.duration, result.cost = ephrun.time.now() - t0, box:cost()
      ephrun.effect { kind = "write", what = "record the build in the history", run = function() record(result) end }
      error(("build %s failed: %s; %s"):format(build_id, tostring(err), where), 0)
    end

    ephrun.phase("artifacts")
    local found = sh:run("cd build && for f in " .. p.ova .. "; do [ -f \"$f\" ] && echo \"$f\"; done; true",
      { stream = false })
    -- An effect, so a dry-run (whose session answers "") plans on with a placeholder name.
    local ova = (found.stdout or ""):match("[^\n]+") or ephrun.effect { kind = "check",
      what = "find the OVA (" .. p.ova .. ")", placeholder = "output/build.ova", run = function()
        error(("the build succeeded but left no file matching ova=%s in the synced directory"):format(p.ova), 0)
      end }
    local name = ova:match("[^/]+$")
    local remote = sh:run("cd build && sha256sum " .. q(ova) .. " && stat -c %s " .. q(ova), { stream = false })
    local remote_sha = (remote.stdout or ""):match("^(%x+)")
    local remote_size = math.tointeger(tonumber((remote.stdout or ""):match("\n(%d+)%s*$")))
    local fetched
    if upload_from == "instance" then
      -- The instance profile's credentials come from IMDS; only the bucket's region is passed.
      sh:run(("cd build && aws s3 cp --only-show-errors --metadata %s %s %s"):format(
        q(s3.SHA256_META .. "=" .. tostring(remote_sha)), q(ova), q(out.url(name))),
        { env = { AWS_DEFAULT_REGION = out.bucket.session:region() } })
    else
      fetched = ephrun.fs.tempdir("ephrun-ova-") .. "/" .. name
      sh:fetch("build/" .. ova, fetched)
      local got = ephrun.fs.hash(fetched, "sha256")
      if remote_sha and got and got ~= remote_sha then
        error(("%s arrived with SHA-256 %s; the instance has %s"):format(name, got, remote_sha), 0)
      end
    end
    -- The OVA is out of the instance: the metal stops billing before the upload and the checks.
    sh:close()
    ephrun.phase("destroy")
    box:close()

    ephrun.phase("upload")
    local put
    if fetched then
      put = out.file(name, fetched)
    else
      put = ephrun.effect { kind = "check", what = "verify " .. out.url(name) .. " against the instance's SHA-256",
        placeholder = { key = prefix .. name, size = 0, sha256 = "" }, run = function()
          local h = out.bucket:head(prefix .. name)
          if not h or h.size ~= remote_size or h.sha256 ~= remote_sha then
            error(("%s: after the upload from the instance S3 holds %s bytes with SHA-256 %s; the instance had %s bytes, %s")
              :format(out.url(name), tostring(h and h.size), tostring(h and h.sha256), tostring(remote_size),
              tostring(remote_sha)), 0)
          end
          return { key = h.key, size = h.size, sha256 = remote_sha }
        end }
    end
    local sha = put.sha256 ~= "" and put.sha256 or remote_sha or ""
    out.body(name .. ".sha256", ("%s  %s\n"):format(sha, name), "text/plain")
    local meta = {
      build_id = build_id, branch = branch, commit = commit, run_id = ephrun.run_id(),
      instance_type = spec.plan or "local", provider = cloud.name, started = ephrun.time.iso8601(t0),
      finished = ephrun.time.iso8601(), duration = math.floor(ephrun.time.now() - t0 + 0.5),
      cost = box:cost() and math.floor(box:cost() * 10000 + 0.5) / 10000 or nil,
      ova = { name = name, size = put.size, sha256 = sha, url = out.url(name) },
    }
    out.body("metadata.json", ephrun.json.encode(meta, { pretty = true }), "application/json")
    result.status, result.duration, result.cost = "ok", meta.duration, meta.cost
    result.keys = { out.url(name), out.url(name .. ".sha256"), out.url("metadata.json") }
    ephrun.effect { kind = "write", what = "record the build in the history", run = function() record(result) end }
    lock:release()
    ephrun.effect { kind = "report", what = "print where the OVA is", run = function()
      io.stdout:write(table.concat({
        "", ("metal-ova-build %s: done in %s, cost $%.4f"):format(build_id,
          ephrun.time.format_duration(meta.duration), meta.cost or 0),
        ("  OVA:      %s (%s, sha256 %s)"):format(out.url(name), ephrun.ssh.human_bytes(put.size or 0), sha),
        "  checksum: " .. out.url(name .. ".sha256"),
        "  metadata: " .. out.url("metadata.json"),
        ("  %s instance %s destroyed; nothing left running"):format(cloud.name, box.id),
      }, "\n"), "\n")
    end }
  end,
}
