-- ephrun.packs without git: version requirements, the tree hash, pack.lua checks.
local ephrun = require "ephrun"
local spec = require "ephrun.spec"
local packs = require "ephrun.packs"
local it, eq, ok, raises = spec.it, spec.eq, spec.ok, spec.raises
local fs = ephrun.fs

it("version requirements: clauses, comparison by number, not by text", function()
  eq(packs.satisfies(">= 0.2", "0.2"), true)
  eq(packs.satisfies(">= 0.2", "0.10.0"), true)
  local met, clause = packs.satisfies(">= 0.2, < 1", "1.0.0")
  eq(met, false)
  eq(clause, "< 1")
  eq(packs.satisfies("= 0.1", "0.1.0"), true)
  eq(packs.satisfies(">= 0.2", "0.1.0"), false)
  raises(function() packs.satisfies("newer than 0.2", "0.1.0") end, "write clauses like")
end)

it("the tree hash is the sha256 of the sorted sha256sum listing, .git left out", function()
  local root = fs.tempdir("packs-spec-")
  fs.mkdir_p(fs.join(root, "b"))
  fs.mkdir_p(fs.join(root, ".git"))
  fs.write(fs.join(root, "b/x.lua"), "x")
  fs.write(fs.join(root, "a.lua"), "a")
  fs.write(fs.join(root, ".git/HEAD"), "ignored")
  local files, tree = packs.tree_hash(root)
  eq(files, { ["a.lua"] = fs.hash_string("a"), ["b/x.lua"] = fs.hash_string("x") })
  eq(tree, fs.hash_string(fs.hash_string("a") .. "  a.lua\n" .. fs.hash_string("x") .. "  b/x.lua\n"))
  fs.write(fs.join(root, "b/x.lua"), "y")
  raises(function() packs.verify_tree("t", root, files) end, "b/x.lua changed after it was locked")
end)

it("pack.lua runs without globals and must list files that exist", function()
  local root = fs.tempdir("packs-spec-")
  fs.write(fs.join(root, "pack.lua"), "os.exit(3)")
  raises(function() packs.manifest(root) end, "attempt to index a nil value")
  fs.write(fs.join(root, "pack.lua"), 'return { name = "t", recipes = { "gone" } }')
  raises(function() packs.manifest(root) end, "no recipes/gone.lua")
  fs.write(fs.join(root, "pack.lua"), 'return { name = "../up" }')
  raises(function() packs.manifest(root) end, "`name` must be a word")
  fs.write(fs.join(root, "pack.lua"), 'return { name = "t", version = "1.0" }')
  ok(packs.manifest(root).version == "1.0")
end)
return spec.recipe("packs")
