#include "regex.h"

#include <oniguruma.h>

#include <mutex>
#include <stdexcept>

namespace edgec {

struct Regex::Compiled {
  regex_t* regex = nullptr;
  ~Compiled() { onig_free(regex); }
};

namespace {

const UChar* bytes(std::string_view s) { return reinterpret_cast<const UChar*>(s.data()); }

struct Region {  // one per search: a compiled pattern is shared, a region is not
  OnigRegion* region = onig_region_new();
  ~Region() { onig_region_free(region, 1); }
};

}  // namespace

Regex::Regex(std::string_view pattern) {
  static std::once_flag init;
  std::call_once(init, [] {
    OnigEncoding encodings[] = {ONIG_ENCODING_UTF8};
    onig_initialize(encodings, 1);
  });
  auto compiled = std::make_shared<Compiled>();
  OnigErrorInfo info;
  // the defaults of the Rust crate: no options, Oniguruma's default syntax, UTF-8
  int rc = onig_new(&compiled->regex, bytes(pattern), bytes(pattern) + pattern.size(), ONIG_OPTION_NONE,
                    ONIG_ENCODING_UTF8, ONIG_SYNTAX_DEFAULT, &info);
  if (rc != ONIG_NORMAL) {
    UChar message[ONIG_MAX_ERROR_MESSAGE_LEN];
    onig_error_code_to_str(message, rc, &info);
    throw std::runtime_error(reinterpret_cast<const char*>(message));
  }
  compiled_ = std::move(compiled);
}

std::vector<std::pair<size_t, size_t>> Regex::find_all(std::string_view text) const {
  std::vector<std::pair<size_t, size_t>> out;
  Region r;
  const UChar* begin = bytes(text);
  const UChar* end = begin + text.size();
  size_t at = 0;
  bool after_match = false;  // `at` is where the previous match ended
  while (at <= text.size()) {
    onig_region_clear(r.region);
    int pos = onig_search(compiled_->regex, begin, end, begin + at, end, r.region, ONIG_OPTION_NONE);
    if (pos == ONIG_MISMATCH) break;
    if (pos < 0)  // past the engine's backtracking limit: an error there too
      throw std::runtime_error("regular expression search failed (Oniguruma error " + std::to_string(pos) + ")");
    size_t from = static_cast<size_t>(r.region->beg[0]), to = static_cast<size_t>(r.region->end[0]);
    if (from == to && after_match && to == at) {  // step over one character and search again
      size_t step = 1;
      while (at + step < text.size() && (static_cast<unsigned char>(text[at + step]) & 0xC0) == 0x80) ++step;
      at += step;
      after_match = false;
      continue;
    }
    out.emplace_back(from, to);
    at = to;
    after_match = true;
  }
  return out;
}

}  // namespace edgec
