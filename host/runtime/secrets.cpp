#include "runtime/secrets.hpp"

#include <algorithm>

namespace ephrun {

void Secrets::add(const std::string& name, const std::string& value) {
  if (value.size() < 4) return;
  std::lock_guard lk(mu_);
  for (const auto& e : entries_)
    if (e.value == value) return;
  entries_.push_back({name, value});
  // Longest first, so a secret containing another is replaced whole.
  std::sort(entries_.begin(), entries_.end(),
            [](const Entry& a, const Entry& b) { return a.value.size() > b.value.size(); });
}

std::string Secrets::redact(std::string text) const {
  std::lock_guard lk(mu_);
  for (const auto& e : entries_) {
    const std::string mask = "<secret:" + e.name + ">";
    for (size_t pos = text.find(e.value); pos != std::string::npos;
         pos = text.find(e.value, pos + mask.size()))
      text.replace(pos, e.value.size(), mask);
  }
  return text;
}

bool Secrets::empty() const {
  std::lock_guard lk(mu_);
  return entries_.empty();
}

Secrets& Secrets::global() {
  static Secrets s;
  return s;
}

std::string redact(std::string text) { return Secrets::global().redact(std::move(text)); }

}  // namespace ephrun
