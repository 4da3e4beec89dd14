// What a search produced: `search_result` (the bit_config, per-layer and total cost figures,
// accuracy and wall time per phase, a per-epoch log) and its JSON form: to_json(), a reader
// (from_json, for tools and round-trip checks) and write_json() (temp file + rename).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mixq/core/error.hpp"
#include "mixq/nn/quantized.hpp"
#include "mixq/quant/bit_config.hpp"
#include "mixq/search/cost.hpp"
#include "mixq/search/policy.hpp"

namespace mixq::search {

/// One phase of the driver. Figures not measured (phase skipped, no test set) are NaN and
/// written as JSON null.
struct phase_report {
  bool ran = false;
  std::size_t epochs = 0;
  double seconds = 0;
  double test_accuracy = std::numeric_limits<double>::quiet_NaN();
  double test_loss = std::numeric_limits<double>::quiet_NaN();
  friend bool operator==(const phase_report&, const phase_report&) = default;
};

/// One quantized layer under the final config.
struct layer_report {
  std::string name;
  layer_kind kind = layer_kind::conv;
  std::int64_t params = 0, macs = 0;
  int w_bits = 0, a_bits = 0;
  double bitops = 0;        // macs * w * a
  double weight_bits = 0;   // params * w
  double bitops_share = 0;  // of the model's BitOps
  double weight_share = 0;  // of the model's weight bits
  friend bool operator==(const layer_report&, const layer_report&) = default;
};

/// One training epoch of any phase (train-split figures; expected_cost only while searching).
struct epoch_record {
  std::string phase;
  std::size_t epoch = 0;
  double train_loss = 0, train_accuracy = 0;
  double expected_cost = std::numeric_limits<double>::quiet_NaN();
  double seconds = 0;
  friend bool operator==(const epoch_record&, const epoch_record&) = default;
};

struct search_result {
  std::string policy;
  std::uint64_t seed = 0;
  budget target;                           // the budget searched under
  bit_config config;                       // the final config
  std::vector<bit_config> config_history;  // every config the finetune used, first to last
  std::vector<layer_report> layers;
  double bitops = 0;       // of `config`, every layer counted
  double weight_bits = 0;  // of `config`
  double budget_cost = 0;  // `config` in the budget's unit
  std::int64_t params = 0, macs = 0;
  phase_report initial, warmup, search, derive, finetune;
  std::vector<epoch_record> epochs;
  double total_seconds = 0;
  /// The precision policy the driver finetuned with, still attached to the model (not
  /// serialised; empty when the policy itself was the precision policy).
  std::shared_ptr<nn::precision_policy> finetuned_policy;

  /// budget_cost / target.value (<= 1 when the budget is met).
  double budget_usage() const { return target.value > 0 ? budget_cost / target.value : 0; }
  double weight_bytes() const { return weight_bits / 8; }
  /// Compression of the weights against 32-bit floats.
  double size_compression_vs_fp32() const {
    return weight_bits > 0 ? 32.0 * double(params) / weight_bits : 0;
  }

  std::string to_json() const;
  /// Reads what to_json() wrote; format_error naming the field on anything else.
  static search_result from_json(std::string_view text);
  /// Writes to_json() to `path` through `path`.tmp and a rename; io_error on failure.
  void write_json(const std::string& path) const;

  friend bool operator==(const search_result& a, const search_result& b) {
    auto same = [](double x, double y) { return x == y || (std::isnan(x) && std::isnan(y)); };
    auto same_phase = [&](const phase_report& x, const phase_report& y) {
      return x.ran == y.ran && x.epochs == y.epochs && x.seconds == y.seconds &&
             same(x.test_accuracy, y.test_accuracy) && same(x.test_loss, y.test_loss);
    };
    if (a.epochs.size() != b.epochs.size()) return false;
    for (std::size_t i = 0; i < a.epochs.size(); ++i) {
      const auto &x = a.epochs[i], &y = b.epochs[i];
      if (x.phase != y.phase || x.epoch != y.epoch || x.train_loss != y.train_loss ||
          x.train_accuracy != y.train_accuracy || !same(x.expected_cost, y.expected_cost) ||
          x.seconds != y.seconds)
        return false;
    }
    return a.policy == b.policy && a.seed == b.seed && a.target.kind == b.target.kind &&
           a.target.value == b.target.value && a.config == b.config &&
           a.config_history == b.config_history && a.layers == b.layers && a.bitops == b.bitops &&
           a.weight_bits == b.weight_bits && a.budget_cost == b.budget_cost &&
           a.params == b.params && a.macs == b.macs && same_phase(a.initial, b.initial) &&
           same_phase(a.warmup, b.warmup) && same_phase(a.search, b.search) &&
           same_phase(a.derive, b.derive) && same_phase(a.finetune, b.finetune) &&
           a.total_seconds == b.total_seconds;
  }
};

inline const char* to_string(layer_kind k) {
  switch (k) {
    case layer_kind::conv:
      return "conv";
    case layer_kind::depthwise_conv:
      return "depthwise_conv";
    default:
      return "linear";
  }
}

/// Fills result.layers and the totals from the layer costs and result.config.
inline void fill_cost_figures(search_result& r, std::span<const layer_cost> costs) {
  r.config.validate(costs.size());
  r.layers.clear();
  r.bitops = r.weight_bits = 0;
  r.params = r.macs = 0;
  for (std::size_t i = 0; i < costs.size(); ++i) {
    layer_report l;
    l.name = costs[i].name;
    l.kind = costs[i].kind;
    l.params = costs[i].params;
    l.macs = costs[i].macs;
    l.w_bits = r.config.w_bits[i];
    l.a_bits = r.config.a_bits[i];
    l.bitops = layer_bitops(costs[i], l.w_bits, l.a_bits);
    l.weight_bits = layer_size_bits(costs[i], l.w_bits);
    r.bitops += l.bitops;
    r.weight_bits += l.weight_bits;
    r.params += l.params;
    r.macs += l.macs;
    r.layers.push_back(std::move(l));
  }
  for (auto& l : r.layers) {
    l.bitops_share = r.bitops > 0 ? l.bitops / r.bitops : 0;
    l.weight_share = r.weight_bits > 0 ? l.weight_bits / r.weight_bits : 0;
  }
  r.budget_cost = r.target.cost_of(costs, r.config);
}

// ---- JSON -----------------------------------------------------------------------------------

namespace detail {

/// Shortest text that reads back as the same double (17 significant digits); NaN/inf -> null.
inline std::string json_number(double x) {
  if (!std::isfinite(x)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", x);
  return buf;
}

inline std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", unsigned(static_cast<unsigned char>(c)));
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

inline std::string json_ints(const std::vector<int>& v) {
  std::string s = "[";
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

/// A parsed JSON value (enough for reading results back: no \u escapes beyond ASCII).
struct json_value {
  enum class type { null, boolean, number, string, array, object } t = type::null;
  bool b = false;
  double num = 0;
  std::string str;
  std::vector<json_value> arr;
  std::vector<std::pair<std::string, json_value>> obj;

  const json_value& at(std::string_view key) const {
    if (t != type::object)
      throw format_error(cat("search_result JSON: expected an object holding \"", key, "\""));
    for (auto& [k, v] : obj)
      if (k == key) return v;
    throw format_error(cat("search_result JSON: missing field \"", key, "\""));
  }
  double number(std::string_view what) const {
    if (t == type::null) return std::numeric_limits<double>::quiet_NaN();
    if (t != type::number)
      throw format_error(cat("search_result JSON: field \"", what, "\" is not a number"));
    return num;
  }
  std::int64_t integer(std::string_view what) const {
    const double x = number(what);
    if (!(x == std::floor(x)) || std::fabs(x) > 9.007199254740992e15)
      throw format_error(cat("search_result JSON: field \"", what, "\" is not an integer"));
    return std::int64_t(x);
  }
  const std::string& text(std::string_view what) const {
    if (t != type::string)
      throw format_error(cat("search_result JSON: field \"", what, "\" is not a string"));
    return str;
  }
  const std::vector<json_value>& array(std::string_view what) const {
    if (t != type::array)
      throw format_error(cat("search_result JSON: field \"", what, "\" is not an array"));
    return arr;
  }
  bool boolean(std::string_view what) const {
    if (t != type::boolean)
      throw format_error(cat("search_result JSON: field \"", what, "\" is not true/false"));
    return b;
  }
};

class json_parser {
 public:
  explicit json_parser(std::string_view s) : s_(s) {}
  json_value parse_document() {
    json_value v = parse_value(0);
    skip_space();
    if (pos_ != s_.size()) fail("trailing characters after the value");
    return v;
  }

 private:
  [[noreturn]] void fail(const char* what) const {
    throw format_error(cat("search_result JSON: ", what, " at offset ", pos_));
  }
  void skip_space() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\t' || s_[pos_] == '\r'))
      ++pos_;
  }
  bool eat(char c) {
    skip_space();
    if (pos_ < s_.size() && s_[pos_] == c) return ++pos_, true;
    return false;
  }
  bool literal(std::string_view w) {
    if (s_.substr(pos_, w.size()) == w) return pos_ += w.size(), true;
    return false;
  }
  std::string parse_string() {
    if (!eat('"')) fail("expected a string");
    std::string out;
    while (true) {
      if (pos_ >= s_.size()) fail("unterminated string");
      const char c = s_[pos_++];
      if (c == '"') return out;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= s_.size()) fail("unterminated escape");
      const char e = s_[pos_++];
      switch (e) {
        case '"':
        case '\\':
        case '/':
          out += e;
          break;
        case 'n':
          out += '\n';
          break;
        case 't':
          out += '\t';
          break;
        case 'r':
          out += '\r';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'u': {
          if (pos_ + 4 > s_.size()) fail("short \\u escape");
          unsigned code = 0;
          for (int i = 0; i < 4; ++i) {
            const char h = s_[pos_++];
            code = code * 16 + unsigned(h >= '0' && h <= '9'   ? h - '0'
                                        : h >= 'a' && h <= 'f' ? h - 'a' + 10
                                        : h >= 'A' && h <= 'F' ? h - 'A' + 10
                                                               : (fail("bad \\u escape"), 0));
          }
          if (code > 0x7f) fail("non-ASCII \\u escape");
          out += char(code);
          break;
        }
        default:
          fail("bad escape");
      }
    }
  }
  json_value parse_value(int depth) {
    if (depth > 64) fail("nesting deeper than 64");
    skip_space();
    if (pos_ >= s_.size()) fail("unexpected end");
    json_value v;
    const char c = s_[pos_];
    if (c == '{') {
      ++pos_;
      v.t = json_value::type::object;
      if (eat('}')) return v;
      do {
        std::string k = parse_string();
        if (!eat(':')) fail("expected ':'");
        v.obj.emplace_back(std::move(k), parse_value(depth + 1));
      } while (eat(','));
      if (!eat('}')) fail("expected ',' or '}'");
    } else if (c == '[') {
      ++pos_;
      v.t = json_value::type::array;
      if (eat(']')) return v;
      do v.arr.push_back(parse_value(depth + 1));
      while (eat(','));
      if (!eat(']')) fail("expected ',' or ']'");
    } else if (c == '"') {
      v.t = json_value::type::string;
      v.str = parse_string();
    } else if (literal("null")) {
    } else if (literal("true")) {
      v.t = json_value::type::boolean, v.b = true;
    } else if (literal("false")) {
      v.t = json_value::type::boolean;
    } else {
      const std::size_t start = pos_;
      while (pos_ < s_.size() &&
             (std::string_view("+-0123456789.eE").find(s_[pos_]) != std::string_view::npos))
        ++pos_;
      if (start == pos_) fail("unexpected character");
      const std::string num(s_.substr(start, pos_ - start));
      char* end = nullptr;
      v.t = json_value::type::number;
      v.num = std::strtod(num.c_str(), &end);
      if (end != num.c_str() + num.size()) fail("malformed number");
    }
    return v;
  }

  std::string_view s_;
  std::size_t pos_ = 0;
};

inline std::vector<int> json_to_ints(const json_value& v, std::string_view what) {
  std::vector<int> out;
  for (const auto& e : v.array(what)) out.push_back(int(e.integer(what)));
  return out;
}

inline std::string phase_json(const phase_report& p) {
  return cat("{\"ran\": ", p.ran ? "true" : "false", ", \"epochs\": ", p.epochs,
             ", \"seconds\": ", json_number(p.seconds),
             ", \"test_accuracy\": ", json_number(p.test_accuracy),
             ", \"test_loss\": ", json_number(p.test_loss), "}");
}
inline phase_report phase_from(const json_value& v) {
  phase_report p;
  p.ran = v.at("ran").boolean("ran");
  p.epochs = std::size_t(v.at("epochs").integer("epochs"));
  p.seconds = v.at("seconds").number("seconds");
  p.test_accuracy = v.at("test_accuracy").number("test_accuracy");
  p.test_loss = v.at("test_loss").number("test_loss");
  return p;
}
inline std::string config_json(const bit_config& c) {
  return cat("{\"w_bits\": ", json_ints(c.w_bits), ", \"a_bits\": ", json_ints(c.a_bits), "}");
}
inline bit_config config_from(const json_value& v) {
  return {json_to_ints(v.at("w_bits"), "w_bits"), json_to_ints(v.at("a_bits"), "a_bits")};
}
inline layer_kind kind_from(const std::string& s) {
  if (s == "conv") return layer_kind::conv;
  if (s == "depthwise_conv") return layer_kind::depthwise_conv;
  if (s == "linear") return layer_kind::linear;
  throw format_error(
      cat("search_result JSON: layer kind \"", s, "\"; expected conv, depthwise_conv or linear"));
}

}  // namespace detail

inline std::string search_result::to_json() const {
  using detail::json_number;
  std::ostringstream o;
  o << "{\n  \"format\": \"mixq.search_result/1\",\n";
  o << "  \"policy\": " << detail::json_string(policy) << ",\n";
  o << "  \"seed\": " << seed << ",\n";
  o << "  \"budget\": {\"kind\": \"" << to_string(target.kind)
    << "\", \"value\": " << json_number(target.value) << "},\n";
  o << "  \"config\": " << detail::config_json(config) << ",\n";
  o << "  \"config_history\": [";
  for (std::size_t i = 0; i < config_history.size(); ++i)
    o << (i ? ", " : "") << detail::config_json(config_history[i]);
  o << "],\n  \"totals\": {\"params\": " << params << ", \"macs\": " << macs
    << ", \"bitops\": " << json_number(bitops) << ", \"weight_bits\": " << json_number(weight_bits)
    << ", \"weight_bytes\": " << json_number(weight_bytes())
    << ", \"budget_cost\": " << json_number(budget_cost)
    << ", \"budget_usage\": " << json_number(budget_usage()) << "},\n";
  o << "  \"layers\": [";
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const auto& l = layers[i];
    o << (i ? ",\n    " : "\n    ") << "{\"name\": " << detail::json_string(l.name)
      << ", \"kind\": \"" << to_string(l.kind) << "\", \"params\": " << l.params
      << ", \"macs\": " << l.macs << ", \"w_bits\": " << l.w_bits << ", \"a_bits\": " << l.a_bits
      << ", \"bitops\": " << json_number(l.bitops)
      << ", \"weight_bits\": " << json_number(l.weight_bits)
      << ", \"bitops_share\": " << json_number(l.bitops_share)
      << ", \"weight_share\": " << json_number(l.weight_share) << "}";
  }
  o << "],\n  \"phases\": {\n    \"initial\": " << detail::phase_json(initial)
    << ",\n    \"warmup\": " << detail::phase_json(warmup)
    << ",\n    \"search\": " << detail::phase_json(search)
    << ",\n    \"derive\": " << detail::phase_json(derive)
    << ",\n    \"finetune\": " << detail::phase_json(finetune) << "\n  },\n";
  o << "  \"epochs\": [";
  for (std::size_t i = 0; i < epochs.size(); ++i) {
    const auto& e = epochs[i];
    o << (i ? ",\n    " : "\n    ") << "{\"phase\": " << detail::json_string(e.phase)
      << ", \"epoch\": " << e.epoch << ", \"train_loss\": " << json_number(e.train_loss)
      << ", \"train_accuracy\": " << json_number(e.train_accuracy)
      << ", \"expected_cost\": " << json_number(e.expected_cost)
      << ", \"seconds\": " << json_number(e.seconds) << "}";
  }
  o << "],\n  \"total_seconds\": " << json_number(total_seconds) << "\n}\n";
  return o.str();
}

inline search_result search_result::from_json(std::string_view text) {
  const auto doc = detail::json_parser(text).parse_document();
  if (doc.at("format").text("format") != "mixq.search_result/1")
    throw format_error(mixq::detail::cat("search_result JSON: format \"", doc.at("format").str,
                                         "\"; expected \"mixq.search_result/1\""));
  search_result r;
  r.policy = doc.at("policy").text("policy");
  r.seed = std::uint64_t(doc.at("seed").integer("seed"));
  const auto& b = doc.at("budget");
  const auto& kind = b.at("kind").text("budget.kind");
  if (kind != "bitops" && kind != "weight_bits")
    throw format_error(mixq::detail::cat("search_result JSON: budget kind \"", kind,
                                         "\"; expected bitops or weight_bits"));
  r.target.kind = kind == "bitops" ? budget_kind::bitops : budget_kind::weight_bits;
  r.target.value = b.at("value").number("budget.value");
  r.config = detail::config_from(doc.at("config"));
  for (const auto& c : doc.at("config_history").array("config_history"))
    r.config_history.push_back(detail::config_from(c));
  const auto& t = doc.at("totals");
  r.params = t.at("params").integer("params");
  r.macs = t.at("macs").integer("macs");
  r.bitops = t.at("bitops").number("bitops");
  r.weight_bits = t.at("weight_bits").number("weight_bits");
  r.budget_cost = t.at("budget_cost").number("budget_cost");
  for (const auto& v : doc.at("layers").array("layers")) {
    layer_report l;
    l.name = v.at("name").text("name");
    l.kind = detail::kind_from(v.at("kind").text("kind"));
    l.params = v.at("params").integer("params");
    l.macs = v.at("macs").integer("macs");
    l.w_bits = int(v.at("w_bits").integer("w_bits"));
    l.a_bits = int(v.at("a_bits").integer("a_bits"));
    l.bitops = v.at("bitops").number("bitops");
    l.weight_bits = v.at("weight_bits").number("weight_bits");
    l.bitops_share = v.at("bitops_share").number("bitops_share");
    l.weight_share = v.at("weight_share").number("weight_share");
    r.layers.push_back(std::move(l));
  }
  const auto& p = doc.at("phases");
  r.initial = detail::phase_from(p.at("initial"));
  r.warmup = detail::phase_from(p.at("warmup"));
  r.search = detail::phase_from(p.at("search"));
  r.derive = detail::phase_from(p.at("derive"));
  r.finetune = detail::phase_from(p.at("finetune"));
  for (const auto& v : doc.at("epochs").array("epochs")) {
    epoch_record e;
    e.phase = v.at("phase").text("phase");
    e.epoch = std::size_t(v.at("epoch").integer("epoch"));
    e.train_loss = v.at("train_loss").number("train_loss");
    e.train_accuracy = v.at("train_accuracy").number("train_accuracy");
    e.expected_cost = v.at("expected_cost").number("expected_cost");
    e.seconds = v.at("seconds").number("seconds");
    r.epochs.push_back(std::move(e));
  }
  r.total_seconds = doc.at("total_seconds").number("total_seconds");
  return r;
}

inline void search_result::write_json(const std::string& path) const {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw io_error(mixq::detail::cat("search_result: cannot open ", tmp, " for writing"));
    f << to_json();
    f.flush();
    if (!f) throw io_error(mixq::detail::cat("search_result: writing ", tmp, " failed"));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    throw io_error(mixq::detail::cat("search_result: cannot rename ", tmp, " to ", path));
  }
}

}  // namespace mixq::search
