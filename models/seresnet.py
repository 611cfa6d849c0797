"""The CIFAR SE-ResNet of the kernel-sharing paper (Azadbakht et al. 2022), in Flax NNX.

The reference is ``AlirezaAzadbakht/kernel-sharing`` ``SEResNet/models/se_resnet.py`` (``CifarNet`` with
``SEBasicBlock``, the post-activation block; spec ``kernel_sharing.md`` section 3). Data: images (N, H, W, in_chans),
channels last -> logits (N, num_classes).

  stem     conv1 3x3 (in_chans -> stem_width, no bias) -> bn1 -> ReLU
  stage s  n_size blocks of width widths[s]; the first has stride 1 (s = 0) or 2, the others stride 1
  head     mean over H, W -> dropout -> Linear (the reference's ``fc``)

  Block (in-width a, width w, stride s):
    relu(se(bn2(conv2(relu(bn1(conv1(x)))))) + shortcut(x)),  conv1 3x3 stride s, conv2 3x3, both without bias;
    shortcut: identity if a == w, else ``downsample`` (1x1 conv stride s, no bias, then BatchNorm)
    se: x * sigmoid(expand(relu(reduce(mean over H, W of x)))), Linear w -> w // reduction -> w, no biases

Kernel sharing (``share_stages[s]``): stage s holds ONE 3x3 kernel (3, 3, w, w) (``dcls_jax.sharing.tie``), used by
every block's conv2 and by every conv1 whose in-width is w (all blocks but the first, and the first too when the
previous width is w): one leaf in ``nnx.state``, 2 n_size - 1 uses (2 n_size in that case), gradient summed over
them. The strided first conv1, shortcuts, BatchNorms, SE layers, stem and head are never shared.

Initialisation as the reference: convs Kaiming normal (fan_in, gain sqrt(2), not truncated), BatchNorm 1 / 0,
Linear layers PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)). ``models/kernel_sharing_io.py`` converts
reference checkpoints.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from dcls_jax import sharing
from models import layers

_KAIMING_NORMAL = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")  # torch kaiming_normal_, fan_in


def _conv(in_features: int, out_features: int, size: int, *, stride: int = 1, rngs: nnx.Rngs) -> nnx.Conv:
  """A size x size conv without bias, padding size // 2 (3x3: pad 1; 1x1: none)."""
  return nnx.Conv(in_features, out_features, (size, size), strides=stride, padding=size // 2, use_bias=False,
                  kernel_init=_KAIMING_NORMAL, rngs=rngs)


class SqueezeExcite(nnx.Module):
  """(N, H, W, w) -> same shape, each channel scaled by a gate computed from the channel means."""

  def __init__(self, width: int, reduction: int, *, rngs: nnx.Rngs):
    hidden = width // reduction
    self.reduce = nnx.Linear(width, hidden, use_bias=False, kernel_init=layers.torch_uniform(width), rngs=rngs)
    self.expand = nnx.Linear(hidden, width, use_bias=False, kernel_init=layers.torch_uniform(hidden), rngs=rngs)

  def __call__(self, x):
    gate = jax.nn.sigmoid(self.expand(jax.nn.relu(self.reduce(jnp.mean(x, axis=(1, 2))))))
    return x * gate[:, None, None, :]


class Projection(nnx.Module):
  """The shortcut of a block that changes width: (N, H, W, a) -> (N, H', W', w), 1x1 conv of stride s + BatchNorm."""

  def __init__(self, in_features: int, out_features: int, stride: int, *, rngs: nnx.Rngs):
    self.conv = _conv(in_features, out_features, 1, stride=stride, rngs=rngs)
    self.norm = layers.BatchNorm(out_features)

  def __call__(self, x):
    return self.norm(self.conv(x))


class SEBasicBlock(nnx.Module):
  """(N, H, W, in_features) -> (N, H', W', width), H' = ceil(H / stride): the post-activation SE basic block."""

  def __init__(self, in_features: int, width: int, stride: int, reduction: int, *, rngs: nnx.Rngs):
    self.conv1 = _conv(in_features, width, 3, stride=stride, rngs=rngs)
    self.bn1 = layers.BatchNorm(width)
    self.conv2 = _conv(width, width, 3, rngs=rngs)
    self.bn2 = layers.BatchNorm(width)
    self.se = SqueezeExcite(width, reduction, rngs=rngs)
    self.downsample = (Projection(in_features, width, stride, rngs=rngs) if in_features != width
                       else nnx.data(None))

  def __call__(self, x):
    y = self.se(self.bn2(self.conv2(jax.nn.relu(self.bn1(self.conv1(x))))))
    return jax.nn.relu(y + (x if self.downsample is None else self.downsample(x)))


class SEResNet(nnx.Module):
  """CIFAR SE-ResNet with per-stage kernel sharing (the reference's ``CifarNet(SEBasicBlock, n_size, ...)``).

  Args:
    num_classes: logits per image.
    n_size: blocks per stage (2 in the released runs: 14 layers).
    widths: the three stage widths (64, 128, 256 in the reference).
    stem_width: the stem's channels (16 in the reference).
    reduction: SE ratio r; every width must be >= r.
    share_stages: three bools, the stages whose isomorphic 3x3 convs share one kernel.
    dropout: dropout rate before the head (0 in the runs: no dropout layer).
    in_chans: input channels.

  Reference presets: ``se_resnet_d_2`` = n_size 2 unshared; ``se_resnet_d_2_full_shared`` and
  ``se_resnet_d_{3,4,6,8,10}`` = all stages shared (the reference's ``sync`` false turns sharing off everywhere).
  """

  def __init__(self, num_classes: int, *, n_size: int = 2, widths: Sequence[int] = (64, 128, 256),
               stem_width: int = 16, reduction: int = 16, share_stages: Sequence[bool] = (False, False, False),
               dropout: float = 0.0, in_chans: int = 3, rngs: nnx.Rngs):
    for value, name in ((num_classes, "num_classes"), (n_size, "n_size"), (stem_width, "stem_width"),
                        (reduction, "reduction"), (in_chans, "in_chans")):
      layers.check_positive_int(value, name)
    widths, share_stages = tuple(widths), tuple(share_stages)
    if len(widths) != 3 or len(share_stages) != 3:
      raise ValueError(f"widths={widths} and share_stages={share_stages}: expected 3 entries each (one per stage)")
    for width in widths:
      layers.check_positive_int(width, "every entry of widths")
    if min(widths) < reduction:
      raise ValueError(f"widths={widths}, reduction={reduction}: every width must be >= reduction (the SE "
                       "bottleneck has width // reduction features)")
    if widths[0] == widths[1] or widths[1] == widths[2]:
      raise ValueError(f"widths={widths}: a stage's width must differ from the previous one (its first block has "
                       "stride 2 and needs the projection shortcut, as in the reference)")
    if not all(isinstance(share, bool) for share in share_stages):
      raise ValueError(f"share_stages={share_stages}: expected 3 bools")
    if not 0 <= dropout < 1:
      raise ValueError(f"dropout={dropout!r}: expected a rate in [0, 1)")

    self.conv1 = _conv(in_chans, stem_width, 3, rngs=rngs)
    self.bn1 = layers.BatchNorm(stem_width)
    stages, in_features = [], stem_width
    for s, (width, share) in enumerate(zip(widths, share_stages)):
      blocks = [SEBasicBlock(in_features if b == 0 else width, width, 2 if (s > 0 and b == 0) else 1, reduction,
                             rngs=rngs) for b in range(n_size)]
      if share:
        isomorphic = [conv for block in blocks for conv in (block.conv1, block.conv2) if conv.in_features == width]
        sharing.tie(isomorphic, "kernel")
      stages.append(nnx.List(blocks))
      in_features = width
    self.stages = nnx.List(stages)
    self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else nnx.data(None)
    self.head = layers.torch_linear(widths[-1], num_classes, rngs=rngs)

  def feature_maps(self, x) -> list[jax.Array]:
    """(N, H, W, in_chans) -> the stem's output (N, H, W, stem_width), then every stage's (N, H_s, W_s, widths[s]);
    H_0 = H, halved (rounding up) at each later stage."""
    maps = [jax.nn.relu(self.bn1(self.conv1(x)))]
    for stage in self.stages:
      y = maps[-1]
      for block in stage:
        y = block(y)
      maps.append(y)
    return maps

  def features(self, x):
    """(N, H, W, in_chans) -> pooled features (N, widths[2]): the input of dropout and the head."""
    return jnp.mean(self.feature_maps(x)[-1], axis=(1, 2))

  def __call__(self, x):
    y = self.features(x)
    return self.head(y if self.dropout is None else self.dropout(y))
