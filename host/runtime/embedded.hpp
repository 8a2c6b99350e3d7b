// Lua sources compiled into the binary by cmake/embed.cmake.
#pragma once

#include <cstddef>
#include <string_view>

namespace ephrun {

struct EmbeddedFile {
  const char* path;  // relative to the source root, e.g. "stdlib/ephrun/init.lua"
  const char* data;
  std::size_t size;
};

/// Terminated by an entry whose path is null.
extern const EmbeddedFile kEmbeddedFiles[];

/// The embedded file at `path`, or null.
const EmbeddedFile* find_embedded(std::string_view path);

}  // namespace ephrun
