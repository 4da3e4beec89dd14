// IDX loading on files the test writes into a temporary directory: valid plain and gzipped
// round trips, and fuzz-style damage (every truncation, wrong magic, overflowing dimensions,
// disagreeing counts, corrupt compression, random byte flips), each a typed error.
#include <doctest/doctest.h>
#include <zlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "mixq/data.hpp"

using namespace mixq;
using namespace mixq::data;
namespace fs = std::filesystem;

namespace {

struct temp_dir {
  fs::path path;
  temp_dir() {
    path =
        fs::temp_directory_path() / ("mixq_test_data_" + std::to_string(std::random_device{}()) +
                                     "_" + std::to_string(reinterpret_cast<std::uintptr_t>(this)));
    fs::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

using bytes = std::vector<unsigned char>;

bytes idx_bytes(const std::vector<std::uint32_t>& dims, const bytes& values,
                unsigned char type = 0x08) {
  bytes b{0, 0, type, static_cast<unsigned char>(dims.size())};
  for (auto d : dims)
    for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<unsigned char>(d >> s));
  b.insert(b.end(), values.begin(), values.end());
  return b;
}

void write_plain(const std::string& path, const bytes& b) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

void write_gz(const std::string& path, const bytes& b) {
  gzFile f = gzopen(path.c_str(), "wb");
  REQUIRE(f != nullptr);
  if (!b.empty()) REQUIRE(gzwrite(f, b.data(), unsigned(b.size())) == int(b.size()));
  gzclose(f);
}

bytes read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return bytes(std::istreambuf_iterator<char>(f), {});
}

bytes random_bytes(std::size_t n, std::mt19937& rng) {
  bytes v(n);
  for (auto& x : v) x = static_cast<unsigned char>(rng() % 256);
  return v;
}

}  // namespace

TEST_CASE("IDX round trip, plain and gzipped") {
  temp_dir dir;
  std::mt19937 rng(1);
  const bytes vals = random_bytes(3 * 4 * 5, rng);
  const bytes file = idx_bytes({3, 4, 5}, vals);
  write_plain(dir.file("a.idx"), file);
  write_gz(dir.file("a.idx.gz"), file);
  for (const char* name : {"a.idx", "a.idx.gz"}) {
    CAPTURE(name);
    const idx_array a = read_idx(dir.file(name));
    CHECK(a.dims == std::vector<std::size_t>{3, 4, 5});
    CHECK(a.values == std::vector<std::uint8_t>(vals.begin(), vals.end()));
  }
}

TEST_CASE("IDX dataset: images and labels agree, values scaled to [0, 1]") {
  temp_dir dir;
  std::mt19937 rng(2);
  const bytes px = random_bytes(6 * 2 * 3, rng);
  const bytes lb{0, 9, 3, 3, 1, 7};
  write_gz(dir.file("im.gz"), idx_bytes({6, 2, 3}, px));
  write_plain(dir.file("lb"), idx_bytes({6}, lb));
  const dataset ds = load_idx_dataset(dir.file("im.gz"), dir.file("lb"));
  CHECK(ds.images.shape() == shape_t{6, 1, 2, 3});
  for (std::size_t i = 0; i < px.size(); ++i) CHECK(ds.images[i] == float(px[i]) / 255.0f);
  CHECK(ds.labels == std::vector<int>{0, 9, 3, 3, 1, 7});
  // Counts that disagree.
  write_plain(dir.file("lb5"), idx_bytes({5}, bytes{0, 1, 2, 3, 4}));
  CHECK_THROWS_AS(load_idx_dataset(dir.file("im.gz"), dir.file("lb5")), format_error);
  // A label outside the classes, images of the wrong rank, labels of the wrong rank.
  write_plain(dir.file("lbbad"), idx_bytes({6}, bytes{0, 1, 2, 3, 4, 10}));
  CHECK_THROWS_AS(load_idx_dataset(dir.file("im.gz"), dir.file("lbbad")), format_error);
  write_plain(dir.file("im2"), idx_bytes({6, 6}, random_bytes(36, rng)));
  CHECK_THROWS_AS(load_idx_dataset(dir.file("im2"), dir.file("lb")), format_error);
  CHECK_THROWS_AS(load_idx_dataset(dir.file("im.gz"), dir.file("im.gz")), format_error);
  try {
    load_idx_dataset(dir.file("im.gz"), dir.file("lb5"));
  } catch (const format_error& e) {
    const std::string msg = e.what();
    CHECK(msg.find("im.gz") != std::string::npos);
    CHECK(msg.find("counts disagree") != std::string::npos);
  }
}

TEST_CASE("IDX: every truncation of a valid file is a format_error") {
  temp_dir dir;
  std::mt19937 rng(3);
  const bytes file = idx_bytes({4, 3, 2}, random_bytes(24, rng));
  for (std::size_t n = 0; n < file.size(); ++n) {
    CAPTURE(n);
    const bytes cut(file.begin(), file.begin() + long(n));
    write_plain(dir.file("t"), cut);
    CHECK_THROWS_AS(read_idx(dir.file("t")), format_error);
    write_gz(dir.file("t.gz"), cut);
    CHECK_THROWS_AS(read_idx(dir.file("t.gz")), format_error);
  }
  // Extra bytes after the data.
  bytes longer = file;
  longer.push_back(0);
  write_plain(dir.file("x"), longer);
  CHECK_THROWS_AS(read_idx(dir.file("x")), format_error);
  // Truncating the compressed stream itself.
  write_gz(dir.file("full.gz"), idx_bytes({64, 64}, random_bytes(4096, rng)));
  const bytes gz = read_all(dir.file("full.gz"));
  for (std::size_t n : {std::size_t(11), gz.size() / 2, gz.size() - 9, gz.size() - 1}) {
    CAPTURE(n);
    write_plain(dir.file("cut.gz"), bytes(gz.begin(), gz.begin() + long(n)));
    CHECK_THROWS_AS(read_idx(dir.file("cut.gz")), format_error);
  }
}

TEST_CASE("IDX: bad header fields name the field") {
  temp_dir dir;
  auto expect = [&](const bytes& b, const char* word) {
    write_plain(dir.file("h"), b);
    try {
      read_idx(dir.file("h"));
      FAIL("no error for a bad ", word);
    } catch (const format_error& e) {
      const std::string msg = e.what();
      CAPTURE(msg);
      CHECK(msg.find(word) != std::string::npos);
      CHECK(msg.find(dir.file("h")) != std::string::npos);
    }
  };
  expect(bytes{1, 0, 8, 1, 0, 0, 0, 1, 5}, "magic");
  expect(bytes{0, 7, 8, 1, 0, 0, 0, 1, 5}, "magic");
  expect(idx_bytes({1}, bytes{5}, 0x0D), "type code");
  expect(bytes{0, 0, 8, 0}, "dimension count");
  expect(bytes{0, 0, 8, 5, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 9},
         "dimension count");
  expect(idx_bytes({3, 0}, bytes{}), "zero");
  // Products that overflow size_t and ones past the size limit: rejected before allocating.
  expect(idx_bytes({0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu}, bytes{1, 2, 3}), "overflow");
  expect(idx_bytes({65536, 65536}, bytes{1, 2, 3}), "overflow");
  // A large but allowed declared size with little data: truncated, read in bounded chunks.
  expect(idx_bytes({32768, 32768}, bytes(100, 1)), "truncated");
  CHECK_THROWS_AS(read_idx(dir.file("does-not-exist")), io_error);
}

TEST_CASE("IDX: corrupt compressed data and random byte flips never crash") {
  temp_dir dir;
  std::mt19937 rng(4);
  const bytes file = idx_bytes({8, 8}, random_bytes(64, rng));
  write_gz(dir.file("g.gz"), file);
  const bytes gz = read_all(dir.file("g.gz"));
  for (int trial = 0; trial < 200; ++trial) {
    bytes damaged = trial % 2 ? gz : file;
    const std::size_t flips = 1 + rng() % 3;
    for (std::size_t f = 0; f < flips; ++f)
      damaged[rng() % damaged.size()] ^= static_cast<unsigned char>(1 + rng() % 255);
    write_plain(dir.file("d"), damaged);
    try {
      const idx_array a = read_idx(dir.file("d"));
      // Accepted only if self-consistent.
      std::size_t n = 1;
      for (auto d : a.dims) n *= d;
      CHECK(a.values.size() == n);
    } catch (const format_error&) {
    }
  }
}

TEST_CASE("seeded batches: deterministic permutations covering the data") {
  dataset ds;
  const std::size_t N = 103;
  ds.images = tensor<float>({N, 1, 2, 2});
  for (std::size_t i = 0; i < ds.images.size(); ++i) ds.images[i] = float(i / 4);
  for (std::size_t i = 0; i < N; ++i) ds.labels.push_back(int(i % 10));
  batch_loader a(ds, 16, true, 42), b(ds, 16, true, 42), c(ds, 16, true, 43);
  CHECK(a.size() == 7);
  std::multiset<int> seen;
  bool differs = false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const batch x = a[i], y = b[i], z = c[i];
    CHECK(x.images == y.images);
    CHECK(x.labels == y.labels);
    differs = differs || !(x.images == z.images);
    CHECK(x.labels.size() == (i + 1 < a.size() ? 16u : N - 16 * 6));
    for (std::size_t k = 0; k < x.labels.size(); ++k) {
      const int item = int(x.images[k * 4]);  // every pixel of item i holds i
      CHECK(x.images[k * 4 + 3] == float(item));
      CHECK(x.labels[k] == item % 10);
      seen.insert(item);
    }
  }
  CHECK(differs);
  CHECK(seen.size() == N);
  CHECK(std::set<int>(seen.begin(), seen.end()).size() == N);
  const batch e0 = a[0];
  a.set_epoch(1);
  CHECK_FALSE(a[0].images == e0.images);
  CHECK(batch_loader(ds, 16, false, 0, true).size() == 6);
  CHECK(batch_loader(ds, 16)[0].labels ==
        std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5});
  CHECK_THROWS_AS(batch_loader(ds, 0), value_error);
  CHECK_THROWS_AS(a[7], value_error);
  const auto p = seeded_permutation(1000, 7);
  CHECK(std::set<std::size_t>(p.begin(), p.end()).size() == 1000);
  CHECK(p == seeded_permutation(1000, 7));
}

TEST_CASE("fashion_mnist: a missing directory says how to install the data set") {
  try {
    fashion_mnist("/nonexistent/mixq-fashion");
    FAIL("no error");
  } catch (const io_error& e) {
    CHECK(std::string(e.what()).find("apt-get install dataset-fashion-mnist") != std::string::npos);
  }
}
