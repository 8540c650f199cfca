// Errors raised by argument checks. The bindings translate them to Python exceptions:
// ValueError -> ValueError (bad shape, size, range), TypeError -> TypeError (bad dtype, device),
// DeviceError -> RuntimeError (CUDA unavailable or a launch failed).
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

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
inline void append(std::ostringstream&) {}
template <typename T, typename... Rest>
void append(std::ostringstream& os, const T& value, const Rest&... rest) {
  os << value;
  append(os, rest...);
}
}  // namespace detail

// Builds a message from any streamable pieces: str("knn_points: K must be >= 1, got ", K).
template <typename... Args>
std::string str(const Args&... args) {
  std::ostringstream os;
  detail::append(os, args...);
  return os.str();
}

}  // namespace pvf
