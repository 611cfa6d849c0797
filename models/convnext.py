"""ConvNeXt with a DCLS depthwise convolution (ConvNeXt-dcls), in Flax NNX.

The network of Liu et al. 2022 as ``facebookresearch/ConvNeXt`` writes it, with the ConvNeXt-dcls change of
Khalfaoui-Hassani et al. 2023 (spec ``dcls.md`` section 4): every block's 7x7 depthwise convolution becomes a DCLS
depthwise convolution (``dwconv='dcls'``) whose positions (and sigmas, for ``gauss``) are one parameter shared by all
blocks of a stage (``dcls_jax.sharing.tie``): ``nnx.state`` has ONE leaf per stage, in its first block, and its
gradient is the sum over the blocks.

Data: images (N, H, W, in_chans), channels last -> logits (N, num_classes). Convolutions without padding floor odd
sizes, as in the reference (48 px -> 12, 6, 3, 1 with patch_size 4).

  stem        Stem: patchify conv (kernel = stride = patch_size) -> LayerNorm        downsample_layers.0
  stage i     [Downsample: LayerNorm -> conv 2x2 stride 2, for i > 0] -> depths[i] Blocks
  head        mean over H, W -> LayerNorm ``norm`` -> Linear ``head``
  Block       x + drop_path(gamma * pwconv2(gelu(pwconv1(norm(dwconv(x))))))

``stage_outputs(x)`` gives every stage's output map, ``pool`` the head's input, ``features`` both in one call.

Submodule names follow the PyTorch state dict (``downsample_layers.{i}``, ``stages.{i}.{j}.{dwconv,norm,pwconv1,
pwconv2,gamma}``, ``norm``, ``head``); ``models/convnext_io.py`` converts checkpoints. ``Stem``, ``Downsample`` and
``Block`` are the parts other ConvNeXt-shaped models (the audio taggers) reuse.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dcls_jax import nnx as dcls_nnx
from dcls_jax import sharing
from models import layers

# timm's trunc_normal_(std=.02) cuts at +-2 ABSOLUTE, i.e. +-100 standard deviations: in effect N(0, 0.02^2).
# (jax's bounds are in standard deviations: its default +-2 would shrink the std to 0.0176.)
TRUNC_NORMAL = nnx.initializers.truncated_normal(stddev=0.02, lower=-100.0, upper=100.0)
ZEROS = nnx.initializers.zeros_init()


@dataclasses.dataclass(frozen=True)
class DepthwiseConfig:
  """The depthwise convolution of every block.

  Attributes:
    kind: 'conv' (a dense ``kernel_size`` x ``kernel_size`` depthwise conv, plain ConvNeXt) or 'dcls'.
    kernel_size: 'conv': its size (7 in ConvNeXt); 'dcls': the dilated kernel size d (17 in ConvNeXt-dcls).
    kernel_count: 'dcls' only: elements per channel (34 for ConvNeXt-dcls-T).
    version: 'dcls' only: v0 | v1 | max | gauss.
    share_positions: 'dcls' only: one positions (and sigmas) parameter per stage, as the recipes do.
    conv_algorithm: 'auto', 'direct' or 'fft' (``dcls_jax.conv``), for either kind.
  """
  kind: str = "dcls"
  kernel_size: int = 17
  kernel_count: int = 34
  version: str = "v0"
  share_positions: bool = True
  conv_algorithm: str = "auto"

  def __post_init__(self):
    if self.kind not in ("conv", "dcls"):
      raise ValueError(f"dwconv kind={self.kind!r}: expected 'conv' or 'dcls'.")


@dataclasses.dataclass(frozen=True)
class Size:
  """A standard ConvNeXt size and its recipes (spec ``dcls.md`` section 4.1).

  Attributes:
    depths, dims: blocks and channels per stage.
    drop_path_rate: the ImageNet recipe's stochastic depth.
    v0_kernel_count: elements per channel of the bilinear (v0, d = 17) recipe; the Gaussian one uses 26 at d = 23.
  """
  depths: tuple[int, ...]
  dims: tuple[int, ...]
  drop_path_rate: float
  v0_kernel_count: int

  def dwconv(self, variant: str) -> DepthwiseConfig:
    """The depthwise conv of a recipe: 'conv' (dense 7x7), 'v0' (bilinear d 17) or 'gauss' (Gaussian d 23, Kc 26)."""
    if variant == "conv":
      return DepthwiseConfig(kind="conv", kernel_size=7)
    if variant == "v0":
      return DepthwiseConfig(kernel_size=17, kernel_count=self.v0_kernel_count, version="v0")
    if variant == "gauss":
      return DepthwiseConfig(kernel_size=23, kernel_count=26, version="gauss")
    raise ValueError(f"dwconv={variant!r}: expected 'conv', 'v0', 'gauss' or a DepthwiseConfig.")


SIZES = {
    "T": Size(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), drop_path_rate=0.1, v0_kernel_count=34),
    "S": Size(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768), drop_path_rate=0.4, v0_kernel_count=40),
    "B": Size(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024), drop_path_rate=0.5, v0_kernel_count=40),
}


class LayerNorm(nnx.LayerNorm):
  """ConvNeXt's LayerNorm over the channel (last) axis: eps 1e-6, variance as mean((x - mean)^2)."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs):
    super().__init__(dim, epsilon=1e-6, use_fast_variance=False, rngs=rngs)


def _pair(value) -> tuple[int, int]:
  """An int n -> (n, n); an (h, w) pair as a tuple."""
  return (value, value) if isinstance(value, (int, np.integer)) else tuple(value)


def _strided_conv(in_dim: int, out_dim: int, size, *, stride=None, padding=0, rngs: nnx.Rngs) -> nnx.Conv:
  """A conv of kernel ``size`` with stride ``stride`` (default: the kernel size) and ``padding`` zeros on both
  sides, each an int or an (h, w) pair: the stem's patchify and the downsampling conv."""
  size = _pair(size)
  return nnx.Conv(in_dim, out_dim, size, strides=size if stride is None else _pair(stride),
                  padding=[(p, p) for p in _pair(padding)], kernel_init=TRUNC_NORMAL, bias_init=ZEROS, rngs=rngs)


class Stem(nnx.Module):
  """(N, H, W, in_chans) -> (N, H', W', dim): patchify conv, then LayerNorm.

  ``patch_size`` is the conv's kernel, ``stride`` defaults to it and ``padding`` (zeros on both sides) to 0, each
  an int or an (h, w) pair: H' = (H + 2 padding_h - patch_h) // stride_h + 1, i.e. H // patch_size by default.
  """

  def __init__(self, in_chans: int, dim: int, patch_size, *, stride=None, padding=0, rngs: nnx.Rngs):
    self.conv = _strided_conv(in_chans, dim, patch_size, stride=stride, padding=padding, rngs=rngs)
    self.norm = LayerNorm(dim, rngs=rngs)

  def __call__(self, x):
    return self.norm(self.conv(x))


class Downsample(nnx.Module):
  """(N, H, W, in_dim) -> (N, H // 2, W // 2, out_dim): LayerNorm, then a 2x2 conv of stride 2."""

  def __init__(self, in_dim: int, out_dim: int, *, rngs: nnx.Rngs):
    self.norm = LayerNorm(in_dim, rngs=rngs)
    self.conv = _strided_conv(in_dim, out_dim, 2, rngs=rngs)

  def __call__(self, x):
    return self.conv(self.norm(x))


class DepthwiseConv(layers.Conv):
  """A dense k x k depthwise conv, 'same' padding: ``nnx.Conv``'s parameters (kernel (k, k, 1, dim), bias unless
  ``use_bias=False``) computed by ``dcls_jax.conv``, which picks the FFT where XLA's own depthwise convolution is
  slow (CPU, k > 3)."""

  def __init__(self, dim: int, kernel_size: int, *, use_bias: bool = True, conv_algorithm: str = "auto",
               rngs: nnx.Rngs):
    super().__init__(dim, dim, (kernel_size, kernel_size), padding=kernel_size // 2, feature_group_count=dim,
                     use_bias=use_bias, kernel_init=TRUNC_NORMAL, bias_init=ZEROS, conv_algorithm=conv_algorithm,
                     rngs=rngs)


def depthwise_config(dwconv, presets: Mapping[str, DepthwiseConfig]) -> DepthwiseConfig:
  """A name of ``presets``, a ``DepthwiseConfig`` or its fields as a dict -> a ``DepthwiseConfig``."""
  if isinstance(dwconv, DepthwiseConfig):
    return dwconv
  if isinstance(dwconv, str):
    if dwconv not in presets:
      raise ValueError(f"dwconv={dwconv!r}: expected one of {sorted(presets)}, a DepthwiseConfig or its fields.")
    return presets[dwconv]
  return DepthwiseConfig(**dict(dwconv))


def depthwise_conv(dim: int, dw: DepthwiseConfig, *, use_bias: bool = True, dcls_weight_init=TRUNC_NORMAL,
                   rngs: nnx.Rngs) -> nnx.Module:
  """A 'same' depthwise conv on ``dim`` channels, (N, H, W, dim) -> same shape: a dense ``DepthwiseConv`` or a DCLS
  ``DclsConv`` (weights from ``dcls_weight_init``, positions and sigmas from the reference's defaults, bias 0)."""
  if dw.kind == "conv":
    return DepthwiseConv(dim, dw.kernel_size, use_bias=use_bias, conv_algorithm=dw.conv_algorithm, rngs=rngs)
  return dcls_nnx.DclsConv(dim, dim, dw.kernel_count, (dw.kernel_size,) * 2, padding=dw.kernel_size // 2,
                           feature_group_count=dim, use_bias=use_bias, version=dw.version,
                           conv_algorithm=dw.conv_algorithm, weight_init=dcls_weight_init, bias_init=ZEROS,
                           rngs=rngs)


class Block(nnx.Module):
  """One ConvNeXt block, (N, H, W, dim) -> same shape.

  Stochastic depth drops the residual branch per sample in training mode only (``model.train()``/``.eval()``).
  """

  def __init__(self, dim: int, dw: DepthwiseConfig, *, drop_path: float, layer_scale_init: float,
               rngs: nnx.Rngs):
    self.dwconv = depthwise_conv(dim, dw, rngs=rngs)
    self.norm = LayerNorm(dim, rngs=rngs)
    self.pwconv1 = nnx.Linear(dim, 4 * dim, kernel_init=TRUNC_NORMAL, bias_init=ZEROS, rngs=rngs)
    self.pwconv2 = nnx.Linear(4 * dim, dim, kernel_init=TRUNC_NORMAL, bias_init=ZEROS, rngs=rngs)
    self.gamma = (nnx.Param(jnp.full((dim,), layer_scale_init, jnp.float32)) if layer_scale_init > 0
                  else nnx.data(None))
    # Stochastic depth: the residual branch dropped per sample (a dropout mask broadcast over H, W, C); without
    # it the block holds no RNG stream, so a model without stochastic depth is its parameters alone.
    self.drop_path = (nnx.Dropout(drop_path, broadcast_dims=(1, 2, 3), rngs=rngs) if drop_path > 0
                      else nnx.data(None))

  def __call__(self, x):
    y = self.dwconv(x)
    y = self.pwconv2(jax.nn.gelu(self.pwconv1(self.norm(y)), approximate=False))
    if self.gamma is not None:
      y = self.gamma[...] * y
    return x + (y if self.drop_path is None else self.drop_path(y))


def classifier(dim: int, num_classes: int, *, head_init_scale: float = 1.0, rngs: nnx.Rngs) -> nnx.Linear:
  """The head: Linear dim -> num_classes, trunc-normal(0.02) weight and zero bias, both times ``head_init_scale``."""
  head = nnx.Linear(dim, num_classes, kernel_init=TRUNC_NORMAL, bias_init=ZEROS, rngs=rngs)
  head.kernel[...] = head.kernel[...] * head_init_scale
  head.bias[...] = head.bias[...] * head_init_scale
  return head


POSITION_SHARING = ("stage", "growing_width")


def run_stages(downsample_layers, stages, x) -> list[jax.Array]:
  """The stage-wise models' forward (ConvNeXt, MetaFormer): for each stage, its downsampling layer, then its
  blocks; -> every stage's output."""
  outputs = []
  for downsample, stage in zip(downsample_layers, stages):
    x = downsample(x)
    for block in stage:
      x = block(x)
    outputs.append(x)
  return outputs


class Body(nnx.Module):
  """A ConvNeXt stem and stages: ``downsample_layers`` (the ``Stem``, then a ``Downsample`` before every later
  stage) and ``stages`` (lists of ``Block``), named as the references. The ConvNeXt-shaped models (the classifier
  here, the audio taggers) build on it.

  Args:
    depths, dims: blocks and channels per stage.
    dwconv: the blocks' depthwise convolution (``DepthwiseConfig`` or its fields as a dict).
    in_chans: input channels.
    stem_kernel, stem_stride, stem_padding: the ``Stem`` conv (ints or (h, w) pairs; stride defaults to kernel).
    drop_path_rate: stochastic depth, linearly increasing over blocks from 0 up to this rate.
    layer_scale_init: initial value of each block's gamma (0: no layer scale).
    position_sharing: with ``dwconv.share_positions``, which DCLS layers hold one positions (and sigmas) Variable
      (``dcls_jax.sharing``): 'stage' (ConvNeXt-dcls: the blocks of a stage) or 'growing_width' (DCLS-Audio's
      rule: a new set whenever a stage is wider than all before; equal-width stages share).
  """

  def __init__(self, *, depths: Sequence[int], dims: Sequence[int], dwconv, in_chans: int, stem_kernel,
               stem_stride=None, stem_padding=0, drop_path_rate: float = 0.0, layer_scale_init: float = 1e-6,
               position_sharing: str = "stage", rngs: nnx.Rngs):
    if len(depths) != len(dims) or not depths:
      raise ValueError(f"depths={tuple(depths)} and dims={tuple(dims)}: expected two non-empty sequences of the"
                       " same length (one entry per stage).")
    if position_sharing not in POSITION_SHARING:
      raise ValueError(f"position_sharing={position_sharing!r}: expected one of {POSITION_SHARING}.")
    dw = dwconv if isinstance(dwconv, DepthwiseConfig) else DepthwiseConfig(**dict(dwconv))
    downsamples = [Downsample(dims[i - 1], dims[i], rngs=rngs) for i in range(1, len(dims))]
    stem = Stem(in_chans, dims[0], stem_kernel, stride=stem_stride, padding=stem_padding, rngs=rngs)
    self.downsample_layers = nnx.List([stem] + downsamples)

    rates = iter(np.linspace(0.0, drop_path_rate, sum(depths)).tolist())  # static: a Python float per block
    shared = dw.kind == "dcls" and dw.share_positions
    growing = sharing.GrowingWidth()
    stages = []
    for depth, dim in zip(depths, dims):
      blocks = [Block(dim, dw, drop_path=next(rates), layer_scale_init=layer_scale_init, rngs=rngs)
                for _ in range(depth)]
      if shared and position_sharing == "stage":
        for name in ("positions", "sigmas"):
          sharing.tie([block.dwconv for block in blocks], name)
      elif shared:
        for block in blocks:  # each block's DCLS layer joins the current positions/sigmas, or starts new ones
          growing.make(dim, lambda block=block: block.dwconv)
      stages.append(nnx.List(blocks))
    self.stages = nnx.List(stages)

  def stage_outputs(self, x) -> list[jax.Array]:
    """(N, H, W, in_chans) -> the output of every stage after its last block, (N, H_i, W_i, dims[i]) each."""
    return run_stages(self.downsample_layers, self.stages, x)


class ConvNeXt(Body):
  """ConvNeXt / ConvNeXt-dcls classifier; ``ConvNeXt.from_size('T', dwconv='v0')`` builds a standard size.

  Args:
    num_classes: logits per image.
    depths, dims: blocks and channels per stage (ConvNeXt-T: (3, 3, 9, 3), (96, 192, 384, 768)).
    dwconv: the blocks' depthwise convolution (``DepthwiseConfig`` or its fields as a dict).
    in_chans: input channels.
    patch_size: the stem's patchify convolution size and stride (4 in ConvNeXt).
    drop_path_rate: stochastic depth, linearly increasing over blocks from 0 up to this rate.
    layer_scale_init: initial value of each block's gamma (0: no layer scale).
    head_init_scale: the head's weight and bias are multiplied by it at init.
  """

  def __init__(self, num_classes: int, *, depths: Sequence[int] = (3, 3, 9, 3),
               dims: Sequence[int] = (96, 192, 384, 768), dwconv=DepthwiseConfig(), in_chans: int = 3,
               patch_size: int = 4, drop_path_rate: float = 0.0, layer_scale_init: float = 1e-6,
               head_init_scale: float = 1.0, rngs: nnx.Rngs):
    super().__init__(depths=depths, dims=dims, dwconv=dwconv, in_chans=in_chans, stem_kernel=patch_size,
                     drop_path_rate=drop_path_rate, layer_scale_init=layer_scale_init, rngs=rngs)
    self.norm = LayerNorm(dims[-1], rngs=rngs)
    self.head = classifier(dims[-1], num_classes, head_init_scale=head_init_scale, rngs=rngs)

  @classmethod
  def from_size(cls, size: str, *, num_classes: int = 1000, dwconv="v0", rngs: nnx.Rngs, **kwargs) -> "ConvNeXt":
    """A standard size of ``SIZES`` ('T', 'S', 'B') with a recipe's depthwise conv.

    ``dwconv``: 'conv' (dense 7x7), 'v0' (bilinear d 17, Kc 34 for T, 40 for S/B), 'gauss' (d 23, Kc 26), or a
    ``DepthwiseConfig``. ``drop_path_rate`` defaults to the size's recipe value; other ``kwargs`` go to the
    constructor.
    """
    if size not in SIZES:
      raise ValueError(f"size={size!r}: expected one of {sorted(SIZES)}.")
    spec = SIZES[size]
    dw = dwconv if isinstance(dwconv, DepthwiseConfig) else spec.dwconv(dwconv)
    kwargs.setdefault("drop_path_rate", spec.drop_path_rate)
    return cls(num_classes, depths=spec.depths, dims=spec.dims, dwconv=dw, rngs=rngs, **kwargs)

  def pool(self, x):
    """Last stage output (N, H, W, dims[-1]) -> pooled, normalised features (N, dims[-1]): the head's input."""
    return self.norm(jnp.mean(x, axis=(1, 2)))

  def features(self, x):
    """(N, H, W, in_chans) -> pooled, normalised features (N, dims[-1])."""
    return self.pool(self.stage_outputs(x)[-1])

  def __call__(self, x):
    return self.head(self.features(x))
