-- `ephrun reap [--dry-run] [--older-than 2h] [--yes] [kept=true]`: destroys what is
-- expired or orphaned, found through the journal and through provider tags.
--
-- A journalled resource is reaped when it expired, or when its run is over:
-- the run ended without destroying it, or its process is gone (killed by
-- SIGKILL: the run row holds its pid, process start time and boot id). An
-- instance found only by its tags is reaped when its run is in this journal
-- and over, or when its `ephrun-expires` tag has passed — never merely because
-- an unknown run made it (another machine may own it). A kept instance
-- (keep=true) stays until it expires, unless `kept=true` asks for kept ones too.
--
-- The journal is only read here (a read-only connection); a journal that cannot
-- be read (damaged, unreadable) does not stop the scan of provider tags, and
-- what could not be read or recorded is said at the end.
local ephrun = require "ephrun"
local common = require "ephrun.cmd.common"
local cloudlib = require "ephrun.cloud"
local core = require "ephrun._core"

-- After a pcall: a Ctrl-C (or SIGTERM, SIGHUP) stops the reap instead of being
-- taken for one provider's failure and going on to destroy things.
local function unless_interrupted(ok, ...)
  if not ok and core.signal() ~= 0 then error((...), 0) end
  return ok, ...
end

local function sorted_keys(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = k end
  table.sort(out)
  return out
end

-- `--expired` (what the reaper runs): only what is past its lifetime, so an
-- orphan with time left, or another machine's instance, is never touched early.
local function only_expired(candidates, stale, now)
  local kept, old = {}, {}
  for _, c in ipairs(candidates) do
    if c.why == "expired" then kept[#kept + 1] = c end
  end
  for _, r in ipairs(stale) do
    if r.expires_at and r.expires_at < now then old[#old + 1] = r end
  end
  return kept, old
end

-- A run's security group or key pair stays while an instance of that run stays
-- (a detached or kept one, or one not reaped now): EC2 refuses the delete until
-- the instance is gone, and the destroy would retry for minutes.
local function without_groups_in_use(candidates, running)
  local staying = {}
  for _, k in ipairs(running) do staying[k] = (staying[k] or 0) + 1 end
  for _, c in ipairs(candidates) do
    local k = c.provider .. "\0" .. tostring(c.run_id)
    if ((c.inst or {}).kind or "instance") == "instance" and staying[k] then staying[k] = staying[k] - 1 end
  end
  local out = {}
  for _, c in ipairs(candidates) do
    local k = c.provider .. "\0" .. tostring(c.run_id)
    if ((c.inst or {}).kind or "instance") == "instance" or (staying[k] or 0) <= 0 then out[#out + 1] = c end
  end
  return out
end

-- What a provider's destroy needs, rebuilt from the journal row.
local function instance_of(r)
  local inst = {}
  if type(r.extra) == "table" then
    for k, v in pairs(r.extra) do inst[k] = v end
  end
  inst.id = r.id or inst.id
  inst.tags = inst.tags or r.tags
  return inst
end

-- The journal as far as it can be read: every row, the live ones, and a run
-- lookup; `problems` collects what failed instead of stopping the reap.
local function read_journal(problems)
  local journal = ephrun.journal
  local ok, all = pcall(journal.resources, {})
  local live
  if ok then ok, live = pcall(journal.resources, { live = true }) end
  if not ok then
    problems[#problems + 1] = ("cannot read the journal %s (%s): only provider tags were used, so "
      .. "orphans known only to the journal were not found; move the file aside if it is damaged")
      :format(journal.path(), tostring(all or live):gsub("^[^\n]-:%d+: ", ""))
    return { all = {}, live = {}, readable = false, run = function() return nil end }
  end
  local runs = {}
  local function run(id)
    if runs[id] == nil then
      local rok, r = pcall(journal.run, id)
      runs[id] = rok and r or false
    end
    return runs[id] or nil
  end
  return { all = all, live = live, readable = true, run = run }
end

-- A journal write that may fail (read-only or damaged file): the destroy it
-- records already happened, so a failure is reported, not raised.
local function record(problems, what, fn, ...)
  if ephrun.dry_run() then return end
  local ok, err = pcall(fn, ...)
  if not ok then
    problems[#problems + 1] = ("could not record in the journal that %s: %s"):format(what,
      tostring(err):gsub("^[^\n]-:%d+: ", ""))
  end
end

-- Lists a provider's instances, saying what it waits for: an API that does
-- not answer can keep the list retrying for a minute. `regions`: where the
-- journal says the provider made something, plus `regions=` (a provider
-- scans them besides its own region; those without regions ignore them).
local function list_instances(name, cloud, regions)
  ephrun.log.info("reap: asking %s for its instances (looking for ephrun tags)…", name)
  local started = ephrun.time.monotonic()
  local ticker = ephrun.spawn("reap", function()
    local every = 5
    while true do
      ephrun.time.sleep(every)
      every = 10
      ephrun.log.info("still waiting for %s's instance list (%ds; its API may be unreachable or "
        .. "rate-limiting, and is retried; Ctrl-C stops)", name, math.floor(ephrun.time.monotonic() - started))
    end
  end)
  local ok, list = pcall(cloud.impl.list, { tags = {}, regions = regions }, cloud.opts)
  ticker:cancel("listed")
  return unless_interrupted(ok, list)
end

-- Why an instance found by its tags may be reaped, or nil.
local function tag_reason(p, inst, row, jr, now)
  local tags = inst.tags or {}
  local expires = common.parse_iso8601(tags["ephrun-expires"])
  if expires and expires < now then return "expired" end
  if row and (row.status == "destroyed" or row.status == "failed") then
    return "orphaned" -- the journal says it is gone, yet it is there
  end
  if tags["ephrun-keep"] == "true" or (row and row.status == "kept") then
    return p.kept and "kept" or nil
  end
  if not row then
    local run = jr.run(tags["ephrun-run"])
    if run and not run.alive then return "orphaned" end
  end
  return nil
end

-- Removes the key directories (runs/<id>/) of runs that are over and have
-- nothing of theirs left alive.
local function remove_run_keys(run_ids, jr, problems)
  if not jr.readable then return end
  local ok, live = pcall(ephrun.journal.resources, { live = true })
  if not ok then return end
  local busy = {}
  for _, r in ipairs(live) do busy[r.run_id] = true end
  for _, id in ipairs(sorted_keys(run_ids)) do
    local run = jr.run(id)
    local dir = cloudlib.state_dir() .. "/runs/" .. id
    if not busy[id] and not (run and run.alive) and ephrun.fs.exists(dir) then
      if ephrun.dry_run() then
        io.stdout:write(("would remove run %s's keys in %s\n"):format(id, dir))
      else
        local rok, err = ephrun.fs.remove(dir, { recursive = true })
        if rok then
          io.stdout:write(("removed run %s's keys in %s\n"):format(id, dir))
        else
          problems[#problems + 1] = ("could not remove %s: %s"):format(dir, tostring(err))
        end
      end
    end
  end
end

return ephrun.recipe {
  name = "reap",
  summary = "Destroy expired and orphaned resources, found through the journal and provider tags.",
  params = {
    older_than = { type = "duration", doc = "only resources at least this old (e.g. 2h)" },
    expired = { default = false, doc = "only resources past their lifetime (--expired; what the reaper runs)" },
    providers = { type = "list", default = {}, doc = "providers to scan by tag besides those in the journal and local" },
    regions = { type = "list", default = {}, doc = "regions to scan besides each provider's own and those in the journal "
      .. "(AWS: a run killed before its instance was recorded left its key pair and security group there)" },
    kept = { default = false, doc = "also destroy kept instances (keep=true) that have not expired yet" },
  },
  run = function(p)
    local now = ephrun.time.now()
    local problems = {}
    local jr = read_journal(problems)
    local candidates = {} -- { provider, inst, why, rows = {journal rows}, age }
    local by_id = {}      -- provider .. "\0" .. id -> journal row (every status)
    local providers = { ["local"] = true }
    for _, name in ipairs(p.providers) do providers[name] = true end

    local regions = {} -- provider -> regions its journal rows name, then `regions=`
    for _, r in ipairs(jr.all) do
      providers[r.provider] = true
      if r.id then by_id[r.provider .. "\0" .. r.id] = r end
      local region = type(r.extra) == "table" and r.extra.region
      if type(region) == "string" and region ~= "" then
        regions[r.provider] = regions[r.provider] or {}
        regions[r.provider][region] = true
      end
    end
    local function regions_of(name)
      local set = regions[name] or {}
      for _, region in ipairs(p.regions) do set[region] = true end
      return sorted_keys(set)
    end

    -- 1. The journal: pending or live resources whose run is over or that expired.
    local pending_dead = {} -- provider .. "\0" .. run_id -> rows still waiting for their id
    for _, r in ipairs(jr.live) do
      local why = common.reason(r, now, { kept = p.kept })
      if why and r.id then
        candidates[#candidates + 1] = { provider = r.provider, id = r.id, inst = instance_of(r), why = why,
          rows = { r }, age = now - common.born(r), run_id = r.run_id, recipe = r.recipe }
      elseif why and (r.run_status ~= "running" or not r.run_alive) then
        -- an intent whose run is over: the create may or may not have happened
        local k = r.provider .. "\0" .. r.run_id
        pending_dead[k] = pending_dead[k] or {}
        table.insert(pending_dead[k], r)
      end
    end
    local seen = {}
    for _, c in ipairs(candidates) do seen[c.provider .. "\0" .. c.id] = true end

    -- 2. Provider tags: every instance ephrun made, journalled or not.
    local clouds = {}
    local running = {} -- provider .. "\0" .. run id, once per live instance listed
    for _, name in ipairs(sorted_keys(providers)) do
      local ok, cloud = pcall(ephrun.provider, name)
      if not ok then
        ephrun.log.warn("reap: cannot load provider '%s' to scan its tags: %s", name, tostring(cloud))
      elseif type(cloud.impl.list) ~= "function" then
        ephrun.log.warn("reap: provider '%s' cannot list instances; only the journal is used", name)
      else
        clouds[name] = cloud
        local lok, list = list_instances(name, cloud, regions_of(name))
        if not lok then
          problems[#problems + 1] = ("listing %s instances failed: %s"):format(name, tostring(list))
          list = {}
        end
        for _, inst in ipairs(list) do
          local tags = inst.tags or {}
          local run_id = tags["ephrun-run"]
          local key = name .. "\0" .. tostring(inst.id)
          if (inst.kind or "instance") == "instance" and run_id and inst.state ~= "terminated" then
            running[#running + 1] = name .. "\0" .. run_id
          end
          if run_id and inst.state ~= "terminated" and not seen[key] then
            local row = by_id[key]
            local why = tag_reason(p, inst, row, jr, now)
            if why then
              seen[key] = true
              local rows = {}
              if row then rows[1] = row end
              for _, pr in ipairs(pending_dead[name .. "\0" .. run_id] or {}) do rows[#rows + 1] = pr end
              pending_dead[name .. "\0" .. run_id] = nil
              local born = type(inst.created) == "number" and inst.created or (row and common.born(row))
              candidates[#candidates + 1] = { provider = name, id = tostring(inst.id), inst = inst, why = why,
                rows = rows, age = born and (now - born) or nil, run_id = run_id,
                recipe = tags["ephrun-recipe"] or (row and row.recipe) or ((jr.run(run_id) or {}).recipe) or "?",
                by_tag = not row }
            end
          end
        end
      end
    end

    -- 3. --older-than keeps only what is at least that old.
    if p.older_than then
      local kept = {}
      for _, c in ipairs(candidates) do
        if c.age and c.age >= p.older_than then kept[#kept + 1] = c end
      end
      candidates = kept
    end

    -- Intents whose create never completed and for which no tagged instance exists.
    local stale = {}
    for _, rows in pairs(pending_dead) do
      for _, r in ipairs(rows) do
        if not p.older_than or now - common.born(r) >= p.older_than then stale[#stale + 1] = r end
      end
    end

    if p.expired then candidates, stale = only_expired(candidates, stale, now) end
    candidates = without_groups_in_use(candidates, running)

    if #candidates == 0 then
      io.stdout:write("Nothing to reap.\n")
    else
      local cells = {}
      for _, c in ipairs(candidates) do
        cells[#cells + 1] = { c.provider, c.id, c.run_id or "?", c.recipe or "?", c.why,
          common.short_duration(c.age), c.by_tag and "tags" or "journal" }
      end
      io.stdout:write(ephrun.dry_run() and "Would destroy:\n" or "To destroy:\n")
      common.table({ "PROVIDER", "ID", "RUN", "RECIPE", "WHY", "AGE", "FOUND BY" }, cells)
      local asked, yes = pcall(ephrun.confirm,
        ("Destroy %d resource%s?"):format(#candidates, #candidates == 1 and "" or "s"))
      if not asked then error((tostring(yes):gsub("^[^\n]-:%d+: ", "")), 0) end
      if not yes then
        io.stdout:write("Nothing destroyed.\n")
        return
      end
    end

    local failures = {}
    local reaped_runs = {}
    for _, c in ipairs(candidates) do
      local cloud = clouds[c.provider]
      local ok, err = true, nil
      if not cloud then
        local lok, loaded = pcall(ephrun.provider, c.provider)
        if lok then cloud = loaded else ok, err = false, loaded end
      end
      if ok then
        ok, err = unless_interrupted(pcall(ephrun.effect, {
          kind = "destroy", what = ("%s %s %s (%s, run %s)"):format(c.provider, (c.inst or {}).kind or "instance",
            c.id, c.why, c.run_id),
          where = c.provider,
          -- retries a locked or rate-limited instance, as the run's own cleanup would
          run = function() cloud:destroy(c.inst) end,
        }))
      end
      if ok then
        for _, r in ipairs(c.rows) do
          record(problems, ("%s %s is destroyed"):format(c.provider, c.id), ephrun.journal.destroyed, r.key)
        end
        if c.run_id then reaped_runs[c.run_id] = true end
        if not ephrun.dry_run() then
          io.stdout:write(("destroyed %s %s (%s)\n"):format(c.provider, c.id, c.why))
          ephrun.notify.send("terminated", { recipe = c.recipe, run_id = c.run_id, provider = c.provider, id = c.id,
            detail = ("%s %s destroyed by `ephrun reap` (%s)"):format(c.provider, c.id, c.why) })
        end
      else
        local hinted, hint = false, nil
        if cloud and cloud.impl.destroy_hint then hinted, hint = pcall(cloud.impl.destroy_hint, c.inst, cloud.opts) end
        failures[#failures + 1] = ("%s %s: %s%s"):format(c.provider, c.id, tostring(err),
          hinted and hint and ("\n    remove it by hand: " .. hint) or "")
      end
    end
    for _, r in ipairs(stale) do
      reaped_runs[r.run_id] = true
      if ephrun.dry_run() then
        io.stdout:write(("would mark journal entry %d (%s, run %s) failed: its create never completed\n")
          :format(r.key, r.provider, r.run_id))
      else
        record(problems, ("journal entry %d never completed its create"):format(r.key), ephrun.journal.failed,
          r.key, "reap: the create never completed and no instance carries its run's tags")
        io.stdout:write(("marked journal entry %d (%s, run %s) failed: its create never completed\n")
          :format(r.key, r.provider, r.run_id))
      end
    end
    remove_run_keys(reaped_runs, jr, problems)

    for _, msg in ipairs(problems) do ephrun.log.warn("reap: %s", msg) end
    if #failures > 0 then
      error(("%d destroy%s failed:\n  %s"):format(#failures, #failures == 1 and "" or "s",
        table.concat(failures, "\n  ")), 0)
    end
    if #problems > 0 then
      error(("reap did what the provider tags allowed, but %d thing%s could not be read or recorded (see the "
        .. "warnings above)"):format(#problems, #problems == 1 and "" or "s"), 0)
    end
  end,
}
