// Integer model files: save() writes a versioned little-endian binary format (weight codes
// packed at their bit-width, float parameters, an FNV-1a checksum) to a temporary file and
// renames it; load() validates every size against the bytes left before allocating.
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

/// File layout (all integers little-endian):
///   "MIXQIM\r\n" (8 bytes), u32 version, u32 layer count, layers..., u64 FNV-1a of all bytes
///   before it. Version 2 adds the residual ops (kinds 8..10: save, load, residual_add, their
///   slot in the window field); version 1 files still load. A layer: u32 kind, string name (u32
///   length + bytes), u32 window, stride, padding, u8 is_linear, u32 in, out, groups, u8 weight
///   bits, u8 weight signed, u8 input bits, f32 input clip value (PACT alpha), float vectors mul,
///   add, weight_scale, weight_zero_point (u32 count
///   + values), u32 code count + the codes packed LSB first at the weight bit-width (two's
///   complement for signed types; binary codes -1/+1 as bits 0/1).
inline constexpr char model_magic[8] = {'M', 'I', 'X', 'Q', 'I', 'M', '\r', '\n'};
inline constexpr std::uint32_t model_format_version = 2;
/// The oldest version load() still reads (version 1 lacks the residual ops, kinds 8..10).
inline constexpr std::uint32_t model_format_oldest_version = 1;
/// Larger files are refused before reading (a guard against nonsense sizes).
inline constexpr std::uint64_t max_model_file_bytes = std::uint64_t(1) << 30;

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
  void bytes(std::span<const std::uint8_t> b) { out_.insert(out_.end(), b.begin(), b.end()); }
  void str(const std::string& s) {
    u32(std::uint32_t(s.size()));
    out_.insert(out_.end(), s.begin(), s.end());
  }
  void floats(const std::vector<float>& v) {
    u32(std::uint32_t(v.size()));
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
  std::vector<float> floats(const char* field) {
    const std::uint32_t n = u32(field);
    need(std::size_t(n) * 4, field);
    std::vector<float> v(n);
    for (auto& f : v) f = f32(field);
    return v;
  }
  const std::string& source() const noexcept { return source_; }
  std::size_t pos() const noexcept { return pos_; }

 private:
  std::span<const std::uint8_t> in_;
  std::size_t pos_ = 0;
  std::string source_;
};

inline void write_codes(byte_writer& w, const layer& l) {
  const int bits = l.weight_type.bits;
  w.u32(std::uint32_t(l.weight_codes.size()));
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

inline std::vector<std::int32_t> read_codes(byte_reader& r, bitwidth t) {
  const std::uint32_t n = r.u32("weight code count");
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

}  // namespace detail

/// The bytes of a model file for `m`.
inline std::vector<std::uint8_t> serialize(const integer_model& m) {
  detail::byte_writer w;
  w.bytes(std::span(reinterpret_cast<const std::uint8_t*>(model_magic), 8));
  w.u32(model_format_version);
  w.u32(std::uint32_t(m.layers().size()));
  for (const layer& l : m.layers()) {
    w.u32(static_cast<std::uint32_t>(l.kind));
    w.str(l.name);
    w.u32(l.window), w.u32(l.stride), w.u32(l.padding);
    w.u8(l.is_linear ? 1 : 0);
    w.u32(l.in_channels), w.u32(l.out_channels), w.u32(l.groups);
    w.u8(std::uint8_t(l.weight_type.bits)), w.u8(l.weight_type.is_signed ? 1 : 0);
    w.u8(std::uint8_t(l.input.bits));
    w.f32(l.input.alpha);
    w.floats(l.mul), w.floats(l.add), w.floats(l.weight_scale), w.floats(l.weight_zero_point);
    detail::write_codes(w, l);
  }
  w.u64(detail::fnv1a(w.data()));
  return std::move(w.data());
}

/// Parses model-file bytes; `source` names them in error messages. format_error for a wrong
/// magic, version, checksum, truncation, trailing bytes or inconsistent layer fields.
inline integer_model deserialize(std::span<const std::uint8_t> bytes,
                                 const std::string& source = "model") {
  using detail::cat;
  if (bytes.size() < 8 + 4 + 4 + 8)
    throw format_error(cat(source, ": ", bytes.size(),
                           " bytes is too short for a mixq integer model (header and checksum "
                           "need 24)"));
  if (std::memcmp(bytes.data(), model_magic, 8) != 0)
    throw format_error(cat(source, ": not a mixq integer model file (bad magic)"));
  detail::byte_reader head(bytes.subspan(8, 4), source);
  const std::uint32_t version = head.u32("version");
  if (version < model_format_oldest_version || version > model_format_version)
    throw format_error(cat(source, ": format version ", version, "; this build reads versions ",
                           model_format_oldest_version, "..", model_format_version));
  const std::uint32_t kinds = version == 1 ? op_kind_count_v1 : op_kind_count;
  const auto body = bytes.first(bytes.size() - 8);
  detail::byte_reader tail(bytes.last(8), source);
  const std::uint64_t stored = tail.u64("checksum");
  if (stored != detail::fnv1a(body))
    throw format_error(cat(source, ": checksum mismatch (the file is corrupt or truncated)"));

  detail::byte_reader r(body.subspan(12), source);
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
    l.name = r.str("layer name", 4096);
    l.window = r.u32("window"), l.stride = r.u32("stride"), l.padding = r.u32("padding");
    l.is_linear = r.u8("is_linear") != 0;
    l.in_channels = r.u32("in channels"), l.out_channels = r.u32("out channels");
    l.groups = r.u32("groups");
    const int wbits = r.u8("weight bits");
    const bool wsigned = r.u8("weight signedness") != 0;
    l.input.bits = r.u8("input bits");
    l.input.alpha = r.f32("input clip value");
    if (wbits < 1 || wbits > 8)
      throw format_error(cat(source, ": layer ", i, " weight bits ", wbits, " (expected 1..8)"));
    l.weight_type = bitwidth{wbits, wsigned};
    l.mul = r.floats("output scales");
    l.add = r.floats("output shifts");
    l.weight_scale = r.floats("weight scales");
    l.weight_zero_point = r.floats("weight zero points");
    l.weight_codes = detail::read_codes(r, l.weight_type);
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
