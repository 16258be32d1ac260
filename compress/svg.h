// svg.h — a small SVG writer for the plots in reports and comparisons: scatter plots with a marked front,
// and horizontal bar charts (one bar per layer). Standalone SVG 1.1 text with inline styles, no scripts, no
// external fonts or images, so a file renders the same in a browser, in rsvg-convert and inlined in HTML.
// Output is deterministic (fixed number formatting), so plots of the same report are byte-identical.
#pragma once

#include <cmath>
#include <string>
#include <vector>

namespace compress::svg {

struct Point {
  double x = 0, y = 0;
  std::string label;  // drawn beside the point (empty: none)
};

struct Series {
  std::string name;           // legend entry
  std::vector<Point> points;
  bool connect = false;       // draw a line through the points in x order (a Pareto front)
};

struct ScatterPlot {
  std::string title, x_label, y_label;
  std::vector<Series> series;  // drawn in order; the palette gives series i its colour
  /// The y range shown (NaN: fit all points). A point outside is drawn as a triangle on the frame's edge,
  /// labelled with its value, so one far-off run does not flatten the others.
  double y_min = NAN, y_max = NAN;
};

struct Bar {
  std::string label;  // the row's name (a layer)
  double value = 0;
};

struct BarChart {
  std::string title, value_label;
  std::vector<Bar> bars;
  int value_digits = 3;  // digits after the point in the value printed at each bar's end
};

/// Escapes & < > " ' for text and attribute values.
std::string escapeXml(const std::string& s);
/// A scatter plot, 720 x 500, the legend under the axes. Non-finite points are left out; an empty plot says
/// "no data". Labels are moved up or down where they would overlap one already drawn.
std::string scatter(const ScatterPlot& p);
/// A horizontal bar chart, 720 wide and 18 px per bar. Negative values draw to the left of zero.
std::string bars(const BarChart& c);

}  // namespace compress::svg
