// Integer model files: save() writes a versioned little-endian binary format (compact
// per-op headers, weight codes packed at their bit-width, float parameters, an FNV-1a
// checksum) to a temporary file and renames it; load() validates every size against the bytes
// left before allocating, and still reads the older versions 1 and 2.
#pragma once

#include <bit>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "mixq/core/error.hpp"
#include "mixq/deploy/integer_model.hpp"

namespace mixq::deploy {

/// File layout, version 3 (all fixed-size integers little-endian; `varint` is LEB128: 7 bits
/// per byte, low groups first, high bit = more follows, at most 5 bytes for a u32):
///   "MIXQIM\r\n" (8 bytes), u32 version, varint op count, ops..., u64 FNV-1a of all bytes
///   before it.
/// An op: u8 kind, varint name length + name bytes, then only the fields its kind uses:
///   quantized:  u8 flags (bit 0 fully connected, bit 1 signed weights, bit 2 LSQ step grid
///               (else PACT), bit 3 per-channel weight scales (else one); other bits 0),
///               u8 bits (weight bits - 1 | (input bits - 1) << 4), varint window, stride,
///               padding, in, out, groups, f32 grid value (PACT alpha or LSQ step),
///               f32 x out output scales, f32 x out output shifts, f32 x S weight scales,
///               f32 x S weight zero points (S = out or 1), then the out * k * k * in/groups
///               weight codes (k = 1 for fully connected) packed LSB first at the weight
///               bit-width (two's complement for signed types; binary -1/+1 as bits 0/1).
///   affine:     varint channels C, f32 x C scales, f32 x C shifts.
///   max_pool, avg_pool: varint window, stride, padding.
///   save, load, residual_add: varint slot.
///   relu, global_avg_pool, flatten: nothing.
/// Versions 1 and 2 (still read; written by detail::serialize_v2 for the tests) have a u32
/// layer count and a fixed 60-byte-plus-name header for every op (see detail::read_ops_v2);
/// version 1 lacks the residual ops (kinds 8..10) and both only know PACT grids.
inline constexpr char model_magic[8] = {'M', 'I', 'X', 'Q', 'I', 'M', '\r', '\n'};
inline constexpr std::uint32_t model_format_version = 3;
/// The oldest version load() still reads (version 1 lacks the residual ops, kinds 8..10).
inline constexpr std::uint32_t model_format_oldest_version = 1;
/// Larger files are refused before reading (a guard against nonsense sizes).
inline constexpr std::uint64_t max_model_file_bytes = std::uint64_t(1) << 30;
/// More ops than this in a file are refused (no real network has them; it bounds what a
/// lying count can make the parser allocate).
inline constexpr std::uint32_t max_model_ops = std::uint32_t(1) << 20;

namespace detail {

inline std::uint64_t fnv1a(std::span<const std::uint8_t> bytes) {
  std::uint64_t h = 14695981039346656037ull;
  for (std::uint8_t b : bytes) h = (h ^ b) * 1099511628211ull;
  return h;
}

class byte_writer {
 public:
  void u8(std::uint8_t v) { out_.push_back(v); }
  void u32(std::uint32_t v) {
    for (int i = 0; i < 4; ++i) out_.push_back(std::uint8_t(v >> (8 * i)));
  }
  void u64(std::uint64_t v) {
    for (int i = 0; i < 8; ++i) out_.push_back(std::uint8_t(v >> (8 * i)));
  }
  void f32(float v) { u32(std::bit_cast<std::uint32_t>(v)); }
  void varint(std::uint32_t v) {
    for (; v >= 0x80; v >>= 7) out_.push_back(std::uint8_t(v | 0x80));
    out_.push_back(std::uint8_t(v));
  }
  void bytes(std::span<const std::uint8_t> b) { out_.insert(out_.end(), b.begin(), b.end()); }
  void str(const std::string& s) {
    u32(std::uint32_t(s.size()));
    out_.insert(out_.end(), s.begin(), s.end());
  }
  void floats(const std::vector<float>& v) {
    u32(std::uint32_t(v.size()));
    raw_floats(v);
  }
  void raw_floats(const std::vector<float>& v) {
    for (float f : v) f32(f);
  }
  std::vector<std::uint8_t>& data() { return out_; }

 private:
  std::vector<std::uint8_t> out_;
};

class byte_reader {
 public:
  byte_reader(std::span<const std::uint8_t> in, std::string source)
      : in_(in), source_(std::move(source)) {}
  std::size_t left() const noexcept { return in_.size() - pos_; }
  void need(std::size_t n, const char* field) const {
    if (left() < n)
      throw format_error(cat(source_, ": truncated at byte ", pos_, " reading ", field, " (", n,
                             " bytes needed, ", left(), " left)"));
  }
  std::uint8_t u8(const char* field) {
    need(1, field);
    return in_[pos_++];
  }
  std::uint32_t u32(const char* field) {
    need(4, field);
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= std::uint32_t(in_[pos_++]) << (8 * i);
    return v;
  }
  std::uint64_t u64(const char* field) {
    need(8, field);
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= std::uint64_t(in_[pos_++]) << (8 * i);
    return v;
  }
  float f32(const char* field) { return std::bit_cast<float>(u32(field)); }
  std::uint32_t varint(const char* field) {
    std::uint32_t v = 0;
    for (int i = 0; i < 5; ++i) {
      const std::uint8_t b = u8(field);
      if (i == 4 && b > 0x0f)
        throw format_error(
            cat(source_, ": ", field, " at byte ", pos_ - 1, " is a varint over 32 bits"));
      v |= std::uint32_t(b & 0x7f) << (7 * i);
      if (!(b & 0x80)) return v;
    }
    throw format_error(cat(source_, ": ", field, " at byte ", pos_ - 5,
                           " is a varint over 32 bits"));  // unreachable: i == 4 checks it
  }
  std::span<const std::uint8_t> bytes(std::size_t n, const char* field) {
    need(n, field);
    auto s = in_.subspan(pos_, n);
    pos_ += n;
    return s;
  }
  std::string str(const char* field, std::size_t max_len) {
    const std::uint32_t n = u32(field);
    if (n > max_len)
      throw format_error(cat(source_, ": ", field, " length ", n, " exceeds ", max_len));
    auto b = bytes(n, field);
    return std::string(b.begin(), b.end());
  }
  // The count is checked against the bytes left before anything is allocated.
  std::vector<float> floats(const char* field) { return raw_floats(u32(field), field); }
  std::vector<float> raw_floats(std::size_t n, const char* field) {
    need(n * 4, field);
    std::vector<float> v(n);
    for (auto& f : v) f = f32(field);
    return v;
  }
  // A string of a varint length (version 3).
  std::string short_str(const char* field, std::size_t max_len) {
    const std::uint32_t n = varint(field);
    if (n > max_len)
      throw format_error(cat(source_, ": ", field, " length ", n, " exceeds ", max_len));
    auto b = bytes(n, field);
    return std::string(b.begin(), b.end());
  }
  const std::string& source() const noexcept { return source_; }
  std::size_t pos() const noexcept { return pos_; }

 private:
  std::span<const std::uint8_t> in_;
  std::size_t pos_ = 0;
  std::string source_;
};

inline void write_packed_codes(byte_writer& w, const layer& l) {
  const int bits = l.weight_type.bits;
  std::vector<std::uint8_t> packed((l.weight_codes.size() * std::size_t(bits) + 7) / 8, 0);
  std::size_t bit = 0;
  for (std::int32_t c : l.weight_codes) {
    const std::uint32_t u =
        l.weight_type.is_binary() ? (c > 0 ? 1u : 0u) : std::uint32_t(c) & ((1u << bits) - 1u);
    for (int b = 0; b < bits; ++b, ++bit)
      if ((u >> b) & 1u) packed[bit / 8] |= std::uint8_t(1u << (bit % 8));
  }
  w.bytes(packed);
}

inline void write_codes(byte_writer& w, const layer& l) {
  w.u32(std::uint32_t(l.weight_codes.size()));
  write_packed_codes(w, l);
}

// n codes packed at t's bit-width; the packed size is checked before anything is allocated.
inline std::vector<std::int32_t> read_packed_codes(byte_reader& r, std::uint64_t n, bitwidth t) {
  if (n > r.left() * 8)  // at least one bit per code: also keeps n * bits from overflowing
    throw format_error(cat(r.source(), ": ", n, " weight codes at ", t.bits,
                           " bits do not fit in the ", r.left(), " bytes left"));
  const std::size_t bytes = (std::size_t(n) * std::size_t(t.bits) + 7) / 8;
  auto packed = r.bytes(bytes, "weight codes");
  std::vector<std::int32_t> codes(n);
  std::size_t bit = 0;
  for (auto& c : codes) {
    std::uint32_t u = 0;
    for (int b = 0; b < t.bits; ++b, ++bit)
      u |= std::uint32_t((packed[bit / 8] >> (bit % 8)) & 1u) << b;
    if (t.is_binary())
      c = u ? 1 : -1;
    else if (t.is_signed && (u >> (t.bits - 1)))
      c = std::int32_t(u) - (1 << t.bits);
    else
      c = std::int32_t(u);
  }
  return codes;
}

inline std::vector<std::int32_t> read_codes(byte_reader& r, bitwidth t) {
  const std::uint32_t n = r.u32("weight code count");
  return read_packed_codes(r, n, t);
}

// ---- Version 3 ---------------------------------------------------------------------------

namespace flag {
inline constexpr std::uint8_t linear = 1, signed_weights = 2, step_grid = 4,
                              per_channel_weights = 8, all = 15;
}

inline constexpr std::size_t max_name_bytes = 4096;

inline void write_op_v3(byte_writer& w, const layer& l) {
  if (l.name.size() > max_name_bytes)  // load would refuse it
    throw value_error(cat("deploy::serialize: layer name of ", l.name.size(),
                          " bytes: expected at most ", max_name_bytes));
  w.u8(std::uint8_t(l.kind));
  w.varint(std::uint32_t(l.name.size()));
  w.bytes(std::span(reinterpret_cast<const std::uint8_t*>(l.name.data()), l.name.size()));
  switch (l.kind) {
    case op_kind::quantized: {
      // integer_model's constructor checked the sizes the file leaves implicit: out scales
      // and shifts, 1 or out weight scales and as many zero points, out x k x k x in/groups
      // codes.
      const bool per_channel = l.weight_scale.size() != 1;
      w.u8(std::uint8_t(
          (l.is_linear ? flag::linear : 0) | (l.weight_type.is_signed ? flag::signed_weights : 0) |
          (l.input.grid.kind == quant::activation_grid_kind::step ? flag::step_grid : 0) |
          (per_channel ? flag::per_channel_weights : 0)));
      w.u8(std::uint8_t((l.weight_type.bits - 1) | ((l.input.bits - 1) << 4)));
      w.varint(l.window), w.varint(l.stride), w.varint(l.padding);
      w.varint(l.in_channels), w.varint(l.out_channels), w.varint(l.groups);
      w.f32(l.input.grid.value);
      w.raw_floats(l.mul), w.raw_floats(l.add);
      w.raw_floats(l.weight_scale), w.raw_floats(l.weight_zero_point);
      write_packed_codes(w, l);
      return;
    }
    case op_kind::affine:
      w.varint(std::uint32_t(l.mul.size()));
      w.raw_floats(l.mul), w.raw_floats(l.add);
      return;
    case op_kind::max_pool:
    case op_kind::avg_pool:
      w.varint(l.window), w.varint(l.stride), w.varint(l.padding);
      return;
    case op_kind::save:
    case op_kind::load:
    case op_kind::residual_add:
      w.varint(l.slot());
      return;
    case op_kind::relu:
    case op_kind::global_avg_pool:
    case op_kind::flatten:
      return;
  }
}

inline layer read_op_v3(byte_reader& r, std::uint32_t i) {
  const std::string& source = r.source();
  const std::uint32_t kind = r.u8("op kind");
  if (kind < 1 || kind > op_kind_count)
    throw format_error(cat(source, ": layer ", i, " has unknown kind ", kind, " (expected 1..",
                           op_kind_count, " in format version 3)"));
  layer l = layer::of_kind(static_cast<op_kind>(kind));
  l.name = r.short_str("layer name", max_name_bytes);
  switch (l.kind) {
    case op_kind::quantized: {
      const std::uint8_t flags = r.u8("quantized layer flags");
      if (flags & ~flag::all)
        throw format_error(cat(source, ": layer ", i, " has unknown flags ", int(flags),
                               " (expected bits 0..3 only)"));
      const std::uint8_t bits = r.u8("bits");
      const int wbits = (bits & 15) + 1;
      l.input.bits = (bits >> 4) + 1;
      if (wbits > 8)
        throw format_error(cat(source, ": layer ", i, " weight bits ", wbits, " (expected 1..8)"));
      l.weight_type = bitwidth{wbits, (flags & flag::signed_weights) != 0};
      l.is_linear = (flags & flag::linear) != 0;
      l.window = r.varint("window"), l.stride = r.varint("stride");
      l.padding = r.varint("padding");
      l.in_channels = r.varint("in channels"), l.out_channels = r.varint("out channels");
      l.groups = r.varint("groups");
      l.input.grid.kind = (flags & flag::step_grid) ? quant::activation_grid_kind::step
                                                    : quant::activation_grid_kind::pact;
      l.input.grid.value = r.f32("input grid value");
      if (l.groups == 0 || l.in_channels % l.groups)
        throw format_error(cat(source, ": layer ", i, " has ", l.in_channels, " input channels in ",
                               l.groups, " groups (expected a multiple of groups >= 1)"));
      const std::size_t out = l.out_channels;
      l.mul = r.raw_floats(out, "output scales");
      l.add = r.raw_floats(out, "output shifts");
      const std::size_t s = (flags & flag::per_channel_weights) ? out : 1;
      l.weight_scale = r.raw_floats(s, "weight scales");
      l.weight_zero_point = r.raw_floats(s, "weight zero points");
      const std::uint64_t k = l.is_linear ? 1 : l.window;
      // Each factor < 2^32: the product overflows 64 bits only when it is absurd anyway.
      std::uint64_t n = std::uint64_t(out) * (l.in_channels / l.groups);
      bool overflow = __builtin_mul_overflow(n, k * k, &n);
      if (overflow) throw format_error(cat(source, ": layer ", i, " has too many weight codes"));
      l.weight_codes = read_packed_codes(r, n, l.weight_type);
      return l;
    }
    case op_kind::affine: {
      const std::uint32_t c = r.varint("affine channels");
      l.mul = r.raw_floats(c, "affine scales");
      l.add = r.raw_floats(c, "affine shifts");
      return l;
    }
    case op_kind::max_pool:
    case op_kind::avg_pool:
      l.window = r.varint("pool window"), l.stride = r.varint("pool stride");
      l.padding = r.varint("pool padding");
      return l;
    case op_kind::save:
    case op_kind::load:
    case op_kind::residual_add:
      l.window = r.varint("slot");
      return l;
    case op_kind::relu:
    case op_kind::global_avg_pool:
    case op_kind::flatten:
      return l;
  }
  return l;
}

// ---- Versions 1 and 2 --------------------------------------------------------------------

/// The version 2 bytes of `m` (the writer before version 3, kept to test that such files still
/// load). value_error for a layer on an LSQ step grid, which version 2 cannot hold.
inline std::vector<std::uint8_t> serialize_v2(const integer_model& m) {
  byte_writer w;
  w.bytes(std::span(reinterpret_cast<const std::uint8_t*>(model_magic), 8));
  w.u32(2);
  w.u32(std::uint32_t(m.layers().size()));
  for (const layer& l : m.layers()) {
    if (l.kind == op_kind::quantized && l.input.grid.kind != quant::activation_grid_kind::pact)
      throw value_error(cat("deploy::detail::serialize_v2: layer ", l.name,
                            " has an LSQ step grid; format version 2 holds PACT grids only"));
    w.u32(static_cast<std::uint32_t>(l.kind));
    w.str(l.name);
    w.u32(l.window), w.u32(l.stride), w.u32(l.padding);
    w.u8(l.is_linear ? 1 : 0);
    w.u32(l.in_channels), w.u32(l.out_channels), w.u32(l.groups);
    w.u8(std::uint8_t(l.weight_type.bits)), w.u8(l.weight_type.is_signed ? 1 : 0);
    w.u8(std::uint8_t(l.input.bits));
    w.f32(l.input.grid.value);
    w.floats(l.mul), w.floats(l.add), w.floats(l.weight_scale), w.floats(l.weight_zero_point);
    write_codes(w, l);
  }
  w.u64(fnv1a(w.data()));
  return std::move(w.data());
}

/// Version 1 and 2 ops. A layer: u32 kind, string name (u32 length + bytes), u32 window,
/// stride, padding, u8 is_linear, u32 in, out, groups, u8 weight bits, u8 weight signed, u8
/// input bits, f32 input clip value (PACT alpha), float vectors mul, add, weight_scale,
/// weight_zero_point (u32 count + values), u32 code count + the packed codes.
inline std::vector<layer> read_ops_v2(byte_reader& r, std::uint32_t version) {
  const std::string& source = r.source();
  const std::uint32_t kinds = version == 1 ? op_kind_count_v1 : op_kind_count;
  const std::uint32_t count = r.u32("layer count");
  // Every layer takes at least 60 bytes, so a lying count fails here, before any allocation.
  if (std::size_t(count) * 60 > r.left())
    throw format_error(
        cat(source, ": layer count ", count, " does not fit in ", r.left(), " bytes"));
  std::vector<layer> layers(count);
  for (std::uint32_t i = 0; i < count; ++i) {
    layer& l = layers[i];
    const std::uint32_t kind = r.u32("layer kind");
    if (kind < 1 || kind > kinds)
      throw format_error(cat(source, ": layer ", i, " has unknown kind ", kind, " (expected 1..",
                             kinds, " in format version ", version, ")"));
    l.kind = static_cast<op_kind>(kind);
    l.name = r.str("layer name", max_name_bytes);
    l.window = r.u32("window"), l.stride = r.u32("stride"), l.padding = r.u32("padding");
    l.is_linear = r.u8("is_linear") != 0;
    l.in_channels = r.u32("in channels"), l.out_channels = r.u32("out channels");
    l.groups = r.u32("groups");
    const int wbits = r.u8("weight bits");
    const bool wsigned = r.u8("weight signedness") != 0;
    l.input.bits = r.u8("input bits");
    l.input.grid = quant::activation_grid::pact(r.f32("input clip value"));
    if (wbits < 1 || wbits > 8)
      throw format_error(cat(source, ": layer ", i, " weight bits ", wbits, " (expected 1..8)"));
    l.weight_type = bitwidth{wbits, wsigned};
    l.mul = r.floats("output scales");
    l.add = r.floats("output shifts");
    l.weight_scale = r.floats("weight scales");
    l.weight_zero_point = r.floats("weight zero points");
    l.weight_codes = read_codes(r, l.weight_type);
  }
  return layers;
}

}  // namespace detail

/// The bytes of a model file for `m` (format version 3).
inline std::vector<std::uint8_t> serialize(const integer_model& m) {
  detail::byte_writer w;
  w.bytes(std::span(reinterpret_cast<const std::uint8_t*>(model_magic), 8));
  w.u32(model_format_version);
  w.varint(std::uint32_t(m.layers().size()));
  for (const layer& l : m.layers()) detail::write_op_v3(w, l);
  w.u64(detail::fnv1a(w.data()));
  return std::move(w.data());
}

/// Parses model-file bytes (format versions 1..3); `source` names them in error messages.
/// format_error for a wrong magic, version, checksum, truncation, trailing bytes or
/// inconsistent layer fields.
inline integer_model deserialize(std::span<const std::uint8_t> bytes,
                                 const std::string& source = "model") {
  using detail::cat;
  // magic, version, a one-byte op count (version 3) and the checksum.
  constexpr std::size_t smallest = 8 + 4 + 1 + 8;
  if (bytes.size() < smallest)
    throw format_error(cat(source, ": ", bytes.size(),
                           " bytes is too short for a mixq integer model (header and checksum "
                           "need ",
                           smallest, ")"));
  if (std::memcmp(bytes.data(), model_magic, 8) != 0)
    throw format_error(cat(source, ": not a mixq integer model file (bad magic)"));
  detail::byte_reader head(bytes.subspan(8, 4), source);
  const std::uint32_t version = head.u32("version");
  if (version < model_format_oldest_version || version > model_format_version)
    throw format_error(cat(source, ": format version ", version, "; this build reads versions ",
                           model_format_oldest_version, "..", model_format_version));
  const auto body = bytes.first(bytes.size() - 8);
  detail::byte_reader tail(bytes.last(8), source);
  const std::uint64_t stored = tail.u64("checksum");
  if (stored != detail::fnv1a(body))
    throw format_error(cat(source, ": checksum mismatch (the file is corrupt or truncated)"));

  detail::byte_reader r(body.subspan(12), source);
  std::vector<layer> layers;
  if (version <= 2) {
    layers = detail::read_ops_v2(r, version);
  } else {
    const std::uint32_t count = r.varint("op count");
    // Every op takes at least 2 bytes (kind, name length); ops are appended as they are read,
    // so a lying count runs out of bytes rather than allocating.
    if (count > max_model_ops || std::size_t(count) * 2 > r.left())
      throw format_error(cat(source, ": op count ", count, " does not fit in ", r.left(),
                             " bytes (at most ", max_model_ops, " ops)"));
    for (std::uint32_t i = 0; i < count; ++i) layers.push_back(detail::read_op_v3(r, i));
  }
  if (r.left() != 0)
    throw format_error(cat(source, ": ", r.left(), " unexpected bytes after the last layer"));
  try {
    return integer_model(std::move(layers));
  } catch (const format_error&) {
    throw;
  } catch (const error& e) {  // inconsistent fields in a file are a format problem
    throw format_error(cat(source, ": ", e.what()));
  }
}

/// Writes `m` to `path` atomically: a temporary file next to it, then a rename, so an
/// existing file is either replaced whole or left untouched. io_error on failure.
inline void save(const integer_model& m, const std::filesystem::path& path) {
  const auto bytes = serialize(m);
  const auto tmp = std::filesystem::path(path.string() + ".tmp");
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out)
      throw io_error(detail::cat("deploy::save: cannot create ", tmp.string(),
                                 " (is the directory writable?)"));
    out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
    out.flush();
    if (!out) {
      out.close();
      std::error_code ec;
      std::filesystem::remove(tmp, ec);
      throw io_error(detail::cat("deploy::save: writing ", tmp.string(), " failed"));
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    throw io_error(detail::cat("deploy::save: cannot rename ", tmp.string(), " to ", path.string(),
                               ": ", ec.message()));
  }
}

/// Reads a model file written by save(). io_error if it cannot be read, format_error if it
/// is not a valid model.
inline integer_model load(const std::filesystem::path& path) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec)
    throw io_error(detail::cat("deploy::load: cannot read ", path.string(), ": ", ec.message()));
  if (size > max_model_file_bytes)
    throw format_error(detail::cat(path.string(), ": ", size, " bytes exceeds the ",
                                   max_model_file_bytes, "-byte limit for model files"));
  std::ifstream in(path, std::ios::binary);
  std::vector<std::uint8_t> bytes(size);
  in.read(reinterpret_cast<char*>(bytes.data()), std::streamsize(size));
  if (!in) throw io_error(detail::cat("deploy::load: reading ", path.string(), " failed"));
  return deserialize(bytes, path.string());
}

}  // namespace mixq::deploy
