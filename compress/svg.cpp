// svg.cpp — the plots of svg.h: axes with round-number ticks, then the marks. Coordinates are printed with
// one decimal, values with the precision the caller asks for.
#include "compress/svg.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

namespace compress::svg {

namespace {

constexpr const char* kPalette[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"};
constexpr int kPaletteSize = sizeof kPalette / sizeof kPalette[0];
constexpr const char* kFont = "font-family=\"DejaVu Sans, Arial, sans-serif\"";

std::string num(double v, int digits = 1) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  std::string s = buf;
  if (s[0] == '-' && s.find_first_not_of("-0.") == std::string::npos) s.erase(0, 1);  // "-0.0" -> "0.0"
  return s;
}

/// Round-number ticks covering [lo, hi]: steps of 1, 2 or 5 times a power of ten, about `target` of them.
struct Axis {
  double lo = 0, hi = 1, step = 1;
  int digits = 0;
};

Axis niceAxis(double lo, double hi, int target = 6) {
  if (!(hi > lo)) {  // one value (or none): a unit-wide window around it
    const double pad = lo != 0 ? std::fabs(lo) * 0.1 : 1.0;
    lo -= pad, hi += pad;
  }
  const double raw = (hi - lo) / target, mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double frac = raw / mag, step = (frac < 1.5 ? 1 : frac < 3.5 ? 2 : frac < 7.5 ? 5 : 10) * mag;
  Axis a;
  a.step = step;
  a.lo = std::floor(lo / step) * step;
  a.hi = std::ceil(hi / step) * step;
  a.digits = std::max(0, static_cast<int>(-std::floor(std::log10(step) + 1e-9)));
  return a;
}

std::string header(double w, double h, const std::string& title) {
  std::ostringstream s;
  s << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    << "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"" << num(w, 0) << "\" height=\"" << num(h, 0)
    << "\" viewBox=\"0 0 " << num(w, 0) << " " << num(h, 0) << "\">\n"
    << "<title>" << escapeXml(title) << "</title>\n"
    << "<rect x=\"0\" y=\"0\" width=\"" << num(w, 0) << "\" height=\"" << num(h, 0) << "\" fill=\"#ffffff\"/>\n"
    << "<text x=\"" << num(w / 2) << "\" y=\"22\" text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\" " << kFont
    << ">" << escapeXml(title) << "</text>\n";
  return s.str();
}

std::string text(double x, double y, const std::string& t, const char* anchor, int size, const std::string& extra = "") {
  std::ostringstream s;
  s << "<text x=\"" << num(x) << "\" y=\"" << num(y) << "\" text-anchor=\"" << anchor << "\" font-size=\"" << size << "\" "
    << kFont << extra << ">" << escapeXml(t) << "</text>\n";
  return s.str();
}

std::string line(double x1, double y1, double x2, double y2, const char* stroke, double width = 1) {
  std::ostringstream s;
  s << "<line x1=\"" << num(x1) << "\" y1=\"" << num(y1) << "\" x2=\"" << num(x2) << "\" y2=\"" << num(y2)
    << "\" stroke=\"" << stroke << "\" stroke-width=\"" << num(width) << "\"/>\n";
  return s.str();
}

/// The plot area of a scatter plot and its mapping from data to pixels.
struct Frame {
  double left = 84, right = 700, top = 40, bottom = 420;
  Axis x, y;
  double px(double v) const { return left + (v - x.lo) / (x.hi - x.lo) * (right - left); }
  double py(double v) const { return bottom - (v - y.lo) / (y.hi - y.lo) * (bottom - top); }
};

std::string drawAxes(const Frame& f, const std::string& x_label, const std::string& y_label) {
  std::ostringstream s;
  s << "<rect x=\"" << num(f.left) << "\" y=\"" << num(f.top) << "\" width=\"" << num(f.right - f.left) << "\" height=\""
    << num(f.bottom - f.top) << "\" fill=\"none\" stroke=\"#444444\"/>\n";
  for (int i = 0; f.x.lo + i * f.x.step <= f.x.hi + f.x.step * 1e-6; ++i) {
    const double v = f.x.lo + i * f.x.step, x = f.px(v);
    s << line(x, f.top, x, f.bottom, "#e6e6e6") << line(x, f.bottom, x, f.bottom + 5, "#444444")
      << text(x, f.bottom + 19, num(v, f.x.digits), "middle", 11);
  }
  for (int i = 0; f.y.lo + i * f.y.step <= f.y.hi + f.y.step * 1e-6; ++i) {
    const double v = f.y.lo + i * f.y.step, y = f.py(v);
    s << line(f.left, y, f.right, y, "#e6e6e6") << line(f.left - 5, y, f.left, y, "#444444")
      << text(f.left - 8, y + 4, num(v, f.y.digits), "end", 11);
  }
  s << text((f.left + f.right) / 2, f.bottom + 42, x_label, "middle", 13)
    << text(18, (f.top + f.bottom) / 2, y_label, "middle", 13,
            " transform=\"rotate(-90 18 " + num((f.top + f.bottom) / 2) + ")\"");
  return s.str();
}

/// About how wide a 10 px DejaVu Sans label is.
double labelWidth(size_t chars) { return 6.5 * static_cast<double>(chars); }

/// Label boxes already drawn, so the next label can be moved off them.
class LabelPlacer {
 public:
  /// Labels stay with their baselines in [top, bottom] (inside the plot frame).
  LabelPlacer(double top, double bottom) : top_(top), bottom_(bottom) {}
  /// The y of a label of `chars` characters starting at x near `y`: the first of y, y - 12, y + 12, y - 24, ...
  /// inside the frame whose box (10 px text) overlaps no box placed so far.
  double place(double x, double y, size_t chars) {
    const double w = labelWidth(chars) + 4, h = 11;
    for (int k = 0; k < 16; ++k) {
      const double dy = (k % 2 ? -1 : 1) * 12.0 * ((k + 1) / 2), cy = y + dy;
      if (cy < top_ || cy > bottom_) continue;
      bool clear = true;
      for (const Box& b : boxes_) clear = clear && (x + w < b.x || b.x + b.w < x || cy < b.y - b.h || b.y < cy - h);
      if (clear) return boxes_.push_back({x, cy, w, h}), cy;
    }
    return boxes_.push_back({x, y, w, h}), y;
  }

 private:
  struct Box {
    double x, y, w, h;  // y is the text baseline; the box spans [y - h, y]
  };
  std::vector<Box> boxes_;
  double top_, bottom_;
};

std::string drawSeries(const Frame& f, const Series& se, const char* colour, LabelPlacer& labels) {
  std::vector<Point> pts;
  for (const Point& p : se.points)
    if (std::isfinite(p.x) && std::isfinite(p.y)) pts.push_back(p);
  auto clampY = [&](double y) { return std::min(std::max(y, f.y.lo), f.y.hi); };
  std::ostringstream s;
  if (se.connect && pts.size() > 1) {
    std::vector<Point> sorted = pts;
    std::stable_sort(sorted.begin(), sorted.end(), [](const Point& a, const Point& b) { return a.x < b.x; });
    s << "<polyline fill=\"none\" stroke=\"" << colour << "\" stroke-width=\"2\" points=\"";
    for (size_t i = 0; i < sorted.size(); ++i) s << (i ? " " : "") << num(f.px(sorted[i].x)) << "," << num(f.py(clampY(sorted[i].y)));
    s << "\"/>\n";
  }
  for (const Point& p : pts) {
    const double x = f.px(p.x), y = f.py(clampY(p.y));
    const bool above = p.y > f.y.hi, below = p.y < f.y.lo;
    if (above || below) {  // off scale: a triangle pointing out of the frame
      const double d = above ? -7 : 7;
      s << "<polygon points=\"" << num(x - 6) << "," << num(y) << " " << num(x + 6) << "," << num(y) << " " << num(x) << ","
        << num(y + d) << "\" fill=\"" << colour << "\"/>\n";
    } else {
      s << "<circle cx=\"" << num(x) << "\" cy=\"" << num(y) << "\" r=\"" << (se.connect ? "5" : "4") << "\" fill=\"" << colour
        << "\" fill-opacity=\"" << (se.connect ? "1" : "0.75") << "\"/>\n";
    }
    std::string label = p.label;
    if (above || below) label += (label.empty() ? "" : " ") + std::string("(") + num(p.y, 4) + ", off scale)";
    if (label.empty()) continue;
    const bool left = x + 7 + labelWidth(label.size()) > 716;  // would run off the right edge: put it to the left
    const double lx = left ? x - 7 - labelWidth(label.size()) : x + 7;
    const double want = y + (above ? 14 : -6), ly = labels.place(lx, want, label.size());
    if (std::fabs(ly - want) > 12) s << line(x, y, left ? x - 7 : lx, ly - 4, "#999999", 0.6);  // moved: a leader line
    s << text(left ? x - 7 : lx, ly, label, left ? "end" : "start", 10, " fill=\"#333333\"");
  }
  return s.str();
}

}  // namespace

std::string escapeXml(const std::string& in) {
  std::string out;
  out.reserve(in.size());
  for (char c : in) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default:  // control characters are not allowed in XML 1.0 text
        if (static_cast<unsigned char>(c) < 0x20 && c != '\n' && c != '\t') out += ' ';
        else out += c;
    }
  }
  return out;
}

std::string scatter(const ScatterPlot& p) {
  double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
  for (const Series& se : p.series)
    for (const Point& pt : se.points)
      if (std::isfinite(pt.x) && std::isfinite(pt.y))
        xlo = std::min(xlo, pt.x), xhi = std::max(xhi, pt.x), ylo = std::min(ylo, pt.y), yhi = std::max(yhi, pt.y);
  std::ostringstream s;
  s << header(720, 500, p.title);
  if (!std::isfinite(xlo)) {
    s << text(360, 250, "no data", "middle", 14) << "</svg>\n";
    return s.str();
  }
  Frame f;
  f.x = niceAxis(xlo, xhi);
  f.y = niceAxis(std::isfinite(p.y_min) ? std::max(ylo, p.y_min) : ylo, std::isfinite(p.y_max) ? std::min(yhi, p.y_max) : yhi);
  s << drawAxes(f, p.x_label, p.y_label);
  LabelPlacer labels(f.top + 11, f.bottom - 2);
  for (size_t i = 0; i < p.series.size(); ++i) s << drawSeries(f, p.series[i], kPalette[i % kPaletteSize], labels);
  double lx = f.left;  // legend: one row under the x label
  for (size_t i = 0; i < p.series.size(); ++i) {
    s << "<circle cx=\"" << num(lx + 4) << "\" cy=\"486\" r=\"4\" fill=\"" << kPalette[i % kPaletteSize] << "\"/>\n"
      << text(lx + 12, 490, p.series[i].name, "start", 11);
    lx += 30 + 6.5 * static_cast<double>(p.series[i].name.size());
  }
  s << "</svg>\n";
  return s.str();
}

std::string bars(const BarChart& c) {
  constexpr double kRow = 18, kTop = 44, kLabelWidth = 230, kRight = 640;
  double lo = 0, hi = 0;
  for (const Bar& b : c.bars)
    if (std::isfinite(b.value)) lo = std::min(lo, b.value), hi = std::max(hi, b.value);
  const Axis a = niceAxis(lo, hi > lo ? hi : lo + 1, 5);
  const double height = kTop + kRow * static_cast<double>(std::max<size_t>(c.bars.size(), 1)) + 50;
  auto px = [&](double v) { return kLabelWidth + (v - a.lo) / (a.hi - a.lo) * (kRight - kLabelWidth); };
  std::ostringstream s;
  s << header(720, height, c.title);
  const double bottom = kTop + kRow * static_cast<double>(c.bars.size());
  for (int i = 0; a.lo + i * a.step <= a.hi + a.step * 1e-6; ++i) {
    const double v = a.lo + i * a.step, x = px(v);
    s << line(x, kTop, x, bottom, "#e6e6e6") << text(x, bottom + 16, num(v, a.digits), "middle", 11);
  }
  for (size_t i = 0; i < c.bars.size(); ++i) {
    const Bar& b = c.bars[i];
    const double y = kTop + kRow * static_cast<double>(i);
    s << text(kLabelWidth - 6, y + 13, b.label, "end", 11);
    if (!std::isfinite(b.value)) {
      s << text(px(0) + 4, y + 13, "n/a", "start", 10, " fill=\"#666666\"");
      continue;
    }
    const double x0 = px(std::min(0.0, b.value)), x1 = px(std::max(0.0, b.value));
    s << "<rect x=\"" << num(x0) << "\" y=\"" << num(y + 3) << "\" width=\"" << num(std::max(x1 - x0, 0.5))
      << "\" height=\"" << num(kRow - 6) << "\" fill=\"" << kPalette[0] << "\"/>\n"
      << text(x1 + 4, y + 13, num(b.value, c.value_digits), "start", 10, " fill=\"#333333\"");
  }
  s << line(px(0), kTop, px(0), bottom, "#444444") << text((kLabelWidth + kRight) / 2, bottom + 38, c.value_label, "middle", 13)
    << "</svg>\n";
  return s.str();
}

}  // namespace compress::svg
