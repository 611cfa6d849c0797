"""SpecAugment inside a model (torchlibrosa ``SpecAugmentation``), for the recipes that mask after their bn0.

ConvNeXt-audio and PANN normalise the log-mels with a learned BatchNorm per mel bin, then (training only) zero a
few time and frequency stripes, so a masked stripe sits at the normalised mean level. That happens inside the
model, so it lives here as a module; DCLS-Audio masks in its data pipeline (``train/data/audio_augment.py``).

Per example, ``time_stripes`` times: a width w uniform in {0, .., time_width - 1} and a start uniform in
{0, .., T - w - 1}; the frames [start, start + w) are set to 0. Then the same along the mel axis. Active in
training mode only (``model.train()``), drawing from the 'dropout' RNG stream, which the train step reseeds
every step.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class SpecAugment(nnx.Module):
  """x (B, T, F) log-mels (time before mel) -> same shape with stripes zeroed in training mode.

  Args:
    time_width, time_stripes: stripes along time: widths below ``time_width`` frames (topel: 64, 2).
    freq_width, freq_stripes: stripes along mel: widths below ``freq_width`` bins (topel: 28 of 224; PANN: 8 of 64).
    rngs: the 'dropout' stream is forked for the masks.
  """

  def __init__(self, *, time_width: int = 64, time_stripes: int = 2, freq_width: int = 28, freq_stripes: int = 2,
               rngs: nnx.Rngs):
    for name, value in dict(time_width=time_width, freq_width=freq_width).items():
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    for name, value in dict(time_stripes=time_stripes, freq_stripes=freq_stripes).items():
      if not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    self.time_width, self.time_stripes = time_width, time_stripes
    self.freq_width, self.freq_stripes = freq_width, freq_stripes
    self.deterministic = False
    self.rngs = rngs["dropout"].fork()

  def _keep(self, key: jax.Array, batch: int, size: int, width: int, stripes: int) -> jax.Array:
    """(B, size) bool: False inside any of the ``stripes`` stripes of each example."""
    if width > size:
      raise ValueError(f"stripe width bound {width} exceeds the axis size {size}")
    width_key, start_key = jax.random.split(key)
    widths = jax.random.randint(width_key, (batch, stripes), 0, width)
    starts = jnp.floor(jax.random.uniform(start_key, (batch, stripes)) * (size - widths)).astype(jnp.int32)
    index = jnp.arange(size)[None, None, :]
    inside = (index >= starts[..., None]) & (index < (starts + widths)[..., None])
    return ~jnp.any(inside, axis=1)

  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 3:
      raise ValueError(f"x must be (B, T, F) log-mels, got shape {x.shape}")
    if self.deterministic:
      return x
    batch, frames, bins = x.shape
    time_key, freq_key = jax.random.split(self.rngs())
    keep_time = self._keep(time_key, batch, frames, self.time_width, self.time_stripes)
    keep_freq = self._keep(freq_key, batch, bins, self.freq_width, self.freq_stripes)
    return x * (keep_time[:, :, None] & keep_freq[:, None, :]).astype(x.dtype)
