// Durations as people write them: "90s", "45m", "3h", "1h30m", "2d", "500ms".
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace ephrun {

/// Seconds in `text`, or nullopt when it is not a duration. A bare number is seconds.
std::optional<double> parse_duration(std::string_view text);

/// "1h 05m", "3m 20s", "4.2s", "350ms".
std::string format_duration(double seconds);

}  // namespace ephrun
