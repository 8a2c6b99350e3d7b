--- deploy-fast: build on a temporary instance, deploy from it, fetch the
--- artifacts, destroy the instance — on success, error or Ctrl-C.
local ephrun = require "ephrun"

return ephrun.recipe {
  name = "deploy-fast",
  summary = "Build on a temporary high-CPU instance, deploy from it, destroy it.",
  params = {
    provider = { default = "local", doc = "where the instance runs", choices = { "local", "vultr", "aws" } },
    plan = { default = "vc2-4c-8gb", doc = "instance size (provider's plan or instance type)" },
    region = { default = "ewr", doc = "provider region" },
    src = { type = "path", default = "examples/hello", doc = "local source directory to sync" },
    build = { default = "make", doc = "build command, run in the synced directory" },
    deploy = { default = "", doc = "deploy command run after the build (empty: none)" },
    artifacts = { type = "list", default = { "dist" }, doc = "remote paths (relative to the app) to fetch" },
    out = { type = "path", default = "artifacts", doc = "local folder for fetched artifacts" },
    snapshot = { default = "", doc = "boot from this snapshot id instead of a fresh image" },
    ttl = { type = "duration", default = "1h", doc = "hard lifetime of the instance" },
    keep = { default = false, doc = "keep the instance after the run (it still ends at ttl)" },
  },
  run = function(p)
    local cloud = ephrun.provider(p.provider)
    local box <close> = cloud:launch {
      plan = p.plan, region = p.region, ttl = p.ttl, keep = p.keep,
      snapshot = p.snapshot ~= "" and p.snapshot or nil,
    }
    local sh <close> = box:ssh()

    ephrun.phase("sync")
    sh:sync(p.src, "app", { exclude = { "node_modules" } })

    ephrun.phase("build")
    sh:run("cd app && " .. p.build)

    if p.deploy ~= "" then
      ephrun.phase("deploy")
      sh:run("cd app && " .. p.deploy)
    end

    ephrun.phase("fetch")
    for _, a in ipairs(p.artifacts) do
      sh:fetch("app/" .. a, p.out .. "/" .. a)
    end
  end,
}
