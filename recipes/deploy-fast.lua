--- deploy-fast: build on a temporary instance, deploy from it, fetch the
--- artifacts, destroy the instance — on success, error or Ctrl-C — and print
--- a summary: time per phase, files synced, cost, what was destroyed.
local ephrun = require "ephrun"

-- A local input the run reads after the instance exists is checked before it is
-- made, in a dry-run too: a typo must not cost a launch.
local function local_dir(p, name)
  local st = ephrun.fs.stat(p[name], { follow = true })
  if not st or st.type ~= "dir" then
    error(("%s=%s: %s; run from the project directory (the default is the current one) or pass %s=DIR")
      :format(name, p[name], st and "not a directory" or "no such directory", name), 0)
  end
end

return ephrun.recipe {
  name = "deploy-fast",
  summary = "Build on a temporary high-CPU instance, deploy from it, destroy it.",
  params = {
    provider = { default = "local", doc = "where the instance runs", choices = ephrun.cloud.builtin_providers { creates = true } },
    plan = { default = "vc2-4c-8gb", doc = "instance size (provider's plan or instance type)" },
    region = { default = "ewr", doc = "provider region" },
    src = { type = "path", default = ".", doc = "local source directory to sync (default: the current directory)" },
    build = { default = "make", doc = "build command, run in the synced directory" },
    deploy = { default = "", doc = "deploy command run after the build (empty: none)" },
    artifacts = { type = "list", default = { "dist" }, doc = "remote paths (relative to the app) to fetch" },
    out = { type = "path", default = "artifacts", doc = "local folder for fetched artifacts" },
    snapshot = { default = "", doc = "boot from this snapshot id instead of a fresh image" },
    ttl = { type = "duration", default = "1h", doc = "hard lifetime of the instance" },
    keep = { default = false, doc = "keep the instance after the run (it still ends at ttl)" },
    ssh_deadline = { type = "duration", default = "5m", doc = "how long to wait for SSH once the instance runs" },
    boot_delay = { type = "number", default = 0, doc = "local provider: simulated boot time in seconds" },
  },
  run = function(p)
    ephrun.phase("check")
    local_dir(p, "src")
    local t = ephrun.time
    local phases, t0 = {}, t.monotonic()
    local mark = t0
    local function done(name)
      local now = t.monotonic()
      phases[#phases + 1] = { name, now - mark }
      mark = now
    end

    local cloud = ephrun.provider(p.provider)
    ephrun.phase("launch")
    local box <close> = cloud:launch {
      plan = p.plan, region = p.region, ttl = p.ttl, keep = p.keep,
      snapshot = p.snapshot ~= "" and p.snapshot or nil,
      boot_delay = p.boot_delay > 0 and p.boot_delay or nil,
    }
    done("launch")
    ephrun.phase("ssh")
    local sh <close> = box:ssh { deadline = p.ssh_deadline }
    done("ssh")

    ephrun.phase("sync")
    local synced = sh:sync(p.src, "app", { exclude = { "node_modules" } })
    done("sync")

    ephrun.phase("build")
    sh:run("cd app && " .. p.build)
    done("build")

    if p.deploy ~= "" then
      ephrun.phase("deploy")
      sh:run("cd app && " .. p.deploy)
      done("deploy")
    end

    ephrun.phase("fetch")
    local fetched = { files = 0, bytes = 0 }
    for _, a in ipairs(p.artifacts) do
      local st = sh:fetch("app/" .. a, p.out .. "/" .. a)
      fetched.files = fetched.files + (st.files or 0)
      fetched.bytes = fetched.bytes + (st.bytes or 0)
    end
    done("fetch")

    sh:close()
    ephrun.phase("destroy")
    box:close()
    done("destroy")

    -- Printing the summary is the run's last effect: a dry-run lists it instead.
    local function summary()
      local out = { "", "deploy-fast summary (run " .. ephrun.run_id() .. ")" }
      for _, ph in ipairs(phases) do
        out[#out + 1] = ("  %-8s %8.2fs"):format(ph[1], ph[2])
      end
      out[#out + 1] = ("  %-8s %8.2fs"):format("total", t.monotonic() - t0)
      out[#out + 1] = ("  synced:    %d of %d files sent (%s), %d excluded"):format(synced.files_sent,
        synced.files_total, ephrun.ssh.human_bytes(synced.bytes_sent), synced.excluded or 0)
      out[#out + 1] = ("  artifacts: %d files (%s) in %s"):format(fetched.files,
        ephrun.ssh.human_bytes(fetched.bytes), p.out)
      local cost = box:cost()
      out[#out + 1] = "  cost:      " .. (cost and ("$%.4f"):format(cost) or "unknown")
      if p.keep then
        out[#out + 1] = ("  KEPT:      %s instance %s is still running (its lifetime ends at %s)\n"
          .. "             log in: %s\n             remove it: %s")
          :format(cloud.name, box.id, box.tags["ephrun-expires"], box:ssh_command(), box:destroy_hint())
      else
        out[#out + 1] = ("  destroyed: %s instance %s; nothing left running"):format(cloud.name, box.id)
      end
      io.stdout:write(table.concat(out, "\n"), "\n")
    end
    ephrun.effect { kind = "report", what = "print the summary: time per phase, files synced, cost", run = summary }
  end,
}
