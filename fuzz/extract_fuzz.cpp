// libFuzzer target over fetch's extraction path (host/ssh/extract.cpp): each input is
// a tar stream fed to a TarExtractor as fetch feeds it, written into a fresh sandbox.
// Beyond ASan/UBSan, a run fails when anything appears beside the sandbox, or when a
// setuid/setgid/sticky or world-writable mode, or a device node, appears inside it.
// See docs/hacking.md.
#include <fcntl.h>
#include <ftw.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "ssh/error.hpp"
#include "ssh/extract.hpp"

namespace fs = std::filesystem;

namespace {

std::string g_top;  // holds only "box"
std::string g_box;  // the destination of every input

void remove_box() {
  std::error_code ec;
  // Directories may have arrived as 0000: open them up so a non-root run can clean.
  for (auto it = fs::recursive_directory_iterator(g_box, ec); !ec && it != fs::end(it);
       it.increment(ec))
    if (it->is_directory(ec) && !it->is_symlink(ec))
      fs::permissions(it->path(), fs::perms::owner_all, fs::perm_options::add, ec);
  fs::remove_all(g_box, ec);
}

int check_entry(const char* path, const struct stat* st, int, struct FTW*) {
  if (S_ISLNK(st->st_mode)) return 0;
  if ((st->st_mode & 07000) || (st->st_mode & S_IWOTH)) {
    std::fprintf(stderr, "extract_fuzz: %s has mode %o\n", path, st->st_mode & 07777);
    std::abort();
  }
  if (!S_ISREG(st->st_mode) && !S_ISDIR(st->st_mode)) {
    std::fprintf(stderr, "extract_fuzz: %s is not a file, directory or symlink\n", path);
    std::abort();
  }
  return 0;
}

void check_sandbox() {
  for (auto& e : fs::directory_iterator(g_top))
    if (e.path().filename() != "box") {
      std::fprintf(stderr, "extract_fuzz: %s was written outside the destination\n",
                   e.path().c_str());
      std::abort();
    }
  ::nftw(g_box.c_str(), check_entry, 16, FTW_PHYS);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  spdlog::set_level(spdlog::level::off);
  ::umask(022);
  // tmpfs when there is one: every input creates and removes a small tree.
  const char* base = std::getenv("FUZZ_TMPDIR");
  if (!base) base = ::access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
  std::string tmpl = std::string(base) + "/ephrun-fuzz-XXXXXX";
  if (!::mkdtemp(tmpl.data())) std::abort();
  g_top = tmpl;
  g_box = g_top + "/box";
  std::atexit([] {
    remove_box();
    std::error_code ec;
    fs::remove_all(g_top, ec);
  });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  remove_box();
  if (::mkdir(g_box.c_str(), 0755) != 0) std::abort();
  int dirfd = ::open(g_box.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  ephrun::ssh::ExtractOptions o;
  o.dest = g_box;
  // As fetch does: the stream arrives in pieces (here 4 KiB, as an SSH channel might
  // cut it) and is extracted on the TarExtractor's worker thread.
  try {
    ephrun::ssh::TarExtractor x(dirfd, o);
    for (std::size_t off = 0; off < size; off += 4096)
      x.feed(std::string_view(reinterpret_cast<const char*>(data) + off,
                              std::min<std::size_t>(4096, size - off)));
    x.finish();
  } catch (const ephrun::ssh::Error&) {
    // Refusing a stream is the expected outcome for most inputs.
  }
  ::close(dirfd);
  check_sandbox();
  return 0;
}
