// Errors raised by argument checks. The bindings translate them to Python exceptions:
// ValueError -> ValueError (bad shape, size, range), TypeError -> TypeError (bad dtype, device),
// DeviceError -> RuntimeError (CUDA unavailable or a launch failed).
#pragma once
#include <cstdio>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace pvf {

struct ValueError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct TypeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct DeviceError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace detail {
// Numbers are formatted with snprintf / to_string, not with std::ostringstream: a stream's number formatting
// goes through locale facets, and in a module built with hidden visibility the compiler may instantiate the
// stream templates privately, with facet ids of its own that the C++ runtime never registered. GCC 13 on the
// GPU test machine did, and every error message with a number then crashed the process (the first GPU runs).
template <typename T>
void append_one(std::string& s, const T& v) {
  if constexpr (std::is_same_v<T, bool>) {
    s += v ? '1' : '0';
  } else if constexpr (std::is_same_v<T, char>) {
    s += v;
  } else if constexpr (std::is_integral_v<T>) {
    s += std::to_string(v);
  } else if constexpr (std::is_enum_v<T>) {
    s += std::to_string(static_cast<std::underlying_type_t<T>>(v));
  } else if constexpr (std::is_floating_point_v<T>) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%g", static_cast<double>(v));
    s += buf;
  } else {
    s += v;  // std::string, const char*, string literals
  }
}
}  // namespace detail

// Builds a message from strings and numbers: str("knn_points: K must be >= 1, got ", K).
template <typename... Args>
std::string str(const Args&... args) {
  std::string s;
  (detail::append_one(s, args), ...);
  return s;
}

}  // namespace pvf
