// The consumer checks' program: uses mixq through whichever way it was found.
#include <cstdio>
#include <mixq/mixq.hpp>
#include <vector>

int main() {
  const std::vector<float> x{-1.0f, -0.25f, 0.0f, 0.5f, 1.0f};
  const auto p = mixq::choose_params<mixq::qint<4>>(x, mixq::quant_scheme::symmetric);
  const auto q = mixq::quantize<mixq::qint<4>>(x, p);
  const mixq::packed_tensor<mixq::qint<4>> packed({x.size()}, q);
  std::printf("mixq %d.%d.%d consumer: %zu values in %zu bytes\n", MIXQ_VERSION_MAJOR,
              MIXQ_VERSION_MINOR, MIXQ_VERSION_PATCH, x.size(), packed.bytes().size());
  return packed.bytes().size() == 3 ? 0 : 1;
}
