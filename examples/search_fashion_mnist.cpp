// Mixed-precision search on Fashion-MNIST: trains the demo CNN (nn::demo_cnn) in FP32 (or loads the
// checkpoint it saved), then runs one search policy under a budget through search::run
// (warm-up, search, derive, finetune), prints a per-layer table, and writes the JSON result
// and an SVG bar chart of the per-layer bits.
//
//   search_fashion_mnist [--policy uniform] [--budget w3a3] [--budget-kind bitops|size]
//                        [--epochs 1] [--warmup-epochs 0] [--finetune-epochs 1]
//                        [--fp32-epochs 2] [--checkpoint PATH] [--seed 1] [--out DIR]
//                        [--bits 1,2,3,4,5,6,7,8] [--batch 64] [--lr 0.01] [--finetune-lr LR]
//                        [--arch-lr 0.003 (fracbits: 0.03)]
//                        [--finetune-quantizer pact|lsq]
//                        [--limit-train N] [--limit-test N] [--data-dir DIR]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "mixq/data.hpp"
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
  /// The finetune's quantizers: pact (per-channel symmetric weights, PACT activations; the
  /// driver's default) or lsq (LSQ steps for weights and activations).
  std::string finetune_quantizer = "pact";
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
};

/// Architecture learning rate per policy: FracBits moves real-valued bit-widths, which need
/// about 10x the step of the DNAS/EBS logits to travel a bit in one or two epochs.
float default_arch_lr(const std::string& policy) {
  return policy == "fracbits" ? 0.03f : 3e-3f;
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
  // floor/ceil rounding; BMPQ and HAWQ: those >= 2, a sign and a magnitude bit).
  auto space_of = [](const settings& s, bool consecutive) {
    search::weight_search_space sp;
    sp.a_bits = parse_wa(s.budget).second;
    sp.candidates.clear();
    if (consecutive) {
      for (int x = s.bits.front(); x <= s.bits.back(); ++x) sp.candidates.push_back(x);
    } else {
      for (int x : s.bits)
        if (x >= 2) sp.candidates.push_back(x);
      if (sp.candidates.empty()) usage("--bits: BMPQ and HAWQ need a candidate >= 2");
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
    bo.space = space_of(s, false);
    bo.early_epochs = std::max<std::size_t>(1, (s.finetune_epochs + 1) / 2);
    bo.interval_epochs = 1;
    search::bmpq_policy p(bo);
    return search::run(model, d, p, b, o);
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
               "[--out DIR] [--finetune-quantizer pact|lsq] [--bits LIST] [--batch N] [--lr X] "
               "[--finetune-lr X] [--arch-lr X] "
               "[--limit-train N] [--limit-test N] [--data-dir DIR]\n";
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
    if (s.finetune_quantizer == "lsq") {
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
  } catch (const mixq::error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  } catch (const std::filesystem::filesystem_error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
