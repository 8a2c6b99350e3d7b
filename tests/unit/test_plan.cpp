// The plan's worst-case total: an unknown price must read as unknown.
#include <catch2/catch.hpp>

#include "runtime/plan.hpp"

using ephrun::Plan;

TEST_CASE("a launch without a price makes the total unknown, not $0.00", "[plan]") {
  Plan p;
  p.add({"keys", "generate keys", "", std::nullopt, "launch", {}});
  p.add({"launch", "vultr plan=vc2-4c-8gb", "vultr", std::nullopt, "launch", {}});
  p.add({"run", "make", "host", std::nullopt, "build", {}});
  std::string text = p.render_text("demo");
  CHECK(text.find("$0.00") == std::string::npos);
  CHECK(text.find("Total worst-case cost: unknown (no price for: 2. vultr plan=vc2-4c-8gb)\n") !=
        std::string::npos);
  auto j = p.render_json("demo");
  CHECK(j["total_cost"].is_null());
  CHECK(j["unknown"] == nlohmann::json::array({"2. vultr plan=vc2-4c-8gb"}));
  CHECK(j["cost_at_least"] == 0.0);
}

TEST_CASE("known and unknown prices give a lower bound naming what is unknown", "[plan]") {
  Plan p;
  p.add({"launch", "aws c5n.metal", "aws", 11.75, "launch", {}});
  p.add({"launch", "vultr plan=vc2-4c-8gb", "vultr", std::nullopt, "launch", {}});
  std::string text = p.render_text("demo");
  CHECK(text.find("Total worst-case cost: at least $11.75; unknown: 2. vultr plan=vc2-4c-8gb\n") !=
        std::string::npos);
  auto j = p.render_json("demo");
  CHECK(j["total_cost"].is_null());
  CHECK(j["cost_at_least"] == 11.75);
  CHECK(j["unknown"].size() == 1);
}

TEST_CASE("all prices known: the total is a number and nothing is unknown", "[plan]") {
  Plan p;
  p.add({"launch", "local", "local", 0.0, "launch", {}});
  p.add({"attach", "existing server", "static", 0.0, "attach", {}});
  std::string text = p.render_text("demo");
  CHECK(text.find("Total worst-case cost: $0.00\n") != std::string::npos);
  CHECK(text.find("unknown") == std::string::npos);
  auto j = p.render_json("demo");
  CHECK(j["total_cost"] == 0.0);
  CHECK(j["unknown"].empty());
}
