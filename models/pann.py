"""PANN CNN6 / CNN10 / CNN14 and their depthwise-separable variants (spec ``audio.md`` section 5), in Flax NNX.

The PANN audio taggers of Kong et al. 2020 (``qiuqiangkong/audioset_tagging_cnn``, ``pytorch/models.py``) and the
variants of Pellegrini et al. 2023 (``topel/audioset-convnext-inf``, ``pytorch/models.py``). One network, several
block kinds:

  front end   waveform (B, L) at 32 kHz -> log-mel (B, T, 64): torchlibrosa's STFT (n_fft 1024, hop 320), 64 Slaney
              mels 50-14000 Hz, 10 log10 (``models.audio_frontend``, ``PANN_LOG_MEL``); T = 1 + L // 320
  bn0         BatchNorm per mel bin (statistics over batch and time); then a channel axis: (B, T, 64, 1), NHWC with
              H = time, W = mel
  stem        'next' only: conv 4x4 stride 2 (no padding) 1 -> 64, then LayerNorm
  blocks      one per width; each followed by a 2x2 average pool where ``pools`` says (odd sizes floored), then
              dropout 0.2
  head        mean over mel, max + mean over time, dropout 0.5, fc1 + ReLU (width -> width), fc_audioset -> logits

Block kinds (``Variant.block``):

  conv        PANN ConvBlock: (3x3 conv, BatchNorm, ReLU) twice                              CNN10, CNN14
  conv5x5     PANN ConvBlock5x5: 5x5 conv, BatchNorm, ReLU                                   CNN6
  sep         ConvBlockSep: full 3x3 conv, then a depthwise 3x3 conv, each with BatchNorm and ReLU      Cnn14Sep
  sep_pw      ConvBlockSepPW: 'sep', then a channels-last MLP C -> 2C -> C (GELU), no residual    Cnn14SepPW
  next        ConvNeXt-like Block: depthwise k x k conv with channel multiplier out / in (groups = in, bias),
              LayerNorm, MLP out -> 4 out -> out (GELU); no residual, no layer scale      Cnn6/10/14Next

``VARIANTS`` holds the eight published networks; their parameter counts (527 classes; BatchNorm running statistics
excluded) are cnn6 4,837,455; cnn10 5,219,279; cnn14 80,753,615; cnn14_sep 30,470,543; cnn14_sep_pw 52,846,799;
cnn6_next 3,337,935; cnn10_next 6,141,519; cnn14_next 95,120,975. For a 10 s clip (1001 frames x 64 mels) the last
map (time x mel) is 62 x 4 (cnn6, cnn10), 31 x 2 (cnn14, cnn14_sep, cnn14_sep_pw), 62 x 3 (cnn6_next), 124 x 7
(cnn10_next), 31 x 1 (cnn14_next).

Outputs are logits: the references return sigmoid probabilities, ``jax.nn.sigmoid`` of ours. SpecAugment and mixup,
which the references apply inside ``forward`` after bn0 in training, are the data pipeline's business
(``train.data.audio_augment``). Initialisation follows each reference: PANN's Xavier-uniform convs and linears,
topel's normal(0.02) (timm ``trunc_normal_``, whose absolute +-2 bounds are 100 sigma), PyTorch's default for the
'next' stem conv; biases 0, norms 1 / 0.

``reference_entries`` / ``load_torch_state`` import the references' state dicts (e.g. PANN's published
``Cnn14_mAP=0.431.pth``, through ``models.torch_table.load_torch_checkpoint``).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models import audio_frontend
from models import convnext
from models import layers
from models.spec_augment import SpecAugment
from models import torch_table as tt

# PANN's front end (its AudioSet configs): 64 Slaney mels, learned bn0 instead of a fixed normalisation.
PANN_LOG_MEL = audio_frontend.LogMelConfig(sample_rate=32000, n_fft=1024, hop_length=320, n_mels=64, f_min=50.0,
                                           f_max=14000.0, mel_scale="slaney")

BLOCKS = ("conv", "conv5x5", "sep", "sep_pw", "next")
STEM_KERNEL, STEM_STRIDE = 4, 2
# State-dict names of the references' frozen front ends (STFT kernels, mel matrix), which are no parameters here.
REFERENCE_FRONT_END = ("spectrogram_extractor.*", "logmel_extractor.*")

_KERNEL_INITS = {
    "xavier_uniform": nnx.initializers.xavier_uniform(),  # PANN's init_layer
    "normal": nnx.initializers.normal(stddev=0.02),  # topel's init_layer: timm trunc_normal_(std=.02)
}
_ZEROS = nnx.initializers.zeros_init()


@dataclasses.dataclass(frozen=True)
class Variant:
  """One network of the family.

  Attributes:
    block: one of ``BLOCKS``.
    widths: output channels of each block; the head's fc1 is widths[-1] -> widths[-1].
    pools: per block, whether a 2x2 average pool follows it.
    init: 'xavier_uniform' (PANN) or 'normal' (topel) for the convs and linears.
    stem_width: 'next' only: output channels of the 4x4 stride-2 stem conv.
    kernel_size: 'next' only: the depthwise conv's size.
    block_names: the reference's module name of each block (default conv_block1, conv_block2, ...).
  """
  block: str
  widths: tuple[int, ...]
  pools: tuple[bool, ...]
  init: str
  stem_width: int = 0
  kernel_size: int = 7
  block_names: Optional[tuple[str, ...]] = None

  def __post_init__(self):
    if self.block not in BLOCKS:
      raise ValueError(f"Variant.block={self.block!r}: expected one of {BLOCKS}")
    if not self.widths or len(self.pools) != len(self.widths):
      raise ValueError(f"Variant.widths={self.widths} and pools={self.pools}: expected one pool flag per block")
    if self.init not in _KERNEL_INITS:
      raise ValueError(f"Variant.init={self.init!r}: expected one of {sorted(_KERNEL_INITS)}")
    if (self.block == "next") != (self.stem_width > 0):
      raise ValueError(f"Variant.stem_width={self.stem_width}: expected > 0 exactly for block 'next'")
    if self.block_names is not None and len(self.block_names) != len(self.widths):
      raise ValueError(f"Variant.block_names={self.block_names}: expected one name per block")

  def reference_block_names(self) -> tuple[str, ...]:
    """The reference's module name of each block."""
    return self.block_names or tuple(f"conv_block{i + 1}" for i in range(len(self.widths)))

  def min_input_size(self) -> int:
    """The fewest frames (and mel bins) whose final feature map is at least 1 x 1."""
    size = 2 ** sum(self.pools)
    return STEM_STRIDE * (size - 1) + STEM_KERNEL if self.stem_width else size


def _paired_names(stages: int) -> tuple[str, ...]:
  """Cnn10Next / Cnn14Next's conv_block11, conv_block12, conv_block21, ... (two blocks per stage)."""
  return tuple(f"conv_block{stage}{j}" for stage in range(1, stages + 1) for j in (1, 2))


_CNN14_WIDTHS, _CNN14_POOLS = (64, 128, 256, 512, 1024, 2048), (True,) * 5 + (False,)
VARIANTS = {
    "cnn6": Variant("conv5x5", (64, 128, 256, 512), (True,) * 4, "xavier_uniform"),
    "cnn10": Variant("conv", (64, 128, 256, 512), (True,) * 4, "xavier_uniform"),
    "cnn14": Variant("conv", _CNN14_WIDTHS, _CNN14_POOLS, "xavier_uniform"),
    "cnn14_sep": Variant("sep", _CNN14_WIDTHS, _CNN14_POOLS, "normal"),
    "cnn14_sep_pw": Variant("sep_pw", _CNN14_WIDTHS, _CNN14_POOLS, "normal"),
    "cnn6_next": Variant("next", (128, 256, 512), (True,) * 3, "normal", stem_width=64),
    "cnn10_next": Variant("next", (128, 128, 256, 256, 512, 512), (False, True) * 2 + (False,) * 2, "normal",
                          stem_width=64, block_names=_paired_names(3)),
    "cnn14_next": Variant("next", (128, 128, 256, 256, 512, 512, 1024, 1024, 2048, 2048),
                          (False, True) * 4 + (False,) * 2, "normal", stem_width=64, block_names=_paired_names(5)),
}


def _torch_default_bias(fan_in: int):
  """PyTorch's default conv / linear bias: U(-1 / sqrt(fan_in), 1 / sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class ConvBnRelu(nnx.Module):
  """(N, H, W, in_dim) -> (N, H, W, out_dim): k x k conv ('same' padding, no bias), BatchNorm, ReLU."""

  def __init__(self, in_dim: int, out_dim: int, kernel_size: int, *, groups: int = 1, kernel_init, rngs: nnx.Rngs):
    self.conv = layers.Conv(in_dim, out_dim, (kernel_size, kernel_size), padding=kernel_size // 2,
                            feature_group_count=groups, use_bias=False, kernel_init=kernel_init, rngs=rngs)
    self.bn = layers.BatchNorm(out_dim)

  def __call__(self, x):
    return jax.nn.relu(self.bn(self.conv(x)))


class Mlp(nnx.Module):
  """(..., dim) -> (..., dim): Linear dim -> ratio dim, exact GELU, Linear back (the references' pwconv1/2)."""

  def __init__(self, dim: int, ratio: int, *, kernel_init, rngs: nnx.Rngs):
    self.pwconv1 = nnx.Linear(dim, ratio * dim, kernel_init=kernel_init, bias_init=_ZEROS, rngs=rngs)
    self.pwconv2 = nnx.Linear(ratio * dim, dim, kernel_init=kernel_init, bias_init=_ZEROS, rngs=rngs)

  def __call__(self, x):
    return self.pwconv2(jax.nn.gelu(self.pwconv1(x), approximate=False))

  def reference_entries(self, prefix: str, path: tt.Path) -> list[tt.Entry]:
    """``{prefix}.pwconv1``, ``{prefix}.pwconv2`` (the MLP's layers sit directly in the reference's block)."""
    return [entry for name in ("pwconv1", "pwconv2")
            for entry in tt.module(f"{prefix}.{name}", path + (name,), tt.LINEAR)]


class ConvBlock(nnx.Module):
  """Blocks 'conv', 'conv5x5', 'sep', 'sep_pw': (N, H, W, in_dim) -> (N, H, W, out_dim), conv-BN-ReLU units, then
  the pointwise MLP for 'sep_pw'. Reference names: ``conv{j}``, ``bn{j}`` for unit j = 1, 2; ``pwconv1/2``."""

  def __init__(self, in_dim: int, out_dim: int, kind: str, *, kernel_init, rngs: nnx.Rngs):
    if kind == "conv5x5":
      units = [ConvBnRelu(in_dim, out_dim, 5, kernel_init=kernel_init, rngs=rngs)]
    else:
      groups = 1 if kind == "conv" else out_dim  # sep, sep_pw: the second conv is depthwise
      units = [ConvBnRelu(in_dim, out_dim, 3, kernel_init=kernel_init, rngs=rngs),
               ConvBnRelu(out_dim, out_dim, 3, groups=groups, kernel_init=kernel_init, rngs=rngs)]
    self.units = nnx.List(units)
    self.mlp = Mlp(out_dim, 2, kernel_init=kernel_init, rngs=rngs) if kind == "sep_pw" else nnx.data(None)

  def __call__(self, x):
    for unit in self.units:
      x = unit(x)
    return x if self.mlp is None else self.mlp(x)

  def reference_entries(self, prefix: str, path: tt.Path) -> list[tt.Entry]:
    entries = []
    for j in range(len(self.units)):
      entries += (tt.module(f"{prefix}.conv{j + 1}", path + ("units", j, "conv"), tt.CONV, only=("weight",))
                  + tt.module(f"{prefix}.bn{j + 1}", path + ("units", j, "bn"), tt.BATCH))
    if self.mlp is not None:
      entries += self.mlp.reference_entries(prefix, path + ("mlp",))
    return entries


class NextBlock(nnx.Module):
  """Block 'next': (N, H, W, in_dim) -> (N, H, W, out_dim), out_dim a multiple of in_dim.

  Depthwise k x k conv ('same' padding, bias) where input channel c feeds outputs c m .. c m + m - 1
  (m = out_dim / in_dim), LayerNorm (eps 1e-6), MLP out_dim -> 4 out_dim -> out_dim. Reference names:
  ``dwconv``, ``norm``, ``pwconv1``, ``pwconv2``.
  """

  def __init__(self, in_dim: int, out_dim: int, kernel_size: int, *, kernel_init, rngs: nnx.Rngs):
    if out_dim % in_dim:
      raise ValueError(f"a 'next' block's width must be a multiple of its input width, got {in_dim} -> {out_dim}")
    self.dwconv = layers.Conv(in_dim, out_dim, (kernel_size, kernel_size), padding=kernel_size // 2,
                              feature_group_count=in_dim, kernel_init=kernel_init, bias_init=_ZEROS, rngs=rngs)
    self.norm = convnext.LayerNorm(out_dim, rngs=rngs)
    self.mlp = Mlp(out_dim, 4, kernel_init=kernel_init, rngs=rngs)

  def __call__(self, x):
    return self.mlp(self.norm(self.dwconv(x)))

  def reference_entries(self, prefix: str, path: tt.Path) -> list[tt.Entry]:
    return (tt.module(f"{prefix}.dwconv", path + ("dwconv",), tt.CONV)
            + tt.module(f"{prefix}.norm", path + ("norm",), tt.NORM)
            + self.mlp.reference_entries(prefix, path + ("mlp",)))


class NextStem(nnx.Module):
  """(N, H, W, 1) -> (N, (H - 4) // 2 + 1, (W - 4) // 2 + 1, width): conv 4x4 stride 2 without padding (PyTorch's
  default init), LayerNorm. Reference names ``stem.0``, ``stem.1``."""

  def __init__(self, width: int, *, rngs: nnx.Rngs):
    fan_in = STEM_KERNEL * STEM_KERNEL
    self.conv = nnx.Conv(1, width, (STEM_KERNEL, STEM_KERNEL), strides=STEM_STRIDE, padding="VALID",
                         kernel_init=nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                         bias_init=_torch_default_bias(fan_in), rngs=rngs)
    self.norm = convnext.LayerNorm(width, rngs=rngs)

  def __call__(self, x):
    return self.norm(self.conv(x))


def _block(variant: Variant, in_dim: int, out_dim: int, *, kernel_init, rngs: nnx.Rngs) -> nnx.Module:
  """One block of ``variant``'s kind."""
  if variant.block == "next":
    return NextBlock(in_dim, out_dim, variant.kernel_size, kernel_init=kernel_init, rngs=rngs)
  return ConvBlock(in_dim, out_dim, variant.block, kernel_init=kernel_init, rngs=rngs)


def clip_pool(frames: jax.Array) -> jax.Array:
  """(B, T, F, C) -> (B, C): mean over F (mel), then max + mean over T (time)."""
  per_frame = jnp.mean(frames, axis=2)
  return jnp.max(per_frame, axis=1) + jnp.mean(per_frame, axis=1)


class Pann(nnx.Module):
  """A PANN-family audio tagger: waveform (B, L) or log-mel (B, T, n_mels) -> logits (B, num_classes).

  Args:
    variant: a key of ``VARIANTS`` ('cnn6', 'cnn10', 'cnn14', 'cnn14_sep', 'cnn14_sep_pw', 'cnn6_next',
      'cnn10_next', 'cnn14_next'), a ``Variant`` or its fields as a dict (a config's custom network).
    num_classes: logits per clip (527 for AudioSet).
    front_end: the log-mel recipe; bn0 has front_end.n_mels features.
    dropout: rate after every block (0.2 in the references).
    head_dropout: rate on the pooled features before fc1 (0.5 in the references).
    spec_augment: ``models.spec_augment.SpecAugment``'s arguments (PANN: time_width 64, freq_width 8, 2 stripes
      each) to mask the bn0-normalised log-mels in training, or None (no masking).

  Dropout, SpecAugment and batch statistics act in training mode only (``model.train()`` / ``model.eval()``).
  """

  def __init__(self, variant: Union[str, Variant, Mapping[str, Any]] = "cnn14", *, num_classes: int = 527,
               front_end: audio_frontend.LogMelConfig = PANN_LOG_MEL, dropout: float = 0.2,
               head_dropout: float = 0.5, spec_augment: Optional[Mapping[str, int]] = None, rngs: nnx.Rngs):
    if isinstance(variant, Mapping):  # a config's fields
      variant = Variant(**variant)
    elif not isinstance(variant, Variant):
      if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r}: expected one of {sorted(VARIANTS)}, a Variant or its fields")
      variant = VARIANTS[variant]
    self.variant, self.front_end = variant, front_end
    kernel_init = _KERNEL_INITS[variant.init]
    self.bn0 = layers.BatchNorm(front_end.n_mels)
    self.spec_augment = (SpecAugment(**spec_augment, rngs=rngs) if spec_augment is not None else nnx.data(None))
    self.stem = NextStem(variant.stem_width, rngs=rngs) if variant.stem_width else nnx.data(None)
    in_dims = (variant.stem_width or 1,) + variant.widths[:-1]
    self.blocks = nnx.List([_block(variant, i, o, kernel_init=kernel_init, rngs=rngs)
                            for i, o in zip(in_dims, variant.widths)])
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.head_dropout = nnx.Dropout(head_dropout, rngs=rngs)
    width = variant.widths[-1]
    self.fc1 = nnx.Linear(width, width, kernel_init=kernel_init, bias_init=_ZEROS, rngs=rngs)
    self.fc_audioset = nnx.Linear(width, num_classes, kernel_init=kernel_init, bias_init=_ZEROS, rngs=rngs)

  def log_mel(self, waveform: jax.Array) -> jax.Array:
    """(B, L) samples at front_end.sample_rate -> (B, 1 + L // hop_length, n_mels) dB."""
    if waveform.ndim != 2:
      raise ValueError(f"waveform must have shape (batch, samples), got {waveform.shape}")
    return audio_frontend.log_mel(waveform, self.front_end, mel_matrix=_mel_matrix(self.front_end))

  def frame_features(self, log_mel: jax.Array) -> jax.Array:
    """(B, T, n_mels) dB -> the last block's map (B, T', F', widths[-1]), after its pool and dropout."""
    n_mels, min_size = self.front_end.n_mels, self.variant.min_input_size()
    if log_mel.ndim != 3 or log_mel.shape[2] != n_mels:
      raise ValueError(f"log_mel must have shape (batch, frames, n_mels={n_mels}), got {log_mel.shape}")
    if min(log_mel.shape[1:]) < min_size:
      raise ValueError(f"log_mel must have at least {min_size} frames and mel bins for this variant, got "
                       f"{log_mel.shape}")
    x = self.bn0(log_mel)  # per mel bin
    if self.spec_augment is not None:
      x = self.spec_augment(x)
    x = x[..., None]  # (B, T, F, 1): H = time, W = mel
    if self.stem is not None:
      x = self.stem(x)
    for block, pool in zip(self.blocks, self.variant.pools):
      x = block(x)
      if pool:
        x = nnx.avg_pool(x, (2, 2), strides=(2, 2))
      x = self.dropout(x)
    return x

  def embedding(self, log_mel: jax.Array) -> jax.Array:
    """(B, T, n_mels) dB -> PANN's clip embedding (B, widths[-1]): ReLU(fc1(head_dropout(clip_pool(frames))))."""
    return jax.nn.relu(self.fc1(self.head_dropout(clip_pool(self.frame_features(log_mel)))))

  def from_log_mel(self, log_mel: jax.Array) -> jax.Array:
    """(B, T, n_mels) dB (``log_mel``'s output, e.g. precomputed by the data pipeline) -> logits (B, classes)."""
    return self.fc_audioset(self.embedding(log_mel))

  def __call__(self, waveform: jax.Array) -> jax.Array:
    """(B, L) samples -> logits (B, num_classes)."""
    return self.from_log_mel(self.log_mel(waveform))


@functools.lru_cache(maxsize=8)
def _mel_matrix(config: audio_frontend.LogMelConfig) -> np.ndarray:
  """The filterbank of a recipe, built once (librosa) and reused by every call and trace."""
  return config.mel_matrix()


# ---- the references' PyTorch state dicts ---------------------------------------------------------------

def reference_entries(model: Pann) -> list[tt.Entry]:
  """One ``models.torch_table`` entry per parameter and BatchNorm buffer of the reference's ``state_dict()``."""
  entries = tt.module("bn0", ("bn0",), tt.BATCH)
  if model.stem is not None:
    entries += tt.module("stem.0", ("stem", "conv"), tt.CONV) + tt.module("stem.1", ("stem", "norm"), tt.NORM)
  for i, (name, block) in enumerate(zip(model.variant.reference_block_names(), model.blocks)):
    entries += block.reference_entries(name, ("blocks", i))
  return entries + tt.module("fc1", ("fc1",), tt.LINEAR) + tt.module("fc_audioset", ("fc_audioset",), tt.LINEAR)


def load_torch_state(model: Pann, state_dict: Mapping[str, Any]) -> None:
  """Copies a reference state dict (``tt.load_torch_checkpoint``'s output) into ``model``, in place; the frozen
  front-end tensors (``REFERENCE_FRONT_END``) are skipped. Raises ValueError on any other mismatch."""
  tt.load_torch_state(model, reference_entries(model), state_dict, ignore=REFERENCE_FRONT_END)
