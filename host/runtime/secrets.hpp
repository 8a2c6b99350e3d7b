// Values registered as secret are replaced in every log line, plan and error.
#pragma once

#include <mutex>
#include <string>
#include <vector>

namespace ephrun {

class Secrets {
 public:
  /// Registers `value` (ignored when shorter than 4 bytes: too many false hits).
  void add(const std::string& name, const std::string& value);
  /// Replaces each registered value in `text` by `<secret:NAME>`.
  [[nodiscard]] std::string redact(std::string text) const;
  [[nodiscard]] bool empty() const;

  static Secrets& global();

 private:
  struct Entry {
    std::string name, value;
  };
  mutable std::mutex mu_;
  std::vector<Entry> entries_;
};

/// Shorthand for `Secrets::global().redact(text)`.
std::string redact(std::string text);

}  // namespace ephrun
