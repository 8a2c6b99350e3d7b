--- Recipe packs: a directory or git repository with a `pack.lua` and its Lua
--- files, checked out once per pinned commit under `$XDG_DATA_HOME/ephrun/packs`
--- and pinned by `ephrun.lock` (source, commit, SHA-256 over the tree, and the
--- hash of every file so a changed one can be named). Every load verifies the
--- checkout against the lock; only `ephrun pack update` moves a pin.
--- See docs/packs.md.
local ephrun = require "ephrun"
local json = require "ephrun.json"
local host = require "ephrun._packs_host"

local fs = ephrun.fs

local M = {}

local NAME = "^[%w_][%w_%-]*$"
local LOCK_FORMAT = 1

local function fail(msg, ...)
  error(select("#", ...) > 0 and msg:format(...) or msg, 0)
end

--- Where the checkouts live: `$XDG_DATA_HOME/ephrun/packs`, by default `~/.local/share/ephrun/packs`.
---@return string
function M.dir()
  local base = os.getenv("XDG_DATA_HOME")
  if not base or base == "" then base = fs.join(os.getenv("HOME") or ".", ".local/share") end
  return fs.join(base, "ephrun/packs")
end

-- The nearest ephrun.lock in `dir` or a directory above it.
local function lock_above(dir)
  dir = dir and fs.realpath(dir)
  while dir do
    local cand = fs.join(dir, "ephrun.lock")
    if fs.exists(cand) then return cand end
    local parent = fs.dirname(dir)
    if parent == dir then return nil end
    dir = parent
  end
end

--- The lockfile: `EPHRUN_LOCK` when set; else the nearest `ephrun.lock` beside
--- the running recipe (a team recipe using a pack's provider) or above it, then
--- in the current directory or above it, as git finds its repository; else
--- `ephrun.lock` in the current directory, where `pack add` creates it.
---@return string
function M.lock_path()
  local p = os.getenv("EPHRUN_LOCK")
  if p and p ~= "" then return p end
  local rd = require("ephrun._core").recipe_dir()
  local packs_dir = fs.realpath(M.dir())
  local from_recipe = rd ~= "" and not (packs_dir and (fs.realpath(rd) or rd):sub(1, #packs_dir + 1) == packs_dir .. "/")
  return (from_recipe and lock_above(rd)) or lock_above(".") or "ephrun.lock"
end

--- The lock's contents: `{packs = {NAME = entry}}`; empty when there is no lockfile.
---@param path? string
---@return table
function M.read_lock(path)
  path = path or M.lock_path()
  if not fs.exists(path) then return { format = LOCK_FORMAT, packs = {} } end
  local text, err = fs.read(path)
  if not text then fail("cannot read the lockfile %s: %s", path, err) end
  local ok, lock = pcall(json.decode, text)
  if not ok or type(lock) ~= "table" or type(lock.packs) ~= "table" then
    fail("%s is not an ephrun lockfile (%s); restore it from version control, or remove it and `ephrun pack add` "
      .. "the packs again", path, ok and "no \"packs\" object" or tostring(lock))
  end
  return lock
end

local function write_lock(lock, path)
  path = path or M.lock_path()
  lock.format = LOCK_FORMAT
  local ok, err = fs.write(path, json.encode(lock, { pretty = true }) .. "\n")
  if not ok then fail("cannot write the lockfile %s: %s", path, err) end
end

-- Every regular file under root (but .git), as sorted relative paths. A
-- symlink could point anywhere, so the hash would not pin what it reads.
local function files_of(root, rel, out)
  out = out or {}
  local dir = rel and fs.join(root, rel) or root
  local names, err = fs.list(dir)
  if not names then fail("cannot list %s: %s", dir, err) end
  for _, n in ipairs(names) do
    local r = rel and (rel .. "/" .. n) or n
    if r ~= ".git" then
      local st = fs.stat(fs.join(root, r))
      if not st then fail("cannot read %s", fs.join(root, r)) end
      if st.type == "dir" then
        files_of(root, r, out)
      elseif st.type == "file" then
        out[#out + 1] = r
      else
        fail("pack file %s is a %s; a pack holds plain files and directories", fs.join(root, r), st.type)
      end
    end
  end
  table.sort(out)
  return out
end

--- SHA-256 of each file under `root` (but .git) and of the whole tree: the
--- hash of the `sha256sum`-style listing "HASH  PATH\n" in path order, so
--- `cd ROOT && find . -type f | sort | xargs sha256sum` tells the same story.
---@param root string
---@return table<string, string> files, string tree
function M.tree_hash(root)
  local files, lines = {}, {}
  for _, r in ipairs(files_of(root)) do
    local data, err = fs.read(fs.join(root, r))
    if not data then fail("cannot read %s: %s", fs.join(root, r), err) end
    files[r] = fs.hash_string(data)
    lines[#lines + 1] = files[r] .. "  " .. r .. "\n"
  end
  return files, fs.hash_string(table.concat(lines))
end

-- "0.2", "0.2.1" → {0, 2, 1}
local function parse_version(s)
  local out = {}
  for n in tostring(s):gmatch("%d+") do out[#out + 1] = tonumber(n) end
  return out
end

local function compare(a, b)
  for i = 1, math.max(#a, #b) do
    local x, y = a[i] or 0, b[i] or 0
    if x ~= y then return x < y and -1 or 1 end
  end
  return 0
end

local OPS = {
  [">="] = function(c) return c >= 0 end, [">"] = function(c) return c > 0 end,
  ["<="] = function(c) return c <= 0 end, ["<"] = function(c) return c < 0 end,
  ["="] = function(c) return c == 0 end, ["=="] = function(c) return c == 0 end,
}

--- Whether `version` meets `req`: comma-separated clauses like ">= 0.2, < 1".
--- Returns true, or false and the clause that fails; raises on a malformed requirement.
---@param req string
---@param version? string default: this ephrun's version
---@return boolean ok, string? clause
function M.satisfies(req, version)
  local v = parse_version(version or host.version())
  for clause in tostring(req):gmatch("[^,]+") do
    local op, want = clause:match("^%s*([<>=]=?)%s*(%d+[%d.]*)%s*$")
    if not op or not OPS[op] then
      fail("requirement %q: write clauses like \">= 0.2\" or \">= 0.2, < 1\"", req)
    end
    if not OPS[op](compare(v, parse_version(want))) then return false, clause:match("^%s*(.-)%s*$") end
  end
  return true
end

local function list_field(m, field, where)
  local v = m[field] or {}
  if type(v) ~= "table" then fail("%s: `%s` must be a list of names", where, field) end
  for i, n in ipairs(v) do
    if type(n) ~= "string" or not n:match(NAME) then
      fail("%s: %s[%d] must be a word (letters, digits, _ and -), got %s", where, field, i, tostring(n))
    end
  end
  return v
end

--- Reads and checks `root/pack.lua`. It runs with no globals at all: a pack's
--- manifest describes, it does not act.
---@param root string
---@return table manifest
function M.manifest(root)
  local path = fs.join(root, "pack.lua")
  local src = fs.read(path)
  if not src then fail("%s has no pack.lua: a pack is a directory with a pack.lua (see docs/packs.md)", root) end
  local chunk, err = load(src, "@" .. path, "t", {})
  if not chunk then fail("%s", err) end
  local ok, m = pcall(chunk)
  if not ok then fail("%s", tostring(m)) end
  if type(m) ~= "table" then fail("%s must return a table: return { name = ..., version = ..., recipes = {...} }", path) end
  if type(m.name) ~= "string" or not m.name:match(NAME) then
    fail("%s: `name` must be a word (letters, digits, _ and -), got %s", path, tostring(m.name))
  end
  if m.version ~= nil and type(m.version) ~= "string" then fail("%s: `version` must be a string", path) end
  if m.summary ~= nil and type(m.summary) ~= "string" then fail("%s: `summary` must be a string", path) end
  list_field(m, "recipes", path)
  list_field(m, "providers", path)
  list_field(m, "overrides", path)
  if m.requires ~= nil and type(m.requires) ~= "table" then fail("%s: `requires` must be a table", path) end
  for kind, dir in pairs { recipes = "recipes", providers = "providers" } do
    for _, n in ipairs(m[kind] or {}) do
      if not fs.exists(fs.join(root, dir, n .. ".lua")) then
        fail("%s lists %s '%s' but there is no %s/%s.lua", path, kind:sub(1, -2), n, dir, n)
      end
    end
  end
  return m
end

-- Refuses a pack this ephrun cannot run.
local function check_requires(m, name)
  local req = m.requires and m.requires.ephrun
  if not req then return end
  local ok, clause = M.satisfies(req, host.version())
  if not ok then
    fail("pack '%s' requires ephrun %s, and this is ephrun %s (%s does not hold): upgrade ephrun, or pin a "
      .. "release of the pack made for this one (`ephrun pack update %s --ref TAG`)",
      name, req, host.version(), clause, name)
  end
end

-- A pack recipe or provider named like a built-in is refused unless pack.lua
-- says it means it (`overrides`); even then the built-in keeps the bare name
-- and the pack's runs only as PACK/NAME.
local function check_shadowing(m, name)
  local meant = {}
  for _, n in ipairs(m.overrides or {}) do meant[n] = true end
  local builtin_providers = {}
  for _, n in ipairs(require("ephrun.cloud").builtin_providers()) do builtin_providers[n] = true end
  local builtin_recipes = {}
  for _, f in ipairs(require("ephrun._core").builtin_files("recipes")) do
    builtin_recipes[(f:gsub("%.lua$", ""))] = true
  end
  for _, f in ipairs(require("ephrun._core").builtin_files("stdlib/ephrun/cmd")) do
    if f ~= "common.lua" then builtin_recipes[(f:gsub("%.lua$", ""))] = true end
  end
  for kind, builtin in pairs { recipe = builtin_recipes, provider = builtin_providers } do
    for _, n in ipairs(m[kind .. "s"] or {}) do
      if builtin[n] and not meant[n] then
        fail("pack '%s' has a %s named '%s', like the built-in %s: it would never run as `%s`, which stays the "
          .. "built-in. Rename it, or add `overrides = { \"%s\" }` to pack.lua to keep it as `%s/%s`",
          name, kind, n, kind, n, n, name, n)
      end
    end
  end
end

local function git(args, opts)
  local argv = { "git", table.unpack(args) }
  opts = opts or {}
  opts.stream, opts.check = false, false
  local r, err = ephrun.proc.run(argv, opts)
  if not r then fail("cannot run git (%s): install git", err) end
  if not r.ok then
    fail("`%s` failed: %s", table.concat(argv, " "), (r.stderr or ""):gsub("%s+$", ""))
  end
  return (r.stdout or ""):gsub("%s+$", "")
end

local function is_git_source(source)
  if source:match("^%w[%w+.-]*://") or source:match("^[^/]+@[^/]+:") then return true end
  local st = fs.stat(source)
  if st and st.type == "dir" and not fs.exists(fs.join(source, ".git"))
    and not fs.exists(fs.join(source, "HEAD")) then
    return false
  end
  return true
end

-- Fetches SOURCE at REF into a fresh directory. Returns that directory and
-- the commit (for a plain directory, "dir-" and its tree hash's head).
local function fetch(source, ref)
  local tmp = fs.tempdir("ephrun-pack-")
  local work = fs.join(tmp, "tree")
  if is_git_source(source) then
    git { "clone", "--quiet", "--no-checkout", "--", source, work }
    local commit = git { "-C", work, "rev-parse", "--verify", "--quiet", (ref or "HEAD") .. "^{commit}" }
    git { "-C", work, "-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", commit }
    fs.remove(fs.join(work, ".git"), { recursive = true })
    return work, commit
  end
  if ref then fail("--ref %s: %s is a plain directory, not a git repository, so it has no refs", ref, source) end
  ephrun.proc.run({ "cp", "-R", "--", source, work }, { stream = false })
  local _, tree = M.tree_hash(work)
  return work, "dir-" .. tree:sub(1, 16)
end

local function checkout_dir(name, commit)
  return fs.join(M.dir(), name, commit)
end

-- Puts the fetched tree in place as the checkout of name@commit (kept when it
-- is already there and intact: one checkout per pinned commit).
local function install(work, name, commit, files)
  local dest = checkout_dir(name, commit)
  if fs.exists(dest) then
    local ok = pcall(M.verify_tree, name, dest, files)
    if ok then return dest end
    fs.remove(dest, { recursive = true })
  end
  fs.mkdir_p(fs.join(M.dir(), name))
  ephrun.proc.run({ "mv", "--", work, dest }, { stream = false })
  return dest
end

--- Checks the files under `root` against the locked hashes; raises naming the
--- first file that was changed, added or removed.
---@param name string
---@param root string
---@param files table<string, string>
---@return string tree
function M.verify_tree(name, root, files)
  local now, tree = M.tree_hash(root)
  local fix = ("restore it (`ephrun pack remove %s` then `ephrun pack add` from the source), or move the pin "
    .. "with `ephrun pack update %s`"):format(name, name)
  local paths = {}
  for p in pairs(files) do paths[#paths + 1] = p end
  table.sort(paths)
  for _, p in ipairs(paths) do
    if now[p] == nil then fail("pack '%s': %s was removed after it was locked; %s", name, fs.join(root, p), fix) end
    if now[p] ~= files[p] then
      fail("pack '%s': %s changed after it was locked (sha256 %s, locked %s); %s", name, fs.join(root, p),
        now[p]:sub(1, 12), files[p]:sub(1, 12), fix)
    end
  end
  local extra = {}
  for p in pairs(now) do if files[p] == nil then extra[#extra + 1] = p end end
  table.sort(extra)
  if extra[1] then fail("pack '%s': %s was added after it was locked; %s", name, fs.join(root, extra[1]), fix) end
  return tree
end

-- Verified checkouts in this run: root -> locked file hashes.
local verified = {}

-- The bytes of a file of a verified checkout, checked against its locked hash
-- as they are read, so what runs is what was locked.
local function verified_source(name, root, rel)
  local path = fs.join(root, rel)
  local src = fs.read(path)
  if not src or fs.hash_string(src) ~= verified[root][rel] then
    fail("pack '%s': %s changed after it was locked; run `ephrun pack verify`", name, path)
  end
  return src, path
end

local function root_of(path)
  for root in pairs(verified) do
    if path:sub(1, #root + 1) == root .. "/" then return root end
  end
end

-- package.searchers entry: `require` from a pack's code (or from a pack
-- recipe's run) finds the pack's own modules in its verified checkout,
-- checked file by file, before the recipe-directory searcher reads them.
local function search_pack(modname)
  local caller = debug.getinfo(3, "S")
  local root = caller and caller.source:sub(1, 1) == "@" and root_of(caller.source:sub(2))
  if not root then
    local rd = require("ephrun._core").recipe_dir()
    root = verified[rd] and rd
  end
  if not root then return "\n\tnot pack code" end
  local rel = modname:gsub("%.", "/")
  for _, cand in ipairs { rel .. ".lua", rel .. "/init.lua" } do
    if verified[root][cand] then
      local src, path = verified_source(fs.basename(fs.dirname(root)), root, cand)
      return assert(load(src, "@" .. path, "t")), path
    end
  end
  return "\n\tno module '" .. modname .. "' in the pack at " .. root
end

local function trust(root, files)
  if not next(verified) then table.insert(package.searchers, 2, search_pack) end
  verified[root] = files
end

--- The verified checkout of a locked pack: its root and lock entry. Raises
--- when the pack is not locked, its checkout is missing, a file changed, or
--- this ephrun does not meet its `requires`.
---@param name string
---@return string root, table entry
function M.checkout(name)
  local lock = M.read_lock()
  local e = lock.packs[name]
  if not e then
    local names = {}
    for n in pairs(lock.packs) do names[#names + 1] = n end
    table.sort(names)
    fail("no pack '%s' in %s (%s); run ephrun in the repository whose ephrun.lock pins it (or set EPHRUN_LOCK), "
      .. "or add it with `ephrun pack add SOURCE --as %s`", name,
      fs.realpath(M.lock_path()) or M.lock_path(), #names > 0 and ("locked: " .. table.concat(names, ", ")) or "none locked",
      name)
  end
  if type(e.files) ~= "table" or type(e.commit) ~= "string" or not e.commit:match("^[%w%-]+$") then
    fail("%s: the entry of pack '%s' is damaged; `ephrun pack update %s` locks it again", M.lock_path(), name, name)
  end
  local root = checkout_dir(name, e.commit)
  if not fs.exists(root) then
    fail("pack '%s' is locked at %s but not checked out here (%s): run `ephrun pack verify` to fetch it from %s",
      name, e.commit, root, e.source)
  end
  if M.verify_tree(name, root, e.files) ~= e.sha256 then
    fail("%s: the file list of pack '%s' does not match its sha256 (the lockfile was edited by hand); "
      .. "`ephrun pack update %s` locks it again", M.lock_path(), name, name)
  end
  check_requires(M.manifest(root), name)
  host.register(root, ("pack %s@%s"):format(name, e.commit:sub(1, 12)))
  trust(root, e.files)
  return root, e
end

-- The plan says when PACK/NAME is one the pack declared as overriding a built-in.
local function note_override(m, pack, name, kind)
  for _, n in ipairs(m.overrides or {}) do
    if n == name then
      require("ephrun._core").plan_add { kind = "note", what = ("%s/%s overrides the built-in %s '%s' (pack.lua "
        .. "`overrides`); the bare name `%s` still runs the built-in"):format(pack, name, kind, name, name) }
    end
  end
end

local function split(spec)
  return spec:match("^([%w_][%w_%-]*)/([%w_][%w_%-]*)$")
end

--- `ephrun PACK/RECIPE`: the recipe file of a locked, verified pack. Returns
--- the file, the pack's root (where its `require`s look), its provenance and
--- its source; nil and a message when there is no such pack or recipe. Raises
--- when the pack fails verification.
---@param spec string "PACK/RECIPE"
---@return string|nil path, string root, string origin, string source
function M.recipe_file(spec)
  local pack, name = split(spec)
  if not pack then return nil, ("'%s' is not PACK/RECIPE"):format(spec) end
  if not M.read_lock().packs[pack] then
    return nil, ("no recipe '%s': not a file, and no pack '%s' in %s (`ephrun pack ls` lists the locked ones; "
      .. "`ephrun pack add SOURCE --as %s` adds one)"):format(spec, pack, M.lock_path(), pack)
  end
  local root, e = M.checkout(pack)
  local m = M.manifest(root)
  for _, r in ipairs(m.recipes or {}) do
    if r == name then
      -- The bytes that run are the bytes that were hashed, whatever happens to the file meanwhile.
      local src, path = verified_source(pack, root, "recipes/" .. name .. ".lua")
      note_override(m, pack, name, "recipe")
      return path, root, ("pack %s@%s"):format(pack, e.commit:sub(1, 12)), src
    end
  end
  return nil, ("pack '%s' has no recipe '%s' (its recipes: %s)"):format(pack, name, table.concat(m.recipes or {}, ", "))
end

-- The summary of one recipe of a verified checkout, read as `--list` reads a
-- built-in's: its top level runs (which only builds the table), never its `run`.
local function summary_of(pack, root, name)
  local ok, src, path = pcall(verified_source, pack, root, "recipes/" .. name .. ".lua")
  if not ok then return nil, src end
  local chunk, err = load(src, "@" .. path, "t")
  if not chunk then return nil, err end
  local recipe, summary = require("ephrun._main").describe(chunk, path)
  if recipe == nil then return nil, summary end
  return summary
end

--- For `ephrun --list`: a row `{name = "PACK/RECIPE", summary, origin}` for
--- each recipe of each pack in the lockfile a run here would use, read from
--- its verified checkout. A pack that cannot be listed (no checkout here, a
--- changed file, an unmet `requires`, a lockfile that is not one) gives one
--- row `{name = "PACK", error}` saying why and what to do. Never fetches.
---@return {name: string, summary?: string, origin?: string, error?: string}[]
function M.list_recipes()
  local ok, lock = pcall(M.read_lock)
  if not ok then return { { name = M.lock_path(), error = tostring(lock) } } end
  local names, rows = {}, {}
  for n in pairs(lock.packs) do names[#names + 1] = n end
  table.sort(names)
  for _, n in ipairs(names) do
    local got, root, e, m = pcall(function()
      local r, entry = M.checkout(n)
      return r, entry, M.manifest(r)
    end)
    if not got then
      local why = tostring(root):gsub("%s+", " ")
      if not why:find("ephrun pack verify", 1, true) then
        why = why .. "; `ephrun pack verify` checks every pack"
      end
      rows[#rows + 1] = { name = n, error = why }
    else
      local origin = ("pack %s@%s"):format(n, e.commit:sub(1, 12))
      for _, r in ipairs(m.recipes or {}) do
        local summary, err = summary_of(n, root, r)
        rows[#rows + 1] = { name = n .. "/" .. r, origin = origin,
          summary = summary or ("(cannot be loaded: %s)"):format(tostring(err):gsub("%s+", " ")) }
      end
    end
  end
  return rows
end

--- The verified source and path of provider `PACK/NAME` in a locked pack, or
--- nil when `spec` is not of that form.
---@param spec string
---@return string|nil source, string? path
function M.provider_file(spec)
  local pack, name = split(spec)
  if not pack then return nil end
  local root = M.checkout(pack)
  local m = M.manifest(root)
  for _, p in ipairs(m.providers or {}) do
    if p == name then
      note_override(m, pack, name, "provider")
      return verified_source(pack, root, "providers/" .. name .. ".lua")
    end
  end
  fail("pack '%s' has no provider '%s' (its providers: %s)", pack, name, table.concat(m.providers or {}, ", "))
end

-- Fetches, checks and locks one pack; returns its name and lock entry.
local function lock_one(source, ref, as)
  local work, commit = fetch(source, ref)
  local m = M.manifest(work)
  local name = as or m.name
  if not name:match(NAME) then fail("--as %s: a pack name is a word (letters, digits, _ and -)", name) end
  check_requires(m, name)
  check_shadowing(m, name)
  local files, tree = M.tree_hash(work)
  install(work, name, commit, files)
  return name, { source = source, ref = ref, commit = commit, sha256 = tree, files = files,
    version = m.version, summary = m.summary }
end

local function absolute_source(source)
  if source:match("^%w[%w+.-]*://") or source:match("^[^/]+@[^/]+:") or source:sub(1, 1) == "/" then
    return source
  end
  return fs.realpath(source) or source
end

--- `ephrun pack add`: fetch SOURCE (a directory, or anything `git clone`
--- takes) at REF (default: its HEAD), check it and pin it in the lockfile.
---@param source string
---@param opts? {ref?: string, as?: string}
---@return string name, table entry
function M.add(source, opts)
  opts = opts or {}
  local lock = M.read_lock()
  local src = absolute_source(source)
  local name, e = lock_one(src, opts.ref, opts.as)
  local old = lock.packs[name]
  if old and old.source ~= src then
    fail("a pack '%s' from %s is already locked; remove it first (`ephrun pack remove %s`) or add this one "
      .. "`--as` another name", name, old.source, name)
  end
  if old and old.commit ~= e.commit then
    fail("pack '%s' is locked at %s; `ephrun pack update %s` moves the pin (add never does)", name, old.commit, name)
  end
  lock.packs[name] = e
  write_lock(lock)
  return name, e
end

--- `ephrun pack update [NAME]`: fetches each pack's source again at its ref
--- (or `ref` when given) and moves its pin. Returns {name = {old, new}}.
---@param name? string
---@param ref? string
---@return table<string, string[]>
function M.update(name, ref)
  local lock = M.read_lock()
  local names = {}
  if name then
    if not lock.packs[name] then fail("no pack '%s' in %s", name, M.lock_path()) end
    names[1] = name
  else
    for n in pairs(lock.packs) do names[#names + 1] = n end
    table.sort(names)
    if ref then fail("--ref needs a pack name: `ephrun pack update NAME --ref REF`") end
  end
  local moved = {}
  for _, n in ipairs(names) do
    local old = lock.packs[n]
    local _, e = lock_one(old.source, ref or old.ref, n)
    lock.packs[n] = e
    moved[n] = { old.commit, e.commit }
  end
  write_lock(lock)
  return moved
end

--- `ephrun pack remove NAME`: drops the pin and the pack's checkouts.
---@param name string
function M.remove(name)
  local lock = M.read_lock()
  if not lock.packs[name] then fail("no pack '%s' in %s", name, M.lock_path()) end
  lock.packs[name] = nil
  write_lock(lock)
  fs.remove(fs.join(M.dir(), name), { recursive = true })
end

--- `ephrun pack verify`: every locked pack is checked out (fetched at its
--- pinned commit when missing) and matches its hashes. Returns
--- {name, ok, message} rows.
---@return table[]
function M.verify()
  local lock = M.read_lock()
  local names, rows = {}, {}
  for n in pairs(lock.packs) do names[#names + 1] = n end
  table.sort(names)
  for _, n in ipairs(names) do
    local e = lock.packs[n]
    local ok, err = pcall(function()
      if not fs.exists(checkout_dir(n, e.commit)) then
        local work, commit = fetch(e.source, e.commit:match("^dir%-") and nil or e.commit)
        if commit ~= e.commit then
          fail("pack '%s': %s now gives %s, not the locked %s; `ephrun pack update %s` moves the pin", n,
            e.source, commit, e.commit, n)
        end
        install(work, n, commit, e.files)
      end
      M.checkout(n)
    end)
    rows[#rows + 1] = { name = n, ok = ok, message = ok and "ok" or tostring(err), entry = e }
  end
  return rows
end

return M
