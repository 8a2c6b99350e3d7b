--- bench/first_command.lua: connect and run `true` once (driven by bench/ssh.py);
--- prints `BENCH {json}` with the in-process connect and command times.
local ephrun = require "ephrun"

return ephrun.recipe {
  name = "bench-first-command",
  summary = "Connect to an sshd and run `true`; print timings as JSON.",
  params = {
    host = { default = "127.0.0.1" },
    port = { type = "number", required = true },
    user = { default = "ephrun-test" },
    key_file = { type = "path", required = true },
    known_hosts = { type = "path", required = true },
  },
  run = function(p)
    local t = ephrun.time
    local t0 = t.monotonic()
    local s <close> = ephrun.ssh.connect {
      host = p.host, port = p.port, user = p.user, key_file = p.key_file,
      known_hosts = p.known_hosts,
    }
    local t1 = t.monotonic()
    local code = s:run("true").code
    local t2 = t.monotonic()
    print("BENCH " .. ephrun.json.encode { connect = t1 - t0, command = t2 - t1, total = t2 - t0, code = code })
  end,
}
