"""ConvMixer (Trockman & Kolter 2022) with inter-layer kernel sharing (Azadbakht et al. 2022), in Flax NNX.

The reference is ``AlirezaAzadbakht/kernel-sharing`` ``ConvMixer/models/convmixer.py`` (spec ``kernel_sharing.md``
section 2). Data: images (N, H, W, in_chans), channels last -> logits (N, num_classes).

  stem     patchify conv (kernel = stride = patch_size, floors odd sizes) -> GELU -> BatchNorm
  block i  x <- x + BN(GELU(dwconv(x)))       depthwise, 'same' padding: the residual skips this part only
           x <- BN(GELU(pwconv(x)))           1x1 conv dim -> dim, no residual
  head     mean over H, W -> Linear

With ``share_kernels`` the depthwise kernel and bias and the pointwise kernel and bias are four Variables held by
every block (``dcls_jax.sharing.tie``): ONE leaf each in ``nnx.state``, gradient summed over the blocks, counted and
weight-decayed once. BatchNorms, the stem and the head stay per layer. ConvMixer-256/16 on CIFAR-10 (k 9, p 1):
1,409,034 parameters unshared, 107,274 shared.

The depthwise conv is the reference's dense k x k conv with dilation, or a DCLS conv (``dwconv``, a
``convnext.DepthwiseConfig`` of kind 'dcls'): with ``share_kernels`` its weight, positions, sigmas and bias are all
shared; without, its positions (and sigmas) are shared by all blocks when ``dwconv.share_positions``.

Initialisation is PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for conv and linear weights and biases;
DCLS layers use the DCLS reference's own. GELU is the exact (erf) form. ``models/kernel_sharing_io.py`` converts
reference checkpoints.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Union

import jax
import jax.numpy as jnp
from flax import nnx

from dcls_jax import conv as conv_lib
from dcls_jax import nnx as dcls_nnx
from dcls_jax import sharing
from models import convnext
from models import layers


# ---- ConvMixer -------------------------------------------------------------------------------------------

class DilatedDepthwiseConv(nnx.Module):
  """A dense k x k depthwise conv with dilation d and 'same' padding d (k - 1) / 2: (N, H, W, dim) -> same shape.

  d (k - 1) must be even (odd k, or an even dilation), as the reference's residual needs.

  Variables: ``kernel`` (k, k, 1, dim) HWIO and ``bias`` (dim,), PyTorch's default init (fan_in k^2). Computed by
  ``dcls_jax.conv`` on the kernel spread out with zeros to span d (k - 1) + 1, so the FFT is used where XLA's own
  depthwise convolution is slow (CPU); the zeros get no gradient.
  """

  def __init__(self, dim: int, kernel_size: int, *, dilation: int = 1, conv_algorithm: str = "auto",
               rngs: nnx.Rngs):
    layers.check_positive_int(dim, "dim")
    layers.check_positive_int(dilation, "dilation")
    layers.check_positive_int(kernel_size, "kernel_size")
    if dilation * (kernel_size - 1) % 2:
      raise ValueError(f"kernel_size={kernel_size}, dilation={dilation}: dilation * (kernel_size - 1) must be even "
                       "for 'same' padding (an odd kernel_size, or an even dilation)")
    init = layers.torch_uniform(kernel_size ** 2)
    self.kernel = nnx.Param(init(rngs.params(), (kernel_size, kernel_size, 1, dim)))
    self.bias = nnx.Param(init(rngs.params(), (dim,)))
    self.dilation, self.conv_algorithm = dilation, conv_algorithm

  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = jnp.transpose(self.kernel[...], (3, 2, 0, 1))  # torch layout (dim, 1, k, k)
    d, (dim, _, k, _) = self.dilation, kernel.shape
    span = d * (k - 1) + 1
    kernel = jnp.zeros((dim, 1, span, span), kernel.dtype).at[:, :, ::d, ::d].set(kernel)
    y = conv_lib.conv(x, kernel, padding=span // 2, feature_group_count=dim, algorithm=self.conv_algorithm)
    return y + self.bias[...]


def _depthwise(dim: int, dw: convnext.DepthwiseConfig, dilation: int, *, rngs: nnx.Rngs) -> nnx.Module:
  """The block's depthwise conv, 'same' padding: dense of size ``dw.kernel_size`` with ``dilation``, or DCLS of
  dilated size ``dw.kernel_size``."""
  k = dw.kernel_size
  if dw.kind == "conv":
    return DilatedDepthwiseConv(dim, k, dilation=dilation, conv_algorithm=dw.conv_algorithm, rngs=rngs)
  if k % 2 == 0:
    raise ValueError(f"dwconv.kernel_size={k}: a DCLS depthwise conv needs an odd size ('same' padding)")
  return dcls_nnx.DclsConv(dim, dim, dw.kernel_count, (k, k), padding=k // 2, feature_group_count=dim,
                           version=dw.version, conv_algorithm=dw.conv_algorithm, rngs=rngs)


class Stem(nnx.Module):
  """(N, H, W, in_chans) -> (N, H // patch_size, W // patch_size, dim): patchify conv -> GELU -> BatchNorm."""

  def __init__(self, in_chans: int, dim: int, patch_size: int, *, rngs: nnx.Rngs):
    init = layers.torch_uniform(in_chans * patch_size ** 2)
    self.conv = nnx.Conv(in_chans, dim, (patch_size, patch_size), strides=patch_size, padding="VALID",
                         kernel_init=init, bias_init=init, rngs=rngs)
    self.norm = layers.BatchNorm(dim)

  def __call__(self, x):
    return self.norm(jax.nn.gelu(self.conv(x), approximate=False))


class MixerBlock(nnx.Module):
  """(N, H, W, dim) -> same shape: x + dwnorm(GELU(dwconv(x))), then pwnorm(GELU(pwconv(.)))."""

  def __init__(self, dim: int, dw: convnext.DepthwiseConfig, dilation: int, *, rngs: nnx.Rngs):
    self.dwconv = _depthwise(dim, dw, dilation, rngs=rngs)
    self.dwnorm = layers.BatchNorm(dim)
    init = layers.torch_uniform(dim)
    self.pwconv = nnx.Conv(dim, dim, (1, 1), kernel_init=init, bias_init=init, rngs=rngs)
    self.pwnorm = layers.BatchNorm(dim)

  def __call__(self, x):
    x = x + self.dwnorm(jax.nn.gelu(self.dwconv(x), approximate=False))
    return self.pwnorm(jax.nn.gelu(self.pwconv(x), approximate=False))


def _depthwise_config(kernel_size: Optional[int], dilation: int,
                      dwconv: Union[None, convnext.DepthwiseConfig, Mapping[str, Any]]) -> convnext.DepthwiseConfig:
  """ConvMixer's depthwise arguments as one ``DepthwiseConfig``: the dense k x k conv unless ``dwconv`` is given."""
  if dwconv is None:
    return convnext.DepthwiseConfig(kind="conv", kernel_size=9 if kernel_size is None else kernel_size)
  if kernel_size is not None:
    raise ValueError(f"kernel_size={kernel_size!r} and dwconv both given: with dwconv, its kernel_size is the "
                     "depthwise conv's size; leave kernel_size None")
  dw = dwconv if isinstance(dwconv, convnext.DepthwiseConfig) else convnext.DepthwiseConfig(**dict(dwconv))
  if dw.kind == "dcls" and dilation != 1:
    raise ValueError(f"dilation={dilation!r}: a DCLS depthwise conv learns its spacing; expected dilation 1")
  return dw


class ConvMixer(nnx.Module):
  """ConvMixer-dim/depth classifier, with the reference's kernel sharing across all blocks.

  Args:
    dim: channels throughout (256 in the kernel-sharing recipes).
    depth: number of mixer blocks (16).
    num_classes: logits per image.
    kernel_size: the dense depthwise conv's size k (default 9); leave None with ``dwconv``.
    dilation: the dense depthwise conv's dilation d; d (k - 1) must be even.
    patch_size: the stem's kernel and stride (1 at 32 px).
    share_kernels: one depthwise kernel and bias and one pointwise kernel and bias for all blocks.
    dwconv: None for the reference's dense depthwise conv, or a ``convnext.DepthwiseConfig`` (or its fields as a
      dict); kind 'dcls' gives a DCLS depthwise conv of dilated size ``dwconv.kernel_size`` (odd).
    in_chans: input channels.
  """

  def __init__(self, dim: int, depth: int, num_classes: int, *, kernel_size: Optional[int] = None,
               dilation: int = 1, patch_size: int = 1, share_kernels: bool = False,
               dwconv: Union[None, convnext.DepthwiseConfig, Mapping[str, Any]] = None, in_chans: int = 3,
               rngs: nnx.Rngs):
    for value, name in ((dim, "dim"), (depth, "depth"), (num_classes, "num_classes"), (patch_size, "patch_size"),
                        (dilation, "dilation"), (in_chans, "in_chans")):
      layers.check_positive_int(value, name)
    dw = _depthwise_config(kernel_size, dilation, dwconv)
    self.stem = Stem(in_chans, dim, patch_size, rngs=rngs)
    blocks = [MixerBlock(dim, dw, dilation, rngs=rngs) for _ in range(depth)]
    dwconvs, pwconvs = [b.dwconv for b in blocks], [b.pwconv for b in blocks]
    dw_names = ("kernel", "bias") if dw.kind == "conv" else ("weight", "positions", "sigmas", "bias")
    if share_kernels:
      for name in dw_names:
        sharing.tie(dwconvs, name)
      for name in ("kernel", "bias"):
        sharing.tie(pwconvs, name)
    elif dw.kind == "dcls" and dw.share_positions:
      for name in ("positions", "sigmas"):
        sharing.tie(dwconvs, name)
    self.blocks = nnx.List(blocks)
    self.head = layers.torch_linear(dim, num_classes, rngs=rngs)

  def feature_maps(self, x) -> list[jax.Array]:
    """(N, H, W, in_chans) -> the stem's output, then every block's, (N, H // patch_size, W // patch_size, dim)."""
    maps = [self.stem(x)]
    for block in self.blocks:
      maps.append(block(maps[-1]))
    return maps

  def features(self, x):
    """(N, H, W, in_chans) -> pooled features (N, dim): the head's input."""
    return jnp.mean(self.feature_maps(x)[-1], axis=(1, 2))

  def __call__(self, x):
    return self.head(self.features(x))
