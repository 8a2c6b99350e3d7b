-- `ephrun pack add SOURCE [--ref REF] [--as NAME] | ls | update [NAME] | remove NAME | verify`:
-- recipe packs pinned by ephrun.lock (see stdlib/ephrun/packs.lua, docs/packs.md).
local ephrun = require "ephrun"
local packs = require "ephrun.packs"
local common = require "ephrun.cmd.common"

local function fail(msg)
  error(msg, 0)
end

local function short(commit)
  return commit:sub(1, 12)
end

local function json_out(v)
  io.stdout:write(ephrun.json.encode(v, { pretty = true }), "\n")
end

local actions = {}

--- `pack add SOURCE [--ref REF] [--as NAME]`: locks a new pack and checks it out.
function actions.add(p)
  if p.target == "" then fail("pack add needs a SOURCE: `ephrun pack add PATH-OR-GIT-URL [--ref REF] [--as NAME]`") end
  local name, e = packs.add(p.target, { ref = p.ref ~= "" and p.ref or nil, as = p.as ~= "" and p.as or nil })
  if ephrun.options().json then return json_out { name = name, commit = e.commit, sha256 = e.sha256 } end
  io.stdout:write(("Added pack %s%s at %s (sha256 %s) to %s\n"):format(name, e.version and (" " .. e.version) or "",
    short(e.commit),
    e.sha256:sub(1, 16), packs.lock_path()))
end

--- `pack ls`: the locked packs and their pins.
function actions.ls()
  local lock = packs.read_lock()
  local names = {}
  for n in pairs(lock.packs) do names[#names + 1] = n end
  table.sort(names)
  if ephrun.options().json then
    local list = ephrun.json.array()
    for i, n in ipairs(names) do
      local e = lock.packs[n]
      list[i] = { name = n, version = e.version, source = e.source, ref = e.ref, commit = e.commit, sha256 = e.sha256,
        summary = e.summary }
    end
    return json_out { packs = list }
  end
  if #names == 0 then
    io.stdout:write("No packs in ", packs.lock_path(), " (`ephrun pack add SOURCE` adds one).\n")
    return
  end
  local rows = {}
  for _, n in ipairs(names) do
    local e = lock.packs[n]
    rows[#rows + 1] = { n, e.version or "", short(e.commit), e.source, e.summary or "" }
  end
  common.table({ "PACK", "VERSION", "COMMIT", "SOURCE", "SUMMARY" }, rows)
end

--- `pack update [NAME] [--ref REF]`: the only way to move a pin.
function actions.update(p)
  local moved = packs.update(p.target ~= "" and p.target or nil, p.ref ~= "" and p.ref or nil)
  if ephrun.options().json then return json_out { updated = moved } end
  local names = {}
  for n in pairs(moved) do names[#names + 1] = n end
  table.sort(names)
  for _, n in ipairs(names) do
    local old, new = moved[n][1], moved[n][2]
    io.stdout:write(old == new and ("%s: %s, already the newest\n"):format(n, short(new))
      or ("%s: %s -> %s\n"):format(n, short(old), short(new)))
  end
  if #names == 0 then io.stdout:write("No packs in ", packs.lock_path(), ".\n") end
end

--- `pack remove NAME`: drops the pack from the lock and deletes its checkouts.
function actions.remove(p)
  if p.target == "" then fail("pack remove needs a NAME: `ephrun pack remove NAME` (see `ephrun pack ls`)") end
  packs.remove(p.target)
  if ephrun.options().json then return json_out { removed = p.target } end
  io.stdout:write("Removed pack ", p.target, " from ", packs.lock_path(), "\n")
end

--- `pack verify`: checks (and fetches, if missing) every locked checkout against the lock.
function actions.verify()
  local rows = packs.verify()
  local bad = 0
  for _, r in ipairs(rows) do if not r.ok then bad = bad + 1 end end
  if ephrun.options().json then
    local list = ephrun.json.array()
    for i, r in ipairs(rows) do list[i] = { name = r.name, ok = r.ok, message = r.message } end
    json_out { ok = bad == 0, packs = list }
  else
    for _, r in ipairs(rows) do
      io.stdout:write(r.ok and ("%s: ok (%s)\n"):format(r.name, short(r.entry.commit)) or (r.message .. "\n"))
    end
    if #rows == 0 then io.stdout:write("No packs in ", packs.lock_path(), ".\n") end
  end
  if bad > 0 then fail(("%d pack%s failed verification"):format(bad, bad == 1 and "" or "s")) end
end

return ephrun.recipe {
  name = "pack",
  summary = "Recipe packs pinned by ephrun.lock: add, ls, update, remove, verify.",
  params = {
    action = { default = "ls", choices = { "add", "ls", "update", "remove", "verify" },
      doc = "ephrun pack add SOURCE | ls | update [NAME] | remove NAME | verify" },
    target = { default = "", doc = "SOURCE for add (a directory or a git URL), NAME for update and remove" },
    ref = { default = "", doc = "with add or update: the branch, tag or commit to pin (--ref)" },
    as = { default = "", doc = "with add: the name to lock the pack under (--as); default its pack.lua name" },
  },
  run = function(p)
    -- add and update must fetch SOURCE to check it, which a dry run may not do;
    -- what they change (ephrun.lock) is plain text to review with `git diff`.
    if ephrun.dry_run() and (p.action == "add" or p.action == "update" or p.action == "remove") then
      fail(("`ephrun pack %s` has no --dry-run: it changes only %s and the packs directory; run it, then review "
        .. "the change with `git diff %s`"):format(p.action, packs.lock_path(), packs.lock_path()))
    end
    if p.ref ~= "" and p.action ~= "add" and p.action ~= "update" then
      fail("--ref only applies to `ephrun pack add` and `ephrun pack update`")
    end
    if p.as ~= "" and p.action ~= "add" then fail("--as only applies to `ephrun pack add`") end
    actions[p.action](p)
  end,
}
