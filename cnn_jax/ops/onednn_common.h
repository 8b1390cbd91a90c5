// Shared by the oneDNN custom calls of cnn_jax.ops (onednn_conv.cc, onednn_batch_norm.cc),
// compiled together into one library by cnn_jax.ops.onednn_library.

#ifndef CNN_JAX_OPS_ONEDNN_COMMON_H_
#define CNN_JAX_OPS_ONEDNN_COMMON_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace cnn_jax_onednn {

// One CPU engine for the process (inline: one instance across the library's files).
inline dnnl::engine& Engine() {
  static dnnl::engine* eng = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *eng;
}

inline dnnl::memory::data_type DnnlType(xla::ffi::DataType t) {
  switch (t) {
    case xla::ffi::DataType::F32: return dnnl::memory::data_type::f32;
    case xla::ffi::DataType::BF16: return dnnl::memory::data_type::bf16;
    default: return dnnl::memory::data_type::undef;
  }
}

// Scratchpads are passed per call ("user" mode), so XLA may run two primitives at once.
inline dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// A per-thread scratchpad buffer of at least desc's size, as a oneDNN memory.
inline dnnl::memory Scratchpad(const dnnl::memory::desc& desc) {
  thread_local std::vector<uint8_t> buf;
  if (buf.size() < desc.get_size()) buf.resize(desc.get_size());
  return dnnl::memory(desc, Engine(), buf.data());
}

// A process-wide cache of primitives (and what goes with them) keyed by shape and dtype.
template <typename Entry>
class PrimitiveCache {
 public:
  template <typename Make>
  std::shared_ptr<Entry> Get(const std::string& key, Make make) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = map_.find(key);
    if (it != map_.end()) return it->second;
    auto e = std::make_shared<Entry>(make());
    map_.emplace(key, e);
    return e;
  }

 private:
  std::mutex mu_;
  std::unordered_map<std::string, std::shared_ptr<Entry>> map_;
};

}  // namespace cnn_jax_onednn

#endif  // CNN_JAX_OPS_ONEDNN_COMMON_H_
