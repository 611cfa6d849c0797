"""Tests for dcls_jax.conv: the FFT and DFT algorithms against the direct one and torch.

Tolerance. Direct convolution is exact up to float summation order. FFT
convolution rounds in the transforms, and those errors spread over all outputs:
an output's error is of order eps * log2(P) * sum_tau |x| |k| (P FFT points,
eps = 6e-8 the float32 unit round-off), not relative to the output itself. So
we compare against ATOL * scale, where `scale` is the same convolution of |x|
with |k| (for gradients, the same vjp of |cotangent| through |k| or |x|). With
log2(P) <= 10 here that bound is ~6e-7; the measured errors are <= 2e-7 of scale
on these cases and 1e-7 on ConvNeXt-size layers (where the float32 direct
reference itself errs by up to 2.4e-7). The DFT algorithm (1-D) sums Lp terms per
transform instead of log2(Lp) stages: measured <= 3e-7 of scale here. ATOL = 1e-5
leaves a wide margin and still fails on any indexing, flip or padding bug (errors
of order 1).
"""

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from dcls_jax import conv as conv_lib
from dcls_jax.conv import ALGORITHMS, choose_algorithm, conv, resolve_padding

ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("highest_matmul_precision")


# (input spatial, C_in, O, kernel spatial, groups, strides, padding, mode)
CASES = [
    ((11,), 4, 6, (3,), 1, 1, "SAME", "zeros"),
    ((11,), 4, 6, (4,), 2, 2, "valid", "reflect"),
    ((10,), 4, 4, (5,), 4, 1, 2, "circular"),
    ((7,), 3, 6, (12,), 3, 1, [(6, 5)], "zeros"),  # kernel > input
    ((9,), 2, 4, (6,), 1, 3, "SAME", "replicate"),
    ((9, 8), 4, 4, (3, 3), 1, 1, "SAME", "zeros"),
    ((9, 8), 4, 8, (4, 5), 2, (2, 1), "SAME", "replicate"),
    ((9, 8), 6, 6, (7, 7), 6, 1, (3, 4), "circular"),  # depthwise
    ((9, 8), 6, 6, (7, 6), 6, 1, (3, 4), "reflect"),
    ((6, 5), 4, 4, (9, 8), 4, 2, "SAME", "zeros"),  # kernel > input
    ((6, 5), 2, 6, (3, 4), 2, 1, ((1, 2), (0, 3)), "zeros"),  # multiplier 3
    ((5, 6, 7), 2, 4, (3, 2, 3), 1, 1, "SAME", "reflect"),
    ((5, 6, 7), 4, 4, (4, 3, 5), 4, (1, 2, 2), ((1, 2), (0, 3), (2, 2)),
     "zeros"),
    ((5, 6, 7), 4, 2, (3, 3, 3), 2, 2, "VALID", "circular"),
    ((4, 5, 3), 3, 3, (6, 7, 5), 3, 1, "SAME", "replicate"),  # kernel > input
]


CASES_1D = [case for case in CASES if len(case[0]) == 1] + [
    ((9,), 6, 4, (5,), 2, 1, [(4, 0)], "zeros"),  # causal, as the SNN delay layers
    ((13,), 5, 3, (6,), 1, 2, [(2, 3)], "reflect"),
]


def _case_id(case):
  spatial, c, o, d, g, s, p, mode = case
  return f"{len(spatial)}d-d{d}-g{g}-s{s}-{p}-{mode}".replace(" ", "")


def _inputs(case, channels_first, seed=0):
  spatial, c, o, d, g, *_ = case
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((2, *spatial, c)).astype(np.float32)
  if channels_first:
    x = np.moveaxis(x, -1, 1)
  k = rng.standard_normal((o, c // g, *d)).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(k)


def _kwargs(case, channels_first):
  *_, g, s, p, mode = case
  return dict(strides=s, padding=p, feature_group_count=g, padding_mode=mode,
              channels_first=channels_first)


def _direct(x, k, **kw):
  return conv(x, k, algorithm="direct", precision=lax.Precision.HIGHEST, **kw)


def _assert_close(actual, expected, scale):
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape
  np.testing.assert_allclose(actual, expected, rtol=0,
                             atol=ATOL * float(np.max(scale)))


@pytest.mark.parametrize("channels_first", [False, True])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_fft_matches_direct(case, channels_first):
  x, k = _inputs(case, channels_first)
  kw = _kwargs(case, channels_first)

  @jax.jit
  def run(x, k):
    return (conv(x, k, algorithm="fft", **kw), _direct(x, k, **kw),
            _direct(jnp.abs(x), jnp.abs(k), **kw))

  _assert_close(*run(x, k))


def _assert_gradients_match_direct(case, algorithm):
  x, k = _inputs(case, channels_first=False)
  kw = _kwargs(case, channels_first=False)
  r = np.random.default_rng(1).standard_normal(
      jax.eval_shape(lambda x, k: _direct(x, k, **kw), x, k).shape)

  @jax.jit
  def run(x, k, r):
    loss = lambda x, k, a: jnp.sum(conv(x, k, algorithm=a, **kw) * r)
    grads = {a: jax.grad(loss, argnums=(0, 1))(x, k, a)
             for a in (algorithm, "direct")}
    # conv is bilinear: the vjp at (|x|, |k|) of |r| is the absolute scale.
    _, vjp = jax.vjp(lambda x, k: _direct(x, k, **kw), jnp.abs(x), jnp.abs(k))
    return grads[algorithm], grads["direct"], vjp(jnp.abs(r))

  for actual, expected, scale in zip(*run(x, k, r.astype(np.float32))):
    _assert_close(actual, expected, scale)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_fft_gradients_match_direct(case):
  _assert_gradients_match_direct(case, "fft")


@pytest.fixture(params=["3 products", "4 products"])
def dft_scheme(request, monkeypatch):
  """Runs a 'dft' test under each way of combining the spectra (conv._dft_conv)."""
  three = request.param == "3 products"
  monkeypatch.setattr(conv_lib, "_dft_uses_three_products", lambda *shape: three)


@pytest.mark.parametrize("channels_first", [False, True])
@pytest.mark.parametrize("case", CASES_1D, ids=_case_id)
def test_dft_matches_direct(case, channels_first, dft_scheme):
  x, k = _inputs(case, channels_first)
  kw = _kwargs(case, channels_first)
  _assert_close(conv(x, k, algorithm="dft", **kw), _direct(x, k, **kw),
                _direct(jnp.abs(x), jnp.abs(k), **kw))


@pytest.mark.parametrize("case", CASES_1D, ids=_case_id)
def test_dft_gradients_match_direct(case, dft_scheme):
  _assert_gradients_match_direct(case, "dft")


def test_dft_is_real_matmuls():
  """No FFT and no complex numbers: matmuls by constant DFT matrices."""
  x = jax.ShapeDtypeStruct((64, 100, 700), jnp.float32)
  k = jax.ShapeDtypeStruct((256, 700, 25), jnp.float32)
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda x, k: jnp.sum(conv(
      x, k, padding=[(24, 12)], algorithm="dft")), argnums=(0, 1)))(x, k))
  assert "dot_general" in jaxpr
  assert "fft" not in jaxpr and "complex" not in jaxpr


def test_dft_scheme_follows_memory_traffic():
  # SNN-delays' hidden layers (batch 256): 3 products; 700 -> 256 at batch 64: 4.
  assert conv_lib._dft_uses_three_products(256, 256, 140)
  assert conv_lib._dft_uses_three_products(256, 256, 256)
  assert not conv_lib._dft_uses_three_products(64, 256, 700)


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("ndim,algorithm", [
    (ndim, a) for ndim in (1, 2, 3) for a in ALGORITHMS if a != "dft" or ndim == 1])
def test_matches_torch(ndim, mode, algorithm):
  torch = pytest.importorskip("torch")
  f = torch.nn.functional
  spatial, d = (7, 6, 5)[:ndim], (4, 3, 3)[:ndim]
  pads = ((2, 1), (1, 2), (0, 2))[:ndim]
  strides = (2, 1, 2)[:ndim]
  groups, channels = 2, 4
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, channels, *spatial)).astype(np.float32)
  k = rng.standard_normal((6, channels // groups, *d)).astype(np.float32)

  torch_pad = [p for lo_hi in reversed(pads) for p in lo_hi]
  xt = f.pad(torch.from_numpy(x).double(), torch_pad,
             mode="constant" if mode == "zeros" else mode)
  torch_conv = (f.conv1d, f.conv2d, f.conv3d)[ndim - 1]
  expected = torch_conv(xt, torch.from_numpy(k).double(), stride=strides,
                        groups=groups).numpy()
  scale = torch_conv(xt.abs(), torch.from_numpy(np.abs(k)).double(),
                     stride=strides, groups=groups).numpy()

  actual = conv(x, k, strides=strides, padding=pads, feature_group_count=groups,
                padding_mode=mode, channels_first=True, algorithm=algorithm)
  _assert_close(actual, expected, scale)


@pytest.mark.parametrize("algorithm,case", [("fft", CASES[6]), ("dft", CASES_1D[-2])])
def test_jit_and_vmap(algorithm, case):
  x, k = _inputs(case, channels_first=False)
  kw = _kwargs(case, channels_first=False)
  f = lambda x: conv(x, k, algorithm=algorithm, **kw)
  xs = jnp.stack([x, 2 * x, -x])
  expected = jnp.stack([f(xi) for xi in xs])
  np.testing.assert_allclose(jax.jit(jax.vmap(f))(xs), expected, rtol=1e-6,
                             atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("algorithm,case", [("fft", CASES[7]), ("dft", CASES_1D[-2])])
def test_low_precision_returns_input_dtype(dtype, algorithm, case):
  x, k = _inputs(case, channels_first=False)
  x, k = x.astype(dtype), k.astype(dtype)
  kw = _kwargs(case, channels_first=False)
  actual = conv(x, k, algorithm=algorithm, **kw)
  assert actual.dtype == dtype
  # Computed in float32: only the final rounding to `dtype` (eps / 2) remains.
  x32, k32 = x.astype(jnp.float32), k.astype(jnp.float32)
  scale = np.max(_direct(jnp.abs(x32), jnp.abs(k32), **kw))
  np.testing.assert_allclose(actual.astype(jnp.float32),
                             _direct(x32, k32, **kw),
                             rtol=float(jnp.finfo(dtype).eps),
                             atol=ATOL * scale)


@pytest.mark.parametrize("algorithm,case,channels_first", [("fft", CASES[12], False), ("dft", CASES_1D[-2], True)])
def test_float64(algorithm, case, channels_first):
  with jax.enable_x64(True):
    x, k = _inputs(case, channels_first)
    x, k = x.astype(jnp.float64), k.astype(jnp.float64)
    kw = _kwargs(case, channels_first)
    actual = conv(x, k, algorithm=algorithm, **kw)
    assert actual.dtype == jnp.float64
    expected = conv(x, k, algorithm="direct", **kw)
    scale = np.max(conv(jnp.abs(x), jnp.abs(k), algorithm="direct", **kw))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-13 * scale)


def test_fft_depthwise_is_elementwise():
  """Depthwise spectra are multiplied elementwise, not by a size-1 matmul."""
  x = jax.ShapeDtypeStruct((8, 56, 56, 96), jnp.float32)
  k = jax.ShapeDtypeStruct((96, 1, 17, 17), jnp.float32)
  f = lambda x, k: conv(x, k, padding="SAME", feature_group_count=96,
                        algorithm="fft")
  assert "dot_general" not in str(jax.make_jaxpr(jax.grad(
      lambda x, k: jnp.sum(f(x, k)), argnums=(0, 1)))(x, k))


@pytest.mark.parametrize("kernel_shape,groups", [
    ((96, 96, 3, 3), 1), ((96, 1, 3, 3), 96), ((96, 96, 1, 1), 1),
    ((96, 1, 1, 1), 96)])
def test_choose_algorithm_small_kernels_stay_direct(kernel_shape, groups):
  assert choose_algorithm((8, 58, 58, 96), kernel_shape, strides=1,
                          feature_group_count=groups, backend="cpu") == "direct"


@pytest.mark.parametrize("kernel_shape,groups", [
    ((128, 1, 7, 7), 64), ((128, 1, 3, 3), 64), ((1024, 1, 1, 1), 512), ((96, 2, 3, 3), 48)])
def test_choose_algorithm_grouped_neither_dense_nor_depthwise_uses_fft_on_cpu(kernel_shape, groups):
  # a channel multiplier (FastViT's PatchEmbed, conv_exp) or several channels per group: XLA:CPU is slow there
  shape = (2, 34, 34, kernel_shape[1] * groups)
  assert choose_algorithm(shape, kernel_shape, strides=1, feature_group_count=groups, backend="cpu") == "fft"


def test_choose_algorithm_large_depthwise_uses_fft_on_cpu():
  kwargs = dict(strides=1, feature_group_count=96)
  padded = (8, 56 + 16, 56 + 16, 96)
  assert choose_algorithm(padded, (96, 1, 17, 17), backend="cpu",
                          **kwargs) == "fft"
  assert choose_algorithm((8, 96, 72, 72), (96, 1, 17, 17), backend="cpu",
                          channels_first=True, **kwargs) == "fft"


@pytest.mark.parametrize("shape", [(8, 20, 140, 256, 25), (50, 50, 24, 12, 7), (256, 100, 140, 256, 25)])
def test_choose_algorithm_causal_1d_dense_uses_dft_on_cpu(shape):
  """SNN delay layers (pads (K - 1, K // 2)): XLA's direct path measured 6-50x slower than the FFT, which is
  1.2-1.7x slower than the DFT matmuls."""
  batch, steps, c_in, c_out, taps = shape
  padded = (batch, steps + taps - 1 + taps // 2, c_in)
  kwargs = dict(strides=1, feature_group_count=1, backend="cpu")
  assert choose_algorithm(padded, (c_out, c_in, taps), asymmetric_padding=True, **kwargs) == "dft"


@pytest.mark.parametrize("c_in,taps,expected", [(700, 5, "direct"), (256, 5, "direct"), (700, 9, "dft"),
                                                 (700, 13, "dft"), (256, 9, "dft")])
def test_choose_algorithm_dense_1d_on_cpu(c_in, taps, expected):
  """benchmarks/bench_conv.py, 2-core CPU (batch 64, 100 steps, -> 256 channels): direct won at 5 taps (0.044 s vs
  0.071 s dft at 256 channels), dft from 9 (0.17 s vs 0.21 s direct at 700 channels; 1.8x at 13)."""
  padded = (64, 100 + taps - 1, c_in)
  assert choose_algorithm(padded, (256, c_in, taps), strides=1, feature_group_count=1, backend="cpu") == expected


@pytest.mark.parametrize("input_shape,kernel_shape,groups,expected", [
    ((8, 60, 60, 96), (96, 1, 5, 5), 96, "direct"),  # small depthwise: cuDNN
    ((8, 62, 62, 96), (96, 1, 7, 7), 96, "fft"),  # depthwise from 7 taps (measured 1.4x-3.1x at 7x7)
    ((8, 72, 72, 96), (96, 1, 17, 17), 96, "fft"),  # the DCLS ConvNeXt recipes (18x)
    ((2, 40, 40, 64), (128, 1, 7, 7), 64, "fft"),  # a channel multiplier contracts nothing either
    ((8, 62, 62, 96), (96, 96, 7, 7), 1, "direct"),  # dense 2-D: not measured, cuDNN
    ((64, 104, 700), (256, 700, 5), 1, "direct"),  # short dense 1-D (direct 0.31 ms, dft 0.45 ms)
    ((64, 124, 140), (256, 140, 25), 1, "dft"),  # SNN delays (dft 0.52 ms, direct 0.65 ms)
    ((4, 4064, 32), (32, 32, 65), 1, "fft"),  # long: the DFT matrices grow as steps^2
])
def test_choose_algorithm_on_gpu(input_shape, kernel_shape, groups, expected):
  """The H100 measurements of benchmarks/bench_conv.py; TPUs stay direct (not measured)."""
  kwargs = dict(strides=1, feature_group_count=groups)
  assert choose_algorithm(input_shape, kernel_shape, backend="gpu", **kwargs) == expected
  assert choose_algorithm(input_shape, kernel_shape, backend="tpu", **kwargs) == "direct"


@pytest.mark.parametrize("input_shape,kernel_shape,groups", [
    ((8, 530, 256), (256, 1, 31), 256),  # depthwise: nothing to contract, elementwise FFT products
    ((4, 4064, 32), (32, 32, 65), 1),  # long: the DFT matrices grow as steps^2
    ((2, 34, 34, 64), (128, 32, 7, 7), 2),  # 2-D
])
def test_choose_algorithm_keeps_dft_to_short_1d_channel_contractions(input_shape, kernel_shape, groups):
  assert choose_algorithm(input_shape, kernel_shape, strides=1, feature_group_count=groups, backend="cpu") != "dft"


@pytest.mark.parametrize("kernel_size,primitive", [
    (3, "conv_general_dilated"), (17, "fft")])
def test_auto_dispatches_on_cpu(kernel_size, primitive):
  if jax.default_backend() != "cpu":
    pytest.skip("the cost model is CPU-only")
  x = jax.ShapeDtypeStruct((8, 56, 56, 96), jnp.float32)
  k = jax.ShapeDtypeStruct((96, 1, kernel_size, kernel_size), jnp.float32)
  jaxpr = jax.make_jaxpr(lambda x, k: conv(
      x, k, padding="SAME", feature_group_count=96))(x, k)
  assert primitive in str(jaxpr)


def test_resolve_padding():
  assert resolve_padding("VALID", (10, 9), (3, 4), 1) == ((0, 0), (0, 0))
  # SAME: out = ceil(10 / 3) = 4, total pad = 3 * 3 + 4 - 10 = 3, odd on high.
  assert resolve_padding("same", (10,), (4,), 3) == ((1, 2),)
  assert resolve_padding("SAME", (10, 9), (3, 4), (1, 2)) == tuple(
      map(tuple, lax.padtype_to_pads((10, 9), (3, 4), (1, 2), "SAME")))
  assert resolve_padding(2, (10, 9), (3, 4), 1) == ((2, 2), (2, 2))
  assert resolve_padding((1, 2), (10, 9), (3, 4), 1) == ((1, 1), (2, 2))
  assert resolve_padding([(1, 2), [0, 3]], (10, 9), (3, 4), 1) == (
      (1, 2), (0, 3))


@pytest.mark.parametrize("padding", [
    "FULL", (1, 2, 3), -1, (1, -1), ((1, 2), (3,)), ((1, 2),), 1.5])
def test_resolve_padding_rejects(padding):
  with pytest.raises(ValueError, match="padding"):
    resolve_padding(padding, (10, 9), (3, 4), 1)


@pytest.mark.parametrize("x_shape,k_shape,kwargs,match", [
    ((2, 8, 4), (4, 4, 3, 3), {}, r"x\.shape.*kernel\.shape.*rank"),
    ((2, 8, 8, 4, 4, 4), (4, 4, 3, 3, 3, 3), {}, r"kernel\.shape"),
    ((2, 8, 8, 6), (4, 4, 3, 3), {}, "feature_group_count"),
    ((2, 8, 8, 4), (6, 1, 3, 3), {"feature_group_count": 4},
     r"kernel\.shape\[0\]"),
    ((2, 8, 8, 4), (4, 4, 3, 3), {"feature_group_count": 0},
     "feature_group_count"),
    ((2, 8, 8, 4), (4, 4, 3, 3), {"algorithm": "winograd"}, "algorithm"),
    ((2, 8, 8, 4), (4, 4, 3, 3), {"padding_mode": "mirror"}, "padding_mode"),
    ((2, 8, 8, 4), (4, 4, 3, 3), {"algorithm": "dft"}, "algorithm='dft'.*2 spatial axes"),
    ((2, 8, 8, 4), (4, 4, 3, 3), {"strides": 0}, "strides"),
    ((2, 8, 8, 4), (4, 4, 3, 3), {"strides": (1, 1, 1)}, "strides"),
    ((2, 8, 8, 4), (4, 4, 3, 3), {"padding": "full"}, "padding"),
    ((2, 8, 8, 4), (4, 4, 3, 3), {"padding": 8, "padding_mode": "reflect"},
     "padding.*reflect"),
    ((2, 8, 8, 4), (4, 4, 11, 3), {"padding": 1}, "padding.*kernel"),
])
def test_conv_rejects(x_shape, k_shape, kwargs, match):
  with pytest.raises(ValueError, match=match):
    conv(jnp.zeros(x_shape), jnp.zeros(k_shape), **kwargs)
