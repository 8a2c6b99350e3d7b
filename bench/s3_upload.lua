-- One upload with ephrun.s3 for bench/s3_upload.py: prints the seconds it took
-- (the multipart upload, the whole-file SHA-256 and the verification included).
local ephrun = require "ephrun"

return ephrun.recipe {
  name = "s3-upload-bench",
  summary = "Upload one file to S3 with ephrun.s3 and print how long it took",
  params = {
    file = { required = true },
    url = { required = true, doc = "s3://bucket/key" },
    part_mib = { type = "number", default = 16 },
    parallel = { type = "number", default = 4 },
  },
  run = function(p)
    local s3 = require "ephrun.s3"
    local bucket, key = s3.parse_url(p.url)
    local t0 = ephrun.time.monotonic()
    local r = s3.bucket(bucket):put(key, { file = p.file },
      { part_size = math.floor(p.part_mib * 1048576), parallel = math.floor(p.parallel) })
    io.stdout:write(("UPLOAD seconds=%.3f size=%d parts=%d sha256=%s\n")
      :format(ephrun.time.monotonic() - t0, r.size, r.parts, r.sha256))
  end,
}
