--- sync-to-server: make a directory on a permanent server (the static
--- provider) hold a local directory. Only new or changed files are sent
--- (`session:sync`); `.env*`, `*.pem`, `id_*` and `.git` never leave (in any
--- case: `ephrun.ssh.never_send()`), nor
--- whatever `exclude` names. Nothing is installed or restarted.
local ephrun = require "ephrun"

-- The local directory is checked before the server is reached, in a dry-run too.
local function local_dir(p, name)
  local st = ephrun.fs.stat(p[name], { follow = true })
  if not st or st.type ~= "dir" then
    error(("%s=%s: %s; run from the directory to sync (the default is the current one) or pass %s=DIR")
      :format(name, p[name], st and "not a directory" or "no such directory", name), 0)
  end
end

return ephrun.recipe {
  name = "sync-to-server",
  summary = "Sync a local directory to a permanent server (only what changed; no secrets).",
  params = {
    host = { type = "string", required = true, doc = "the server's address" },
    port = { type = "number", default = 22, doc = "its SSH port" },
    user = { default = "root", doc = "login user" },
    key_file = { default = "", doc = "private key to log in with (default ~/.ssh/id_ed25519, else the ssh-agent)" },
    known_hosts = { default = "~/.ssh/known_hosts", doc = "the server's host key must be in this file" },
    src = { type = "path", default = ".", doc = "local directory" },
    dir = { type = "string", required = true, doc = "directory on the server (absolute, or relative to the login home)" },
    exclude = { type = "list", default = { "node_modules" },
      doc = "more patterns not sent (.env*, *.pem, id_*, .git never are, in any case)" },
    delete = { default = false, doc = "remove files on the server that are gone locally (excluded ones are kept)" },
  },
  run = function(p)
    ephrun.phase("check")
    local_dir(p, "src")
    local srv = ephrun.provider("static", {
      host = p.host, port = p.port, user = p.user, key_file = p.key_file, known_hosts = p.known_hosts,
    })
    local box <close> = srv:attach()
    local sh <close> = box:ssh()
    ephrun.phase("sync")
    local st = sh:sync(p.src, p.dir, { exclude = p.exclude, delete = p.delete })
    ephrun.effect { kind = "report", what = "print what was sent", run = function()
      io.stdout:write(("\nsync-to-server: %s → %s:%s: %d of %d files sent (%s), %d deleted, %d excluded, %.2fs\n")
        :format(p.src, box.id, p.dir, st.files_sent, st.files_total, ephrun.ssh.human_bytes(st.bytes_sent),
          st.deleted, st.excluded or 0, st.duration))
    end }
  end,
}
