#include "compress/data.h"

#include <fstream>
#include <sstream>

#include "compress/error.h"
#include "compress/npy.h"
#include "compress/tokenizer.h"

namespace compress {

std::string readFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(ErrorCategory::Io, "cannot open '" + path + "': check the path");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<int64_t> loadTokenStream(const DataSource& src) {
  if (!src.tokens.empty()) return readTokenStream(src.tokens);
  if (!src.text.empty()) {
    Tokenizer tok = Tokenizer::load(src.tokenizer);
    return tokenizeParagraphs(tok, readFile(src.text));
  }
  fail(ErrorCategory::Config, "the data section names no `tokens` or `text` file");
}

}  // namespace compress
