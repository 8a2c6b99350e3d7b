-- Streams a child's 10 MB of log lines through ephrun's logging with 20 secrets
-- registered (driven by bench/redact.py, which times it with each binary).
local ephrun = require "ephrun"
return ephrun.recipe {
  name = "redact-bench",
  params = { child = { default = "" }, every = { default = "0", doc = "one line in N carries escape bytes (0: none)" } },
  run = function(p)
    local env = {}
    for i = 0, 19 do
      local name = "BENCH_SECRET_" .. i
      env[name] = ephrun.secret(name)
    end
    ephrun.proc.run({ "python3", p.child, p.every }, { env = env, capture = false })
  end,
}
