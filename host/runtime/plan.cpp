#include "runtime/plan.hpp"

#include <fmt/format.h>

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

std::string Plan::render_text(const std::string& recipe) const {
  auto steps = this->steps();
  std::string out = fmt::format("Plan for {} ({} step{}; dry run: nothing was changed)\n", recipe,
                                steps.size(), steps.size() == 1 ? "" : "s");
  double total = 0;
  bool unknown = false;
  size_t kind_w = 4;
  for (const auto& s : steps) kind_w = std::max(kind_w, s.kind.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    const auto& s = steps[i];
    std::string cost;
    if (s.cost) {
      total += *s.cost;
      cost = fmt::format("  ≤ ${:.2f}", *s.cost);
    }
    out += fmt::format("{:>3}. {:<{}}  {}", i + 1, s.kind, kind_w, s.what);
    if (!s.where.empty()) out += fmt::format("  @ {}", s.where);
    out += cost + "\n";
    for (const auto& d : s.details) out += fmt::format("{:>{}}{}\n", "", 7 + kind_w, d);
    if (s.kind == "launch" && !s.cost) unknown = true;
  }
  out += fmt::format("Total worst-case cost: ${:.2f}{}\n", total,
                     unknown ? " (some prices unknown)" : "");
  return out;
}

nlohmann::json Plan::render_json(const std::string& recipe) const {
  auto steps = this->steps();
  nlohmann::json arr = nlohmann::json::array();
  double total = 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    const auto& s = steps[i];
    nlohmann::json j{{"n", i + 1},       {"kind", s.kind},   {"what", s.what},
                     {"where", s.where}, {"phase", s.phase}, {"details", s.details}};
    j["cost"] = s.cost ? nlohmann::json(*s.cost) : nlohmann::json(nullptr);
    if (s.cost) total += *s.cost;
    arr.push_back(std::move(j));
  }
  return {{"recipe", recipe}, {"dry_run", true}, {"steps", arr}, {"total_cost", total}};
}

}  // namespace ephrun
