"""ConvFormer (MetaFormer with a separable-conv token mixer) for audio tagging, with DCLS (DCLS-Audio), Flax NNX.

The ConvFormer of Yu et al. 2022 as DCLS-Audio (Khalfaoui-Hassani et al. 2023, spec ``audio.md`` 4.4) builds it for
AudioSet: a 1-channel stem of 2 mel x 16 frame patches, and every token mixer's 7x7 depthwise conv either kept
(``dwconv='conv'``, the baseline) or replaced by a Gaussian DCLS conv (``'dcls'``: d 23, 26 elements) whose positions
and sigmas are shared per stage by the reference's rule (``dcls_jax.sharing.GrowingWidth``: new ones whenever the
width grows).

Data: normalised log-mel spectrograms (N, n_mels, T, 1), channels last, H = mel (low -> high), W = time ->
logits (N, num_classes). Shapes for 128 x 1001: stem 64 x 62 (the last T mod 16 frames are dropped), then each
downsample halves with ceil: 32 x 31, 16 x 16, 8 x 8.

  stem        conv (2, 16) stride (2, 16), no bias -> LayerNorm (scale only)         downsample_layers.0
  stage i     [Downsample: LayerNorm (scale only) -> conv 3x3 stride 2 pad 1, for i > 0] -> depths[i] Blocks
  head        mean over H, W -> LayerNorm ``norm`` (= ``features``) -> MlpHead ``head``
  Block       x = r1 * x + drop_path(SepConv(norm1(x)));  x = r2 * x + drop_path(Mlp(norm2(x)))
              r1, r2: per-channel residual scales in the ``res_scale_stages`` only (the last two), else 1
  SepConv     Linear d -> 2d -> StarReLU -> depthwise conv on 2d channels -> Linear 2d -> d   (no biases)
  Mlp         Linear d -> mlp_ratio d -> StarReLU -> Linear -> d                        (no biases)
  MlpHead     Linear d -> head_ratio d -> squared ReLU -> LayerNorm (eps 1e-5) -> Linear -> num_classes

LayerNorms are over channels, eps 1e-6 unless stated; those inside the body have no bias. Submodule names follow
the PyTorch state dict (``models/convformer_io.py`` converts checkpoints).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dcls_jax import sharing
from models import convnext
from models import dcls_audio

_TRUNC_NORMAL, _ZEROS = convnext.TRUNC_NORMAL, convnext.ZEROS  # Linear and conv weights, biases
# Expansion of the SepConv token mixer (2d channels in the depthwise conv).
SEPCONV_EXPANSION = 2


def layer_norm(dim: int, *, use_bias: bool, epsilon: float = 1e-6, rngs: nnx.Rngs) -> nnx.LayerNorm:
  """LayerNorm over the channel (last) axis, variance as mean((x - mean)^2) like PyTorch's."""
  return nnx.LayerNorm(dim, epsilon=epsilon, use_bias=use_bias, use_fast_variance=False, rngs=rngs)


def _linear(in_dim: int, out_dim: int, *, use_bias: bool, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(in_dim, out_dim, use_bias=use_bias, kernel_init=_TRUNC_NORMAL, bias_init=_ZEROS, rngs=rngs)


class StarReLU(nnx.Module):
  """s * relu(x)^2 + b, with a learnable scalar scale s (init 1) and bias b (init 0), each a (1,) Param."""

  def __init__(self):
    self.scale = nnx.Param(jnp.ones((1,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((1,), jnp.float32))

  def __call__(self, x):
    return self.scale[...] * jnp.square(jax.nn.relu(x)) + self.bias[...]


class Stem(nnx.Module):
  """(N, H, W, in_chans) -> (N, H // patch[0], W // patch[1], dim): patchify conv without bias, LayerNorm."""

  def __init__(self, in_chans: int, dim: int, patch: tuple[int, int], *, rngs: nnx.Rngs):
    self.conv = nnx.Conv(in_chans, dim, patch, strides=patch, padding="VALID", use_bias=False,
                         kernel_init=_TRUNC_NORMAL, rngs=rngs)
    self.post_norm = layer_norm(dim, use_bias=False, rngs=rngs)

  def __call__(self, x):
    return self.post_norm(self.conv(x))


class Downsample(nnx.Module):
  """(N, H, W, in_dim) -> (N, ceil(H / 2), ceil(W / 2), out_dim): LayerNorm, then a 3x3 conv, stride 2, pad 1."""

  def __init__(self, in_dim: int, out_dim: int, *, rngs: nnx.Rngs):
    self.pre_norm = layer_norm(in_dim, use_bias=False, rngs=rngs)
    self.conv = nnx.Conv(in_dim, out_dim, (3, 3), strides=2, padding=((1, 1), (1, 1)), kernel_init=_TRUNC_NORMAL,
                         bias_init=_ZEROS, rngs=rngs)

  def __call__(self, x):
    return self.conv(self.pre_norm(x))


class SepConv(nnx.Module):
  """The token mixer, (N, H, W, dim) -> same shape: Linear -> StarReLU -> depthwise conv -> Linear, no biases.

  ``positions``: the model's ``GrowingWidth`` that shares DCLS positions and sigmas, or None (dense conv, or DCLS
  without sharing).
  """

  def __init__(self, dim: int, dw: convnext.DepthwiseConfig, *, positions: sharing.GrowingWidth | None,
               rngs: nnx.Rngs):
    width = SEPCONV_EXPANSION * dim
    self.pwconv1 = _linear(dim, width, use_bias=False, rngs=rngs)
    self.act1 = StarReLU()
    build = lambda: dcls_audio.depthwise_conv(width, dw, use_bias=False, rngs=rngs)
    self.dwconv = build() if positions is None else positions.make(width, build)
    self.pwconv2 = _linear(width, dim, use_bias=False, rngs=rngs)

  def __call__(self, x):
    return self.pwconv2(self.dwconv(self.act1(self.pwconv1(x))))


class Mlp(nnx.Module):
  """(..., dim) -> (..., dim): Linear dim -> hidden, StarReLU, Linear hidden -> dim, no biases."""

  def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs):
    self.fc1 = _linear(dim, hidden, use_bias=False, rngs=rngs)
    self.act = StarReLU()
    self.fc2 = _linear(hidden, dim, use_bias=False, rngs=rngs)

  def __call__(self, x):
    return self.fc2(self.act(self.fc1(x)))


class Block(nnx.Module):
  """One MetaFormer block, (N, H, W, dim) -> same shape.

  ``res_scale``: learnable per-channel scales r1, r2 (init 1) of the two residual paths; without them the
  residuals are plain sums. Stochastic depth drops each branch per sample, in training mode only.
  """

  def __init__(self, dim: int, dw: convnext.DepthwiseConfig, *, mlp_ratio: float, res_scale: bool,
               drop_path: float, positions: sharing.GrowingWidth | None, rngs: nnx.Rngs):
    self.norm1 = layer_norm(dim, use_bias=False, rngs=rngs)
    self.token_mixer = SepConv(dim, dw, positions=positions, rngs=rngs)
    self.res_scale1 = nnx.Param(jnp.ones((dim,), jnp.float32)) if res_scale else nnx.data(None)
    self.norm2 = layer_norm(dim, use_bias=False, rngs=rngs)
    self.mlp = Mlp(dim, int(mlp_ratio * dim), rngs=rngs)
    self.res_scale2 = nnx.Param(jnp.ones((dim,), jnp.float32)) if res_scale else nnx.data(None)
    self.drop_path = (nnx.Dropout(drop_path, broadcast_dims=(1, 2, 3), rngs=rngs) if drop_path > 0
                      else nnx.data(None))

  def _residual(self, x, res_scale, y):
    x = x if res_scale is None else res_scale[...] * x
    return x + (y if self.drop_path is None else self.drop_path(y))

  def __call__(self, x):
    x = self._residual(x, self.res_scale1, self.token_mixer(self.norm1(x)))
    return self._residual(x, self.res_scale2, self.mlp(self.norm2(x)))


class MlpHead(nnx.Module):
  """(N, dim) -> (N, num_classes): Linear -> squared ReLU -> LayerNorm (eps 1e-5, PyTorch's default) -> Linear."""

  def __init__(self, dim: int, num_classes: int, hidden: int, *, rngs: nnx.Rngs):
    self.fc1 = _linear(dim, hidden, use_bias=True, rngs=rngs)
    self.norm = layer_norm(hidden, use_bias=True, epsilon=1e-5, rngs=rngs)
    self.fc2 = _linear(hidden, num_classes, use_bias=True, rngs=rngs)

  def __call__(self, x):
    return self.fc2(self.norm(jnp.square(jax.nn.relu(self.fc1(x)))))


class ConvFormer(nnx.Module):
  """ConvFormer audio tagger; ``ConvFormer.s18(dwconv='dcls')`` builds the paper's ConvFormer-S18.

  Args:
    num_classes: logits per clip (527 for AudioSet).
    depths, dims: blocks and channels per stage.
    dwconv: the token mixers' depthwise conv: 'conv', 'dcls' (``dcls_audio.DWCONVS``) or a ``DepthwiseConfig`` (or
      its fields as a dict). DCLS positions and sigmas are shared per stage (by growing width) if ``share_positions``.
    mlp_ratio: hidden width of each block's Mlp, in units of the stage's dim.
    res_scale_stages: per stage, whether its blocks scale their residual paths (DCLS-Audio: the last two).
    head_ratio: hidden width of the MlpHead, in units of dims[-1].
    in_chans: input channels (1: a spectrogram).
    stem_patch: (mel, time) size and stride of the stem's patchify conv.
    drop_path_rate: stochastic depth, linearly increasing over blocks from 0 up to this rate.
  """

  def __init__(self, num_classes: int, *, depths: Sequence[int] = (3, 3, 9, 3),
               dims: Sequence[int] = (64, 128, 320, 512), dwconv="dcls", mlp_ratio: float = 4,
               res_scale_stages: Sequence[bool] = (False, False, True, True), head_ratio: float = 4,
               in_chans: int = 1, stem_patch: tuple[int, int] = (2, 16), drop_path_rate: float = 0.0,
               rngs: nnx.Rngs):
    if len(depths) != len(dims) or not depths:
      raise ValueError(f"depths={tuple(depths)} and dims={tuple(dims)}: expected two non-empty sequences of the"
                       " same length (one entry per stage).")
    if len(res_scale_stages) != len(depths):
      raise ValueError(f"res_scale_stages={tuple(res_scale_stages)}: expected one boolean per stage "
                       f"({len(depths)}).")
    dw = dcls_audio.depthwise_config(dwconv)
    downsamples = [Downsample(dims[i - 1], dims[i], rngs=rngs) for i in range(1, len(dims))]
    self.downsample_layers = nnx.List([Stem(in_chans, dims[0], tuple(stem_patch), rngs=rngs)] + downsamples)

    positions = sharing.GrowingWidth() if dw.kind == "dcls" and dw.share_positions else None
    rates = iter(np.linspace(0.0, drop_path_rate, sum(depths)).tolist())  # static: a Python float per block
    self.stages = nnx.List([
        nnx.List([Block(dim, dw, mlp_ratio=mlp_ratio, res_scale=res_scale, drop_path=next(rates),
                        positions=positions, rngs=rngs) for _ in range(depth)])
        for depth, dim, res_scale in zip(depths, dims, res_scale_stages)])
    self.norm = layer_norm(dims[-1], use_bias=True, rngs=rngs)
    self.head = MlpHead(dims[-1], num_classes, int(head_ratio * dims[-1]), rngs=rngs)

  @classmethod
  def s18(cls, *, num_classes: int = 527, dwconv="dcls", rngs: nnx.Rngs, **kwargs) -> "ConvFormer":
    """ConvFormer-S18 of DCLS-Audio: depths (3, 3, 9, 3), dims (64, 128, 320, 512); ``dwconv`` 'conv' (dense 7x7)
    or 'dcls' (Gaussian, d 23, 26 elements). Other ``kwargs`` go to the constructor."""
    return cls(num_classes, depths=(3, 3, 9, 3), dims=(64, 128, 320, 512), dwconv=dwconv, rngs=rngs, **kwargs)

  def stage_outputs(self, x) -> list[jax.Array]:
    """(N, n_mels, T, in_chans) -> the output of every stage after its last block, (N, H_i, W_i, dims[i]) each."""
    return convnext.run_stages(self.downsample_layers, self.stages, x)

  def features(self, x):
    """(N, n_mels, T, in_chans) -> the clip embedding (N, dims[-1]): pooled, normalised, the head's input."""
    return self.norm(jnp.mean(self.stage_outputs(x)[-1], axis=(1, 2)))

  def __call__(self, x):
    return self.head(self.features(x))
