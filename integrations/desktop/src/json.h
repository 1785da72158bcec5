// A small, strict JSON reader (RFC 8259) for manifest.json and tokenizer.json.
// Numbers keep their double value and, when integral, an exact int64 (token ids, lengths).
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace edgec::json {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Value {
 public:
  enum class Kind { Null, Bool, Number, String, Array, Object };
  using Array = std::vector<Value>;
  using Object = std::vector<std::pair<std::string, Value>>;

  Value() = default;
  static Value from_bool(bool b);
  static Value from_number(double d);  // integral when it holds an exact int64
  static Value from_integer(int64_t i);
  static Value from_string(std::string s);
  static Value from_array(Array items);
  static Value from_object(Object members);

  Kind kind() const { return kind_; }
  bool is_null() const { return kind_ == Kind::Null; }
  bool is_bool() const { return kind_ == Kind::Bool; }
  bool is_number() const { return kind_ == Kind::Number; }
  bool is_string() const { return kind_ == Kind::String; }
  bool is_array() const { return kind_ == Kind::Array; }
  bool is_object() const { return kind_ == Kind::Object; }
  bool is_integer() const { return kind_ == Kind::Number && integral_; }

  bool boolean() const;
  double number() const;
  int64_t integer() const;
  const std::string& str() const;
  const Array& array() const;
  const Object& object() const;  // in file order, duplicates kept

  // the last member named `key` (as most JSON readers keep), nullptr if absent or not an object
  const Value* find(std::string_view key) const;
  const Value& at(std::string_view key) const;
  size_t size() const;
  const Value& operator[](size_t i) const;

 private:
  Kind kind_ = Kind::Null;
  bool bool_ = false;
  bool integral_ = false;
  double number_ = 0;
  int64_t integer_ = 0;
  std::string string_;
  Array array_;
  Object object_;
};

Value parse(std::string_view text);
Value parse_file(const std::string& path);

// `s` as a JSON string literal (quotes and escapes), for writing JSON lines
std::string quote(std::string_view s);

}  // namespace edgec::json
