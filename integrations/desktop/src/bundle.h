// An edgec bundle as an app sees it: manifest.json, the .pte it names, the tokenizer and golden vectors.
// Every problem is a BundleError with one line that names the file and the fix.
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

#include "json.h"

namespace edgec {

struct BundleError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct TensorSpec {
  std::string name, dtype;
  std::vector<int64_t> shape;  // -1 for a dimension the manifest names (an LM's token count)
};

struct Bundle {
  std::string dir;
  json::Value manifest;
  std::string task;          // "feature-extraction", "image-classification", "text-generation"
  std::string program;       // path of the .pte
  std::string program_name;  // as the manifest names it
  std::string runtime;       // the runtime its golden outputs are keyed by ("executorch")
  std::vector<TensorSpec> inputs, outputs;
  std::string tokenizer;     // path of tokenizer.json, empty if the task has none
  std::string golden;        // path of the .pte's golden vectors, empty if it has none

  // `artifact`: the manifest path of the .pte to run; empty picks the bundle's only .pte
  static Bundle open(const std::string& dir, const std::string& artifact = "");
  std::string label(int64_t index) const;  // an image class's name, "class N" without labels
};

}  // namespace edgec
