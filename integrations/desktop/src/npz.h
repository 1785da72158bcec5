// Golden vectors: edgec writes them as a stored (not deflated) .npz, so reading one needs no zlib:
// a zip's central directory, then each member's .npy header.
#pragma once

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace edgec {

struct Array {
  std::string dtype;  // numpy's descr without the byte order: "f4", "i8", "i4", "U12", ...
  std::vector<int64_t> shape;
  std::vector<char> data;  // little-endian, C order

  int64_t numel() const;
  size_t item_size() const;
  std::vector<double> as_doubles() const;   // numeric dtypes only
  std::vector<int64_t> as_ints() const;     // integer dtypes only
  std::vector<std::string> as_strings() const;  // "U<n>" (UTF-32 in numpy) as UTF-8
  Array row(int64_t i) const;  // the i-th slice along the first axis, keeping a leading 1
};

// name (without ".npy") -> array; throws std::runtime_error naming the file and what is wrong
std::map<std::string, Array> read_npz(const std::string& path);
Array read_npy(const std::string& path);

}  // namespace edgec
