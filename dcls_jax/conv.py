"""Convolution with a dense kernel: direct (XLA), real-FFT or DFT-matmul algorithm.

DCLS builds a dense, possibly large, kernel and then convolves with it. All
functions here compute the same cross-correlation as `torch.nn.ConvNd` and
`lax.conv_general_dilated` (no kernel flip, no dilation):

    y[n, t, o] = sum_{c, tau} xp[n, s * t + tau, g(o) * Cg + c] k[o, c, tau]

where `xp` is the input after padding (zeros or a torch `padding_mode`), `s`
the stride, `Cg = C_in / groups` and `g(o)` the group of output channel `o`.
The kernel is always in torch layout `(O, C_in // G, *kernel_spatial)`.

Three algorithms:

* "direct": `lax.conv_general_dilated`. Exact up to float summation order.
  This is what cuDNN / the TPU MXU are built for, but XLA's CPU convolution
  is slow for grouped and depthwise layers (30-700x slower than "fft" with
  7x7 to 23x23 kernels, fwd+bwd, on a 2-core CPU).
* "fft": real-FFT convolution. The circular correlation of FFT size F of the
  unpadded input with the kernel, `irfft(rfft(x) * conj(rfft(k)))`, holds
  every output of the zero-padded linear correlation once F is large enough
  that nothing wraps onto a kept output (at most the padded length; see
  `_fft_conv`), rounded up to a 2,3,5-smooth size; channels are contracted
  per frequency (an elementwise product when each group has one input
  channel), and the outputs are gathered from their circular positions and
  subsampled by the stride. Mathematically exact; the float32 round-off is relative to
  `sum |x| |k|` over the window rather than to the output (errors measured
  <= 2e-7 of the largest such sum, as for float32 direct convolution with
  large kernels; see the tests),
  so outputs much smaller than that sum lose relative precision. float32 and
  lower precisions compute in float32 / complex64, float64 in complex128.
* "dft" (1-D only): the same frequency-domain correlation with every transform
  a real matmul by a constant DFT matrix (F = Lp // 2 + 1 frequencies, real and
  imaginary parts as separate rows): spectrum of the input (zero padding is
  columns left out of the matrix), spectrum of the kernel from its d taps, the
  channel contraction of each frequency as one real matmul of (2N, Cg) by
  (Cg, 2 O / G) whose four blocks are the products of real and imaginary parts,
  and an inverse matrix that combines them into exactly the (strided) outputs
  kept. No complex numbers, no FFT and no padded copies: on a CPU it beats
  "fft" on the dense delay layers of SNN-delays (700 -> 256 channels, 25 taps,
  100 steps, batch 64, fwd+bwd: 1.5x), where XLA:CPU spends most of the FFT
  path transposing complex spectra. Its transforms cost O(Lp^2) per channel
  (an FFT's O(Lp log Lp)), so it is meant for short sequences. Its matrices
  are float64-accurate constants; the transforms always run at HIGHEST
  precision and `precision` applies to the channel contraction. Round-off as
  "fft" (sums over Lp terms instead of log2(Lp) stages: measured <= 3e-7 of
  `sum |x| |k|` in the tests).

`choose_algorithm` picks one from shapes at trace time: a cost model
calibrated on CPU, a rule measured on GPU (benchmarks/bench_conv.py).
"""

import functools
import math
import numbers

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

ALGORITHMS = ("direct", "fft", "dft")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_NUMPY_PAD_MODES = {"reflect": "reflect", "replicate": "edge",
                    "circular": "wrap"}


def resolve_padding(padding, input_spatial_shape, kernel_spatial_shape,
                    strides) -> tuple[tuple[int, int], ...]:
  """Returns explicit `(lo, hi)` pads, one pair per spatial axis.

  Args:
    padding: 'SAME' | 'VALID' (case-insensitive) | int | sequence of ints (one
      per spatial axis) | sequence of (lo, hi) pairs. 'SAME' follows lax/Flax:
      output size ceil(in / stride), the odd pad on the high side.
    input_spatial_shape: spatial shape of the unpadded input.
    kernel_spatial_shape: spatial shape of the kernel.
    strides: int or one per spatial axis (only used by 'SAME').
  """
  ndim = len(input_spatial_shape)
  if isinstance(padding, str):
    if padding.upper() == "VALID":
      return ((0, 0),) * ndim
    if padding.upper() == "SAME":
      strides = _normalize_strides(strides, ndim)
      return tuple(map(tuple, lax.padtype_to_pads(
          input_spatial_shape, kernel_spatial_shape, strides, "SAME")))
    raise ValueError(f"padding={padding!r}: expected 'SAME', 'VALID', an int,"
                     f" {ndim} ints or {ndim} (lo, hi) pairs.")
  if _is_int(padding):
    padding = (padding,) * ndim
  try:
    pads = tuple((p, p) if _is_int(p) else tuple(p) for p in padding)
  except TypeError:
    pads = None
  if (pads is None or len(pads) != ndim
      or any(len(p) != 2 or not all(_is_int(q) and q >= 0 for q in p)
             for p in pads)):
    raise ValueError(f"padding={padding!r}: expected 'SAME', 'VALID', a"
                     f" non-negative int, {ndim} non-negative ints or {ndim}"
                     " (lo, hi) pairs of non-negative ints.")
  return tuple((int(lo), int(hi)) for lo, hi in pads)


def conv(x, kernel, *, strides=1, padding="VALID", feature_group_count=1,
         padding_mode="zeros", channels_first=False, algorithm="auto",
         precision=None):
  """N-d cross-correlation with a torch-layout kernel.

  Args:
    x: (N, *spatial, C_in), or (N, C_in, *spatial) if `channels_first`; 1, 2 or
      3 spatial dims.
    kernel: (O, C_in // feature_group_count, *kernel_spatial) (torch layout).
    strides: int or one per spatial axis.
    padding: see `resolve_padding`.
    feature_group_count: number of groups G; G == C_in == O is depthwise.
    padding_mode: 'zeros' | 'reflect' | 'replicate' | 'circular' (torch).
    channels_first: data layout of `x` and of the result.
    algorithm: 'direct', 'fft', 'dft' (1-D only) or 'auto' (`choose_algorithm`).
    precision: passed to `lax.conv_general_dilated` / the frequency contraction.

  Returns:
    (N, *out_spatial, O), or (N, O, *out_spatial) if `channels_first`, in the
    promoted dtype of `x` and `kernel`.
  """
  x, kernel = jnp.asarray(x), jnp.asarray(kernel)
  if algorithm not in ("auto",) + ALGORITHMS:
    raise ValueError(f"algorithm={algorithm!r}: expected 'auto' or one of"
                     f" {ALGORITHMS}.")
  if padding_mode not in PADDING_MODES:
    raise ValueError(f"padding_mode={padding_mode!r}: expected one of"
                     f" {PADDING_MODES}.")
  _check_shapes(x.shape, kernel.shape, feature_group_count, channels_first)
  ndim = kernel.ndim - 2
  if algorithm == "dft" and ndim != 1:
    raise ValueError(f"algorithm='dft' convolves along one spatial axis: got a kernel of shape"
                     f" {tuple(kernel.shape)} with {ndim} spatial axes; use 'fft' or 'direct'.")
  strides = _normalize_strides(strides, ndim)
  sp_axes = _spatial_axes(ndim, channels_first)
  kernel_spatial = kernel.shape[2:]
  pads = resolve_padding(padding, [x.shape[a] for a in sp_axes],
                         kernel_spatial, strides)
  if padding_mode != "zeros":  # Pad here; the convolution then pads nothing.
    x = _pad_with_mode(x, pads, sp_axes, padding_mode)
    pads = ((0, 0),) * ndim
  padded_shape = list(x.shape)
  for a, (lo, hi) in zip(sp_axes, pads):
    padded_shape[a] += lo + hi
  if any(padded_shape[a] < d for a, d in zip(sp_axes, kernel_spatial)):
    raise ValueError(
        f"padding={padding!r}: padded input spatial shape"
        f" {[padded_shape[a] for a in sp_axes]} is smaller than the kernel"
        f" spatial shape {list(kernel_spatial)}.")

  if algorithm == "auto":
    algorithm = choose_algorithm(
        padded_shape, kernel.shape, strides=strides,
        feature_group_count=feature_group_count, channels_first=channels_first,
        asymmetric_padding=any(lo != hi for lo, hi in pads))
  dtype = jnp.result_type(x, kernel)
  x, kernel = x.astype(dtype), kernel.astype(dtype)
  if algorithm == "direct":
    return _direct_conv(x, kernel, strides, pads, feature_group_count,
                        channels_first, precision)
  if algorithm == "dft":
    return _dft_conv(x, kernel, strides, pads, feature_group_count,
                     channels_first, precision)
  return _fft_conv(x, kernel, strides, pads, feature_group_count,
                   channels_first, precision)


def choose_algorithm(input_shape, kernel_shape, *, strides,
                     feature_group_count, channels_first=False,
                     asymmetric_padding=False, backend=None) -> str:
  """Picks 'direct', 'fft' or 'dft' from static shapes (trace time).

  On 'cpu': grouped convolutions that are neither dense nor depthwise (a
  channel multiplier, or several input channels per group) take the FFT,
  whatever the kernel: XLA:CPU's direct path is pathologically slow there
  (FastViT's PatchEmbed 7x7, 64 -> 128 channels in 64 groups, fwd+bwd: 3.4 s
  direct, 0.03 s FFT; 3x3: 0.64 s vs 0.03 s). Otherwise kernels with every
  extent <= 3 (3x3, 1x1, ...) stay direct, and larger ones take the cheaper of
  two fwd+bwd cost estimates, calibrated on CPU (see the constants below);
  where that is the FFT, 1-D convolutions that contract channels (each group
  has several input channels) over at most `_DFT_MAX_LENGTH` padded steps
  take 'dft' instead. On 'gpu' (`_gpu_algorithm`, measured on an H100):
  kernels that contract no channels (depthwise, channel multipliers) take the
  FFT from 7 taps along some axis, 1-D kernels that contract channels take
  'dft' from 16 taps; everything else stays direct. On 'tpu': 'direct', since
  the MXU is built for convolutions (a default, not a measurement).

  Args:
    input_shape: shape of the input as the convolution sees it, i.e. after
      padding (`conv` passes the padded shape).
    kernel_shape: (O, C_in // G, *kernel_spatial).
    strides: int or one per spatial axis.
    feature_group_count: number of groups G.
    channels_first: layout of `input_shape`.
    asymmetric_padding: whether some axis pads more on one side (causal
      1-D convolutions: XLA:CPU's direct path is then far slower).
    backend: 'cpu', 'gpu', 'tpu'; defaults to `jax.default_backend()`.
  """
  backend = backend or jax.default_backend()
  kernel_spatial = kernel_shape[2:]
  if backend == "gpu":
    return _gpu_algorithm(input_shape, kernel_shape, channels_first)
  if backend != "cpu":
    return "direct"
  depthwise = kernel_shape[0] == feature_group_count and kernel_shape[1] == 1
  if feature_group_count > 1 and not depthwise:
    return _frequency_algorithm(input_shape, kernel_shape, channels_first)
  if max(kernel_spatial) <= _MAX_SMALL_KERNEL:
    return "direct"
  ndim = len(kernel_spatial)
  strides = _normalize_strides(strides, ndim)
  batch = input_shape[0]
  in_channels = input_shape[1 if channels_first else -1]
  in_spatial = [input_shape[a] for a in _spatial_axes(ndim, channels_first)]
  out_spatial = [(n - d) // s + 1
                 for n, d, s in zip(in_spatial, kernel_spatial, strides)]

  direct = _direct_seconds(batch, in_channels, out_spatial, kernel_shape,
                           feature_group_count)
  if asymmetric_padding and ndim == 1:
    direct *= _DIRECT_1D_ASYMMETRIC_SLOWDOWN
  frequency = _frequency_algorithm(input_shape, kernel_shape, channels_first)
  frequency_seconds = _fft_seconds(batch, in_channels, in_spatial, kernel_shape)
  if frequency == "dft":
    frequency_seconds *= _DFT_SECONDS_PER_FFT_SECOND
  return "direct" if frequency_seconds >= direct else frequency


def _gpu_algorithm(input_shape, kernel_shape, channels_first):
  """'direct' unless the kernel is long enough for a frequency algorithm to win on a GPU (see the table below)."""
  contracts_channels = kernel_shape[1] > 1
  if not contracts_channels and max(kernel_shape[2:]) >= _GPU_MIN_FFT_TAPS:
    return "fft"
  if contracts_channels and len(kernel_shape) == 3 and kernel_shape[2] >= _GPU_MIN_DFT_TAPS:
    return _frequency_algorithm(input_shape, kernel_shape, channels_first)
  return "direct"


def _frequency_algorithm(input_shape, kernel_shape, channels_first):
  """'dft' for short 1-D convolutions that contract channels, else 'fft'."""
  steps = input_shape[-1 if channels_first else 1]
  if len(kernel_shape) == 3 and kernel_shape[1] > 1 and steps <= _DFT_MAX_LENGTH:
    return "dft"
  return "fft"


# CPU cost model: seconds of jitted fwd+bwd (grad wrt x and kernel), fitted on
# the 2-core x86 CPU this was written on (jax 0.10.2, float32) over 43 shapes:
# 1-3 spatial dims, dense / grouped / depthwise, kernels 3-31, strides 1-2.
#
# direct: XLA:CPU spends as much on a grouped or depthwise convolution as on the
#   dense one over all C_in channels, or more. With W = N * prod(out) * prod(d)
#   windows, W * O * C_in MACs plus W * (C_in + O) memory traffic fit 1-D/2-D
#   dense and depthwise shapes within 0.7x-1.35x (small or strided depthwise
#   ones run 3-6x slower still). 3-D runs ~5x slower, groups with C_in // G > 1
#   10x-80x slower. E.g. depthwise, batch 8, 96 channels, 56x56, 17x17: 1.71 s
#   (FFT: 0.042 s).
# fft: P = prod(F) FFT points (F from the padded size, as fitted; `_fft_conv`
#   now transforms at F <= that, so the estimate errs towards 'direct'),
#   Pr = P // F[-1] * (F[-1] // 2 + 1) frequencies:
#   input and output transforms, N * (C_in + O) * P * log2(P); kernel
#   transforms, O * Cg * P * log2(P), dearer per point (many small transforms
#   and a large spectrum to move); the channel contraction, N * Pr * O * Cg
#   complex MACs. Fit within 0.4x-1.5x.
# 1-D with asymmetric padding (the causal delay layers of SNN-delays): XLA:CPU's
#   direct fwd+bwd ran 14x-50x slower than the fit (e.g. batch 64, 100 steps,
#   140 -> 256 channels, 25 taps, pads (24, 12): 6.7 s; the FFT: 0.11 s), against
#   ~1x with symmetric pads.
# Small kernels stay direct by policy, although on this CPU the FFT also won
# for 3x3 depthwise (19x), 3x3 grouped (19x) and 3x3x3 dense (2x) layers.
# dft vs fft, 1-D, fwd+bwd (with the kernel gradient): 'dft' won 1.1x-1.7x
#   from 50 to 1000 padded steps with dense or grouped channels (e.g. SNN-delays'
#   700 -> 256 channels, batch 64, 124 steps, 25 taps: 0.36 s -> 0.22 s), lost
#   2x at 4000 steps (its transforms grow as steps^2) and 6x on depthwise
#   layers (no channel contraction to share the transforms' cost). Its cost is
#   the FFT estimate times 0.6, the median dft / fft time of the dense 1-D rows
#   of benchmarks/bench_conv.py (0.47-0.82, 5-49 taps).
# Check (bench_conv on this CPU, 2026-11-26): the pick was the fastest
#   algorithm on all 28 depthwise ConvNeXt-T shapes with 5x5-31x31 kernels
#   (3x3 stays direct by the policy above: 1.5x-8x slower there) and on the 12
#   dense 1-D shapes within 1.07x, where before the dft factor it took direct
#   at 9 and 13 taps (up to 1.84x slower).
# GPU (benchmarks/bench_conv.py on an NVIDIA H100, jax 0.11.2, float32, fwd+bwd, channels-last, 'SAME'):
#   depthwise 2-D at the ConvNeXt-T stages (batch 8; 96@56x56 ... 768@7x7): direct won at 3x3 and 5x5, the FFT
#   from 7x7 on, by 1.4x-3.1x at 7x7 and 1.4x-40x at 17x17-31x31 (96@56x56, 23x23: 13.9 ms direct, 0.35 ms FFT);
#   dense 1-D (batch 64, 100 steps, 700 -> 256 and 256 -> 256): direct won at 5 taps (0.31 vs 0.45 ms dft), 'dft'
#   at 25 (0.52 vs 0.65 ms) and 49 taps (0.76 vs 2.17 ms); linear in between, they cross near 15 taps. Dense
#   2-D/3-D kernels were not measured and stay direct.
_GPU_MIN_FFT_TAPS = 7
_GPU_MIN_DFT_TAPS = 16
_MAX_SMALL_KERNEL = 3
_DFT_MAX_LENGTH = 1024
_DIRECT_SECONDS_PER_MAC = 1.6e-11
_DIRECT_SECONDS_PER_WINDOW_CHANNEL = 4.8e-10
_DIRECT_3D_SLOWDOWN = 5
_DIRECT_1D_ASYMMETRIC_SLOWDOWN = 30
_GROUPED_DIRECT_SLOWDOWN = 10
_FFT_SECONDS_PER_DATA_POINT = 2.6e-10
_FFT_SECONDS_PER_KERNEL_POINT = 9.6e-10
_FFT_SECONDS_PER_COMPLEX_MAC = 2.1e-10
_DFT_SECONDS_PER_FFT_SECOND = 0.6


def _direct_seconds(batch, in_channels, out_spatial, kernel_shape, groups):
  out_channels, group_channels, *kernel_spatial = kernel_shape
  windows = batch * math.prod(out_spatial) * math.prod(kernel_spatial)
  seconds = (windows * out_channels * in_channels * _DIRECT_SECONDS_PER_MAC
             + windows * (in_channels + out_channels)
             * _DIRECT_SECONDS_PER_WINDOW_CHANNEL)
  if len(kernel_spatial) == 3:
    seconds *= _DIRECT_3D_SLOWDOWN
  if groups > 1 and group_channels > 1:
    seconds *= _GROUPED_DIRECT_SLOWDOWN
  return seconds


def _fft_seconds(batch, in_channels, in_spatial, kernel_shape):
  out_channels, group_channels, *_ = kernel_shape
  fft_shape = [_fast_fft_size(n) for n in in_spatial]
  points = math.prod(fft_shape)
  freqs = points // fft_shape[-1] * (fft_shape[-1] // 2 + 1)
  point_logs = points * math.log2(points)
  return (batch * (in_channels + out_channels) * point_logs
          * _FFT_SECONDS_PER_DATA_POINT
          + out_channels * group_channels * point_logs
          * _FFT_SECONDS_PER_KERNEL_POINT
          + batch * freqs * out_channels * group_channels
          * _FFT_SECONDS_PER_COMPLEX_MAC)


def _direct_conv(x, kernel, strides, pads, groups, channels_first, precision):
  spatial = "DHW"[-(kernel.ndim - 2):]
  data_spec = "NC" + spatial if channels_first else "N" + spatial + "C"
  return lax.conv_general_dilated(
      x, kernel, window_strides=strides, padding=pads,
      dimension_numbers=(data_spec, "OI" + spatial, data_spec),
      feature_group_count=groups, precision=precision)


def _fft_conv(x, kernel, strides, pads, groups, channels_first, precision):
  """Valid cross-correlation of the zero-padded `x` via real FFTs.

  The zero padding is not materialised: the circular correlation c of the
  unpadded input with the kernel (both zero-filled to the FFT size F) holds
  output t at index t * s - lo (mod F) whenever F >= max(d, n + lo,
  max(d - lo, 1) + (out - 1) s) along each axis (n input, d kernel, lo low
  pad, s stride, out outputs): no product of an input sample with a kernel
  tap that the padded correlation would not make wraps onto a kept index, and
  the kept indices are distinct. That F is
  smaller than the padded length whenever the kernel overhangs the input
  (ConvNeXt's 7x7 maps with 17x17 kernels: 18 instead of 24).
  """
  ndim = kernel.ndim - 2
  sp_axes = _spatial_axes(ndim, channels_first)
  kernel_axes = tuple(range(2, kernel.ndim))
  compute_dtype = jnp.float64 if x.dtype == jnp.float64 else jnp.float32
  sizes = [x.shape[a] for a in sp_axes]
  outs = [(n + lo + hi - d) // s + 1
          for n, (lo, hi), d, s in zip(sizes, pads, kernel.shape[2:], strides)]
  fft_shape = [_fast_fft_size(max(d, n + lo, max(d - lo, 1) + (out - 1) * s))
               for n, (lo, _), d, s, out in zip(sizes, pads, kernel.shape[2:],
                                                 strides, outs)]

  # FFT(circular correlation of x and k) = FFT(x) * conj(FFT(k)).
  x_freq = jnp.fft.rfftn(x.astype(compute_dtype), s=fft_shape, axes=sp_axes)
  k_freq = jnp.conj(jnp.fft.rfftn(kernel.astype(compute_dtype), s=fft_shape,
                                  axes=kernel_axes))
  y_freq = _contract_channels(x_freq, k_freq, groups, channels_first,
                              precision)
  y = jnp.fft.irfftn(y_freq, s=fft_shape, axes=sp_axes)

  # Output t sits at t * s - lo (mod F): roll by lo, then take every s-th.
  y = jnp.roll(y, [lo for lo, _ in pads], axis=sp_axes)
  start, limit, step = [0] * y.ndim, list(y.shape), [1] * y.ndim
  for a, out, s in zip(sp_axes, outs, strides):
    limit[a], step[a] = (out - 1) * s + 1, s
  return lax.slice(y, start, limit, step).astype(x.dtype)


def _dft_conv(x, kernel, strides, pads, groups, channels_first, precision):
  """1-D valid cross-correlation of the zero-padded `x` via real DFT matmuls.

  The spectra X of the input and K of the kernel meet in one of two ways
  (Y = X conj(K) per frequency, channel-contracted):

  * "4 products": one matmul per frequency and group, (Re X; Im X) (2N, Cg)
    by (Re K, Im K)^T (Cg, 2 O/G), whose four blocks the inverse combines.
  * "3 products" (Karatsuba): Re X Re K, Im X Im K and (Re X + Im X)(Re K +
    Im K) as 3F batched matmuls (N, Cg) by (Cg, O/G); a quarter fewer
    multiply-adds, and every operand and result lies slot-major, so the
    inverse needs no transpose, but both spectra have 3F rows instead of 2F.

  `_dft_uses_three_products` picks the one that moves less memory.
  """
  ((lo, hi),), (stride,) = pads, strides
  out_dtype = x.dtype
  compute_dtype = jnp.float64 if x.dtype == jnp.float64 else jnp.float32
  batch, steps = x.shape[0], x.shape[2 if channels_first else 1]
  out_channels, group_channels, taps = kernel.shape
  length = lo + steps + hi
  three = _dft_uses_three_products(batch, out_channels, group_channels * groups)
  x_dft, kernel_dft, inverse_dft = (jnp.asarray(m) for m in _dft_matrices(
      length, taps, lo, steps, stride, three, jnp.dtype(compute_dtype).name))
  highest = lax.Precision.HIGHEST

  # Input spectrum, (S, N, C): one row block per slot S of the scheme. The
  # channels-last input goes time-major ((T, N, C): a plain matmul); its
  # output comes back from time-major too, so that a caller holding
  # time-major sequences (SNN-delays) pays no transpose at all: XLA cancels
  # its swap of axes against ours.
  x = x.astype(compute_dtype)
  if channels_first:
    x_spec = jnp.einsum("at,nct->anc", x_dft, x, precision=highest)
  else:
    x_spec = jnp.einsum("at,tnc->anc", x_dft, x.swapaxes(0, 1),
                        precision=highest)
  # Kernel spectrum from the (d, O * Cg) taps: (S, O * Cg). The barrier keeps
  # that transpose of the kernel a copy of its own: XLA:CPU would otherwise
  # fold it into the matmul and, in the gradient, transpose the (larger)
  # spectrum instead.
  taps_first = lax.optimization_barrier(
      jnp.moveaxis(kernel.astype(compute_dtype), -1, 0).reshape(taps, -1))
  k_spec = jnp.matmul(kernel_dft, taps_first, precision=highest)

  slots = x_dft.shape[0]
  x_spec = x_spec.reshape(slots, batch, groups, group_channels)
  k_spec = k_spec.reshape(slots, groups, out_channels // groups, group_channels)
  if three:  # (3F, N, O), rows (product, f)
    products = _grouped_products(x_spec, k_spec, precision)
    spec = "tsf,sfnp->npt" if channels_first else "tsf,sfnp->tnp"
  else:  # (F, 2N, 2 O): rows (f, Re | Im of X), columns (Re | Im of K, o)
    freqs = slots // 2
    products = _grouped_products(
        x_spec.reshape(freqs, 2 * batch, groups, group_channels),
        k_spec.reshape(freqs, 2, groups, out_channels // groups,
                       group_channels).swapaxes(1, 2).reshape(
                           freqs, groups, -1, group_channels),
        precision)
    if groups > 1:  # columns (g, Re | Im, o') -> (Re | Im, g, o')
      products = products.reshape(freqs, 2 * batch, groups, 2, -1).swapaxes(2, 3)
    spec = "tfhj,fhnjp->npt" if channels_first else "tfhj,fhnjp->tnp"
  products = products.reshape(inverse_dft.shape[1:3] + (batch,)
                              + inverse_dft.shape[3:] + (out_channels,))
  y = jnp.einsum(spec, inverse_dft, products, precision=highest)
  return (y if channels_first else y.swapaxes(0, 1)).astype(out_dtype)


def _grouped_products(lhs, rhs, precision):
  """(B, M, G, Cg) x (B, G, P, Cg) -> (B, M, G, P): per batch row and group."""
  if lhs.shape[2] == 1:  # a plain batched matmul (XLA:CPU is slower with G)
    return jnp.einsum("bmc,bpc->bmp", lhs[:, :, 0], rhs[:, 0],
                      precision=precision)[:, :, None]
  return jnp.einsum("bmgc,bgpc->bmgp", lhs, rhs, precision=precision)


def _dft_uses_three_products(batch, out_channels, in_channels):
  """Whether the 3-product scheme of `_dft_conv` moves less memory.

  Per frequency it writes and reads one more (N, C) and (O, C) spectrum row;
  the 4-product scheme instead transposes its (2N, 2 O) products for the
  inverse. E.g. SNN-delays' layers (batch 256, 140 or 256 -> 256 channels):
  3 products, fwd+bwd 1.2x faster; 700 -> 256 channels at batch 64: 4
  products, 1.25x faster (2-core CPU).
  """
  return 4 * batch * out_channels > in_channels * (out_channels + batch)


@functools.lru_cache(maxsize=64)
def _dft_matrices(length, taps, lo, steps, stride, three_products, dtype):
  """Constant matrices of `_dft_conv`, F = length // 2 + 1 frequencies.

  With A the real and B the imaginary part of the rfft over `length` points of
  the input placed at [lo, lo + steps), and C, D those of conj(rfft(kernel)),
  the correlation's spectrum is Y = (AC - BD) + i (AD + BC).

  Returns:
    x_dft: (S, steps): the rows of A, B (and A + B) of the scheme.
    kernel_dft: (S, taps): the rows of C, D (and C + D).
    inverse_dft: output t (at t * stride) = irfft(Y)[t * stride] from the
      products: 3 products (AC, BD, (A + B)(C + D)), (out_steps, 3, F); 4
      products ([A; B] times [C, D]), (out_steps, F, 2, 2).
  """
  freqs = length // 2 + 1
  out_steps = (length - taps) // stride + 1
  angle = 2 * np.pi / length
  f = np.arange(freqs)[:, None]
  t, d = np.arange(lo, lo + steps), np.arange(taps)
  real_x, imag_x = np.cos(angle * f * t), -np.sin(angle * f * t)
  real_k, imag_k = np.cos(angle * f * d), np.sin(angle * f * d)
  # irfft weights: 1 for f = 0 (and f = length / 2), 2 for the conjugate pairs.
  weight = np.where((f[:, 0] == 0) | (2 * f[:, 0] == length), 1.0, 2.0) / length
  phase = angle * np.arange(0, out_steps * stride, stride)[:, None] * f[:, 0]
  cos, sin = weight * np.cos(phase), weight * np.sin(phase)
  # irfft(Y)[t] = sum_f cos Re(Y) - sin Im(Y).
  if three_products:  # Re Y = AC - BD, Im Y = (A + B)(C + D) - AC - BD
    x_dft = np.concatenate([real_x, imag_x, real_x + imag_x])
    kernel_dft = np.concatenate([real_k, imag_k, real_k + imag_k])
    inverse_dft = np.stack([cos + sin, sin - cos, -sin], axis=1)
  else:
    x_dft = np.stack([real_x, imag_x], axis=1).reshape(2 * freqs, steps)
    kernel_dft = np.stack([real_k, imag_k], axis=1).reshape(2 * freqs, taps)
    inverse_dft = np.stack([np.stack([cos, -sin], -1),
                            np.stack([-sin, -cos], -1)], -2)
  return (x_dft.astype(dtype), kernel_dft.astype(dtype),
          inverse_dft.astype(dtype))


def _contract_channels(x_freq, k_freq, groups, channels_first, precision):
  """Per-frequency grouped channel contraction.

  Args:
    x_freq: (N, *F, C) or (N, C, *F) spectrum of the input.
    k_freq: (O, Cg, *F) conjugated spectrum of the kernel.
  Returns:
    (N, *F, O) or (N, O, *F).
  """
  out_channels, group_channels, *freq = k_freq.shape
  k_freq = k_freq.reshape(groups, out_channels // groups, group_channels,
                          *freq)  # (G, O/G, Cg, *F)
  if group_channels == 1:
    # Depthwise or channel multiplier: an explicit broadcast product rather
    # than a batched matmul with contraction size 1, which only the compiler
    # can turn back into one (XLA:CPU does today; both timed the same).
    k_freq = k_freq[:, :, 0]  # (G, O/G, *F)
    if channels_first:
      y_freq = x_freq[:, :, None] * k_freq  # (N, G, O/G, *F)
    else:
      y_freq = x_freq[..., None] * jnp.moveaxis(k_freq, (0, 1), (-2, -1))
  else:
    f = "xyz"[:len(freq)]
    if channels_first:
      x_freq = _split_axis(x_freq, 1, (groups, group_channels))
      spec = f"ngc{f},goc{f}->ngo{f}"
    else:
      x_freq = _split_axis(x_freq, x_freq.ndim - 1, (groups, group_channels))
      spec = f"n{f}gc,goc{f}->n{f}go"
    y_freq = jnp.einsum(spec, x_freq, k_freq, precision=precision)
  # Merge (G, O/G) into O.
  g_axis = 1 if channels_first else y_freq.ndim - 2
  return y_freq.reshape(y_freq.shape[:g_axis] + (-1,)
                        + y_freq.shape[g_axis + 2:])


def _split_axis(x, axis, sizes):
  return x.reshape(x.shape[:axis] + tuple(sizes) + x.shape[axis + 1:])


def _pad_with_mode(x, pads, sp_axes, padding_mode):
  """Pads the spatial axes with a torch padding mode."""
  if padding_mode == "reflect":
    for a, (lo, hi) in zip(sp_axes, pads):
      if max(lo, hi) >= x.shape[a]:
        raise ValueError(
            f"padding={pads} with padding_mode='reflect' needs pads smaller"
            f" than the input spatial size {x.shape[a]}.")
  return jnp.pad(x, _pad_width(x.ndim, sp_axes, pads),
                 mode=_NUMPY_PAD_MODES[padding_mode])


def _pad_width(rank, sp_axes, pads):
  """`jnp.pad` widths: `pads` on the spatial axes, none elsewhere."""
  width = [(0, 0)] * rank
  for a, p in zip(sp_axes, pads):
    width[a] = p
  return width


def _check_shapes(x_shape, kernel_shape, groups, channels_first):
  if len(kernel_shape) not in (3, 4, 5):
    raise ValueError(f"kernel.shape={tuple(kernel_shape)}: expected (O, C_in //"
                     " G, *kernel_spatial) with 1, 2 or 3 spatial dims.")
  if len(x_shape) != len(kernel_shape):
    raise ValueError(f"x.shape={tuple(x_shape)} and kernel.shape="
                     f"{tuple(kernel_shape)}: expected x rank == kernel rank"
                     f" == {len(kernel_shape)}.")
  if not _is_int(groups) or groups < 1:
    raise ValueError(f"feature_group_count={groups!r}: expected an int >= 1.")
  in_channels = x_shape[1 if channels_first else -1]
  if in_channels != kernel_shape[1] * groups:
    raise ValueError(
        f"x has {in_channels} channels: expected kernel.shape[1] *"
        f" feature_group_count = {kernel_shape[1]} * {groups}"
        f" = {kernel_shape[1] * groups}.")
  if kernel_shape[0] % groups:
    raise ValueError(f"kernel.shape[0]={kernel_shape[0]} (output channels):"
                     f" expected a multiple of feature_group_count={groups}.")


def _normalize_strides(strides, ndim):
  try:
    normalized = (strides,) * ndim if _is_int(strides) else tuple(strides)
  except TypeError:
    normalized = ()
  if len(normalized) != ndim or not all(
      _is_int(s) and s >= 1 for s in normalized):
    raise ValueError(f"strides={strides!r}: expected an int >= 1 or {ndim}"
                     " of them.")
  return tuple(int(s) for s in normalized)


def _is_int(x):
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _spatial_axes(ndim, channels_first):
  return tuple(range(2, 2 + ndim)) if channels_first else tuple(
      range(1, 1 + ndim))


def _fast_fft_size(n):
  """Smallest 2,3,5-smooth integer >= n."""
  while True:
    m = n
    for p in (2, 3, 5):
      while m % p == 0:
        m //= p
    if m == 1:
      return n
    n += 1
