#include "ssh/tar.hpp"

#include <algorithm>
#include <cstdio>
#include <cstring>

namespace ephrun::ssh::tar {
namespace {

constexpr std::size_t kBlock = 512;

void octal(char* field, std::size_t width, std::uint64_t v) {
  // width includes the terminating NUL
  field[width - 1] = '\0';
  for (std::size_t i = width - 1; i-- > 0;) {
    field[i] = static_cast<char>('0' + (v & 7));
    v >>= 3;
  }
}

void pax_record(std::string& out, std::string_view key, std::string_view value) {
  std::size_t body = 1 + key.size() + 1 + value.size() + 1;  // " key=value\n"
  std::size_t len = body + 1;
  while (std::to_string(len).size() + body != len) len = std::to_string(len).size() + body;
  out += std::to_string(len);
  out += ' ';
  out.append(key);
  out += '=';
  out.append(value);
  out += '\n';
}

void put_field(char* dst, std::string_view v, std::size_t max) {
  if (!v.empty()) std::memcpy(dst, v.data(), std::min(v.size(), max));
}

void raw_header(std::string& out, std::string_view name, std::string_view prefix, char type,
                unsigned mode, std::uint64_t size, std::int64_t mtime, std::string_view link) {
  char h[kBlock];
  std::memset(h, 0, sizeof h);
  put_field(h, name, 100);
  octal(h + 100, 8, mode & 07777);
  octal(h + 108, 8, 0);
  octal(h + 116, 8, 0);
  octal(h + 124, 12, size);
  octal(h + 136, 12, static_cast<std::uint64_t>(std::max<std::int64_t>(mtime, 0)));
  h[156] = type;
  put_field(h + 157, link, 100);
  std::memcpy(h + 257, "ustar", 6);
  std::memcpy(h + 263, "00", 2);
  put_field(h + 345, prefix, 155);
  std::memset(h + 148, ' ', 8);
  unsigned sum = 0;
  for (unsigned char c : h) sum += c;
  octal(h + 148, 7, sum);
  h[155] = ' ';
  out.append(h, sizeof h);
}

// Splits `name` into ustar prefix/name; false when it cannot fit.
bool ustar_split(const std::string& name, std::string_view& prefix, std::string_view& base) {
  if (name.size() <= 100) {
    prefix = {};
    base = name;
    return true;
  }
  for (std::size_t i = name.size() - 1; i > 0; --i) {
    if (name[i] != '/') continue;
    if (i <= 155 && name.size() - i - 1 <= 100 && name.size() - i - 1 > 0) {
      prefix = std::string_view(name).substr(0, i);
      base = std::string_view(name).substr(i + 1);
      return true;
    }
    if (i < name.size() - 101) break;
  }
  return false;
}

}  // namespace

void write_header(std::string& out, const Entry& e) {
  std::string name = e.path;
  if (e.type == Type::dir) name += '/';
  std::string_view prefix, base;
  bool fits = ustar_split(name, prefix, base);
  bool link_fits = e.link.size() <= 100;
  bool size_fits = e.size < (1ull << 33);
  std::string pax;
  if (!fits) pax_record(pax, "path", name);
  if (!link_fits) pax_record(pax, "linkpath", e.link);
  if (!size_fits) pax_record(pax, "size", std::to_string(e.size));
  if (e.mtime_nsec != 0) {
    char buf[48];
    std::snprintf(buf, sizeof buf, "%lld.%09ld", static_cast<long long>(e.mtime_sec), e.mtime_nsec);
    pax_record(pax, "mtime", buf);
  }
  if (!pax.empty()) {
    raw_header(out, "././@PaxHeader", {}, 'x', 0644, pax.size(), e.mtime_sec, {});
    out += pax;
    write_padding(out, pax.size());
  }
  if (!fits) {
    base = std::string_view(name).substr(0, std::min<std::size_t>(name.size(), 100));
    prefix = {};
  }
  raw_header(out, base, prefix, static_cast<char>(e.type), e.mode,
             e.type == Type::file && size_fits ? e.size : 0, e.mtime_sec,
             std::string_view(e.link).substr(0, std::min<std::size_t>(e.link.size(), 100)));
}

void write_padding(std::string& out, std::uint64_t size) {
  auto rem = size % kBlock;
  if (rem) out.append(kBlock - rem, '\0');
}

void write_end(std::string& out) { out.append(2 * kBlock, '\0'); }

void parse_time(std::string_view v, std::int64_t& sec, long& nsec) {
  auto dot = v.find('.');
  sec = std::strtoll(std::string(v.substr(0, dot)).c_str(), nullptr, 10);
  nsec = 0;
  if (dot != std::string_view::npos) {
    std::string frac(v.substr(dot + 1, 9));
    frac.resize(9, '0');
    nsec = std::strtol(frac.c_str(), nullptr, 10);
  }
}

}  // namespace ephrun::ssh::tar
