#include "ssh/util.hpp"

#include <openssl/evp.h>

#include <array>

#include "ssh/error.hpp"

namespace ephrun::ssh {

const char* kind_name(ErrorKind k) noexcept {
  switch (k) {
    case ErrorKind::refused:
      return "refused";
    case ErrorKind::timeout:
      return "timeout";
    case ErrorKind::banner:
      return "banner";
    case ErrorKind::auth:
      return "auth";
    case ErrorKind::host_key_mismatch:
      return "host_key_mismatch";
    case ErrorKind::host_key_unknown:
      return "host_key_unknown";
    case ErrorKind::cancelled:
      return "cancelled";
    case ErrorKind::other:
      return "other";
  }
  return "other";
}

std::string base64_encode(std::string_view data) {
  std::string out(4 * ((data.size() + 2) / 3), '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(data.data()),
                          static_cast<int>(data.size()));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

std::string base64_decode(std::string_view text) {
  static constexpr std::string_view kAlphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  std::uint32_t acc = 0;
  int bits = 0;
  bool padding = false;
  for (char c : text) {
    if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
    if (c == '=') {
      padding = true;
      continue;
    }
    auto idx = kAlphabet.find(c);
    if (idx == std::string_view::npos || padding)
      throw Error(ErrorKind::other, "invalid base64 data");
    acc = (acc << 6) | static_cast<std::uint32_t>(idx);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  return out;
}

std::string sha256(std::string_view data) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> md{};
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), md.data(), &len, EVP_sha256(), nullptr) != 1)
    throw Error(ErrorKind::other, "SHA-256 failed");
  return std::string(reinterpret_cast<char*>(md.data()), len);
}

std::string hex(std::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 15]);
  }
  return out;
}

std::string shell_quote(std::string_view s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'')
      out += "'\\''";
    else
      out.push_back(c);
  }
  out += "'";
  return out;
}

namespace detail {
void put_u32(std::string& out, std::uint32_t v) {
  out.push_back(static_cast<char>((v >> 24) & 0xff));
  out.push_back(static_cast<char>((v >> 16) & 0xff));
  out.push_back(static_cast<char>((v >> 8) & 0xff));
  out.push_back(static_cast<char>(v & 0xff));
}
void put_string(std::string& out, std::string_view s) {
  put_u32(out, static_cast<std::uint32_t>(s.size()));
  out.append(s);
}
std::uint32_t get_u32(std::string_view in, std::size_t& pos) {
  if (in.size() < pos + 4) throw Error(ErrorKind::other, "truncated SSH key data");
  auto b = [&](std::size_t i) {
    return static_cast<std::uint32_t>(static_cast<unsigned char>(in[pos + i]));
  };
  std::uint32_t v = (b(0) << 24) | (b(1) << 16) | (b(2) << 8) | b(3);
  pos += 4;
  return v;
}
std::string_view get_string(std::string_view in, std::size_t& pos) {
  std::uint32_t n = get_u32(in, pos);
  if (in.size() - pos < n) throw Error(ErrorKind::other, "truncated SSH key data");
  auto s = in.substr(pos, n);
  pos += n;
  return s;
}
}  // namespace detail

}  // namespace ephrun::ssh
