// Values registered as secret are replaced in every log line, plan and error,
// in the forms they take on the way there: raw, shell-quoted, JSON-escaped,
// URL-encoded and base64.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ephrun {

namespace secrets_detail {
struct Set;
}

class Secrets {
 public:
  /// Values shorter than this are not redacted (they would mask ordinary text);
  /// registering one logs a warning.
  static constexpr std::size_t kMinLength = 4;

  Secrets();
  ~Secrets();
  Secrets(const Secrets&) = delete;
  Secrets& operator=(const Secrets&) = delete;

  /// Registers `value` under `name`. Its forms are computed once, here; the
  /// matchers are merged so that N adds cost O(N log N) and redacting stays a
  /// linear pass per form of the text for each of O(log N) matchers.
  void add(const std::string& name, const std::string& value);
  /// Replaces each registered value, in any of its encoded forms, by `<secret:NAME>`.
  [[nodiscard]] std::string redact(std::string text) const;
  [[nodiscard]] bool empty() const;

  /// Where a stream that has buffered `text` (and will receive more) may be cut,
  /// at most `max` bytes in, so that redacting the two sides separately hides
  /// everything redacting the whole would: no occurrence of a secret spans the
  /// cut, no escape sequence is split, and everything after it could still be
  /// the start of one. 0 means "not yet" (the text is shorter than the longest
  /// encoded secret).
  [[nodiscard]] std::size_t safe_cut(std::string_view text, std::size_t max) const;

  static Secrets& global();

 private:
  struct Entry {
    std::string name, value;
    std::vector<std::pair<std::string, int>> forms;  // patterns, by secret index
  };
  /// The current matchers, for scanning `scanning` bytes of text.
  [[nodiscard]] std::shared_ptr<const secrets_detail::Set> matcher(std::size_t scanning) const;

  mutable std::mutex mu_;
  std::vector<Entry> entries_;
  std::set<std::string> warned_short_;
  // Replaced on add (and when compacted), read without holding mu_ during a scan.
  mutable std::shared_ptr<const secrets_detail::Set> set_;  // compacted by redactions
  std::size_t pattern_bytes_ = 0;                           // of every form of every entry
  mutable std::size_t debt_ = 0;  // bytes scanned × extra matchers since the last change
};

/// Shorthand for `Secrets::global().redact(text)`.
std::string redact(std::string text);

/// Splits a child's output stream into lines for `on_line` (without '\n' or a
/// trailing '\r'). A line longer than `max_line` is passed on in pieces, cut only
/// where `Secrets::safe_cut` allows, so that a secret straddling a piece boundary
/// is still redacted by whoever logs the pieces.
class LineSplitter {
 public:
  using Fn = std::function<void(std::string_view)>;
  explicit LineSplitter(Fn on_line, std::size_t max_line = 65536,
                        const Secrets& secrets = Secrets::global());
  void feed(std::string_view data);
  /// Passes on what is left of an unterminated last line.
  void finish();

 private:
  std::string_view pieces(std::string_view text);

  Fn on_line_;
  std::size_t max_line_;
  const Secrets& secrets_;
  std::string partial_;
};

}  // namespace ephrun
