#include "sys/xml.hpp"

#include <algorithm>
#include <cstring>
#include <pugixml.hpp>
#include <sstream>
#include <stdexcept>

namespace ephrun::sys {

namespace {

std::string local_name(const char* name) {
  const char* colon = std::strrchr(name, ':');
  return colon ? colon + 1 : name;
}

bool blank(const std::string& s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; });
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_list_child(const std::string& name) { return name == "item" || name == "member"; }

XmlValue decode_element(const pugi::xml_node& el, const std::set<std::string>& arrays) {
  std::string name = local_name(el.name());
  std::string text;
  std::vector<pugi::xml_node> kids;
  for (pugi::xml_node c = el.first_child(); c; c = c.next_sibling()) {
    if (c.type() == pugi::node_element)
      kids.push_back(c);
    else if (c.type() == pugi::node_pcdata || c.type() == pugi::node_cdata)
      text += c.value();
  }
  XmlValue attrs;
  attrs.kind = XmlValue::Kind::table;
  for (pugi::xml_attribute a = el.first_attribute(); a; a = a.next_attribute()) {
    std::string an = a.name();
    if (an == "xmlns" || an.rfind("xmlns:", 0) == 0) continue;
    attrs.field.emplace_back(local_name(a.name()), XmlValue::str(a.value()));
  }
  bool has_attrs = !attrs.field.empty();

  if (kids.empty()) {
    if (!has_attrs) {
      if (ends_with(name, "Set") && blank(text)) {
        XmlValue v;
        v.kind = XmlValue::Kind::array;
        return v;
      }
      return XmlValue::str(text);
    }
    XmlValue v;
    v.kind = XmlValue::Kind::table;
    v.field.emplace_back("_text", XmlValue::str(text));
    v.field.emplace_back("_attr", std::move(attrs));
    return v;
  }

  std::string first = local_name(kids[0].name());
  bool all_same_list =
      is_list_child(first) && std::all_of(kids.begin(), kids.end(), [&](const pugi::xml_node& k) {
        return local_name(k.name()) == first;
      });
  if (all_same_list && !has_attrs && blank(text)) {
    XmlValue v;
    v.kind = XmlValue::Kind::array;
    for (const auto& k : kids) v.items.push_back(decode_element(k, arrays));
    return v;
  }

  XmlValue v;
  v.kind = XmlValue::Kind::table;
  // Count names first so a repeated one is an array from its first occurrence.
  std::vector<std::string> names;
  for (const auto& k : kids) names.push_back(local_name(k.name()));
  for (std::size_t i = 0; i < kids.size(); ++i) {
    const std::string& n = names[i];
    XmlValue child = decode_element(kids[i], arrays);
    bool as_array =
        is_list_child(n) || arrays.count(n) > 0 || std::count(names.begin(), names.end(), n) > 1;
    auto it =
        std::find_if(v.field.begin(), v.field.end(), [&](const auto& f) { return f.first == n; });
    if (!as_array) {
      if (it == v.field.end()) v.field.emplace_back(n, std::move(child));
      continue;
    }
    if (it == v.field.end()) {
      XmlValue arr;
      arr.kind = XmlValue::Kind::array;
      v.field.emplace_back(n, std::move(arr));
      it = v.field.end() - 1;
    }
    it->second.items.push_back(std::move(child));
  }
  if (!blank(text)) v.field.emplace_back("_text", XmlValue::str(text));
  if (has_attrs) v.field.emplace_back("_attr", std::move(attrs));
  return v;
}

void encode_into(pugi::xml_node node, const XmlValue& v);

void encode_child(pugi::xml_node parent, const std::string& name, const XmlValue& v) {
  // EC2's lists: `xSet = {a, b}` is <xSet><item>a</item><item>b</item></xSet>.
  if (v.kind == XmlValue::Kind::array && !ends_with(name, "Set")) {
    for (const auto& item : v.items) {
      if (item.kind == XmlValue::Kind::array)
        throw std::runtime_error("xml.encode: an array inside an array (under '" + name +
                                 "') has no XML form");
      encode_into(parent.append_child(name.c_str()), item);
    }
    return;
  }
  encode_into(parent.append_child(name.c_str()), v);
}

void encode_into(pugi::xml_node node, const XmlValue& v) {
  switch (v.kind) {
    case XmlValue::Kind::text:
      if (!v.text.empty()) node.append_child(pugi::node_pcdata).set_value(v.text.c_str());
      return;
    case XmlValue::Kind::array:
      // An array as an element's whole value: EC2's item list.
      encode_child(node, "item", v);
      return;
    case XmlValue::Kind::table:
      for (const auto& [k, f] : v.field) {
        if (k == "_attr" && f.kind == XmlValue::Kind::table) {
          for (const auto& [an, av] : f.field)
            node.append_attribute(an.c_str()).set_value(av.text.c_str());
        } else if (k == "_text") {
          node.append_child(pugi::node_pcdata).set_value(f.text.c_str());
        } else {
          encode_child(node, k, f);
        }
      }
      return;
  }
}

}  // namespace

const XmlValue* XmlValue::get(const std::string& key) const {
  for (const auto& [k, v] : field)
    if (k == key) return &v;
  return nullptr;
}

XmlDecoded xml_decode(const std::string& text, const std::set<std::string>& arrays) {
  XmlDecoded out;
  pugi::xml_document doc;
  pugi::xml_parse_result r =
      doc.load_buffer(text.data(), text.size(), pugi::parse_default | pugi::parse_ws_pcdata_single);
  if (!r) {
    auto off = static_cast<std::size_t>(r.offset);
    std::size_t line = 1, col = 1;
    for (std::size_t i = 0; i < off && i < text.size(); ++i) {
      if (text[i] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    std::ostringstream m;
    m << "xml: " << r.description() << " at offset " << off << " (line " << line << ", column "
      << col << ")";
    out.error = m.str();
    return out;
  }
  pugi::xml_node root = doc.document_element();
  if (!root) {
    out.error = "xml: no root element";
    return out;
  }
  out.ok = true;
  out.root = local_name(root.name());
  out.value = decode_element(root, arrays);
  return out;
}

std::string xml_encode(const XmlValue& value, const std::string& root) {
  if (root.empty()) throw std::runtime_error("xml.encode: the root element needs a name");
  pugi::xml_document doc;
  auto decl = doc.append_child(pugi::node_declaration);
  decl.append_attribute("version").set_value("1.0");
  decl.append_attribute("encoding").set_value("UTF-8");
  encode_into(doc.append_child(root.c_str()), value);
  std::ostringstream ss;
  doc.save(ss, "", pugi::format_raw);
  return ss.str();
}

}  // namespace ephrun::sys
