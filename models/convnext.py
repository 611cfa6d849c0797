"""ConvNeXt with a DCLS depthwise convolution (ConvNeXt-dcls), in Flax NNX.

The network of Liu et al. 2022 as ``facebookresearch/ConvNeXt`` writes it, with the ConvNeXt-dcls change of
Khalfaoui-Hassani et al. 2023 (spec ``dcls.md`` section 4): every block's 7x7 depthwise convolution becomes a DCLS
depthwise convolution (``dwconv='dcls'``) whose positions (and sigmas, for ``gauss``) are one parameter shared by all
blocks of a stage. Submodule names mirror the PyTorch state dict (``downsample_layers.{i}.{j}``,
``stages.{i}.{j}.{dwconv,norm,pwconv1,pwconv2,gamma}``, ``norm``, ``head``), so importing a checkpoint is a table.

Data: images (N, H, W, in_chans), channels last -> logits (N, num_classes). H and W must be divisible by
``patch_size * 2 ** (len(depths) - 1)``.

Block:  x + gamma * pwconv2(gelu(pwconv1(norm(dwconv(x)))))   (drop path on the residual branch in training)
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from dcls_jax import nnx as dcls_nnx

_TRUNC_NORMAL = nnx.initializers.truncated_normal(stddev=0.02, lower=-2.0, upper=2.0)  # timm trunc_normal_(std=.02)
_ZEROS = nnx.initializers.zeros_init()


@dataclasses.dataclass(frozen=True)
class DepthwiseConfig:
  """The depthwise convolution of every block.

  Attributes:
    kind: 'conv' (a dense ``kernel_size`` x ``kernel_size`` depthwise conv, plain ConvNeXt) or 'dcls'.
    kernel_size: 'conv': its size (7 in ConvNeXt); 'dcls': the dilated kernel size (17 in ConvNeXt-dcls).
    kernel_count: 'dcls' only: elements per channel (34 for ConvNeXt-dcls-T).
    version: 'dcls' only: v0 | v1 | max | gauss.
    share_positions: 'dcls' only: one positions (and sigmas) parameter per stage, as the recipes do.
  """
  kind: str = "dcls"
  kernel_size: int = 17
  kernel_count: int = 34
  version: str = "v0"
  share_positions: bool = True

  def __post_init__(self):
    if self.kind not in ("conv", "dcls"):
      raise ValueError(f"dwconv kind={self.kind!r}: expected 'conv' or 'dcls'.")


class LayerNorm(nnx.LayerNorm):
  """ConvNeXt's LayerNorm over the channel (last) axis, eps 1e-6."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs):
    super().__init__(dim, epsilon=1e-6, rngs=rngs)


class Block(nnx.Module):
  """One ConvNeXt block; ``shared_from``: a block of the same stage whose DCLS positions/sigmas to use."""

  def __init__(self, dim: int, dw: DepthwiseConfig, *, drop_path: float, layer_scale_init: float,
               shared_from: Optional["Block"] = None, rngs: nnx.Rngs):
    if dw.kind == "conv":
      self.dwconv = nnx.Conv(dim, dim, (dw.kernel_size,) * 2, padding=dw.kernel_size // 2, feature_group_count=dim,
                             kernel_init=_TRUNC_NORMAL, bias_init=_ZEROS, rngs=rngs)
    else:
      shared = shared_from.dwconv if shared_from is not None else None
      self.dwconv = dcls_nnx.DclsConv(
          dim, dim, dw.kernel_count, (dw.kernel_size,) * 2, padding=dw.kernel_size // 2, feature_group_count=dim,
          version=dw.version, weight_init=_TRUNC_NORMAL, bias_init=_ZEROS,
          positions=shared.positions if shared else None, sigmas=shared.sigmas if shared else None, rngs=rngs)
    self.norm = LayerNorm(dim, rngs=rngs)
    self.pwconv1 = nnx.Linear(dim, 4 * dim, kernel_init=_TRUNC_NORMAL, bias_init=_ZEROS, rngs=rngs)
    self.pwconv2 = nnx.Linear(4 * dim, dim, kernel_init=_TRUNC_NORMAL, bias_init=_ZEROS, rngs=rngs)
    self.gamma = (nnx.Param(jnp.full((dim,), layer_scale_init, jnp.float32)) if layer_scale_init > 0
                  else nnx.data(None))
    # Stochastic depth: the residual branch dropped per sample (a dropout mask broadcast over H, W, C).
    self.drop_path = nnx.Dropout(drop_path, broadcast_dims=(1, 2, 3), rngs=rngs)

  def __call__(self, x):
    y = self.dwconv(x)
    y = self.pwconv2(jax.nn.gelu(self.pwconv1(self.norm(y)), approximate=False))
    if self.gamma is not None:
      y = self.gamma[...] * y
    return x + self.drop_path(y)


class ConvNeXt(nnx.Module):
  """ConvNeXt / ConvNeXt-dcls classifier.

  Args:
    num_classes: logits per image.
    depths, dims: blocks and channels per stage (ConvNeXt-T: (3, 3, 9, 3), (96, 192, 384, 768)).
    dwconv: the blocks' depthwise convolution (``DepthwiseConfig`` or its fields as a dict).
    in_chans: input channels.
    patch_size: the stem's patchify convolution size and stride (4 in ConvNeXt).
    drop_path_rate: stochastic depth, linearly increasing over blocks up to this rate.
    layer_scale_init: initial value of each block's gamma (0: no layer scale).
    head_init_scale: the head's weight and bias are multiplied by it at init.
  """

  def __init__(self, num_classes: int, *, depths: Sequence[int] = (3, 3, 9, 3),
               dims: Sequence[int] = (96, 192, 384, 768), dwconv=DepthwiseConfig(), in_chans: int = 3,
               patch_size: int = 4, drop_path_rate: float = 0.0, layer_scale_init: float = 1e-6,
               head_init_scale: float = 1.0, rngs: nnx.Rngs):
    if len(depths) != len(dims) or not depths:
      raise ValueError(f"depths={tuple(depths)} and dims={tuple(dims)}: expected two non-empty sequences of the"
                       " same length (one entry per stage).")
    dw = dwconv if isinstance(dwconv, DepthwiseConfig) else DepthwiseConfig(**dict(dwconv))
    conv = dict(kernel_init=_TRUNC_NORMAL, bias_init=_ZEROS, padding="VALID", rngs=rngs)
    stem = nnx.Sequential(nnx.Conv(in_chans, dims[0], (patch_size,) * 2, strides=patch_size, **conv),
                          LayerNorm(dims[0], rngs=rngs))
    downsamples = [nnx.Sequential(LayerNorm(dims[i - 1], rngs=rngs),
                                  nnx.Conv(dims[i - 1], dims[i], (2, 2), strides=2, **conv))
                   for i in range(1, len(dims))]
    self.downsample_layers = nnx.List([stem] + downsamples)

    rates = iter(jnp.linspace(0.0, drop_path_rate, sum(depths)).tolist())
    stages = []
    for depth, dim in zip(depths, dims):
      blocks = []
      for _ in range(depth):
        shared_from = blocks[0] if (blocks and dw.kind == "dcls" and dw.share_positions) else None
        blocks.append(Block(dim, dw, drop_path=next(rates), layer_scale_init=layer_scale_init,
                            shared_from=shared_from, rngs=rngs))
      stages.append(nnx.List(blocks))
    self.stages = nnx.List(stages)
    self.norm = LayerNorm(dims[-1], rngs=rngs)
    self.head = nnx.Linear(dims[-1], num_classes, kernel_init=_TRUNC_NORMAL, bias_init=_ZEROS, rngs=rngs)
    self.head.kernel[...] = self.head.kernel[...] * head_init_scale
    self.head.bias[...] = self.head.bias[...] * head_init_scale

  def features(self, x):
    """(N, H, W, in_chans) -> pooled, normalised features (N, dims[-1])."""
    for downsample, stage in zip(self.downsample_layers, self.stages):
      x = downsample(x)
      for block in stage:
        x = block(x)
    return self.norm(jnp.mean(x, axis=(1, 2)))

  def __call__(self, x):
    return self.head(self.features(x))
