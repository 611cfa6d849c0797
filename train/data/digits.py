"""The 8x8 handwritten digits bundled with scikit-learn (1,797 images, 10 classes), as a tfds builder.

Source file: ``digits.csv.gz`` in the manual directory, in its original format: one row per image, 65
comma-separated integers, the 64 pixels row-major (values 0..16, a count of set pixels in a 4x4 block of the
32x32 original) then the label 0..9. The default manual directory is scikit-learn's bundled data folder, located
without importing scikit-learn.

Splits, fixed and independent of every seed so that test accuracies compare across runs: a stratified 80/20
split by file order. The i-th example of each class (counting from 0 in file order) is a 'test' example when
i % 5 == 4, a 'train' example otherwise: 1,442 train and 355 test images for the bundled file.

Features: ``image`` (8, 8, 1) uint8 in 0..16 (a ``Tensor``: tfds ``Image`` decoding needs TensorFlow), ``label``
``ClassLabel(10)``. Written as array_record and read with ``as_data_source()``: no TensorFlow needed.
"""
from __future__ import annotations

import gzip
import importlib.util
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from ml_collections import ConfigDict

from train.data import pipeline

FILE_NAME = "digits.csv.gz"
IMAGE_SHAPE = (8, 8, 1)
PIXEL_MAX = 16
NUM_CLASSES = 10
TEST_EVERY = 5  # every 5th example of each class is a test example: 20%


def default_manual_dir() -> str:
  """scikit-learn's bundled data folder (``sklearn/datasets/data``), found without importing scikit-learn."""
  spec = importlib.util.find_spec("sklearn")
  if spec is None or not spec.submodule_search_locations:
    raise ValueError(f"scikit-learn is not installed: set config.dataset.manual_dir to a folder holding {FILE_NAME}")
  return os.path.join(spec.submodule_search_locations[0], "datasets", "data")


def in_test_split(labels: np.ndarray) -> np.ndarray:
  """(N,) bool: True for the i-th example of each class (in the order of ``labels``) with i % 5 == 4."""
  is_test = np.zeros(len(labels), bool)
  for label in np.unique(labels):
    is_test[np.flatnonzero(labels == label)[TEST_EVERY - 1::TEST_EVERY]] = True
  return is_test


def read_csv(path: epath.Path) -> tuple[np.ndarray, np.ndarray]:
  """Reads ``digits.csv.gz`` (an epath or pathlib path): images (N, 8, 8, 1) uint8 and labels (N,) int64.

  ValueError for a wrong column count or values out of range.
  """
  with path.open("rb") as compressed, gzip.open(compressed, "rt") as text:
    rows = np.loadtxt(text, delimiter=",", dtype=np.int64, ndmin=2)
  if rows.shape[1] != np.prod(IMAGE_SHAPE) + 1:
    raise ValueError(f"{path}: expected {np.prod(IMAGE_SHAPE) + 1} columns (64 pixels, label), got {rows.shape[1]}")
  pixels, labels = rows[:, :-1], rows[:, -1]
  if pixels.min() < 0 or pixels.max() > PIXEL_MAX:
    raise ValueError(f"{path}: pixels must lie in 0..{PIXEL_MAX}, got {pixels.min()}..{pixels.max()}")
  if labels.min() < 0 or labels.max() >= NUM_CLASSES:
    raise ValueError(f"{path}: labels must lie in 0..{NUM_CLASSES - 1}, got {labels.min()}..{labels.max()}")
  return pixels.reshape((-1,) + IMAGE_SHAPE).astype(np.uint8), labels


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 digits: 'train' (80%) and 'test' (20%), stratified by file order (module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Stratified 80/20 split by file order."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (f"Put {FILE_NAME} (scikit-learn's sklearn/datasets/data/{FILE_NAME}) in the "
                                  "manual directory.")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }),
        supervised_keys=("image", "label"),
        homepage="https://archive.ics.uci.edu/dataset/80",
    )

  def _split_generators(self, dl_manager):
    images, labels = read_csv(dl_manager.manual_dir / FILE_NAME)
    is_test = in_test_split(labels)
    return {"train": self._generate_examples(images, labels, np.flatnonzero(~is_test)),
            "test": self._generate_examples(images, labels, np.flatnonzero(is_test))}

  def _generate_examples(self, images, labels, rows):
    for row in rows:
      yield int(row), {"image": images[row], "label": int(labels[row])}


def translate(images: np.ndarray, shift_down: np.ndarray, shift_right: np.ndarray) -> np.ndarray:
  """(B, H, W, C) images, each moved down / right by its whole-pixel shifts (B,) (negative: up / left); vacated
  pixels are 0. Shifts of a full image size or more empty it."""
  batch, height, width = images.shape[:3]
  pad = int(max(np.abs(shift_down).max(initial=0), np.abs(shift_right).max(initial=0), 0))
  pad = min(pad, max(height, width))
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  rows = np.clip(pad - np.asarray(shift_down)[:, None], 0, 2 * pad) + np.arange(height)  # (B, H) source rows
  cols = np.clip(pad - np.asarray(shift_right)[:, None], 0, 2 * pad) + np.arange(width)
  return padded[np.arange(batch)[:, None, None], rows[:, :, None], cols[:, None, :]]


def make_transform(dataset_config: ConfigDict, *, train: bool):
  """The batch transform: ``image`` float32 (B, 8, 8, 1) in [0, 1] (pixels / 16), ``label`` int32 (B,).

  Training examples are translated by up to ``dataset_config.max_translation`` pixels (default 0: none) in each
  direction, uniformly, zero-filled; evaluation examples never are.
  """
  max_translation = dataset_config.get("max_translation", 0) if train else 0
  if not isinstance(max_translation, int) or not 0 <= max_translation < IMAGE_SHAPE[0]:
    raise ValueError(f"config.dataset.max_translation must be an int in 0..{IMAGE_SHAPE[0] - 1} (pixels), got "
                     f"{max_translation!r}")

  def transform(batch: dict, random: pipeline.ExampleRandom) -> dict:
    images = batch["image"].astype(np.float32) / PIXEL_MAX
    if max_translation:
      images = translate(images, random.integers(0, -max_translation, max_translation + 1),
                         random.integers(1, -max_translation, max_translation + 1))
    return {"image": images, "label": batch["label"].astype(np.int32)}

  return transform
