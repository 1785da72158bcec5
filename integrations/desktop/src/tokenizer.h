// A Hugging Face tokenizer.json reader that gives the ids and decoded text the `tokenizers` library
// gives, for the pipelines real files use: WordPiece (BERT), byte-level BPE (GPT-2, Llama 3, Qwen2/3,
// SmolLM: regex Split, Digits, NFC) and SentencePiece-style BPE with byte fallback (Gemma, Llama 2,
// Mistral: Replace/Prepend normalizers or Metaspace; Replace, ByteFallback, Fuse, Strip decoders).
// Regular expressions run on Oniguruma, as in `tokenizers`. Anything else fails at load with one
// line that names the file and the unsupported part.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace edgec {

struct Encoding {
  std::vector<int64_t> ids;
  std::vector<int64_t> attention_mask;
};

class Tokenizer {
 public:
  // throws std::runtime_error
  static Tokenizer from_file(const std::string& path);

  // as tokenizers' Tokenizer.encode(text): the file's truncation and padding apply; throws
  // std::runtime_error on text that is not UTF-8
  Encoding encode(std::string_view text, bool add_special_tokens = true) const;
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = true) const;
  std::optional<int64_t> token_to_id(std::string_view token) const;
  size_t vocab_size() const;  // including added tokens

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;  // immutable once loaded: copies share it, encode is thread-safe
};

}  // namespace edgec
