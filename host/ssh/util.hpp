// Small helpers shared by the SSH layer (encoding, hashing, shell quoting).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace ephrun::ssh {

/// Standard base64 with '=' padding (as in .pub files).
std::string base64_encode(std::string_view data);
/// Decodes standard base64; ignores whitespace; throws ssh::Error(other) on bad input.
std::string base64_decode(std::string_view text);
/// Raw 32-byte SHA-256 digest.
std::string sha256(std::string_view data);
/// Lowercase hex of bytes.
std::string hex(std::string_view bytes);
/// Quotes `s` for a POSIX shell as one word: 'it'\''s'. Safe for any byte but NUL.
std::string shell_quote(std::string_view s);

namespace detail {
/// Appends an SSH wire-format uint32 / string (RFC 4251).
void put_u32(std::string& out, std::uint32_t v);
void put_string(std::string& out, std::string_view s);
/// Reads an SSH wire-format string from `in` at `pos`; throws on truncation.
std::string_view get_string(std::string_view in, std::size_t& pos);
std::uint32_t get_u32(std::string_view in, std::size_t& pos);
}  // namespace detail

}  // namespace ephrun::ssh
