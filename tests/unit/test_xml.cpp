// host/sys/xml: the EC2-shaped mapping from XML to a Lua-like tree.
#include <catch2/catch.hpp>

#include "sys/xml.hpp"

using namespace ephrun;
using K = sys::XmlValue::Kind;

TEST_CASE("EC2 item lists, empty Sets, prefixes and text", "[xml]") {
  auto d = sys::xml_decode(R"(<?xml version="1.0"?>
<ec2:DescribeInstancesResponse xmlns:ec2="http://ec2.amazonaws.com/doc/2016-11-15">
  <ec2:reservationSet>
    <ec2:item>
      <ec2:groupSet/>
      <ec2:instancesSet>
        <ec2:item><ec2:instanceId>i-1</ec2:instanceId><ec2:tagSet><ec2:item><ec2:key>k</ec2:key><ec2:value>v</ec2:value></ec2:item></ec2:tagSet><ec2:reason/></ec2:item>
        <ec2:item><ec2:instanceId>i-2</ec2:instanceId></ec2:item>
      </ec2:instancesSet>
    </ec2:item>
  </ec2:reservationSet>
  <ec2:requestId>r</ec2:requestId>
</ec2:DescribeInstancesResponse>)");
  REQUIRE(d.ok);
  CHECK(d.root == "DescribeInstancesResponse");
  const auto* rs = d.value.get("reservationSet");
  REQUIRE(rs);
  REQUIRE(rs->kind == K::array);
  REQUIRE(rs->items.size() == 1);
  const auto& res = rs->items[0];
  CHECK(res.get("groupSet")->kind == K::array);
  CHECK(res.get("groupSet")->items.empty());
  const auto* is = res.get("instancesSet");
  REQUIRE(is->items.size() == 2);
  CHECK(is->items[0].get("instanceId")->text == "i-1");
  CHECK(is->items[0].get("reason")->kind == K::text);
  CHECK(is->items[0].get("reason")->text.empty());
  CHECK(is->items[0].get("tagSet")->items[0].get("value")->text == "v");
  CHECK(is->items[1].get("instanceId")->text == "i-2");
  CHECK(d.value.get("requestId")->text == "r");
}

TEST_CASE("repeated names, forced arrays, attributes", "[xml]") {
  auto d = sys::xml_decode(R"(<R a="1"><C>x</C><C>y</C><One>z</One><Big unit="GiB">5</Big></R>)",
                           {"One"});
  REQUIRE(d.ok);
  CHECK(d.value.get("C")->items.size() == 2);
  CHECK(d.value.get("C")->items[1].text == "y");
  CHECK(d.value.get("One")->kind == K::array);
  CHECK(d.value.get("Big")->get("_text")->text == "5");
  CHECK(d.value.get("Big")->get("_attr")->get("unit")->text == "GiB");
  CHECK(d.value.get("_attr")->get("a")->text == "1");
}

TEST_CASE("parse errors give offset, line and column", "[xml]") {
  auto d = sys::xml_decode("<a>\n  <b></a>");
  CHECK_FALSE(d.ok);
  CHECK(d.error == "xml: Start-end tags mismatch at offset 11 (line 2, column 8)");
  CHECK_FALSE(sys::xml_decode("").ok);
}

TEST_CASE("encode writes Sets as item lists and round-trips", "[xml]") {
  sys::XmlValue tag;
  tag.kind = K::table;
  tag.field = {{"key", sys::XmlValue::str("a&b")}};
  sys::XmlValue set;
  set.kind = K::array;
  set.items = {tag};
  sys::XmlValue root;
  root.kind = K::table;
  root.field = {{"tagSet", set}, {"Part", set}};
  auto text = sys::xml_encode(root, "R");
  CHECK(
      text ==
      R"(<?xml version="1.0" encoding="UTF-8"?><R><tagSet><item><key>a&amp;b</key></item></tagSet><Part><key>a&amp;b</key></Part></R>)");
  auto back = sys::xml_decode(text);
  REQUIRE(back.ok);
  CHECK(back.value.get("tagSet")->items[0].get("key")->text == "a&b");
}
