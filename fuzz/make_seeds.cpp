// Writes a few small valid integer-model files (prefixed with the fuzz target's mode byte)
// into the directory given as argv[1]: the seed corpus of fuzz_model_file. Format version 3
// (PACT and LSQ step grids), and one version 2 file so the old parser is fuzzed too.
#include <cstdio>
#include <fstream>
#include <random>
#include <string>

#include "mixq/deploy/model_file.hpp"
#include "mixq/quant/code_tensor.hpp"

using namespace mixq::deploy;

static layer quantized(std::mt19937& rng, std::uint32_t in, std::uint32_t out, std::uint32_t k,
                       std::uint32_t groups, mixq::bitwidth wt, int abits, bool linear,
                       bool step_grid = false) {
  layer l = layer::of_kind(op_kind::quantized, "q");
  l.is_linear = linear, l.window = k, l.stride = 1, l.padding = k / 2;
  l.in_channels = in, l.out_channels = out, l.groups = groups, l.weight_type = wt;
  const int lo = mixq::quant::detail::code_min(wt), hi = mixq::quant::detail::code_max(wt);
  std::uniform_int_distribution<int> code(lo, hi);
  for (std::size_t i = 0; i < std::size_t(out) * k * k * (in / groups); ++i) {
    int c = code(rng);
    if (wt.is_binary() && c == 0) c = 1;
    l.weight_codes.push_back(c);
  }
  l.weight_scale = {0.1f}, l.weight_zero_point = {wt.is_signed ? 0.0f : 0.5f * float(hi)};
  l.mul.assign(out, 1.0f), l.add.assign(out, 0.0f);
  l.input.bits = abits;
  l.input.grid = step_grid ? mixq::quant::activation_grid::step(0.25f)
                           : mixq::quant::activation_grid::pact(4.0f);
  return l;
}

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_fuzz_seeds <dir>\n");
    return 2;
  }
  std::mt19937 rng(1);
  int n = 0;
  for (mixq::bitwidth wt :
       {mixq::bitwidth{1, true}, mixq::bitwidth{2, false}, mixq::bitwidth{4, true}}) {
    std::vector<layer> ls{
        quantized(rng, 1, 4, 3, 1, wt, 2, false),  layer::of_kind(op_kind::relu),
        layer::pool(op_kind::max_pool, 2, 2),      quantized(rng, 4, 4, 3, 4, wt, 3, false),
        layer::affine({1, 2, 3, 4}, {0, 0, 0, 0}), layer::of_kind(op_kind::global_avg_pool),
        quantized(rng, 4, 3, 1, 1, wt, 4, true)};
    // A residual block with a downsampling shortcut (format version 2 ops).
    std::vector<layer> res{quantized(rng, 1, 4, 3, 1, wt, 2, false),
                           layer::of_kind(op_kind::relu),
                           layer::slot_op(op_kind::save, 0),
                           quantized(rng, 4, 4, 3, 1, wt, 2, false, true),
                           layer::of_kind(op_kind::relu),
                           quantized(rng, 4, 4, 3, 1, wt, 2, false),
                           layer::slot_op(op_kind::save, 1),
                           layer::slot_op(op_kind::load, 0),
                           quantized(rng, 4, 4, 1, 1, wt, 2, false),
                           layer::slot_op(op_kind::residual_add, 1),
                           layer::of_kind(op_kind::relu),
                           layer::of_kind(op_kind::global_avg_pool),
                           quantized(rng, 4, 3, 1, 1, wt, 4, true)};
    for (const auto& net : {ls, res}) {
      const auto bytes = serialize(integer_model(net));
      for (char mode : {'\0', '\1'}) {
        std::ofstream out(std::string(argv[1]) + "/seed" + std::to_string(n++), std::ios::binary);
        out.put(mode);
        out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
      }
    }
  }
  // One version 2 file (PACT grids only).
  std::vector<layer> v2{quantized(rng, 1, 4, 3, 1, {2, false}, 2, false),
                        layer::of_kind(op_kind::relu), layer::of_kind(op_kind::global_avg_pool),
                        quantized(rng, 4, 3, 1, 1, {2, false}, 4, true)};
  const auto bytes = detail::serialize_v2(integer_model(v2));
  for (char mode : {'\0', '\1'}) {
    std::ofstream out(std::string(argv[1]) + "/seed" + std::to_string(n++), std::ios::binary);
    out.put(mode);
    out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  }
  return 0;
}
