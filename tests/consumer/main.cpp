// The consumer checks' program: uses mixq through whichever way it was found, compiled with the
// compiler's default flags (no -march): the kernels' instruction-set paths are chosen at run
// time, so packing, the bit-serial GEMM and the convolution must build and agree with their
// references here too.
#include <cstdint>
#include <cstdio>
#include <mixq/mixq.hpp>
#include <span>
#include <vector>

namespace mk = mixq::kernels;

int main() {
  const std::vector<float> x{-1.0f, -0.25f, 0.0f, 0.5f, 1.0f};
  const auto p = mixq::choose_params<mixq::qint<4>>(x, mixq::quant_scheme::symmetric);
  const auto q = mixq::quantize<mixq::qint<4>>(x, p);
  const mixq::packed_tensor<mixq::qint<4>> packed({x.size()}, q);
  std::printf("mixq %d.%d.%d consumer: %zu values in %zu bytes\n", MIXQ_VERSION_MAJOR,
              MIXQ_VERSION_MINOR, MIXQ_VERSION_PATCH, x.size(), packed.bytes().size());
  bool ok = packed.bytes().size() == 3;

  // GEMM: quint<2> activations x qint<3> weights, every path this CPU has.
  const std::size_t M = 5, N = 11, K = 200;
  std::vector<std::uint8_t> ac(M * K);
  std::vector<std::int8_t> wc(N * K);
  for (std::size_t i = 0; i < ac.size(); ++i) ac[i] = static_cast<std::uint8_t>(i * 7 % 4);
  for (std::size_t i = 0; i < wc.size(); ++i) wc[i] = static_cast<std::int8_t>(i * 5 % 8) - 4;
  const auto A = mk::pack_bitplanes<mixq::quint<2>>(std::span<const std::uint8_t>(ac), M, K);
  const auto W = mk::pack_bitplanes<mixq::qint<3>>(std::span<const std::int8_t>(wc), N, K);
  const auto Wp = mk::packed_bitserial_weights::pack(W);
  std::vector<std::int32_t> ref(M * N), got(M * N);
  mk::bitserial_gemm_reference(A, W, std::span<std::int32_t>(ref));
  for (mk::isa path : mk::all_isas) {
    if (!mk::isa_supported(path)) continue;
    mk::bitserial_gemm(A, W, std::span<std::int32_t>(got), {1, path});
    ok = ok && got == ref;
    mk::bitserial_gemm(mk::bitplane_view(A), Wp, std::span<std::int32_t>(got), {1, path});
    ok = ok && got == ref;
  }

  // A 3x3 convolution with padding, 2 x 8 x 8 x 70 quint<2> input, 9 qint<3> filters.
  mixq::tensor<std::uint8_t> in({2, 8, 8, 70});
  mixq::tensor<std::int8_t> filt({9, 3, 3, 70});
  for (std::size_t i = 0; i < in.size(); ++i) in[i] = static_cast<std::uint8_t>(i * 13 % 4);
  for (std::size_t i = 0; i < filt.size(); ++i) filt[i] = static_cast<std::int8_t>(i * 3 % 8) - 4;
  mk::conv2d_params cp;
  cp.pad_h = cp.pad_w = 1;
  const auto cref = mk::reference_conv2d<mixq::quint<2>, mixq::qint<3>>(
      in, filt, mk::weight_layout::ohwi, cp);
  const auto cw = mk::packed_conv_weights<mixq::qint<3>>::pack(filt, mk::weight_layout::ohwi);
  const auto cgot = mk::bitserial_conv2d<mixq::quint<2>>(in, cw, cp);
  ok = ok && std::equal(cref.begin(), cref.end(), cgot.begin(), cgot.end());

  std::printf("kernels on %s: %s\n", mk::isa_name(mk::best_isa()), ok ? "agree" : "DISAGREE");
  return ok ? 0 : 1;
}
