"""Image augmentations of the ConvNeXt recipe (timm's, in numpy and Pillow): random resized crop, RandAugment,
random erasing, mixup / cutmix with label smoothing.

Randomness. Every function takes its random numbers from ``numpy.random.Generator``s: one per example
(``example_generators``, seeded from the loader's ``ExampleRandom``, so an example's augmentation is a pure function
of (seed, epoch, record)) or, for mixup, one per batch. timm draws from Python's ``random`` and numpy's global
state instead: the distributions are timm's, the streams are not.

Layouts: images are NHWC numpy arrays, uint8 0..255 before normalisation and float32 after; single images are
``PIL.Image``s in RGB.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Optional, Sequence

import numpy as np
from ml_collections import ConfigDict
from PIL import Image, ImageEnhance, ImageOps

from train.data import pipeline

RESAMPLE = Image.Resampling.BICUBIC  # the recipe's train_interpolation
MAGNITUDE_MAX = 10.0  # timm's _LEVEL_DENOM: magnitude 10 is each op's strongest setting
TRANSLATE_FRACTION = 0.45  # timm's translate_pct: the largest shift, as a fraction of the image side


def example_generators(random: pipeline.ExampleRandom, draw: int) -> list[np.random.Generator]:
  """One ``numpy.random.Generator`` per example, seeded with the example's ``random.integers(draw, 0, 2**53)``."""
  return [np.random.default_rng(int(seed)) for seed in random.integers(draw, 0, 2**53)]


def random_resized_crop(image: Image.Image, rng: np.random.Generator, size: int,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Image.Image:
  """torchvision's / timm's RandomResizedCrop: a (size, size) bicubic resize of a crop covering a uniform fraction
  ``scale`` of the area with a log-uniform aspect ``ratio`` (width / height); after 10 failed tries, the largest
  central crop with the aspect ratio clamped to ``ratio``."""
  width, height = image.size
  area = width * height
  for _ in range(10):
    target_area = rng.uniform(*scale) * area
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    crop_width = int(round(math.sqrt(target_area * aspect)))
    crop_height = int(round(math.sqrt(target_area / aspect)))
    if 0 < crop_width <= width and 0 < crop_height <= height:
      top = int(rng.integers(0, height - crop_height + 1))
      left = int(rng.integers(0, width - crop_width + 1))
      break
  else:
    aspect = width / height
    crop_width = int(round(height * ratio[1])) if aspect > ratio[1] else width
    crop_height = int(round(width / ratio[0])) if aspect < ratio[0] else height
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
  return image.resize((size, size), RESAMPLE, box=(left, top, left + crop_width, top + crop_height))


# ---- RandAugment ------------------------------------------------------------------------------------------------

def _signed(value: float, rng: np.random.Generator) -> float:
  """``value`` with a random sign (timm's _randomly_negate)."""
  return -value if rng.random() > 0.5 else value


def _enhance_factor(level: float, rng: np.random.Generator) -> float:
  """timm's _enhance_increasing_level_to_arg: 1 +- 0.9 level, at least 0.1."""
  return max(0.1, 1.0 + _signed(level * 0.9, rng))


def _affine(image: Image.Image, coefficients: tuple, fill: tuple[int, ...]) -> Image.Image:
  return image.transform(image.size, Image.Transform.AFFINE, coefficients, resample=RESAMPLE, fillcolor=fill)


def _solarize_add(image: Image.Image, add: int, threshold: int = 128) -> Image.Image:
  lut = [min(255, value + add) if value < threshold else value for value in range(256)]
  return image.point(lut * len(image.getbands()))


def _posterize(image: Image.Image, bits: int) -> Image.Image:
  return image if bits >= 8 else ImageOps.posterize(image, bits)


# timm's _RAND_INCREASING_TRANSFORMS (the 'inc1' op set): name -> op(image, level, rng, fill), level = magnitude / 10
# in [0, 1]; a larger level is always a stronger change.
RAND_AUGMENT_OPS: dict[str, Callable[[Image.Image, float, np.random.Generator, tuple], Image.Image]] = {
    "AutoContrast": lambda image, level, rng, fill: ImageOps.autocontrast(image),
    "Equalize": lambda image, level, rng, fill: ImageOps.equalize(image),
    "Invert": lambda image, level, rng, fill: ImageOps.invert(image),
    "Rotate": lambda image, level, rng, fill: image.rotate(
        _signed(30.0 * level, rng), resample=RESAMPLE, fillcolor=fill),
    "PosterizeIncreasing": lambda image, level, rng, fill: _posterize(image, 4 - int(4 * level)),
    "SolarizeIncreasing": lambda image, level, rng, fill: ImageOps.solarize(image, 256 - int(256 * level)),
    "SolarizeAdd": lambda image, level, rng, fill: _solarize_add(image, int(110 * level)),
    "ColorIncreasing": lambda image, level, rng, fill: ImageEnhance.Color(image).enhance(_enhance_factor(level, rng)),
    "ContrastIncreasing": lambda image, level, rng, fill: ImageEnhance.Contrast(image).enhance(
        _enhance_factor(level, rng)),
    "BrightnessIncreasing": lambda image, level, rng, fill: ImageEnhance.Brightness(image).enhance(
        _enhance_factor(level, rng)),
    "SharpnessIncreasing": lambda image, level, rng, fill: ImageEnhance.Sharpness(image).enhance(
        _enhance_factor(level, rng)),
    "ShearX": lambda image, level, rng, fill: _affine(image, (1, _signed(0.3 * level, rng), 0, 0, 1, 0), fill),
    "ShearY": lambda image, level, rng, fill: _affine(image, (1, 0, 0, _signed(0.3 * level, rng), 1, 0), fill),
    "TranslateXRel": lambda image, level, rng, fill: _affine(
        image, (1, 0, _signed(TRANSLATE_FRACTION * level, rng) * image.size[0], 0, 1, 0), fill),
    "TranslateYRel": lambda image, level, rng, fill: _affine(
        image, (1, 0, 0, 0, 1, _signed(TRANSLATE_FRACTION * level, rng) * image.size[1]), fill),
}


def rand_augment(image: Image.Image, rng: np.random.Generator, *, num_ops: int, magnitude: float,
                 magnitude_std: float, fill: tuple[int, ...], op_probability: float = 0.5) -> Image.Image:
  """timm's RandAugment ('rand-m{magnitude}-mstd{magnitude_std}-n{num_ops}-inc1') on one RGB image.

  ``num_ops`` ops drawn uniformly with replacement from ``RAND_AUGMENT_OPS``; each applies with probability
  ``op_probability`` at a magnitude drawn from N(magnitude, magnitude_std^2) clipped to [0, 10] (std 0: exactly
  ``magnitude``); geometric ops resample bicubically and fill with ``fill`` (RGB 0..255, timm: the dataset mean).
  """
  names = list(RAND_AUGMENT_OPS)
  for name in rng.choice(names, num_ops):
    if rng.random() > op_probability:
      continue
    drawn = rng.normal(magnitude, magnitude_std) if magnitude_std > 0 else magnitude
    level = min(max(drawn, 0.0), MAGNITUDE_MAX) / MAGNITUDE_MAX
    image = RAND_AUGMENT_OPS[name](image, level, rng, fill)
  return image


# ---- random erasing ----------------------------------------------------------------------------------------------

def random_erasing(images: np.ndarray, generators: Sequence[np.random.Generator], *, probability: float,
                   min_area: float = 0.02, max_area: float = 1 / 3, min_aspect: float = 0.3,
                   fill: Optional[float] = None) -> np.ndarray:
  """timm's RandomErasing(probability, max_count=1) on a float batch (B, H, W, C): mode 'pixel' (``fill`` None) or
  'const' (``fill`` 0; any other number: that constant).

  With ``probability``, an example gets one rectangle of a uniform fraction [min_area, max_area] of its area and a
  log-uniform aspect ratio in [min_aspect, 1 / min_aspect] replaced by N(0, 1) noise per pixel and channel, or by
  ``fill`` (10 tries to fit the rectangle strictly inside the image, else unchanged). Returns a new array; ``images``
  is not changed.
  """
  erased = images.copy()
  _, height, width, channels = images.shape
  log_aspect = (math.log(min_aspect), -math.log(min_aspect))
  for image, rng in zip(erased, generators):
    if rng.random() > probability:
      continue
    for _ in range(10):
      target_area = rng.uniform(min_area, max_area) * height * width
      aspect = math.exp(rng.uniform(*log_aspect))
      rect_height = int(round(math.sqrt(target_area * aspect)))
      rect_width = int(round(math.sqrt(target_area / aspect)))
      if rect_width < width and rect_height < height:
        top = int(rng.integers(0, height - rect_height + 1))
        left = int(rng.integers(0, width - rect_width + 1))
        image[top:top + rect_height, left:left + rect_width] = (
            rng.standard_normal((rect_height, rect_width, channels)) if fill is None else fill)
        break
  return erased


# ---- mixup / cutmix ----------------------------------------------------------------------------------------------

def smoothed_one_hot(labels: np.ndarray, num_classes: int, smoothing: float) -> np.ndarray:
  """(B,) int -> (B, num_classes) float32: 1 - smoothing + smoothing / num_classes on the label, smoothing /
  num_classes elsewhere (rows sum to 1)."""
  off = smoothing / num_classes
  targets = np.full((len(labels), num_classes), off, np.float32)
  targets[np.arange(len(labels)), labels] = 1.0 - smoothing + off
  return targets


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
  """timm's rand_bbox: (top, bottom, left, right) of a box of sides int(side * sqrt(1 - lam)) centred at a uniform
  pixel, clipped to the image."""
  cut_height, cut_width = int(height * math.sqrt(1 - lam)), int(width * math.sqrt(1 - lam))
  center_y, center_x = int(rng.integers(0, height)), int(rng.integers(0, width))
  return (max(center_y - cut_height // 2, 0), min(center_y + cut_height // 2, height),
          max(center_x - cut_width // 2, 0), min(center_x + cut_width // 2, width))


MIXUP_FIELDS = ("mixup_alpha", "cutmix_alpha", "prob", "switch_prob", "label_smoothing")


def make_mixup(mixup_config: ConfigDict, *, num_classes: int, draw: int) -> pipeline.Transform:
  """timm's Mixup in mode 'batch' (correct_lam on) as a batch transform: ``image`` (B, H, W, C) float and ``label``
  (B,) int in, the mixed images and soft targets ``label`` (B, num_classes) float32 out (rows sum to 1).

  ``mixup_config`` fields (the recipe's values): ``mixup_alpha`` (0.8), ``cutmix_alpha`` (1.0), ``prob`` (1.0: the
  probability that a batch is mixed at all), ``switch_prob`` (0.5: cutmix rather than mixup when both alphas are
  positive), ``label_smoothing`` (0.1). Example i is mixed with example B - 1 - i (the batch reversed, timm's
  ``flip(0)``) with weight lam ~ Beta(alpha, alpha) on its own: mixup blends whole images, cutmix pastes a box
  (``cutmix_box``) and sets lam to the unpasted fraction of the area. Targets: lam * smoothed one-hot(label) +
  (1 - lam) * smoothed one-hot(partner's label).

  Randomness: one generator per batch, seeded by ``random.integers(draw, ...)`` of the batch's FIRST example, so
  lam and the box are a function of (seed, epoch, first record of the batch), i.e. of (seed, epoch, step, process)
  as the loader orders records. Like timm under data parallelism, the pairs and lam are per process batch: they
  change with the number of processes feeding a global batch (the per-example augmentations do not).
  """
  settings = {field: mixup_config.get(field) for field in MIXUP_FIELDS}
  for field, value in settings.items():
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
      raise ValueError(f"config.dataset.mixup.{field} must be a number >= 0, got {value!r}")
  for field in ("prob", "switch_prob", "label_smoothing"):
    if settings[field] > 1:
      raise ValueError(f"config.dataset.mixup.{field} must lie in [0, 1], got {settings[field]!r}")
  if settings["mixup_alpha"] == 0 and settings["cutmix_alpha"] == 0:
    raise ValueError("config.dataset.mixup: mixup_alpha and cutmix_alpha are both 0; set one, or unset mixup")

  def mix(batch: dict, random: pipeline.ExampleRandom) -> dict:
    images, labels = batch["image"], batch["label"]
    rng = example_generators(random, draw)[0]
    lam, use_cutmix = 1.0, False
    if rng.random() < settings["prob"]:
      if settings["mixup_alpha"] > 0 and settings["cutmix_alpha"] > 0:
        use_cutmix = rng.random() < settings["switch_prob"]
      else:
        use_cutmix = settings["cutmix_alpha"] > 0
      alpha = settings["cutmix_alpha"] if use_cutmix else settings["mixup_alpha"]
      lam = float(rng.beta(alpha, alpha))
    partners = images[::-1]
    if use_cutmix:
      height, width = images.shape[1:3]
      top, bottom, left, right = cutmix_box(height, width, lam, rng)
      images = images.copy()
      images[:, top:bottom, left:right] = partners[:, top:bottom, left:right]
      lam = 1.0 - (bottom - top) * (right - left) / (height * width)
    elif lam < 1.0:
      images = (lam * images + (1.0 - lam) * partners).astype(images.dtype)
    targets = smoothed_one_hot(labels, num_classes, settings["label_smoothing"])
    return {**batch, "image": images, "label": (lam * targets + (1.0 - lam) * targets[::-1]).astype(np.float32)}

  return mix


# ---- the recipe's settings -----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RecipeAugmentation:
  """The timm recipe's RandAugment, random erasing and mixup, as ``config.dataset`` sets them.

  Fields read (defaults: the recipe's): ``randaugment_ops`` (2; 0: none), ``randaugment_magnitude`` (9),
  ``randaugment_magnitude_std`` (0.5), ``random_erasing`` (0.25; 0: none), ``mixup`` (a ConfigDict for
  ``make_mixup``, or absent: no mixup).
  """
  num_ops: int
  magnitude: float
  magnitude_std: float
  erasing: float
  mix: Optional[pipeline.Transform]

  @classmethod
  def from_config(cls, dataset_config: ConfigDict, *, num_classes: int, mixup_draw: int) -> "RecipeAugmentation":
    number = functools.partial(pipeline.config_number, dataset_config)
    mixup_config = dataset_config.get("mixup")
    return cls(num_ops=number("randaugment_ops", 2, 0, 16, integer=True),
               magnitude=number("randaugment_magnitude", 9, 0, MAGNITUDE_MAX),
               magnitude_std=number("randaugment_magnitude_std", 0.5, 0, MAGNITUDE_MAX),
               erasing=number("random_erasing", 0.25, 0, 1),
               mix=None if mixup_config is None else make_mixup(mixup_config, num_classes=num_classes,
                                                                draw=mixup_draw))

  def rand_augment(self, image: Image.Image, rng: np.random.Generator, *, fill: tuple[int, ...]) -> Image.Image:
    """``rand_augment`` with these settings (the image itself when ``num_ops`` is 0)."""
    if not self.num_ops:
      return image
    return rand_augment(image, rng, num_ops=self.num_ops, magnitude=self.magnitude, magnitude_std=self.magnitude_std,
                        fill=fill)

  def erase(self, images: np.ndarray, random: pipeline.ExampleRandom, draw: int) -> np.ndarray:
    """``random_erasing`` of a normalised batch with probability ``erasing`` (none when 0)."""
    if not self.erasing:
      return images
    return random_erasing(images, example_generators(random, draw), probability=self.erasing)

  def mixed(self, batch: dict, random: pipeline.ExampleRandom) -> dict:
    """The batch after mixup, or as it is without one."""
    return self.mix(batch, random) if self.mix is not None else batch
