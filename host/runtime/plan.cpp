#include "runtime/plan.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "runtime/secrets.hpp"

namespace ephrun {

void Plan::add(Step s) {
  s.what = redact(std::move(s.what));
  s.where = redact(std::move(s.where));
  for (auto& d : s.details) d = redact(std::move(d));
  std::lock_guard lk(mu_);
  steps_.push_back(std::move(s));
}

std::vector<Step> Plan::steps() const {
  std::lock_guard lk(mu_);
  return steps_;
}

namespace {

// The worst case over the steps whose price is known, and the steps that bill
// at a price nobody could tell (a launch without a cost): with any of those
// the total is not a number, only a lower bound.
struct Totals {
  double known = 0;
  std::vector<std::string> unknown;  // "N. what" of each unpriced step
};

Totals totals(const std::vector<Step>& steps) {
  Totals t;
  for (size_t i = 0; i < steps.size(); ++i) {
    const auto& s = steps[i];
    if (s.cost) {
      t.known += *s.cost;
    } else if (s.kind == "launch") {
      t.unknown.push_back(fmt::format("{}. {}", i + 1, s.what));
    }
  }
  return t;
}

std::string join(const std::vector<std::string>& v, const char* sep) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : sep) + s;
  return out;
}

}  // namespace

std::string Plan::render_text(const std::string& recipe) const {
  auto steps = this->steps();
  std::string out = fmt::format("Plan for {} ({} step{}; dry run: nothing was changed)\n", recipe,
                                steps.size(), steps.size() == 1 ? "" : "s");
  size_t kind_w = 4;
  for (const auto& s : steps) kind_w = std::max(kind_w, s.kind.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    const auto& s = steps[i];
    out += fmt::format("{:>3}. {:<{}}  {}", i + 1, s.kind, kind_w, s.what);
    if (!s.where.empty()) out += fmt::format("  @ {}", s.where);
    if (s.cost) out += fmt::format("  ≤ ${:.2f}", *s.cost);
    if (!s.origin.empty()) out += fmt::format("  (from {})", s.origin);
    out += "\n";
    for (const auto& d : s.details) out += fmt::format("{:>{}}{}\n", "", 7 + kind_w, d);
  }
  Totals t = totals(steps);
  if (t.unknown.empty()) {
    out += fmt::format("Total worst-case cost: ${:.2f}\n", t.known);
  } else if (t.known > 0) {
    out += fmt::format("Total worst-case cost: at least ${:.2f}; unknown: {}\n", t.known,
                       join(t.unknown, "; "));
  } else {
    out +=
        fmt::format("Total worst-case cost: unknown (no price for: {})\n", join(t.unknown, "; "));
  }
  return out;
}

nlohmann::json Plan::render_json(const std::string& recipe) const {
  auto steps = this->steps();
  nlohmann::json arr = nlohmann::json::array();
  for (size_t i = 0; i < steps.size(); ++i) {
    const auto& s = steps[i];
    nlohmann::json j{{"n", i + 1},       {"kind", s.kind},   {"what", s.what},
                     {"where", s.where}, {"phase", s.phase}, {"details", s.details}};
    j["cost"] = s.cost ? nlohmann::json(*s.cost) : nlohmann::json(nullptr);
    j["origin"] = s.origin.empty() ? nlohmann::json(nullptr) : nlohmann::json(s.origin);
    arr.push_back(std::move(j));
  }
  Totals t = totals(steps);
  // An unknown price makes the total unknown (null), never a smaller number;
  // `cost_at_least` keeps what is known.
  return {{"recipe", recipe},
          {"dry_run", true},
          {"steps", arr},
          {"total_cost", t.unknown.empty() ? nlohmann::json(t.known) : nlohmann::json(nullptr)},
          {"cost_at_least", t.known},
          {"unknown", t.unknown}};
}

}  // namespace ephrun
