--- create-build-snapshot: launch an instance, prepare it with the `setup`
--- commands (Node.js LTS by default), snapshot it, wait until the snapshot is
--- complete and destroy the instance. Later runs boot from the snapshot
--- (`deploy-fast provider=vultr snapshot=<id>`) instead of installing again.
--- The instance is destroyed on every path out; a snapshot still being made
--- when the run fails or is interrupted is deleted, a complete one is kept.
local ephrun = require "ephrun"

local NODE_LTS = "curl -fsSL https://deb.nodesource.com/setup_lts.x | bash - && " ..
  "DEBIAN_FRONTEND=noninteractive apt-get install -y nodejs && node --version"

return ephrun.recipe {
  name = "create-build-snapshot",
  summary = "Prepare a build instance once, snapshot it, destroy it; print the snapshot id.",
  params = {
    provider = { default = "vultr", doc = "cloud that holds the snapshot", choices = ephrun.cloud.builtin_providers { can = "snapshot" } },
    plan = { default = "vc2-1c-1gb", doc = "instance size used to prepare the image" },
    region = { default = "ewr", doc = "provider region (the snapshot can boot in any region)" },
    image = { default = "", doc = "OS image to start from (Vultr os_id; default Debian 12)" },
    setup = { default = NODE_LTS, doc = "shell commands that prepare the instance (run with sh -e as its login user)" },
    description = { default = "", doc = "snapshot description (default: ephrun build image <date>)" },
    ttl = { type = "duration", default = "2h", doc = "hard lifetime of the preparing instance" },
    snapshot_deadline = { type = "duration", default = "1h", doc = "how long to wait for the snapshot to complete" },
  },
  run = function(p)
    local t = ephrun.time
    local t0 = t.monotonic()
    local cloud = ephrun.provider(p.provider)
    local description = p.description ~= "" and p.description
      or ("ephrun build image " .. os.date("!%Y-%m-%d %H:%M"))

    local box <close> = cloud:launch {
      plan = p.plan, region = p.region, image = p.image ~= "" and p.image or nil, ttl = p.ttl,
    }
    local sh <close> = box:ssh()

    ephrun.phase("setup")
    sh:run("set -e; " .. p.setup)
    -- The image must not carry this run's key: the next instance gets its own.
    sh:run("rm -f ~/.ssh/authorized_keys; sync")
    sh:close()

    local id = box:snapshot { description = description, deadline = p.snapshot_deadline }
    ephrun.phase("destroy")
    box:close()

    ephrun.effect { kind = "report", what = "print the snapshot id, how to boot from it and how to delete it",
      run = function()
        io.stdout:write(table.concat({
          "",
          ("create-build-snapshot: snapshot %s ('%s') is complete (%s in all)"):format(id, description,
            t.format_duration(math.floor(t.monotonic() - t0 + 0.5))),
          ("  %s instance %s destroyed; cost $%.4f"):format(cloud.name, box.id, box:cost() or 0),
          "  boot from it:  ephrun deploy-fast provider=" .. cloud.name .. " snapshot=" .. id,
          "  in a recipe:   cloud:launch { plan = ..., region = ..., snapshot = \"" .. id .. "\" }",
          "  snapshots are billed by size until deleted; remove it with: " ..
            (cloud.impl.snapshot_hint and cloud.impl.snapshot_hint(id, cloud.opts) or ("delete snapshot " .. id)),
        }, "\n"), "\n")
      end,
    }
  end,
}
