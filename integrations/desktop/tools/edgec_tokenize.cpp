// edgec-tokenize TOKENIZER_JSON [--decode] [--no-special] [--keep-special] [--decode-ids] [--vocab-size]
//
// Reads one JSON string literal per stdin line (so any text, newlines included, fits on a line) and
// writes "ids | attention_mask" per line, plus " | <JSON string>" of the decoded ids with --decode.
// --no-special encodes without the post-processor's special tokens; --keep-special keeps special
// tokens in the decode; --decode-ids reads a JSON array of ids per line and writes its decode as a
// JSON string; --vocab-size prints the vocabulary size and exits.
// Tests compare this output with the Python `tokenizers` library.
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "json.h"
#include "tokenizer.h"

namespace {

constexpr const char* kUsage =
    "usage: edgec-tokenize TOKENIZER_JSON [--decode] [--no-special] [--keep-special] [--decode-ids] [--vocab-size]\n";

void append_ints(std::string& out, const std::vector<int64_t>& values) {
  for (size_t i = 0; i < values.size(); ++i) {
    if (i) out += ' ';
    out += std::to_string(values[i]);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string path;
  bool decode = false, add_special = true, skip_special = true, decode_ids = false, vocab_size = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--decode") decode = true;
    else if (a == "--no-special") add_special = false;
    else if (a == "--keep-special") skip_special = false;
    else if (a == "--decode-ids") decode_ids = true;
    else if (a == "--vocab-size") vocab_size = true;
    else if (path.empty() && a.rfind("--", 0) != 0) path = a;
    else {
      std::cerr << kUsage;
      return 1;
    }
  }
  if (path.empty()) {
    std::cerr << kUsage;
    return 1;
  }
  std::ios::sync_with_stdio(false);
  size_t lineno = 0;
  try {
    edgec::Tokenizer tok = edgec::Tokenizer::from_file(path);
    if (vocab_size) {
      std::cout << tok.vocab_size() << "\n";
      return 0;
    }
    std::string line, out;
    while (std::getline(std::cin, line)) {
      ++lineno;
      edgec::json::Value v = edgec::json::parse(line);
      if (decode_ids) {
        std::vector<int64_t> ids;
        for (const edgec::json::Value& id : v.array()) ids.push_back(id.integer());
        std::cout << edgec::json::quote(tok.decode(ids, skip_special)) << '\n';
        continue;
      }
      if (!v.is_string()) throw std::runtime_error("expected a JSON string");
      edgec::Encoding e = tok.encode(v.str(), add_special);
      out.clear();
      append_ints(out, e.ids);
      out += " | ";
      append_ints(out, e.attention_mask);
      if (decode) out += " | " + edgec::json::quote(tok.decode(e.ids, skip_special));
      out += '\n';
      std::cout << out;
    }
    std::cout.flush();
    if (!std::cout) throw std::runtime_error("cannot write the output");
  } catch (const std::exception& e) {
    std::cout.flush();
    if (lineno) std::cerr << "edgec-tokenize: input line " << lineno << ": " << e.what() << "\n";
    else std::cerr << "edgec-tokenize: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
