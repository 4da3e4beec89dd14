// Shared helpers of the deploy tests: a trained-looking random model state, and the
// agreement (same predictions, largest logit difference) between fake-quant and integer logits.
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>

#include "mixq/deploy.hpp"
#include "mixq/nn.hpp"
#include "mixq/nn/fixed_policy.hpp"

namespace mixq::test {

// Trained-looking state: batch-norm statistics and affine parameters away from identity,
// PACT alphas of a realistic size.
inline void randomise_state(nn::module& m, nn::fixed_policy& p, std::mt19937& rng) {
  for (auto& [name, v] : m.named_parameters())
    if (name.find("bias") != std::string::npos || v.value().shape().size() == 1)
      for (auto& x : v.value()) x = std::uniform_real_distribution<float>(-0.3f, 1.5f)(rng);
  for (auto& [name, v] : m.named_buffers())
    for (auto& x : v.value())
      x = name.find("var") != std::string::npos
              ? std::uniform_real_distribution<float>(0.05f, 2.0f)(rng)
              : std::uniform_real_distribution<float>(-0.5f, 0.5f)(rng);
  for (auto& a : p.parameters())
    for (auto& x : a.value()) x = std::uniform_real_distribution<float>(0.8f, 3.0f)(rng);
}

struct agreement {
  std::size_t samples = 0, same_prediction = 0;
  double max_abs_diff = 0, max_abs_logit = 0;
};

/// Compares logits [N, classes]: `want` (fake-quant) against `got` (integer).
inline agreement compare(const tensor<float>& want, const tensor<float>& got) {
  REQUIRE(got.shape() == want.shape());
  agreement a;
  const std::size_t n = want.shape()[0], k = want.shape()[1];
  a.samples = n;
  for (std::size_t i = 0; i < n; ++i) {
    const float* w = &want[i * k];
    const float* g = &got[i * k];
    if (std::max_element(w, w + k) - w == std::max_element(g, g + k) - g) ++a.same_prediction;
    for (std::size_t j = 0; j < k; ++j) {
      a.max_abs_diff = std::max(a.max_abs_diff, double(std::abs(w[j] - g[j])));
      a.max_abs_logit = std::max(a.max_abs_logit, double(std::abs(w[j])));
    }
  }
  return a;
}

/// The fake-quant model `net` (eval mode, no graph) against the integer model `im` on x.
inline agreement compare(nn::module& net, deploy::integer_model& im, const tensor<float>& x) {
  net.eval();
  autodiff::no_grad ng;
  const tensor<float> want = net(autodiff::constant(x)).value();
  return compare(want, im.run(x));
}

}  // namespace mixq::test
