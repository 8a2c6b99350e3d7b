#include "http/client.hpp"

#include <curl/curl.h>
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <mutex>
#include <random>

#include "runtime/duration.hpp"
#include "runtime/secrets.hpp"
#include "sys/fs.hpp"

namespace ephrun::http {

namespace {

using Clock = std::chrono::steady_clock;

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

// ---- libcurl set-up: global init once, one shared DNS/TLS/connection cache --

std::array<std::mutex, CURL_LOCK_DATA_LAST> g_share_locks;

void share_lock(CURL*, curl_lock_data data, curl_lock_access, void*) {
  g_share_locks[static_cast<size_t>(data)].lock();
}
void share_unlock(CURL*, curl_lock_data data, void*) {
  g_share_locks[static_cast<size_t>(data)].unlock();
}

// Created on first use and kept for the life of the process: worker threads
// may still hold connections from it while static destructors run.
CURLSH* shared() {
  static CURLSH* share = [] {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
      throw std::runtime_error("libcurl failed to initialise");
    CURLSH* sh = curl_share_init();
    if (!sh) throw std::runtime_error("libcurl: cannot create a share handle");
    curl_share_setopt(sh, CURLSHOPT_LOCKFUNC, share_lock);
    curl_share_setopt(sh, CURLSHOPT_UNLOCKFUNC, share_unlock);
    curl_share_setopt(sh, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
    curl_share_setopt(sh, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
    curl_share_setopt(sh, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT);
    return sh;
  }();
  return share;
}

struct EasyDeleter {
  void operator()(CURL* c) const { curl_easy_cleanup(c); }
};
struct SlistDeleter {
  void operator()(curl_slist* l) const { curl_slist_free_all(l); }
};

/// The temporary file a download is written to, removed unless committed.
class TempFile {
 public:
  explicit TempFile(const std::string& target) {
    path_ = target + ".part-XXXXXX";
    fd_ = ::mkstemp(path_.data());
    if (fd_ < 0) throw std::runtime_error("cannot create " + path_ + ": " + std::strerror(errno));
  }
  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(path_.c_str());
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;

  void reset() {
    if (::ftruncate(fd_, 0) != 0 || ::lseek(fd_, 0, SEEK_SET) != 0)
      throw std::runtime_error("cannot truncate " + path_ + ": " + std::strerror(errno));
  }
  bool write(const char* p, size_t n) {
    while (n > 0) {
      ssize_t w = ::write(fd_, p, n);
      if (w < 0) {
        if (errno == EINTR) continue;
        error_ = std::strerror(errno);
        return false;
      }
      p += w;
      n -= static_cast<size_t>(w);
    }
    return true;
  }
  void commit(const std::string& target) {
    if (::fsync(fd_) != 0)
      throw std::runtime_error("cannot sync " + path_ + ": " + std::strerror(errno));
    // mkstemp makes the file 0600; a download gets the usual mode.
    if (::fchmod(fd_, static_cast<mode_t>(0666 & ~sys::current_umask())) != 0)
      throw std::runtime_error("cannot chmod " + path_ + ": " + std::strerror(errno));
    ::close(fd_);
    fd_ = -1;
    if (::rename(path_.c_str(), target.c_str()) != 0)
      throw std::runtime_error("cannot rename " + path_ + " to " + target + ": " +
                               std::strerror(errno));
    committed_ = true;
  }
  [[nodiscard]] const std::string& error() const { return error_; }

 private:
  std::string path_;
  std::string error_;
  int fd_ = -1;
  bool committed_ = false;
};

/// What one attempt produced.
struct Attempt {
  CURLcode rc = CURLE_OK;
  long status = 0;
  Headers headers;
  std::string body;
  std::string url;
  std::string errbuf;
  bool sent = false;
  long long size = 0;
  // Set by the write callback on the first body byte.
  bool decided = false;
  bool to_file = false;
  TempFile* file = nullptr;
  CURL* easy = nullptr;
  const CancelToken* tok = nullptr;
};

constexpr size_t kErrorBodyLimit = 1 << 20;  // non-2xx bodies kept when downloading

size_t on_header(char* data, size_t size, size_t n, void* ud) {
  auto* a = static_cast<Attempt*>(ud);
  std::string_view line(data, size * n);
  if (line.starts_with("HTTP/")) {  // a new response (redirect, 100 Continue): start over
    a->headers.clear();
    return size * n;
  }
  auto colon = line.find(':');
  if (colon == std::string_view::npos) return size * n;
  std::string name = lower(trim(line.substr(0, colon)));
  std::string value(trim(line.substr(colon + 1)));
  for (auto& [k, v] : a->headers) {
    if (k == name) {
      v += ", " + value;
      return size * n;
    }
  }
  a->headers.emplace_back(std::move(name), std::move(value));
  return size * n;
}

size_t on_body(char* data, size_t size, size_t n, void* ud) {
  auto* a = static_cast<Attempt*>(ud);
  const size_t len = size * n;
  if (!a->decided) {
    a->decided = true;
    long status = 0;
    curl_easy_getinfo(a->easy, CURLINFO_RESPONSE_CODE, &status);
    a->to_file = a->file && status >= 200 && status < 300;
  }
  a->size += static_cast<long long>(len);
  if (a->to_file) return a->file->write(data, len) ? len : 0;
  if (a->file && a->body.size() >= kErrorBodyLimit) return len;  // keep a bounded snippet
  a->body.append(data, len);
  return len;
}

int on_progress(void* ud, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  auto* a = static_cast<Attempt*>(ud);
  return a->tok->cancelled() ? 1 : 0;
}

long to_ms(double seconds) {
  if (seconds <= 0) return 0;
  return std::max(1L, static_cast<long>(std::ceil(seconds * 1000)));
}

void check(CURLcode rc, const char* what) {
  if (rc != CURLE_OK)
    throw std::runtime_error(std::string("libcurl: cannot set ") + what + ": " +
                             curl_easy_strerror(rc));
}

Attempt attempt_once(const Request& req, const CancelToken& tok, double timeout, TempFile* file) {
  Attempt a;
  a.tok = &tok;
  a.file = file;
  std::unique_ptr<CURL, EasyDeleter> easy(curl_easy_init());
  if (!easy) throw std::runtime_error("libcurl: cannot create a handle");
  CURL* c = easy.get();
  a.easy = c;
  char errbuf[CURL_ERROR_SIZE] = {0};

  std::unique_ptr<curl_slist, SlistDeleter> hdrs;
  auto add_header = [&](const std::string& line) {
    curl_slist* l = curl_slist_append(hdrs.get(), line.c_str());
    if (!l) throw std::bad_alloc();
    (void)hdrs.release();
    hdrs.reset(l);
  };
  bool has_expect = false;
  for (const auto& [k, v] : req.headers) {
    if (lower(k) == "expect") has_expect = true;
    add_header(v.empty() ? k + ";" : k + ": " + v);
  }
  // No 1-second wait for 100-continue on big bodies. Not when signing: libcurl
  // would sign the empty header as "expect:" although it is never sent.
  if (!has_expect && !req.sigv4) add_header("Expect:");
  if (req.sigv4 && !req.sigv4->session_token.empty())
    add_header("X-Amz-Security-Token: " + req.sigv4->session_token);

  const std::string url = req.sigv4 ? sort_query(req.url) : req.url;
  check(curl_easy_setopt(c, CURLOPT_URL, url.c_str()), "url");
  check(curl_easy_setopt(c, CURLOPT_SHARE, shared()), "share");
  check(curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L), "nosignal");
  check(curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf), "errorbuffer");
  check(curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https"), "protocols");
  check(curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https"), "redir protocols");
  check(curl_easy_setopt(c, CURLOPT_USERAGENT, "ephrun/" EPHRUN_VERSION), "user agent");
  check(curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs.get()), "headers");
  check(curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, req.follow ? 1L : 0L), "follow");
  check(curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L), "maxredirs");
  check(curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, to_ms(req.connect_timeout)),
        "connect timeout");
  check(curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, to_ms(timeout)), "timeout");
  if (timeout <= 0) {  // no total limit: give up on a transfer stalled for a minute instead
    check(curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L), "low speed limit");
    check(curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 60L), "low speed time");
  }
  check(curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, req.insecure ? 0L : 1L), "verify peer");
  check(curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, req.insecure ? 0L : 2L), "verify host");
  check(curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header), "header function");
  check(curl_easy_setopt(c, CURLOPT_HEADERDATA, &a), "header data");
  check(curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body), "write function");
  check(curl_easy_setopt(c, CURLOPT_WRITEDATA, &a), "write data");
  check(curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L), "noprogress");
  check(curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress), "progress function");
  check(curl_easy_setopt(c, CURLOPT_XFERINFODATA, &a), "progress data");

  const std::string& m = req.method;
  if (m == "GET" && !req.has_body) {
    check(curl_easy_setopt(c, CURLOPT_HTTPGET, 1L), "get");
  } else if (m == "HEAD") {
    check(curl_easy_setopt(c, CURLOPT_NOBODY, 1L), "head");
  } else if ((m == "DELETE" || m == "OPTIONS" || m == "GET") && !req.has_body) {
    check(curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, m.c_str()), "method");
  } else {
    // POST, PUT, PATCH and anything with a body: the body goes as POSTFIELDS,
    // which libcurl also hashes for SigV4. An empty body sends Content-Length: 0.
    check(
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(req.body.size())),
        "body size");
    check(curl_easy_setopt(c, CURLOPT_POSTFIELDS, req.body.data()), "body");
    if (m != "POST") check(curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, m.c_str()), "method");
  }
  std::string sigv4_param, userpwd;
  if (req.sigv4) {
    const auto& s = *req.sigv4;
    sigv4_param = s.provider + ":" + s.region + ":" + s.service;
    userpwd = s.access_key + ":" + s.secret_key;
    check(curl_easy_setopt(c, CURLOPT_AWS_SIGV4, sigv4_param.c_str()), "aws sigv4");
    check(curl_easy_setopt(c, CURLOPT_USERPWD, userpwd.c_str()), "credentials");
  }
  if (req.insecure) check(curl_easy_setopt(c, CURLOPT_PROXY_SSL_VERIFYPEER, 0L), "proxy verify");

  a.rc = curl_easy_perform(c);
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &a.status);
  long request_size = 0;
  curl_easy_getinfo(c, CURLINFO_REQUEST_SIZE, &request_size);
  a.sent = request_size > 0;
  char* eff = nullptr;
  if (curl_easy_getinfo(c, CURLINFO_EFFECTIVE_URL, &eff) == CURLE_OK && eff) a.url = eff;
  a.errbuf = errbuf;
  if (a.rc == CURLE_WRITE_ERROR && file && !file->error().empty())
    a.errbuf = "writing the download: " + file->error();
  std::fill(userpwd.begin(), userpwd.end(), '\0');
  return a;
}

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::string describe_failure(const Attempt& a) {
  // libcurl's error buffer says more than curl_easy_strerror (and usually ends with it).
  std::string msg = a.errbuf.empty() ? curl_easy_strerror(a.rc) : a.errbuf;
  while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
  return msg + " (curl error " + std::to_string(static_cast<int>(a.rc)) + ")";
}

}  // namespace

bool idempotent(std::string_view method) {
  return method == "GET" || method == "HEAD" || method == "PUT" || method == "DELETE" ||
         method == "OPTIONS" || method == "TRACE";
}

bool retryable_status(long status) {
  return status == 429 || status == 500 || status == 502 || status == 503 || status == 504;
}

bool retryable_curl(int code, bool sent, bool safe) {
  switch (static_cast<CURLcode>(code)) {
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
      return true;  // nothing reached the server
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
      return !sent || safe;
    default:
      return false;
  }
}

double backoff(const RetryPolicy& policy, int n) {
  double full = std::min(policy.cap, policy.base * std::pow(2.0, std::max(0, n - 1)));
  double r;
  if (policy.random) {
    r = policy.random();
  } else {
    thread_local std::mt19937_64 rng{std::random_device{}()};
    r = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
  }
  r = std::clamp(r, 0.0, 1.0);
  return full / 2 + full / 2 * r;
}

std::optional<double> parse_retry_after(std::string_view value,
                                        std::chrono::system_clock::time_point now) {
  value = trim(value);
  if (value.empty()) return std::nullopt;
  if (std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    if (value.size() > 9) return std::nullopt;
    return std::stod(std::string(value));
  }
  std::string s(value);
  time_t t = curl_getdate(s.c_str(), nullptr);
  if (t == -1) return std::nullopt;
  double delta =
      static_cast<double>(t) - std::chrono::duration<double>(now.time_since_epoch()).count();
  return std::max(0.0, delta);
}

bool sensitive_header(std::string_view name) {
  std::string n = lower(name);
  return n == "cookie" || n == "set-cookie" || n.find("token") != std::string::npos ||
         n.find("secret") != std::string::npos || n.find("key") != std::string::npos ||
         n.find("auth") != std::string::npos || n.find("password") != std::string::npos ||
         n.find("credential") != std::string::npos || n.find("signature") != std::string::npos;
}

std::string header_for_log(std::string_view name, std::string_view value) {
  std::string out(name);
  out += ": ";
  if (sensitive_header(name)) {
    out += "<redacted>";
  } else {
    out += value;
  }
  return redact(std::move(out));
}

std::string redact_url(std::string_view url) {
  std::string out;
  std::string_view rest = url;
  if (auto hash = rest.find('#'); hash != std::string_view::npos) rest = rest.substr(0, hash);
  std::string_view query;
  bool has_query = false;
  if (auto q = rest.find('?'); q != std::string_view::npos) {
    query = rest.substr(q + 1);
    rest = rest.substr(0, q);
    has_query = true;
  }
  // userinfo
  size_t auth_begin = 0;
  if (auto s = rest.find("://"); s != std::string_view::npos) auth_begin = s + 3;
  size_t auth_end = rest.find('/', auth_begin);
  if (auth_end == std::string_view::npos) auth_end = rest.size();
  std::string_view authority = rest.substr(auth_begin, auth_end - auth_begin);
  out.append(rest.substr(0, auth_begin));
  if (auto at = authority.rfind('@'); at != std::string_view::npos) {
    out += "<redacted>@";
    authority = authority.substr(at + 1);
  }
  out.append(authority);
  out.append(rest.substr(auth_end));
  if (has_query) {
    out += '?';
    bool first = true;
    while (true) {
      auto amp = query.find('&');
      std::string_view part = query.substr(0, amp);
      if (!first) out += '&';
      first = false;
      if (auto eq = part.find('='); eq != std::string_view::npos) {
        out.append(part.substr(0, eq));
        out += "=<redacted>";
      } else if (!part.empty()) {
        out += "<redacted>";
      }
      if (amp == std::string_view::npos) break;
      query = query.substr(amp + 1);
    }
  }
  return redact(std::move(out));
}

std::string sort_query(std::string_view url) {
  auto q = url.find('?');
  if (q == std::string_view::npos) return std::string(url);
  auto hash = url.find('#', q);
  std::string_view query =
      url.substr(q + 1, hash == std::string_view::npos ? url.npos : hash - q - 1);
  std::vector<std::pair<std::string_view, std::string_view>> params;
  while (!query.empty()) {
    auto amp = query.find('&');
    std::string_view part = query.substr(0, amp);
    if (!part.empty()) {
      auto eq = part.find('=');
      params.emplace_back(part.substr(0, eq),
                          eq == std::string_view::npos ? std::string_view{} : part.substr(eq + 1));
    }
    if (amp == std::string_view::npos) break;
    query = query.substr(amp + 1);
  }
  std::sort(params.begin(), params.end());
  std::string out(url.substr(0, q));
  for (size_t i = 0; i < params.size(); ++i) {
    out += i == 0 ? '?' : '&';
    out.append(params[i].first);
    out += '=';
    out.append(params[i].second);
  }
  return out;
}

std::string url_host(std::string_view url) {
  auto s = url.find("://");
  if (s == std::string_view::npos) return "";
  std::string_view rest = url.substr(s + 3);
  rest = rest.substr(0, rest.find_first_of("/?#"));
  if (auto at = rest.rfind('@'); at != std::string_view::npos) rest = rest.substr(at + 1);
  return std::string(rest);
}

const std::string* find_header(const Headers& headers, std::string_view lower_name) {
  for (const auto& [k, v] : headers)
    if (k == lower_name) return &v;
  return nullptr;
}

Result perform(const Request& req, const CancelToken& tok, const RetryPolicy& policy) {
  shared();  // global init before the first handle, on whichever thread comes first
  const auto start = Clock::now();
  const int max_retries = req.retries < 0 ? 4 : req.retries;
  const bool safe = idempotent(req.method) || req.retry;
  const std::string shown = req.method + " " + redact_url(req.url);
  const auto remaining = [&]() -> double {
    if (req.deadline <= 0) return 1e18;
    return req.deadline - seconds_since(start);
  };

  std::unique_ptr<TempFile> file;
  if (!req.download.empty()) file = std::make_unique<TempFile>(req.download);

  Result result;
  for (int attempt = 1;; ++attempt) {
    if (tok.cancelled()) {
      result.failure = {tok.reason(), CURLE_ABORTED_BY_CALLBACK, true, attempt - 1};
      return result;
    }
    double timeout = req.timeout;
    if (req.deadline > 0) {
      double left = std::max(0.001, remaining());
      timeout = timeout > 0 ? std::min(timeout, left) : left;
    }
    if (file) file->reset();
    spdlog::debug("http: {} (attempt {})", shown, attempt);
    if (attempt == 1 && spdlog::should_log(spdlog::level::trace)) {
      for (const auto& [k, v] : req.headers) spdlog::trace("http: > {}", header_for_log(k, v));
      if (req.sigv4) {
        spdlog::trace("http: > {}", header_for_log("Authorization", "AWS4-HMAC-SHA256 ..."));
        if (!req.sigv4->session_token.empty())
          spdlog::trace("http: > {}", header_for_log("X-Amz-Security-Token", "..."));
      }
    }
    Attempt a = attempt_once(req, tok, timeout, file.get());

    if (a.rc == CURLE_ABORTED_BY_CALLBACK && tok.cancelled()) {
      result.failure = {tok.reason(), a.rc, true, attempt};
      return result;
    }

    std::optional<double> wait;
    std::string why;
    if (a.rc == CURLE_OK) {
      spdlog::debug("http: {} -> {} ({} bytes, {})", shown, a.status, a.size,
                    format_duration(seconds_since(start)));
      if (retryable_status(a.status) && safe) {
        why = "HTTP " + std::to_string(a.status);
        if (const auto* ra = find_header(a.headers, "retry-after")) {
          wait = parse_retry_after(*ra);
          if (wait && *wait > policy.max_retry_after) {
            spdlog::warn("http: {} -> {}; Retry-After {} is too long, not retrying", shown,
                         a.status, redact(*ra));
            wait.reset();
            why.clear();
          } else if (wait) {
            why += " (Retry-After " + redact(*ra) + ")";
          }
        }
        if (!why.empty() && !wait) wait = backoff(policy, attempt);
      }
    } else if (retryable_curl(a.rc, a.sent, safe)) {
      why = describe_failure(a);
      wait = backoff(policy, attempt);
    }

    if (wait && attempt <= max_retries && *wait + 0.05 < remaining()) {
      spdlog::warn("http: {}: {}; retry {}/{} in {}", shown, redact(why), attempt, max_retries,
                   format_duration(*wait));
      if (!tok.sleep_for(std::chrono::duration_cast<std::chrono::nanoseconds>(
              std::chrono::duration<double>(*wait)))) {
        result.failure = {tok.reason(), CURLE_ABORTED_BY_CALLBACK, true, attempt};
        return result;
      }
      continue;
    }
    if (wait && attempt > 1) {
      spdlog::warn("http: {}: {}; giving up after {} attempts", shown, redact(why), attempt);
    }

    if (a.rc != CURLE_OK) {
      std::string msg = shown + ": " + describe_failure(a);
      if (attempt > 1) msg += " (after " + std::to_string(attempt) + " attempts)";
      result.failure = {redact(std::move(msg)), static_cast<int>(a.rc), false, attempt};
      return result;
    }

    Response r;
    r.status = a.status;
    r.headers = std::move(a.headers);
    r.body = std::move(a.body);
    r.url = std::move(a.url);
    r.attempts = attempt;
    r.size = a.size;
    if (file && a.status >= 200 && a.status < 300) {
      if (!a.decided) r.size = 0;  // an empty body never reached the write callback
      file->commit(req.download);
      r.downloaded = req.download;
    }
    r.duration = seconds_since(start);
    result.response = std::move(r);
    return result;
  }
}

}  // namespace ephrun::http
