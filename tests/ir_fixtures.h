// ir_fixtures.h — small graphs built in code for IR and executor tests.
#pragma once

#include "compress/graph.h"

namespace testutil {

/// y = x W^T (then Relu when `relu`), with x [batch, in] and the weight `w` [out, in] named "w".
inline compress::Graph linearGraph(const at::Tensor& w, bool relu) {
  using namespace compress;
  int64_t out = w.size(0), in = w.size(1);
  Graph g;
  g.inputs = {"x"};
  g.values["x"] = ValueInfo{DType::Float32, Shape{Dim::sym("batch"), Dim::fixed(in)}};
  g.initializers["w"] = w;
  g.parameters.insert("w");
  g.values["w"] = ValueInfo{DType::Float32, Shape{Dim::fixed(out), Dim::fixed(in)}};
  g.nodes.push_back(Node{"Transpose", "", "t", {"w"}, {"wt"}, {{"perm", std::vector<int64_t>{1, 0}}}, ""});
  g.nodes.push_back(Node{"MatMul", "", "mm", {"x", "wt"}, {"y"}, {}, ""});
  g.values["wt"] = ValueInfo{DType::Float32, Shape{Dim::fixed(in), Dim::fixed(out)}};
  g.values["y"] = ValueInfo{DType::Float32, Shape{Dim::sym("batch"), Dim::fixed(out)}};
  g.outputs = {"y"};
  if (relu) {
    g.nodes.push_back(Node{"Relu", "", "r", {"y"}, {"out"}, {}, ""});
    g.values["out"] = g.values["y"];
    g.outputs = {"out"};
  }
  return g;
}

}  // namespace testutil
