-- One fetch or download from the sshd given in the parameters; test_fetch_hostile.py
-- serves crafted tar streams through a fake `tar` on the server's PATH.
local ephrun = require "ephrun"
return ephrun.recipe {
  name = "fetch-one",
  params = {
    port = { required = true }, user = { required = true }, key_file = { required = true },
    host_key = { required = true }, remote = { required = true }, dest = { required = true },
    op = { default = "fetch", doc = "fetch | download" },
  },
  run = function(p)
    local s <close> = ephrun.ssh.connect { host = "127.0.0.1", port = tonumber(p.port), user = p.user,
      key_file = p.key_file, host_key = p.host_key }
    if p.op == "download" then
      s:download(p.remote, p.dest)
      print("DOWNLOADED")
    else
      local st = s:fetch(p.remote, p.dest)
      print(("FETCHED files=%d bytes=%d"):format(st.files, st.bytes))
    end
  end,
}
