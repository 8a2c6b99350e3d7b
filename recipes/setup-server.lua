--- setup-server: the one-time set-up of a small VPS (the static provider),
--- safe to run again: install packages that are missing, create data
--- directories with their owner and mode before anything uses them, add swap
--- when RAM is small (as much as RAM by default), and check what small VPSes
--- get wrong: DNS from the server and its containers, services started before
--- their data directories, swap well below RAM. Every step says whether it
--- changed something, was already done, or what to do; a second run changes nothing. Needs root on the server
--- (log in as root, or as a user with passwordless sudo).
local ephrun = require "ephrun"

local q = ephrun.shell_quote

-- Each step's script ends with one line "@@ changed TEXT" or "@@ unchanged TEXT".
local MARK = "@@ "

-- PATH[:OWNER[:GROUP]][:MODE] → {path, owner, group, mode (octal digits, no leading zero)}
local function parse_dir(entry, default_mode)
  local fields = {}
  for f in (entry .. ":"):gmatch("(.-):") do fields[#fields + 1] = f end
  local mode = default_mode
  if #fields > 1 and fields[#fields]:match("^[0-7][0-7][0-7][0-7]?$") then
    mode = table.remove(fields)
  end
  local path, owner, group = fields[1], fields[2], fields[3]
  if not path or path == "" or #fields > 3 then
    error(("dirs: %q is not PATH[:OWNER[:GROUP]][:MODE] (e.g. /srv/app/data:www-data:www-data:0750)")
      :format(entry), 0)
  end
  if not tostring(mode):match("^[0-7]+$") then error(("dir_mode: %q is not an octal mode"):format(mode), 0) end
  return { path = path, owner = owner ~= "" and owner or nil, group = group ~= "" and group or nil,
    mode = ("%o"):format(tonumber(mode, 8)) }
end

local function packages_script(pkgs)
  local list = {}
  for _, p in ipairs(pkgs) do
    if not p:match("^[%w][%w.+:%-]*$") then error(("packages: %q is not a Debian package name"):format(p), 0) end
    list[#list + 1] = p
  end
  return ([[
set -e
missing=""
for p in %s; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
if [ -z "$missing" ]; then echo "@@ unchanged all %d already installed"; exit 0; fi
command -v apt-get >/dev/null || { echo "no apt-get on this server: setup-server installs packages on Debian or Ubuntu" >&2; exit 3; }
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q $missing || { apt-get update -q && apt-get install -y -q $missing; }
echo "@@ changed installed$missing"
]]):format(table.concat(list, " "), #list)
end

local function dir_script(d)
  local lines = {
    "set -e",
    "d=" .. q(d.path),
    "did=''",
    'if [ ! -d "$d" ]; then mkdir -p "$d"; did="created"; fi',
  }
  if d.owner or d.group then
    local want = (d.owner or "") .. ":" .. (d.group or "")
    local checks = {}
    if d.owner then checks[#checks + 1] = ("[ \"$(stat -c %%U \"$d\")\" != %s ]"):format(q(d.owner)) end
    if d.group then checks[#checks + 1] = ("[ \"$(stat -c %%G \"$d\")\" != %s ]"):format(q(d.group)) end
    lines[#lines + 1] = ("if %s; then chown %s \"$d\"; did=\"${did:+$did, }owner %s\"; fi")
      :format(table.concat(checks, " || "), q(want), want)
  end
  lines[#lines + 1] = ("if [ \"$(stat -c %%a \"$d\")\" != %s ]; then chmod %s \"$d\"; did=\"${did:+$did, }mode %s\"; fi")
    :format(q(d.mode), d.mode, d.mode)
  lines[#lines + 1] = 'if [ -n "$did" ]; then echo "@@ changed $d: $did"; '
    .. 'else echo "@@ unchanged $d: exists, $(stat -c "%U:%G %a" "$d")"; fi'
  return table.concat(lines, "\n")
end

local function swap_script(p)
  return ([[
set -e
f=%s
fstab=%s
size=%s
mem=$(awk '/^MemTotal:/ { print int($2 / 1024) }' /proc/meminfo)
if [ "$mem" -ge %d ]; then echo "@@ unchanged ${mem} MB of RAM is at least %d MB: no swap needed"; exit 0; fi
[ "$size" = ram ] && size="${mem}M"
want=$(numfmt --from=iec "$size" --to-unit=1048576)
did=''
if ! awk 'NR > 1 { print $1 }' /proc/swaps | grep -qxF "$f"; then
  other=$(awk 'NR > 1 { printf "%%s ", $1 }' /proc/swaps)
  if [ -n "$other" ]; then
    have=$(awk 'NR > 1 { kb += $3 } END { print int(kb / 1024) }' /proc/swaps)
    # swap well below RAM on a small host is what made a 1 GB bot crawl or die: say so
    if [ "$have" -lt $((want / 2)) ]; then
      echo "@@ todo swap is ${have} MB ($other) for ${mem} MB of RAM, under half of the ${want} MB wanted:" \
        "add a swap file (swapfile=/swapfile2 swap_size=$((want - have))M) or enlarge $other"
    else
      echo "@@ unchanged swap is already active ($other): ${have} MB for ${mem} MB of RAM"
    fi
    exit 0
  fi
  if [ ! -e "$f" ]; then
    mkdir -p "$(dirname "$f")"
    fallocate -l "$size" "$f" 2>/dev/null || dd if=/dev/zero of="$f" bs=1M count="$want" status=none
    chmod 600 "$f"
    mkswap "$f" >/dev/null
    did="created $f ($size)"
    made=1
  fi
  if ! err=$(swapon "$f" 2>&1); then
    [ -n "${made:-}" ] && rm -f "$f"
    echo "swapon $f was refused: $err" >&2
    echo "This server does not let swap be enabled (a container usually cannot; run it on the VM itself)," >&2
    echo "or pass swap_threshold_mb=0 to skip the swap step." >&2
    exit 4
  fi
  did="${did:+$did, }swapon $f"
fi
if ! awk -v f="$f" '$1 == f && $3 == "swap" { found = 1 } END { exit !found }' "$fstab" 2>/dev/null; then
  echo "$f none swap sw 0 0" >> "$fstab"
  did="${did:+$did, }added to $fstab"
fi
if [ -n "$did" ]; then echo "@@ changed ${mem} MB of RAM: $did"
else echo "@@ unchanged $f is active and in $fstab"; fi
]]):format(q(p.swapfile), q(p.fstab), q(p.swap_size), p.swap_threshold_mb, p.swap_threshold_mb)
end

-- DNS from the server, and from a container when Docker runs there: a host
-- that resolves while its containers do not is a classic of small VPSes
-- (systemd-resolved's 127.0.0.53 is not reachable from a container).
local function dns_script(names, image)
  for _, n in ipairs(names) do
    if not n:match("^[%w][%w.%-]*$") then error(("dns: %q is not a host name"):format(n), 0) end
  end
  return ([[
names=%s
image=%s
bad=''
for n in $names; do getent ahosts "$n" >/dev/null 2>&1 || bad="$bad $n"; done
if [ -n "$bad" ]; then
  ns=$(awk '$1 == "nameserver" { printf "%%s%%s", sep, $2; sep = " " }' /etc/resolv.conf 2>/dev/null)
  echo "@@ todo the server cannot resolve$bad (nameservers in /etc/resolv.conf: ${ns:-none}):" \
    "fix /etc/resolv.conf or systemd-resolved (resolvectl status), then run setup-server again"
else
  echo "@@ unchanged the server resolves $names"
fi
command -v docker >/dev/null 2>&1 || exit 0
if ! docker info >/dev/null 2>&1; then
  echo "@@ todo Docker is installed but its daemon does not answer, so container DNS is not checked:" \
    "start it (systemctl start docker) and run setup-server again"
  exit 0
fi
if ! docker image inspect "$image" >/dev/null 2>&1 && ! docker pull -q "$image" >/dev/null 2>&1; then
  echo "@@ todo cannot get image $image to check DNS inside a container (docker pull failed, itself often DNS):" \
    "check the daemon's DNS ("dns" in /etc/docker/daemon.json) or pass dns_image=an image this server has"
  exit 0
fi
cbad=''
for n in $names; do docker run --rm "$image" nslookup "$n" >/dev/null 2>&1 || cbad="$cbad $n"; done
if [ -n "$cbad" ]; then
  echo "@@ todo containers cannot resolve$cbad although the server can:" \
    "set "dns": ["1.1.1.1", "8.8.8.8"] in /etc/docker/daemon.json, then systemctl restart docker"
else
  echo "@@ unchanged containers resolve $names"
fi
]]):format(q(table.concat(names, " ")), q(image))
end

-- A service that started before its data directories existed has failed or
-- written elsewhere: with the directories in place, (re)start what is not running.
local function services_script(units, dirs)
  local paths = {}
  for _, d in ipairs(dirs) do paths[#paths + 1] = q(d.path) end
  for _, u in ipairs(units) do
    if not u:match("^[%w][%w@._:%-]*$") then error(("services: %q is not a systemd unit name"):format(u), 0) end
  end
  return ([[
for d in %s; do
  [ -d "$d" ] || { echo "@@ todo data directory $d is missing: services not started; run setup-server again"; exit 0; }
done
if ! command -v systemctl >/dev/null 2>&1 || [ ! -d /run/systemd/system ]; then
  echo "@@ todo systemd is not running here: start %s yourself, now that the data directories exist"
  exit 0
fi
for u in %s; do
  if systemctl is-active -q "$u"; then
    echo "@@ unchanged $u is running, its data directories exist"
  elif systemctl restart "$u" 2>/dev/null; then
    echo "@@ changed started $u now that its data directories exist"
  else
    echo "@@ todo $u does not start: see journalctl -u $u"
  fi
done
]]):format(#paths > 0 and table.concat(paths, " ") or "", table.concat(units, " "), table.concat(units, " "))
end

return ephrun.recipe {
  name = "setup-server",
  summary = "One-time, idempotent set-up of a small VPS: data directories, services, DNS checks, packages, swap.",
  params = {
    host = { type = "string", required = true, doc = "the server's address" },
    port = { type = "number", default = 22, doc = "its SSH port" },
    user = { default = "root", doc = "login user: root, or a user with passwordless sudo" },
    key_file = { default = "", doc = "private key to log in with (default ~/.ssh/id_ed25519, else the ssh-agent)" },
    known_hosts = { default = "~/.ssh/known_hosts", doc = "the server's host key must be in this file" },
    packages = { type = "list", default = { "curl", "ca-certificates" },
      doc = "Debian packages to install when missing (apt-get, noninteractive)" },
    dirs = { type = "list", default = {},
      doc = "data directories, each PATH[:OWNER[:GROUP]][:MODE], e.g. /srv/app/data:www-data:www-data:0750" },
    dir_mode = { default = "0755", doc = "mode of a data directory whose entry gives none" },
    swap_threshold_mb = { type = "number", default = 2048, min = 0, doc = "add swap when RAM is below this many MB (0: never)" },
    swap_size = { default = "ram", doc = "size of the swap file: ram (as much as the server's RAM) or 512M, 2G" },
    dns = { type = "list", default = { "deb.debian.org" },
      doc = "names that must resolve from the server and from its containers (empty: no DNS check)" },
    dns_image = { default = "busybox", doc = "image used to check DNS inside a container when Docker runs" },
    services = { type = "list", default = {},
      doc = "systemd units that use the data directories: started once the directories exist" },
    swapfile = { default = "/swapfile", doc = "path of the swap file" },
    fstab = { default = "/etc/fstab", doc = "fstab the swap file is added to (once)" },
  },
  run = function(p)
    if p.swap_size ~= "ram" and not p.swap_size:match("^%d+[KMGkmg]?$") then
      error(("swap_size %q: give ram or a size such as 512M or 2G"):format(p.swap_size), 0)
    end
    local dirs = {}
    for _, e in ipairs(p.dirs) do dirs[#dirs + 1] = parse_dir(e, p.dir_mode) end

    local srv = ephrun.provider("static", {
      host = p.host, port = p.port, user = p.user, key_file = p.key_file, known_hosts = p.known_hosts,
    })
    local box <close> = srv:attach()
    local sh <close> = box:ssh()

    -- Root, or sudo without a password: every step runs through this prefix.
    ephrun.phase("check")
    local sudo = ephrun.effect {
      kind = "check", what = "log in as root, or use passwordless sudo", where = box.host, placeholder = "",
      run = function()
        local who = sh:run("id -u; command -v sudo || true", { stream = false })
        local uid, has_sudo = who.stdout:match("^(%d+)\n(%S*)")
        if uid == "0" then return "" end
        if has_sudo == "" or sh:run("sudo -n true", { stream = false, check = false }).code ~= 0 then
          error(("setup-server needs root on %s: log in as root (user=root) or as a user with passwordless sudo")
            :format(box.id), 0)
        end
        return "sudo -n "
      end,
    }

    local report = {}
    -- The plan shows what a step ensures, not its script.
    local function step(name, what, script)
      ephrun.phase(name)
      ephrun.effect { kind = "run", what = name .. ": " .. what, where = box.host, run = function()
        local r = sh:run(sudo .. "sh -c " .. q(script), { prefix = "[" .. box.host .. " " .. name .. "] " })
        for line in r.stdout:gmatch("[^\n]+") do
          local status, text = line:match("^" .. MARK .. "(%a+) (.*)$")
          if status then
            local said = status == "changed" and "changed" or status == "todo" and "needs action" or "already done"
            report[#report + 1] = { name, said, text }
            if status == "todo" then
              ephrun.log.warn("%s: needs action: %s", name, text)
            else
              ephrun.log.info("%s: %s: %s", name, said, text)
            end
          end
        end
      end }
    end

    -- Directories first: later steps and the apps may use them.
    for _, d in ipairs(dirs) do
      step("dirs", ("ensure directory %s (owner %s, mode %s)"):format(d.path,
        d.owner and (d.owner .. (d.group and (":" .. d.group) or "")) or "unchanged", d.mode), dir_script(d))
    end
    if #p.services > 0 then
      step("services", "start when not running, once the data directories exist: " .. table.concat(p.services, " "),
        services_script(p.services, dirs))
    end
    if #p.dns > 0 then
      step("dns", "check that " .. table.concat(p.dns, " ") .. " resolve from the server and its containers",
        dns_script(p.dns, p.dns_image))
    end
    if #p.packages > 0 then
      step("packages", "install if missing: " .. table.concat(p.packages, " "), packages_script(p.packages))
    end
    if p.swap_threshold_mb > 0 then
      step("swap", ("when RAM < %d MB: %s swap file %s, swapon, once in %s"):format(p.swap_threshold_mb,
        p.swap_size, p.swapfile, p.fstab), swap_script(p))
    end

    ephrun.effect { kind = "report", what = "print what each step changed", run = function()
      local out, changed, todo = { "", "setup-server summary for " .. box.id }, 0, 0
      for _, r in ipairs(report) do
        out[#out + 1] = ("  %-9s %-13s %s"):format(r[1], r[2], r[3])
        if r[2] == "changed" then changed = changed + 1 end
        if r[2] == "needs action" then todo = todo + 1 end
      end
      out[#out + 1] = changed == 0 and "  nothing changed: the server was already set up"
        or ("  %d step%s changed something"):format(changed, changed == 1 and "" or "s")
      if todo > 0 then
        out[#out + 1] = ("  %d check%s need%s action: see above"):format(todo, todo == 1 and "" or "s",
          todo == 1 and "s" or "")
      end
      io.stdout:write(table.concat(out, "\n"), "\n")
    end }
  end,
}
