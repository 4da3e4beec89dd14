// Saving and loading a module's parameters and buffers. The format is checked on load
// (magic, version, every length against the bytes left, shapes against the module, and a
// 64-bit FNV-1a checksum); saving writes a temporary file and renames it over the target.
//
// Layout (little-endian): "MIXQPARM" u32 version=1, u32 count, then per entry u32 kind
// (0 parameter, 1 buffer), u32 name length, name, u32 rank, u64 dims[rank], f32 values;
// finally u64 checksum of everything before it.
#pragma once

#include <bit>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "mixq/nn/module.hpp"

namespace mixq::nn {

static_assert(std::endian::native == std::endian::little,
              "the parameter file format is little-endian; add byte swapping for this target");

namespace detail {
inline constexpr char param_magic[8] = {'M', 'I', 'X', 'Q', 'P', 'A', 'R', 'M'};
inline constexpr std::uint32_t param_version = 1;

inline std::uint64_t fnv1a64(const unsigned char* p, std::size_t n) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (std::size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

template <class T>
void put(std::vector<unsigned char>& out, const T& v) {
  const auto* p = reinterpret_cast<const unsigned char*>(&v);
  out.insert(out.end(), p, p + sizeof(T));
}

/// Bounds-checked reader over a loaded file; every short read names the field.
struct byte_reader {
  const unsigned char* p;
  std::size_t left;
  const std::string& file;
  void need(std::size_t n, const char* field) const {
    if (n > left)
      throw format_error(mixq::detail::cat(file, ": truncated while reading ", field, " (needs ", n,
                                           " bytes, ", left, " left)"));
  }
  template <class T>
  T get(const char* field) {
    need(sizeof(T), field);
    T v;
    std::memcpy(&v, p, sizeof(T));
    p += sizeof(T);
    left -= sizeof(T);
    return v;
  }
  void bytes(void* dst, std::size_t n, const char* field) {
    need(n, field);
    std::memcpy(dst, p, n);
    p += n;
    left -= n;
  }
};

inline std::vector<std::pair<std::string, var>> state_entries(const module& m,
                                                              std::vector<int>& kinds) {
  auto all = m.named_parameters();
  kinds.assign(all.size(), 0);
  for (auto& b : m.named_buffers()) {
    all.push_back(b);
    kinds.push_back(1);
  }
  return all;
}
}  // namespace detail

/// Writes every parameter and buffer of `m` to `path` (via `path`.tmp and a rename, so a
/// crash never leaves a half-written file under the final name). io_error on failure.
inline void save_parameters(const module& m, const std::string& path) {
  std::vector<int> kinds;
  const auto entries = detail::state_entries(m, kinds);
  std::vector<unsigned char> buf(std::begin(detail::param_magic), std::end(detail::param_magic));
  detail::put(buf, detail::param_version);
  detail::put(buf, std::uint32_t(entries.size()));
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const auto& [name, v] = entries[i];
    detail::put(buf, std::uint32_t(kinds[i]));
    detail::put(buf, std::uint32_t(name.size()));
    buf.insert(buf.end(), name.begin(), name.end());
    detail::put(buf, std::uint32_t(v.shape().size()));
    for (std::size_t d : v.shape()) detail::put(buf, std::uint64_t(d));
    const auto* f = reinterpret_cast<const unsigned char*>(v.value().data());
    buf.insert(buf.end(), f, f + v.size() * sizeof(float));
  }
  detail::put(buf, detail::fnv1a64(buf.data(), buf.size()));
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw io_error(mixq::detail::cat("cannot open ", tmp, " for writing"));
    out.write(reinterpret_cast<const char*>(buf.data()), std::streamsize(buf.size()));
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      throw io_error(mixq::detail::cat("cannot write ", buf.size(), " bytes to ", tmp));
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw io_error(mixq::detail::cat("cannot rename ", tmp, " to ", path));
  }
}

/// Reads a file written by save_parameters into `m`. The file must hold exactly m's
/// parameters and buffers with the same names and shapes; otherwise format_error (and m is
/// left unchanged). io_error when the file cannot be read.
inline void load_parameters(module& m, const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw io_error(mixq::detail::cat("cannot open ", path, " for reading"));
  const std::streamoff size = in.tellg();
  if (size < 0) throw io_error(mixq::detail::cat("cannot determine the size of ", path));
  std::vector<unsigned char> buf(static_cast<std::size_t>(size));
  in.seekg(0);
  if (!in.read(reinterpret_cast<char*>(buf.data()), size))
    throw io_error(mixq::detail::cat("cannot read ", size, " bytes from ", path));
  if (buf.size() < sizeof(detail::param_magic) + 16)
    throw format_error(
        mixq::detail::cat(path, ": ", buf.size(), " bytes is too short for a mixq parameter file"));
  if (std::memcmp(buf.data(), detail::param_magic, sizeof(detail::param_magic)) != 0)
    throw format_error(mixq::detail::cat(path, ": bad magic, expected \"MIXQPARM\""));
  std::uint64_t stored;
  std::memcpy(&stored, buf.data() + buf.size() - 8, 8);
  if (stored != detail::fnv1a64(buf.data(), buf.size() - 8))
    throw format_error(mixq::detail::cat(path, ": checksum mismatch (file corrupt)"));
  detail::byte_reader r{buf.data() + 8, buf.size() - 16, path};
  const auto version = r.get<std::uint32_t>("version");
  if (version != detail::param_version)
    throw format_error(
        mixq::detail::cat(path, ": version ", version, ", expected ", detail::param_version));
  const auto count = r.get<std::uint32_t>("entry count");
  std::vector<int> kinds;
  const auto entries = detail::state_entries(m, kinds);
  std::map<std::string, std::size_t> index;
  for (std::size_t i = 0; i < entries.size(); ++i) index[entries[i].first] = i;
  if (count != entries.size())
    throw format_error(
        mixq::detail::cat(path, ": holds ", count, " tensors, the module has ", entries.size()));
  std::vector<ftensor> loaded(entries.size());
  std::vector<bool> seen(entries.size(), false);
  for (std::uint32_t e = 0; e < count; ++e) {
    const auto kind = r.get<std::uint32_t>("entry kind");
    const auto len = r.get<std::uint32_t>("name length");
    r.need(len, "name");
    std::string name(len, '\0');
    r.bytes(name.data(), len, "name");
    const auto it = index.find(name);
    if (it == index.end())
      throw format_error(mixq::detail::cat(path, ": tensor \"", name, "\" is not in the module"));
    const std::size_t k = it->second;
    if (seen[k]) throw format_error(mixq::detail::cat(path, ": tensor \"", name, "\" repeated"));
    seen[k] = true;
    if (kind != std::uint32_t(kinds[k]))
      throw format_error(mixq::detail::cat(path, ": tensor \"", name, "\" has kind ", kind,
                                           ", expected ", kinds[k]));
    const auto rank = r.get<std::uint32_t>("rank");
    const shape_t& want = entries[k].second.shape();
    if (rank != want.size())
      throw format_error(mixq::detail::cat(path, ": tensor \"", name, "\" has rank ", rank,
                                           ", expected ", want.size()));
    shape_t shape(rank);
    for (auto& d : shape) d = std::size_t(r.get<std::uint64_t>("dimension"));
    if (shape != want)
      throw format_error(mixq::detail::cat(path, ": tensor \"", name, "\" has shape ",
                                           shape_string(shape), ", the module expects ",
                                           shape_string(want)));
    const std::size_t n = entries[k].second.size();
    r.need(n * sizeof(float), "values");
    loaded[k] = ftensor(shape);
    r.bytes(loaded[k].data(), n * sizeof(float), "values");
  }
  if (r.left != 0)
    throw format_error(
        mixq::detail::cat(path, ": ", r.left, " unexpected bytes after the last tensor"));
  for (std::size_t k = 0; k < entries.size(); ++k) {
    var v = entries[k].second;
    v.value() = std::move(loaded[k]);
  }
}

}  // namespace mixq::nn
