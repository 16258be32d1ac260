// tokenizer.cpp — llama2.c BPE encoder with a heap of candidate merges (O(n log n) per piece instead of
// run.c's O(n^2) rescans; same result, including leftmost-on-ties).
#include "compress/tokenizer.h"

#include <cstring>
#include <fstream>
#include <queue>

#include "compress/error.h"
#include "compress/npy.h"

namespace compress {

Tokenizer Tokenizer::load(const std::string& path) { return parse(readRegularFile(path, "a tokenizer.bin file"), path); }

Tokenizer Tokenizer::parse(const std::string& bytes, const std::string& path) {
  auto bad = [&](const std::string& why) {
    fail(ErrorCategory::Data, "'" + path + "' is not a llama2.c tokenizer.bin: " + why);
  };
  if (bytes.size() < 4) bad("file is too short");
  size_t off = 4;
  int32_t max_len;
  std::memcpy(&max_len, bytes.data(), 4);
  if (max_len <= 0 || max_len > 1 << 16) bad("implausible max_token_length " + std::to_string(max_len));
  Tokenizer t;
  while (off < bytes.size()) {
    if (off + 8 > bytes.size()) bad("truncated entry for token " + std::to_string(t.pieces_.size()));
    float score;
    int32_t len;
    std::memcpy(&score, bytes.data() + off, 4);
    std::memcpy(&len, bytes.data() + off + 4, 4);
    off += 8;
    if (len < 0 || len > max_len || off + static_cast<size_t>(len) > bytes.size())
      bad("token " + std::to_string(t.pieces_.size()) + " has invalid length " + std::to_string(len));
    std::string piece = bytes.substr(off, static_cast<size_t>(len));
    off += static_cast<size_t>(len);
    t.lookup_.emplace(piece, static_cast<int64_t>(t.pieces_.size()));  // keeps the first id
    t.pieces_.push_back(std::move(piece));
    t.scores_.push_back(score);
  }
  if (t.pieces_.size() < 259) bad("only " + std::to_string(t.pieces_.size()) + " tokens; byte fallback needs at least 259");
  return t;
}

std::vector<int64_t> Tokenizer::encode(const std::string& text) const {
  std::vector<int64_t> ids;
  if (text.empty()) return ids;
  if (int64_t sp = lookup(" "); sp >= 0) ids.push_back(sp);
  for (size_t i = 0; i < text.size();) {
    size_t n = 1;
    unsigned char c = static_cast<unsigned char>(text[i]);
    if ((c & 0xC0) == 0xC0) {  // UTF-8 lead byte: take up to 3 continuation bytes (as run.c does)
      while (i + n < text.size() && n < 4 && (static_cast<unsigned char>(text[i + n]) & 0xC0) == 0x80) ++n;
    }
    int64_t id = lookup(text.substr(i, n));
    if (id >= 0) {
      ids.push_back(id);
    } else {
      for (size_t k = 0; k < n; ++k) ids.push_back(static_cast<unsigned char>(text[i + k]) + 3);
    }
    i += n;
  }
  // Doubly linked list over the symbols; heap of candidate merges keyed by (score desc, position asc).
  size_t n = ids.size();
  std::vector<int64_t> prev(n), next(n), version(n, 0);
  std::vector<bool> alive(n, true);
  for (size_t i = 0; i < n; ++i) {
    prev[i] = static_cast<int64_t>(i) - 1;
    next[i] = i + 1 < n ? static_cast<int64_t>(i + 1) : -1;
  }
  struct Cand {
    float score;
    int64_t left, right, merged;
    int64_t vl, vr;
  };
  auto worse = [](const Cand& a, const Cand& b) {
    if (a.score != b.score) return a.score < b.score;
    return a.left > b.left;
  };
  std::priority_queue<Cand, std::vector<Cand>, decltype(worse)> heap(worse);
  auto push = [&](int64_t l) {
    if (l < 0) return;
    int64_t r = next[l];
    if (r < 0) return;
    int64_t m = lookup(pieces_[ids[l]] + pieces_[ids[r]]);
    if (m >= 0) heap.push({scores_[m], l, r, m, version[l], version[r]});
  };
  for (size_t i = 0; i + 1 < n; ++i) push(static_cast<int64_t>(i));
  while (!heap.empty()) {
    Cand c = heap.top();
    heap.pop();
    if (!alive[c.left] || !alive[c.right] || next[c.left] != c.right || version[c.left] != c.vl ||
        version[c.right] != c.vr)
      continue;
    ids[c.left] = c.merged;
    ++version[c.left];
    alive[c.right] = false;
    next[c.left] = next[c.right];
    if (next[c.right] >= 0) prev[next[c.right]] = c.left;
    push(prev[c.left]);
    push(c.left);
  }
  std::vector<int64_t> out;
  for (int64_t i = n ? 0 : -1; i >= 0; i = next[i]) out.push_back(ids[i]);
  return out;
}

std::string Tokenizer::decode(int64_t prev, int64_t token) const {
  if (token < 0 || token >= vocabSize())
    fail(ErrorCategory::Data, "token id " + std::to_string(token) + " is outside the tokenizer's " + std::to_string(vocabSize()) +
                                  " tokens: the tokenizer does not belong to this model");
  std::string p = piece(token);
  if (prev == kBos && !p.empty() && p[0] == ' ') p = p.substr(1);
  unsigned int byte;
  if (p.size() == 6 && std::sscanf(p.c_str(), "<0x%02X>", &byte) == 1) return std::string(1, static_cast<char>(byte));
  return p;
}

std::vector<int64_t> tokenizeParagraphs(const Tokenizer& tok, const std::string& text) {
  std::string t;
  t.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\r' && i + 1 < text.size() && text[i + 1] == '\n') continue;
    t.push_back(text[i]);
  }
  std::vector<int64_t> out;
  size_t start = 0;
  while (start <= t.size()) {
    size_t end = t.find("\n\n", start);
    if (end == std::string::npos) end = t.size();
    std::string piece = t.substr(start, end - start);
    // Python str.strip(): whitespace on both ends.
    size_t a = piece.find_first_not_of(" \t\n\r\f\v"), b = piece.find_last_not_of(" \t\n\r\f\v");
    if (a != std::string::npos) {
      piece = piece.substr(a, b - a + 1);
      out.push_back(Tokenizer::kBos);
      auto ids = tok.encode(piece);
      out.insert(out.end(), ids.begin(), ids.end());
    }
    start = end + 2;
  }
  return out;
}

}  // namespace compress
