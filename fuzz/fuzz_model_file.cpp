// libFuzzer target for deploy::deserialize: any byte string either loads or raises a
// mixq::error, never crashes, hangs or allocates beyond the file's size. Inputs whose first
// byte is odd get their checksum recomputed, so mutations reach the field parser too.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "mixq/deploy/model_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  std::vector<std::uint8_t> bytes(data + 1, data + size);
  if ((data[0] & 1) && bytes.size() >= 8) {
    const auto sum = mixq::deploy::detail::fnv1a(std::span(bytes).first(bytes.size() - 8));
    for (int i = 0; i < 8; ++i)
      bytes[bytes.size() - 8 + std::size_t(i)] = std::uint8_t(sum >> (8 * i));
  }
  try {
    auto model = mixq::deploy::deserialize(bytes, "fuzz input");
    (void)model.payload_bytes();
  } catch (const mixq::error&) {
  }
  return 0;
}
