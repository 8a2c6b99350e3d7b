-- `ephrun ls [--json]`: the resources the journal says are alive, with their
-- age, the TTL they have left and what they have cost so far.
local ephrun = require "ephrun"
local common = require "ephrun.cmd.common"

return ephrun.recipe {
  name = "ls",
  summary = "List live resources from the journal: provider, id, run, recipe, age, TTL left, cost so far.",
  params = {
    all = { default = false, doc = "also show destroyed and failed resources" },
  },
  run = function(p)
    local now = ephrun.time.now()
    local rows = ephrun.journal.resources { live = not p.all }
    local total = 0
    local out = {}
    for _, r in ipairs(rows) do
      local cost = common.cost(r, now)
      total = total + (cost or 0)
      local live = r.status == "pending" or r.status == "live" or r.status == "kept" or r.status == "detached"
      out[#out + 1] = {
        key = r.key, provider = r.provider, kind = r.kind, id = r.id, run_id = r.run_id, recipe = r.recipe,
        status = r.status, state = live and common.state(r, now) or r.status,
        age = now - common.born(r), ttl_left = r.expires_at and (r.expires_at - now) or nil,
        expires_at = r.expires_at, hourly_price = r.hourly_price, cost = cost, tags = r.tags,
        created = r.created, destroyed = r.destroyed, error = r.error,
        detached_run = type(r.extra) == "table" and type(r.extra.detach) == "table" and r.extra.detach.run or nil,
      }
    end
    if ephrun.options().json then
      local list = ephrun.json.array()
      for i, r in ipairs(out) do list[i] = r end
      io.stdout:write(ephrun.json.encode({ resources = list, total_cost = total, journal = ephrun.journal.path() },
        { pretty = true }), "\n")
      return
    end
    if #out == 0 then
      io.stdout:write("No live resources (journal: ", ephrun.journal.path(), ").\n")
      return
    end
    local cells = {}
    for _, r in ipairs(out) do
      local state = r.state
      if state == "kept" then
        state = r.expires_at and ("kept (until " .. common.local_time(r.expires_at) .. ")") or "kept (no TTL)"
      elseif state == "detached" then
        state = "detached (ephrun status " .. (r.detached_run or r.run_id) .. ")"
      end
      cells[#cells + 1] = { r.provider, r.id or "(creating)", r.run_id, r.recipe ~= "" and r.recipe or "?",
        state, common.short_duration(r.age), r.ttl_left and common.short_duration(r.ttl_left) or "none",
        common.money(r.cost) }
    end
    common.table({ "PROVIDER", "ID", "RUN", "RECIPE", "STATE", "AGE", "TTL LEFT", "COST" }, cells)
    io.stdout:write(("%d resource%s, %s so far\n"):format(#out, #out == 1 and "" or "s", common.money(total)))
    local orphans = 0
    for _, r in ipairs(out) do
      if r.state == "orphaned" or r.state == "expired" then orphans = orphans + 1 end
    end
    if orphans > 0 then
      io.stdout:write(("%d of them expired or orphaned: `ephrun reap` removes them.\n"):format(orphans))
    end
    local kept = 0
    for _, r in ipairs(out) do
      if r.state == "kept" then kept = kept + 1 end
    end
    if kept > 0 then
      io.stdout:write(("%d kept (keep=true) until their TTL: `ephrun reap kept=true` removes them sooner.\n")
        :format(kept))
    end
  end,
}
