// XML to and from a plain tree shaped like a Lua table: the work behind
// ephrun.xml, designed for AWS Query API replies (EC2, IAM, STS).
//
// Decoding (see docs/api/xml.md for the same rules with examples):
//  - names lose their namespace prefix (`ec2:item` is `item`); xmlns
//    attributes are dropped;
//  - an element without child elements is its text (a string, never a number);
//    an empty element whose name ends in `Set` is an empty array instead
//    (EC2's `<groupSet/>`);
//  - an element whose children are all `item`, or all `member`, is the array
//    of those children (EC2's `<instancesSet><item>..</item></instancesSet>`);
//  - otherwise an element is a table keyed by child name; a name that repeats,
//    or is `item`/`member`, or is listed in `arrays`, maps to an array;
//  - attributes go to an `_attr` table and text beside child elements to
//    `_text` (an element with attributes and only text is {_text=, _attr=}).
#pragma once

#include <set>
#include <string>
#include <utility>
#include <vector>

namespace ephrun::sys {

struct XmlValue {
  enum class Kind { text, table, array } kind = Kind::text;
  std::string text;                                     // kind == text
  std::vector<std::pair<std::string, XmlValue>> field;  // kind == table, in order
  std::vector<XmlValue> items;                          // kind == array

  static XmlValue str(std::string s) {
    XmlValue v;
    v.text = std::move(s);
    return v;
  }
  /// The field named `key` of a table, or null.
  [[nodiscard]] const XmlValue* get(const std::string& key) const;
};

struct XmlDecoded {
  bool ok = false;
  XmlValue value;     // the root element, decoded
  std::string root;   // the root element's name, without prefix
  std::string error;  // "xml: <what> at offset N (line L, column C)"
};

XmlDecoded xml_decode(const std::string& text, const std::set<std::string>& arrays = {});

/// The inverse mapping, best effort: a table becomes child elements (keys in
/// the order given), an array repeats the element under its key (under a key
/// ending in `Set` it becomes `<item>` children instead, as EC2 writes lists),
/// `_attr` becomes attributes and `_text` text. Throws std::runtime_error for shapes
/// XML cannot hold (an array directly inside an array).
std::string xml_encode(const XmlValue& value, const std::string& root);

}  // namespace ephrun::sys
