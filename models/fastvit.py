"""FastViT-SA for audio tagging, with DCLS (DCLS-Audio), in Flax NNX, and its inference-time reparameterisation.

The FastViT of Vasu et al. 2023 as DCLS-Audio (Khalfaoui-Hassani et al. 2023, spec ``audio.md`` 4.5) builds it for
AudioSet: a 1-channel stem of 2 mel x 16 frame patches, and the 7x7 depthwise conv of every ConvFFN and of RepCPE
either kept (``dwconv='conv'``, the baseline) or replaced by a Gaussian DCLS conv (``'dcls'``: d 23, 26 elements)
whose positions and sigmas are shared by the reference's rule (``dcls_jax.sharing.GrowingWidth``: new ones whenever
the width grows; RepCPE comes first in its stage, so it creates the positions that stage's ConvFFNs reuse).

Data: normalised log-mel spectrograms (N, n_mels, T, 1), channels last, H = mel (low -> high), W = time ->
logits (N, num_classes). Shapes for 128 x 1001: stem 64 x 62 (the last T mod 16 frames are dropped), then each
PatchEmbed halves with ceil: 32 x 31, 16 x 16, 8 x 8. Every norm is a BatchNorm with PyTorch semantics
(``models.layers.BatchNorm``); GELU is the exact (erf) one.

  patch_embed     conv (2, 16) stride (2, 16), no bias, no norm, no activation
  network         per stage i: [RepCPE if pos_embs[i]] -> layers[i] blocks -> [PatchEmbed to dims[i+1]]
  RepMixerBlock   x = RepMixer(x);  x = x + drop_path(layer_scale * ConvFFN(x))
  AttentionBlock  x = x + drop_path(layer_scale_1 * MHSA(BN(x)));  x = x + drop_path(layer_scale_2 * ConvFFN(x))
  RepMixer        x + layer_scale * (mixer(x) - norm(x))     mixer = BN + BN(dw kxk) + BN(dw 1x1), norm = BN
  ConvFFN         depthwise 7x7 (no bias) -> BN -> 1x1 conv dim -> mlp_ratio dim -> GELU -> 1x1 conv back
  RepCPE          x + depthwise 7x7 (with bias)
  PatchEmbed      BN(conv 7x7 s2) + BN(conv 3x3 s2), grouped by input channel -> GELU(BN(y) + BN(conv 1x1 (y)))
  conv_exp        BN(grouped conv 3x3) + BN(grouped conv 1x1), dims[-1] -> 2 dims[-1] -> squeeze-excite -> GELU
  head            mean over H, W (= ``features``) -> Linear

Training form and inference form: ``reparameterize(model)`` returns the inference form, folding exactly as the
reference's ``reparameterize()`` methods do: every conv + BN into a conv with bias, a BN-only branch into an identity
kernel, 1x1 branches zero-padded to k x k, the branches summed. A ``MobileOneBlock`` becomes ``reparam_conv`` (then
its squeeze-excite and activation), the PatchEmbed 7x7 + 3x3 pair ``lkb_reparam``, RepMixer one depthwise k x k
conv ``reparam_conv`` (its layer scale folded in). RepCPE and ConvFFN stay as they are (a DCLS kernel is no dense
parameter to fold into; the reference skips them too). The folds use the BatchNorm running statistics, so the
inference form equals the training form in eval mode.

Submodule names follow the PyTorch state dict (``network.{i}.{j}.token_mixer.mixer.rbr_conv.0.conv``, ...);
``models/fastvit_io.py`` converts checkpoints and runs the reference fixtures.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dcls_jax import sharing
from models import convnext
from models import dcls_audio
from models import layers
from models.layers import BatchNorm

_TORCH_CONV = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")  # torch's default: U(+-1/sqrt(fan_in))
_TRUNC_NORMAL, _ZEROS = convnext.TRUNC_NORMAL, convnext.ZEROS  # Linear and ConvFFN weights, biases
TOKEN_MIXERS = ("repmixer", "attention")
STEM_PATCH = (2, 16)  # (mel, time) size and stride of the stem conv
REPMIXER_KERNEL = 3  # RepMixer's depthwise kernel size
DOWN_PATCH, DOWN_SMALL, DOWN_STRIDE = 7, 3, 2  # PatchEmbed's large and small kernel sizes, and their stride
HEAD_DIM = 32  # MHSA channels per head
CLS_RATIO = 2  # conv_exp widens dims[-1] by this factor
SE_RATIO = 16  # squeeze-excite reduction: channels // 16


def _conv(in_dim: int, out_dim: int, kernel_size: int, *, stride: int = 1, groups: int = 1, use_bias: bool,
          kernel_init=_TORCH_CONV, rngs: nnx.Rngs) -> layers.Conv:
  """A k x k conv with PyTorch's symmetric padding k // 2 (output ceil(n / stride)), computed by ``dcls_jax.conv``
  (XLA:CPU is ~100x slower on the grouped convs with a channel multiplier of PatchEmbed and conv_exp)."""
  return layers.Conv(in_dim, out_dim, (kernel_size, kernel_size), strides=stride, padding=kernel_size // 2,
                     feature_group_count=groups, use_bias=use_bias, kernel_init=kernel_init, bias_init=_ZEROS,
                     rngs=rngs)


def _conv_of(kernel: jax.Array, bias: jax.Array, *, stride: int, groups: int) -> layers.Conv:
  """The ``_conv`` that holds ``kernel`` (k, k, in // groups, out) and ``bias`` (out,): a folded branch sum."""
  k, _, group_in, out_dim = kernel.shape
  return layers.Conv(group_in * groups, out_dim, (k, k), strides=stride, padding=k // 2, feature_group_count=groups,
                     kernel_init=lambda *_: kernel, bias_init=lambda *_: bias, rngs=nnx.Rngs(0))


def _fold_bn(kernel: jax.Array, bn: BatchNorm) -> tuple[jax.Array, jax.Array]:
  """conv (kernel (kh, kw, in // groups, out), no bias) then BN with running statistics -> one conv's (kernel, bias):
  kernel * gamma / std, beta - mean * gamma / std, std = sqrt(var + eps)."""
  std = jnp.sqrt(bn.var[...] + bn.epsilon)
  return kernel * (bn.scale[...] / std), bn.bias[...] - bn.mean[...] * bn.scale[...] / std


def _identity_kernel(channels: int, groups: int, kernel_size: int) -> jax.Array:
  """(k, k, channels // groups, channels): 1 at the centre tap of input channel o mod (channels // groups) for each
  output o, so that the grouped conv is the identity."""
  group_in = channels // groups
  kernel = np.zeros((kernel_size, kernel_size, group_in, channels), np.float32)
  kernel[kernel_size // 2, kernel_size // 2, np.arange(channels) % group_in, np.arange(channels)] = 1
  return jnp.asarray(kernel)


def _pad_to(kernel: jax.Array, kernel_size: int) -> jax.Array:
  """Zero-pads a (k', k', ...) kernel to (k, k, ...) around its centre (k - k' even)."""
  pad = (kernel_size - kernel.shape[0]) // 2
  return jnp.pad(kernel, ((pad, pad), (pad, pad), (0, 0), (0, 0)))


def _layer_scale(dim: int, value: float) -> nnx.Param:
  """A per-channel scale (1, 1, dim), broadcasting over (N, H, W, dim) (the reference's (dim, 1, 1))."""
  return nnx.Param(jnp.full((1, 1, dim), value, jnp.float32))


def _drop_path(rate: float, rngs: nnx.Rngs):
  """Stochastic depth: a residual branch dropped per sample in training mode (None without)."""
  return nnx.Dropout(rate, broadcast_dims=(1, 2, 3), rngs=rngs) if rate > 0 else nnx.data(None)


def _gelu(x):
  return jax.nn.gelu(x, approximate=False)


class ConvBN(nnx.Module):
  """``conv`` (a layer without bias) then BatchNorm ``bn``: the reference's conv-BN ``Sequential``."""

  def __init__(self, conv: nnx.Module, features: int):
    self.conv = conv
    self.bn = BatchNorm(features)

  def __call__(self, x):
    return self.bn(self.conv(x))

  def fold(self) -> tuple[jax.Array, jax.Array]:
    """(kernel (k, k, in // groups, out), bias (out,)) of the one conv equal to this in eval mode (``nnx.Conv``)."""
    return _fold_bn(self.conv.kernel[...], self.bn)


def conv_bn(in_dim: int, out_dim: int, kernel_size: int, *, stride: int = 1, groups: int = 1,
            rngs: nnx.Rngs) -> ConvBN:
  """A k x k conv (no bias, padding k // 2, grouped) then BatchNorm."""
  return ConvBN(_conv(in_dim, out_dim, kernel_size, stride=stride, groups=groups, use_bias=False, rngs=rngs), out_dim)


class SqueezeExcite(nnx.Module):
  """x * sigmoid(expand(relu(reduce(mean over H, W of x)))), (N, H, W, C) -> same; reduce: 1x1 conv C -> C // 16."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs):
    self.reduce = _conv(channels, channels // SE_RATIO, 1, use_bias=True, rngs=rngs)
    self.expand = _conv(channels // SE_RATIO, channels, 1, use_bias=True, rngs=rngs)

  def __call__(self, x):
    squeezed = jnp.mean(x, axis=(1, 2), keepdims=True)
    return x * jax.nn.sigmoid(self.expand(jax.nn.relu(self.reduce(squeezed))))


class MobileOneBlock(nnx.Module):
  """MobileOne block, (N, H, W, in_dim) -> (N, ceil(H / stride), ceil(W / stride), out_dim).

  Training form: the sum of ``rbr_skip`` (BN, only if in_dim == out_dim and stride 1), ``rbr_conv`` (k x k conv-BN,
  ``num_conv_branches`` of them) and ``rbr_scale`` (1x1 conv-BN, if k > 1 and ``use_scale_branch``); inference form:
  one k x k conv with bias ``reparam_conv``. Then squeeze-excite (``use_se``) and GELU (``use_act``). All convs are
  grouped by ``groups`` and padded by k // 2.
  """

  def __init__(self, in_dim: int, out_dim: int, kernel_size: int, *, stride: int = 1, groups: int = 1,
               use_se: bool = False, use_act: bool = True, use_scale_branch: bool = True,
               num_conv_branches: int = 1, rngs: nnx.Rngs):
    self.kernel_size, self.stride, self.groups, self.use_act = kernel_size, stride, groups, use_act
    self.se = SqueezeExcite(out_dim, rngs=rngs) if use_se else nnx.data(None)
    self.rbr_skip = BatchNorm(in_dim) if in_dim == out_dim and stride == 1 else nnx.data(None)
    self.rbr_conv = nnx.List([conv_bn(in_dim, out_dim, kernel_size, stride=stride, groups=groups, rngs=rngs)
                              for _ in range(num_conv_branches)])
    self.rbr_scale = (conv_bn(in_dim, out_dim, 1, stride=stride, groups=groups, rngs=rngs)
                      if kernel_size > 1 and use_scale_branch else nnx.data(None))
    self.reparam_conv: Optional[nnx.Conv] = nnx.data(None)

  def _branches(self) -> list[nnx.Module]:
    return [b for b in (self.rbr_skip, *self.rbr_conv, self.rbr_scale) if b is not None]

  def __call__(self, x):
    if self.reparam_conv is not None:
      y = self.reparam_conv(x)
    else:
      y = sum(branch(x) for branch in self._branches())
    if self.se is not None:
      y = self.se(y)
    return _gelu(y) if self.use_act else y

  def fold(self) -> tuple[jax.Array, jax.Array]:
    """(kernel (k, k, in // groups, out), bias (out,)) of ``reparam_conv``, from the branches' eval-mode form."""
    if self.reparam_conv is not None:
      return self.reparam_conv.kernel[...], self.reparam_conv.bias[...]
    folds = [branch.fold() for branch in self.rbr_conv]
    if self.rbr_scale is not None:
      kernel, bias = self.rbr_scale.fold()
      folds.append((_pad_to(kernel, self.kernel_size), bias))
    if self.rbr_skip is not None:
      identity = _identity_kernel(self.rbr_skip.scale.shape[0], self.groups, self.kernel_size)
      folds.append(_fold_bn(identity, self.rbr_skip))
    return sum(k for k, _ in folds), sum(b for _, b in folds)

  def reparameterize(self) -> None:
    """In place: the branches become ``reparam_conv``."""
    kernel, bias = self.fold()
    self.reparam_conv = _conv_of(kernel, bias, stride=self.stride, groups=self.groups)
    self.rbr_skip, self.rbr_conv, self.rbr_scale = nnx.data(None), nnx.List([]), nnx.data(None)


class ReparamLargeKernelConv(nnx.Module):
  """(N, H, W, in_dim) -> (N, ceil(H / s), ceil(W / s), out_dim), grouped by input channel, no activation.

  Training form: ``lkb_origin`` (k x k conv-BN) + ``small_conv`` (k_small x k_small conv-BN), stride s; inference
  form: one k x k conv with bias ``lkb_reparam`` (the small kernel zero-padded into the large one).
  """

  def __init__(self, in_dim: int, out_dim: int, *, kernel_size: int, small_kernel: int, stride: int,
               rngs: nnx.Rngs):
    self.kernel_size, self.stride, self.groups = kernel_size, stride, in_dim
    self.lkb_origin = conv_bn(in_dim, out_dim, kernel_size, stride=stride, groups=in_dim, rngs=rngs)
    self.small_conv = conv_bn(in_dim, out_dim, small_kernel, stride=stride, groups=in_dim, rngs=rngs)
    self.lkb_reparam: Optional[nnx.Conv] = nnx.data(None)

  def __call__(self, x):
    if self.lkb_reparam is not None:
      return self.lkb_reparam(x)
    return self.lkb_origin(x) + self.small_conv(x)

  def reparameterize(self) -> None:
    """In place: the two branches become ``lkb_reparam``."""
    large, large_bias = self.lkb_origin.fold()
    small, small_bias = self.small_conv.fold()
    self.lkb_reparam = _conv_of(large + _pad_to(small, self.kernel_size), large_bias + small_bias,
                                stride=self.stride, groups=self.groups)
    self.lkb_origin, self.small_conv = nnx.data(None), nnx.data(None)


class PatchEmbed(nnx.Module):
  """Downsampling between stages, (N, H, W, in_dim) -> (N, ceil(H / 2), ceil(W / 2), out_dim): ``proj.0`` the
  grouped 7x7 + 3x3 pair (stride 2), ``proj.1`` a 1x1 MobileOne block (BN skip + 1x1 conv-BN, GELU)."""

  def __init__(self, in_dim: int, out_dim: int, *, rngs: nnx.Rngs):
    self.proj = nnx.List([
        ReparamLargeKernelConv(in_dim, out_dim, kernel_size=DOWN_PATCH, small_kernel=DOWN_SMALL, stride=DOWN_STRIDE,
                               rngs=rngs),
        MobileOneBlock(out_dim, out_dim, 1, rngs=rngs)])

  def __call__(self, x):
    return self.proj[1](self.proj[0](x))

  def reparameterize(self) -> None:
    for layer in self.proj:
      layer.reparameterize()


class RepMixer(nnx.Module):
  """The RepMixer token mixer, (N, H, W, dim) -> same: x + layer_scale * (mixer(x) - norm(x)), where ``mixer`` is a
  depthwise k x k MobileOne block (BN skip + k x k conv-BN + 1x1 conv-BN) and ``norm`` its BN skip alone; inference
  form: one depthwise k x k conv with bias ``reparam_conv``."""

  def __init__(self, dim: int, *, kernel_size: int, layer_scale_init: float, rngs: nnx.Rngs):
    self.norm = MobileOneBlock(dim, dim, kernel_size, groups=dim, use_act=False, use_scale_branch=False,
                               num_conv_branches=0, rngs=rngs)
    self.mixer = MobileOneBlock(dim, dim, kernel_size, groups=dim, use_act=False, rngs=rngs)
    self.layer_scale = _layer_scale(dim, layer_scale_init)
    self.reparam_conv: Optional[nnx.Conv] = nnx.data(None)

  def __call__(self, x):
    if self.reparam_conv is not None:
      return self.reparam_conv(x)
    return x + self.layer_scale[...] * (self.mixer(x) - self.norm(x))

  def reparameterize(self) -> None:
    """In place: mixer, norm and layer_scale become ``reparam_conv``:
    kernel = identity + layer_scale * (mixer - norm), bias = layer_scale * (b_mixer - b_norm)."""
    mixer, mixer_bias = self.mixer.fold()
    norm, norm_bias = self.norm.fold()
    dim, scale = mixer.shape[-1], self.layer_scale[...].reshape(-1)
    kernel = _identity_kernel(dim, dim, mixer.shape[0]) + scale * (mixer - norm)
    self.reparam_conv = _conv_of(kernel, scale * (mixer_bias - norm_bias), stride=1, groups=dim)
    self.norm, self.mixer, self.layer_scale = nnx.data(None), nnx.data(None), nnx.data(None)


class ConvFFN(nnx.Module):
  """(N, H, W, dim) -> same: ``conv`` (depthwise 7x7 ``conv.conv``, no bias, then BN ``conv.bn``) -> 1x1 conv ``fc1``
  dim -> hidden -> GELU -> 1x1 conv ``fc2`` hidden -> dim."""

  def __init__(self, dim: int, hidden: int, dwconv: nnx.Module, *, rngs: nnx.Rngs):
    self.conv = ConvBN(dwconv, dim)
    self.fc1 = _conv(dim, hidden, 1, use_bias=True, kernel_init=_TRUNC_NORMAL, rngs=rngs)
    self.fc2 = _conv(hidden, dim, 1, use_bias=True, kernel_init=_TRUNC_NORMAL, rngs=rngs)

  def __call__(self, x):
    return self.fc2(_gelu(self.fc1(self.conv(x))))


class RepCPE(nnx.Module):
  """Conditional positional encoding, (N, H, W, dim) -> same: x + pe(x), ``pe`` a depthwise 7x7 with bias."""

  def __init__(self, pe: nnx.Module):
    self.pe = pe

  def __call__(self, x):
    return x + self.pe(x)


class MHSA(nnx.Module):
  """Multi-head self-attention over the H * W positions (row-major), (N, H, W, dim) -> same, 32 channels per head.

  ``qkv``: Linear dim -> 3 dim without bias, split [q | k | v], each head-major; scores (q / sqrt(32)) k^T, softmax
  over keys; heads concatenated -> Linear ``proj``.
  """

  def __init__(self, dim: int, *, rngs: nnx.Rngs):
    self.num_heads = dim // HEAD_DIM
    self.qkv = nnx.Linear(dim, 3 * dim, use_bias=False, kernel_init=_TRUNC_NORMAL, rngs=rngs)
    self.proj = nnx.Linear(dim, dim, kernel_init=_TRUNC_NORMAL, bias_init=_ZEROS, rngs=rngs)

  def __call__(self, x):
    n, h, w, dim = x.shape
    qkv = self.qkv(x.reshape(n, h * w, dim)).reshape(n, h * w, 3, self.num_heads, HEAD_DIM)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (N, tokens, heads, HEAD_DIM)
    scores = jnp.einsum("nqhd,nkhd->nhqk", q * HEAD_DIM ** -0.5, k)
    y = jnp.einsum("nhqk,nkhd->nqhd", jax.nn.softmax(scores, axis=-1), v)
    return self.proj(y.reshape(n, h * w, dim)).reshape(n, h, w, dim)


class RepMixerBlock(nnx.Module):
  """(N, H, W, dim) -> same: x = token_mixer(x) (a RepMixer, residual inside, no drop path);
  x = x + drop_path(layer_scale * convffn(x))."""

  def __init__(self, dim: int, hidden: int, dwconv: nnx.Module, *, drop_path: float, layer_scale_init: float,
               rngs: nnx.Rngs):
    self.token_mixer = RepMixer(dim, kernel_size=REPMIXER_KERNEL, layer_scale_init=layer_scale_init, rngs=rngs)
    self.convffn = ConvFFN(dim, hidden, dwconv, rngs=rngs)
    self.layer_scale = _layer_scale(dim, layer_scale_init)
    self.drop_path = _drop_path(drop_path, rngs)

  def __call__(self, x):
    x = self.token_mixer(x)
    y = self.layer_scale[...] * self.convffn(x)
    return x + (y if self.drop_path is None else self.drop_path(y))


class AttentionBlock(nnx.Module):
  """(N, H, W, dim) -> same: x = x + drop_path(layer_scale_1 * token_mixer(norm(x))) (MHSA after a BatchNorm);
  x = x + drop_path(layer_scale_2 * convffn(x))."""

  def __init__(self, dim: int, hidden: int, dwconv: nnx.Module, *, drop_path: float, layer_scale_init: float,
               rngs: nnx.Rngs):
    self.norm = BatchNorm(dim)
    self.token_mixer = MHSA(dim, rngs=rngs)
    self.convffn = ConvFFN(dim, hidden, dwconv, rngs=rngs)
    self.layer_scale_1 = _layer_scale(dim, layer_scale_init)
    self.layer_scale_2 = _layer_scale(dim, layer_scale_init)
    self.drop_path = _drop_path(drop_path, rngs)

  def _residual(self, x, y):
    return x + (y if self.drop_path is None else self.drop_path(y))

  def __call__(self, x):
    x = self._residual(x, self.layer_scale_1[...] * self.token_mixer(self.norm(x)))
    return self._residual(x, self.layer_scale_2[...] * self.convffn(x))


class FastViT(nnx.Module):
  """FastViT audio tagger; ``FastViT.sa24(dwconv='dcls')`` builds the paper's FastViT-SA24.

  Args:
    num_classes: logits per clip (527 for AudioSet).
    layers, embed_dims: blocks and channels per stage; each width a multiple of the one before (PatchEmbed is
      grouped by input channel), the attention stages' a multiple of 32.
    mlp_ratios: per stage, the ConvFFN hidden width in units of the stage's width.
    token_mixers: per stage, 'repmixer' or 'attention'.
    pos_embs: per stage, whether a RepCPE precedes its blocks (FastViT-SA: the last stage only).
    dwconv: the depthwise conv of ConvFFN and RepCPE: 'conv', 'dcls' (``dcls_audio.DWCONVS``) or a
      ``DepthwiseConfig`` (or its fields as a dict). DCLS positions and sigmas are shared by growing width if
      ``share_positions``.
    drop_path_rate: stochastic depth, linearly increasing over blocks from 0 up to this rate.
    layer_scale_init: initial value of every layer scale (DCLS-Audio's command line: 1e-6).

  Submodules: ``patch_embed``, ``network`` (per stage: [RepCPE], an ``nnx.List`` of blocks, [PatchEmbed], as the
  reference's ``network`` indices), ``conv_exp``, ``head``.
  """

  def __init__(self, num_classes: int, *, layers: Sequence[int] = (4, 4, 12, 4),
               embed_dims: Sequence[int] = (64, 128, 256, 512), mlp_ratios: Sequence[float] = (4, 4, 4, 4),
               token_mixers: Sequence[str] = ("repmixer", "repmixer", "repmixer", "attention"),
               pos_embs: Sequence[bool] = (False, False, False, True), dwconv="dcls",
               drop_path_rate: float = 0.0, layer_scale_init: float = 1e-6, rngs: nnx.Rngs):
    _check_sizes(layers, embed_dims, mlp_ratios, token_mixers, pos_embs)
    dw = dcls_audio.depthwise_config(dwconv)
    positions = sharing.GrowingWidth() if dw.kind == "dcls" and dw.share_positions else None

    def dwconv_layer(dim: int, use_bias: bool) -> nnx.Module:  # made in network order: the sharing rule's order
      build = lambda: dcls_audio.depthwise_conv(dim, dw, use_bias=use_bias, rngs=rngs)
      return build() if positions is None else positions.make(dim, build)

    self.patch_embed = nnx.Conv(1, embed_dims[0], STEM_PATCH, strides=STEM_PATCH, padding="VALID", use_bias=False,
                                kernel_init=_TRUNC_NORMAL, rngs=rngs)
    rates = iter(np.linspace(0.0, drop_path_rate, sum(layers)).tolist())  # static: a Python float per block
    network = []
    for i, (depth, dim, mixer) in enumerate(zip(layers, embed_dims, token_mixers)):
      if pos_embs[i]:
        network.append(RepCPE(dwconv_layer(dim, use_bias=True)))
      block = RepMixerBlock if mixer == "repmixer" else AttentionBlock
      network.append(nnx.List([
          block(dim, int(dim * mlp_ratios[i]), dwconv_layer(dim, use_bias=False), drop_path=next(rates),
                layer_scale_init=layer_scale_init, rngs=rngs) for _ in range(depth)]))
      if i + 1 < len(layers):
        network.append(PatchEmbed(dim, embed_dims[i + 1], rngs=rngs))
    self.network = nnx.List(network)
    self.conv_exp = MobileOneBlock(embed_dims[-1], CLS_RATIO * embed_dims[-1], 3, groups=embed_dims[-1], use_se=True,
                                   rngs=rngs)
    self.head = nnx.Linear(CLS_RATIO * embed_dims[-1], num_classes, kernel_init=_TRUNC_NORMAL, bias_init=_ZEROS,
                           rngs=rngs)

  @classmethod
  def sa24(cls, *, num_classes: int = 527, dwconv="dcls", rngs: nnx.Rngs, **kwargs) -> "FastViT":
    """FastViT-SA24 of DCLS-Audio: layers (4, 4, 12, 4), dims (64, 128, 256, 512), MLP ratio 4, RepMixer in stages
    1-3, attention and a RepCPE in stage 4; ``dwconv`` 'conv' (dense 7x7) or 'dcls' (Gaussian, d 23, 26 elements). Other
    ``kwargs`` (drop_path_rate, layer_scale_init) go to the constructor."""
    return cls(num_classes, layers=(4, 4, 12, 4), embed_dims=(64, 128, 256, 512), mlp_ratios=(4, 4, 4, 4),
               token_mixers=("repmixer", "repmixer", "repmixer", "attention"), pos_embs=(False, False, False, True),
               dwconv=dwconv, rngs=rngs, **kwargs)

  def features(self, x):
    """(N, n_mels, T, 1) -> the clip embedding (N, 2 embed_dims[-1]): conv_exp, then the mean over H, W."""
    if x.ndim != 4 or x.shape[-1] != 1:
      raise ValueError(f"x must be (N, n_mels, T, 1) spectrograms, channels last; got shape {x.shape}")
    x = self.patch_embed(x)
    for layer in self.network:
      if isinstance(layer, nnx.List):
        for block in layer:
          x = block(x)
      else:
        x = layer(x)
    return jnp.mean(self.conv_exp(x), axis=(1, 2))

  def __call__(self, x):
    return self.head(self.features(x))


def reparameterize(model: FastViT) -> FastViT:
  """The inference form of ``model`` (a new model; ``model`` is unchanged): see the module docstring.

  Equal to ``model`` in eval mode (BatchNorm with running statistics) up to float rounding.
  """
  model = nnx.clone(model)
  for layer in model.network:
    if isinstance(layer, PatchEmbed):
      layer.reparameterize()
    elif isinstance(layer, nnx.List):  # a stage's blocks
      for block in layer:
        if isinstance(block, RepMixerBlock):
          block.token_mixer.reparameterize()
  model.conv_exp.reparameterize()
  return model


def _check_sizes(layers, embed_dims, mlp_ratios, token_mixers, pos_embs) -> None:
  per_stage = dict(layers=layers, embed_dims=embed_dims, mlp_ratios=mlp_ratios, token_mixers=token_mixers,
                   pos_embs=pos_embs)
  if not layers or len({len(v) for v in per_stage.values()}) != 1:
    raise ValueError(f"{per_stage}: expected non-empty sequences of the same length (one entry per stage).")
  if any(not isinstance(d, (int, np.integer)) or d < 1 for d in layers):
    raise ValueError(f"layers={tuple(layers)}: expected positive block counts.")
  for before, after in zip(embed_dims, embed_dims[1:]):
    if after <= before or after % before:
      raise ValueError(f"embed_dims={tuple(embed_dims)}: each width must be a larger multiple of the one before "
                       "(PatchEmbed's convs are grouped by input channel).")
  for mixer, dim in zip(token_mixers, embed_dims):
    if mixer not in TOKEN_MIXERS:
      raise ValueError(f"token_mixers={tuple(token_mixers)}: expected each of {TOKEN_MIXERS}.")
    if mixer == "attention" and dim % HEAD_DIM:
      raise ValueError(f"embed_dims={tuple(embed_dims)}: an attention stage's width must be a multiple of "
                       f"{HEAD_DIM} (the head size), got {dim}.")
  if embed_dims[-1] * CLS_RATIO < SE_RATIO:
    raise ValueError(f"embed_dims[-1]={embed_dims[-1]}: conv_exp's squeeze-excite needs {CLS_RATIO} x "
                     f"embed_dims[-1] >= {SE_RATIO}.")
