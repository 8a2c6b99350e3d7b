--- bench/sync.lua: one timed ephrun.ssh sync (driven by bench/ssh.py).
--- Connects (pinning the host key through a known_hosts file), syncs src to dest,
--- and prints one line `BENCH {json}` with the in-process timings.
local ephrun = require "ephrun"

return ephrun.recipe {
  name = "bench-sync",
  summary = "Connect to an sshd and sync a directory once; print timings as JSON.",
  params = {
    host = { default = "127.0.0.1" },
    port = { type = "number", required = true },
    user = { default = "ephrun-test" },
    key_file = { type = "path", required = true },
    known_hosts = { type = "path", required = true },
    src = { type = "path", required = true },
    dest = { required = true, doc = "remote directory" },
    delete = { default = false },
  },
  run = function(p)
    local t = ephrun.time
    local t0 = t.monotonic()
    local s <close> = ephrun.ssh.connect {
      host = p.host, port = p.port, user = p.user, key_file = p.key_file,
      known_hosts = p.known_hosts,
    }
    local t1 = t.monotonic()
    local r = s:sync(p.src, p.dest, { delete = p.delete, gitignore = false })
    local t2 = t.monotonic()
    print("BENCH " .. ephrun.json.encode {
      connect = t1 - t0, sync = t2 - t1, total = t2 - t0,
      files_total = r.files_total, bytes_total = r.bytes_total,
      files_sent = r.files_sent, bytes_sent = r.bytes_sent,
    })
  end,
}
