# The Debian packages mixq's scripts need (sourced by the other scripts).
MIXQ_BUILD_PACKAGES=(cmake g++ make libxsimd-dev doctest-dev libbenchmark-dev zlib1g-dev)
# Baselines the benchmarks compare against (side by side only, never a library dependency).
MIXQ_BENCH_PACKAGES=(libopenblas-dev libdnnl-dev)
# Large baselines the CI run (test.sh) does not install; the benchmarks use them when found:
#   scripts/install-deps.sh "${MIXQ_BENCH_EXTRA_PACKAGES[@]}"
# libtorch-dev: bench_train's libtorch case (Debian 12's CPU-only libtorch 1.13; about 150 MB
# of packages and 600 MB installed on a machine that already has the build packages).
MIXQ_BENCH_EXTRA_PACKAGES=(libtorch-dev)
# The data set the examples train on.
MIXQ_DATA_PACKAGES=(dataset-fashion-mnist)
# libFuzzer for the model-file parser (scripts/fuzz.sh).
MIXQ_FUZZ_PACKAGES=(clang libclang-rt-14-dev)
