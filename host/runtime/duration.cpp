#include "runtime/duration.hpp"

#include <fmt/format.h>

#include <cctype>
#include <cmath>
#include <cstdlib>

namespace ephrun {

std::optional<double> parse_duration(std::string_view text) {
  std::string s(text);
  size_t i = 0;
  double total = 0;
  bool any = false;
  while (i < s.size()) {
    while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
    if (i == s.size()) break;
    const char* begin = s.c_str() + i;
    char* end = nullptr;
    double v = std::strtod(begin, &end);
    if (end == begin || !std::isfinite(v) || v < 0) return std::nullopt;
    if (*begin == '+' || *begin == '-' || std::tolower(*begin) == 'i' ||
        std::tolower(*begin) == 'n')
      return std::nullopt;
    i = static_cast<size_t>(end - s.c_str());
    size_t u = i;
    while (i < s.size() && std::isalpha(static_cast<unsigned char>(s[i]))) ++i;
    std::string unit = s.substr(u, i - u);
    double mul;
    if (unit.empty()) {
      if (any || i != s.size()) return std::nullopt;  // "5" alone is seconds; "1h5" is not
      mul = 1;
    } else if (unit == "ms") {
      mul = 0.001;
    } else if (unit == "s" || unit == "sec") {
      mul = 1;
    } else if (unit == "m" || unit == "min") {
      mul = 60;
    } else if (unit == "h") {
      mul = 3600;
    } else if (unit == "d") {
      mul = 86400;
    } else {
      return std::nullopt;
    }
    total += v * mul;
    any = true;
  }
  if (!any) return std::nullopt;
  return total;
}

std::string format_duration(double seconds) {
  if (seconds < 1) return fmt::format("{}ms", static_cast<long>(std::lround(seconds * 1000)));
  if (seconds < 60) return fmt::format("{:.1f}s", seconds);
  long s = std::lround(seconds);
  if (s < 3600) return fmt::format("{}m {:02}s", s / 60, s % 60);
  if (s < 86400) return fmt::format("{}h {:02}m", s / 3600, (s % 3600) / 60);
  return fmt::format("{}d {:02}h", s / 86400, (s % 86400) / 3600);
}

}  // namespace ephrun
