// Bit-serial convolution vs the float convolution (im2col + gemm_f32) on ResNet-18-style 3x3
// layers and a MobileNet depthwise + pointwise pair, at bit pairs 1x1 (binary x binary), 2x2,
// 4x4 and 8x8 (unsigned activations x signed weights), batch 1, one thread by default.
// Counters: bit-MACs/s (MACs * w_bits * a_bits / s), effective MAC/s, and speedup_vs_f32, the
// float convolution's time on the same layer measured in the same process divided by this
// benchmark's time. Three variants: total (packing included), packing alone, product alone.
// When oneDNN is found at build time, its convolution (f32 and u8 x s8 -> s32, one OpenMP
// thread, NHWC activations, weights in the layout oneDNN picks, reordered once outside the
// timing) runs on the same layers, and the bit-serial totals report speedup_vs_dnnl_f32 and
// speedup_vs_dnnl_int8 from those times.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <ctime>
#include <map>
#include <random>
#include <string>
#include <vector>

#if defined(MIXQ_BENCH_DNNL)
#include <oneapi/dnnl/dnnl.hpp>
extern "C" void omp_set_num_threads(int);
#endif

#include "mixq/kernels/bitserial_conv2d.hpp"
#include "mixq/kernels/conv2d_f32.hpp"
#include "mixq/kernels/thread_pool.hpp"

namespace mk = mixq::kernels;

namespace {

struct layer {
  const char* name;
  std::size_t h, w, cin, cout, k, stride, pad, groups;
};

const layer layers[] = {
    {"resnet_3x3_64ch_56x56", 56, 56, 64, 64, 3, 1, 1, 1},
    {"resnet_3x3_128ch_28x28", 28, 28, 128, 128, 3, 1, 1, 1},
    {"resnet_3x3_256ch_14x14", 14, 14, 256, 256, 3, 1, 1, 1},
    {"resnet_3x3_512ch_7x7", 7, 7, 512, 512, 3, 1, 1, 1},
    {"mobilenet_dw3x3_128ch_56x56", 56, 56, 128, 128, 3, 1, 1, 128},
    {"mobilenet_pw1x1_128ch_56x56", 56, 56, 128, 128, 1, 1, 0, 1},
};

mk::conv2d_params params_of(const layer& l) {
  mk::conv2d_params p;
  p.stride_h = p.stride_w = l.stride;
  p.pad_h = p.pad_w = l.pad;
  p.groups = l.groups;
  p.gemm.num_threads = 1;
  return p;
}

template <class Q>
mixq::tensor<typename Q::storage_type> random_tensor(std::vector<std::size_t> shape,
                                                     unsigned seed) {
  mixq::tensor<typename Q::storage_type> t(std::move(shape));
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> code(0, Q::levels - 1);
  for (auto& x : t) x = static_cast<typename Q::storage_type>(Q::decode(std::uint8_t(code(rng))));
  return t;
}

double macs_of(const layer& l) {
  const auto p = params_of(l);
  const std::size_t shape[] = {1, l.h, l.w, l.cin};
  return double(
      mk::make_conv2d_geometry(shape, l.cout, l.cin / l.groups, l.k, l.k, l.groups, p, "bench")
          .macs());
}

/// Process CPU seconds, the clock Google Benchmark's rates use by default.
double cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

/// CPU seconds per call of the float convolution on layer l (best of a few), measured once.
double f32_seconds(const layer& l) {
  static std::map<std::string, double> cache;
  if (auto it = cache.find(l.name); it != cache.end()) return it->second;
  mixq::tensor<float> x({1, l.h, l.w, l.cin}), w({l.cout, l.k, l.k, l.cin / l.groups});
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> d(-1, 1);
  for (auto& v : x) v = d(rng);
  for (auto& v : w) v = d(rng);
  const auto p = params_of(l);
  std::vector<float> out(std::size_t(macs_of(l)) / (l.k * l.k * (l.cin / l.groups)));
  double best = 1e30;
  for (int rep = 0; rep < 5; ++rep) {
    const double t0 = cpu_seconds();
    mk::conv2d_f32(x, w, mk::weight_layout::ohwi, out, p);
    benchmark::DoNotOptimize(out.data());
    best = std::min(best, cpu_seconds() - t0);
  }
  return cache[l.name] = best;
}

#if defined(MIXQ_BENCH_DNNL)
/// oneDNN's forward-inference convolution on layer l (f32, or u8 activations x s8 weights ->
/// s32), one thread; activations and output NHWC, weights in the primitive's own layout.
struct dnnl_conv {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  dnnl::stream strm{eng};
  dnnl::convolution_forward conv;
  dnnl::memory src, wei, dst;
  std::string impl;

  dnnl_conv(const layer& l, bool int8) {
    using namespace dnnl;
    using dt = memory::data_type;
    using tag = memory::format_tag;
    omp_set_num_threads(1);
    const memory::dim S = l.stride, P = l.pad, K = l.k, G = l.groups;
    const memory::dim OH = (memory::dim(l.h) + 2 * P - K) / S + 1;
    const memory::dim OW = (memory::dim(l.w) + 2 * P - K) / S + 1;
    const memory::dims src_dims{1, memory::dim(l.cin), memory::dim(l.h), memory::dim(l.w)};
    const memory::dims dst_dims{1, memory::dim(l.cout), OH, OW};
    const memory::dims wei_dims =
        G > 1 ? memory::dims{G, memory::dim(l.cout) / G, memory::dim(l.cin) / G, K, K}
              : memory::dims{memory::dim(l.cout), memory::dim(l.cin), K, K};
    const memory::desc src_md(src_dims, int8 ? dt::u8 : dt::f32, tag::nhwc);
    const memory::desc dst_md(dst_dims, int8 ? dt::s32 : dt::f32, tag::nhwc);
    const memory::desc wei_md(wei_dims, int8 ? dt::s8 : dt::f32, tag::any);
    const convolution_forward::desc d(prop_kind::forward_inference, algorithm::convolution_direct,
                                      src_md, wei_md, dst_md, {S, S}, {P, P}, {P, P});
    const convolution_forward::primitive_desc pd(d, eng);
    impl = pd.impl_info_str();
    conv = convolution_forward(pd);
    src = memory(pd.src_desc(), eng);
    wei = memory(pd.weights_desc(), eng);
    dst = memory(pd.dst_desc(), eng);
    fill(src, int8);
    fill(wei, int8);
  }
  static void fill(const dnnl::memory& m, bool int8) {
    const std::size_t bytes = m.get_desc().get_size();
    auto* p = static_cast<unsigned char*>(m.get_data_handle());
    if (int8) {
      for (std::size_t i = 0; i < bytes; ++i) p[i] = static_cast<unsigned char>(i % 7);
    } else {
      auto* f = reinterpret_cast<float*>(p);
      for (std::size_t i = 0; i < bytes / sizeof(float); ++i) f[i] = 0.25f * float(i % 7) - 0.5f;
    }
  }
  void run() {
    conv.execute(strm, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst}});
    strm.wait();
  }
};

/// CPU seconds per call of oneDNN's convolution on layer l (best of a few), measured once.
double dnnl_seconds(const layer& l, bool int8) {
  static std::map<std::string, double> cache;
  const std::string key = std::string(l.name) + (int8 ? "/int8" : "/f32");
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  dnnl_conv c(l, int8);
  c.run();
  double best = 1e30;
  for (int rep = 0; rep < 5; ++rep) {
    const double t0 = cpu_seconds();
    c.run();
    best = std::min(best, cpu_seconds() - t0);
  }
  return cache[key] = best;
}

void BM_dnnl_conv(benchmark::State& state, const layer& l, bool int8) {
  dnnl_conv c(l, int8);
  state.SetLabel(c.impl);
  for (auto _ : state) c.run();
  state.counters["MAC/s"] =
      benchmark::Counter(macs_of(l) * double(state.iterations()), benchmark::Counter::kIsRate);
}
#endif

void set_counters(benchmark::State& state, const layer& l, int bit_product, bool compare) {
  const double macs = macs_of(l), it = double(state.iterations());
  state.counters["bit-MACs/s"] =
      benchmark::Counter(macs * bit_product * it, benchmark::Counter::kIsRate);
  state.counters["MAC/s"] = benchmark::Counter(macs * it, benchmark::Counter::kIsRate);
  if (compare) {
    // Rate counter of (f32 seconds per call) * calls = f32 time / this time.
    state.counters["speedup_vs_f32"] =
        benchmark::Counter(f32_seconds(l) * it, benchmark::Counter::kIsRate);
#if defined(MIXQ_BENCH_DNNL)
    state.counters["speedup_vs_dnnl_f32"] =
        benchmark::Counter(dnnl_seconds(l, false) * it, benchmark::Counter::kIsRate);
    state.counters["speedup_vs_dnnl_int8"] =
        benchmark::Counter(dnnl_seconds(l, true) * it, benchmark::Counter::kIsRate);
#endif
  }
}

enum class part { total, packing, product };

template <class AT, class WT>
void BM_bitserial_conv(benchmark::State& state, const layer& l, part what) {
  const auto p = params_of(l);
  const auto x = random_tensor<AT>({1, l.h, l.w, l.cin}, 2);
  const auto w =
      mk::packed_conv_weights<WT>::pack(random_tensor<WT>({l.cout, l.k, l.k, l.cin / l.groups}, 3),
                                        mk::weight_layout::ohwi, l.groups);
  const auto g = mk::conv2d_geometry_for(x.shape(), w, p);
  std::vector<std::int32_t> out(g.output_size());
  state.SetLabel(l.groups == l.cin && l.groups > 1 ? "depthwise_direct"
                 : mk::choose_kernel(mixq::bitwidth_of<AT>(), mixq::bitwidth_of<WT>()) ==
                         mk::gemm_kernel::int8
                     ? "int8_gemm"
                     : mk::bitserial_gemm_kernel_name(p.gemm));
  if (what == part::total) {
    for (auto _ : state) {
      mk::bitserial_conv2d<AT>(x, w, std::span<std::int32_t>(out), p);
      benchmark::DoNotOptimize(out.data());
    }
    set_counters(state, l, AT::bits * WT::bits, true);
    return;
  }
  mk::conv_activation_planes<AT> planes;
  if (what == part::packing) {
    for (auto _ : state) {
      mk::pack_conv_activations<AT>(x.span(), g, p.gemm, planes);
      benchmark::DoNotOptimize(planes.bits.data());
    }
    return;
  }
  mk::pack_conv_activations<AT>(x.span(), g, p.gemm, planes);
  for (auto _ : state) {
    mk::bitserial_conv2d_packed(planes, w, out, p);
    benchmark::DoNotOptimize(out.data());
  }
  set_counters(state, l, AT::bits * WT::bits, true);
}

void BM_conv2d_f32(benchmark::State& state, const layer& l) {
  mixq::tensor<float> x({1, l.h, l.w, l.cin}, 0.5f), w({l.cout, l.k, l.k, l.cin / l.groups}, 0.25f);
  const auto p = params_of(l);
  std::vector<float> out(std::size_t(macs_of(l)) / (l.k * l.k * (l.cin / l.groups)));
  for (auto _ : state) {
    mk::conv2d_f32(x, w, mk::weight_layout::ohwi, out, p);
    benchmark::DoNotOptimize(out.data());
  }
  set_counters(state, l, 1, false);
}

template <class AT, class WT>
void register_pair(const char* bits) {
  for (const layer& l : layers) {
    const std::string base = std::string("bitserial_conv/") + bits + "/" + l.name;
    benchmark::RegisterBenchmark((base + "/total").c_str(), BM_bitserial_conv<AT, WT>, l,
                                 part::total)
        ->Unit(benchmark::kMicrosecond);
    // Depthwise runs a direct path without packing.
    if (l.groups == 1) {
      benchmark::RegisterBenchmark((base + "/packing").c_str(), BM_bitserial_conv<AT, WT>, l,
                                   part::packing)
          ->Unit(benchmark::kMicrosecond);
      benchmark::RegisterBenchmark((base + "/product").c_str(), BM_bitserial_conv<AT, WT>, l,
                                   part::product)
          ->Unit(benchmark::kMicrosecond);
    }
  }
}

const bool registered = [] {
  mk::set_num_threads(1);
  for (const layer& l : layers)
    benchmark::RegisterBenchmark((std::string("conv2d_f32/") + l.name).c_str(), BM_conv2d_f32, l)
        ->Unit(benchmark::kMicrosecond);
#if defined(MIXQ_BENCH_DNNL)
  for (const layer& l : layers)
    for (bool int8 : {false, true})
      benchmark::RegisterBenchmark(
          (std::string(int8 ? "dnnl_conv_u8s8s32/" : "dnnl_conv_f32/") + l.name).c_str(),
          BM_dnnl_conv, l, int8)
          ->Unit(benchmark::kMicrosecond);
#endif
  register_pair<mixq::qbinary, mixq::qbinary>("1x1");
  register_pair<mixq::quint<2>, mixq::qint<2>>("2x2");
  register_pair<mixq::quint<4>, mixq::qint<4>>("4x4");
  register_pair<mixq::quint<8>, mixq::qint<8>>("8x8");
  return true;
}();

}  // namespace
