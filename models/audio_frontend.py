"""Log-mel front ends of the two AudioSet taggers (spec ``audio.md`` section 2): waveform -> dB mel spectrogram.

Both recipes compute, per clip (32 kHz mono, float samples in [-1, 1)):

  power_spectrogram   periodic Hann window of n_fft samples, centre reflect padding n_fft // 2, one frame every
                      hop_length samples, |rfft|^2: (..., L) -> (..., T, n_fft // 2 + 1), T = 1 + L // hop_length
  mel projection      power @ mel_filterbank (n_fft // 2 + 1, n_mels): 'slaney' (librosa defaults: Slaney mel
                      scale and area normalisation; ConvNeXt-audio, topel) or 'htk' (HTK mel scale, no
                      normalisation; torchaudio ``MelScale``, DCLS-Audio)
  power_to_db         10 log10(max(mel, 1e-10)): digital silence is exactly -100 dB; no top-dB clipping
  standardisation     (dB - norm_mean) / norm_std with fixed scalars (DCLS-Audio only; ConvNeXt-audio's model
                      normalises with its own BatchNorm ``bn0``)

``LogMelConfig`` holds one recipe (``CONVNEXT_AUDIO``, ``DCLS_AUDIO``, or ``from_reference`` a fixture's
meta.config) and ``log_mel`` runs it. Every function is pure and jit-able, batched over the leading axes, and keeps
the waveform's floating dtype (float32 by default). Layout is time before frequency (..., T, F); the DCLS-Audio
networks take the transpose (mel-major), which is the caller's business.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

MEL_SCALES = ("slaney", "htk")


def num_frames(num_samples: int, hop_length: int) -> int:
  """Frames of a centred STFT of ``num_samples`` samples: 1 + num_samples // hop_length."""
  return 1 + num_samples // hop_length


def _check_positive(**values: int) -> None:
  for name, value in values.items():
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _periodic_hann(n_fft: int) -> np.ndarray:
  """w[n] = 0.5 - 0.5 cos(2 pi n / n_fft), n = 0..n_fft-1 (scipy ``get_window('hann', n_fft)``), float64."""
  return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)


def power_spectrogram(waveform: jax.Array, *, n_fft: int = 1024, hop_length: int = 320) -> jax.Array:
  """|STFT|^2 of a centred, reflect-padded, periodic-Hann-windowed signal (torchaudio / torchlibrosa semantics).

  Args:
    waveform: (..., L) floating samples; L > n_fft // 2 (reflect padding mirrors n_fft // 2 samples at each end
      without repeating the edge sample).
    n_fft: window and FFT length in samples.
    hop_length: samples between frame starts; frame t covers padded samples [t hop, t hop + n_fft).

  Returns:
    (..., T, n_fft // 2 + 1) power re^2 + im^2, unnormalised, T = 1 + L // hop_length, in the waveform's dtype.

  The DFT is ``jnp.fft.rfft`` of the framed signal: on CPU 2-3x faster than a matmul with the reference's
  cos / sin kernels, and as exact (both within 5% of the fixtures' float32 tolerances).
  """
  _check_positive(n_fft=n_fft, hop_length=hop_length)
  waveform = jnp.asarray(waveform)
  if not jnp.issubdtype(waveform.dtype, jnp.floating):
    raise ValueError(f"waveform must be floating point, got {waveform.dtype} (scale integer PCM to [-1, 1) first)")
  pad = n_fft // 2
  if waveform.ndim == 0 or waveform.shape[-1] <= pad:
    raise ValueError(f"waveform must have shape (..., L) with L >= n_fft // 2 + 1 = {pad + 1} samples for reflect "
                     f"padding, got shape {waveform.shape}")
  padded = jnp.pad(waveform, [(0, 0)] * (waveform.ndim - 1) + [(pad, pad)], mode="reflect")
  starts = hop_length * np.arange(num_frames(waveform.shape[-1], hop_length))
  frames = padded[..., starts[:, None] + np.arange(n_fft)]  # (..., T, n_fft)
  spectrum = jnp.fft.rfft(frames * _periodic_hann(n_fft).astype(waveform.dtype), axis=-1)
  return jnp.square(spectrum.real) + jnp.square(spectrum.imag)


def _check_mel_arguments(*, mel_scale: str, sample_rate: int, n_fft: int, n_mels: int, f_min: float,
                         f_max: float) -> None:
  """Raises ValueError naming the first bad argument of ``mel_filterbank``."""
  if mel_scale not in MEL_SCALES:
    raise ValueError(f"mel_scale must be one of {MEL_SCALES}, got {mel_scale!r}")
  _check_positive(sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels)
  if not 0 <= f_min < f_max <= sample_rate / 2:
    raise ValueError(f"expected 0 <= f_min < f_max <= sample_rate / 2 = {sample_rate / 2} Hz (Nyquist), got "
                     f"f_min={f_min}, f_max={f_max}")


def mel_filterbank(*, mel_scale: str, sample_rate: int, n_fft: int, n_mels: int, f_min: float,
                   f_max: float) -> np.ndarray:
  """Triangular mel filters for the one-sided spectrum, built by ``librosa.filters.mel`` in float64.

  Args:
    mel_scale: 'slaney' (librosa's defaults: Slaney mel scale, each triangle scaled to unit area by
      2 / (f_{i+2} - f_i); torchlibrosa's ``LogmelFilterBank``) or 'htk' (m = 2595 log10(1 + f / 700), peak-1
      triangles without normalisation; torchaudio's ``MelScale`` defaults).
    sample_rate: Hz; bin k of the spectrum sits at k sample_rate / n_fft Hz.
    n_fft: FFT length of the spectrogram the filters apply to.
    n_mels: number of filters, band edges equally spaced in mel between f_min and f_max.
    f_min, f_max: Hz, 0 <= f_min < f_max <= sample_rate / 2.

  Returns:
    (n_fft // 2 + 1, n_mels) float64, column j = filter j (lowest band first): mel power = power @ matrix.
  """
  _check_mel_arguments(mel_scale=mel_scale, sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels, f_min=f_min,
                       f_max=f_max)
  import librosa.filters  # pylint: disable=g-import-not-at-top  # slow to import; only the filterbank needs it
  norm = "slaney" if mel_scale == "slaney" else None
  return librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max,
                             htk=mel_scale == "htk", norm=norm, dtype=np.float64).T


def power_to_db(power: jax.Array, *, amin: float = 1e-10) -> jax.Array:
  """10 log10(max(power, amin)) in dB relative to 1, no top-dB clipping: power 0 gives 10 log10(amin)."""
  if not amin > 0:
    raise ValueError(f"amin must be > 0, got {amin}")
  return 10.0 * jnp.log10(jnp.maximum(power, amin))


@dataclasses.dataclass(frozen=True)
class LogMelConfig:
  """One log-mel recipe.

  Attributes:
    sample_rate: Hz of the waveform.
    n_fft: STFT window and FFT length, samples.
    hop_length: samples between frames.
    n_mels: mel bands.
    f_min, f_max: Hz, the filterbank's range.
    mel_scale: 'slaney' or 'htk' (see ``mel_filterbank``).
    norm_mean, norm_std: dB; when set, ``log_mel`` returns (dB - norm_mean) / norm_std. Both or neither.
  """
  sample_rate: int
  n_fft: int
  hop_length: int
  n_mels: int
  f_min: float
  f_max: float
  mel_scale: str
  norm_mean: Optional[float] = None
  norm_std: Optional[float] = None

  def __post_init__(self):
    _check_mel_arguments(mel_scale=self.mel_scale, sample_rate=self.sample_rate, n_fft=self.n_fft,
                         n_mels=self.n_mels, f_min=self.f_min, f_max=self.f_max)
    _check_positive(hop_length=self.hop_length)
    if (self.norm_mean is None) != (self.norm_std is None):
      raise ValueError(f"norm_mean and norm_std must be set together, got norm_mean={self.norm_mean}, "
                       f"norm_std={self.norm_std}")
    if self.norm_std is not None and not self.norm_std > 0:
      raise ValueError(f"norm_std must be > 0, got {self.norm_std}")

  def mel_matrix(self) -> np.ndarray:
    """(n_fft // 2 + 1, n_mels) float64 filterbank of this recipe."""
    return mel_filterbank(mel_scale=self.mel_scale, sample_rate=self.sample_rate, n_fft=self.n_fft,
                          n_mels=self.n_mels, f_min=self.f_min, f_max=self.f_max)

  @classmethod
  def from_reference(cls, meta_config: Mapping[str, Any]) -> "LogMelConfig":
    """The recipe a reference fixture's ``meta.config`` describes.

    The field names say which reference it is: torchlibrosa's (``window_size``, ``hop_size``, ``mel_bins``,
    ``fmin``, ``fmax``: topel's ConvNeXt-audio, Slaney filters, no fixed normalisation) or torchaudio's (``n_fft``,
    ``hop_length``, ``n_mels``, ``f_min``, ``f_max``, ``norm_mean``, ``norm_std``: DCLS-Audio, HTK filters).
    Both have ``sample_rate``.
    """
    for mel_scale, names in _REFERENCE_FIELDS.items():
      if names["n_fft"] in meta_config:
        break
    else:
      raise ValueError(f"meta_config has neither 'window_size' (torchlibrosa, ConvNeXt-audio) nor 'n_fft' "
                       f"(torchaudio, DCLS-Audio): not a log-mel front end config; keys {sorted(meta_config)}")
    missing = [name for name in ("sample_rate", *names.values()) if name not in meta_config]
    if missing:
      raise ValueError(f"meta_config lacks {missing} for a {mel_scale} ({names['n_fft']}-style) front end")
    return cls(sample_rate=meta_config["sample_rate"], mel_scale=mel_scale,
               **{field: meta_config[name] for field, name in names.items()})


# meta.config names of the two references: LogMelConfig field -> reference field, keyed by the mel scale.
_REFERENCE_FIELDS = {
    "slaney": {"n_fft": "window_size", "hop_length": "hop_size", "n_mels": "mel_bins", "f_min": "fmin",
               "f_max": "fmax"},
    "htk": {"n_fft": "n_fft", "hop_length": "hop_length", "n_mels": "n_mels", "f_min": "f_min", "f_max": "f_max",
            "norm_mean": "norm_mean", "norm_std": "norm_std"},
}

# ConvNeXt-audio (Pellegrini et al. 2023): 224 Slaney mels; the model's bn0 normalises.
CONVNEXT_AUDIO = LogMelConfig(sample_rate=32000, n_fft=1024, hop_length=320, n_mels=224, f_min=50.0,
                              f_max=14000.0, mel_scale="slaney")
# DCLS-Audio (Khalfaoui-Hassani et al. 2023): 128 HTK mels, standardised with the repo's balanced-train scalars.
DCLS_AUDIO = LogMelConfig(sample_rate=32000, n_fft=1024, hop_length=320, n_mels=128, f_min=50.0, f_max=14000.0,
                          mel_scale="htk", norm_mean=-18.2696, norm_std=30.5735)


def log_mel(waveform: jax.Array, config: LogMelConfig, mel_matrix: Optional[jax.Array] = None) -> jax.Array:
  """Waveform -> (standardised) dB mel spectrogram.

  Args:
    waveform: (..., L) floating samples at ``config.sample_rate``, L > n_fft // 2.
    config: the recipe.
    mel_matrix: (n_fft // 2 + 1, n_mels) filterbank to use instead of ``config.mel_matrix()`` (a model's frozen
      copy, or one built once by a data pipeline).

  Returns:
    (..., T, n_mels) in the waveform's dtype, T = 1 + L // hop_length: dB, or (dB - norm_mean) / norm_std when the
    config sets them. The projection runs at full matmul precision whatever the ambient default.
  """
  power = power_spectrogram(waveform, n_fft=config.n_fft, hop_length=config.hop_length)
  return log_mel_of_power(power, config, mel_matrix)


def log_mel_of_power(power: jax.Array, config: LogMelConfig, mel_matrix: Optional[jax.Array] = None) -> jax.Array:
  """The second half of ``log_mel``: power (..., T, n_fft // 2 + 1) -> (..., T, n_mels) (standardised) dB, for
  pipelines that augment the linear spectrogram in between (DCLS-Audio's random erasing)."""
  if mel_matrix is None:
    mel_matrix = config.mel_matrix()
  expected = (config.n_fft // 2 + 1, config.n_mels)
  if tuple(mel_matrix.shape) != expected:
    raise ValueError(f"mel_matrix must have shape (n_fft // 2 + 1, n_mels) = {expected}, got {mel_matrix.shape}")
  mel = jnp.matmul(power, jnp.asarray(mel_matrix, power.dtype), precision=jax.lax.Precision.HIGHEST)
  db = power_to_db(mel)
  if config.norm_mean is None:
    return db
  return (db - config.norm_mean) / config.norm_std
