-- Drives ephrun.s3 for tests/integration/test_s3.py: one operation per run,
-- its result printed as one JSON line after "RESULT ".
local ephrun = require "ephrun"
local s3 = require "ephrun.s3"

return ephrun.recipe {
  name = "s3-ops",
  params = {
    op = { default = "put", choices = { "put", "body", "get", "head", "list", "delete", "parse" } },
    bucket = { default = "test-bucket" },
    key = { default = "k" },
    file = { default = "" },
    body = { default = "" },
    part_mib = { default = 5 },
    parallel = { default = 4 },
    page_size = { default = 0, min = 0 },
    url = { default = "s3://b/k" },
  },
  run = function(p)
    local b = s3.bucket(p.bucket)
    local out
    if p.op == "put" then
      out = b:put(p.key, { file = p.file }, { part_size = math.floor(p.part_mib * 1048576),
        parallel = math.floor(p.parallel), metadata = { build = "42" }, content_type = "application/x-test" })
    elseif p.op == "body" then
      out = b:put(p.key, { body = p.body })
    elseif p.op == "get" then
      out = b:get(p.key, p.file ~= "" and { file = p.file } or nil)
    elseif p.op == "head" then
      out = b:head(p.key) or { missing = true }
    elseif p.op == "list" then
      out = { keys = {} }
      for i, o in ipairs(b:list(p.key, { page_size = p.page_size > 0 and math.floor(p.page_size) or nil })) do
        out.keys[i] = o.key
      end
    elseif p.op == "delete" then
      out = { deleted = b:delete(p.key) }
    elseif p.op == "parse" then
      local bucket, key = s3.parse_url(p.url)
      out = { bucket = bucket, key = key }
    end
    ephrun.effect { kind = "report", what = "print the result", run = function()
      io.stdout:write("RESULT ", ephrun.json.encode(out), "\n")
    end }
  end,
}
