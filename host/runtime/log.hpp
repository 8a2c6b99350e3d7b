// spdlog set-up: a redacting sink on stderr, optionally a debug-level file.
#pragma once

#include <spdlog/spdlog.h>

#include <string>

namespace ephrun {

/// verbosity: -1 quiet (warnings and errors), 0 info, 1 debug, 2+ trace.
void init_logging(int verbosity, const std::string& log_file);

/// Writes a line to stderr, redacted, bypassing levels (for final reports).
void report(const std::string& line);

}  // namespace ephrun
