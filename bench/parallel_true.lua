--- bench/parallel_true.lua: `true` on many sshd instances at once through
--- ephrun.parallel (driven by bench/ssh.py). Each host key is pinned through one
--- known_hosts file holding all instances. Prints `BENCH {json}`.
local ephrun = require "ephrun"

return ephrun.recipe {
  name = "bench-parallel-true",
  summary = "Connect to every port and run `true`, all at once; print timings as JSON.",
  params = {
    host = { default = "127.0.0.1" },
    ports = { type = "list", required = true },
    user = { default = "ephrun-test" },
    key_file = { type = "path", required = true },
    known_hosts = { type = "path", required = true },
    limit = { type = "number", default = 16 },
  },
  run = function(p)
    local t = ephrun.time
    local t0 = t.monotonic()
    local codes = ephrun.parallel(p.ports, function(port)
      local s <close> = ephrun.ssh.connect {
        host = p.host, port = tonumber(port), user = p.user, key_file = p.key_file,
        known_hosts = p.known_hosts,
      }
      return s:run("true").code
    end, { limit = p.limit })
    local ok = 0
    for _, c in ipairs(codes) do if c == 0 then ok = ok + 1 end end
    print("BENCH " .. ephrun.json.encode { total = t.monotonic() - t0, ok = ok, n = #codes })
  end,
}
