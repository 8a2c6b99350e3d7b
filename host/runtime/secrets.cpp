#include "runtime/secrets.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <deque>

#include "ssh/util.hpp"

namespace ephrun {

// How the forms are found. Writing out every encoding of every secret as a
// fixed string would not cover the encoders that exist (Python's quote keeps
// '/', curl's escape does not; JSON may or may not escape '/' or use \u00XX),
// and the combinations multiply. Instead the text is *decoded* the three ways a
// secret gets encoded on its way into a log (URL, JSON string, shell word), with
// each decoded byte mapped back to the span of text it came from, and one
// Aho-Corasick automaton over the raw values (plus their base64) runs over the
// text and over each decoding as it is decoded. A hit in a decoding masks the span it came from.
// Each pass is linear, and a decoding only looks near its escape bytes.
namespace secrets_detail {

struct Range {
  std::size_t begin, end;
  int secret;
};

// One token of an encoded text: the bytes it stands for (a UTF-8 sequence at
// most) and how many text bytes it spans.
struct Token {
  char bytes[4];
  std::uint8_t n = 0, len = 1;
};

int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

Token literal(char c) {
  Token k;
  k.bytes[0] = c;
  k.n = 1;
  return k;
}

// %XX in either case, '+' for a space (form encoding).
Token url_token(std::string_view t, std::size_t i) {
  if (t[i] == '%' && i + 2 < t.size() && hexval(t[i + 1]) >= 0 && hexval(t[i + 2]) >= 0) {
    Token k = literal(static_cast<char>(hexval(t[i + 1]) * 16 + hexval(t[i + 2])));
    k.len = 3;
    return k;
  }
  return literal(t[i] == '+' ? ' ' : t[i]);
}

int hex4(std::string_view t, std::size_t i) {
  if (i + 4 > t.size()) return -1;
  int v = 0;
  for (std::size_t k = 0; k < 4; ++k) {
    int h = hexval(t[i + k]);
    if (h < 0) return -1;
    v = v * 16 + h;
  }
  return v;
}

Token utf8(std::uint32_t cp, std::size_t len) {
  Token k;
  k.len = static_cast<std::uint8_t>(len);
  auto put = [&](std::uint32_t v) { k.bytes[k.n++] = static_cast<char>(v); };
  if (cp < 0x80) {
    put(cp);
  } else if (cp < 0x800) {
    put(0xC0 | (cp >> 6));
    put(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    put(0xE0 | (cp >> 12));
    put(0x80 | ((cp >> 6) & 0x3F));
    put(0x80 | (cp & 0x3F));
  } else {
    put(0xF0 | (cp >> 18));
    put(0x80 | ((cp >> 12) & 0x3F));
    put(0x80 | ((cp >> 6) & 0x3F));
    put(0x80 | (cp & 0x3F));
  }
  return k;
}

// The inside of a JSON string: \" \\ \/ \b \f \n \r \t and \uXXXX (surrogate
// pairs joined), so a secret with quotes, slashes or control bytes is found.
Token json_token(std::string_view t, std::size_t i) {
  if (t[i] != '\\' || i + 1 >= t.size()) return literal(t[i]);
  static constexpr std::string_view kIn = "\"\\/bfnrt", kOut = "\"\\/\b\f\n\r\t";
  if (auto e = kIn.find(t[i + 1]); e != std::string_view::npos) {
    Token k = literal(kOut[e]);
    k.len = 2;
    return k;
  }
  int cp = t[i + 1] == 'u' ? hex4(t, i + 2) : -1;
  if (cp < 0) return literal(t[i]);
  if (cp >= 0xD800 && cp < 0xDC00 && i + 12 <= t.size() && t[i + 6] == '\\' && t[i + 7] == 'u') {
    int lo = hex4(t, i + 8);
    if (lo >= 0xDC00 && lo < 0xE000)
      return utf8(0x10000 + ((static_cast<std::uint32_t>(cp) - 0xD800) << 10) +
                      static_cast<std::uint32_t>(lo - 0xDC00),
                  12);
  }
  return utf8(static_cast<std::uint32_t>(cp), 6);
}

// A single-quoted shell word: '\'' and '"'"' put a single quote inside one
// (ephrun.shell_quote and Python's shlex.quote write them). Backslashes are
// literal there, so this is a pass of its own.
Token single_quote_token(std::string_view t, std::size_t i) {
  Token k = literal(t[i]);
  if (t[i] != '\'') return k;
  if (t.compare(i, 4, "'\\''") == 0)
    k.len = 4;
  else if (t.compare(i, 5, "'\"'\"'") == 0)
    k.len = 5;
  return k;
}

// Backslash escapes of a double-quoted or bare shell word (\" \\ \$ \` \x).
Token backslash_token(std::string_view t, std::size_t i) {
  if (t[i] != '\\' || i + 1 >= t.size()) return literal(t[i]);
  Token k = literal(t[i + 1]);
  k.len = 2;
  return k;
}

// Whether some backslash escapes a byte other than '"', '\\' or '/', the only
// escapes that the JSON and the shell reading decode alike.
bool shell_escapes_differ(std::string_view t) {
  for (std::size_t i = t.find('\\'); i != std::string_view::npos; i = t.find('\\', i)) {
    if (i + 1 >= t.size()) return false;
    char c = t[i + 1];
    if (c != '"' && c != '\\' && c != '/') return true;
    i += 2;
  }
  return false;
}

// The longest escape sequence any decoder reads (a \uD83D\uDE00 pair), and the
// most text bytes one secret byte can become ('\uXXXX').
constexpr std::size_t kMaxToken = 12;
constexpr std::size_t kMaxExpansion = 6;

bool escape_byte(char c) { return c == '\\' || c == '%' || c == '\''; }

// A DFA over byte classes: only bytes that occur in some pattern get a class of
// their own, which keeps the table small (states × classes).
struct Matcher {
  std::array<std::uint16_t, 256> cls{};
  std::size_t nclass = 1;
  std::vector<std::int32_t> next;      // state * nclass + class
  std::vector<std::uint32_t> out_len;  // longest pattern ending in this state, 0 = none
  std::vector<std::int32_t> out_secret;
  std::size_t max_pattern = 0;  // longest pattern, in decoded bytes
  std::size_t ring_size = 1;    // a power of two >= max_pattern

  void build(const std::vector<std::pair<std::string, int>>& patterns) {
    for (const auto& [p, _] : patterns)
      for (unsigned char c : p)
        if (cls[c] == 0) cls[c] = static_cast<std::uint16_t>(nclass++);
    // Trie first (-1 = no edge), then breadth-first failure links fill the DFA.
    next.assign(nclass, -1);
    out_len.assign(1, 0);
    out_secret.assign(1, -1);
    for (const auto& [p, secret] : patterns) {
      std::int32_t s = 0;
      for (unsigned char c : p) {
        auto& edge = next[static_cast<std::size_t>(s) * nclass + cls[c]];
        if (edge < 0) {
          edge = static_cast<std::int32_t>(out_len.size());
          out_len.push_back(0);
          out_secret.push_back(-1);
          next.resize(next.size() + nclass, -1);
        }
        s = next[static_cast<std::size_t>(s) * nclass + cls[c]];
      }
      if (p.size() > out_len[static_cast<std::size_t>(s)]) {
        out_len[static_cast<std::size_t>(s)] = static_cast<std::uint32_t>(p.size());
        out_secret[static_cast<std::size_t>(s)] = secret;
      }
    }
    std::vector<std::int32_t> fail(out_len.size(), 0);
    std::deque<std::int32_t> queue;
    for (std::size_t c = 0; c < nclass; ++c) {
      auto& e = next[c];
      if (e < 0) {
        e = 0;
      } else {
        fail[static_cast<std::size_t>(e)] = 0;
        queue.push_back(e);
      }
    }
    while (!queue.empty()) {
      auto s = static_cast<std::size_t>(queue.front());
      queue.pop_front();
      auto f = static_cast<std::size_t>(fail[s]);
      if (out_len[f] > out_len[s]) {
        out_len[s] = out_len[f];
        out_secret[s] = out_secret[f];
      }
      for (std::size_t c = 0; c < nclass; ++c) {
        auto& e = next[s * nclass + c];
        if (e < 0) {
          e = next[f * nclass + c];
        } else {
          fail[static_cast<std::size_t>(e)] = next[f * nclass + c];
          queue.push_back(e);
        }
      }
    }
    for (const auto& [p, _] : patterns) max_pattern = std::max(max_pattern, p.size());
    while (ring_size < max_pattern) ring_size *= 2;
  }

  // Appends [begin, end) of every occurrence in `t`.
  void scan(std::string_view t, std::vector<Range>& out) const {
    std::size_t s = 0;
    for (std::size_t i = 0; i < t.size(); ++i) {
      s = static_cast<std::size_t>(next[s * nclass + cls[static_cast<unsigned char>(t[i])]]);
      if (out_len[s] != 0) out.push_back({i + 1 - out_len[s], i + 1, out_secret[s]});
    }
  }

  // The same over what `token` decodes `t` to, without building the decoded
  // text: a ring remembers where each of the last `ring_size` decoded bytes
  // began in `t`, enough to map back the longest pattern. `lead` lists the one
  // or two bytes that can begin an escape; plain stretches farther than the
  // longest pattern from any escape decode to themselves, the raw scan has seen
  // them, and they are skipped.
  template <class TokenFn>
  void scan_decoded(std::string_view t, std::string_view lead, TokenFn token,
                    std::vector<Range>& out) const {
    auto next_lead = [&](std::size_t from) {
      return lead.size() == 1 ? t.find(lead[0], from) : t.find_first_of(lead, from);
    };
    thread_local std::vector<std::uint32_t> ring;
    ring.resize(ring_size);
    const std::size_t mask = ring_size - 1;
    std::size_t s = 0, j = 0, plain = max_pattern, i = 0;
    while (i < t.size()) {
      if (plain >= max_pattern) {
        std::size_t e = next_lead(i);
        if (e == std::string_view::npos) return;
        if (e > i + max_pattern) {
          i = e - max_pattern;
          s = 0;
        }
        plain = 0;
      }
      if (t[i] != lead.front() && t[i] != lead.back()) {  // a plain byte: itself
        ring[j & mask] = static_cast<std::uint32_t>(i);
        s = static_cast<std::size_t>(next[s * nclass + cls[static_cast<unsigned char>(t[i])]]);
        if (out_len[s] != 0)
          out.push_back({ring[(j + 1 - out_len[s]) & mask], i + 1, out_secret[s]});
        ++j;
        ++plain;
        ++i;
        continue;
      }
      Token k = token(t, i);
      for (std::uint8_t b = 0; b < k.n; ++b, ++j) {
        ring[j & mask] = static_cast<std::uint32_t>(i);
        s = static_cast<std::size_t>(
            next[s * nclass + cls[static_cast<unsigned char>(k.bytes[b])]]);
        if (out_len[s] != 0)
          out.push_back({ring[(j + 1 - out_len[s]) & mask], i + k.len, out_secret[s]});
      }
      plain = (k.len > 1 || k.bytes[0] != t[i]) ? 0 : plain + 1;
      i += k.len;
    }
  }

  // Appends every occurrence in any form, unsorted; `shell` and `quoted` say
  // whether the text needs the shell-word passes (see Set::find).
  void collect(std::string_view t, bool shell, bool quoted, std::vector<Range>& hits) const {
    scan(t, hits);
    // Lambdas rather than function pointers, so each token function is inlined.
    scan_decoded(
        t, "%+", [](std::string_view x, std::size_t i) { return url_token(x, i); }, hits);
    scan_decoded(
        t, "\\", [](std::string_view x, std::size_t i) { return json_token(x, i); }, hits);
    if (shell)
      scan_decoded(
          t, "\\", [](std::string_view x, std::size_t i) { return backslash_token(x, i); }, hits);
    if (quoted)
      scan_decoded(
          t, "'", [](std::string_view x, std::size_t i) { return single_quote_token(x, i); }, hits);
  }
};

// The matchers of all registered secrets. Rebuilding one automaton over every
// secret on each add made N adds cost O(N^2) (150 generated keys: 3.5 s), so
// the secrets are split into runs of 1, 2, 4, ... in the order added, one
// matcher each, merged like a binary counter: each secret's forms go into
// O(log N) builds, and a redaction scans O(log N) automata.
struct Set {
  struct Level {
    std::shared_ptr<const Matcher> matcher;
    std::size_t begin, count;  // the entries it covers
  };
  std::vector<Level> levels;
  std::vector<std::string> masks;  // "<secret:NAME>" by secret index
  std::size_t max_form = 0;        // longest text span one occurrence can cover

  // Every occurrence in any form, as sorted, disjoint ranges (overlaps merged,
  // keeping the name of the longest).
  std::vector<Range> find(std::string_view t) const {
    // Where every backslash escapes '"', '\\' or '/', the shell reading equals the JSON one.
    const bool shell = shell_escapes_differ(t);
    // An apostrophe is common in prose; this pass only runs when a quoted one is there.
    const bool quoted =
        t.find("'\\''") != std::string_view::npos || t.find("'\"'\"'") != std::string_view::npos;
    std::vector<Range> hits;
    for (const auto& l : levels) l.matcher->collect(t, shell, quoted, hits);
    if (hits.empty()) return hits;
    std::sort(hits.begin(), hits.end(), [](const Range& a, const Range& b) {
      return a.begin != b.begin ? a.begin < b.begin : a.end > b.end;
    });
    std::vector<Range> merged;
    for (const auto& r : hits) {
      if (!merged.empty() && r.begin < merged.back().end) {
        auto& m = merged.back();
        if (r.end - r.begin > m.end - m.begin) m.secret = r.secret;
        m.end = std::max(m.end, r.end);
      } else {
        merged.push_back(r);
      }
    }
    return merged;
  }
};

std::vector<std::pair<std::string, int>> forms(const std::string& value, int secret) {
  std::vector<std::pair<std::string, int>> out{{value, secret}};
  // base64 of the value alone, standard and URL-safe, without the padding
  // (the '=' may be there or not). Base64 of a longer text that contains the
  // value starts at another bit offset and is not covered.
  std::string b64 = ssh::base64_encode(value);
  while (!b64.empty() && b64.back() == '=') b64.pop_back();
  out.emplace_back(b64, secret);
  std::string url = b64;
  std::replace(url.begin(), url.end(), '+', '-');
  std::replace(url.begin(), url.end(), '/', '_');
  if (url != b64) out.emplace_back(url, secret);
  return out;
}

}  // namespace secrets_detail

using secrets_detail::Matcher;
using secrets_detail::Set;

Secrets::Secrets() = default;
Secrets::~Secrets() = default;

void Secrets::add(const std::string& name, const std::string& value) {
  if (value.empty()) return;
  if (value.size() < kMinLength) {
    bool first;
    {
      std::lock_guard lk(mu_);
      first = warned_short_.insert(name).second;
    }
    // Logged without the lock: the log sink redacts, which takes it.
    if (first)
      spdlog::warn(
          "secret {} is shorter than {} characters and will NOT be redacted from logs, plans "
          "or errors (so short a value would mask ordinary text); use a longer one",
          name, kMinLength);
    return;
  }
  std::lock_guard lk(mu_);
  for (const auto& e : entries_)
    if (e.value == value) return;
  const int index = static_cast<int>(entries_.size());
  entries_.push_back({name, value, secrets_detail::forms(value, index)});
  for (const auto& f : entries_.back().forms) pattern_bytes_ += f.first.size();
  debt_ = 0;
  // A new snapshot: redactions in flight keep scanning the one they took.
  auto set = set_ ? std::make_shared<Set>(*set_) : std::make_shared<Set>();
  set->masks.push_back("<secret:" + name + ">");
  set->max_form = std::max(set->max_form, value.size() * secrets_detail::kMaxExpansion);
  set->levels.push_back({nullptr, entries_.size() - 1, 1});
  auto& ls = set->levels;
  while (ls.size() >= 2 && ls[ls.size() - 2].count == ls.back().count) {
    ls[ls.size() - 2].count += ls.back().count;
    ls.pop_back();
  }
  std::vector<std::pair<std::string, int>> patterns;
  for (std::size_t i = ls.back().begin; i < entries_.size(); ++i)
    patterns.insert(patterns.end(), entries_[i].forms.begin(), entries_[i].forms.end());
  auto m = std::make_shared<Matcher>();
  m->build(patterns);
  ls.back().matcher = std::move(m);
  set_ = std::move(set);
}

// Several matchers make every scan several passes: once the scanning they
// cost has paid for it (kCompact times the patterns' bytes, the order of one
// build), the secrets are held by one matcher again. Adds reset the count, so
// a burst of adds with logging in between (a fleet's launches) does not
// rebuild everything each time.
constexpr std::size_t kCompact = 16;

std::shared_ptr<const Set> Secrets::matcher(std::size_t scanning) const {
  std::lock_guard lk(mu_);
  if (!set_ || set_->levels.size() < 2) return set_;
  debt_ += scanning * (set_->levels.size() - 1);
  if (debt_ <= pattern_bytes_ * kCompact) return set_;
  std::vector<std::pair<std::string, int>> patterns;
  for (const auto& e : entries_) patterns.insert(patterns.end(), e.forms.begin(), e.forms.end());
  auto m = std::make_shared<Matcher>();
  m->build(patterns);
  auto set = std::make_shared<Set>(*set_);
  set->levels = {{std::move(m), 0, entries_.size()}};
  set_ = std::move(set);
  debt_ = 0;
  return set_;
}

std::string Secrets::redact(std::string text) const {
  auto m = matcher(text.size());
  if (!m) return text;
  auto ranges = m->find(text);
  if (ranges.empty()) return text;
  std::string out;
  out.reserve(text.size());
  std::size_t pos = 0;
  for (const auto& r : ranges) {
    out.append(text, pos, r.begin - pos);
    out += m->masks[static_cast<std::size_t>(r.secret)];
    pos = r.end;
  }
  out.append(text, pos, std::string::npos);
  return out;
}

bool Secrets::empty() const { return matcher(0) == nullptr; }

std::size_t Secrets::safe_cut(std::string_view text, std::size_t max) const {
  auto m = matcher(0);
  if (!m) return std::min(text.size(), max);
  if (text.size() < m->max_form) return 0;
  // Everything from here on may be the start of an occurrence still arriving.
  const std::size_t limit = std::min(max, text.size() - m->max_form + 1);
  // Only occurrences that could span a cut up to `limit` matter.
  auto ranges = m->find(text.substr(0, limit + m->max_form + secrets_detail::kMaxToken));
  auto inside = [&](std::size_t c) -> const secrets_detail::Range* {
    for (const auto& r : ranges)
      if (r.begin < c && c < r.end) return &r;
    return nullptr;
  };
  auto split_token = [&](std::size_t c) {
    for (std::size_t k = c > secrets_detail::kMaxToken ? c - secrets_detail::kMaxToken : 0; k < c;
         ++k)
      if (secrets_detail::escape_byte(text[k])) return k;
    return c;
  };
  // Step back until the cut splits neither an occurrence nor an escape sequence.
  std::size_t c = limit;
  while (c > 0) {
    if (auto* r = inside(c)) {
      c = r->begin;
      continue;
    }
    std::size_t k = split_token(c);
    if (k == c) return c;
    c = k;
  }
  // No such place (a line that is all escapes, or one long run of secrets):
  // cut after the occurrence that covers the limit, or at the limit.
  if (auto* r = inside(limit)) return r->end;
  return limit;
}

Secrets& Secrets::global() {
  static Secrets s;
  return s;
}

std::string redact(std::string text) { return Secrets::global().redact(std::move(text)); }

LineSplitter::LineSplitter(Fn on_line, std::size_t max_line, const Secrets& secrets)
    : on_line_(std::move(on_line)), max_line_(max_line), secrets_(secrets) {}

// Passes on the head of `text` in pieces of at most max_line bytes while more
// than that is left, each cut where safe_cut allows; returns what is left.
std::string_view LineSplitter::pieces(std::string_view text) {
  while (text.size() > max_line_) {
    std::size_t cut = secrets_.safe_cut(text, max_line_);
    if (cut == 0) break;
    on_line_(text.substr(0, cut));
    text.remove_prefix(cut);
  }
  return text;
}

void LineSplitter::feed(std::string_view data) {
  partial_.append(data);
  std::size_t start = 0;
  for (;;) {
    auto nl = partial_.find('\n', start);
    if (nl == std::string::npos) break;
    std::string_view line(partial_.data() + start, nl - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    // However the stream was read, a long line comes out in the same pieces.
    on_line_(pieces(line));
    start = nl + 1;
  }
  partial_.erase(0, start);
  // The buffer stays bounded by max_line plus the longest encoded secret.
  std::string_view rest = pieces(partial_);
  partial_.erase(0, partial_.size() - rest.size());
}

void LineSplitter::finish() {
  if (!partial_.empty()) on_line_(pieces(partial_));
  partial_.clear();
}

}  // namespace ephrun
