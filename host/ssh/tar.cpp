#include "ssh/tar.hpp"

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "ssh/error.hpp"

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

std::uint64_t parse_num(const char* f, std::size_t n) {
  if (static_cast<unsigned char>(f[0]) & 0x80) {  // GNU base-256
    std::uint64_t v = static_cast<unsigned char>(f[0]) & 0x7f;
    for (std::size_t i = 1; i < n; ++i) v = (v << 8) | static_cast<unsigned char>(f[i]);
    return v;
  }
  std::uint64_t v = 0;
  std::size_t i = 0;
  while (i < n && (f[i] == ' ' || f[i] == '\0')) ++i;
  for (; i < n && f[i] >= '0' && f[i] <= '7'; ++i) v = v * 8 + static_cast<unsigned>(f[i] - '0');
  return v;
}

std::string field_str(const char* f, std::size_t n) { return std::string(f, strnlen(f, n)); }

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

void Reader::feed(std::string_view d) {
  while (!d.empty()) {
    if (state_ == State::header) {
      std::size_t take = std::min(kBlock - block_.size(), d.size());
      block_.append(d.substr(0, take));
      d.remove_prefix(take);
      if (block_.size() == kBlock) {
        header(block_.data());
        block_.clear();
      }
      continue;
    }
    if (left_ > 0) {
      std::size_t take = static_cast<std::size_t>(std::min<std::uint64_t>(left_, d.size()));
      auto piece = d.substr(0, take);
      if (state_ == State::data) {
        if (on_data) on_data(piece);
      } else if (state_ != State::skip) {
        meta_.append(piece);
      }
      left_ -= take;
      d.remove_prefix(take);
      if (left_ > 0) continue;
    }
    if (pad_ > 0) {
      std::size_t take = static_cast<std::size_t>(std::min<std::uint64_t>(pad_, d.size()));
      pad_ -= take;
      d.remove_prefix(take);
      if (pad_ > 0) continue;
    }
    finish_entry();
  }
  if (state_ != State::header && left_ == 0 && pad_ == 0) finish_entry();
}

void Reader::finish_entry() {
  switch (state_) {
    case State::data:
      if (on_end) on_end();
      break;
    case State::pax: {
      std::string_view m(meta_);
      while (!m.empty()) {
        auto sp = m.find(' ');
        if (sp == std::string_view::npos) break;
        std::size_t len = std::strtoul(std::string(m.substr(0, sp)).c_str(), nullptr, 10);
        if (len <= sp + 1 || len > m.size()) break;
        auto rec = m.substr(sp + 1, len - sp - 2);
        auto eq = rec.find('=');
        if (eq != std::string_view::npos) {
          auto k = rec.substr(0, eq), v = rec.substr(eq + 1);
          if (k == "path")
            next_path_ = std::string(v);
          else if (k == "linkpath")
            next_link_ = std::string(v);
          else if (k == "size") {
            next_size_ = std::strtoull(std::string(v).c_str(), nullptr, 10);
            has_next_size_ = true;
          } else if (k == "mtime") {
            parse_time(v, next_mtime_sec_, next_mtime_nsec_);
            has_next_mtime_ = true;
          }
        }
        m.remove_prefix(len);
      }
      break;
    }
    case State::longname:
      next_path_ = std::string(meta_.c_str());
      break;
    case State::longlink:
      next_link_ = std::string(meta_.c_str());
      break;
    default:
      break;
  }
  meta_.clear();
  state_ = State::header;
}

void Reader::header(const char* h) {
  bool zero = std::all_of(h, h + kBlock, [](char c) { return c == 0; });
  if (zero) {
    ++zero_blocks_;
    return;
  }
  zero_blocks_ = 0;
  unsigned sum = 0;
  for (std::size_t i = 0; i < kBlock; ++i)
    sum += (i >= 148 && i < 156) ? ' ' : static_cast<unsigned char>(h[i]);
  if (sum != parse_num(h + 148, 8)) throw Error(ErrorKind::other, "corrupt tar stream (checksum)");
  char type = h[156];
  std::uint64_t size = parse_num(h + 124, 12);
  Entry e;
  std::string name = field_str(h, 100);
  if (std::memcmp(h + 257, "ustar", 5) == 0) {
    std::string prefix = field_str(h + 345, 155);
    if (!prefix.empty() && h[263] == '0') name = prefix + "/" + name;  // POSIX, not GNU
  }
  e.link = field_str(h + 157, 100);
  e.mode = static_cast<unsigned>(parse_num(h + 100, 8) & 07777);
  e.mtime_sec = static_cast<std::int64_t>(parse_num(h + 136, 12));
  if (type == 'x' || type == 'g' || type == 'L' || type == 'K') {
    state_ = type == 'x'   ? State::pax
             : type == 'L' ? State::longname
             : type == 'K' ? State::longlink
                           : State::skip;
    left_ = size;
    pad_ = (kBlock - size % kBlock) % kBlock;
    meta_.clear();
    return;
  }
  if (!next_path_.empty()) name = next_path_;
  if (!next_link_.empty()) e.link = next_link_;
  if (has_next_size_) size = next_size_;
  if (has_next_mtime_) {
    e.mtime_sec = next_mtime_sec_;
    e.mtime_nsec = next_mtime_nsec_;
  }
  next_path_.clear();
  next_link_.clear();
  has_next_size_ = has_next_mtime_ = false;
  while (name.size() > 1 && name.back() == '/') name.pop_back();
  e.path = name;
  switch (type) {
    case '0':
    case '\0':
    case '7':
      e.type = Type::file;
      break;
    case '1':
      e.type = Type::hardlink;
      size = 0;
      break;
    case '2':
      e.type = Type::symlink;
      size = 0;
      break;
    case '5':
      e.type = Type::dir;
      size = 0;
      break;
    default:
      e.type = Type::other;
      break;
  }
  e.size = size;
  left_ = size;
  pad_ = (kBlock - size % kBlock) % kBlock;
  state_ = e.type == Type::other ? State::skip : State::data;
  if (e.type != Type::other && on_entry) on_entry(e);
  cur_ = std::move(e);
}

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
