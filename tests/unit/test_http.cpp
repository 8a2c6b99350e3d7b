#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>

#include "http/client.hpp"
#include "runtime/secrets.hpp"

using namespace ephrun;
using namespace std::chrono_literals;

namespace {

/// tests/support/http_server.py on 127.0.0.1, stopped (stdin closed) at scope exit.
class TestServer {
 public:
  TestServer() {
    char tmpl[] = "/tmp/ephrun-http-XXXXXX";
    if (!::mkdtemp(tmpl)) throw std::runtime_error("mkdtemp failed");
    dir_ = tmpl;
    std::string cmd = "exec python3 " + std::string(EPHRUN_SOURCE_DIR) +
                      "/tests/support/http_server.py --port-file " + dir_ + "/port --log " + dir_ +
                      "/log";
    pipe_ = ::popen(cmd.c_str(), "w");
    if (!pipe_) throw std::runtime_error("cannot start the test server");
    for (int i = 0; i < 200; ++i) {
      std::ifstream f(dir_ + "/port");
      if (f >> port_) break;
      std::this_thread::sleep_for(25ms);
    }
    if (port_ == 0) throw std::runtime_error("test server did not start");
  }
  ~TestServer() {
    ::pclose(pipe_);
    std::string rm = "rm -rf " + dir_;
    if (std::system(rm.c_str()) != 0) std::fprintf(stderr, "cannot remove %s\n", dir_.c_str());
  }
  [[nodiscard]] std::string url(const std::string& path) const {
    return "http://127.0.0.1:" + std::to_string(port_) + path;
  }
  [[nodiscard]] std::string log() const {
    std::ifstream f(dir_ + "/log");
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }
  [[nodiscard]] const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  FILE* pipe_ = nullptr;
  int port_ = 0;
};

http::RetryPolicy fast() {
  http::RetryPolicy p;
  p.base = 0.05;
  p.cap = 0.2;
  p.random = [] { return 0.5; };
  return p;
}

double since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

TEST_CASE("http: backoff doubles, is capped and jittered into [half, full]", "[http]") {
  http::RetryPolicy p;
  p.base = 0.5;
  p.cap = 20;
  p.random = [] { return 0.0; };
  CHECK(http::backoff(p, 1) == Approx(0.25));
  CHECK(http::backoff(p, 2) == Approx(0.5));
  CHECK(http::backoff(p, 3) == Approx(1.0));
  CHECK(http::backoff(p, 10) == Approx(10.0));  // capped at 20, halved
  p.random = [] { return 1.0; };
  CHECK(http::backoff(p, 1) == Approx(0.5));
  CHECK(http::backoff(p, 4) == Approx(4.0));
  CHECK(http::backoff(p, 30) == Approx(20.0));
  p.random = nullptr;  // the default PRNG stays within bounds
  for (int i = 0; i < 100; ++i) {
    double d = http::backoff(p, 3);
    CHECK(d >= 1.0);
    CHECK(d <= 2.0);
  }
}

TEST_CASE("http: Retry-After as seconds or an HTTP date", "[http]") {
  using std::chrono::system_clock;
  auto now = system_clock::from_time_t(784111777);  // Sun, 06 Nov 1994 08:49:37 GMT
  CHECK(http::parse_retry_after("120", now) == Approx(120));
  CHECK(http::parse_retry_after(" 0 ", now) == Approx(0));
  CHECK(http::parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now) == Approx(10));
  CHECK(http::parse_retry_after("Sunday, 06-Nov-94 08:50:37 GMT", now) == Approx(60));  // RFC 850
  CHECK(http::parse_retry_after("Sun Nov  6 08:49:38 1994", now) == Approx(1));         // asctime
  CHECK(http::parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now) == Approx(0));    // past
  CHECK_FALSE(http::parse_retry_after("", now));
  CHECK_FALSE(http::parse_retry_after("soon", now));
  CHECK_FALSE(http::parse_retry_after("-5", now));
  CHECK_FALSE(http::parse_retry_after("1.5", now));
}

TEST_CASE("http: what is retried", "[http]") {
  CHECK(http::idempotent("GET"));
  CHECK(http::idempotent("PUT"));
  CHECK(http::idempotent("DELETE"));
  CHECK_FALSE(http::idempotent("POST"));
  CHECK_FALSE(http::idempotent("PATCH"));
  for (long s : {429L, 500L, 502L, 503L, 504L}) CHECK(http::retryable_status(s));
  for (long s : {200L, 400L, 401L, 403L, 404L, 409L, 501L}) CHECK_FALSE(http::retryable_status(s));
  // Connection refused: nothing was sent, so even a POST is retried.
  CHECK(http::retryable_curl(7, false, false));
  // A timeout after the request went out: only for safe requests.
  CHECK(http::retryable_curl(28, true, true));
  CHECK_FALSE(http::retryable_curl(28, true, false));
  CHECK(http::retryable_curl(28, false, false));
  // Certificate problems and bad URLs are not transient.
  CHECK_FALSE(http::retryable_curl(60, false, true));
  CHECK_FALSE(http::retryable_curl(3, false, true));
  CHECK_FALSE(http::retryable_curl(42, false, true));  // aborted (cancelled)
}

TEST_CASE("http: sensitive headers and URLs are redacted", "[http]") {
  for (const char* n : {"Authorization", "authorization", "Proxy-Authorization", "Cookie",
                        "Set-Cookie", "X-Amz-Security-Token", "X-Api-Key", "X-Auth-Token",
                        "Client-Secret", "X-Vault-Token", "api-key"})
    CHECK(http::sensitive_header(n));
  for (const char* n : {"Content-Type", "Accept", "X-Amz-Date", "Host", "Keep-Alive"})
    CHECK_FALSE(http::sensitive_header(n));
  CHECK(http::header_for_log("Authorization", "Bearer abc") == "Authorization: <redacted>");
  CHECK(http::header_for_log("Accept", "text/plain") == "Accept: text/plain");

  CHECK(http::redact_url("https://api.example.com/v2/instances") ==
        "https://api.example.com/v2/instances");
  CHECK(http::redact_url("https://u:pw@h.example:8443/p?token=abc&x=1&flag#frag") ==
        "https://<redacted>@h.example:8443/p?token=<redacted>&x=<redacted>&<redacted>");
  CHECK(http::redact_url("http://h/?") == "http://h/?");
  CHECK(http::url_host("https://u:pw@h.example:8443/p?q") == "h.example:8443");
  CHECK(http::url_host("http://10.0.0.1") == "10.0.0.1");

  CHECK(http::sort_query("https://h/p?b=2&a=1&Empty&a=0#f") == "https://h/p?Empty=&a=0&a=1&b=2");
  CHECK(http::sort_query("https://h/p") == "https://h/p");
  CHECK(http::sort_query("https://h/p?") == "https://h/p");

  Secrets::global().add("UNIT_HTTP_SECRET", "s3cr3t-in-path");
  CHECK(http::redact_url("https://h/s3cr3t-in-path/x") == "https://h/<secret:UNIT_HTTP_SECRET>/x");
  CHECK(http::header_for_log("X-Note", "s3cr3t-in-path") == "X-Note: <secret:UNIT_HTTP_SECRET>");
}

TEST_CASE("http: requests against the local test server", "[http][server]") {
  TestServer srv;
  CancelToken tok;

  SECTION("methods, headers and bodies") {
    http::Request r;
    r.method = "PUT";
    r.url = srv.url("/echo/x?a=1");
    r.headers = {{"X-One", "1"}, {"Content-Type", "text/plain"}};
    r.body = "hello";
    r.has_body = true;
    auto res = http::perform(r, tok);
    REQUIRE(res.response);
    CHECK(res.response->status == 200);
    CHECK(res.response->attempts == 1);
    const auto& b = res.response->body;
    CHECK(b.find("\"method\": \"PUT\"") != std::string::npos);
    CHECK(b.find("\"x-one\": \"1\"") != std::string::npos);
    CHECK(b.find("\"body\": \"hello\"") != std::string::npos);
    CHECK(b.find("expect") == std::string::npos);
    REQUIRE(http::find_header(res.response->headers, "content-type"));
    CHECK(*http::find_header(res.response->headers, "content-type") == "application/json");
  }

  SECTION("503, then 429 with Retry-After, then 200") {
    http::Request r;
    r.url = srv.url("/seq/a?s=503,429:1,200");
    auto t0 = std::chrono::steady_clock::now();
    auto res = http::perform(r, tok, fast());
    double dt = since(t0);
    REQUIRE(res.response);
    CHECK(res.response->status == 200);
    CHECK(res.response->attempts == 3);
    CHECK(dt >= 1.0);  // the Retry-After was honoured
    CHECK(dt < 3.0);
  }

  SECTION("POST is not retried on 503 unless asked") {
    http::Request r;
    r.method = "POST";
    r.url = srv.url("/seq/b?s=503,200");
    auto res = http::perform(r, tok, fast());
    REQUIRE(res.response);
    CHECK(res.response->status == 503);
    CHECK(res.response->attempts == 1);
    r.url = srv.url("/seq/c?s=503,200");
    r.retry = true;
    res = http::perform(r, tok, fast());
    REQUIRE(res.response);
    CHECK(res.response->status == 200);
    CHECK(res.response->attempts == 2);
  }

  SECTION("retries run out and the last response is returned") {
    http::Request r;
    r.url = srv.url("/seq/d?s=500");
    r.retries = 2;
    auto res = http::perform(r, tok, fast());
    REQUIRE(res.response);
    CHECK(res.response->status == 500);
    CHECK(res.response->attempts == 3);
  }

  SECTION("connection refused fails with the curl code after retries") {
    http::Request r;
    r.method = "POST";
    r.url = "http://127.0.0.1:1/nothing";
    r.retries = 2;
    auto res = http::perform(r, tok, fast());
    REQUIRE_FALSE(res.response);
    CHECK(res.failure.code == 7);
    CHECK(res.failure.attempts == 3);
    CHECK_THAT(res.failure.message, Catch::Contains("POST http://127.0.0.1:1/nothing") &&
                                        Catch::Contains("after 3 attempts"));
  }

  SECTION("a timeout is a failure") {
    http::Request r;
    r.url = srv.url("/delay/3");
    r.timeout = 0.3;
    r.retries = 0;
    auto t0 = std::chrono::steady_clock::now();
    auto res = http::perform(r, tok, fast());
    REQUIRE_FALSE(res.response);
    CHECK(res.failure.code == 28);
    CHECK(since(t0) < 1.5);
  }

  SECTION("downloads land atomically; errors leave no file") {
    http::Request r;
    r.url = srv.url("/bytes?size=300000");
    r.download = srv.dir() + "/out.bin";
    auto res = http::perform(r, tok);
    REQUIRE(res.response);
    CHECK(res.response->status == 200);
    CHECK(res.response->size == 300000);
    CHECK(res.response->body.empty());
    std::ifstream f(r.download, std::ios::binary | std::ios::ate);
    CHECK(f.tellg() == 300000);

    r.url = srv.url("/status/404");
    r.download = srv.dir() + "/missing.bin";
    res = http::perform(r, tok);
    REQUIRE(res.response);
    CHECK(res.response->status == 404);
    CHECK(res.response->body == "status 404");
    CHECK(res.response->downloaded.empty());
    CHECK(::access(r.download.c_str(), F_OK) != 0);
    CHECK(std::system(("test -z \"$(ls " + srv.dir() + " | grep part)\"").c_str()) == 0);
  }

  SECTION("cancellation stops a slow transfer and a retry wait promptly") {
    http::Request r;
    r.url = srv.url("/slow?size=1000000&rate=20000");
    r.download = srv.dir() + "/slow.bin";
    std::thread canceller([&] {
      std::this_thread::sleep_for(300ms);
      tok.cancel("stop");
    });
    auto t0 = std::chrono::steady_clock::now();
    auto res = http::perform(r, tok);
    canceller.join();
    CHECK(since(t0) < 1.5);
    REQUIRE_FALSE(res.response);
    CHECK(res.failure.cancelled);
    CHECK(res.failure.message == "stop");
    CHECK(::access(r.download.c_str(), F_OK) != 0);

    CancelToken tok2;
    http::Request w;
    w.url = srv.url("/seq/e?s=503:30,200");
    std::thread c2([&] {
      std::this_thread::sleep_for(300ms);
      tok2.cancel("stop waiting");
    });
    t0 = std::chrono::steady_clock::now();
    res = http::perform(w, tok2);
    c2.join();
    CHECK(since(t0) < 1.5);
    REQUIRE_FALSE(res.response);
    CHECK(res.failure.cancelled);
  }

  SECTION("a Retry-After past the deadline is not waited for") {
    http::Request r;
    r.url = srv.url("/seq/f?s=503:10,200");
    r.deadline = 2;
    auto t0 = std::chrono::steady_clock::now();
    auto res = http::perform(r, tok, fast());
    REQUIRE(res.response);
    CHECK(res.response->status == 503);
    CHECK(since(t0) < 1.0);
  }
}
