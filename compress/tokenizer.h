// tokenizer.h — the llama2.c tokenizer (tokenizer.bin): SentencePiece-style BPE by merge scores.
// Encoding follows llama2.c run.c exactly: dummy-prefix " " token, one token per UTF-8 character found in
// the vocabulary (else one byte token per byte, id = byte + 3), then repeatedly merge the adjacent pair
// whose concatenation is in the vocabulary with the highest score (leftmost on ties).
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace compress {

class Tokenizer {
 public:
  /// Loads a llama2.c tokenizer.bin: int32 max_token_length, then per token float32 score, int32 length,
  /// bytes, until the end of the file. Error(Io)/Error(Data) on unreadable or malformed files.
  static Tokenizer load(const std::string& path);
  /// The same from bytes in memory (`path` names them in errors).
  static Tokenizer parse(const std::string& bytes, const std::string& path);

  /// Encodes text (no BOS/EOS; add them yourself). Empty text gives no tokens.
  std::vector<int64_t> encode(const std::string& text) const;
  /// The text of one token following `prev` (strips the leading space after BOS, decodes <0xXX>);
  /// Error(Data) for an id outside the vocabulary.
  std::string decode(int64_t prev, int64_t token) const;

  int64_t vocabSize() const { return static_cast<int64_t>(pieces_.size()); }
  const std::string& piece(int64_t id) const { return pieces_.at(static_cast<size_t>(id)); }
  static constexpr int64_t kBos = 1, kEos = 2;

 private:
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int64_t> lookup_;  // first id of each piece
  int64_t lookup(const std::string& s) const {
    auto it = lookup_.find(s);
    return it == lookup_.end() ? -1 : it->second;
  }
};

/// Splits text as the shared data was made: "\r\n" -> "\n", split on "\n\n", strip each piece, skip empty
/// ones; every piece becomes BOS + encode(piece).
std::vector<int64_t> tokenizeParagraphs(const Tokenizer& tok, const std::string& text);

}  // namespace compress
