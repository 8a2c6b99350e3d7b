// HTTP over libcurl: one request with retries, backoff, Retry-After,
// cancellation, atomic downloads and AWS SigV4 signing. No Lua here.
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "runtime/cancel.hpp"

namespace ephrun::http {

using Headers = std::vector<std::pair<std::string, std::string>>;

/// AWS Signature Version 4, done by libcurl (CURLOPT_AWS_SIGV4).
struct SigV4 {
  std::string provider = "aws:amz";
  std::string region;
  std::string service;
  std::string access_key;
  std::string secret_key;
  std::string session_token;  // sent as X-Amz-Security-Token when set
};

/// When and how long to wait between attempts.
struct RetryPolicy {
  double base = 0.5;             // first backoff, seconds
  double cap = 20;               // longest backoff, seconds
  double max_retry_after = 300;  // a longer Retry-After is not waited for
  /// Returns a number in [0, 1) for jitter; defaults to a thread-local PRNG.
  std::function<double()> random;
};

struct Request {
  std::string method = "GET";
  std::string url;
  Headers headers;
  std::string body;
  bool has_body = false;
  double timeout = 30;          // one attempt, seconds; 0 = none
  double connect_timeout = 10;  // seconds
  double deadline = 300;        // all attempts and waits together, seconds; 0 = none
  int retries = -1;             // -1: the default (4)
  bool retry = false;           // retry non-idempotent methods on 5xx/timeouts too
  std::string download;         // stream a 2xx body to this file (atomically)
  std::optional<SigV4> sigv4;
  bool insecure = false;
  bool follow = true;
};

struct Response {
  long status = 0;
  Headers headers;  // names lowercased; repeated names joined with ", "
  std::string body;
  std::string url;  // after redirects
  int attempts = 0;
  double duration = 0;     // seconds, all attempts and waits
  std::string downloaded;  // path written when `download` was set and the status was 2xx
  long long size = 0;      // bytes of body received (or written to the file)
};

/// A transport failure after every retry (or a cancellation).
struct Failure {
  std::string message;
  int code = 0;  // CURLcode
  bool cancelled = false;
  int attempts = 0;
};

struct Result {
  std::optional<Response> response;
  Failure failure;  // meaningful when !response
};

/// Performs `req`, retrying as `policy` says, until it succeeds, fails for
/// good, runs past its deadline or `tok` is cancelled. Thread-safe.
Result perform(const Request& req, const CancelToken& tok, const RetryPolicy& policy = {});

// ---- pieces, exposed for tests -------------------------------------------

/// GET, HEAD, PUT, DELETE, OPTIONS, TRACE.
bool idempotent(std::string_view method);
/// 429, 500, 502, 503, 504.
bool retryable_status(long status);
/// Whether a curl failure may be retried: `sent` says whether any of the
/// request may have reached the server (retried then only when `safe`).
bool retryable_curl(int code, bool sent, bool safe);
/// Backoff before retry number `n` (1-based): min(cap, base * 2^(n-1)),
/// jittered into [half, full] of that.
double backoff(const RetryPolicy& policy, int n);
/// Seconds to wait from a Retry-After value (delta-seconds or HTTP-date,
/// relative to `now`); nullopt when unparseable. A date in the past gives 0.
std::optional<double> parse_retry_after(
    std::string_view value,
    std::chrono::system_clock::time_point now = std::chrono::system_clock::now());
/// Header names whose values are never logged: authorization, cookies,
/// anything containing token, secret, key or auth.
bool sensitive_header(std::string_view name);
/// "Name: value" for logs, with sensitive values as <redacted>.
std::string header_for_log(std::string_view name, std::string_view value);
/// The URL without userinfo, with every query value replaced by <redacted>
/// and no fragment; then passed through ephrun::redact.
std::string redact_url(std::string_view url);
/// The URL with its query parameters sorted by name, then value, and a bare
/// `name` written `name=`: the order SigV4 signs them in. libcurl 7.88 signs
/// the query as given, so a signed request is sent in this form.
std::string sort_query(std::string_view url);
/// The host[:port] part of a URL ("" when there is none).
std::string url_host(std::string_view url);
/// Looks a (lowercased) header up in a response's headers.
const std::string* find_header(const Headers& headers, std::string_view lower_name);

}  // namespace ephrun::http
