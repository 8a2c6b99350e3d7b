// Cooperative cancellation shared between the Lua thread and native work.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace ephrun {

/// A copyable handle on one cancellation flag. Native work polls `cancelled()`
/// or waits with `sleep_for`, which wakes at once when the flag is raised.
class CancelToken {
 public:
  CancelToken() : s_(std::make_shared<State>()) {}

  [[nodiscard]] bool cancelled() const noexcept {
    std::lock_guard lk(s_->mu);
    return s_->cancelled;
  }
  [[nodiscard]] std::string reason() const {
    std::lock_guard lk(s_->mu);
    return s_->reason;
  }
  /// Raises the flag once; later calls keep the first reason.
  void cancel(const std::string& reason) const {
    std::vector<std::function<void()>> hooks;
    {
      std::lock_guard lk(s_->mu);
      if (s_->cancelled) return;
      s_->cancelled = true;
      s_->reason = reason;
      hooks.swap(s_->hooks);
    }
    s_->cv.notify_all();
    for (auto& h : hooks) h();
  }
  /// Sleeps up to `d`; returns false when cancelled before it elapsed.
  bool sleep_for(std::chrono::nanoseconds d) const {
    std::unique_lock lk(s_->mu);
    return !s_->cv.wait_for(lk, d, [&] { return s_->cancelled; });
  }
  /// Runs `fn` when cancelled (at once if already cancelled), e.g. to wake a poll().
  void on_cancel(std::function<void()> fn) const {
    {
      std::lock_guard lk(s_->mu);
      if (!s_->cancelled) {
        s_->hooks.push_back(std::move(fn));
        return;
      }
    }
    fn();
  }

 private:
  struct State {
    mutable std::mutex mu;
    std::condition_variable cv;
    bool cancelled = false;
    std::string reason;
    std::vector<std::function<void()>> hooks;
  };
  std::shared_ptr<State> s_;
};

}  // namespace ephrun
