// IDX (MNIST-format) files, gzip-compressed or plain (zlib reads both): every header field
// is validated and a bad one raises format_error naming the file and the field. Data is read
// in bounded chunks, so a header that lies about its size never causes a huge allocation.
// Needs zlib: link the mixq::data target.
#pragma once

#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "mixq/core/error.hpp"
#include "mixq/core/tensor.hpp"

namespace mixq::data {

/// An IDX array of unsigned bytes: its dimensions and its values, row-major.
struct idx_array {
  std::vector<std::size_t> dims;
  std::vector<std::uint8_t> values;
};

namespace detail {
using mixq::detail::cat;

struct gz_closer {
  void operator()(gzFile_s* f) const noexcept { gzclose(f); }
};
using gz_ptr = std::unique_ptr<gzFile_s, gz_closer>;

/// Reads up to n bytes; returns how many were read; format_error on a decompression error.
inline std::size_t gz_read(gzFile f, void* dst, std::size_t n, const std::string& path,
                           const char* field) {
  std::size_t got = 0;
  auto* p = static_cast<unsigned char*>(dst);
  while (got < n) {
    const unsigned chunk = unsigned(std::min<std::size_t>(n - got, 1u << 20));
    const int r = gzread(f, p + got, chunk);
    if (r < 0) {
      int code = 0;
      const char* msg = gzerror(f, &code);
      throw format_error(cat(path, ": corrupt compressed data while reading ", field, " (",
                             msg ? msg : "zlib error", ")"));
    }
    if (r == 0) {
      // zlib reports a stream cut short (even inside its trailer) as Z_BUF_ERROR at EOF.
      int code = Z_OK;
      gzerror(f, &code);
      if (code == Z_BUF_ERROR)
        throw format_error(cat(path, ": truncated compressed stream while reading ", field));
      break;
    }
    got += std::size_t(r);
  }
  return got;
}
}  // namespace detail

/// Largest value count read_idx accepts (1 GiB): beyond any MNIST-like data set.
inline constexpr std::size_t idx_max_values = std::size_t(1) << 30;

/// Reads an IDX file of unsigned bytes (type code 0x08). Validates: the two zero magic bytes,
/// the type code, the dimension count (1..4), each dimension (> 0), their product (no overflow,
/// <= idx_max_values), the data length (neither truncated nor followed by extra bytes).
inline idx_array read_idx(const std::string& path) {
  using detail::cat;
  detail::gz_ptr f(gzopen(path.c_str(), "rb"));
  if (!f) throw io_error(cat("cannot open IDX file ", path));
  unsigned char magic[4];
  const std::size_t got = detail::gz_read(f.get(), magic, 4, path, "magic");
  if (got < 4) throw format_error(cat(path, ": truncated magic (", got, " of 4 bytes)"));
  if (magic[0] != 0 || magic[1] != 0)
    throw format_error(cat(path, ": bad magic: first two bytes must be zero, got ", int(magic[0]),
                           " ", int(magic[1])));
  if (magic[2] != 0x08)
    throw format_error(cat(path, ": unsupported element type code 0x", std::hex, int(magic[2]),
                           " in the magic, expected 0x08 (unsigned byte)"));
  const int rank = magic[3];
  if (rank < 1 || rank > 4)
    throw format_error(cat(path, ": dimension count ", rank, " in the magic, expected 1 to 4"));
  idx_array a;
  std::size_t total = 1;
  for (int d = 0; d < rank; ++d) {
    unsigned char b[4];
    const std::size_t n = detail::gz_read(f.get(), b, 4, path, "dimension");
    if (n < 4) throw format_error(cat(path, ": truncated header: dimension ", d, " missing"));
    const std::uint32_t v = (std::uint32_t(b[0]) << 24) | (std::uint32_t(b[1]) << 16) |
                            (std::uint32_t(b[2]) << 8) | std::uint32_t(b[3]);
    if (v == 0) throw format_error(cat(path, ": dimension ", d, " is zero"));
    if (total > idx_max_values / v)
      throw format_error(cat(path, ": dimension ", d, " (", v,
                             ") makes the value count overflow the limit of ", idx_max_values));
    total *= v;
    a.dims.push_back(v);
  }
  // Grow while reading so a truncated file costs only what it holds.
  std::size_t have = 0;
  while (have < total) {
    const std::size_t want = std::min<std::size_t>(total - have, std::size_t(1) << 22);
    a.values.resize(have + want);
    const std::size_t n = detail::gz_read(f.get(), a.values.data() + have, want, path, "data");
    have += n;
    if (n < want)
      throw format_error(
          cat(path, ": truncated data: ", have, " of ", total, " values the header declares"));
  }
  unsigned char extra;
  if (detail::gz_read(f.get(), &extra, 1, path, "end of data") != 0)
    throw format_error(
        cat(path, ": data length: bytes follow the ", total, " values the header declares"));
  return a;
}

/// A labelled image set: images [N, 1, H, W] as floats in [0, 1], labels in [0, classes).
struct dataset {
  tensor<float> images;
  std::vector<int> labels;
  std::size_t size() const noexcept { return labels.size(); }
};

/// Reads an image file ([N, H, W]) and a label file ([N]) and checks that they agree.
inline dataset load_idx_dataset(const std::string& images_path, const std::string& labels_path,
                                int classes = 10) {
  using detail::cat;
  const idx_array im = read_idx(images_path);
  const idx_array lb = read_idx(labels_path);
  if (im.dims.size() != 3)
    throw format_error(cat(images_path, ": dimension count ", im.dims.size(),
                           ", expected 3 for images [N, rows, cols]"));
  if (lb.dims.size() != 1)
    throw format_error(
        cat(labels_path, ": dimension count ", lb.dims.size(), ", expected 1 for labels [N]"));
  if (im.dims[0] != lb.dims[0])
    throw format_error(cat(images_path, " holds ", im.dims[0], " images but ", labels_path,
                           " holds ", lb.dims[0], " labels (item counts disagree)"));
  dataset ds;
  ds.images = tensor<float>({im.dims[0], 1, im.dims[1], im.dims[2]});
  for (std::size_t i = 0; i < im.values.size(); ++i) ds.images[i] = float(im.values[i]) / 255.0f;
  ds.labels.resize(lb.dims[0]);
  for (std::size_t i = 0; i < lb.values.size(); ++i) {
    if (lb.values[i] >= classes)
      throw format_error(cat(labels_path, ": label ", int(lb.values[i]), " of item ", i,
                             " is outside [0, ", classes, ")"));
    ds.labels[i] = lb.values[i];
  }
  return ds;
}

}  // namespace mixq::data
