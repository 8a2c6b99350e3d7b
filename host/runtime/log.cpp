#include "runtime/log.hpp"

#include <fcntl.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/base_sink.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>

#include "runtime/secrets.hpp"

namespace ephrun {

namespace {

// Formats, then redacts, then writes: no sink ever sees a registered secret.
class RedactingSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  explicit RedactingSink(FILE* f, bool own) : f_(f), own_(own) {}
  ~RedactingSink() override {
    if (own_ && f_) fclose(f_);
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    spdlog::memory_buf_t buf;
    formatter_->format(msg, buf);
    std::string line = redact(std::string(buf.data(), buf.size()));
    fwrite(line.data(), 1, line.size(), f_);
  }
  void flush_() override { fflush(f_); }

 private:
  FILE* f_;
  bool own_;
};

// The debug log holds commands, hosts and paths: readable by its owner only,
// also when it already existed with wider permissions.
FILE* open_private(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) throw std::runtime_error("cannot open log file " + path + ": " + strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & 077) != 0 &&
      fchmod(fd, st.st_mode & 0700) != 0) {
    int e = errno;
    ::close(fd);
    throw std::runtime_error("log file " + path +
                             " is readable by others and cannot be made private: " + strerror(e) +
                             "; remove it or choose another --log-file");
  }
  FILE* f = fdopen(fd, "a");
  if (!f) {
    ::close(fd);
    throw std::runtime_error("cannot open log file " + path + ": " + strerror(errno));
  }
  return f;
}

}  // namespace

void init_logging(int verbosity, const std::string& log_file) {
  auto err = std::make_shared<RedactingSink>(stderr, false);
  const bool tty = isatty(STDERR_FILENO);
  err->set_pattern(tty ? "%^%L%$ %v" : "%L %v");
  err->set_level(verbosity < 0    ? spdlog::level::warn
                 : verbosity == 0 ? spdlog::level::info
                 : verbosity == 1 ? spdlog::level::debug
                                  : spdlog::level::trace);
  std::vector<spdlog::sink_ptr> sinks{err};
  if (!log_file.empty()) {
    FILE* f = open_private(log_file);
    auto file = std::make_shared<RedactingSink>(f, true);
    file->set_pattern("%Y-%m-%dT%H:%M:%S.%e %l %v");
    file->set_level(spdlog::level::trace);
    sinks.push_back(file);
  }
  auto logger = std::make_shared<spdlog::logger>("ephrun", sinks.begin(), sinks.end());
  logger->set_level(spdlog::level::trace);
  logger->flush_on(spdlog::level::trace);
  spdlog::set_default_logger(logger);
}

void report(const std::string& line) {
  std::string l = redact(line);
  if (l.empty() || l.back() != '\n') l += '\n';
  fwrite(l.data(), 1, l.size(), stderr);
  fflush(stderr);
}

}  // namespace ephrun
