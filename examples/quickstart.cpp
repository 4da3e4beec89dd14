// Quick start: quantize a float matrix to 3 bits, pack it, see what it saves and costs, and
// multiply it by 2-bit activations with the popcount GEMM.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <span>
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

  // The bit-serial GEMM: 8 rows of unsigned 2-bit activations times the 3-bit weights, exact
  // int32. A layer packs its weights once; activations are packed per call.
  namespace mk = mixq::kernels;
  using A = mixq::quint<2>;
  const std::size_t batch = 8;
  std::vector<std::uint8_t> act(batch * cols);
  for (auto& a : act) a = static_cast<std::uint8_t>(rng() % 4);
  const auto act_planes = mk::pack_bitplanes<A>(std::span<const std::uint8_t>(act), batch, cols);
  const auto weights = mk::packed_bitserial_weights::pack(planes);
  std::vector<std::int32_t> y(batch * rows);
  mk::bitserial_gemm(act_planes, weights, std::span<std::int32_t>(y));
  bool gemm_exact = true;  // against plain loops over the codes
  for (std::size_t m = 0; m < batch; ++m)
    for (std::size_t n = 0; n < rows; ++n) {
      std::int32_t s = 0;
      for (std::size_t k = 0; k < cols; ++k) s += act[m * cols + k] * codes[n * cols + k];
      gemm_exact = gemm_exact && s == y[m * rows + n];
    }
  std::printf("  bit-serial GEMM %zu x %zu x %zu (2-bit x 3-bit) on the %s path: %s\n", batch,
              rows, cols, mk::isa_name(mk::best_isa()), gemm_exact ? "exact" : "WRONG");
  return exact && gemm_exact ? 0 : 1;
}
