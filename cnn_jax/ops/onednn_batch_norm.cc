// oneDNN batch normalization (training: batch statistics) as two XLA FFI handlers, forward
// and backward, for cnn_jax.ops.onednn_batch_norm, which documents them.
//
// x, y, dy, dx: NHWC, f32 or bf16 (one dtype). scale, shift, mean, var, dscale, dshift: f32
// (C). mean and var are the batch's, var biased (divided by N*H*W), as oneDNN and flax compute
// them. Attributes: epsilon; relu (ReLU fused after the normalization: oneDNN's
// fuse_norm_relu, whose forward writes a workspace, ws, the ReLU mask that the backward reads
// to mask dy; sized by CnnJaxOnednnBatchNormWorkspaceBytes). Primitives are cached by shape, dtype, epsilon and relu.

#include <cstdint>
#include <cstring>
#include <string>
#include <unordered_map>
#include <utility>

#include "onednn_common.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using cnn_jax_onednn::DnnlType;
using cnn_jax_onednn::Engine;
using cnn_jax_onednn::UserScratchpad;

namespace {

dnnl::normalization_flags Flags(bool relu) {
  auto f = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;
  return relu ? f | dnnl::normalization_flags::fuse_norm_relu : f;
}

struct Entry {
  dnnl::primitive prim;
  memory::desc scratch;
  memory::desc workspace;
};

cnn_jax_onednn::PrimitiveCache<Entry>& Cache() {
  static auto* cache = new cnn_jax_onednn::PrimitiveCache<Entry>();
  return *cache;
}

dnnl::batch_normalization_forward::primitive_desc FwdDesc(const memory::desc& data,
                                                          float epsilon, bool relu) {
  return dnnl::batch_normalization_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, data, data, epsilon, Flags(relu),
      UserScratchpad());
}

// The workspace buffer XLA allocated must hold oneDNN's.
ffi::Error CheckWorkspace(const memory::desc& need, size_t have) {
  if (need.get_size() > have)
    return ffi::Error::InvalidArgument(
        "cnn_jax onednn batch norm: workspace buffer of " + std::to_string(have) +
        " bytes, oneDNN needs " + std::to_string(need.get_size()));
  return ffi::Error::Success();
}

// Runs e's primitive on args, with the workspace (ws, ws_bytes) when relu.
ffi::Error Execute(const Entry& e, std::unordered_map<int, memory> args, bool relu, void* ws,
                   size_t ws_bytes) {
  if (relu) {
    if (ffi::Error err = CheckWorkspace(e.workspace, ws_bytes); err.failure()) return err;
    args.insert({DNNL_ARG_WORKSPACE, memory(e.workspace, Engine(), ws)});
  }
  dnnl::stream s(Engine());
  e.prim.execute(s, args);
  s.wait();
  return ffi::Error::Success();
}

ffi::Error OnednnError(const dnnl::error& err) {
  return ffi::Error::Internal(std::string("cnn_jax onednn batch norm: oneDNN error: ") +
                              err.what());
}

// Checks x (and the C-sized f32 vectors' lengths); sets the data and per-channel descriptors.
ffi::Error Describe(ffi::AnyBuffer x, std::initializer_list<int64_t> vector_sizes,
                    memory::desc* data, memory::desc* channel, std::string* key, char kind,
                    float epsilon, bool relu) {
  auto d = x.dimensions();
  memory::data_type dt = DnnlType(x.element_type());
  if (d.size() != 4 || dt == memory::data_type::undef)
    return ffi::Error::InvalidArgument(
        "cnn_jax onednn batch norm: x must be rank-4 NHWC float32 or bfloat16");
  for (int64_t n : vector_sizes)
    if (n != d[3])
      return ffi::Error::InvalidArgument(
          "cnn_jax onednn batch norm: scale, shift, mean and var must have C entries");
  *data = memory::desc({d[0], d[3], d[1], d[2]}, dt, memory::format_tag::nhwc);
  *channel = memory::desc({d[3]}, memory::data_type::f32, memory::format_tag::a);
  *key = std::string(1, kind);
  for (auto v : d) *key += std::to_string(v) + ',';
  uint32_t eps_bits;  // exact: to_string(float) keeps 6 decimals, so 1e-7 and 1e-8 would collide
  std::memcpy(&eps_bits, &epsilon, sizeof eps_bits);
  *key += std::to_string(static_cast<int>(dt)) + ',' + std::to_string(eps_bits) + ',' +
          std::to_string(relu);
  return ffi::Error::Success();
}

ffi::Error BatchNormFwd(ffi::AnyBuffer x, ffi::Buffer<ffi::F32> scale,
                        ffi::Buffer<ffi::F32> shift, ffi::Result<ffi::AnyBuffer> y,
                        ffi::Result<ffi::Buffer<ffi::F32>> mean,
                        ffi::Result<ffi::Buffer<ffi::F32>> var, ffi::Result<ffi::AnyBuffer> ws,
                        float epsilon, bool relu) {
  if (y->element_type() != x.element_type())
    return ffi::Error::InvalidArgument("cnn_jax onednn batch norm: y must have x's dtype");
  memory::desc data, channel;
  std::string key;
  if (ffi::Error err = Describe(x, {scale.element_count(), shift.element_count(),
                                    mean->element_count(), var->element_count()},
                                &data, &channel, &key, 'f', epsilon, relu);
      err.failure())
    return err;
  try {
    auto& eng = Engine();
    auto e = Cache().Get(key, [&]() {
      auto pd = FwdDesc(data, epsilon, relu);
      return Entry{dnnl::batch_normalization_forward(pd), pd.scratchpad_desc(),
                   pd.workspace_desc()};
    });
    std::unordered_map<int, memory> args = {
        {DNNL_ARG_SRC, memory(data, eng, x.untyped_data())},
        {DNNL_ARG_DST, memory(data, eng, y->untyped_data())},
        {DNNL_ARG_SCALE, memory(channel, eng, scale.typed_data())},
        {DNNL_ARG_SHIFT, memory(channel, eng, shift.typed_data())},
        {DNNL_ARG_MEAN, memory(channel, eng, mean->typed_data())},
        {DNNL_ARG_VARIANCE, memory(channel, eng, var->typed_data())},
        {DNNL_ARG_SCRATCHPAD, cnn_jax_onednn::Scratchpad(e->scratch)}};
    return Execute(*e, std::move(args), relu, ws->untyped_data(), ws->size_bytes());
  } catch (const dnnl::error& err) {
    return OnednnError(err);
  }
}

ffi::Error BatchNormBwd(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Buffer<ffi::F32> mean,
                        ffi::Buffer<ffi::F32> var, ffi::Buffer<ffi::F32> scale,
                        ffi::AnyBuffer ws, ffi::Result<ffi::AnyBuffer> dx,
                        ffi::Result<ffi::Buffer<ffi::F32>> dscale,
                        ffi::Result<ffi::Buffer<ffi::F32>> dshift, float epsilon, bool relu) {
  if (dy.element_type() != x.element_type() || dx->element_type() != x.element_type() ||
      dy.dimensions().size() != 4 || dy.element_count() != x.element_count())
    return ffi::Error::InvalidArgument(
        "cnn_jax onednn batch norm: dy and dx must have x's shape and dtype");
  memory::desc data, channel;
  std::string key;
  if (ffi::Error err = Describe(x, {mean.element_count(), var.element_count(),
                                    scale.element_count(), dscale->element_count(),
                                    dshift->element_count()},
                                &data, &channel, &key, 'b', epsilon, relu);
      err.failure())
    return err;
  try {
    auto& eng = Engine();
    auto e = Cache().Get(key, [&]() {
      dnnl::batch_normalization_backward::primitive_desc pd(
          eng, dnnl::prop_kind::backward, data, data, data, epsilon, Flags(relu),
          FwdDesc(data, epsilon, relu), UserScratchpad());
      return Entry{dnnl::batch_normalization_backward(pd), pd.scratchpad_desc(),
                   pd.workspace_desc()};
    });
    std::unordered_map<int, memory> args = {
        {DNNL_ARG_SRC, memory(data, eng, x.untyped_data())},
        {DNNL_ARG_DIFF_DST, memory(data, eng, dy.untyped_data())},
        {DNNL_ARG_MEAN, memory(channel, eng, mean.typed_data())},
        {DNNL_ARG_VARIANCE, memory(channel, eng, var.typed_data())},
        {DNNL_ARG_SCALE, memory(channel, eng, scale.typed_data())},
        {DNNL_ARG_DIFF_SRC, memory(data, eng, dx->untyped_data())},
        {DNNL_ARG_DIFF_SCALE, memory(channel, eng, dscale->typed_data())},
        {DNNL_ARG_DIFF_SHIFT, memory(channel, eng, dshift->typed_data())},
        {DNNL_ARG_SCRATCHPAD, cnn_jax_onednn::Scratchpad(e->scratch)}};
    return Execute(*e, std::move(args), relu, ws.untyped_data(), ws.size_bytes());
  } catch (const dnnl::error& err) {
    return OnednnError(err);
  }
}

}  // namespace

// The bytes of the fuse_norm_relu workspace (the ReLU mask) oneDNN's forward writes for an
// (n, h, w, c) NHWC input, f32 or bf16 (is_bf16), for Python to size the FFI output exactly
// (the jit kernels keep one bit per element, the reference one byte); -1 on a oneDNN error.
extern "C" int64_t CnnJaxOnednnBatchNormWorkspaceBytes(int64_t n, int64_t h, int64_t w,
                                                       int64_t c, int is_bf16) {
  try {
    memory::desc data({n, c, h, w}, is_bf16 ? memory::data_type::bf16 : memory::data_type::f32,
                      memory::format_tag::nhwc);
    return static_cast<int64_t>(FwdDesc(data, 1e-5f, true).workspace_desc().get_size());
  } catch (const dnnl::error&) {
    return -1;
  }
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnJaxOnednnBatchNormFwd, BatchNormFwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<float>("epsilon")
                                  .Attr<bool>("relu"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnJaxOnednnBatchNormBwd, BatchNormBwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("epsilon")
                                  .Attr<bool>("relu"));
