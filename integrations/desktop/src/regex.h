// The regular expressions of tokenizer.json (Split pre-tokenizers, Replace normalizers and decoders,
// ByteLevel's GPT-2 pattern), run by Oniguruma: the engine the `tokenizers` library itself runs, so
// a pattern means here what it means there (Unicode classes, lookahead, case folding).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace edgec {

class Regex {
 public:
  // throws std::runtime_error with Oniguruma's message when the pattern does not compile
  explicit Regex(std::string_view pattern);

  // the byte ranges [from, to) of the successive matches in UTF-8 text, as the Rust `onig` crate's
  // find_iter gives them (an empty match right after the previous match is skipped); thread-safe
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view text) const;

 private:
  struct Compiled;
  std::shared_ptr<const Compiled> compiled_;
};

}  // namespace edgec
