-- Every kind of side effect, for the dry-run test: under --dry-run none may happen.
local ephrun = require "ephrun"
return ephrun.recipe {
  name = "effects",
  params = { url = { required = true }, marker = { type = "path", required = true } },
  run = function(p)
    local token = ephrun.secret("EFFECTS_TOKEN")
    local got = ephrun.http.request { url = p.url .. "/price", method = "GET" }
    ephrun.log.info("price lookup answered %d", got.status)
    ephrun.http.request { url = p.url .. "/head", method = "HEAD" }
    ephrun.http.request { url = p.url .. "/create?token=" .. token, method = "POST", body = "{}",
      headers = { Authorization = "Bearer " .. token } }
    ephrun.http.request { url = p.url .. "/thing/1", method = "PUT", body = "x" }
    ephrun.http.request { url = p.url .. "/thing/1", method = "DELETE" }
    ephrun.proc.run { "touch", p.marker .. ".proc" }
    ephrun.proc.run({ "sh", "-c", "echo hi > " .. p.marker .. ".shell" })
    ephrun.fs.write(p.marker .. ".fs", "data")
    ephrun.effect { kind = "launch", what = "a machine with token " .. token, cost = 1.25,
      run = function() error("must not run under --dry-run") end, placeholder = { id = "x" } }
    ephrun.defer(function()
      ephrun.http.request { url = p.url .. "/cleanup", method = "DELETE" }
    end, "delete the thing")
  end,
}
