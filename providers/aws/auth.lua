--- What to fix when AWS refuses a request's credentials: an `auth` error of
--- `ephrun.aws` says whether the keys are wrong, expired or only lack a
--- permission, and names where they came from (never their values).
local M = {}

-- Codes for keys AWS does not accept at all, and for temporary ones past their expiry.
local WRONG = { AuthFailure = true, InvalidClientTokenId = true, SignatureDoesNotMatch = true,
  InvalidAccessKeyId = true, UnrecognizedClientException = true, InvalidSignatureException = true,
  InvalidToken = true, MissingAuthenticationToken = true }
local EXPIRED = { RequestExpired = true, ExpiredToken = true, ExpiredTokenException = true }

--- The advice for auth error `e` (an `ephrun.aws.Error`) of a call made with session `s`.
---@param s ephrun.aws.Session
---@param e ephrun.aws.Error
---@return string
function M.advice(s, e)
  local ok, creds = pcall(s.credentials, s)
  local source = ok and creds.source or "the credential chain"
  local env = source == "environment"
  if EXPIRED[e.code] then
    if env then
      return "the session token in AWS_SESSION_TOKEN has expired (or the clock is off): export fresh "
        .. "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN together"
    end
    return ("the temporary credentials from %s have expired (or the clock is off): renew them "
      .. "(`aws sso login`, a new role session, the credential_process) and run again"):format(source)
  end
  if WRONG[e.code] then
    if env then
      return "AWS refused the credentials from the environment: check that AWS_ACCESS_KEY_ID and "
        .. "AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary keys) belong together and are active; "
        .. "`aws sts get-caller-identity` tells whether they work"
    end
    return ("AWS refused the credentials from %s: check its keys (`aws sts get-caller-identity` tells whether "
      .. "they work)"):format(source)
  end
  return ("the credentials from %s are valid but not allowed to call %s:%s: add it to their IAM policy")
    :format(env and "the environment" or source, tostring(e.service or "ec2"), tostring(e.action or "?"))
end

return M
