// Redaction of registered secrets in the forms they take on their way into a log
// line, a plan or a JSON document, and across the pieces of a very long line.
#include <catch2/catch.hpp>
#include <chrono>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime/secrets.hpp"
#include "ssh/keys.hpp"
#include "ssh/util.hpp"

using namespace ephrun;

namespace {

// Percent-encodes everything but RFC 3986's unreserved bytes (curl_easy_escape).
std::string url_encode(const std::string& s, bool upper, bool plus_for_space, bool keep_slash) {
  const char* digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' ||
        (keep_slash && c == '/')) {
      out += static_cast<char>(c);
    } else if (c == ' ' && plus_for_space) {
      out += '+';
    } else {
      out += '%';
      out += digits[c >> 4];
      out += digits[c & 15];
    }
  }
  return out;
}

// JSON string body as other encoders write it: '/' as "\/" and \u00XX in upper case.
std::string json_escape_other(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '"' || c == '\\' || c == '/') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      snprintf(buf, sizeof buf, "\\u%04X", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

std::string dq_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\' || c == '$' || c == '`') out += '\\';
    out += c;
  }
  return out;
}

}  // namespace

TEST_CASE("secrets: shell-quoted, JSON-escaped, URL-encoded and base64 forms", "[secrets]") {
  const std::string v = "it's \"q\" a/b\\c $x+y%z\n\x01-end";
  Secrets s;
  s.add("TOK", v);
  const std::string mask = "<secret:TOK>";
  std::vector<std::pair<std::string, std::string>> forms = {
      {"raw", v},
      {"shell_quote", ssh::shell_quote(v)},
      {"python shlex", "'it'\"'\"'s \"q\" a/b\\c $x+y%z\n\x01-end'"},
      {"double quotes", "\"" + dq_escape(v) + "\""},
      {"nlohmann json", nlohmann::json(v).dump()},
      {"json with \\/ and \\u00XX", "\"" + json_escape_other(v) + "\""},
      {"url upper %20", url_encode(v, true, false, false)},
      {"url lower +", url_encode(v, false, true, false)},
      {"url keeping /", url_encode(v, true, false, true)},
      {"base64", ssh::base64_encode(v)},
  };
  for (const auto& [what, form] : forms) {
    INFO(what << ": " << form);
    std::string out = s.redact("before " + form + " after");
    CHECK(out.find(mask) != std::string::npos);
    CHECK(out.find("end") == std::string::npos);
    CHECK(out.find("it") == std::string::npos);
  }
  std::string b64url = ssh::base64_encode(v);
  for (auto& c : b64url) c = c == '+' ? '-' : c == '/' ? '_' : c;
  CHECK(s.redact(b64url).find(mask) == 0);
}

// The secrets are held by several matchers (1, 2, 4, ... of them, merged as
// more are added): a text is redacted by all of them, and where two secrets
// held by different matchers overlap, the longer one names the mask.
TEST_CASE("secrets: every secret is found whichever matcher holds it", "[secrets]") {
  Secrets s;
  std::vector<std::string> values;
  for (int n = 1; n <= 11; ++n) {
    values.push_back("value-" + std::to_string(n) + "-" +
                     std::string(8, static_cast<char>('a' + n)));
    s.add("V" + std::to_string(n), values.back());
    // After each add (11 = 8 + 2 + 1 matchers at the end), every one so far.
    for (std::size_t i = 0; i < values.size(); ++i) {
      INFO(n << " added, secret " << i + 1);
      CHECK(s.redact("a " + values[i] + " b") == "a <secret:V" + std::to_string(i + 1) + "> b");
      CHECK(s.redact(nlohmann::json("x/" + values[i]).dump()) ==
            "\"x/<secret:V" + std::to_string(i + 1) + ">\"");
      CHECK(s.redact(ssh::base64_encode(values[i])).find("<secret:V") == 0);
    }
  }
  s.add("LONG", values[0] + "-and-more");
  CHECK(s.redact("[" + values[0] + "-and-more]") == "[<secret:LONG>]");
  CHECK(s.redact("[" + values[0] + "]") == "[<secret:V1>]");
  // Enough scanning that they are held by one matcher again, then one more add.
  const std::string filler(1 << 20, 'x');
  CHECK(s.redact(filler + values[5] + filler).size() == 2 * filler.size() + 11);
  s.add("LAST", "the-last-value");
  for (std::size_t i = 0; i < values.size(); ++i)
    CHECK(s.redact("a " + values[i] + " b") == "a <secret:V" + std::to_string(i + 1) + "> b");
  CHECK(s.redact("[" + values[0] + "-and-more]") == "[<secret:LONG>]");
  CHECK(s.redact("(the-last-value)") == "(<secret:LAST>)");
}

TEST_CASE("secrets: a JSON document keeps its shape around a masked value", "[secrets]") {
  Secrets s;
  s.add("API", "k/ey\"with\\slash");
  nlohmann::json doc = {{"steps", {{{"what", "curl -H 'X: k/ey\"with\\slash'"}}}}};
  std::string out = s.redact(doc.dump());
  CHECK(out.find("ey") == std::string::npos);
  CHECK(nlohmann::json::parse(out)["steps"][0]["what"] == "curl -H 'X: <secret:API>'");
}

TEST_CASE("secrets: non-ASCII values escaped as \\uXXXX", "[secrets]") {
  Secrets s;
  s.add("U", "p\xC3\xA4ss\xF0\x9F\x94\x91");  // "päss🔑"
  CHECK(s.redact(R"("p\u00e4ss\ud83d\udd11")") == "\"<secret:U>\"");
  CHECK(s.redact(nlohmann::json("p\xC3\xA4ss\xF0\x9F\x94\x91").dump(-1, ' ', true)) ==
        "\"<secret:U>\"");
}

TEST_CASE("secrets: values shorter than 4 bytes are not redacted", "[secrets]") {
  Secrets s;
  s.add("TINY", "abc");
  CHECK(s.empty());
  CHECK(s.redact("abc") == "abc");
}

namespace {

// Feeds `text` in chunks of `chunk` bytes, then joins what each piece redacts to.
std::string split_and_redact(const Secrets& s, const std::string& text, std::size_t chunk,
                             std::size_t* pieces = nullptr, std::size_t* longest = nullptr) {
  std::string out;
  std::size_t n = 0, max = 0;
  LineSplitter ls(
      [&](std::string_view piece) {
        out += s.redact(std::string(piece));
        ++n;
        max = std::max(max, piece.size());
      },
      65536, s);
  for (std::size_t i = 0; i < text.size(); i += chunk)
    ls.feed(std::string_view(text).substr(i, chunk));
  ls.finish();
  if (pieces) *pieces = n;
  if (longest) *longest = max;
  return out;
}

}  // namespace

TEST_CASE("secrets: a 200 KiB line is redacted across every piece boundary", "[secrets]") {
  Secrets s;
  const std::string v = "straddling-secret-0123456789";
  s.add("S", v);
  s.add("Q", "quote'd/value");
  const std::string quoted = ssh::shell_quote("quote'd/value");
  for (std::size_t off = 65536 - v.size(); off <= 65536 + 2; ++off) {
    std::string line(200 * 1024, 'x');
    line.replace(off, v.size(), v);
    line.replace(off + 50000, quoted.size(), quoted);
    line.replace(off + 100000, 3 * v.size(), url_encode(v + v + v, true, false, false));
    line += '\n';  // complete: in one 1 MiB chunk it must come out in pieces all the same
    for (std::size_t chunk : {std::size_t{1} << 20, std::size_t{65536}, std::size_t{4096}}) {
      INFO("secret at " << off << ", chunks of " << chunk);
      std::size_t pieces = 0, longest = 0;
      std::string out = split_and_redact(s, line, chunk, &pieces, &longest);
      CHECK(pieces > 1);
      CHECK(longest <= 65536 + 6 * v.size());
      CHECK(out.find("straddling") == std::string::npos);
      CHECK(out.find("value") == std::string::npos);
      CHECK(out.find("<secret:S>") != std::string::npos);
      CHECK(out.find("<secret:Q>") != std::string::npos);
    }
  }
}

TEST_CASE("secrets: lines are split at newlines, '\\r' dropped, the last one kept", "[secrets]") {
  Secrets s;
  std::vector<std::string> got;
  LineSplitter ls([&](std::string_view l) { got.emplace_back(l); }, 65536, s);
  ls.feed("one\r\ntw");
  ls.feed("o\n\nthree");
  ls.finish();
  CHECK(got == std::vector<std::string>{"one", "two", "", "three"});
}

TEST_CASE("secrets: without secrets a long line is passed on in pieces of about 64 KiB",
          "[secrets]") {
  Secrets s;
  std::size_t pieces = 0, longest = 0;
  std::string line(200 * 1024, 'y');
  CHECK(split_and_redact(s, line, 4096, &pieces, &longest) == line);
  CHECK(pieces == 4);
  CHECK(longest <= 65536);
}

namespace {

// The redaction before encoded forms were covered: one find/replace pass per raw value.
std::string redact_raw_only(std::string text,
                            const std::vector<std::pair<std::string, std::string>>& v) {
  for (const auto& [name, value] : v) {
    const std::string mask = "<secret:" + name + ">";
    for (size_t pos = text.find(value); pos != std::string::npos;
         pos = text.find(value, pos + mask.size()))
      text.replace(pos, value.size(), mask);
  }
  return text;
}

}  // namespace

// Run by hand: ephrun_tests '[.bench]' -c secrets. Figures go to docs/benchmarks.md.
TEST_CASE("secrets bench: 10 MB of log lines, 20 secrets", "[.bench][secrets-bench]") {
  std::vector<std::pair<std::string, std::string>> values;
  Secrets s;
  for (int i = 0; i < 20; ++i) {
    std::string v =
        "tok-" + std::to_string(i) + "-" + std::string(12 + i, static_cast<char>('a' + i));
    if (i % 4 == 0) v += "/x\"y'z";  // encodes differently in JSON, URLs and shell words
    values.emplace_back("S" + std::to_string(i), v);
    s.add("S" + std::to_string(i), v);
  }
  auto stream = [&](int escapes_every) {
    std::vector<std::string> lines;
    std::size_t total = 0;
    for (int i = 0; total < 10'000'000; ++i) {
      std::string l = "2026-12-01T10:00:00 [build] step " + std::to_string(i) +
                      ": compiling src/module_" + std::to_string(i % 97) + ".cpp with -O2 -Wall";
      if (escapes_every && i % escapes_every == 0) l += " {\"path\":\"a\\/b\",\"q\":\"x%20y\"}";
      if (i % 100 == 0) l += " key=" + values[static_cast<std::size_t>(i % 20)].second;
      if (i % 100 == 50)
        l += " " + nlohmann::json(values[static_cast<std::size_t>(i / 100 % 5 * 4)].second).dump();
      total += l.size() + 1;
      lines.push_back(std::move(l));
    }
    return lines;
  };
  for (int every : {0, 10, 1}) {
    auto lines = stream(every);
    auto t0 = std::chrono::steady_clock::now();
    std::size_t n_old = 0, n_new = 0;
    for (const auto& l : lines) n_old += redact_raw_only(l, values).size();
    auto t1 = std::chrono::steady_clock::now();
    for (const auto& l : lines) n_new += s.redact(l).size();
    auto t2 = std::chrono::steady_clock::now();
    std::string joined;
    for (const auto& l : lines) joined += l + "\n";
    std::size_t n_split = 0;
    LineSplitter ls([&](std::string_view l) { n_split += s.redact(std::string(l)).size(); }, 65536,
                    s);
    for (std::size_t i = 0; i < joined.size(); i += 65536)
      ls.feed(std::string_view(joined).substr(i, 65536));
    ls.finish();
    auto t3 = std::chrono::steady_clock::now();
    auto ms = [](auto a, auto b) {
      return std::chrono::duration<double, std::milli>(b - a).count();
    };
    std::cout << "lines with escapes: " << (every ? 100 / every : 0) << "%, " << lines.size()
              << " lines: raw-only find/replace " << ms(t0, t1) << " ms; all forms " << ms(t1, t2)
              << " ms; split+redact " << ms(t2, t3) << " ms\n";
    CHECK(n_new < n_old);  // the encoded forms were masked too
    CHECK(n_split == n_new);
  }
}

// Run by hand: ephrun_tests "secrets bench: adding 150 generated keys".
// Each launch registers its private key; a fleet of 150 adds them one after another.
TEST_CASE("secrets bench: adding 150 generated keys", "[.bench][secrets-bench]") {
  std::vector<std::string> keys;
  for (int i = 0; i < 150; ++i) keys.push_back(ssh::generate_ed25519("bench").private_pem);
  Secrets s;
  for (int b = 0; b < 3; ++b) {
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 50; ++i) {
      s.add("ssh-private-key", keys[static_cast<std::size_t>(b * 50 + i)]);
      (void)s.redact("a log line between two adds, as each launch writes one");
    }
    std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
    std::cout << "keys " << b * 50 + 1 << "-" << b * 50 + 50 << ": " << dt.count() << " s\n";
  }
}
