local ephrun = require "ephrun"
local spec = require "ephrun.spec"
local it, eq, ok, raises, contains = spec.it, spec.eq, spec.ok, spec.raises, spec.contains
local fs, proc = ephrun.fs, ephrun.proc

local self_exe = assert(fs.realpath("/proc/self/exe"))

it("write, read, append and stat", function()
  local d = fs.tempdir("fs-spec-")
  local p = fs.join(d, "a.txt")
  eq(fs.write(p, "hello\n"), true)
  eq(fs.read(p), "hello\n")
  eq(fs.append(p, "world\n"), true)
  eq(fs.read(p), "hello\nworld\n")
  local st = fs.stat(p)
  eq(st.type, "file"); eq(st.size, 12); eq(st.perm, "0644"); eq(st.mode, 420)
  ok(math.abs(st.mtime - ephrun.time.now()) < 60)
  eq(fs.stat(d).type, "dir")
  local binary = "\0\1\2\255"
  fs.write(p, binary)
  eq(fs.read(p), binary)
end)

it("write is atomic: a temporary file renamed over the target, with the mode asked for", function()
  local d = fs.tempdir("fs-spec-")
  local p = fs.join(d, "secret.env")
  fs.write(p, "old")
  fs.write(p, "TOKEN=x\n", { mode = "0600" })
  eq(fs.read(p), "TOKEN=x\n")
  eq(fs.stat(p).perm, "0600")
  eq(fs.list(d), { "secret.env" }) -- no temporary file left beside it
  fs.write(p, "plain", { atomic = false, mode = "0640" })
  eq(fs.stat(p).perm, "0640")
  -- a reader never sees a partial file: the inode changes on every atomic write
  local before = proc.run({ "stat", "-c", "%i", p }, { stream = false }).stdout
  fs.write(p, string.rep("x", 1 << 20))
  local after = proc.run({ "stat", "-c", "%i", p }, { stream = false }).stdout
  ok(before ~= after, "a new inode was renamed in")
  raises(function() fs.write(p, "x", { mode = "0999" }) end, "not an octal mode")
end)

it("write{exclusive=true} creates only: an existing target is left alone with EEXIST", function()
  local d = fs.tempdir("fs-spec-")
  local p = fs.join(d, "holder.json")
  eq(fs.write(p, "first", { exclusive = true, mode = "0600" }), true)
  eq(fs.stat(p).perm, "0600")
  local v, err, code = fs.write(p, "second", { exclusive = true })
  eq(v, nil); contains(err, p); eq(code, "EEXIST")
  eq(fs.read(p), "first")
  eq(fs.list(d), { "holder.json" }) -- the losing temporary file is gone too
  raises(function() fs.write(p, "x", { exclusive = true, atomic = false }) end, "needs atomic=true")
end)

it("expected failures return nil, message, code", function()
  local v, err, code = fs.read("/no/such/file")
  eq(v, nil); contains(err, "/no/such/file"); eq(code, "ENOENT")
  local w, werr = fs.write("/no/such/dir/x", "x")
  eq(w, nil); contains(werr, "/no/such/dir")
  eq(fs.stat("/no/such"), nil)
  eq(fs.list("/no/such"), nil)
  eq(fs.realpath("/no/such"), nil)
end)

it("mkdir_p, exists, list, remove", function()
  local d = fs.tempdir("fs-spec-")
  local deep = fs.join(d, "a/b/c")
  eq(fs.mkdir_p(deep), true)
  eq(fs.mkdir_p(deep), true) -- again: fine
  ok(fs.exists(deep))
  fs.write(fs.join(deep, "f"), "1")
  fs.write(fs.join(d, "a/z"), "2")
  eq(fs.list(fs.join(d, "a")), { "b", "z" })
  local r, err = fs.remove(fs.join(d, "a"))
  eq(r, nil); contains(err, "not empty")
  eq(fs.remove(fs.join(d, "a"), { recursive = true }), true)
  ok(not fs.exists(fs.join(d, "a")))
  eq(fs.remove(fs.join(d, "missing")), true) -- removing what is gone succeeds
  local f = fs.join(d, "file")
  fs.write(f, "x")
  local m, merr = fs.mkdir_p(fs.join(f, "sub"))
  eq(m, nil); ok(merr)
end)

it("remove recursive does not follow symlinks out of the tree", function()
  local d = fs.tempdir("fs-spec-")
  local outside = fs.tempdir("fs-spec-outside-")
  fs.write(fs.join(outside, "keep"), "x")
  fs.mkdir_p(fs.join(d, "t"))
  proc.run({ "ln", "-s", outside, fs.join(d, "t/link") })
  eq(fs.stat(fs.join(d, "t/link")).type, "link")
  eq(fs.stat(fs.join(d, "t/link"), { follow = true }).type, "dir")
  fs.remove(fs.join(d, "t"), { recursive = true })
  eq(fs.read(fs.join(outside, "keep")), "x")
end)

it("glob with *, ?, [..] and **", function()
  local d = fs.tempdir("fs-spec-")
  for _, f in ipairs({ "a.lua", "b.lua", "c.txt", "ab.lua", ".hidden.lua", "src/x.lua", "src/deep/y.lua", "src/deep/z.txt" }) do
    fs.mkdir_p(fs.dirname(fs.join(d, f)))
    fs.write(fs.join(d, f), f)
  end
  local function rel(list)
    local out = {}
    for i, p in ipairs(list) do out[i] = p:sub(#d + 2) end
    return out
  end
  eq(rel(fs.glob(d .. "/*.lua")), { "a.lua", "ab.lua", "b.lua" })
  eq(rel(fs.glob(d .. "/?.lua")), { "a.lua", "b.lua" })
  eq(rel(fs.glob(d .. "/[ac]*")), { "a.lua", "ab.lua", "c.txt" })
  eq(rel(fs.glob(d .. "/**/*.lua")), { "a.lua", "ab.lua", "b.lua", "src/deep/y.lua", "src/x.lua" })
  eq(rel(fs.glob(d .. "/src/**")), { "src", "src/deep" })
  eq(rel(fs.glob(d .. "/*/deep/*.txt")), { "src/deep/z.txt" })
  eq(fs.glob(d .. "/nothing*"), {})
  eq(fs.glob(d .. "/a.lua"), { d .. "/a.lua" })
end)

it("hash matches sha256sum, and hash_string agrees", function()
  local d = fs.tempdir("fs-spec-")
  local p = fs.join(d, "blob")
  local chunk = {}
  for i = 1, 4096 do chunk[i] = string.char(i % 251) end
  fs.write(p, string.rep(table.concat(chunk), 700)) -- ~2.8 MiB, several read chunks
  local want = proc.run({ "sha256sum", p }, { stream = false }).stdout:match("^(%x+)")
  eq(fs.hash(p), want)
  eq(fs.hash(p, "sha256"), want)
  eq(fs.hash_string(fs.read(p)), want)
  eq(fs.hash_string("abc", "sha1"), "a9993e364706816aba3e25717850c26c9cd0d89d")
  eq(fs.hash_string("", "md5"), "d41d8cd98f00b204e9800998ecf8427e")
  local none, err = fs.hash(fs.join(d, "missing"))
  eq(none, nil); contains(err, "missing")
  raises(function() fs.hash(p, "nope") end, "unknown hash algorithm")
end)

it("base64 round-trips binary data and matches RFC 4648's vectors", function()
  local vectors = { [""] = "", f = "Zg==", fo = "Zm8=", foo = "Zm9v", foob = "Zm9vYg==", fooba = "Zm9vYmE=",
    foobar = "Zm9vYmFy" }
  for plain, coded in pairs(vectors) do
    eq(fs.base64_encode(plain), coded)
    eq(fs.base64_decode(coded), plain)
  end
  local bin = "\0\1\2\255\254" .. ("x"):rep(100)
  eq(fs.base64_decode(fs.base64_encode(bin)), bin)
  eq(fs.base64_decode("Zm9v\nYmFy\n"), "foobar")
  local v, err = fs.base64_decode("Zm9")
  eq(v, nil); eq(err, "not valid base64")
  eq(fs.base64_decode("Zm9*"), nil)
end)

it("chmod and realpath", function()
  local d = fs.tempdir("fs-spec-")
  local p = fs.join(d, "run.sh")
  fs.write(p, "#!/bin/sh\necho ran\n")
  eq(fs.chmod(p, "0755"), true)
  eq(fs.stat(p).perm, "0755")
  eq(proc.run({ p }, { stream = false }).stdout, "ran\n")
  eq(fs.realpath(fs.join(d, "../" .. fs.basename(d) .. "/run.sh")), fs.realpath(p))
end)

it("basename, dirname, join", function()
  eq(fs.basename("/a/b/c.txt"), "c.txt")
  eq(fs.basename("/a/b/"), "b")
  eq(fs.basename("/"), "/")
  eq(fs.basename("x"), "x")
  eq(fs.dirname("/a/b/c.txt"), "/a/b")
  eq(fs.dirname("/a"), "/")
  eq(fs.dirname("a"), ".")
  eq(fs.dirname("a/b//"), "a")
  eq(fs.join("a", "b", "c"), "a/b/c")
  eq(fs.join("/a/", "/b"), "/a/b")
  eq(fs.join("a", "", "b"), "a/b")
end)

-- Runs a recipe in a child ephrun; returns its result.
local function run_recipe(src, args)
  local d = fs.tempdir("fs-spec-recipe-")
  local path = fs.join(d, "r.lua")
  fs.write(path, src)
  local argv = { self_exe }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
  argv[#argv + 1] = path
  return proc.run(argv, { stream = false, check = false })
end

it("tempdir is removed when the run ends (unless keep=true)", function()
  local r = run_recipe([[
    local ephrun = require "ephrun"
    return ephrun.recipe { name = "tmp", run = function()
      local t = ephrun.fs.tempdir("fs-spec-child-")
      ephrun.fs.write(t .. "/f", "x")
      ephrun.fs.mkdir_p(t .. "/sub/dir")
      local k = ephrun.fs.tempdir("fs-spec-kept-", { keep = true })
      io.stdout:write(t, "\n", k, "\n")
    end }
  ]])
  eq(r.code, 0, r.stderr)
  local t, k = r.stdout:match("([^\n]+)\n([^\n]+)\n")
  ok(t and t:find("fs%-spec%-child%-"), r.stdout)
  ok(not fs.exists(t), t .. " was removed")
  ok(fs.exists(k), "kept")
  fs.remove(k, { recursive = true })
end)

it("under --dry-run writes are planned, not done, and reads still work", function()
  local target = fs.join(fs.tempdir("fs-spec-dry-"), "out.txt")
  local r = run_recipe(([[
    local ephrun = require "ephrun"
    return ephrun.recipe { name = "dry", run = function()
      assert(ephrun.fs.write(%q, "x"))
      assert(ephrun.fs.mkdir_p(%q .. ".d"))
      assert(ephrun.fs.read("/proc/self/status"))
      local t = ephrun.fs.tempdir("fs-spec-dry-")
      assert(not ephrun.fs.exists(t), "placeholder path does not exist")
    end }
  ]]):format(target, target), { "--dry-run" })
  eq(r.code, 0, r.stderr)
  ok(not fs.exists(target))
  ok(not fs.exists(target .. ".d"))
  contains(r.stdout .. r.stderr, target)
end)

return spec.recipe("fs")
