-- `ephrun history [--json]`: past runs from the journal, newest first.
local ephrun = require "ephrun"
local common = require "ephrun.cmd.common"

return ephrun.recipe {
  name = "history",
  summary = "List past runs: id, recipe, start, duration, status.",
  params = {
    limit = { default = 20, min = 0, doc = "how many runs to show (0 for all)" },
  },
  run = function(p)
    local now = ephrun.time.now()
    local runs = ephrun.journal.runs { limit = math.floor(p.limit) }
    for _, r in ipairs(runs) do
      r.duration = (r.ended or now) - r.started
      -- A run still marked running whose process is gone was killed (SIGKILL, crash, power).
      if r.status == "running" and not r.alive then r.status = "died" end
      -- What a recipe recorded about its outcome (metal-ova-build: cost, the S3 keys).
      local text = ephrun.fs.read(ephrun.cloud.state_dir() .. "/history/" .. r.id .. ".json")
      local ok, result = pcall(ephrun.json.decode, text or "")
      if text and ok and type(result) == "table" then r.result = result end
    end
    if ephrun.options().json then
      local list = ephrun.json.array()
      for i, r in ipairs(runs) do list[i] = r end
      io.stdout:write(ephrun.json.encode({ runs = list }, { pretty = true }), "\n")
      return
    end
    if #runs == 0 then
      io.stdout:write("No runs recorded (journal: ", ephrun.journal.path(), ").\n")
      return
    end
    local cells = {}
    for _, r in ipairs(runs) do
      local res = r.result
      local keys = res and type(res.keys) == "table" and res.keys or {}
      local outcome = res and ("  $%.4f%s"):format(tonumber(res.cost) or 0, keys[1] and (" " .. tostring(keys[1])
        .. (#keys > 1 and (" +" .. (#keys - 1)) or "")) or "") or ""
      cells[#cells + 1] = { r.id, r.recipe, common.local_time(r.started), common.short_duration(r.duration),
        r.status .. (r.detail and (" (" .. r.detail .. ")") or "") .. outcome }
    end
    common.table({ "RUN", "RECIPE", "STARTED", "DURATION", "STATUS" }, cells)
  end,
}
