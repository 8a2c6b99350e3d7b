-- `ephrun attach RUN`: follows a detached run's job log until the job ends.
-- Ctrl-C only detaches again: the job runs in its own session on the
-- instance and is never signalled. A spot notice seen while following runs
-- the recipe's on_interrupt (relaunch and resume), then follows the new job.
local ephrun = require "ephrun"
local detach = require "ephrun.detach"
local q = ephrun.shell_quote

-- Streams the log until the job's process ends or the spot poller marks it
-- interrupted (then `tail` is ended, never the job).
local function follow(sh, info, lines)
  local job = info.job
  local pid = math.tointeger(job.pid)
  local mark = q(job.log .. ".interrupted")
  local script = ("tail -n %d -F -- %s 2>/dev/null & t=$!\n"
    .. "while kill -0 %d 2>/dev/null && ! ps -o stat= -p %d 2>/dev/null | grep -q '^Z' && [ ! -f %s ]; do "
    .. "sleep 1; done\nsleep 1; kill $t 2>/dev/null; wait $t 2>/dev/null; true"):format(lines, q(job.log), pid, pid,
    mark)
  sh:run(script, { stdout = true, check = false })
end

return ephrun.recipe {
  name = "attach",
  summary = "Follow a detached run's job log (Ctrl-C detaches again; the job keeps running).",
  usage = "RUN [lines=20]",
  params = {
    words = { default = "", doc = "the run id, then lines=N (log lines shown first, default 20)" },
  },
  run = function(p)
    local id, opts = detach.words(p.words)
    if not id then error("ephrun attach RUN: give the run id (ephrun status lists detached runs)", 0) end
    local following -- set while the log is followed
    local said = false
    while true do
      local r, rec, inst, ps = detach.report(id, { lines = 0 })
      if r.status == "interrupted" and rec and rec.row and rec.row.status == "detached" then
        if not detach.interrupted(rec, inst, ps) then break end
      elseif r.status ~= "running" then
        following = false
        detach.show(r)
        if r.status ~= "finished" and r.status ~= "forced" then
          io.stdout:write(("the job is over: ephrun finish %s ends the run\n"):format(id))
        end
        return
      else
        io.stderr:write(("ephrun: following run %s's job on %s instance %s (log %s); Ctrl-C detaches, the job "
          .. "keeps running\n"):format(id, r.provider, r.instance, r.log))
        following = true
        if not said then
          said = true
          -- Ctrl-C ends this process only: say so, and how to come back.
          ephrun.defer(function()
            if following then
              io.stderr:write(("ephrun: detached from run %s; its job keeps running. Come back: ephrun attach %s   "
                .. "End it: ephrun finish %s\n"):format(id, id, id))
            end
          end, "say how to come back to run " .. id)
        end
        local sh <close> = detach.session(inst)
        follow(sh, rec.info, math.tointeger(tonumber(opts.lines) or 20))
      end
    end
    following = false
  end,
}
