--- deploy-to-server: deploy an app to a permanent server (the static
--- provider). A tarball of `src` (without node_modules and secrets) is
--- uploaded and extracted into a fresh release directory next to `dir`; files
--- that live only on the server (`preserve`, e.g. its .env) are copied over,
--- the install command runs there, and only then is it swapped in place of
--- `dir` (the old one stays as `<dir>.previous`). Then the service restarts
--- and `health_url` must answer 2xx before the deadline. A failure before the
--- swap leaves the running service untouched; the uploaded tarball is always
--- removed. Commands printed for doing things by hand (the rollback, removing
--- leftovers) use the key and known_hosts this run used.
local ephrun = require "ephrun"

-- Never in the tarball, whatever `exclude` says: what `session:sync` never sends
-- (matched ignoring case there, and here through tar's --ignore-case).
local ALWAYS_EXCLUDED = ephrun.ssh.never_send()

local q = ephrun.shell_quote

-- Runs a multi-line script; the plan shows `what` with the script as details
-- (instead of the script as one long command).
local function remote(sh, what, script, opts)
  local lines = {}
  for l in script:gmatch("[^\n]+") do lines[#lines + 1] = l end
  return ephrun.effect { kind = "run", what = what, where = sh.host, details = lines,
    run = function() return sh:run(script, opts) end }
end

-- Quotes only what needs it, so a printed command stays readable.
local function shq(s)
  if tostring(s):match("^[%w%._/%-:@]+$") then return tostring(s) end
  return q(s)
end

-- `ssh` as this run logged in: its key, its known_hosts and nothing else, so a
-- command printed for later reaches the same server the same way.
local function ssh_cmd(box, remote_cmd)
  local raw = box.raw
  local parts = { "ssh" }
  if raw.key_file then
    parts[#parts + 1] = "-i " .. shq(raw.key_file) .. " -o IdentitiesOnly=yes"
  end
  parts[#parts + 1] = "-o UserKnownHostsFile=" .. shq(raw.known_hosts) .. " -o StrictHostKeyChecking=yes"
  parts[#parts + 1] = ("-p %d %s"):format(box.port, shq(box.user .. "@" .. box.host))
  parts[#parts + 1] = q(remote_cmd)
  return table.concat(parts, " ")
end

-- A local input read after the server is reached is checked first, in a dry-run too.
local function local_dir(p, name)
  local st = ephrun.fs.stat(p[name], { follow = true })
  if not st or st.type ~= "dir" then
    error(("%s=%s: %s; run from the app's directory (the default is the current one) or pass %s=DIR")
      :format(name, p[name], st and "not a directory" or "no such directory", name), 0)
  end
end

local function trim_slash(p)
  return (p:gsub("/+$", ""))
end

return ephrun.recipe {
  name = "deploy-to-server",
  summary = "Deploy an app to a permanent server: tarball, upload, extract, install, restart, health check.",
  params = {
    host = { type = "string", required = true, doc = "the server's address" },
    port = { type = "number", default = 22, doc = "its SSH port" },
    user = { default = "root", doc = "login user" },
    key_file = { default = "", doc = "private key to log in with (default ~/.ssh/id_ed25519, else the ssh-agent); "
      .. "an encrypted key takes EPHRUN_SSH_PASSPHRASE or asks" },
    known_hosts = { default = "~/.ssh/known_hosts", doc = "the server's host key must be in this file" },
    src = { type = "path", default = ".", doc = "local app directory" },
    dir = { type = "string", required = true, doc = "service directory on the server (absolute, or relative to the login home)" },
    exclude = { type = "list", default = { "node_modules" },
      doc = "more patterns left out of the tarball (.env*, *.pem, id_*, .git always are, in any case)" },
    preserve = { type = "list", default = { ".env" },
      doc = "paths in the current service directory copied into the new release (files that live only on the server)" },
    install = { default = "npm install --production", doc = "run in the new release before it goes live (empty: skip)" },
    restart = { default = "", doc = "run in the service directory after the swap, e.g. 'pm2 restart app' (empty: skip)" },
    health_url = { default = "", doc = "URL that must answer 2xx after the restart (empty: no check)" },
    health_deadline = { type = "duration", default = "60s", doc = "how long the health check keeps trying" },
    health_interval = { type = "duration", default = "2s", doc = "pause between health check attempts" },
  },
  run = function(p)
    local t = ephrun.time
    local t0 = t.monotonic()
    local dir = trim_slash(p.dir)
    if dir == "" then error("dir must name the service directory, not the root", 0) end
    ephrun.phase("check")
    local_dir(p, "src")
    local srv = ephrun.provider("static", {
      host = p.host, port = p.port, user = p.user, key_file = p.key_file, known_hosts = p.known_hosts,
    })
    local box <close> = srv:attach()

    -- (1) The tarball, made locally with tar; the same excludes as a sync.
    ephrun.phase("package")
    local excludes = {}
    for _, e in ipairs(ALWAYS_EXCLUDED) do excludes[#excludes + 1] = e end
    for _, e in ipairs(p.exclude) do excludes[#excludes + 1] = e end
    local scan = ephrun.ssh.scan_local(p.src, { exclude = p.exclude, gitignore = false })
    local tmp = assert(ephrun.fs.tempdir("ephrun-deploy-"))
    local tarball = tmp .. "/release.tar.gz"
    local argv = { "tar", "-czf", tarball }
    argv[#argv + 1] = "--ignore-case"
    for _, e in ipairs(ALWAYS_EXCLUDED) do argv[#argv + 1] = "--exclude=" .. e end
    argv[#argv + 1] = "--no-ignore-case"
    for _, e in ipairs(p.exclude) do argv[#argv + 1] = "--exclude=" .. e end
    argv[#argv + 1] = "-C"
    argv[#argv + 1] = p.src
    argv[#argv + 1] = "."
    local shown = {}
    for i, a in ipairs(argv) do shown[i] = shq(a) end
    local tar_bytes = ephrun.effect {
      kind = "package", what = ("%s: %d files, %s (%d excluded)"):format(p.src, scan.files_total,
        ephrun.ssh.human_bytes(scan.bytes_total), scan.excluded or 0),
      where = "local", details = { table.concat(shown, " ") }, placeholder = 0,
      run = function()
        ephrun.proc.run(argv, { stream = false })
        local bytes = (ephrun.fs.stat(tarball) or {}).size or 0
        ephrun.log.info("package %s: %d files (%s raw, %s compressed), %d excluded (%s)", p.src, scan.files_total,
          ephrun.ssh.human_bytes(scan.bytes_total), ephrun.ssh.human_bytes(bytes), scan.excluded or 0,
          table.concat(excludes, " "))
        return bytes
      end,
    }

    local sh <close> = box:ssh()
    local id = ephrun.run_id():gsub("[^%w]", ""):sub(1, 16)
    local parent = dir:match("^(.*)/[^/]+$") or "."
    if parent == "" then parent = "/" end
    local name = dir:match("([^/]+)$")
    local remote_tgz = parent .. "/." .. name .. ".upload-" .. id .. ".tar.gz"
    local release = dir .. ".new-" .. id
    local previous = dir .. ".previous"

    -- (2) Upload; the tarball and an unfinished release are removed whatever
    -- happens (after the swap the release path no longer exists).
    ephrun.phase("upload")
    sh:run("mkdir -p " .. q(parent), { stream = false })
    -- luacheck: push ignore 211
    local _cleanup <close> = ephrun.defer(function()
      sh:run("rm -rf " .. q(remote_tgz) .. " " .. q(release), { stream = false, check = false })
    end, "remove the uploaded tarball and any unfinished release on " .. box.id,
      ssh_cmd(box, "rm -rf " .. shq(remote_tgz) .. " " .. shq(release)))
    -- luacheck: pop
    sh:upload(tarball, remote_tgz)

    ephrun.phase("extract")
    local steps = {
      "set -e",
      "mkdir " .. q(release),
      "tar -xzf " .. q(remote_tgz) .. " -C " .. q(release),
      "rm -f " .. q(remote_tgz),
    }
    for _, keep in ipairs(p.preserve) do
      local from, to = dir .. "/" .. keep, release .. "/" .. keep
      steps[#steps + 1] = ("if [ -e %s ] || [ -L %s ]; then mkdir -p \"$(dirname %s)\" && rm -rf %s && cp -a %s %s; "
        .. "echo 'kept %s from the current release'; fi"):format(q(from), q(from), q(to), q(to), q(from), q(to), keep)
    end
    remote(sh, "extract into the new release " .. release, table.concat(steps, "\n"))

    -- (3) Install in the new release, before anything goes live.
    if p.install ~= "" then
      ephrun.phase("install")
      sh:run("cd " .. q(release) .. " && " .. p.install)
    end

    -- Swap: the old release becomes <dir>.previous (the one before is removed).
    -- The script says whether there was an old release: a first deploy has none.
    ephrun.phase("swap")
    local swap_script = table.concat({
      "set -e",
      "rm -rf " .. q(previous),
      "if [ -e " .. q(dir) .. " ] || [ -L " .. q(dir) .. " ]; then mv " .. q(dir) .. " " .. q(previous)
        .. "; echo '@@ previous kept'; fi",
      -- Should the second rename fail, the old release goes back in place.
      "mv " .. q(release) .. " " .. q(dir) .. " || { [ -e " .. q(previous) .. " ] && mv " .. q(previous) .. " "
        .. q(dir) .. "; exit 1; }",
    }, "\n")
    local swapped = remote(sh, ("swap: %s becomes %s, the new release becomes %s"):format(dir, previous, dir),
      swap_script, { stream = false })
    local had_previous = swapped ~= nil and swapped.stdout:find("@@ previous kept", 1, true) ~= nil
    local rollback = ssh_cmd(box, ("mv %s %s && mv %s %s%s"):format(shq(dir), shq(dir .. ".failed"), shq(previous),
      shq(dir), p.restart ~= "" and (" && cd " .. shq(dir) .. " && " .. p.restart) or ""))
    local roll_back_hint = had_previous and ("roll back with:\n  " .. rollback)
      or ("there is no previous release to roll back to (this was the first deploy to %s)"):format(dir)

    -- (4) Restart.
    if p.restart ~= "" then
      ephrun.phase("restart")
      sh:run("cd " .. q(dir) .. " && " .. p.restart)
    end

    -- (5) Health check from here, retried until the deadline.
    local health = "not checked (health_url is empty)"
    if p.health_url ~= "" then
      ephrun.phase("health")
      health = ephrun.effect {
        kind = "http", what = ("health check GET %s until 2xx (every %s, up to %s)"):format(
          ephrun.http.redact_url(p.health_url), t.format_duration(p.health_interval), t.format_duration(p.health_deadline)),
        where = p.health_url:match("^%a+://([^/]+)") or p.health_url,
        placeholder = "planned",
        run = function()
          local limit = t.monotonic() + p.health_deadline
          local attempts, last = 0
          while true do
            attempts = attempts + 1
            local left = math.max(1, limit - t.monotonic())
            local r, err = ephrun.http.get(p.health_url, { retries = 0, timeout = math.min(10, left),
              connect_timeout = math.min(5, left), deadline = left })
            if r and r.ok then
              return ("HTTP %d after %d attempt%s"):format(r.status, attempts, attempts == 1 and "" or "s")
            end
            if r then
              local body = (r.body or ""):gsub("%s+", " "):sub(1, 300)
              last = ("HTTP %d%s"):format(r.status, body ~= "" and (": " .. body) or "")
            else
              last = tostring(err)
            end
            if t.monotonic() + p.health_interval >= limit then break end
            t.sleep(p.health_interval)
          end
          error(("health check failed: %s did not answer 2xx within %s (%d attempts); last: %s\n"
            .. "The new release is live in %s on %s%s.\n"
            .. "Next: look at the service's logs (e.g. pm2 logs), fix and deploy again, or %s")
            :format(ephrun.http.redact_url(p.health_url), t.format_duration(p.health_deadline), attempts, last,
              dir, box.id, had_previous and ("; the previous one is in " .. previous) or "", roll_back_hint), 0)
        end,
      }
    end
    ephrun.effect { kind = "report", what = "print the summary: release, install, restart, health, how to roll back",
      run = function()
        io.stdout:write(table.concat({
          "",
          "deploy-to-server summary (run " .. ephrun.run_id() .. ")",
          ("  server:    %s"):format(box.id),
          ("  release:   %d files (%s packed), %d excluded, live in %s"):format(scan.files_total,
            ephrun.ssh.human_bytes(tar_bytes), scan.excluded or 0, dir),
          ("  install:   %s"):format(p.install ~= "" and p.install or "skipped"),
          ("  restart:   %s"):format(p.restart ~= "" and p.restart or "skipped"),
          ("  health:    %s"):format(health),
          had_previous and ("  previous:  %s; roll back with:\n    %s"):format(previous, rollback)
            or "  previous:  none (the first deploy to " .. dir .. ")",
          ("  total:     %.2fs"):format(t.monotonic() - t0),
        }, "\n"), "\n")
      end,
    }
  end,
}
