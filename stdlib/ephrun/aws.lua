--- AWS groundwork shared by everything that talks to AWS (the EC2 provider,
--- S3 artifact uploads, locks, the Scheduler timer): credentials through AWS's
--- own chain, region and endpoint resolution, SigV4-signed requests over
--- `ephrun.http`, and Query API calls (EC2, STS) whose XML replies become
--- tables and whose errors become structured `ephrun.aws.Error`s.
---
--- ```lua
--- local aws = require "ephrun.aws"
--- local s = aws.session()                   -- AWS_PROFILE, AWS_REGION, ... as the CLI reads them
--- local r = s:ec2("DescribeInstances", { Filter = { { Name = "tag:ephrun-run", Value = { id } } } })
--- ```
local ephrun = require "ephrun"
local core = require "ephrun._core"

---@class ephrun.aws
local M = {}

-- API versions of the Query services.
local VERSIONS = { ec2 = "2016-11-15", sts = "2011-06-15" }

-- Credentials are refreshed this long before they expire (botocore refreshes
-- 10–15 minutes early; a request signed just before expiry can still be
-- refused on arrival).
local REFRESH_MARGIN = 300

---------------------------------------------------------------------- errors

---@class ephrun.aws.Error
---@field kind "rate_limited"|"capacity"|"auth"|"not_found"|"locked"|"server"|"quota"|"conflict"|"invalid"
---@field retry boolean whether sending the same request again later can succeed
---@field code string AWS's error code, e.g. "InsufficientInstanceCapacity"
---@field message string AWS's message
---@field status? integer HTTP status (nil for a transport failure)
---@field service? string
---@field action? string
---@field request_id? string
local Error = {}
Error.__index = Error
Error.__tostring = function(e)
  return tostring(e.code) .. ": " .. tostring(e.message)
end

-- Exact codes first; then the suffix and prefix rules in `classify`.
local KINDS = {
  RequestLimitExceeded = "rate_limited", Throttling = "rate_limited", ThrottlingException = "rate_limited",
  ThrottledException = "rate_limited", RequestThrottled = "rate_limited", SlowDown = "rate_limited",
  TooManyRequestsException = "rate_limited", RequestThrottledException = "rate_limited",
  InsufficientInstanceCapacity = "capacity", InsufficientHostCapacity = "capacity",
  InsufficientReservedInstanceCapacity = "capacity", InsufficientCapacity = "capacity",
  InsufficientAddressCapacity = "capacity", InsufficientFreeAddressesInSubnet = "capacity",
  SpotMaxPriceTooLow = "capacity", Unsupported = "capacity",
  UnauthorizedOperation = "auth", AuthFailure = "auth", InvalidClientTokenId = "auth",
  SignatureDoesNotMatch = "auth", ExpiredToken = "auth", ExpiredTokenException = "auth",
  AccessDenied = "auth", AccessDeniedException = "auth", InvalidAccessKeyId = "auth",
  MissingAuthenticationToken = "auth", RequestExpired = "auth", OptInRequired = "auth",
  InvalidToken = "auth", UnrecognizedClientException = "auth", Blocked = "auth",
  IncorrectInstanceState = "locked", IncorrectState = "locked", DependencyViolation = "locked",
  ["InvalidGroup.InUse"] = "locked", VolumeInUse = "locked", ["InvalidSnapshot.InUse"] = "locked",
  ConcurrentTagAccess = "locked", OperationAborted = "locked", ConflictException = "locked",
  InstanceLimitExceeded = "quota", VcpuLimitExceeded = "quota", MaxSpotInstanceCountExceeded = "quota",
  ResourceLimitExceeded = "quota", ServiceQuotaExceededException = "quota", TooManyBuckets = "quota",
  IdempotentParameterMismatch = "conflict", IdempotentInstanceTerminated = "conflict",
  ConditionalCheckFailedException = "conflict", PreconditionFailed = "conflict",
  BucketAlreadyExists = "conflict", BucketAlreadyOwnedByYou = "conflict", EntityAlreadyExists = "conflict",
  InternalError = "server", InternalFailure = "server", ServiceUnavailable = "server",
  Unavailable = "server", ServiceUnavailableException = "server", InternalServerError = "server",
  ConnectionError = "server",
}
local RETRY = { rate_limited = true, locked = true, server = true }

--- The kind of an AWS error code and whether a later retry can succeed.
--- `status` (HTTP) decides for codes AWS has not told us about: 5xx is
--- "server", 429 "rate_limited", 401/403 "auth", 404 "not_found", 409
--- "conflict", any other 4xx "invalid".
---@param code string
---@param status? integer
---@return string kind, boolean retry
function M.classify(code, status)
  local kind = KINDS[code]
  if not kind then
    if code:match("%.NotFound$") or code:match("^NoSuch") or code:match("NotFoundException$")
      or code:match("%.NotFound%.") then
      kind = "not_found"
    elseif code:match("%.Duplicate$") or code:match("AlreadyExists") then
      kind = "conflict"
    elseif code:match("%.InUse$") then
      kind = "locked"
    elseif code:match("LimitExceeded$") then
      kind = "quota"
    elseif status and status >= 500 then
      kind = "server"
    elseif status == 429 then
      kind = "rate_limited"
    elseif status == 401 or status == 403 then
      kind = "auth"
    elseif status == 404 then
      kind = "not_found"
    elseif status == 409 then
      kind = "conflict"
    else
      kind = "invalid"
    end
  end
  return kind, RETRY[kind] == true
end

--- A structured error; `tostring(e)` is "Code: Message".
---@param code string
---@param message string
---@param extra? table status, service, action, request_id (and kind/retry to override)
---@return ephrun.aws.Error
function M.error(code, message, extra)
  local e = setmetatable({}, Error)
  for k, v in pairs(extra or {}) do e[k] = v end
  e.code, e.message = code, core.redact(message or "")
  local kind, retry = M.classify(code, e.status)
  e.kind = e.kind or kind
  if e.retry == nil then e.retry = retry end
  return e
end

--- True if `v` is an `ephrun.aws.Error` (optionally of `kind`).
---@param v any
---@param kind? string
---@return boolean
function M.is_error(v, kind)
  return getmetatable(v) == Error and (kind == nil or v.kind == kind)
end

local function first(t)
  if type(t) == "table" and t[1] ~= nil then return t[1] end
  return t
end

local function text_of(v)
  if type(v) == "table" then return v._text end
  return v
end

--- The structured error in a failed response: EC2's `<Response><Errors><Error>`,
--- STS/IAM's `<ErrorResponse><Error>`, S3's `<Error>`; anything else (moto's
--- HTML 500s, an empty HEAD reply) gets a code from the status.
---@param resp ephrun.http.Response
---@param where? {service?: string, action?: string}
---@return ephrun.aws.Error
function M.response_error(resp, where)
  where = where or {}
  local extra = { status = resp.status, service = where.service, action = where.action }
  local v, root = nil, nil
  if resp.body and resp.body:match("^%s*<") then v, root = ephrun.xml.decode(resp.body) end
  local err
  if type(v) == "table" then
    if root == "Response" and type(v.Errors) == "table" then
      err = first(v.Errors.Error)
      extra.request_id = text_of(v.RequestID or v.RequestId)
    elseif root == "ErrorResponse" then
      err = first(v.Error)
      extra.request_id = text_of(v.RequestId or v.RequestID)
    elseif root == "Error" then
      err = v
      extra.request_id = text_of(v.RequestId)
    end
  end
  if type(err) == "table" and type(text_of(err.Code)) == "string" then
    return M.error(text_of(err.Code), text_of(err.Message) or "", extra)
  end
  local snippet = (resp.body or ""):gsub("<[^>]*>", " "):gsub("%s+", " "):match("^%s*(.-)%s*$"):sub(1, 200)
  if snippet == "" then snippet = "HTTP " .. tostring(resp.status) .. " with no error document" end
  return M.error("HTTP" .. tostring(resp.status), snippet, extra)
end

---------------------------------------------------------------------- encoding

local function pct(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  return keys
end

local function is_array(t)
  return next(t) == nil or t[1] ~= nil
end

local function flatten(prefix, v, out)
  local tv = type(v)
  if tv == "table" then
    if is_array(v) then
      for i, x in ipairs(v) do flatten(prefix .. "." .. i, x, out) end
    else
      for _, k in ipairs(sorted_keys(v)) do flatten(prefix .. "." .. k, v[k], out) end
    end
  elseif tv == "boolean" then
    out[#out + 1] = { prefix, v and "true" or "false" }
  elseif tv == "string" or tv == "number" then
    out[#out + 1] = { prefix, tostring(math.type(v) == "float" and v == math.floor(v) and math.tointeger(v) or v) }
  else
    error(("aws: parameter %s cannot be a %s"):format(prefix, tv), 4)
  end
end

--- Query API parameters as `application/x-www-form-urlencoded` text, sorted:
--- arrays become `Name.1`, `Name.2`, tables `Name.Key`, nested as deep as
--- needed (`Filter = {{Name = "tag:x", Value = {"a"}}}` gives
--- `Filter.1.Name=tag%3Ax&Filter.1.Value.1=a`); booleans become true/false.
---@param params table<string, any>
---@return string
function M.form_encode(params)
  local pairs_ = {}
  for _, k in ipairs(sorted_keys(params)) do flatten(tostring(k), params[k], pairs_) end
  table.sort(pairs_, function(a, b) return a[1] < b[1] end)
  local parts = {}
  for i, p in ipairs(pairs_) do parts[i] = pct(p[1]) .. "=" .. pct(p[2]) end
  return table.concat(parts, "&")
end

--- `s` percent-encoded as SigV4 wants it (RFC 3986: all but `A-Za-z0-9-_.~`);
--- with `keep_slash`, `/` stays (for S3 object keys in a path).
---@param s string
---@param keep_slash? boolean
---@return string
function M.uri_encode(s, keep_slash)
  local out = pct(s)
  if keep_slash then out = out:gsub("%%2F", "/") end
  return out
end

-- Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar (H. Hinnant).
local function days_from_civil(y, m, d)
  y = m <= 2 and y - 1 or y
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local doy = (153 * (m + (m > 2 and -3 or 9)) + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  return era * 146097 + doe - 719468
end

--- Seconds since the epoch of an ISO 8601 UTC time as AWS writes it
--- ("2026-12-01T15:30:00Z", "2026-12-01T15:30:00.000Z", "...+00:00"), or nil.
---@param s string
---@return number|nil
function M.parse_time(s)
  if type(s) ~= "string" then return nil end
  local y, mo, d, h, mi, sec, frac, zone = s:match("^(%d%d%d%d)-(%d%d)-(%d%d)[T ](%d%d):(%d%d):(%d%d)(%.?%d*)(.*)$")
  if not y then return nil end
  local t = days_from_civil(tonumber(y), tonumber(mo), tonumber(d)) * 86400 + tonumber(h) * 3600
    + tonumber(mi) * 60 + tonumber(sec) + (tonumber("0" .. frac) or 0)
  if zone == "Z" or zone == "" then return t end
  local sign, zh, zm = zone:match("^([+-])(%d%d):?(%d%d)$")
  if not sign then return nil end
  local off = tonumber(zh) * 3600 + tonumber(zm) * 60
  return sign == "+" and t - off or t + off
end

---------------------------------------------------------------------- shared files

--- Parses an AWS shared config or credentials file: `[section]` headers,
--- `key = value` lines, `#`/`;` comments, and indented sub-keys under a key
--- with an empty value (`s3 =` / `  endpoint_url = ...`), which become a table.
---@param text string
---@return table<string, table<string, string|table>>
function M.parse_ini(text)
  local sections, cur, parent = {}, nil, nil
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    line = line:gsub("\r$", "")
    local indented = line:match("^%s+%S") ~= nil
    local s = line:match("^%s*(.-)%s*$")
    if s == "" or s:match("^[#;]") then
      goto continue
    end
    do
      local name = s:match("^%[%s*(.-)%s*%]$")
      if name then
        cur = sections[name] or {}
        sections[name] = cur
        parent = nil
        goto continue
      end
      local k, v = s:match("^([^=]-)%s*=%s*(.*)$")
      if not (k and cur) then goto continue end
      v = v:gsub("%s+[#;].*$", "")
      k = k:lower()
      if indented and parent then
        parent[k] = v
      elseif v == "" then
        parent = {}
        cur[k] = parent
      else
        cur[k] = v
        parent = nil
      end
    end
    ::continue::
  end
  return sections
end

---------------------------------------------------------------------- sessions

---@class ephrun.aws.Credentials
---@field access_key string
---@field secret_key string
---@field session_token? string
---@field expires? number seconds since the epoch, for temporary credentials
---@field source string where they came from: "environment", "profile dev (credentials file)", "assume-role arn:...", ...
---@field placeholder? boolean set under --dry-run when the real ones could not be had without acting

---@class ephrun.aws.SessionOpts
---@field profile? string overrides AWS_PROFILE; an explicit profile skips the environment's keys (as botocore does)
---@field region? string overrides AWS_REGION / AWS_DEFAULT_REGION / the profile's region
---@field env? table<string, string> read instead of the process environment (and `.env` files); for tests and for callers that pin a configuration
---@field credentials? {access_key: string, secret_key: string, session_token?: string} use these, skipping the chain

---@class ephrun.aws.Session
---@field profile string the profile name ("default" when none is set)
local Session = {}
Session.__index = Session

local function truthy(v)
  return type(v) == "string" and (v:lower() == "true" or v == "1")
end

--- A session: the configuration AWS's own tools would use, resolved lazily
--- (nothing is read or called until a region, endpoint or credential is needed).
---@param opts? ephrun.aws.SessionOpts
---@return ephrun.aws.Session
function M.session(opts)
  opts = opts or {}
  local self = setmetatable({ opts = opts, explicit_profile = opts.profile ~= nil }, Session)
  self.profile = opts.profile or self:getenv("AWS_PROFILE") or self:getenv("AWS_DEFAULT_PROFILE") or "default"
  if opts.credentials then self.creds = self:register(opts.credentials, "given") end
  return self
end

--- A setting from the environment (or `opts.env`); nil when unset or empty.
---@param name string
---@return string|nil
function Session:getenv(name)
  local v
  if self.opts.env then v = self.opts.env[name] else v = os.getenv(name) end
  if v == "" then return nil end
  return v
end

-- A credential from the environment, else a `.env` file (as ephrun.secret reads them).
local function secret_env(self, name)
  if self.opts.env then return self:getenv(name) end
  return ephrun.secret(name, { optional = true })
end

local function home(self)
  return self:getenv("HOME") or "/"
end

local function read_ini(path)
  local f = io.open(path, "r")
  if not f then return {}, false end
  local text = f:read("a")
  f:close()
  return M.parse_ini(text), true
end

--- The shared files' paths: `AWS_CONFIG_FILE` (default `~/.aws/config`) and
--- `AWS_SHARED_CREDENTIALS_FILE` (default `~/.aws/credentials`).
---@return string config, string credentials
function Session:files()
  local h = home(self)
  return self:getenv("AWS_CONFIG_FILE") or (h .. "/.aws/config"),
    self:getenv("AWS_SHARED_CREDENTIALS_FILE") or (h .. "/.aws/credentials")
end

local function load_files(self)
  if self.ini then return self.ini end
  local cpath, kpath = self:files()
  local config = read_ini(cpath)
  local creds = read_ini(kpath)
  -- Credentials hold secrets: redact them from every later message before
  -- anything (an error about this very profile) could print them.
  local names = { aws_secret_access_key = "AWS secret access key", aws_session_token = "AWS session token" }
  for _, file in ipairs { creds, config } do
    for _, sec in pairs(file) do
      for k, v in pairs(sec) do
        if type(v) == "string" and names[k] and v ~= "" then core.secret_add(names[k], v) end
      end
    end
  end
  self.ini = { config = config, credentials = creds, config_path = cpath, credentials_path = kpath }
  return self.ini
end

--- Profile `name` as the CLI sees it: `[profile name]` (or `[name]` for
--- default) of the config file, with `[name]` of the credentials file on top.
--- Each value remembers its file in `_from[key]` ("config" or "credentials").
---@param name? string default: the session's profile
---@return table|nil profile nil when neither file has it
function Session:profile_section(name)
  name = name or self.profile
  local ini = load_files(self)
  local c = ini.config["profile " .. name] or (name == "default" and ini.config.default) or nil
  local k = ini.credentials[name]
  if not c and not k then return nil end
  local p = { _from = {} }
  for key, v in pairs(c or {}) do p[key], p._from[key] = v, "config" end
  for key, v in pairs(k or {}) do p[key], p._from[key] = v, "credentials" end
  return p
end

--- The region: `opts.region`, else `AWS_REGION`, `AWS_DEFAULT_REGION`, the
--- profile's `region`. Raises, saying how to set one, when none is set.
---@return string
function Session:region()
  if self.region_ then return self.region_ end
  local r = self.opts.region or self:getenv("AWS_REGION") or self:getenv("AWS_DEFAULT_REGION")
  if not r then
    local p = self:profile_section()
    r = p and p.region ~= "" and p.region or nil
  end
  if not r then
    local cpath = self:files()
    error(("AWS region is not set: export AWS_REGION=us-east-1 (or another region), or add `region = ...` to [%s] in %s")
      :format(self.profile == "default" and "default" or "profile " .. self.profile, cpath), 2)
  end
  if not r:match("^[a-z][a-z0-9%-]+$") then error(("AWS region %q is not a region name (like us-east-1)"):format(r), 2) end
  self.region_ = r
  return r
end

local function env_name(service)
  return (service:upper():gsub("[%s%-]", "_"))
end

local function default_endpoint(service, region)
  local suffix = region:match("^cn%-") and "amazonaws.com.cn" or "amazonaws.com"
  return ("https://%s.%s.%s"):format(service, region, suffix)
end

local function check_endpoint(url, where)
  if type(url) ~= "string" or not url:match("^https?://[^/]") then
    error(("%s: endpoint %q must start with http:// or https://"):format(where, tostring(url)), 3)
  end
  return (url:gsub("/+$", ""))
end

--- The endpoint URL for `service` ("ec2", "s3", "sts", "scheduler", ...),
--- without a trailing slash: `AWS_ENDPOINT_URL_<SERVICE>`, else
--- `AWS_ENDPOINT_URL`, else the profile's `services` section's
--- `<service> = endpoint_url`, else the profile's `endpoint_url`, else AWS's
--- regional endpoint. `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true` (or the
--- profile's `ignore_configured_endpoint_urls = true`) skips all but the last.
---@param service string
---@return string
function Session:endpoint(service)
  local p = self:profile_section() or {}
  local ignore = truthy(self:getenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"))
    or (self:getenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS") == nil and truthy(p.ignore_configured_endpoint_urls))
  if not ignore then
    local name = "AWS_ENDPOINT_URL_" .. env_name(service)
    local e = self:getenv(name)
    if e then return check_endpoint(e, name) end
    e = self:getenv("AWS_ENDPOINT_URL")
    if e then return check_endpoint(e, "AWS_ENDPOINT_URL") end
    if type(p.services) == "string" then
      local sec = load_files(self).config["services " .. p.services] or {}
      local sub = sec[service:lower():gsub("[%s%-]", "_")]
      if type(sub) == "table" and sub.endpoint_url then
        return check_endpoint(sub.endpoint_url, "[services " .. p.services .. "] " .. service)
      end
    end
    if type(p.endpoint_url) == "string" then
      return check_endpoint(p.endpoint_url, "profile " .. self.profile .. " endpoint_url")
    end
  end
  return default_endpoint(service, self:region())
end

--- Registers `c`'s values as secrets (they never appear in logs, plans or
--- errors) and returns it.
---@param c table
---@param source string
---@return ephrun.aws.Credentials
function Session.register(_, c, source)
  local out = { access_key = c.access_key, secret_key = c.secret_key, source = c.source or source,
    expires = c.expires, placeholder = c.placeholder }
  if c.session_token and c.session_token ~= "" then out.session_token = c.session_token end
  if type(out.access_key) ~= "string" or out.access_key == "" or type(out.secret_key) ~= "string"
    or out.secret_key == "" then
    error(("AWS credentials from %s need both an access key id and a secret access key"):format(out.source), 3)
  end
  if not out.placeholder then
    core.secret_add("AWS access key id", out.access_key)
    core.secret_add("AWS secret access key", out.secret_key)
    if out.session_token then core.secret_add("AWS session token", out.session_token) end
  end
  return out
end

local function env_credentials(self)
  local ak, sk = secret_env(self, "AWS_ACCESS_KEY_ID"), secret_env(self, "AWS_SECRET_ACCESS_KEY")
  if not ak and not sk then return nil end
  if not (ak and sk) then
    error(("AWS_%s is set but AWS_%s is not: set both (or neither, to use a profile)")
      :format(ak and "ACCESS_KEY_ID" or "SECRET_ACCESS_KEY", ak and "SECRET_ACCESS_KEY" or "ACCESS_KEY_ID"), 0)
  end
  return self:register({ access_key = ak, secret_key = sk, session_token = secret_env(self, "AWS_SESSION_TOKEN") },
    "environment")
end

local function static_keys(self, p, name, from)
  if not p.aws_access_key_id and not p.aws_secret_access_key then return nil end
  if from and p._from.aws_access_key_id ~= from and p._from.aws_secret_access_key ~= from then return nil end
  local src = ("profile %s (%s file)"):format(name, p._from.aws_access_key_id or from or "config")
  if not (p.aws_access_key_id and p.aws_secret_access_key) then
    error(("%s has only one of aws_access_key_id and aws_secret_access_key: set both"):format(src), 0)
  end
  return self:register({ access_key = p.aws_access_key_id, secret_key = p.aws_secret_access_key,
    session_token = p.aws_session_token }, src)
end

local function process_credentials(self, p, name)
  local cmd = p.credential_process
  local r, err = ephrun.proc.run(cmd, { shell = true, check = false, stream = false, capture = true,
    timeout = 60, prefix = "credential_process" })
  local where = ("credential_process of profile %s"):format(name)
  if not r then error(("%s could not start: %s"):format(where, err), 0) end
  if r.dry_run then
    return { access_key = "<aws-access-key>", secret_key = "<aws-secret-key>", placeholder = true,
      source = where .. " (not run under --dry-run)" }
  end
  if not r.ok then
    error(("%s failed (exit %s): %s"):format(where, tostring(r.code or ("signal " .. tostring(r.signal))),
      core.redact((r.stderr or ""):sub(-300))), 0)
  end
  local doc = ephrun.json.decode(r.stdout)
  if type(doc) ~= "table" then error(where .. " did not print a JSON object", 0) end
  if doc.SecretAccessKey then core.secret_add("AWS secret access key", tostring(doc.SecretAccessKey)) end
  if doc.SessionToken then core.secret_add("AWS session token", tostring(doc.SessionToken)) end
  if doc.Version ~= 1 then
    error(("%s printed Version %s; only Version 1 is understood"):format(where, tostring(doc.Version)), 0)
  end
  if type(doc.AccessKeyId) ~= "string" or type(doc.SecretAccessKey) ~= "string" then
    error(where .. " printed no AccessKeyId/SecretAccessKey", 0)
  end
  local expires
  if doc.Expiration then
    expires = M.parse_time(doc.Expiration)
    if not expires then error(("%s printed Expiration %q, not an ISO 8601 time"):format(where, doc.Expiration), 0) end
  end
  return self:register({ access_key = doc.AccessKeyId, secret_key = doc.SecretAccessKey,
    session_token = type(doc.SessionToken) == "string" and doc.SessionToken or nil, expires = expires }, where)
end

local profile_credentials

local function assume_role(self, p, name, source)
  if p.mfa_serial then
    error(("profile %s needs an MFA code (mfa_serial), which ephrun cannot prompt for: use a profile without it")
      :format(name), 0)
  end
  local region = p.region or self.opts.region or self:getenv("AWS_REGION") or self:getenv("AWS_DEFAULT_REGION")
    or "us-east-1"
  local sts = setmetatable({ opts = self.opts, profile = self.profile, ini = self.ini, region_ = region,
    creds = source }, Session)
  local params = {
    RoleArn = p.role_arn,
    RoleSessionName = p.role_session_name or ("ephrun-" .. ephrun.run_id()):sub(1, 64),
    DurationSeconds = tonumber(p.duration_seconds) or 3600,
    ExternalId = p.external_id,
  }
  -- A read: temporary credentials cost nothing and change nothing, so a
  -- dry-run gets real ones and can price with real look-ups.
  local r = sts:query("sts", "AssumeRole", params, { read = true })
  local c = r.AssumeRoleResult and r.AssumeRoleResult.Credentials
  if type(c) ~= "table" then
    error(M.error("MalformedResponse", "AssumeRole answered without Credentials", { service = "sts" }), 0)
  end
  return self:register({ access_key = c.AccessKeyId, secret_key = c.SecretAccessKey, session_token = c.SessionToken,
    expires = M.parse_time(c.Expiration) }, "assume-role " .. p.role_arn .. " (profile " .. name .. ")")
end

profile_credentials = function(self, name, seen)
  if seen[name] then
    error(("AWS profile %s is part of a source_profile loop (%s)"):format(name, table.concat(seen, " -> ")), 0)
  end
  seen[name] = true
  seen[#seen + 1] = name
  local p = self:profile_section(name)
  if not p and name == "default" and #seen == 1 and not self.explicit_profile
    and not self:getenv("AWS_PROFILE") and not self:getenv("AWS_DEFAULT_PROFILE") then
    return nil   -- nobody asked for a profile: the files are simply not set up
  end
  if not p then
    local cpath, kpath = self:files()
    error(("AWS profile %s is not in %s nor %s: add it, or set AWS_PROFILE to a profile that exists")
      :format(name, cpath, kpath), 0)
  end
  if p.role_arn then
    local source
    if p.source_profile == name then
      source = static_keys(self, p, name)
    elseif p.source_profile then
      source = profile_credentials(self, p.source_profile, seen)
    elseif p.credential_source == "Environment" then
      source = env_credentials(self)
    end
    if not source then
      error(("profile %s has role_arn but no usable source_profile or credential_source=Environment"):format(name), 0)
    end
    if source.placeholder then return source end
    return assume_role(self, p, name, source)
  end
  local c = static_keys(self, p, name, "credentials")
  if c then return c end
  if p.credential_process then return process_credentials(self, p, name) end
  c = static_keys(self, p, name)
  if c then return c end
  if p.web_identity_token_file or p.sso_session or p.sso_start_url then
    error(("profile %s uses web identity or SSO, which ephrun does not support yet: "
      .. "give it keys, role_arn + source_profile, or credential_process")
      :format(name), 0)
  end
  return nil
end

local function resolve(self)
  local c = not self.explicit_profile and env_credentials(self) or nil
  if c then return c end
  c = profile_credentials(self, self.profile, {})
  if c then return c end
  if core.dry_run() then
    core.plan_add { kind = "secret", what = "AWS credentials are not set; a real run will need them" }
    return { access_key = "<aws-access-key>", secret_key = "<aws-secret-key>", placeholder = true,
      source = "none (dry-run placeholder)" }
  end
  local cpath, kpath = self:files()
  error(("AWS credentials not found (looked in the environment and profile %s of %s and %s): "
    .. "export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or set AWS_PROFILE to a configured profile (`aws configure`)")
    :format(self.profile, kpath, cpath), 0)
end

--- The credentials, found the way AWS's CLI finds them: `AWS_ACCESS_KEY_ID` +
--- `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`) from the environment or a
--- `.env` file (skipped when a profile is given explicitly), then the profile:
--- `role_arn` with `source_profile` (or `credential_source = Environment`)
--- through STS AssumeRole, keys in the credentials file, `credential_process`
--- (its JSON output, Version 1), keys in the config file. Every value is
--- registered as a secret. Temporary credentials are fetched again 5 minutes
--- before they expire. Raises, saying what to set, when there are none.
---@return ephrun.aws.Credentials
function Session:credentials()
  local c = self.creds
  if c and (not c.expires or c.expires - ephrun.time.now() > REFRESH_MARGIN) then return c end
  if c and c.source == "given" then return c end
  self.creds = resolve(self)
  return self.creds
end

---@class ephrun.aws.RequestOpts: ephrun.http.Options
---@field path? string appended to the endpoint (default "/")
---@field query? table|string query parameters (encoded and sorted) or ready-made query text
---@field region? string sign for this region instead of the session's

--- Sends a SigV4-signed request to `service` through `ephrun.http` and returns
--- its response (a status is never raised here). For S3 it sends
--- `x-amz-content-sha256` (the body's SHA-256) unless given, as S3 requires;
--- a body without a Content-Type goes as `application/octet-stream`.
---@param service string
---@param opts ephrun.aws.RequestOpts
---@return ephrun.http.Response|nil resp, string? err, integer? curl_code
function Session:request(service, opts)
  local creds = self:credentials()
  local o = {}
  for k, v in pairs(opts) do
    if k ~= "path" and k ~= "query" and k ~= "region" then o[k] = v end
  end
  local url = o.url or (self:endpoint(service) .. (opts.path or "/"))
  if opts.query then
    local q = type(opts.query) == "table" and M.form_encode(opts.query) or opts.query
    if q ~= "" then url = url .. (url:find("?", 1, true) and "&" or "?") .. q end
  end
  o.url = url
  local headers = {}
  for k, v in pairs(opts.headers or {}) do headers[k] = v end
  local has = {}
  for k in pairs(headers) do has[k:lower()] = true end
  if service == "s3" and not has["x-amz-content-sha256"] then
    headers["x-amz-content-sha256"] = ephrun.fs.hash_string(opts.body or "", "sha256")
  end
  -- Without one, libcurl labels any body as a form (unsigned), and S3 or moto
  -- then read an XML body as form fields.
  if opts.body and not has["content-type"] then headers["Content-Type"] = "application/octet-stream" end
  o.headers = headers
  o.aws_sigv4 = { region = opts.region or self:region(), service = service, access_key = creds.access_key,
    secret_key = creds.secret_key, session_token = creds.session_token }
  return ephrun.http.request(o)
end

---@class ephrun.aws.QueryOpts
---@field read? boolean send as a GET (acts under --dry-run, not a plan step); default true for Describe*, Get*, List*
---@field idempotent? boolean a POST that may be retried on 5xx/throttling (default: when ClientToken is set)
---@field version? string API version (EC2 2016-11-15, STS 2011-06-15)
---@field arrays? string[] element names always decoded as arrays
---@field timeout? number|string
---@field deadline? number|string
---@field retries? integer

local function raise(e)
  error(e, 0)
end

--- Calls a Query API action (EC2, STS, IAM...) and returns the decoded XML
--- reply (see `ephrun.xml`) and its root name. Reads (`Describe*`, `Get*`,
--- `List*`) go as signed GETs, everything else as a signed form POST (an
--- effect: under --dry-run it is a plan step and returns `{dry_run = true}`).
--- A failure raises an `ephrun.aws.Error` ({kind, retry, code, message, ...},
--- `tostring` gives "Code: Message"); a transport failure is kind "server".
---@param service string
---@param action string
---@param params? table see `form_encode`
---@param opts? ephrun.aws.QueryOpts
---@return table reply, string root
function Session:query(service, action, params, opts)
  opts = opts or {}
  local form = { Action = action, Version = opts.version or VERSIONS[service] }
  if not form.Version then error(("aws: no API version known for %s; pass opts.version"):format(service), 2) end
  for k, v in pairs(params or {}) do form[k] = v end
  local read = opts.read
  if read == nil then read = action:match("^Describe") or action:match("^Get") or action:match("^List") end
  local text = M.form_encode(form)
  local req = { timeout = opts.timeout, deadline = opts.deadline, retries = opts.retries }
  if read then
    req.method, req.query = "GET", text
  else
    req.method, req.body = "POST", text
    req.headers = { ["Content-Type"] = "application/x-www-form-urlencoded; charset=utf-8" }
    req.retry = opts.idempotent or (params and params.ClientToken ~= nil) or false
  end
  local resp, err = self:request(service, req)
  local where = { service = service, action = action }
  if not resp then
    raise(M.error("ConnectionError", ("%s %s: %s"):format(service, action, tostring(err)), where))
  end
  if resp.dry_run then return { dry_run = true }, action .. "Response" end
  if not resp.ok then raise(M.response_error(resp, where)) end
  local v, root = ephrun.xml.decode(resp.body, opts.arrays and { arrays = opts.arrays } or nil)
  if v == nil then
    raise(M.error("MalformedResponse", ("%s %s answered %d with no XML (%s)"):format(service, action, resp.status, root),
      { kind = "server", retry = true, status = resp.status, service = service, action = action }))
  end
  if type(v) ~= "table" then v = { _text = v } end
  return v, root
end

--- An EC2 Query API call: `session:query("ec2", action, params, opts)`.
---@param action string e.g. "DescribeInstances", "RunInstances"
---@param params? table
---@param opts? ephrun.aws.QueryOpts
---@return table reply, string root
function Session:ec2(action, params, opts)
  return self:query("ec2", action, params, opts)
end

--- An S3 request on `bucket`/`key` (path style): signed, with
--- `x-amz-content-sha256`. Returns the response when it is 2xx, else raises
--- an `ephrun.aws.Error` from S3's XML error.
---@param method string
---@param bucket string
---@param key? string object key ("" or nil for the bucket itself)
---@param opts? ephrun.aws.RequestOpts body, headers, query, download...
---@return ephrun.http.Response
function Session:s3(method, bucket, key, opts)
  opts = opts or {}
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.method = method
  o.path = "/" .. M.uri_encode(bucket) .. ((key and key ~= "") and ("/" .. M.uri_encode(key, true)) or "")
  if method == "PUT" and o.body == nil then o.body = "" end
  local resp, err = self:request("s3", o)
  local where = { service = "s3", action = method .. " " .. bucket .. "/" .. (key or "") }
  if not resp then raise(M.error("ConnectionError", ("s3 %s: %s"):format(where.action, tostring(err)), where)) end
  if not resp.ok and not resp.dry_run then raise(M.response_error(resp, where)) end
  return resp
end

--- Reads `key` of `reply`'s items: EC2's `...Set` arrays are arrays already;
--- this turns an absent or empty element into `{}` so loops need no guard.
---@param v any
---@return table
function M.list(v)
  if type(v) ~= "table" then return {} end
  if v[1] == nil and next(v) ~= nil then return { v } end
  return v
end

--- A tag list (`tagSet` of an EC2 reply) as a map.
---@param tag_set any
---@return table<string, string>
function M.tags(tag_set)
  local out = {}
  for _, t in ipairs(M.list(tag_set)) do
    if type(t) == "table" and t.key then out[t.key] = t.value or "" end
  end
  return out
end

return M
