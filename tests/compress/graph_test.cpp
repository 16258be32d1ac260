// graph_test.cpp — verify() catches each broken invariant; the dump is canonical.
#include "compress/graph.h"

#include <catch2/catch.hpp>

#include "compress/error.h"
#include "ir_fixtures.h"

using namespace compress;
using Catch::Matchers::Contains;

namespace {
Graph tiny() { return testutil::linearGraph(at::ones({2, 4}), false); }
}  // namespace

TEST_CASE("verify accepts a well-formed graph and finds its linear layer", "[graph]") {
  Graph g = tiny();
  CHECK_NOTHROW(verify(g));
  auto lin = findLinears(g);
  REQUIRE(lin.size() == 1);
  CHECK(lin[0].weight == "w");
  CHECK(lin[0].transposed);
  CHECK(g.parameterCount() == 8);
  CHECK(g.parameterBytes() == 32);
}

TEST_CASE("verify reports use-before-definition, dangling nodes and shape mismatches", "[graph][errors]") {
  Graph g = tiny();
  std::swap(g.nodes[0], g.nodes[1]);
  CHECK_THROWS_WITH(verify(g), Contains("reads 'wt' before it is defined"));

  g = tiny();
  g.nodes.push_back(Node{"Relu", "", "dead", {"y"}, {"z"}, {}, ""});
  g.values["z"] = g.values["y"];
  CHECK_THROWS_WITH(verify(g), Contains("produces nothing that is used"));

  g = tiny();
  g.nodes.push_back(Node{"Relu", "", "dup", {"x"}, {"y"}, {}, ""});
  CHECK_THROWS_WITH(verify(g), Contains("more than one producer"));

  g = tiny();
  g.values["x"].shape = Shape{Dim::sym("batch"), Dim::fixed(5)};
  CHECK_THROWS_WITH(verify(g), Contains("input has 5 features but weight 'w' expects 4"));

  g = tiny();
  g.values["w"].shape = Shape{Dim::fixed(3), Dim::fixed(4)};
  CHECK_THROWS_WITH(verify(g), Contains("initializer 'w' has shape [2, 4]"));

  g = tiny();
  g.sparsity["w"] = SparsityInfo{at::zeros({2, 4}, at::kBool), SparsityPattern::Unstructured, 0, 0};
  CHECK_THROWS_WITH(verify(g), Contains("non-zero values where its mask prunes them"));

  g = tiny();
  g.outputs = {"nothing"};
  CHECK_THROWS_WITH(verify(g), Contains("graph output 'nothing' is never produced"));
}

TEST_CASE("dumpGraph is canonical and pruneUnused removes dead nodes", "[graph]") {
  Graph g = tiny();
  std::string d = dumpGraph(g);
  CHECK(d == dumpGraph(tiny()));
  CHECK_THAT(d, Contains("node mm: y = MatMul(x, wt) -> float32[batch,2]"));
  CHECK_THAT(d, Contains("param w: float32[2,4] #"));
  g.nodes.push_back(Node{"Relu", "", "dead", {"y"}, {"z"}, {}, ""});
  g.initializers["unused"] = at::zeros({1});
  g.pruneUnused();
  CHECK(g.nodes.size() == 2);
  CHECK(g.initializers.count("unused") == 0);
  CHECK_NOTHROW(verify(g));
}

TEST_CASE("selectWeights matches Linear, globs, module prefixes and tied names", "[graph]") {
  Graph g = tiny();
  g.aliases["head.weight"] = "w";
  CHECK(selectWeights(g, {"Linear"}, {}) == std::vector<std::string>{"w"});
  CHECK(selectWeights(g, {"Linear"}, {"head"}).empty());  // ignored through its tied name
  CHECK(selectWeights(g, {"w*"}, {}) == std::vector<std::string>{"w"});
  std::vector<std::string> unmatched;
  selectWeights(g, {"layers.*.w1"}, {}, &unmatched);
  CHECK(unmatched == std::vector<std::string>{"layers.*.w1"});
}
