"""The two ConvNeXt AudioSet taggers of spec ``audio.md`` (sections 3-4), in Flax NNX, from ``models.convnext``'s
``Stem``, ``Downsample`` and ``Block``.

``AudioConvNeXt``: ConvNeXt-audio (Pellegrini et al., Interspeech 2023; topel/audioset-convnext-inf). It takes the
RAW waveform and owns its front end; the network sees time as its height and mel as its width:

  waveform (B, L), 32 kHz      -> power spectrogram (B, T, 513), T = 1 + L // 320
  @ melW (513, n_mels) -> dB   frozen Slaney filterbank (a ``Filterbank`` variable, never trained)
  bn0                          BatchNorm per mel bin, statistics over (batch, time)
  [SpecAugment]                train mode only, and only if built with ``spec_augment`` (off by default)
  stem, stages                 on (B, T, n_mels, 1): conv (4, 4) stride (4, 4) padding (4 time, 0 mel) + LayerNorm
                               -> frame embeddings (B, T', F', C)
  pooling                      mean over mel, then max + mean over time -> LayerNorm ``norm``: scene embedding
  ``head_audioset``            Linear -> logits; sigmoid -> clipwise probabilities

``DclsAudioConvNeXt``: DCLS-Audio's ConvNeXt (Khalfaoui-Hassani et al. 2023; K-H-Ismail/DCLS-Audio). It takes the
data pipeline's standardised log-mels (B, n_mels, T, 1), mel as the height and time as the width:

  stem, stages                 conv (2, 16) stride (2, 16) + LayerNorm; blocks whose depthwise conv is Gaussian DCLS
                               (d 23, 26 elements) or, for the baseline, a dense 7x7
  head                         mean over H, W -> LayerNorm ``norm`` (``features``) -> Linear ``head`` -> logits

  DCLS positions and sigmas follow the reference's sharing rule (``sharing.GrowingWidth``): one pair for each run of
  layers of the same, growing width, i.e. one per stage, while every layer keeps its own weight and bias.

Submodule names follow the reference state dicts (``bn0``, ``downsample_layers``, ``stages``, ``norm``,
``head_audioset`` / ``head``); ``models/audio_convnext_io.py`` converts checkpoints and runs the fixtures.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from models import audio_frontend
from models import convnext
from models import dcls_audio
from models import layers
from models.spec_augment import SpecAugment

TINY = convnext.SIZES["T"]  # ConvNeXt-T: depths (3, 3, 9, 3), dims (96, 192, 384, 768), in both papers


class Filterbank(nnx.Variable):
  """A frozen constant of a model (the mel matrix): in ``nnx.state`` and saved with it, but not an ``nnx.Param``,
  so no gradient, optimiser update or weight decay reaches it."""


class AudioConvNeXt(convnext.Body):
  """ConvNeXt-audio: raw waveform (B, L) -> logits (B, num_classes); ``AudioConvNeXt.tiny()`` is the released model.

  Args:
    num_classes: tags (527 for AudioSet).
    depths, dims: blocks and channels per stage.
    frontend: the log-mel recipe (``audio_frontend.LogMelConfig`` or its fields), default ``CONVNEXT_AUDIO`` (224
      Slaney mels); it must not standardise (bn0 normalises). ``melW`` is built from it.
    stem_kernel, stem_stride, stem_padding: the stem conv as (time, mel) pairs (padding: zeros on both sides).
    drop_path_rate: stochastic depth, linear over blocks from 0 up to this rate.
    layer_scale_init: initial value of each block's gamma (0: no layer scale).
    head_init_scale: multiplies the head's initial weight and bias.
    spec_augment: None (off), or ``models.spec_augment.SpecAugment``'s arguments ({} for topel's: 2 stripes below
      64 frames, 2 below 28 mel bins): applied after bn0 in training mode, drawing from the 'dropout' RNG stream.
    conv_algorithm: of the 7x7 depthwise convs ('auto', 'direct', 'fft'; ``dcls_jax.conv``).
  """

  def __init__(self, num_classes: int = 527, *, depths: Sequence[int] = TINY.depths,
               dims: Sequence[int] = TINY.dims, frontend=audio_frontend.CONVNEXT_AUDIO, stem_kernel=(4, 4),
               stem_stride=(4, 4), stem_padding=(4, 0), drop_path_rate: float = 0.0, layer_scale_init: float = 1e-6,
               head_init_scale: float = 1.0, spec_augment: Optional[Mapping[str, int]] = None,
               conv_algorithm: str = "auto", rngs: nnx.Rngs):
    if not isinstance(frontend, audio_frontend.LogMelConfig):
      frontend = audio_frontend.LogMelConfig(**dict(frontend))
    if frontend.norm_mean is not None:
      raise ValueError(f"frontend.norm_mean={frontend.norm_mean}: ConvNeXt-audio feeds dB to its BatchNorm bn0; "
                       "expected a front end without fixed standardisation (norm_mean = norm_std = None)")
    dwconv = convnext.DepthwiseConfig(kind="conv", kernel_size=7, conv_algorithm=conv_algorithm)
    super().__init__(depths=depths, dims=dims, dwconv=dwconv, in_chans=1, stem_kernel=stem_kernel,
                     stem_stride=stem_stride, stem_padding=stem_padding, drop_path_rate=drop_path_rate,
                     layer_scale_init=layer_scale_init, rngs=rngs)
    self.frontend = frontend
    self.melW = Filterbank(jnp.asarray(frontend.mel_matrix(), jnp.float32))
    self.bn0 = layers.BatchNorm(frontend.n_mels)
    self.spec_augment = (SpecAugment(**dict(spec_augment), rngs=rngs) if spec_augment is not None
                         else nnx.data(None))
    self.norm = convnext.LayerNorm(dims[-1], rngs=rngs)
    self.head_audioset = convnext.classifier(dims[-1], num_classes, head_init_scale=head_init_scale, rngs=rngs)

  @classmethod
  def tiny(cls, *, num_classes: int = 527, rngs: nnx.Rngs, **kwargs: Any) -> "AudioConvNeXt":
    """The released ConvNeXt-Tiny (28,222,767 parameters with 527 classes). Its recipe's drop path rate is not
    recorded (spec 6.2): the default is 0; ``kwargs`` go to the constructor."""
    return cls(num_classes, depths=TINY.depths, dims=TINY.dims, rngs=rngs, **kwargs)

  def log_mel(self, waveform: jax.Array) -> jax.Array:
    """(B, L) waveform -> (B, T, n_mels) dB mel spectrogram (the reference's ``logmel_extractor`` output)."""
    return audio_frontend.log_mel(waveform, self.frontend, self.melW[...])

  def normalize(self, log_mel: jax.Array) -> jax.Array:
    """(B, T, n_mels) dB -> the network input (B, T, n_mels): bn0, then SpecAugment if built with it."""
    x = self.bn0(log_mel)
    return x if self.spec_augment is None else self.spec_augment(x)

  def pool(self, frames: jax.Array) -> jax.Array:
    """(B, T', F', C) -> (B, C): mean over mel, then max + mean over time, then LayerNorm ``norm``."""
    x = jnp.mean(frames, axis=2)
    return self.norm(jnp.max(x, axis=1) + jnp.mean(x, axis=1))

  def frame_embeddings(self, waveform: jax.Array) -> jax.Array:
    """(B, L) -> the last stage's map (B, T', F', dims[-1]), channels last: the reference's (B, C, T', F')
    ``forward_frame_embeddings`` transposed by (0, 2, 3, 1). T' = 31, F' = 7 for 10 s clips."""
    return self.stage_outputs(self.normalize(self.log_mel(waveform))[..., None])[-1]

  def scene_embedding(self, waveform: jax.Array) -> jax.Array:
    """(B, L) -> (B, dims[-1]): the pooled, LayerNorm-ed clip embedding (the head's input)."""
    return self.pool(self.frame_embeddings(waveform))

  def __call__(self, waveform: jax.Array) -> jax.Array:
    """(B, L) float waveform at ``frontend.sample_rate`` -> logits (B, num_classes)."""
    return self.head_audioset(self.scene_embedding(waveform))

  def clipwise_output(self, waveform: jax.Array) -> jax.Array:
    """(B, L) -> per-tag probabilities sigmoid(logits) (B, num_classes)."""
    return jax.nn.sigmoid(self(waveform))


class DclsAudioConvNeXt(convnext.Body):
  """DCLS-Audio's ConvNeXt: log-mels (B, n_mels, T, in_chans) -> logits (B, num_classes); ``.tiny()`` is the paper's.

  Args:
    num_classes: tags (527 for AudioSet).
    depths, dims: blocks and channels per stage.
    dwconv: the blocks' depthwise conv: 'dcls' (default: Gaussian DCLS d 23 with 26 elements, the reference's),
      'conv' (the paper's dense 7x7 baseline) (``dcls_audio.DWCONVS``), or a ``convnext.DepthwiseConfig`` or its
      fields. DCLS layers start as spec
      4.1: positions N(0, 0.5^2) clamped to +-d // 2, sigmas 0.23, bias 0, weights ``convnext.Block``'s
      trunc-normal(0.02).
    in_chans: input channels (1).
    stem_kernel, stem_stride, stem_padding: the stem conv as (mel, time) pairs; the stride defaults to the kernel.
      Without padding (the reference), trailing frames that do not fill a patch are dropped (1001 -> 62 columns).
    drop_path_rate: stochastic depth, linear over blocks from 0 up to this rate.
    layer_scale_init: initial value of each block's gamma (0: no layer scale).
    head_init_scale: multiplies the head's initial weight and bias.
  """

  def __init__(self, num_classes: int = 527, *, depths: Sequence[int] = TINY.depths,
               dims: Sequence[int] = TINY.dims, dwconv="dcls", in_chans: int = 1,
               stem_kernel=(2, 16), stem_stride=None, stem_padding=0, drop_path_rate: float = 0.0,
               layer_scale_init: float = 1e-6, head_init_scale: float = 1.0, rngs: nnx.Rngs):
    super().__init__(depths=depths, dims=dims, dwconv=dcls_audio.depthwise_config(dwconv), in_chans=in_chans,
                     stem_kernel=stem_kernel, stem_stride=stem_stride, stem_padding=stem_padding,
                     drop_path_rate=drop_path_rate, layer_scale_init=layer_scale_init,
                     position_sharing="growing_width", rngs=rngs)
    self.norm = convnext.LayerNorm(dims[-1], rngs=rngs)
    self.head = convnext.classifier(dims[-1], num_classes, head_init_scale=head_init_scale, rngs=rngs)

  @classmethod
  def tiny(cls, *, num_classes: int = 527, dwconv="dcls", drop_path_rate: float = 0.4, rngs: nnx.Rngs,
           **kwargs: Any) -> "DclsAudioConvNeXt":
    """ConvNeXt-T with the recipe's stochastic depth 0.4 (spec 6.1) and ``dwconv`` 'dcls' (Gaussian DCLS d 23, 26
    elements: 28,221,263 parameters with 527 classes), 'conv' (the dense 7x7 baseline: 28,223,855) or a
    ``DepthwiseConfig``. Other ``kwargs`` go to the constructor."""
    return cls(num_classes, depths=TINY.depths, dims=TINY.dims, dwconv=dwconv, drop_path_rate=drop_path_rate,
               rngs=rngs, **kwargs)

  def features(self, x: jax.Array) -> jax.Array:
    """(B, n_mels, T, in_chans) -> (B, dims[-1]): mean over both axes of the last stage, then LayerNorm ``norm``
    (the head's input)."""
    return self.norm(jnp.mean(self.stage_outputs(x)[-1], axis=(1, 2)))

  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, n_mels, T, in_chans) standardised log-mels, H = mel, W = time -> logits (B, num_classes)."""
    return self.head(self.features(x))
