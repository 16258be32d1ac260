// svg_test.cpp — the plots are well-formed XML that rsvg-convert renders to a non-empty PNG, their marks sit
// where the data puts them, and text is escaped.
#include "compress/svg.h"

#include <catch2/catch.hpp>
#include <cstdlib>
#include <fstream>
#include <regex>

#include "test_util.h"

using namespace compress;

namespace {

/// Writes `svg` to a temporary file, checks it with xmllint and renders it with rsvg-convert; the PNG's size.
/// Both tools are Debian packages scripts/setup.sh installs; a missing tool fails the test.
long renderedPngBytes(const std::string& svg) {
  const std::string dir = testutil::tempDir("svg"), in = dir + "/plot.svg", png = dir + "/plot.png";
  std::ofstream(in) << svg;
  const int lint = std::system(("xmllint --noout " + in + " 2> " + dir + "/lint.txt").c_str());
  std::ifstream lint_out(dir + "/lint.txt");
  const std::string lint_msg((std::istreambuf_iterator<char>(lint_out)), std::istreambuf_iterator<char>());
  INFO("xmllint: " << lint_msg);
  REQUIRE(lint == 0);
  REQUIRE(std::system(("rsvg-convert -o " + png + " " + in).c_str()) == 0);
  std::ifstream f(png, std::ios::binary | std::ios::ate);
  const long bytes = static_cast<long>(f.tellg());
  f.seekg(0);
  char magic[8] = {};
  f.read(magic, 8);
  CHECK(std::string(magic + 1, 3) == "PNG");
  std::system(("rm -rf " + dir).c_str());
  return bytes;
}

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

}  // namespace

TEST_CASE("a scatter plot renders, with one mark per finite point and the front as a line", "[svg]") {
  svg::ScatterPlot p;
  p.title = "perplexity against <size> & \"bits\"";
  p.x_label = "weights (KiB)";
  p.y_label = "perplexity";
  p.series = {{"runs", {{100, 4.5, "a"}, {200, NAN, "nan"}, {300, 4.2, "b"}}, false},
              {"front", {{50, 4.4, "c"}, {400, 4.1, "d"}}, true}};
  const std::string s = svg::scatter(p);
  CHECK(count(s, "<circle") == 4 + 2);  // 4 finite points and 2 legend dots
  CHECK(count(s, "<polyline") == 1);
  CHECK(s.find("perplexity against &lt;size&gt; &amp; &quot;bits&quot;") != std::string::npos);
  CHECK(s.find(">nan<") == std::string::npos);
  // x from 50 to 400 maps onto the frame [84, 700]: the leftmost point at the frame's left edge (ticks round to 50).
  CHECK(s.find("cx=\"84.0\"") != std::string::npos);
  CHECK(renderedPngBytes(s) > 2000);
}

TEST_CASE("a point outside the shown y range is drawn on the edge with its value", "[svg]") {
  svg::ScatterPlot p;
  p.series = {{"runs", {{1, 4.0, "good"}, {2, 4.5, "ok"}, {3, 39.06, "far"}}, false}};
  p.y_max = 5;
  const std::string s = svg::scatter(p);
  CHECK(count(s, "<polygon") == 1);
  CHECK(s.find("far (39.0600, off scale)") != std::string::npos);
  CHECK(renderedPngBytes(s) > 2000);
}

TEST_CASE("labels that would overlap are moved apart", "[svg]") {
  svg::ScatterPlot p;
  p.series = {{"runs", {{1, 4.0, "first_label"}, {1, 4.0, "second_label"}}, false}};
  const std::string s = svg::scatter(p);
  std::smatch m1, m2;
  REQUIRE(std::regex_search(s, m1, std::regex("y=\"([0-9.]+)\"[^>]*>first_label<")));
  REQUIRE(std::regex_search(s, m2, std::regex("y=\"([0-9.]+)\"[^>]*>second_label<")));
  CHECK(std::abs(std::stod(m1[1]) - std::stod(m2[1])) >= 11);
}

TEST_CASE("an empty plot says so and still renders", "[svg]") {
  const std::string s = svg::scatter({"nothing", "x", "y", {{"runs", {{NAN, 1, ""}}, false}}});
  CHECK(s.find(">no data<") != std::string::npos);
  CHECK(renderedPngBytes(s) > 500);
}

TEST_CASE("a bar chart has one bar per layer, sized by value, negative ones left of zero", "[svg]") {
  svg::BarChart c;
  c.title = "bits per weight";
  c.value_label = "bits";
  c.bars = {{"layers.0.wq", 4.5}, {"layers.0.wk", 8.25}, {"layers.0.wv", -1}, {"output", NAN}};
  c.value_digits = 2;
  const std::string s = svg::bars(c);
  CHECK(count(s, "<rect") == 1 + 3);  // background and three finite bars
  CHECK(s.find(">8.25<") != std::string::npos);
  CHECK(s.find(">n/a<") != std::string::npos);
  // Bars are proportional: 8.25 is 1.833 times 4.5 (axis from -2 to 10 over [230, 640]: zero at 298.3).
  std::smatch m;
  std::vector<double> widths;
  std::string rest = s;
  while (std::regex_search(rest, m, std::regex("<rect x=\"([0-9.]+)\" y=\"[0-9.]+\" width=\"([0-9.]+)\""))) {
    widths.push_back(std::stod(m[2]));
    rest = m.suffix();
  }
  REQUIRE(widths.size() == 4);
  CHECK_THAT(widths[2] / widths[1], Catch::Matchers::WithinAbs(8.25 / 4.5, 0.01));
  CHECK(renderedPngBytes(s) > 2000);
}
