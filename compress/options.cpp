#include "compress/options.h"

#include <algorithm>
#include <sstream>

#include "compress/error.h"

namespace compress {

void Diagnostics::add(const YAML::Mark& mark, const std::string& key, const std::string& msg) {
  std::string where = file_;
  if (!mark.is_null()) where += ":" + std::to_string(mark.line + 1) + ":" + std::to_string(mark.column + 1);
  errors_.push_back(where + ": " + (key.empty() ? "" : key + ": ") + msg);
}

void Diagnostics::add(const std::string& key, const std::string& msg) {
  errors_.push_back(file_ + ": " + (key.empty() ? "" : key + ": ") + msg);
}

void Diagnostics::throwIfAny() const {
  if (errors_.empty()) return;
  std::string msg = "the recipe has " + std::to_string(errors_.size()) + " problem" +
                    (errors_.size() > 1 ? "s" : "") + " (nothing was run):";
  for (const auto& e : errors_) msg += "\n  " + e;
  fail(ErrorCategory::Config, msg);
}

std::string closestMatch(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = std::max<size_t>(2, word.size() / 3) + 1;
  for (const auto& c : candidates) {
    std::vector<size_t> prev(c.size() + 1), cur(c.size() + 1);
    for (size_t j = 0; j <= c.size(); ++j) prev[j] = j;
    for (size_t i = 1; i <= word.size(); ++i) {
      cur[0] = i;
      for (size_t j = 1; j <= c.size(); ++j)
        cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (word[i - 1] == c[j - 1] ? 0 : 1)});
      std::swap(prev, cur);
    }
    if (prev[c.size()] < best_d) best_d = prev[c.size()], best = c;
  }
  return best;
}

// A key that is missing, or written with no value (`bits:` or `bits: ~`), takes its default.
static bool absent(const YAML::Node& v) { return !v || !v.IsDefined() || v.IsNull(); }

OptionReader::OptionReader(const YAML::Node& node, Diagnostics* diag, std::string ctx)
    : node_(node), diag_(diag), ctx_(std::move(ctx)) {
  if (node_ && !node_.IsNull() && !node_.IsMap()) {
    bad(node_, "", "options must be a map like {key: value}");
    node_ = YAML::Node();
  }
}

OptionReader OptionReader::describe() {
  OptionReader r;
  r.describing_ = true;
  return r;
}

void OptionReader::bad(const YAML::Node& v, const std::string& key, const std::string& msg) {
  if (diag_) diag_->add(v.Mark(), ctx_ + (key.empty() ? "" : "." + key), msg);
}

void OptionReader::error(const std::string& key, const std::string& msg) {
  if (diag_) diag_->add(node_ ? node_.Mark() : YAML::Mark::null_mark(), ctx_ + (key.empty() ? "" : "." + key), msg);
}

YAML::Node OptionReader::lookup(const std::string& key, const std::string& type, const std::string& def,
                                const std::string& help) {
  known_.push_back(key);
  docs_.push_back({key, type, def, help});
  if (describing_ || !node_ || !node_.IsMap()) return YAML::Node();
  return node_[key];
}

int64_t OptionReader::integer(const std::string& key, int64_t def, int64_t lo, int64_t hi, const std::string& help) {
  YAML::Node v = lookup(key, "int [" + std::to_string(lo) + ", " + std::to_string(hi) + "]", std::to_string(def), help);
  if (absent(v)) return def;
  int64_t x;
  if (!v.IsScalar() || !YAML::convert<int64_t>::decode(v, x)) {
    bad(v, key, "expected an integer, got '" + (v.IsScalar() ? v.Scalar() : std::string("a list or map")) + "'");
    return def;
  }
  if (x < lo || x > hi) {
    bad(v, key, "must be between " + std::to_string(lo) + " and " + std::to_string(hi) + ", got " + std::to_string(x));
    return def;
  }
  return x;
}

double OptionReader::number(const std::string& key, double def, double lo, double hi, const std::string& help) {
  std::ostringstream d, range;
  d << def;
  range << "number [" << lo << ", " << hi << "]";
  YAML::Node v = lookup(key, range.str(), d.str(), help);
  if (absent(v)) return def;
  double x;
  std::string s = v.IsScalar() ? v.Scalar() : "";
  bool percent = !s.empty() && s.back() == '%';
  if (percent) {
    try {
      size_t used;
      x = std::stod(s.substr(0, s.size() - 1), &used) / 100.0;
      if (used != s.size() - 1) throw std::invalid_argument(s);
    } catch (const std::exception&) {
      bad(v, key, "expected a number, got '" + s + "'");
      return def;
    }
  } else if (!v.IsScalar() || !YAML::convert<double>::decode(v, x)) {
    bad(v, key, "expected a number, got '" + (v.IsScalar() ? s : std::string("a list or map")) + "'");
    return def;
  }
  if (!(x >= lo && x <= hi)) {  // also rejects NaN
    std::ostringstream m;
    m << "must be between " << lo << " and " << hi << ", got " << s;
    bad(v, key, m.str());
    return def;
  }
  return x;
}

bool OptionReader::boolean(const std::string& key, bool def, const std::string& help) {
  YAML::Node v = lookup(key, "bool", def ? "true" : "false", help);
  if (absent(v)) return def;
  bool x;
  if (!v.IsScalar() || !YAML::convert<bool>::decode(v, x)) {
    bad(v, key, "expected true or false, got '" + (v.IsScalar() ? v.Scalar() : std::string("a list or map")) + "'");
    return def;
  }
  return x;
}

std::string OptionReader::choice(const std::string& key, const std::string& def, const std::vector<std::string>& choices,
                                 const std::string& help) {
  std::string type;
  for (const auto& c : choices) type += (type.empty() ? "" : " | ") + c;
  YAML::Node v = lookup(key, type, def, help);
  if (absent(v)) return def;
  if (!v.IsScalar() || std::find(choices.begin(), choices.end(), v.Scalar()) == choices.end()) {
    bad(v, key, "must be one of " + type + ", got '" + (v.IsScalar() ? v.Scalar() : std::string("a list or map")) + "'");
    return def;
  }
  return v.Scalar();
}

std::string OptionReader::str(const std::string& key, const std::string& def, const std::string& help) {
  YAML::Node v = lookup(key, "string", def, help);
  if (absent(v)) return def;
  if (!v.IsScalar()) {
    bad(v, key, "expected a string");
    return def;
  }
  return v.Scalar();
}

std::vector<std::string> OptionReader::strings(const std::string& key, const std::vector<std::string>& def,
                                               const std::string& help) {
  std::string d = "[";
  for (size_t i = 0; i < def.size(); ++i) d += (i ? ", " : "") + def[i];
  YAML::Node v = lookup(key, "list of strings", d + "]", help);
  if (absent(v)) return def;
  std::vector<std::string> out;
  if (v.IsScalar()) return {v.Scalar()};
  if (!v.IsSequence()) {
    bad(v, key, "expected a list of strings like [a, b]");
    return def;
  }
  for (const auto& item : v) {
    if (!item.IsScalar()) {
      bad(item, key, "every entry must be a string");
      continue;
    }
    out.push_back(item.Scalar());
  }
  return out;
}

void OptionReader::finish() {
  if (describing_ || !node_ || !node_.IsMap()) return;
  for (const auto& kv : node_) {
    std::string k = kv.first.as<std::string>();
    if (std::find(known_.begin(), known_.end(), k) != known_.end()) continue;
    std::string hint = closestMatch(k, known_);
    std::string all;
    for (const auto& x : known_) all += (all.empty() ? "" : ", ") + x;
    bad(kv.first, k, "unknown option" + (hint.empty() ? "" : " (did you mean '" + hint + "'?)") + "; known options: " + all);
  }
}

}  // namespace compress
