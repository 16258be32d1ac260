// registry.cpp — the explicit pass registry: passes.def expanded twice, no static initializers.
#include "compress/pass.h"

namespace compress {

#define COMPRESS_PASS(factory) std::unique_ptr<Pass> factory();
#include "compress/passes.def"
#undef COMPRESS_PASS

const std::vector<PassFactory>& passFactories() {
  static const std::vector<PassFactory> all = {
#define COMPRESS_PASS(factory) &factory,
#include "compress/passes.def"
#undef COMPRESS_PASS
  };
  return all;
}

std::unique_ptr<Pass> createPass(const std::string& name) {
  for (auto f : passFactories()) {
    auto p = f();
    if (name == p->name()) return p;
  }
  return nullptr;
}

std::vector<std::string> passNames() {
  std::vector<std::string> names;
  for (auto f : passFactories()) names.push_back(f()->name());
  return names;
}

}  // namespace compress
