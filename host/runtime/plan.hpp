// The dry-run plan: every effect a recipe would have, with where and cost.
#pragma once

#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace ephrun {

struct Step {
  std::string kind;            // launch, ssh, sync, run, http, spawn, write, destroy, ...
  std::string what;            // one readable line
  std::string where;           // provider/region/host/path
  std::optional<double> cost;  // worst-case USD
  std::string phase;
  std::vector<std::string> details;
  std::string origin;  // "pack NAME@COMMIT" when a pack's code asked for it
};

class Plan {
 public:
  void add(Step s);
  [[nodiscard]] std::vector<Step> steps() const;
  [[nodiscard]] std::string render_text(const std::string& recipe) const;
  [[nodiscard]] nlohmann::json render_json(const std::string& recipe) const;

 private:
  mutable std::mutex mu_;
  std::vector<Step> steps_;
};

}  // namespace ephrun
