local ephrun = require "ephrun"
local spec = require "ephrun.spec"
local params = require "ephrun.params"
local core = require "ephrun._core"
local it, eq, raises = spec.it, spec.eq, spec.raises

local function recipe(p)
  return ephrun.recipe { name = "x", run = function() end, params = p }
end

it("numbers are strict decimals and finite", function()
  local r = recipe { n = { type = "number", default = 1, min = -100 } }
  for _, good in ipairs { "5", "-3", "2.5", ".5", "1e3", "-1.5E1" } do
    local p = assert(params.bind(r, { "n=" .. good }))
    eq(p.n, tonumber(good))
  end
  for _, bad in ipairs { "0x10", " 5", "5 ", "1e999", "-1e999", "nan", "inf", "1,5", "" } do
    local p, err = params.bind(r, { "n=" .. bad })
    eq(p, nil, bad)
    spec.contains(err, "parameter 'n' expects a number")
  end
end)

it("ranges: positive by default, zero when the default is zero, explicit min/max", function()
  local r = recipe {
    d = { type = "duration", default = "5m" },
    z = { type = "number", default = 0 },
    zs = { type = "duration", default = "0s" },
    m = { type = "duration", default = "10m", min = "1m", max = "1h" },
  }
  eq(select(2, params.bind(r, { "d=0s" })), "parameter 'd' must be more than 0s, got \"0s\"")
  spec.contains(select(2, params.bind(r, { "d=100000000000000000000s" })), "must be at most 3650d")
  eq(assert(params.bind(r, { "z=0", "zs=0s" })).z, 0)
  spec.contains(select(2, params.bind(r, { "z=-1" })), "parameter 'z' must be at least 0")
  spec.contains(select(2, params.bind(r, { "m=59s" })), "parameter 'm' must be at least 1m 00s")
  spec.contains(select(2, params.bind(r, { "m=2h" })), "parameter 'm' must be at most 1h 00m")
  eq(assert(params.bind(r, { "m=1h" })).m, 3600)
end)

it("bad specs raise at the recipe's line", function()
  raises(function() recipe { c = { default = "a", choices = "abc" } } end, "choices must be a list")
  raises(function() recipe { n = { default = 5, max = 3 } } end, "the default 5 is outside its range")
  raises(function() recipe { n = { default = 5, min = 6, max = 3 } } end, "min is larger than max")
  raises(function() recipe { s = { default = "x", min = 1 } } end, "min and max apply to number and duration")
  raises(function() recipe { t = { type = "secret", default = "hunter22" } } end, "a secret's default must be")
  local ok, err = pcall(function() recipe { c = { choices = 1 } } end)
  eq(ok, false)
  spec.contains(err, "params_spec.lua:")
end)

it("every problem is reported at once", function()
  local r = recipe { a = { required = true }, b = { required = true }, n = { default = 1 } }
  local p, err, errs = params.bind(r, { "n=x", "zz=1" })
  eq(p, nil)
  eq(#errs, 4, err)
  spec.contains(err, "missing required parameter 'a'")
  spec.contains(err, "missing required parameter 'b'")
end)

it("secrets come from @env: and @file:, are registered, and are hidden in the canonical text", function()
  local dir = assert(ephrun.fs.tempdir("params-spec"))
  local file = dir .. "/tok"
  local f = assert(io.open(file, "w"))
  f:write("file-secret-value\n")
  f:close()
  local r = recipe { token = { type = "secret", required = true }, region = { default = "ewr" } }
  local p = assert(params.bind(r, { "token=@file:" .. file }))
  eq(p.token, "file-secret-value")
  eq(core.redact("x file-secret-value y"), "x <secret:token> y")
  eq(params.canonical(p, r.params), "region=ewr\ntoken=<secret:token>")
  local home = os.getenv("HOME")
  eq(assert(params.bind(r, { "token=@env:HOME" })).token, home)
  spec.contains(select(2, params.bind(r, { "token=@env:NO_SUCH_VAR_4711" })), "NO_SUCH_VAR_4711 is not set")
  spec.contains(select(2, params.bind(r, { "token=@file:" .. dir })), "is not a regular file")
  spec.contains(select(2, params.bind(r, { "token=@flie:x" })), "unknown source '@flie:'")
  ephrun.fs.remove(dir, { recursive = true })
end)

it("help survives long defaults and shows secrets' sources", function()
  local r = recipe {
    cmd = { default = ("y"):rep(150) },
    token = { type = "secret", default = "@env:TOK" },
  }
  local h = params.help(r, "my-recipe")
  spec.contains(h, ("y"):rep(150))
  spec.contains(h, "Usage: ephrun my-recipe")
  spec.contains(h, "default: @env:TOK")
end)

return spec.recipe("params")
