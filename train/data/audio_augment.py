"""Audio augmentations of the two AudioSet recipes (spec/audio.md), in numpy, on batches with per-example randomness.

* ``roll``: circular shift of the waveform (DCLS-Audio, spec 2.2 step 2; topel's variant, 2.3 step 2, has a smaller
  range);
* ``speed_perturb``: nearest-neighbour resampling, then zero-pad or crop back with a random alignment (2.2 step 3);
* ``erase_spectrogram``: timm's random erasing, mode 'const', on the linear-frequency power spectrogram (2.2 step 5);
* ``spec_augment``: torchlibrosa's SpecAugmentation, zeroed time and frequency stripes (2.3 step 6);
* ``make_mixup``: DCLS-Audio's mixup for multi-label targets, label smoothing folded in (6.1).

Randomness. Every per-example function takes one ``numpy.random.Generator`` per example (``augment.example_generators``
seeds them from the loader's ``ExampleRandom``), so an example's augmentation is a function of (seed, epoch, record)
alone, whatever batch it lands in; mixup draws one generator per batch. The references draw from torch's and
Python's global generators instead: the distributions are theirs, the streams are not.

Layouts: waveforms (B, L) float; spectrograms (B, T, F) float, time before frequency (the front end's layout).
Functions return new arrays and leave their inputs unchanged.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from ml_collections import ConfigDict

from train.data import augment, pipeline


def roll(waveforms: np.ndarray, generators: Sequence[np.random.Generator], *, max_shift: int | None = None
         ) -> np.ndarray:
  """Each waveform (B, L) circularly shifted by an integer uniform in [-max_shift, max_shift) samples (``np.roll``
  / ``torch.roll`` direction: a positive shift moves samples later). Default max_shift = L, DCLS-Audio's
  ``RandomRoll`` (spec 2.2 step 2); topel's batch-level roll (2.3 step 2) is max_shift = 50."""
  length = waveforms.shape[-1]
  max_shift = length if max_shift is None else max_shift
  return np.stack([np.roll(waveform, int(rng.integers(-max_shift, max_shift)))
                   for waveform, rng in zip(waveforms, generators)])


def stretch(waveform: np.ndarray, rate: float) -> np.ndarray:
  """(L,) -> (ceil(L * rate),) nearest-neighbour resampling: samples at round(arange(0, L, 1 / rate)), clipped to
  L - 1 (round half to even, as torch.round). rate > 1 lengthens (slows down) the signal."""
  length = len(waveform)
  indices = np.minimum(np.round(np.arange(0, length, 1.0 / rate)), length - 1).astype(np.int64)
  return waveform[indices]


def speed_perturb(waveforms: np.ndarray, generators: Sequence[np.random.Generator], *, probability: float = 0.5,
                  rates: tuple[float, float] = (0.5, 1.5)) -> np.ndarray:
  """DCLS-Audio's ``SpeedPerturbation(rates=(0.5, 1.5), p=0.5)`` (spec 2.2 step 3) on each waveform (B, L).

  With ``probability``, the waveform is ``stretch``ed by a rate uniform in ``rates``, then brought back to L
  samples: a shorter one is zero-padded with a left pad uniform in [0, L - n], a longer one cropped from a start
  uniform in [0, n - L) (the reference's ``torch.randint(0, n - L)``, which never takes the last start).
  """
  length = waveforms.shape[-1]
  perturbed = waveforms.copy()
  for row, rng in zip(perturbed, generators):
    if rng.random() >= probability:
      continue
    stretched = stretch(row, rng.uniform(*rates))
    if len(stretched) < length:
      left = int(rng.integers(0, length - len(stretched) + 1))
      row[:] = 0
      row[left:left + len(stretched)] = stretched
    elif len(stretched) > length:
      start = int(rng.integers(0, len(stretched) - length))
      row[:] = stretched[start:start + length]
  return perturbed


def erase_spectrogram(spectrograms: np.ndarray, generators: Sequence[np.random.Generator], *,
                      probability: float = 0.25) -> np.ndarray:
  """timm's ``RandomErasing(probability, mode='const', max_count=1)`` on power spectrograms (B, T, F), as DCLS-Audio
  applies it to the linear-frequency spectrogram (spec 2.2 step 5): with ``probability``, one rectangle of a
  uniform 2%..1/3 of the area, log-uniform aspect ratio in [0.3, 1/0.3], is set to 0. timm sees the spectrogram as
  an image of height F (frequency) and width T (time); so does this function (``augment.random_erasing``)."""
  images = np.swapaxes(spectrograms, 1, 2)[..., None]  # (B, F, T, 1)
  erased = augment.random_erasing(images, generators, probability=probability, fill=0.0)
  return np.swapaxes(erased[..., 0], 1, 2)


def drop_stripes(features: np.ndarray, generators: Sequence[np.random.Generator], *, axis: int, drop_width: int,
                 stripes_num: int) -> np.ndarray:
  """torchlibrosa's ``DropStripes`` on (B, ...) features along ``axis`` (>= 1) of size N: for each example,
  ``stripes_num`` times, a stripe of width w uniform in {0, .., drop_width - 1} starting uniformly in
  {0, .., N - w - 1} is set to 0."""
  if axis < 1 or axis >= features.ndim:
    raise ValueError(f"axis must name a feature axis 1..{features.ndim - 1} of the (B, ...) batch, got {axis}")
  size = features.shape[axis]
  if not 1 <= drop_width <= size:
    raise ValueError(f"drop_width must lie in 1..{size} (the size of axis {axis}), got {drop_width}")
  dropped = np.moveaxis(features.copy(), axis, 1)  # a view of the copy: writes reach it
  for example, rng in zip(dropped, generators):
    for _ in range(stripes_num):
      width = int(rng.integers(0, drop_width))
      start = int(rng.integers(0, size - width))
      example[start:start + width] = 0
  return np.moveaxis(dropped, 1, axis)


def spec_augment(features: np.ndarray, generators: Sequence[np.random.Generator], *, time_axis: int,
                 freq_axis: int, time_drop_width: int = 64, time_stripes_num: int = 2, freq_drop_width: int = 28,
                 freq_stripes_num: int = 2) -> np.ndarray:
  """torchlibrosa's ``SpecAugmentation`` on (B, ...) features (spec 2.3 step 6): ``drop_stripes`` along
  ``time_axis``, then along ``freq_axis``, from the same generator per example. Defaults: topel's, 2 time stripes
  narrower than 64 frames and 2 frequency stripes narrower than 28 bins."""
  features = drop_stripes(features, generators, axis=time_axis, drop_width=time_drop_width,
                          stripes_num=time_stripes_num)
  return drop_stripes(features, generators, axis=freq_axis, drop_width=freq_drop_width,
                      stripes_num=freq_stripes_num)


MIXUP_FIELDS = {"alpha": 0.8, "label_smoothing": 0.1}  # DCLS-Audio's values


def make_mixup(mixup_config: ConfigDict, *, draw: int, input_key: str = "input") -> pipeline.Transform:
  """DCLS-Audio's ``batch_mixup_fn`` (spec 6.1) as a batch transform on ``input_key`` (B, ...) float and ``label``
  (B, C) multi-hot float.

  ``mixup_config`` fields (defaults ``MIXUP_FIELDS``): ``alpha`` (0.8), ``label_smoothing`` s (0.1). One
  lam ~ Beta(alpha, alpha) per batch and a uniform permutation pi of the batch: x <- lam x + (1 - lam) x[pi];
  targets t = (1 - s) y + s / C, then t <- lam t + (1 - lam) t[pi]. Not ``augment.make_mixup``: that one mixes
  one-hot targets of integer labels with the reversed batch and may switch to cutmix.

  Randomness: one generator per batch, seeded by ``random.integers(draw, ...)`` of the batch's first example (as
  ``augment.make_mixup``): lam and pi are a function of (seed, epoch, first record), so of the per-process batch.
  """
  unknown = set(mixup_config) - set(MIXUP_FIELDS)
  if unknown:
    raise ValueError(f"config.dataset.mixup: unknown fields {sorted(unknown)}; expected {sorted(MIXUP_FIELDS)}")
  alpha = mixup_config.get("alpha", MIXUP_FIELDS["alpha"])
  smoothing = mixup_config.get("label_smoothing", MIXUP_FIELDS["label_smoothing"])
  if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
    raise ValueError(f"config.dataset.mixup.alpha must be a number > 0, got {alpha!r}")
  if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not 0 <= smoothing < 1:
    raise ValueError(f"config.dataset.mixup.label_smoothing must be a number in [0, 1), got {smoothing!r}")

  def mix(batch: dict, random: pipeline.ExampleRandom) -> dict:
    rng = augment.example_generators(random, draw)[0]
    inputs, labels = batch[input_key], batch["label"]
    partners = rng.permutation(len(labels))
    lam = rng.beta(alpha, alpha)
    targets = (1.0 - smoothing) * labels + smoothing / labels.shape[-1]
    return {**batch, input_key: (lam * inputs + (1.0 - lam) * inputs[partners]).astype(inputs.dtype),
            "label": (lam * targets + (1.0 - lam) * targets[partners]).astype(np.float32)}

  return mix
