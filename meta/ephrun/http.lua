---@meta
--- ephrun.http: HTTP(S) requests over libcurl, done off the Lua thread (other
--- tasks run meanwhile; a signal or `task:cancel` stops a request within about
--- a second). Retries 429/500/502/503/504 and connection failures with
--- exponential backoff and jitter, honouring `Retry-After`. HTTP error statuses
--- are returned, not raised (see `http.check` and `raise`); transport failures
--- return `nil, message, code`. GET and HEAD act under --dry-run; every other
--- method (and any download) is a plan step (kind "http") and returns a
--- placeholder `{status=0, ok=true, body="", headers={}, dry_run=true}` there.
---@class ephrun.http
local http = {}

---@class ephrun.http.SigV4
---@field provider? string default "aws:amz"
---@field region string
---@field service string e.g. "ec2", "s3", "sts"
---@field access_key string
---@field secret_key string
---@field session_token? string sent as X-Amz-Security-Token (and signed)

---@class ephrun.http.Options
---@field method? string default "GET"
---@field url? string http:// or https:// (set by the shorthands)
---@field headers? table<string, string|number>
---@field body? string
---@field timeout? number|string one attempt, seconds or "30s"; default 30 (none for downloads, which instead fail after 60 s without data); 0 = none
---@field connect_timeout? number|string default 10
---@field deadline? number|string all attempts and waits together; default 300, or `timeout` when longer, none without a timeout; 0 = none
---@field retries? integer retries after the first attempt, default 4
---@field retry? boolean also retry non-idempotent methods (POST, PATCH) on 5xx, 429 and timeouts; without it they are retried only when the connection failed before anything was sent
---@field download? string stream a 2xx body to this file: written beside it, fsynced, renamed over it; a non-2xx body stays in `body`
---@field aws_sigv4? ephrun.http.SigV4 sign with AWS Signature Version 4 (an X-Amz-Date header you set is used as the signing time)
---@field insecure? boolean skip TLS certificate checks (default false: verified)
---@field follow? boolean follow redirects (default true, at most 10)
---@field raise? boolean raise on a transport failure or a non-2xx status, as `http.check` does

---@class ephrun.http.Response
---@field status integer 0 in a dry-run placeholder
---@field ok boolean status is 2xx (true in a dry-run placeholder)
---@field headers table<string, string> names lowercased; repeated headers joined with ", "
---@field body string "" for HEAD and for downloads
---@field url string after redirects
---@field method string
---@field attempts integer
---@field duration number seconds, all attempts and waits
---@field size integer body bytes received
---@field path? string the downloaded file, when `download` was set and the status was 2xx
---@field dry_run? boolean set on the --dry-run placeholder

--- Sends a request; see `ephrun.http.Options`.
---@param opts ephrun.http.Options
---@return ephrun.http.Response|nil resp, string? err, integer? curl_code
function http.request(opts) end

--- GET `url`.
---@param url string
---@param opts? ephrun.http.Options
---@return ephrun.http.Response|nil resp, string? err, integer? curl_code
function http.get(url, opts) end

--- HEAD `url`.
---@param url string
---@param opts? ephrun.http.Options
---@return ephrun.http.Response|nil resp, string? err, integer? curl_code
function http.head(url, opts) end

--- DELETE `url` (an effect: a plan step under --dry-run).
---@param url string
---@param opts? ephrun.http.Options
---@return ephrun.http.Response|nil resp, string? err, integer? curl_code
function http.delete(url, opts) end

--- POST `body` to `url` (an effect: a plan step under --dry-run).
---@param url string
---@param body? string
---@param opts? ephrun.http.Options
---@return ephrun.http.Response|nil resp, string? err, integer? curl_code
function http.post(url, body, opts) end

--- PUT `body` to `url` (an effect).
---@param url string
---@param body? string
---@param opts? ephrun.http.Options
---@return ephrun.http.Response|nil resp, string? err, integer? curl_code
function http.put(url, body, opts) end

--- PATCH `url` with `body` (an effect).
---@param url string
---@param body? string
---@param opts? ephrun.http.Options
---@return ephrun.http.Response|nil resp, string? err, integer? curl_code
function http.patch(url, body, opts) end

--- Returns `resp` when its status is 2xx (or it is a dry-run placeholder);
--- otherwise raises "http: METHOD URL returned STATUS Reason: body snippet"
--- with the URL's query values redacted. Also takes a request's failure
--- results: `http.check(http.get(url))` raises the transport error.
---@param resp ephrun.http.Response|nil
---@param err? string
---@param code? integer
---@return ephrun.http.Response
function http.check(resp, err, code) end

--- The URL as logs and plans show it: no userinfo, every query value
--- `<redacted>`, no fragment, registered secrets masked.
---@param url string
---@return string
function http.redact_url(url) end

return http
