#include "npz.h"
#include "utf8.h"

#include <cctype>
#include <cstring>
#include <fstream>
#include <iterator>

namespace edgec {
namespace {

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw std::runtime_error(path + ": " + what);
}

uint64_t le(const char* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

// the value after `key` in numpy's header dict, up to the next top-level comma or brace
std::string header_field(const std::string& header, const std::string& key) {
  auto at = header.find("'" + key + "'");
  if (at == std::string::npos) return "";
  at = header.find(':', at);
  if (at == std::string::npos) return "";
  int depth = 0;
  size_t end = at + 1;
  for (; end < header.size(); ++end) {
    char c = header[end];
    if (c == '(') ++depth;
    if (c == ')') { if (depth == 0) break; --depth; }
    if ((c == ',' || c == '}') && depth == 0) break;
  }
  if (end < header.size() && header[end] == ')') ++end;
  auto value = header.substr(at + 1, end - at - 1);
  auto first = value.find_first_not_of(" ");
  return first == std::string::npos ? "" : value.substr(first);
}

Array parse_npy(const std::string& path, const std::string& name, const char* p, size_t n) {
  const std::string where = name.empty() ? "the file" : "member " + name;
  if (n < 10 || std::memcmp(p, "\x93NUMPY", 6) != 0) fail(path, where + " is not a .npy array");
  int major = static_cast<unsigned char>(p[6]);
  size_t len_bytes = major == 1 ? 2 : 4, start = 8 + len_bytes;
  if (n < start) fail(path, where + " is cut short");
  size_t header_len = le(p + 8, static_cast<int>(len_bytes));
  if (n < start + header_len) fail(path, where + " is cut short");
  std::string header(p + start, header_len);
  if (header_field(header, "fortran_order").rfind("False", 0) != 0)
    fail(path, where + " is in Fortran order; edgec writes C order");
  std::string descr = header_field(header, "descr");
  if (descr.size() < 4 || descr.front() != '\'') fail(path, where + " has no dtype");
  descr = descr.substr(1, descr.find('\'', 1) - 1);
  if (descr[0] == '>') fail(path, where + " is big-endian");
  Array a;
  a.dtype = (descr[0] == '<' || descr[0] == '|' || descr[0] == '=') ? descr.substr(1) : descr;
  std::string shape = header_field(header, "shape");
  for (size_t i = 0; i < shape.size();) {
    if (std::isdigit(static_cast<unsigned char>(shape[i]))) {
      size_t used = 0;
      a.shape.push_back(std::stoll(shape.substr(i), &used));
      i += used;
    } else {
      ++i;
    }
  }
  size_t bytes = static_cast<size_t>(a.numel()) * a.item_size();
  size_t body = start + header_len;
  if (n - body != bytes) fail(path, where + " holds " + std::to_string(n - body) + " bytes, its header says " +
                                        std::to_string(bytes));
  a.data.assign(p + body, p + n);
  return a;
}

}  // namespace

int64_t Array::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

size_t Array::item_size() const {
  size_t digits = std::stoul(dtype.substr(1));
  return dtype[0] == 'U' ? 4 * digits : digits;
}

std::vector<double> Array::as_doubles() const {
  if (dtype[0] == 'i' || dtype[0] == 'u' || dtype == "b1") {
    auto ints = as_ints();
    return {ints.begin(), ints.end()};
  }
  if (dtype != "f4" && dtype != "f8") throw std::runtime_error("array of dtype " + dtype + " is not numeric");
  std::vector<double> out(static_cast<size_t>(numel()));
  const char* p = data.data();
  for (size_t i = 0; i < out.size(); ++i) {
    if (dtype == "f4") { float v; std::memcpy(&v, p + 4 * i, 4); out[i] = v; }
    else std::memcpy(&out[i], p + 8 * i, 8);
  }
  return out;
}

std::vector<int64_t> Array::as_ints() const {
  std::vector<int64_t> out(static_cast<size_t>(numel()));
  size_t w = item_size();
  bool is_signed = dtype[0] == 'i';
  if (dtype[0] != 'i' && dtype[0] != 'u' && dtype != "b1")
    throw std::runtime_error("array of dtype " + dtype + " is not integer");
  for (size_t i = 0; i < out.size(); ++i) {
    uint64_t v = le(data.data() + w * i, static_cast<int>(w));
    if (is_signed && w < 8 && (v >> (8 * w - 1)) & 1) v |= ~uint64_t{0} << (8 * w);
    out[i] = static_cast<int64_t>(v);
  }
  return out;
}

std::vector<std::string> Array::as_strings() const {
  if (dtype[0] != 'U') throw std::runtime_error("array of dtype " + dtype + " is not text");
  std::vector<std::string> out;
  size_t chars = item_size() / 4;
  for (int64_t i = 0; i < numel(); ++i) {
    std::string s;
    for (size_t c = 0; c < chars; ++c) {
      auto cp = static_cast<uint32_t>(le(data.data() + item_size() * i + 4 * c, 4));
      if (cp == 0) break;
      append_utf8(s, cp);
    }
    out.push_back(s);
  }
  return out;
}

Array Array::row(int64_t i) const {
  Array r;
  r.dtype = dtype;
  r.shape = shape;
  r.shape[0] = 1;
  size_t n = static_cast<size_t>(r.numel()) * item_size();
  r.data.assign(data.begin() + static_cast<std::ptrdiff_t>(n * i), data.begin() + static_cast<std::ptrdiff_t>(n * (i + 1)));
  return r;
}

static std::vector<char> read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path, "cannot be read");
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

Array read_npy(const std::string& path) {
  auto bytes = read_all(path);
  return parse_npy(path, "", bytes.data(), bytes.size());
}

std::map<std::string, Array> read_npz(const std::string& path) {
  auto z = read_all(path);
  // the end-of-central-directory record, searched from the end (a comment may follow it)
  size_t eocd = std::string::npos;
  if (z.size() >= 22) {
    size_t lo = z.size() > 22 + 65535 ? z.size() - 22 - 65535 : 0;
    for (size_t i = z.size() - 22 + 1; i-- > lo;)
      if (le(&z[i], 4) == 0x06054b50) { eocd = i; break; }
  }
  if (eocd == std::string::npos) fail(path, "is not a .npz (zip) file; re-export the bundle");
  uint64_t entries = le(&z[eocd + 10], 2), offset = le(&z[eocd + 16], 4);
  std::map<std::string, Array> out;
  for (uint64_t e = 0; e < entries; ++e) {
    if (offset + 46 > z.size() || le(&z[offset], 4) != 0x02014b50) fail(path, "has a broken zip directory");
    const char* c = &z[offset];
    uint64_t method = le(c + 10, 2), size = le(c + 20, 4), local = le(c + 42, 4);
    size_t name_len = le(c + 28, 2), extra_len = le(c + 30, 2), comment_len = le(c + 32, 2);
    std::string name(c + 46, name_len);
    // zip64: the 8-byte values that did not fit stand in an extra field, in this order
    for (size_t x = 46 + name_len; x + 4 <= 46 + name_len + extra_len;) {
      uint64_t id = le(c + x, 2), len = le(c + x + 2, 2);
      if (id == 1) {
        size_t at = x + 4;
        if (le(c + 24, 4) == 0xFFFFFFFF) at += 8;
        if (size == 0xFFFFFFFF) { size = le(c + at, 8); at += 8; }
        if (local == 0xFFFFFFFF) local = le(c + at, 8);
      }
      x += 4 + len;
    }
    if (method != 0)
      fail(path, "member " + name + " is compressed; edgec's native runner reads stored .npz (re-export the bundle)");
    if (local + 30 > z.size()) fail(path, "is cut short");
    uint64_t data = local + 30 + le(&z[local + 26], 2) + le(&z[local + 28], 2);
    if (data + size > z.size()) fail(path, "is cut short");
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".npy") == 0) name.resize(name.size() - 4);
    out.emplace(name, parse_npy(path, name, &z[data], size));
    offset += 46 + name_len + extra_len + comment_len;
  }
  return out;
}

}  // namespace edgec
