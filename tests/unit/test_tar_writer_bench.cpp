// Hidden probe ([.bench]): sync's hand-written tar writer against libarchive's pax
// writer on the cold-sync tree (5,000 files / ~200 MB, the shape of bench/ssh.py), both
// reading the same files into a stream that is thrown away 1 MiB at a time, as sync's
// producer does. Run by hand: ephrun_tests '[.bench]' -c 'tar writer'.
#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <vector>

#include "../support/sshd_fixture.hpp"
#include "ssh/tar.hpp"

using namespace ephrun;
namespace fs = std::filesystem;

namespace {

struct File {
  std::string rel;
  struct stat st;
};

std::vector<File> make_tree(const std::string& root) {
  std::uint64_t x = 88172645463325252ull;
  auto next = [&] {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
  };
  std::string buf;
  std::vector<File> files;
  for (int i = 0; i < 5000; ++i) {
    std::string rel = "d" + std::to_string(i / 100) + (i % 3 == 0 ? "/sub" : "");
    fs::create_directories(root + "/" + rel);
    std::size_t size = (i % 100 == 0) ? (2u << 20) : (1000 + (next() % 39000));
    buf.resize((size + 7) / 8 * 8);
    for (std::size_t j = 0; j < buf.size(); j += 8) {
      auto v = next();
      std::memcpy(&buf[j], &v, 8);
    }
    buf.resize(size);
    rel += "/f" + std::to_string(i) + ".dat";
    test::write_text(root + "/" + rel, buf, i % 50 == 0 ? 0755 : 0644);
    File f{rel, {}};
    ::stat((root + "/" + rel).c_str(), &f.st);
    files.push_back(f);
  }
  return files;
}

constexpr std::size_t kTarget = 1 << 20;

// Reads a whole file through `sink` in 1 MiB pieces.
template <class Sink>
void read_file(const std::string& path, std::string& buf, Sink&& sink) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  buf.resize(kTarget);
  ssize_t n;
  while ((n = ::read(fd, buf.data(), buf.size())) > 0) sink(buf.data(), static_cast<size_t>(n));
  ::close(fd);
}

std::uint64_t hand_written(const std::string& root, const std::vector<File>& files) {
  std::string out, buf;
  std::uint64_t total = 0;
  auto flush = [&] {
    if (out.size() < kTarget) return;
    total += out.size();
    out.clear();
  };
  for (auto& f : files) {
    ssh::tar::Entry e;
    e.path = f.rel;
    e.mode = f.st.st_mode & 07777;
    e.size = static_cast<std::uint64_t>(f.st.st_size);
    e.mtime_sec = f.st.st_mtim.tv_sec;
    e.mtime_nsec = f.st.st_mtim.tv_nsec;
    ssh::tar::write_header(out, e);
    read_file(root + "/" + f.rel, buf, [&](const char* p, std::size_t n) {
      out.append(p, n);
      flush();
    });
    ssh::tar::write_padding(out, e.size);
    flush();
  }
  ssh::tar::write_end(out);
  return total + out.size();
}

std::uint64_t with_libarchive(const std::string& root, const std::vector<File>& files) {
  struct Sink {
    std::string out;
    std::uint64_t total = 0;
  } sink;
  struct archive* a = archive_write_new();
  archive_write_set_format_pax(a);
  archive_write_set_bytes_per_block(a, 0);  // no 10 KiB records: sync streams
  archive_write_open(
      a, &sink, nullptr,
      [](struct archive*, void* s, const void* p, size_t n) -> la_ssize_t {
        auto* k = static_cast<Sink*>(s);
        k->out.append(static_cast<const char*>(p), n);
        if (k->out.size() >= kTarget) {
          k->total += k->out.size();
          k->out.clear();
        }
        return static_cast<la_ssize_t>(n);
      },
      nullptr);
  std::string buf;
  struct archive_entry* e = archive_entry_new();
  for (auto& f : files) {
    archive_entry_clear(e);
    archive_entry_set_pathname(e, f.rel.c_str());
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, f.st.st_mode & 07777);
    archive_entry_set_size(e, f.st.st_size);
    archive_entry_set_mtime(e, f.st.st_mtim.tv_sec, f.st.st_mtim.tv_nsec);
    REQUIRE(archive_write_header(a, e) == ARCHIVE_OK);
    read_file(root + "/" + f.rel, buf,
              [&](const char* p, std::size_t n) { archive_write_data(a, p, n); });
  }
  archive_entry_free(e);
  archive_write_close(a);
  archive_write_free(a);
  return sink.total + sink.out.size();
}

double secs(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

TEST_CASE("tar writer: hand-written vs libarchive on the cold-sync tree", "[.bench]") {
  char tmpl[] = "/tmp/ephrun-tarbench-XXXXXX";
  REQUIRE(::mkdtemp(tmpl));
  std::string root = tmpl;
  auto files = make_tree(root);
  std::uint64_t bytes = 0;
  for (auto& f : files) bytes += static_cast<std::uint64_t>(f.st.st_size);
  hand_written(root, files);  // warm the page cache
  std::vector<double> hand, lib;
  std::uint64_t hand_out = 0, lib_out = 0;
  for (int round = 0; round < 7; ++round) {
    // Alternate, so load from the rest of the machine hits both alike.
    auto t0 = std::chrono::steady_clock::now();
    hand_out = hand_written(root, files);
    hand.push_back(secs(t0));
    t0 = std::chrono::steady_clock::now();
    lib_out = with_libarchive(root, files);
    lib.push_back(secs(t0));
  }
  std::sort(hand.begin(), hand.end());
  std::sort(lib.begin(), lib.end());
  double mb = static_cast<double>(bytes) / 1e6;
  std::cout << "cold-sync tree: " << files.size() << " files, " << mb << " MB\n"
            << "hand-written: median " << hand[3] << " s (" << mb / hand[3] << " MB/s), "
            << hand_out << " bytes out; runs";
  for (double t : hand) std::cout << " " << t;
  std::cout << "\nlibarchive:   median " << lib[3] << " s (" << mb / lib[3] << " MB/s), " << lib_out
            << " bytes out; runs";
  for (double t : lib) std::cout << " " << t;
  std::cout << "\nlibarchive / hand-written: " << lib[3] / hand[3] << "\n";
  fs::remove_all(root);
}
