-- `ephrun status [RUN] [providers=aws] [lines=10] [--json]`: a detached run's
-- instance (state, age, cost so far, TTL left), its job (running / exited N /
-- done / interrupted) and its last log lines. Without RUN: every detached run
-- the journal holds. A run this journal does not know is looked for through
-- provider tags (from another machine): then only what the provider knows is
-- shown, and what is missing is said with how to get it.
local ephrun = require "ephrun"
local detach = require "ephrun.detach"

-- Runs fn while what the recipe prints goes to stderr: stdout carries only the report
-- (the JSON of --json).
local function with_stdout_on_stderr(fn, ...)
  local out, pr = io.stdout, print
  io.stdout = io.stderr -- luacheck: ignore 122
  print = function(...) -- luacheck: ignore 121
    local parts = table.pack(...)
    for i = 1, parts.n do parts[i] = tostring(parts[i]) end
    io.stderr:write(table.concat(parts, "\t", 1, parts.n), "\n")
  end
  local ok, res = pcall(fn, ...)
  io.stdout, print = out, pr -- luacheck: ignore 121 122
  if not ok then error(res, 0) end
  return res
end

return ephrun.recipe {
  name = "status",
  summary = "A detached run's instance, state, age, cost so far, TTL left, job state and last log lines.",
  usage = "[RUN] [providers=aws] [lines=10] [--json]",
  params = {
    words = { default = "", doc = "the run id, then name=value options: providers=aws,vultr (to look by tag "
      .. "from another machine), lines=N (log lines, default 10)" },
  },
  run = function(p)
    local id, opts = detach.words(p.words)
    local ids = id and { id } or detach.live_ids()
    local reports = {}
    for _, rid in ipairs(ids) do
      local r, rec, inst, ps = detach.report(rid, opts)
      -- Found gone with the spot reason: the recipe's on_interrupt relaunches it.
      if r.status == "interrupted" and ps and ps.state == "terminated" and rec and rec.row
        and rec.row.status == "detached" and opts.relaunch ~= "false" then
        if with_stdout_on_stderr(detach.interrupted, rec, inst, ps) then r = detach.report(rid, opts) end
      end
      reports[#reports + 1] = r
    end
    if ephrun.options().json then
      local list = ephrun.json.array()
      for i, r in ipairs(reports) do list[i] = r end
      io.stdout:write(ephrun.json.encode(id and reports[1] or { runs = list }, { pretty = true }), "\n")
      return
    end
    if #reports == 0 then
      io.stdout:write("No detached runs in the journal (", ephrun.journal.path(), ").\n")
      return
    end
    for _, r in ipairs(reports) do detach.show(r) end
  end,
}

