// Quick start: quantize a float matrix to 3 bits, pack it, and see what it saves and costs.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "mixq/mixq.hpp"

int main() {
  using Q = mixq::qint<3>;  // signed 3-bit values: -4..3
  const std::size_t rows = 64, cols = 576;

  // A weight-like matrix: normal values.
  std::mt19937 rng(42);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  mixq::tensor<float> w({rows, cols});
  for (float& v : w) v = normal(rng);

  // One scale per output row (per-channel), symmetric, and the 3-bit codes.
  const auto params = mixq::choose_params_per_channel<Q>(w.span(), rows, mixq::quant_scheme::symmetric);
  const auto codes = mixq::quantize<Q>(w.span(), params);

  // Dense packing: 3 bits per value, plus a fixed header.
  const mixq::packed_tensor<Q> packed({rows, cols}, codes);
  // Bit planes: the operand layout of the popcount kernels.
  const auto planes = mixq::bitplane_matrix<Q>::pack(codes, rows, cols);

  // Round trip back to floats.
  const auto restored = mixq::dequantize<Q>(packed.unpack().span(), params);
  double err2 = 0, ref2 = 0, max_err = 0;
  for (std::size_t i = 0; i < w.size(); ++i) {
    const double e = restored[i] - w[i];
    err2 += e * e;
    ref2 += double(w[i]) * w[i];
    max_err = std::max(max_err, std::fabs(e));
  }

  const std::size_t fp32_bytes = w.size() * sizeof(float);
  std::printf("mixq quick start: %zu x %zu float matrix -> %s\n", rows, cols,
              mixq::bitwidth_of<Q>().name().c_str());
  std::printf("  fp32 storage        %8zu bytes\n", fp32_bytes);
  std::printf("  packed 3-bit        %8zu bytes (payload %zu + header %zu), %.1fx smaller\n",
              packed.serialized_bytes(), packed.bytes().size(), packed.header_bytes,
              double(fp32_bytes) / double(packed.serialized_bytes()));
  std::printf("  bit planes          %8zu bytes (%d planes x %zu words per row, 512-bit padded)\n",
              planes.rows() * planes.row_stride() * 8, Q::bits, planes.words_per_plane());
  std::printf("  round trip: max |error| %.5f (half a step is at most %.5f), relative RMS %.4f\n",
              max_err, 0.5 * *std::max_element(params.scale.begin(), params.scale.end()),
              std::sqrt(err2 / ref2));
  const bool exact = packed.unpack().span().size() == codes.size() &&
                     std::equal(codes.begin(), codes.end(), packed.unpack().begin());
  std::printf("  pack/unpack exact: %s\n", exact ? "yes" : "NO");
  return exact ? 0 : 1;
}
