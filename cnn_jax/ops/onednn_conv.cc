// oneDNN 2-D convolution as three XLA FFI handlers (forward, input gradient, kernel gradient)
// for cnn_jax.ops.onednn_conv, which compiles this file on first use and documents it.
//
// Layouts are JAX's: x and y NHWC, w HWIO as (K_h, K_w, C_in / G, C_out) for G groups with
// the group index major within C_out (lax.conv_general_dilated's feature_group_count). The
// oneDNN memory descriptors below state those layouts by strides, so no user-side transpose
// exists; oneDNN picks its own kernel layout for the (small) kernel tensor and reorders it.
// Attributes: strides (s_h, s_w), padding (top, bottom, left, right), dilation (d_h, d_w)
// counted as in lax (1 = dense; oneDNN counts from 0), groups G. The *Bias handlers add a
// float32 bias (C_out,) inside the forward primitive and return its gradient (sum of dy over
// N, H, W, float32) from the kernel-gradient primitive, as PyTorch's oneDNN convs do; XLA
// would otherwise spend a pass over y on each (a blocked reduce-window for the gradient).
// Primitives are cached by shape; scratchpads are per call (onednn_common.h).

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>

#include "onednn_common.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using cnn_jax_onednn::DnnlType;
using cnn_jax_onednn::Engine;
using cnn_jax_onednn::UserScratchpad;

namespace {

struct Geometry {
  memory::dims src, dst, wei, wei_strides, strides, dil, pad_l, pad_r;
};

// x (N, H, W, Ci), w (KH, KW, Ci/G, Co), y (N, Ho, Wo, Co) -> oneDNN's logical N,C,H,W and
// [G,] O, I, KH, KW dims with the strides of JAX's row-major buffers.
ffi::Error MakeGeometry(ffi::Span<const int64_t> xd, ffi::Span<const int64_t> wd,
                        ffi::Span<const int64_t> yd, ffi::Span<const int64_t> strides,
                        ffi::Span<const int64_t> padding, ffi::Span<const int64_t> dilation,
                        int64_t groups, Geometry* g) {
  if (xd.size() != 4 || wd.size() != 4 || yd.size() != 4 || strides.size() != 2 ||
      padding.size() != 4 || dilation.size() != 2 || groups < 1)
    return ffi::Error::InvalidArgument(
        "cnn_jax onednn conv: expected rank-4 NHWC/HWIO operands, 2 strides, 4 paddings, "
        "2 dilations and groups >= 1");
  const int64_t kh = wd[0], kw = wd[1], ci_g = wd[2], co = wd[3];
  if (xd[3] != ci_g * groups || co % groups != 0 || yd[3] != co || yd[0] != xd[0])
    return ffi::Error::InvalidArgument(
        "cnn_jax onednn conv: channel or batch sizes of x, w and y do not match");
  g->src = {xd[0], xd[3], xd[1], xd[2]};
  g->dst = {yd[0], yd[3], yd[1], yd[2]};
  if (groups == 1) {
    g->wei = {co, ci_g, kh, kw};
    g->wei_strides = {1, co, kw * ci_g * co, ci_g * co};
  } else {
    g->wei = {groups, co / groups, ci_g, kh, kw};
    g->wei_strides = {co / groups, 1, co, kw * ci_g * co, ci_g * co};
  }
  g->strides = {strides[0], strides[1]};
  g->dil = {dilation[0] - 1, dilation[1] - 1};
  g->pad_l = {padding[0], padding[2]};
  g->pad_r = {padding[1], padding[3]};
  return ffi::Error::Success();
}

std::string Key(char kind, bool bias, const Geometry& g, int dt, int wdt) {
  std::string k(1, kind);
  if (bias) k += 'b';
  for (const memory::dims* v : {&g.src, &g.dst, &g.wei, &g.strides, &g.dil, &g.pad_l, &g.pad_r}) {
    k += '|';
    for (auto d : *v) { k += std::to_string(d); k += ','; }
  }
  k += '|' + std::to_string(dt) + ',' + std::to_string(wdt);
  return k;
}

// One cached primitive and the reorder between the user's HWIO kernel and its kernel layout.
struct Entry {
  dnnl::primitive prim;
  memory::desc scratch;
  memory::desc wei_internal;
  bool reorder = false;
  dnnl::reorder wei_reorder;
};

cnn_jax_onednn::PrimitiveCache<Entry>& Cache() {
  static auto* cache = new cnn_jax_onednn::PrimitiveCache<Entry>();
  return *cache;
}

// bias: an empty desc for none.
dnnl::convolution_forward::primitive_desc FwdDesc(const Geometry& g, memory::data_type dt,
                                                  const memory::desc& src,
                                                  const memory::desc& bias,
                                                  const memory::desc& dst) {
  memory::desc wei_any(g.wei, dt, memory::format_tag::any);
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src,
      wei_any, bias, dst, g.strides, g.dil, g.pad_l, g.pad_r, UserScratchpad());
}

void Finish(Entry& e, const memory::desc& wei_user, const memory::desc& wei_internal,
            bool user_to_internal) {
  e.wei_internal = wei_internal;
  e.reorder = wei_internal != wei_user;
  if (!e.reorder) return;
  auto& eng = Engine();
  e.wei_reorder = user_to_internal
      ? dnnl::reorder(dnnl::reorder::primitive_desc(eng, wei_user, eng, wei_internal))
      : dnnl::reorder(dnnl::reorder::primitive_desc(eng, wei_internal, eng, wei_user));
}

enum Kind : char { kFwd = 'f', kBwdData = 'd', kBwdWeights = 'w' };

// Runs one direction. a, b: the two inputs (fwd: x, w; bwd data: dy, w; bwd weights: x, dy).
// bias: the float32 (C_out,) bias (fwd) or bias gradient (bwd weights), or null for none.
ffi::Error Run(Kind kind, ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out,
               const ffi::AnyBuffer* bias, ffi::Span<const int64_t> strides,
               ffi::Span<const int64_t> padding, ffi::Span<const int64_t> dilation,
               int64_t groups) {
  memory::data_type dt = DnnlType(a.element_type());  // x or dy: the activation dtype
  memory::data_type wdt = kind == kBwdWeights ? DnnlType(out->element_type())
                                              : DnnlType(b.element_type());
  if (dt == memory::data_type::undef || wdt == memory::data_type::undef ||
      (kind != kBwdWeights && wdt != dt) ||
      (kind != kFwd && DnnlType(kind == kBwdData ? out->element_type() : b.element_type()) != dt))
    return ffi::Error::InvalidArgument(
        "cnn_jax onednn conv: activations must be f32 or bf16 and the kernel the same dtype");
  Geometry g;
  ffi::Span<const int64_t> xd = kind == kBwdData ? out->dimensions() : a.dimensions();
  ffi::Span<const int64_t> wd = kind == kBwdWeights ? out->dimensions() : b.dimensions();
  ffi::Span<const int64_t> yd = kind == kFwd ? out->dimensions()
                                             : (kind == kBwdData ? a.dimensions() : b.dimensions());
  if (ffi::Error err = MakeGeometry(xd, wd, yd, strides, padding, dilation, groups, &g);
      err.failure())
    return err;
  if (bias != nullptr && (bias->element_type() != ffi::DataType::F32 ||
                          bias->dimensions().size() != 1 || bias->dimensions()[0] != yd[3]))
    return ffi::Error::InvalidArgument(
        "cnn_jax onednn conv: the bias (and its gradient) must be float32 of shape (C_out,)");
  try {
    auto& eng = Engine();
    memory::desc src(g.src, dt, memory::format_tag::nhwc);
    memory::desc dst(g.dst, dt, memory::format_tag::nhwc);
    memory::desc wei_user(g.wei, wdt, g.wei_strides);
    memory::desc bias_md = bias != nullptr
        ? memory::desc({yd[3]}, memory::data_type::f32, memory::format_tag::a)
        : memory::desc();
    auto e = Cache().Get(Key(kind, bias != nullptr, g, static_cast<int>(dt),
                             static_cast<int>(wdt)), [&]() {
      Entry entry;
      auto hint = FwdDesc(g, dt, src, bias_md, dst);
      if (kind == kFwd) {
        entry.prim = dnnl::convolution_forward(hint);
        entry.scratch = hint.scratchpad_desc();
        Finish(entry, wei_user, hint.weights_desc(), true);
      } else if (kind == kBwdData) {
        memory::desc wei_any(g.wei, dt, memory::format_tag::any);
        dnnl::convolution_backward_data::primitive_desc pd(
            eng, dnnl::algorithm::convolution_direct, src, wei_any, dst, g.strides, g.dil,
            g.pad_l, g.pad_r, hint, UserScratchpad());
        entry.prim = dnnl::convolution_backward_data(pd);
        entry.scratch = pd.scratchpad_desc();
        Finish(entry, wei_user, pd.weights_desc(), true);
      } else {
        memory::desc wei_any(g.wei, wdt, memory::format_tag::any);
        dnnl::convolution_backward_weights::primitive_desc pd(
            eng, dnnl::algorithm::convolution_direct, src, wei_any, bias_md, dst, g.strides,
            g.dil, g.pad_l, g.pad_r, hint, UserScratchpad());
        entry.prim = dnnl::convolution_backward_weights(pd);
        entry.scratch = pd.scratchpad_desc();
        Finish(entry, wei_user, pd.diff_weights_desc(), false);
      }
      return entry;
    });
    dnnl::stream s(eng);
    memory scratch = cnn_jax_onednn::Scratchpad(e->scratch);
    memory wei_m(wei_user, eng, kind == kBwdWeights ? out->untyped_data() : b.untyped_data());
    memory wei_p = e->reorder ? memory(e->wei_internal, eng) : wei_m;
    memory act(kind == kBwdData ? dst : src, eng, a.untyped_data());
    std::unordered_map<int, memory> args;
    if (kind == kFwd) {
      args = {{DNNL_ARG_SRC, act}, {DNNL_ARG_WEIGHTS, wei_p},
              {DNNL_ARG_DST, memory(dst, eng, out->untyped_data())}};
    } else if (kind == kBwdData) {
      args = {{DNNL_ARG_DIFF_DST, act}, {DNNL_ARG_WEIGHTS, wei_p},
              {DNNL_ARG_DIFF_SRC, memory(src, eng, out->untyped_data())}};
    } else {
      args = {{DNNL_ARG_SRC, act}, {DNNL_ARG_DIFF_DST, memory(dst, eng, b.untyped_data())},
              {DNNL_ARG_DIFF_WEIGHTS, wei_p}};
    }
    if (bias != nullptr)
      args.insert({kind == kFwd ? DNNL_ARG_BIAS : DNNL_ARG_DIFF_BIAS,
                   memory(bias_md, eng, bias->untyped_data())});
    args.insert({DNNL_ARG_SCRATCHPAD, scratch});
    // The kernel comes in (forward, input gradient) or goes out (kernel gradient) in HWIO.
    if (kind != kBwdWeights && e->reorder) e->wei_reorder.execute(s, wei_m, wei_p);
    e->prim.execute(s, args);
    if (kind == kBwdWeights && e->reorder) e->wei_reorder.execute(s, wei_p, wei_m);
    s.wait();
  } catch (const dnnl::error& err) {
    return ffi::Error::Internal(std::string("cnn_jax onednn conv: oneDNN error: ") + err.what());
  }
  return ffi::Error::Success();
}

ffi::Error ConvFwd(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y,
                   ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,
                   ffi::Span<const int64_t> dilation, int64_t groups) {
  return Run(kFwd, x, w, y, nullptr, strides, padding, dilation, groups);
}

ffi::Error ConvFwdBias(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer bias,
                       ffi::Result<ffi::AnyBuffer> y, ffi::Span<const int64_t> strides,
                       ffi::Span<const int64_t> padding, ffi::Span<const int64_t> dilation,
                       int64_t groups) {
  return Run(kFwd, x, w, y, &bias, strides, padding, dilation, groups);
}

ffi::Error ConvBwdData(ffi::AnyBuffer dy, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> dx,
                       ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,
                       ffi::Span<const int64_t> dilation, int64_t groups) {
  return Run(kBwdData, dy, w, dx, nullptr, strides, padding, dilation, groups);
}

ffi::Error ConvBwdWeights(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dw,
                          ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,
                          ffi::Span<const int64_t> dilation, int64_t groups) {
  return Run(kBwdWeights, x, dy, dw, nullptr, strides, padding, dilation, groups);
}

// The bias gradient is written through an AnyBuffer view of the result (Run reads only its
// dtype, dimensions and data pointer).
ffi::Error ConvBwdWeightsBias(ffi::AnyBuffer x, ffi::AnyBuffer dy,
                              ffi::Result<ffi::AnyBuffer> dw, ffi::Result<ffi::AnyBuffer> db,
                              ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,
                              ffi::Span<const int64_t> dilation, int64_t groups) {
  ffi::AnyBuffer db_view = *db;
  return Run(kBwdWeights, x, dy, dw, &db_view, strides, padding, dilation, groups);
}

}  // namespace

#define CNN_JAX_CONV_ATTRS                           \
      .Attr<ffi::Span<const int64_t>>("strides")     \
      .Attr<ffi::Span<const int64_t>>("padding")     \
      .Attr<ffi::Span<const int64_t>>("dilation")    \
      .Attr<int64_t>("groups")
#define CNN_JAX_CONV_BINDING \
  ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>() \
      CNN_JAX_CONV_ATTRS

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnJaxOnednnConvFwd, ConvFwd, CNN_JAX_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnJaxOnednnConvBwdData, ConvBwdData, CNN_JAX_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnJaxOnednnConvBwdWeights, ConvBwdWeights, CNN_JAX_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    CnnJaxOnednnConvFwdBias, ConvFwdBias,
    ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
        .Ret<ffi::AnyBuffer>() CNN_JAX_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    CnnJaxOnednnConvBwdWeightsBias, ConvBwdWeightsBias,
    ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
        .Ret<ffi::AnyBuffer>() CNN_JAX_CONV_ATTRS);

extern "C" int CnnJaxOnednnVersion() {
  const dnnl_version_t* v = dnnl_version();
  return static_cast<int>(v->major * 10000 + v->minor * 100 + v->patch);
}
