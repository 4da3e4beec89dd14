// Mixed-precision search on Fashion-MNIST: trains the demo CNN (nn::demo_cnn) in FP32 (or loads the
// checkpoint it saved), then runs one search policy under a budget through search::run
// (warm-up, search, derive, finetune), prints a per-layer table, and writes the JSON result
// and an SVG bar chart of the per-layer bits. Then deploys: compiles the finetuned model
// (deploy::compile) to an integer model, runs the test set through it, checks its predictions
// against the fake-quant model (exit status 3 on any disagreement), saves it to
// <out>/<stem>.mixq, reloads it (bit-identical outputs), times integer against FP32 inference
// on 1 and all threads, and prints accuracy, model bytes and images/s of FP32, fake-quant and
// integer in one table (also <out>/<stem>-deploy.json). --no-deploy skips this step.
//
//   search_fashion_mnist [--policy uniform] [--budget w3a3] [--budget-kind bitops|size]
//                        [--epochs 1] [--warmup-epochs 0] [--finetune-epochs 1]
//                        [--fp32-epochs 2] [--checkpoint PATH] [--seed 1] [--out DIR]
//                        [--bits 1,2,3,4,5,6,7,8] [--batch 64] [--lr 0.01] [--finetune-lr LR]
//                        [--arch-lr 0.003 (fracbits, ebs: 0.03)]
//                        [--finetune-quantizer lsq|pact]
//                        [--limit-train N] [--limit-test N] [--data-dir DIR] [--no-deploy]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "mixq/data.hpp"
#include "mixq/deploy.hpp"
#include "mixq/kernels/thread_pool.hpp"
#include "mixq/nn.hpp"
#include "mixq/search/bmpq_policy.hpp"
#include "mixq/search/driver.hpp"
#include "mixq/search/hawq_policy.hpp"
#include "mixq/search/ompq_policy.hpp"
#include "mixq/search/trace.hpp"
#include "mixq/search/uniform_policy.hpp"

namespace nn = mixq::nn;
namespace data = mixq::data;
namespace search = mixq::search;
using mixq::quant::bit_config;

// The differentiable policies, when this build has them (branch diffpol).
#if __has_include("mixq/search/dnas_policy.hpp") &&              \
                  __has_include("mixq/search/ebs_policy.hpp") && \
                                __has_include("mixq/search/fracbits_policy.hpp")
#include "mixq/search/dnas_policy.hpp"
#include "mixq/search/ebs_policy.hpp"
#include "mixq/search/fracbits_policy.hpp"
#define MIXQ_EXAMPLE_DIFFERENTIABLE 1
#endif

namespace {

/// Adds dnas, ebs and fracbits to `m` (a map from names to runners) when they exist. Their
/// candidate bits are --bits; everything else is each policy's default.
template <class Map>
void add_differentiable_policies([[maybe_unused]] Map& m) {
#ifdef MIXQ_EXAMPLE_DIFFERENTIABLE
  m["dnas"] = [](nn::module& model, const search::search_data& d, const search::budget& b,
                 search::search_options& o, const auto& s) {
    search::dnas_options opt;
    opt.w_bits = opt.a_bits = s.bits;
    opt.cost_kind = b.kind;
    opt.seed = s.seed;
    opt.activations.two_sided_layers = s.signed_layers;
    search::dnas_policy p(opt);
    return search::run(model, d, p, b, o);
  };
  m["ebs"] = [](nn::module& model, const search::search_data& d, const search::budget& b,
                search::search_options& o, const auto& s) {
    search::ebs_options opt;
    opt.w_bits = opt.a_bits = s.bits;
    opt.cost_kind = b.kind;
    opt.activations.two_sided_layers = s.signed_layers;
    search::ebs_policy p(opt);
    return search::run(model, d, p, b, o);
  };
  m["fracbits"] = [](nn::module& model, const search::search_data& d, const search::budget& b,
                     search::search_options& o, const auto& s) {
    search::fracbits_options opt;
    opt.min_bits = s.bits.front();
    opt.max_bits = s.bits.back();
    opt.cost_kind = b.kind;
    opt.activations.two_sided_layers = s.signed_layers;
    search::fracbits_policy p(opt);
    return search::run(model, d, p, b, o);
  };
#endif
}

struct settings {
  std::string policy = "uniform", budget = "w3a3", budget_kind = "bitops";
  /// The finetune's quantizers: lsq (LSQ steps for weights and activations; the driver's
  /// default) or pact (per-channel symmetric weights, PACT activations).
  std::string finetune_quantizer = "lsq";
  std::size_t epochs = 1, warmup_epochs = 0, finetune_epochs = 1, fp32_epochs = 2;
  std::size_t batch = 64, limit_train = 0, limit_test = 0;
  float lr = 0.01f;        // FP32 training, warm-up and search weights
  float finetune_lr = -1;  // < 0: lr
  float arch_lr = -1;      // < 0: the policy's default (default_arch_lr)
  std::uint64_t seed = 1;
  std::string checkpoint, out = "search-out", data_dir = data::fashion_mnist_default_dir;
  std::vector<int> bits{1, 2, 3, 4, 5, 6, 7, 8};
  /// Quantized layers whose input can be negative (none with the [0, 1] pixels used here),
  /// measured on the trained model: two-sided PACT there during the search.
  std::vector<std::size_t> signed_layers;
  bool deploy = true;  // --no-deploy: stop after the search
};

/// Architecture learning rate per policy: FracBits moves real-valued bit-widths, which need
/// about 10x the step of the DNAS logits to travel a bit in one or two epochs; EBS's
/// strengths likewise (at 0.003 its expected cost was still 230% of a W2A2 budget after one
/// search epoch, at 0.03 it reached 100%; docs/search.md).
float default_arch_lr(const std::string& policy) {
  return policy == "fracbits" || policy == "ebs" ? 0.03f : 3e-3f;
}

/// A policy the example can run: builds it from the settings and runs the driver.
using policy_runner = std::function<search::search_result(
    nn::module&, const search::search_data&, const search::budget&, search::search_options&,
    const settings&)>;

[[noreturn]] void usage(const std::string& msg);
std::pair<int, int> parse_wa(const std::string& s);

/// The policies available in this build. Only those on main/merged branches are listed.
std::map<std::string, policy_runner> available_policies() {
  std::map<std::string, policy_runner> m;
  add_differentiable_policies(m);
  m["uniform"] = [](nn::module& model, const search::search_data& d, const search::budget& b,
                    search::search_options& o, const settings& s) {
    std::vector<search::bit_pair> cand;
    for (int x : s.bits) cand.push_back({x, x});
    search::uniform_policy p(cand);
    return search::run(model, d, p, b, o);
  };
  // Allocation policies search weight bits at the budget's activation bits (--budget wXaY
  // gives Y) over the --bits candidates (OMPQ: the consecutive range min..max of them, for its
  // floor/ceil rounding; BMPQ: all of them; HAWQ: those >= 2, a sign and a magnitude bit).
  auto space_of = [](const settings& s, bool consecutive, bool allow_one = false) {
    search::weight_search_space sp;
    sp.a_bits = parse_wa(s.budget).second;
    sp.candidates.clear();
    if (consecutive) {
      for (int x = s.bits.front(); x <= s.bits.back(); ++x) sp.candidates.push_back(x);
    } else {
      for (int x : s.bits)
        if (x >= 2 || allow_one) sp.candidates.push_back(x);
      if (sp.candidates.empty()) usage("--bits: HAWQ needs a candidate >= 2");
    }
    return sp;
  };
  m["ompq"] = [space_of](nn::module& model, const search::search_data& d, const search::budget& b,
                         search::search_options& o, const settings& s) {
    search::ompq_options oo;
    oo.space = space_of(s, true);
    oo.beta = 1.0;
    search::ompq_policy p(oo);
    auto r = search::run(model, d, p, b, o);
    std::cout << "ompq search time: features " << p.report().seconds_features << " s, CKA "
              << p.report().seconds_cka << " s, LP + rounding " << p.report().seconds_solve
              << " s (total " << p.report().seconds_total() << " s)\n";
    return r;
  };
  m["bmpq"] = [space_of](nn::module& model, const search::search_data& d, const search::budget& b,
                         search::search_options& o, const settings& s) {
    search::bmpq_options bo;
    bo.space = space_of(s, false, true);
    bo.early_epochs = std::max<std::size_t>(1, (s.finetune_epochs + 1) / 2);
    bo.interval_epochs = 1;
    // BMPQ is itself the finetune's precision policy: kept alive (and attached) in the result
    // for the deployment step.
    auto p = std::make_shared<search::bmpq_policy>(bo);
    auto r = search::run(model, d, *p, b, o);
    r.finetuned_policy = p;
    return r;
  };
  m["hawq"] = [space_of](nn::module& model, const search::search_data& d, const search::budget& b,
                         search::search_options& o, const settings& s) {
    search::hawq_options ho;
    ho.space = space_of(s, false);
    ho.batches = 1;  // 12 probes x 2 gradient evaluations on one batch: a few seconds
    ho.hutchinson.probes = 12;
    search::hawq_policy p(ho);
    return search::run(model, d, p, b, o);
  };
  return m;
}

[[noreturn]] void usage(const std::string& msg) {
  std::cerr << "search_fashion_mnist: " << msg
            << "\nusage: search_fashion_mnist [--policy NAME] [--budget wXaY] "
               "[--budget-kind bitops|size] [--epochs N] [--warmup-epochs N] "
               "[--finetune-epochs N] [--fp32-epochs N] [--checkpoint PATH] [--seed N] "
               "[--out DIR] [--finetune-quantizer lsq|pact] [--bits LIST] [--batch N] [--lr X] "
               "[--finetune-lr X] [--arch-lr X] "
               "[--limit-train N] [--limit-test N] [--data-dir DIR] [--no-deploy]\n";
  std::exit(2);
}

/// "w3a3" -> (3, 3); bits must be 1..8.
std::pair<int, int> parse_wa(const std::string& s) {
  int w = 0, a = 0;
  char tail = 0;
  if (std::sscanf(s.c_str(), "w%da%d%c", &w, &a, &tail) != 2)
    usage("budget '" + s + "' is not of the form wXaY (e.g. w2a2, w3a3, w4a8)");
  if (w < 1 || w > 8 || a < 1 || a > 8)
    usage("budget '" + s + "' has bits outside 1..8 (weights " + std::to_string(w) +
          ", activations " + std::to_string(a) + ")");
  return {w, a};
}

std::vector<int> parse_bits(const std::string& s) {
  std::vector<int> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    std::size_t used = 0;
    int b = 0;
    try {
      b = std::stoi(item, &used);
    } catch (const std::logic_error&) {
      usage("--bits '" + s + "': '" + item + "' is not a number");
    }
    if (used != item.size()) usage("--bits '" + s + "': '" + item + "' is not a number");
    if (b < 1 || b > 8) usage("--bits '" + s + "': " + std::to_string(b) + " is outside 1..8");
    out.push_back(b);
  }
  if (out.empty()) usage("--bits is empty; expected a list such as 2,3,4,8");
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

settings parse(int argc, char** argv) {
  settings s;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") usage("help");
    if (a == "--no-deploy") {
      s.deploy = false;
      continue;
    }
    if (i + 1 >= argc) usage("missing value after " + a);
    const std::string v = argv[++i];
    try {
      if (a == "--policy")
        s.policy = v;
      else if (a == "--budget")
        s.budget = v;
      else if (a == "--budget-kind")
        s.budget_kind = v;
      else if (a == "--epochs")
        s.epochs = std::stoul(v);
      else if (a == "--warmup-epochs")
        s.warmup_epochs = std::stoul(v);
      else if (a == "--finetune-epochs")
        s.finetune_epochs = std::stoul(v);
      else if (a == "--fp32-epochs")
        s.fp32_epochs = std::stoul(v);
      else if (a == "--checkpoint")
        s.checkpoint = v;
      else if (a == "--seed")
        s.seed = std::stoull(v);
      else if (a == "--out")
        s.out = v;
      else if (a == "--bits")
        s.bits = parse_bits(v);
      else if (a == "--batch")
        s.batch = std::stoul(v);
      else if (a == "--lr")
        s.lr = std::stof(v);
      else if (a == "--finetune-quantizer")
        s.finetune_quantizer = v;
      else if (a == "--finetune-lr")
        s.finetune_lr = std::stof(v);
      else if (a == "--arch-lr")
        s.arch_lr = std::stof(v);
      else if (a == "--limit-train")
        s.limit_train = std::stoul(v);
      else if (a == "--limit-test")
        s.limit_test = std::stoul(v);
      else if (a == "--data-dir")
        s.data_dir = v;
      else
        usage("unknown option " + a);
    } catch (const std::logic_error&) {
      usage("bad value for " + a + ": " + v);
    }
  }
  const auto policies = available_policies();
  if (!policies.count(s.policy)) {
    std::string names;
    for (auto& [n, r] : policies) names += (names.empty() ? "" : ", ") + n;
    usage("unknown policy '" + s.policy + "'; valid policies in this build: " + names);
  }
  if (s.finetune_quantizer != "pact" && s.finetune_quantizer != "lsq")
    usage("unknown finetune quantizer '" + s.finetune_quantizer + "'; expected pact or lsq");
  if (s.budget_kind != "bitops" && s.budget_kind != "size")
    usage("unknown budget kind '" + s.budget_kind + "'; expected bitops or size");
  parse_wa(s.budget);
  if (s.batch == 0) usage("--batch must be >= 1");
  return s;
}

/// Keeps the first n samples (n = 0: all).
void limit(data::dataset& ds, std::size_t n) {
  if (n == 0 || n >= ds.size()) return;
  auto shape = ds.images.shape();
  const std::size_t per = ds.images.size() / shape[0];
  shape[0] = n;
  mixq::tensor<float> img(shape);
  std::copy_n(ds.images.data(), n * per, img.data());
  ds.images = std::move(img);
  ds.labels.resize(n);
}

/// FP32 training of the demo CNN (SGD + Nesterov, cosine lr), as examples/train_fashion_mnist.
void train_fp32(nn::module& net, const data::dataset& train, const data::dataset& test,
                const settings& s) {
  nn::param_group decayed{{}, s.lr, 0.9f, 5e-4f, true}, plain{{}, s.lr, 0.9f, 0.0f, true};
  for (auto& [name, p] : net.named_parameters())
    (p.shape().size() > 1 ? decayed : plain).params.push_back(p);
  nn::sgd opt({decayed, plain});
  data::batch_loader loader(train, s.batch, true, s.seed);
  const nn::cosine_schedule sched{s.fp32_epochs * loader.size()};
  for (std::size_t e = 0; e < s.fp32_epochs; ++e) {
    loader.set_epoch(e);
    nn::loop_options o;
    o.label = "fp32 " + std::to_string(e + 1) + "/" + std::to_string(s.fp32_epochs);
    o.first_step = e * loader.size();
    o.on_step = [&](std::size_t st) { opt.set_lr_factor(sched.factor(st)); };
    nn::train_epoch(net, opt, loader, o);
  }
  data::batch_loader tl(test, 500);
  std::printf("FP32 test accuracy %.2f%%\n", 100.0 * nn::evaluate(net, tl).accuracy);
}

std::string human(double x) {
  char buf[32];
  if (x >= 1e9)
    std::snprintf(buf, sizeof buf, "%.2fG", x * 1e-9);
  else if (x >= 1e6)
    std::snprintf(buf, sizeof buf, "%.2fM", x * 1e-6);
  else if (x >= 1e3)
    std::snprintf(buf, sizeof buf, "%.1fk", x * 1e-3);
  else
    std::snprintf(buf, sizeof buf, "%.0f", x);
  return buf;
}

void print_table(const search::search_result& r) {
  std::printf("\n%-3s %-6s %-6s %9s %9s %3s %3s %10s %8s %8s\n", "#", "layer", "kind", "params",
              "MACs", "W", "A", "BitOps", "BitOps%", "size%");
  for (std::size_t i = 0; i < r.layers.size(); ++i) {
    const auto& l = r.layers[i];
    std::printf("%-3zu %-6s %-6s %9lld %9lld %3d %3d %10s %7.1f%% %7.1f%%\n", i, l.name.c_str(),
                l.kind == search::layer_kind::linear ? "fc" : "conv", (long long)l.params,
                (long long)l.macs, l.w_bits, l.a_bits, human(l.bitops).c_str(),
                100.0 * l.bitops_share, 100.0 * l.weight_share);
  }
  std::printf(
      "total: %lld params, %lld MACs, %s BitOps, %.0f weight bytes (%.1fx smaller than "
      "FP32); %.1f%% of the budget\n",
      (long long)r.params, (long long)r.macs, human(r.bitops).c_str(), r.weight_bytes(),
      r.size_compression_vs_fp32(), 100.0 * r.budget_usage());
  auto pct = [](double a) {
    return std::isnan(a) ? std::string("   -  ") : mixq::detail::cat(a * 100, "%");
  };
  std::printf(
      "accuracy: initial %s, after warm-up %s, after search %s, derived %s, finetuned "
      "%s\n",
      pct(r.initial.test_accuracy).c_str(), pct(r.warmup.test_accuracy).c_str(),
      pct(r.search.test_accuracy).c_str(), pct(r.derive.test_accuracy).c_str(),
      pct(r.finetune.test_accuracy).c_str());
  std::printf("time: warm-up %.1f s, search %.1f s, derive %.2f s, finetune %.1f s, total %.1f s\n",
              r.warmup.seconds, r.search.seconds, r.derive.seconds, r.finetune.seconds,
              r.total_seconds);
}

std::string svg_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<')
      o += "&lt;";
    else if (c == '>')
      o += "&gt;";
    else if (c == '&')
      o += "&amp;";
    else if (c == '"')
      o += "&quot;";
    else
      o += c;
  }
  return o;
}

/// A grouped bar chart: weight and activation bits per layer, 0..8 on the y axis.
std::string bits_svg(const search::search_result& r, const std::string& title) {
  const int n = int(r.layers.size());
  const int left = 50, top = 40, plot_h = 200, group = 60, bar = 22;
  const int width = left + n * group + 20, height = top + plot_h + 60;
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
    << "\" font-family=\"sans-serif\" font-size=\"11\">\n";
  o << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  o << "<text x=\"" << left << "\" y=\"18\" font-size=\"13\">" << svg_escape(title) << "</text>\n";
  for (int b = 0; b <= 8; ++b) {
    const int y = top + plot_h - b * plot_h / 8;
    o << "<line x1=\"" << left << "\" x2=\"" << width - 20 << "\" y1=\"" << y << "\" y2=\"" << y
      << "\" stroke=\"#ddd\"/>\n<text x=\"" << left - 8 << "\" y=\"" << y + 4
      << "\" text-anchor=\"end\">" << b << "</text>\n";
  }
  o << "<text x=\"12\" y=\"" << top + plot_h / 2 << "\" transform=\"rotate(-90 12 "
    << top + plot_h / 2 << ")\" text-anchor=\"middle\">bits</text>\n";
  for (int i = 0; i < n; ++i) {
    const auto& l = r.layers[std::size_t(i)];
    const int x0 = left + i * group + (group - 2 * bar) / 2;
    const int hw = l.w_bits * plot_h / 8, ha = l.a_bits * plot_h / 8;
    o << "<rect x=\"" << x0 << "\" y=\"" << top + plot_h - hw << "\" width=\"" << bar
      << "\" height=\"" << hw << "\" fill=\"#4477aa\"><title>layer " << svg_escape(l.name)
      << ": weights " << l.w_bits << " bits</title></rect>\n";
    o << "<rect x=\"" << x0 + bar << "\" y=\"" << top + plot_h - ha << "\" width=\"" << bar
      << "\" height=\"" << ha << "\" fill=\"#ee6677\"><title>layer " << svg_escape(l.name)
      << ": activations " << l.a_bits << " bits</title></rect>\n";
    o << "<text x=\"" << x0 + bar << "\" y=\"" << top + plot_h + 16 << "\" text-anchor=\"middle\">"
      << svg_escape(l.name) << "</text>\n";
    o << "<text x=\"" << x0 + bar << "\" y=\"" << top + plot_h + 30
      << "\" text-anchor=\"middle\" fill=\"#666\">"
      << mixq::detail::cat(int(std::lround(100 * l.bitops_share)), "%") << "</text>\n";
  }
  const int ly = height - 12;
  o << "<rect x=\"" << left << "\" y=\"" << ly - 9 << "\" width=\"10\" height=\"10\" "
    << "fill=\"#4477aa\"/><text x=\"" << left + 14 << "\" y=\"" << ly << "\">weight bits</text>\n";
  o << "<rect x=\"" << left + 100 << "\" y=\"" << ly - 9 << "\" width=\"10\" height=\"10\" "
    << "fill=\"#ee6677\"/><text x=\"" << left + 114 << "\" y=\"" << ly
    << "\">activation bits (grey: BitOps share)</text>\n";
  o << "</svg>\n";
  return o.str();
}

void write_text(const std::filesystem::path& p, const std::string& text) {
  const auto tmp = p.string() + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    f << text;
    if (!f) throw mixq::io_error("cannot write " + tmp);
  }
  std::filesystem::rename(tmp, p);
}

// ---- deployment ------------------------------------------------------------------------------

/// Copies parameters and buffers (batch-norm statistics) of `from` into `to`, the same
/// architecture: the FP32 reference network of the deployment table.
void copy_state(const nn::module& from, nn::module& to) {
  auto copy = [](const auto& src, auto dst) {  // vars share their nodes: dst copies write `to`
    if (src.size() != dst.size()) throw mixq::shape_error("copy_state: different architectures");
    for (std::size_t i = 0; i < src.size(); ++i) {
      if (src[i].second.shape() != dst[i].second.shape())
        throw mixq::shape_error("copy_state: " + src[i].first + " has another shape");
      auto& d = dst[i].second.value();
      std::copy(src[i].second.value().begin(), src[i].second.value().end(), d.begin());
    }
  };
  copy(from.named_parameters(), to.named_parameters());
  copy(from.named_buffers(), to.named_buffers());
}

/// Values the float network reads at inference: parameters and buffers.
std::size_t float_values(const nn::module& m) {
  std::size_t n = 0;
  for (const auto& [name, v] : m.named_parameters()) n += v.size();
  for (const auto& [name, v] : m.named_buffers()) n += v.size();
  return n;
}

/// Logits [N, K] of the whole set, in batches, and the wall time the forwards took (after
/// one untimed warm-up batch).
struct timed_logits {
  std::vector<float> logits;
  std::size_t classes = 0;
  double seconds = 0;
};

constexpr std::size_t deploy_batch = 256;

template <class Forward>
timed_logits run_set(const data::dataset& ds, Forward&& forward) {
  const auto shape = ds.images.shape();
  const std::size_t n = shape[0], per = ds.images.size() / n;
  timed_logits out;
  auto batch = [&](std::size_t b, std::size_t m) {
    mixq::tensor<float> x({m, shape[1], shape[2], shape[3]});
    std::copy_n(ds.images.data() + b * per, m * per, x.data());
    return x;
  };
  // One untimed batch first: the first run allocates buffers and faults pages in.
  if (n) (void)forward(batch(0, std::min(deploy_batch, n)));
  for (std::size_t b = 0; b < n; b += deploy_batch) {
    const std::size_t m = std::min(deploy_batch, n - b);
    const mixq::tensor<float> x = batch(b, m);
    const auto t0 = std::chrono::steady_clock::now();
    const mixq::tensor<float> y = forward(x);
    out.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    out.classes = y.shape()[1];
    out.logits.insert(out.logits.end(), y.begin(), y.end());
  }
  return out;
}

std::vector<std::size_t> predictions(const timed_logits& t) {
  if (t.classes == 0) return {};
  std::vector<std::size_t> p(t.logits.size() / t.classes);
  for (std::size_t i = 0; i < p.size(); ++i) {
    const float* row = t.logits.data() + i * t.classes;
    p[i] = std::size_t(std::max_element(row, row + t.classes) - row);
  }
  return p;
}

double accuracy(const std::vector<std::size_t>& pred, const std::vector<int>& labels) {
  std::size_t ok = 0;
  for (std::size_t i = 0; i < pred.size(); ++i) ok += pred[i] == std::size_t(labels[i]);
  return pred.empty() ? 0.0 : double(ok) / double(pred.size());
}

/// The figures of the deployment step.
struct deploy_figures {
  bool deployable = false;
  std::string reason;  // why not, when not deployable
  std::size_t samples = 0, disagreements = 0;
  double max_logit_diff = 0, logit_range = 0;
  double acc_fp32 = 0, acc_fake = 0, acc_int = 0;
  std::size_t fp32_bytes = 0, file_bytes = 0, payload_bytes = 0;
  double fp32_ips_1 = 0, fp32_ips_n = 0, fake_ips_n = 0, int_ips_1 = 0, int_ips_n = 0;
  unsigned threads = 1;
  bool threads_identical = false, reload_identical = false;
  std::string model_path;
};

bool bit_identical(const timed_logits& a, const timed_logits& b) {
  return a.logits.size() == b.logits.size() &&
         std::memcmp(a.logits.data(), b.logits.data(), a.logits.size() * sizeof(float)) == 0;
}

/// Compiles the finetuned model (its attached policy: the driver's fixed_policy, or BMPQ),
/// then measures what deploy_figures holds. Not deployable (a policy compile cannot read, or
/// an input grid it cannot encode): figures.deployable = false with the reason.
deploy_figures run_deployment(nn::module& net, nn::module& fp32, const search::search_result& r,
                              const data::dataset& test, const std::filesystem::path& model_path) {
  deploy_figures f;
  f.samples = test.size();
  f.threads = std::max(1u, std::thread::hardware_concurrency());
  f.model_path = model_path.string();
  net.eval();
  fp32.eval();
  std::optional<mixq::deploy::integer_model> im;
  try {
    if (auto fp = std::dynamic_pointer_cast<nn::fixed_policy>(r.finetuned_policy))
      im = mixq::deploy::compile(net, *fp, {1, 28, 28});
    else if (auto bp = std::dynamic_pointer_cast<search::bmpq_policy>(r.finetuned_policy))
      im = mixq::deploy::compile(net, *bp, {1, 28, 28});
    else
      f.reason = "the finetuned model's precision policy is not one deploy::compile reads";
  } catch (const mixq::value_error& e) {
    f.reason = e.what();
  }
  if (!im) return f;
  f.deployable = true;

  const unsigned saved_autodiff_threads = mixq::autodiff::threads();
  const std::size_t saved_kernel_threads = mixq::kernels::num_threads();
  mixq::autodiff::no_grad ng;
  auto float_forward = [](nn::module& m) {
    return [&m](const mixq::tensor<float>& x) { return m(mixq::autodiff::constant(x)).value(); };
  };
  // Fake quantization (float kernels, all threads): the reference the integer model must match.
  mixq::autodiff::set_threads(f.threads);
  const auto fake = run_set(test, float_forward(net));
  // Integer inference on 1 and on all threads (the kernels' pool and the model's own setting).
  auto int_forward = [](mixq::deploy::integer_model& m) {
    return [&m](const mixq::tensor<float>& x) { return m.run(x); };
  };
  mixq::kernels::set_num_threads(1);
  im->set_threads(1);
  const auto int1 = run_set(test, int_forward(*im));
  mixq::kernels::set_num_threads(f.threads);
  im->set_threads(f.threads);
  const auto intn = run_set(test, int_forward(*im));
  f.threads_identical = bit_identical(int1, intn);
  // Through the file and back.
  mixq::deploy::save(*im, model_path);
  f.file_bytes = std::size_t(std::filesystem::file_size(model_path));
  f.payload_bytes = im->payload_bytes();
  auto loaded = mixq::deploy::load(model_path);
  loaded.set_threads(f.threads);
  f.reload_identical = bit_identical(intn, run_set(test, int_forward(loaded)));
  mixq::kernels::set_num_threads(1);
  // FP32: the trained FP32 network (before the search), 1 and all threads.
  mixq::autodiff::set_threads(1);
  const auto fp1 = run_set(test, float_forward(fp32));
  mixq::autodiff::set_threads(f.threads);
  const auto fpn = run_set(test, float_forward(fp32));
  mixq::autodiff::set_threads(saved_autodiff_threads);
  mixq::kernels::set_num_threads(saved_kernel_threads);

  const auto pf = predictions(fake), pi = predictions(intn);
  for (std::size_t i = 0; i < pf.size(); ++i) f.disagreements += pf[i] != pi[i];
  float lo = 0, hi = 0;
  if (!fake.logits.empty()) {
    lo = *std::min_element(fake.logits.begin(), fake.logits.end());
    hi = *std::max_element(fake.logits.begin(), fake.logits.end());
  }
  f.logit_range = double(hi) - double(lo);
  for (std::size_t i = 0; i < fake.logits.size(); ++i)
    f.max_logit_diff =
        std::max(f.max_logit_diff, std::abs(double(fake.logits[i]) - double(intn.logits[i])));
  f.acc_fake = accuracy(pf, test.labels);
  f.acc_int = accuracy(pi, test.labels);
  f.acc_fp32 = accuracy(predictions(fpn), test.labels);
  f.fp32_bytes = 4 * float_values(fp32);
  const double n = double(f.samples);
  auto ips = [n](const timed_logits& t) { return t.seconds > 0 ? n / t.seconds : 0.0; };
  f.fp32_ips_1 = ips(fp1), f.fp32_ips_n = ips(fpn), f.fake_ips_n = ips(fake);
  f.int_ips_1 = ips(int1), f.int_ips_n = ips(intn);
  return f;
}

void print_deployment(const deploy_figures& f) {
  if (!f.deployable) {
    std::printf("\ndeployment: not deployable: %s\n", f.reason.c_str());
    return;
  }
  const std::string t1 = "img/s 1 thread", tn = mixq::detail::cat("img/s ", f.threads, " threads");
  std::printf(
      "\ndeployment: %zu test images in batches of %zu (FP32 = the trained FP32 network before "
      "the search, 4 bytes per parameter and batch-norm statistic)\n",
      f.samples, deploy_batch);
  std::printf("%-11s %9s %12s %15s %15s %16s\n", "model", "accuracy", "model bytes",
              "payload bytes", t1.c_str(), tn.c_str());
  std::printf("%-11s %8.2f%% %12zu %15s %15.0f %16.0f\n", "FP32", 100 * f.acc_fp32, f.fp32_bytes,
              "-", f.fp32_ips_1, f.fp32_ips_n);
  std::printf("%-11s %8.2f%% %12s %15s %15s %16.0f\n", "fake-quant", 100 * f.acc_fake, "-", "-",
              "-", f.fake_ips_n);
  std::printf("%-11s %8.2f%% %12zu %15zu %15.0f %16.0f\n", "integer", 100 * f.acc_int, f.file_bytes,
              f.payload_bytes, f.int_ips_1, f.int_ips_n);
  std::printf("integer vs FP32: %.1fx smaller file, %.2fx the images/s on 1 thread, %.2fx on %u\n",
              double(f.fp32_bytes) / double(std::max<std::size_t>(1, f.file_bytes)),
              f.fp32_ips_1 > 0 ? f.int_ips_1 / f.fp32_ips_1 : 0.0,
              f.fp32_ips_n > 0 ? f.int_ips_n / f.fp32_ips_n : 0.0, f.threads);
  std::printf(
      "integer vs fake-quant: %zu of %zu predictions differ (%.2f%% agreement); max |logit "
      "difference| %.3g = %.3g of the logit range %.3g\n",
      f.disagreements, f.samples,
      f.samples ? 100.0 * double(f.samples - f.disagreements) / double(f.samples) : 100.0,
      f.max_logit_diff, f.logit_range > 0 ? f.max_logit_diff / f.logit_range : 0.0, f.logit_range);
  std::printf("saved %s (%zu bytes); reloaded: outputs %s; 1 vs %u threads: outputs %s\n",
              f.model_path.c_str(), f.file_bytes,
              f.reload_identical ? "bit-identical" : "DIFFERENT", f.threads,
              f.threads_identical ? "bit-identical" : "DIFFERENT");
}

std::string json_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\')
      o += std::string("\\") + c;
    else if (static_cast<unsigned char>(c) < 0x20)
      o +=
          mixq::detail::cat("\\u00", "0123456789abcdef"[(c >> 4) & 15], "0123456789abcdef"[c & 15]);
    else
      o += c;
  }
  return o;
}

std::string deployment_json(const deploy_figures& f, const std::string& result_json) {
  std::ostringstream o;
  o.precision(9);
  o << "{\n  \"format\": \"mixq.deploy_result/1\",\n  \"search_result\": \""
    << json_escape(result_json) << "\",\n  \"deployable\": " << (f.deployable ? "true" : "false");
  if (!f.deployable) {
    o << ",\n  \"reason\": \"" << json_escape(f.reason) << "\"\n}\n";
    return o.str();
  }
  o << ",\n  \"model_file\": \"" << json_escape(f.model_path) << "\",\n  \"samples\": " << f.samples
    << ",\n  \"batch\": " << deploy_batch << ",\n  \"threads\": " << f.threads
    << ",\n  \"prediction_disagreements\": " << f.disagreements
    << ",\n  \"max_abs_logit_difference\": " << f.max_logit_diff
    << ",\n  \"logit_range\": " << f.logit_range
    << ",\n  \"reload_bit_identical\": " << (f.reload_identical ? "true" : "false")
    << ",\n  \"threads_bit_identical\": " << (f.threads_identical ? "true" : "false")
    << ",\n  \"fp32\": {\"accuracy\": " << f.acc_fp32 << ", \"bytes\": " << f.fp32_bytes
    << ", \"images_per_second_1_thread\": " << f.fp32_ips_1
    << ", \"images_per_second_all_threads\": " << f.fp32_ips_n << "}"
    << ",\n  \"fake_quant\": {\"accuracy\": " << f.acc_fake
    << ", \"images_per_second_all_threads\": " << f.fake_ips_n << "}"
    << ",\n  \"integer\": {\"accuracy\": " << f.acc_int << ", \"file_bytes\": " << f.file_bytes
    << ", \"payload_bytes\": " << f.payload_bytes
    << ", \"images_per_second_1_thread\": " << f.int_ips_1
    << ", \"images_per_second_all_threads\": " << f.int_ips_n << "}\n}\n";
  return o.str();
}

}  // namespace

int main(int argc, char** argv) {
  settings s = parse(argc, argv);
  try {
    auto sets = data::fashion_mnist(s.data_dir);
    limit(sets.train, s.limit_train);
    limit(sets.test, s.limit_test);
    // Pixels stay in [0, 1] (no standardisation; the first batch norm rescales): the first
    // layer's input is then one-sided like every other, so PACT quantizes it on the same
    // unsigned grid and deploy::compile accepts the finetuned model.
    std::mt19937 rng(unsigned(s.seed));
    auto net = nn::demo_cnn(10, 1, rng);

    if (!s.checkpoint.empty() && std::filesystem::exists(s.checkpoint)) {
      nn::load_parameters(*net, s.checkpoint);
      std::printf("loaded FP32 checkpoint %s\n", s.checkpoint.c_str());
    } else {
      train_fp32(*net, sets.train, sets.test, s);
      if (!s.checkpoint.empty()) {
        nn::save_parameters(*net, s.checkpoint);
        std::printf("FP32 checkpoint saved to %s\n", s.checkpoint.c_str());
      }
    }

    // The FP32 reference of the deployment table: a copy of the trained network.
    std::mt19937 copy_rng(0);
    auto fp32_net = nn::demo_cnn(10, 1, copy_rng);
    copy_state(*net, *fp32_net);

    {
      mixq::autodiff::ftensor probe({256, 1, 28, 28});
      std::copy_n(sets.train.images.data(), std::min(probe.size(), sets.train.images.size()),
                  probe.data());
      s.signed_layers = search::signed_input_layers(*net, probe);
    }
    const auto costs = search::trace_costs(*net, {1, 1, 28, 28}).layers;
    const auto [w, a] = parse_wa(s.budget);
    const auto kind =
        s.budget_kind == "bitops" ? search::budget_kind::bitops : search::budget_kind::weight_bits;
    const auto b = search::budget::like_uniform(kind, costs, w, a);

    search::search_options o;
    o.warmup_epochs = s.warmup_epochs;
    o.search_epochs = s.epochs;
    o.finetune_epochs = s.finetune_epochs;
    o.batch_size = s.batch;
    o.lr = s.lr;
    o.finetune_lr = s.finetune_lr >= 0 ? s.finetune_lr : s.lr;
    o.arch_lr = s.arch_lr >= 0 ? s.arch_lr : default_arch_lr(s.policy);
    o.seed = s.seed;
    if (s.finetune_quantizer == "pact") {
      o.fixed_options.weights = nn::weight_quantizer::uniform_symmetric;
      o.fixed_options.activations = nn::activation_quantizer::pact;
    } else {
      o.fixed_options.weights = nn::weight_quantizer::lsq;
      o.fixed_options.activations = nn::activation_quantizer::lsq;
    }
    o.policy_name = s.policy;
    o.min_w_bits = o.min_a_bits = s.bits.front();
    const search::search_data d{{sets.train.images, sets.train.labels},
                                {sets.test.images, sets.test.labels}};
    auto result = available_policies().at(s.policy)(*net, d, b, o, s);

    print_table(result);
    std::filesystem::create_directories(s.out);
    const std::string stem =
        s.policy + "-" + s.budget + "-" + s.budget_kind + "-s" + std::to_string(s.seed);
    const auto json = std::filesystem::path(s.out) / (stem + ".json");
    const auto svg = std::filesystem::path(s.out) / (stem + ".svg");
    result.write_json(json.string());
    char title[256];
    std::snprintf(title, sizeof title, "%s, %s budget like %s: finetuned accuracy %.2f%%",
                  s.policy.c_str(), s.budget_kind.c_str(), s.budget.c_str(),
                  100.0 * result.finetune.test_accuracy);
    write_text(svg, bits_svg(result, title));
    std::printf("wrote %s and %s\n", json.c_str(), svg.c_str());
    if (s.deploy) {
      const auto f = run_deployment(*net, *fp32_net, result, sets.test,
                                    std::filesystem::path(s.out) / (stem + ".mixq"));
      print_deployment(f);
      const auto deploy_json = std::filesystem::path(s.out) / (stem + "-deploy.json");
      write_text(deploy_json, deployment_json(f, json.filename().string()));
      std::printf("wrote %s\n", deploy_json.c_str());
      if (f.deployable && f.disagreements != 0) {
        std::cerr << "error: the integer model's predictions differ from the fake-quant model's "
                     "on "
                  << f.disagreements << " of " << f.samples
                  << " test images (expected none: both decode the same codes)\n";
        return 3;
      }
      if (f.deployable && (!f.reload_identical || !f.threads_identical)) {
        std::cerr << "error: the integer model's outputs are not bit-identical "
                  << (!f.reload_identical ? "after save and load" : "on 1 and on all threads")
                  << "\n";
        return 3;
      }
    }
  } catch (const mixq::error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  } catch (const std::filesystem::filesystem_error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
