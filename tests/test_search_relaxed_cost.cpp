// Relaxed costs as vars: value and gradients against the plain-double formulas of cost.hpp
// (themselves checked against finite differences in test_search_cost), kernel-wise lambdas,
// clamping, the softmax chain for EBS/EdMIPS, DNAS mixtures, and shape errors.
#include <doctest/doctest.h>

#include <random>
#include <vector>

#include "mixq/autodiff.hpp"
#include "mixq/search/model_zoo.hpp"
#include "mixq/search/relaxed_cost.hpp"

using namespace mixq;
using namespace mixq::search;
namespace ad = mixq::autodiff;

namespace {
std::vector<ad::var> scalars(const std::vector<double>& v) {
  std::vector<ad::var> out;
  for (double x : v) out.push_back(ad::var::parameter(ad::ftensor({1}, float(x))));
  return out;
}
}  // namespace

TEST_CASE("fracbits_cost var: value and gradients equal the plain formula") {
  const model_desc m = resnet18();
  const std::size_t n = m.size();
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(1.2f, 7.8f);
  std::vector<double> lw(n), la(n);
  for (std::size_t i = 0; i < n; ++i) lw[i] = u(rng), la[i] = u(rng);
  lw[3] = 0.5;  // below the range: clamped, no gradient
  la[4] = 9.0;  // above
  for (const auto metric : {cost_metric::bitops, cost_metric::size_bits})
    for (const auto& conv : {cost_conventions::all_layers(), cost_conventions::fracbits(),
                             cost_conventions::edmips()}) {
      std::vector<ad::var> vw = scalars(lw), va = scalars(la);
      // The var path keeps float lambdas: the reference uses the same float values.
      std::vector<double> fw(n), fa(n);
      for (std::size_t i = 0; i < n; ++i) fw[i] = vw[i].value()[0], fa[i] = va[i].value()[0];
      const double scale = metric == cost_metric::bitops ? 1e-9 : 1.0 / 8e6;
      const ad::var c = fracbits_cost(m, vw, va, metric, conv, {}, scale);
      const relaxed_bits_cost ref = fracbits_cost(m, fw, fa, metric, conv);
      CHECK(c.item() == doctest::Approx(ref.value * scale).epsilon(1e-6));
      ad::backward(c);
      for (std::size_t i = 0; i < n; ++i) {
        CAPTURE(i);
        CHECK(vw[i].grad()[0] == doctest::Approx(ref.d_w_bits[i] * scale).epsilon(1e-5));
        CHECK(va[i].grad()[0] == doctest::Approx(ref.d_a_bits[i] * scale).epsilon(1e-5));
      }
      CHECK(vw[3].grad()[0] == 0.0f);
      CHECK(va[4].grad()[0] == 0.0f);
    }
}

TEST_CASE("fracbits_cost var: kernel-wise lambdas cost MACs / C_out * sum_c lambda_w[c] lambda_a") {
  const model_desc m = mobilenet_v2();
  const std::size_t n = m.size();
  std::mt19937 rng(2);
  std::uniform_real_distribution<float> u(1.5f, 7.5f);
  std::vector<ad::var> vw, va;
  double expect = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t C = std::size_t(m.layers[i].out_channels);
    ad::ftensor w({C});
    double sw = 0;
    for (auto& x : w) x = u(rng), sw += x;
    const float a = u(rng);
    vw.push_back(ad::var::parameter(w));
    va.push_back(ad::var::parameter(ad::ftensor({1}, a)));
    expect += double(m.layers[i].macs) / double(C) * sw * a;
  }
  const ad::var c = fracbits_cost(m, vw, va, cost_metric::bitops, {}, {}, 1e-9);
  CHECK(c.item() == doctest::Approx(expect * 1e-9).epsilon(1e-5));
  ad::backward(c);
  for (std::size_t i = 0; i < n; ++i) {
    const double C = double(m.layers[i].out_channels);
    const double a = va[i].value()[0];
    for (std::size_t k = 0; k < vw[i].size(); k += 7)
      CHECK(vw[i].grad()[k] ==
            doctest::Approx(double(m.layers[i].macs) / C * a * 1e-9).epsilon(1e-4));
  }
}

TEST_CASE("expected_bits_cost var: softmax strengths chain to the plain gradients") {
  const model_desc m = resnet18();
  const std::size_t n = m.size();
  const std::vector<int> wc{1, 2, 3, 4}, ac{2, 3, 4};
  std::mt19937 rng(3);
  std::normal_distribution<float> g;
  std::vector<ad::var> sw, sa, pw, pa;
  std::vector<std::vector<double>> pwv, pav;
  for (std::size_t i = 0; i < n; ++i) {
    ad::ftensor a({4}), b({3});
    for (auto& x : a) x = g(rng);
    for (auto& x : b) x = g(rng);
    sw.push_back(ad::var::parameter(a));
    sa.push_back(ad::var::parameter(b));
    pw.push_back(ad::softmax(sw.back()));
    pa.push_back(ad::softmax(sa.back()));
    pwv.emplace_back(pw.back().value().begin(), pw.back().value().end());
    pav.emplace_back(pa.back().value().begin(), pa.back().value().end());
  }
  const auto conv = cost_conventions::edmips();
  const ad::var c = expected_bits_cost(m, pw, wc, pa, ac, cost_metric::bitops, conv, 1e-9);
  const relaxed_prob_cost ref = expected_bits_cost(m, pwv, wc, pav, ac, cost_metric::bitops, conv);
  CHECK(c.item() == doctest::Approx(ref.value * 1e-9).epsilon(1e-5));
  ad::backward(c);
  for (std::size_t i = 0; i < n; ++i) {
    const auto dw = softmax_backward(pwv[i], ref.d_p_w[i]);
    const auto da = softmax_backward(pav[i], ref.d_p_a[i]);
    for (std::size_t k = 0; k < 4; ++k)
      CHECK(sw[i].grad()[k] == doctest::Approx(dw[k] * 1e-9).epsilon(1e-3).scale(1e-3));
    for (std::size_t k = 0; k < 3; ++k)
      CHECK(sa[i].grad()[k] == doctest::Approx(da[k] * 1e-9).epsilon(1e-3).scale(1e-3));
  }
  CHECK(sw[0].grad()[0] == 0.0f);  // EdMIPS leaves the first layer uncounted
}

TEST_CASE("mixture_cost var: d cost / d m[l][k] is the candidate's cost") {
  const model_desc m = mobilenet_v2();
  const std::vector<bit_pair> cand{{2, 2}, {4, 4}, {8, 8}, {2, 8}};
  std::mt19937 rng(4);
  std::vector<ad::var> mv;
  std::vector<std::vector<double>> md;
  for (std::size_t i = 0; i < m.size(); ++i) {
    ad::var logits = ad::var::parameter(ad::ftensor({4}, 0.0f));
    for (auto& x : logits.value()) x = std::normal_distribution<float>()(rng);
    mv.push_back(ad::gumbel_softmax(logits, 1.0f, rng));
    md.emplace_back(mv.back().value().begin(), mv.back().value().end());
  }
  for (const auto metric : {cost_metric::bitops, cost_metric::size_bits}) {
    const auto conv = cost_conventions::hawq_v3();
    const double scale = metric == cost_metric::bitops ? 1e-9 : 1.0 / 8388608.0;
    std::vector<ad::var> leaves;
    for (auto& v : md) {
      ad::ftensor t({v.size()});
      for (std::size_t k = 0; k < v.size(); ++k) t[k] = float(v[k]);
      leaves.push_back(ad::var::parameter(t));
    }
    const ad::var c = mixture_cost(m, leaves, cand, metric, conv, scale);
    const relaxed_mixture_cost ref = mixture_cost(m, md, cand, metric, conv);
    CHECK(c.item() == doctest::Approx(ref.value * scale).epsilon(1e-5));
    ad::backward(c);
    for (std::size_t i = 0; i < m.size(); ++i)
      for (std::size_t k = 0; k < cand.size(); ++k)
        CHECK(leaves[i].grad()[k] == doctest::Approx(ref.d_m[i][k] * scale).epsilon(1e-5));
  }
}

TEST_CASE("relaxed cost vars: typed errors") {
  const model_desc m = resnet18();
  auto w = scalars(std::vector<double>(m.size(), 4.0));
  auto a = scalars(std::vector<double>(m.size(), 4.0));
  auto short_a = scalars(std::vector<double>(3, 4.0));
  CHECK_THROWS_AS(fracbits_cost(m, w, short_a, cost_metric::bitops), shape_error);
  CHECK_THROWS_AS(fracbits_cost(m, w, a, cost_metric::bitops, {}, {0.0f, 8.0f}), bits_error);
  auto bad_kw = w;
  bad_kw[1] = ad::var::parameter(ad::ftensor({3}, 4.0f));  // layer 1 has 64 output channels
  CHECK_THROWS_AS(fracbits_cost(m, bad_kw, a, cost_metric::bitops), shape_error);
  auto bad_a = a;
  bad_a[1] = ad::var::parameter(ad::ftensor({2}, 4.0f));
  CHECK_THROWS_AS(fracbits_cost(m, w, bad_a, cost_metric::bitops), shape_error);
  const std::vector<int> cands{2, 4};
  CHECK_THROWS_AS(expected_bits_cost(m, w, cands, a, cands, cost_metric::bitops), shape_error);
  CHECK_THROWS_AS(mixture_cost(m, short_a, std::vector<bit_pair>{{4, 4}}, cost_metric::bitops),
                  shape_error);
}
