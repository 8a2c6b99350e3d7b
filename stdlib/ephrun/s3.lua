--- S3 objects for recipes: put (multipart in parallel tasks above a threshold),
--- get (streamed to a file), head, list, delete, each checked end to end with
--- SHA-256. Requests are signed by `ephrun.aws` sessions.
---
--- ```lua
--- local b = require("ephrun.s3").bucket("team-artifacts")
--- local r = b:put("prewarmed/42/build.ova", { file = "out/build.ova" })
--- print(r.size, r.sha256, r.parts)
--- ```
---
--- Every part and every single put carries `x-amz-checksum-sha256` (and a single
--- put `Content-MD5`), so S3 refuses a corrupted body; after the upload the
--- object's size, ETag and checksum are read back and compared. The whole
--- object's SHA-256 (hex) is also stored as the metadata `ephrun-sha256`, which
--- `get` checks the downloaded file against.
local ephrun = require "ephrun"
local aws = require "ephrun.aws"

---@class ephrun.s3
local M = {}

local MiB = 1024 * 1024
M.MIN_PART = 5 * MiB          -- S3's smallest part (all but the last)
M.DEFAULT_PART = 16 * MiB
M.MAX_PARTS = 10000
M.DEFAULT_PARALLEL = 4
M.SHA256_META = "ephrun-sha256"

local human = require("ephrun.ssh").human_bytes

---------------------------------------------------------------------- helpers

local function hex_to_bin(hex)
  return (hex:gsub("..", function(h) return string.char(tonumber(h, 16)) end))
end

local function b64_of_hex(hex)
  return ephrun.fs.base64_encode(hex_to_bin(hex))
end

-- The checksum of a multipart object: SHA-256 over the parts' binary digests.
local function composite(digests)
  return b64_of_hex(ephrun.fs.hash_string(table.concat(digests), "sha256"))
end

local function unquote(etag)
  return (tostring(etag or ""):gsub('"', ""))
end

--- Splits `s3://bucket/key` into bucket and key (the key may be empty:
--- `s3://bucket/` or `s3://bucket`). Raises for anything else.
---@param url string
---@return string bucket, string key
function M.parse_url(url)
  local bucket, key = tostring(url):match("^s3://([^/]+)/?(.*)$")
  if not bucket or not bucket:match("^[%w][%w.%-_]*$") then
    error(("not an S3 URL: %q (write s3://BUCKET/KEY)"):format(tostring(url)), 2)
  end
  return bucket, key
end

---------------------------------------------------------------------- bucket

---@class ephrun.s3.BucketOpts
---@field session? ephrun.aws.Session default `aws.session{region = region}`
---@field region? string the bucket's region (default the session's)

---@class ephrun.s3.Bucket
---@field name string
---@field session ephrun.aws.Session
local Bucket = {}
Bucket.__index = Bucket

--- A handle on bucket `name` (nothing is sent until it is used).
---@param name string
---@param opts? ephrun.s3.BucketOpts
---@return ephrun.s3.Bucket
function M.bucket(name, opts)
  if type(name) ~= "string" or not name:match("^[%w][%w.%-_]*$") then
    error(("ephrun.s3.bucket: %q is not a bucket name"):format(tostring(name)), 2)
  end
  opts = opts or {}
  local session = opts.session or aws.session { region = opts.region }
  return setmetatable({ name = name, session = session, region = opts.session and opts.region or nil }, Bucket)
end

--- `s3://bucket/key`.
---@param key? string
---@return string
function Bucket:url(key)
  return ("s3://%s/%s"):format(self.name, key or "")
end

local function check_key(key, level)
  if type(key) ~= "string" or key == "" then
    error("ephrun.s3: an object key must be a non-empty string", level + 1)
  end
end

-- One signed request on `key` of this bucket. Returns the response; a
-- non-2xx status (other than those in `ok`) raises an ephrun.aws.Error whose
-- message names the method and the object.
local function call(self, method, key, o)
  o = o or {}
  local req = {}
  for k, v in pairs(o) do if k ~= "ok" then req[k] = v end end
  req.method = method
  req.region = self.region
  req.path = "/" .. aws.uri_encode(self.name) .. ((key and key ~= "") and ("/" .. aws.uri_encode(key, true)) or "")
  local what = ("%s %s"):format(method, self:url(key))
  local resp, err = self.session:request("s3", req)
  if not resp then
    error(aws.error("ConnectionError", ("%s: %s"):format(what, tostring(err)), { service = "s3", action = method }), 0)
  end
  if resp.dry_run or resp.ok or (o.ok and o.ok[resp.status]) then return resp end
  local e = aws.response_error(resp, { service = "s3", action = what })
  e.message = what .. ": " .. e.message
  error(e, 0)
end

-- A verification failure: structured, never retried.
local function mismatch(url, what)
  return aws.error("ChecksumMismatch", ("%s: %s"):format(url, what), { kind = "invalid", retry = false, service = "s3" })
end

local function metadata_headers(headers, metadata)
  for k, v in pairs(metadata or {}) do
    if type(k) ~= "string" or not k:match("^[%w%-_]+$") then
      error(("ephrun.s3: metadata key %q must be letters, digits, '-' or '_'"):format(tostring(k)), 4)
    end
    headers["x-amz-meta-" .. k:lower()] = tostring(v)
  end
end

---@class ephrun.s3.Object
---@field key string
---@field size integer bytes
---@field etag string without quotes
---@field sha256? string hex SHA-256 of the whole object (the `ephrun-sha256` metadata), when it was stored by ephrun
---@field checksum_sha256? string S3's checksum as it reports it (base64; a multipart object's ends in `-N`)
---@field content_type? string
---@field last_modified? string
---@field metadata table<string, string> the `x-amz-meta-*` values, by name

local function object_of(key, resp)
  local h = resp.headers or {}
  local meta = {}
  for k, v in pairs(h) do
    local name = k:match("^x%-amz%-meta%-(.+)$")
    if name then meta[name] = v end
  end
  return {
    key = key, size = math.tointeger(tonumber(h["content-length"])) or 0, etag = unquote(h.etag),
    sha256 = meta[M.SHA256_META], checksum_sha256 = h["x-amz-checksum-sha256"], content_type = h["content-type"],
    last_modified = h["last-modified"], metadata = meta,
  }
end

--- The object's size, ETag, checksum and metadata, or nil when there is none.
---@param key string
---@return ephrun.s3.Object|nil
function Bucket:head(key)
  check_key(key, 2)
  local resp = call(self, "HEAD", key, { headers = { ["x-amz-checksum-mode"] = "ENABLED" }, ok = { [404] = true } })
  if resp.status == 404 then return nil end
  return object_of(key, resp)
end

-- After an upload: the object S3 now holds is the one we sent. `want` has
-- size, etag, and checksum (base64; "-N" for N parts) and, for a single
-- put, md5 (hex).
local function verify(self, key, want)
  local url = self:url(key)
  local got = self:head(key)
  if not got then error(mismatch(url, "the object is not there after its upload"), 0) end
  if got.size ~= want.size then
    error(mismatch(url, ("S3 holds %d bytes, %d were sent"):format(got.size, want.size)), 0)
  end
  if want.etag and got.etag ~= want.etag then
    error(mismatch(url, ("its ETag is %s, the upload answered %s (was it overwritten meanwhile?)")
      :format(got.etag, want.etag)), 0)
  end
  local cs = got.checksum_sha256
  if cs then
    -- HeadObject gives a multipart checksum with its "-N"; some stores leave it off.
    local want_cs = want.checksum
    if cs ~= want_cs and cs ~= (want_cs:gsub("%-%d+$", "")) then
      error(mismatch(url, ("its SHA-256 checksum is %s, ours is %s"):format(cs, want_cs)), 0)
    end
  end
  -- A single put's ETag is the MD5 of the body, except under SSE-KMS.
  if want.md5 and want.sse ~= "aws:kms" and got.etag ~= want.md5 then
    error(mismatch(url, ("its ETag (MD5) is %s, ours is %s"):format(got.etag, want.md5)), 0)
  end
  if want.parts > 1 and not got.etag:match("%-" .. want.parts .. "$") then
    error(mismatch(url, ("its ETag %s does not say %d parts"):format(got.etag, want.parts)), 0)
  end
  return got
end

local function base_headers(opts, sha_hex)
  local headers = { ["Content-Type"] = opts.content_type or "application/octet-stream" }
  metadata_headers(headers, opts.metadata)
  if sha_hex then headers["x-amz-meta-" .. M.SHA256_META] = sha_hex end
  return headers
end

local function put_single(self, key, body, opts)
  local sha = ephrun.fs.hash_string(body, "sha256")
  local md5 = ephrun.fs.hash_string(body, "md5")
  local headers = base_headers(opts, sha)
  headers["x-amz-content-sha256"] = sha
  headers["x-amz-checksum-sha256"] = b64_of_hex(sha)
  headers["x-amz-sdk-checksum-algorithm"] = "SHA256"
  headers["Content-MD5"] = b64_of_hex(md5)
  local resp = call(self, "PUT", key, { body = body, headers = headers, timeout = 600 })
  local etag = unquote(resp.headers.etag)
  local echoed = resp.headers["x-amz-checksum-sha256"]
  if echoed and echoed ~= headers["x-amz-checksum-sha256"] then
    error(mismatch(self:url(key), ("S3 computed SHA-256 %s, ours is %s"):format(echoed, headers["x-amz-checksum-sha256"])), 0)
  end
  verify(self, key, { size = #body, etag = etag, checksum = headers["x-amz-checksum-sha256"], md5 = md5, parts = 1,
    sse = resp.headers["x-amz-server-side-encryption"] })
  return { key = key, size = #body, sha256 = sha, etag = etag, parts = 1 }
end

---@class ephrun.s3.Upload
---@field key string
---@field upload_id string
---@field initiated string

--- Multipart uploads in progress under `prefix` (not completed, not aborted).
---@param prefix? string
---@return ephrun.s3.Upload[]
function Bucket:uploads(prefix)
  local out, marker_key, marker_id = {}, nil, nil
  repeat
    local q = { uploads = "", prefix = prefix or "" }
    if marker_key then q["key-marker"], q["upload-id-marker"] = marker_key, marker_id end
    local resp = call(self, "GET", nil, { query = q })
    if resp.dry_run then return out end
    local v = ephrun.xml.decode(resp.body, { arrays = { "Upload" } }) or {}
    for _, u in ipairs(v.Upload or {}) do
      out[#out + 1] = { key = u.Key, upload_id = u.UploadId, initiated = u.Initiated }
    end
    local more = v.IsTruncated == "true"
    marker_key, marker_id = v.NextKeyMarker, v.NextUploadIdMarker
  until not more or not marker_key
  return out
end

--- Aborts a multipart upload (its parts stop being billed); one already gone is fine.
---@param key string
---@param upload_id string
function Bucket:abort(key, upload_id)
  check_key(key, 2)
  call(self, "DELETE", key, { query = { uploadId = upload_id }, ok = { [404] = true } })
end

-- The multipart upload's undo, on the cleanup stack before CreateMultipartUpload
-- is sent: it aborts the upload, and if the create's reply never came (so its
-- id is unknown) every upload of this key: a stray upload is billed until
-- aborted, and another writer of the very same key loses only its attempt.
local function abort_guard(self, key, state)
  return ephrun.defer(function()
    if state.id then
      self:abort(key, state.id)
      return
    end
    if not state.sent then return end
    for _, u in ipairs(self:uploads(key)) do
      if u.key == key then self:abort(key, u.upload_id) end
    end
  end, "abort the multipart upload of " .. self:url(key),
    ("aws s3api list-multipart-uploads --bucket %s --prefix %s, then aws s3api abort-multipart-upload --bucket %s "
      .. "--key %s --upload-id ID"):format(self.name, key, self.name, key))
end

local function read_part(path, offset, len)
  local f, err = io.open(path, "rb")
  if not f then error(("ephrun.s3: cannot read %s: %s"):format(path, err), 0) end
  f:seek("set", offset)
  local data = f:read(len) or ""
  f:close()
  if #data ~= len then
    error(("ephrun.s3: %s changed during the upload (short read at offset %d)"):format(path, offset), 0)
  end
  return data
end

local function part_size_for(size, opts)
  local ps = opts.part_size or M.DEFAULT_PART
  if ps < M.MIN_PART then
    error(("ephrun.s3: part_size %d is below S3's minimum of 5 MiB"):format(ps), 4)
  end
  -- S3 allows 10,000 parts: a bigger object gets bigger parts (whole MiB).
  if size > ps * M.MAX_PARTS then ps = ((size + M.MAX_PARTS - 1) // M.MAX_PARTS + MiB - 1) // MiB * MiB end
  return math.tointeger(ps)
end

local function upload_part(self, key, id, path, n, ps, size)
  local offset = (n - 1) * ps
  local len = math.min(ps, size - offset)
  local data = read_part(path, offset, len)
  local sha = ephrun.fs.hash_string(data, "sha256")
  local cs = b64_of_hex(sha)
  local resp = call(self, "PUT", key, {
    query = { partNumber = n, uploadId = id }, body = data, timeout = 600, deadline = 1800,
    headers = { ["x-amz-content-sha256"] = sha, ["x-amz-checksum-sha256"] = cs, ["x-amz-sdk-checksum-algorithm"] = "SHA256" },
  })
  local echoed = resp.headers["x-amz-checksum-sha256"]
  if echoed and echoed ~= cs then
    error(mismatch(self:url(key), ("part %d: S3 computed SHA-256 %s, ours is %s"):format(n, echoed, cs)), 0)
  end
  return { n = n, etag = resp.headers.etag, checksum = cs, digest = hex_to_bin(sha), len = len }
end

local function put_multipart(self, key, path, size, opts)
  local url = self:url(key)
  local ps = part_size_for(size, opts)
  local nparts = (size + ps - 1) // ps
  -- Our own SHA-256 of the whole file, off the Lua thread; stored as metadata for `get`.
  local sha, herr = ephrun.fs.hash(path, "sha256")
  if not sha then error(("ephrun.s3: cannot read %s: %s"):format(path, herr), 0) end
  local headers = base_headers(opts, sha)
  headers["x-amz-checksum-algorithm"] = "SHA256"
  local state = {}
  local guard <close> = abort_guard(self, key, state)
  state.sent = true
  local resp = call(self, "POST", key, { query = { uploads = "" }, body = "", headers = headers })
  local v = ephrun.xml.decode(resp.body) or {}
  state.id = v.UploadId
  if type(state.id) ~= "string" then
    error(aws.error("MalformedResponse", url .. ": CreateMultipartUpload answered without an UploadId",
      { kind = "server", retry = false, service = "s3" }), 0)
  end
  ephrun.log.info(("s3: uploading %s to %s in %d parts of %s, %d at a time"):format(human(size), url, nparts,
    human(ps), opts.parallel or M.DEFAULT_PARALLEL))
  local numbers = {}
  for i = 1, nparts do numbers[i] = i end
  local sent, next_report = 0, size // 10
  local parts = ephrun.parallel(numbers, function(n)
    local r = upload_part(self, key, state.id, path, n, ps, size)
    sent = sent + r.len
    if sent >= next_report and sent < size then
      next_report = next_report + size // 10
      ephrun.log.info(("s3: %s of %s sent to %s"):format(human(sent), human(size), url))
    end
    return r
  end, { limit = opts.parallel or M.DEFAULT_PARALLEL, name = "s3 part" })

  local list, digests = {}, {}
  for i, p in ipairs(parts) do
    list[i] = { PartNumber = p.n, ETag = p.etag, ChecksumSHA256 = p.checksum }
    digests[i] = p.digest
  end
  local body = ephrun.xml.encode({ Part = list }, "CompleteMultipartUpload")
  local ok, done = pcall(call, self, "POST", key, { query = { uploadId = state.id }, body = body, retry = true,
    headers = { ["Content-Type"] = "application/xml" }, timeout = 600 })
  local etag
  if ok then
    -- S3 may answer 200 and put the error in the body.
    local cv, root = ephrun.xml.decode(done.body)
    if root == "Error" then
      local e = aws.response_error({ status = 500, body = done.body }, { service = "s3", action = "complete " .. url })
      e.message = "CompleteMultipartUpload " .. url .. ": " .. e.message
      error(e, 0)
    end
    etag = unquote(type(cv) == "table" and cv.ETag or "")
  elseif not (aws.is_error(done) and done.code == "NoSuchUpload") then
    error(done, 0)
  end
  -- NoSuchUpload on a retried complete: the first attempt completed it and its
  -- answer was lost; the object is checked below like any other.
  local want_cs = composite(digests) .. "-" .. nparts
  local got = verify(self, key, { size = size, etag = etag, checksum = want_cs, parts = nparts })
  guard:cancel()
  return { key = key, size = size, sha256 = sha, etag = got.etag, parts = nparts }
end

---@class ephrun.s3.PutOpts
---@field content_type? string default application/octet-stream
---@field part_size? integer bytes per part, at least 5 MiB (default 16 MiB; raised so no object needs more than 10,000 parts)
---@field multipart_threshold? integer files larger than this go in parts (default: part_size)
---@field parallel? integer parts in flight at once (default 4)
---@field metadata? table<string, string> stored as `x-amz-meta-NAME`

---@class ephrun.s3.PutResult
---@field key string
---@field size integer bytes
---@field sha256 string hex SHA-256 of the object
---@field etag string without quotes
---@field parts integer 1 for a single put
---@field dry_run? boolean set on the --dry-run placeholder

--- Uploads `src` (`{file = path}` or `{body = string}`) to `key` and checks
--- it (size, ETag, SHA-256 checksum). A file larger than the threshold goes as
--- a multipart upload whose parts are sent by parallel tasks; a failure or a
--- cancel aborts the upload (its cleanup is registered before it is created).
--- An effect: under --dry-run a plan step ("upload N bytes to s3://...") and
--- a placeholder result.
---@param key string
---@param src {file?: string, body?: string}
---@param opts? ephrun.s3.PutOpts
---@return ephrun.s3.PutResult
function Bucket:put(key, src, opts)
  check_key(key, 2)
  if type(src) ~= "table" or (src.file == nil) == (src.body == nil) then
    error("ephrun.s3: put needs {file = path} or {body = string} (one of them)", 2)
  end
  opts = opts or {}
  if type(opts) ~= "table" then error("ephrun.s3: put's options must be a table", 2) end
  local size = src.body and #src.body or nil
  if src.file then
    local st = ephrun.fs.stat(src.file, { follow = true })
    if st and st.type ~= "file" then error(("ephrun.s3: %s is not a regular file"):format(src.file), 2) end
    size = st and st.size or nil
  end
  local threshold = opts.multipart_threshold or opts.part_size or M.DEFAULT_PART
  local multipart = src.file ~= nil and size ~= nil and size > threshold
  local nparts = multipart and (size + part_size_for(size, opts) - 1) // part_size_for(size, opts) or 1
  local url = self:url(key)
  return ephrun.effect {
    kind = "upload",
    what = ("upload %s to %s"):format(size and human(size) or ("%s (not made yet)"):format(src.file), url),
    where = url,
    details = {
      src.file and ("from " .. src.file) or "from memory",
      multipart and ("multipart: %d parts, %d at a time"):format(nparts, opts.parallel or M.DEFAULT_PARALLEL)
        or size == nil and ("multipart if larger than %s"):format(human(threshold)) or "one request",
      "SHA-256 checksum on every request; size, ETag and checksum verified after upload",
    },
    run = function()
      if src.body then return put_single(self, key, src.body, opts) end
      local st, err = ephrun.fs.stat(src.file, { follow = true })
      if not st then error(("ephrun.s3: cannot upload %s: %s"):format(src.file, err), 0) end
      if st.size > threshold then return put_multipart(self, key, src.file, st.size, opts) end
      local body, rerr = ephrun.fs.read(src.file)
      if not body then error(("ephrun.s3: cannot read %s: %s"):format(src.file, rerr), 0) end
      return put_single(self, key, body, opts)
    end,
    placeholder = function()
      return { key = key, size = size or 0, sha256 = "", etag = "", parts = nparts, dry_run = true }
    end,
  }
end

---@class ephrun.s3.GetResult: ephrun.s3.Object
---@field body? string the content, when no file was given
---@field path? string the file written

--- Downloads `key`: into `opts.file` (streamed to disk, written beside it and
--- renamed into place) or into memory. The content's SHA-256 is checked
--- against the `ephrun-sha256` metadata or S3's whole-object checksum, and
--- its size against Content-Length; a mismatch removes the file and raises.
---@param key string
---@param opts? {file?: string}
---@return ephrun.s3.GetResult
function Bucket:get(key, opts)
  check_key(key, 2)
  opts = opts or {}
  local resp = call(self, "GET", key, { headers = { ["x-amz-checksum-mode"] = "ENABLED" }, download = opts.file,
    timeout = opts.file and 0 or 600 })
  local url = self:url(key)
  if resp.dry_run then return { key = key, size = 0, etag = "", metadata = {}, path = opts.file, body = "" } end
  local obj = object_of(key, resp)
  local sha, got_size
  if opts.file then
    local err
    sha, err = ephrun.fs.hash(opts.file, "sha256")
    if not sha then error(("ephrun.s3: cannot read back %s: %s"):format(opts.file, err), 0) end
    got_size = (ephrun.fs.stat(opts.file) or {}).size
    obj.path = opts.file
  else
    sha, got_size = ephrun.fs.hash_string(resp.body, "sha256"), #resp.body
    obj.body = resp.body
  end
  local function fail(what)
    if opts.file then ephrun.fs.remove(opts.file) end
    error(mismatch(url, what), 0)
  end
  if resp.headers["content-length"] and got_size ~= obj.size then
    fail(("%d bytes received, S3 said %d"):format(got_size or 0, obj.size))
  end
  obj.size = got_size
  if obj.sha256 and obj.sha256 ~= sha then
    fail(("the content's SHA-256 is %s, its %s metadata says %s"):format(sha, M.SHA256_META, obj.sha256))
  end
  local cs = obj.checksum_sha256
  if cs and not cs:match("%-%d+$") and cs ~= b64_of_hex(sha) and not obj.sha256 then
    fail(("the content's SHA-256 is %s, S3's checksum says %s"):format(b64_of_hex(sha), cs))
  end
  obj.sha256 = sha
  return obj
end

--- Objects whose key starts with `prefix`, in key order, every page read.
---@param prefix? string
---@param opts? {page_size?: integer} keys per ListObjectsV2 page (default S3's 1000)
---@return {key: string, size: integer, etag: string, last_modified: string}[]
function Bucket:list(prefix, opts)
  opts = opts or {}
  local out, token = {}, nil
  repeat
    local q = { ["list-type"] = "2", prefix = prefix or "", ["max-keys"] = opts.page_size }
    if token then q["continuation-token"] = token end
    local resp = call(self, "GET", nil, { query = q })
    if resp.dry_run then return out end
    local v = ephrun.xml.decode(resp.body, { arrays = { "Contents" } }) or {}
    for _, c in ipairs(type(v) == "table" and v.Contents or {}) do
      out[#out + 1] = { key = c.Key, size = math.tointeger(tonumber(c.Size)) or 0, etag = unquote(c.ETag),
        last_modified = c.LastModified }
    end
    token = v.IsTruncated == "true" and v.NextContinuationToken or nil
  until not token
  return out
end

--- Deletes `key` (an object that is not there is fine). An effect.
---@param key string
---@return boolean
function Bucket:delete(key)
  check_key(key, 2)
  call(self, "DELETE", key, { ok = { [404] = true } })
  return true
end

return M
