"""Spiking Heidelberg Digits (SHD) and Spiking Speech Commands (SSC), binned as SNN-delays bins them, as tfds builders.

Source files, in the manual directory, as published by the Zenke lab (HDF5): ``shd_train.h5``, ``shd_test.h5``;
``ssc_train.h5``, ``ssc_valid.h5``, ``ssc_test.h5``. Each holds, per sample i, ``spikes/times[i]`` (spike times in
SECONDS, variable length, float16 in the published files), ``spikes/units[i]`` (the cochlea channel 0..699 of each
spike, same length) and ``labels[i]`` (SHD: 0..19, SSC: 0..34). Times must be sorted, as published.

Binning, as SpikingJelly's ``duration=10`` frames followed by SNN-delays' channel grouping:

1. times in ms, t = 1000 * times, computed IN THE FILE'S DTYPE (float16: 0.25 ms steps from 256 ms, 0.5 ms from
   512 ms, 1 ms from 1024 ms), and every comparison below on these values, as SpikingJelly does;
2. frames of 700 per-channel spike counts, by one of two algorithms (the builder's ``BINNING``):

   * ``'event_windows'`` (SpikingJelly master 2023-03-31 .. 2024-03-29, what the paper used; the default builders
     'shd' and 'ssc'): a window opens at the first event not yet assigned, time a, and takes every following event
     with t - a <= 10 ms (inclusive, the difference in the file's dtype); the next window opens at the next event.
     Silent gaps make no frame: frames are not on a fixed grid. Events at 0, 3, 9.5, 10.2, 25, 41 ms give 4 frames
     with 3, 1, 1, 1 events.
   * ``'fixed_grid'`` (SpikingJelly since commit 01823bed, 2024-03-30; builders 'shd_fixed_grid', 'ssc_fixed_grid'):
     t' = t - t[0]; n = ceil(t'_last / 10) frames (at least one, where SpikingJelly fails); event -> frame
     min(floor(t' / 10), n - 1). The same events give 5 frames with 3, 1, 1, 0, 1 events.

   Both start at the first spike; results of the two are not comparable.
3. channels summed in groups of 5: x[t, c] = sum_m frame[t, 5c + m], c = 0..139.

Storage: ``spikes`` (MAX_STEPS, 140) uint8 spike counts, zero-padded at the end (zlib-compressed on disk, so the
padding costs nothing), and ``length``, the number of real steps. Counts are small integers (a 10 ms window of 5
channels); uint8 holds them exactly at a quarter of float32's size, and a count above 255 is an error, never
clipped. A fixed time axis lets the loader stack examples; SNN-delays pads each batch to its longest sample
instead, which changes BatchNorm statistics and the readout sum (``make_transform``'s ``num_steps`` cuts the
padding to a length of choice).

Splits: SHD 'train' (8,156) and 'test' (2,264); SSC 'train' (75,466), 'validation' (``ssc_valid.h5``, 9,981) and
'test' (20,382). Records keep the file order: record i of a split is sample i of its file.
"""
from __future__ import annotations

import math
import os

import h5py
import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from ml_collections import ConfigDict

from train.data import pipeline

NUM_UNITS = 700  # cochlea channels in the files
UNITS_PER_CHANNEL = 5
NUM_CHANNELS = NUM_UNITS // UNITS_PER_CHANNEL  # 140, the model's input width
DURATION_MS = 10  # one time step
MAX_STEPS = 150  # stored time steps, 1.5 s: SHD samples last up to ~1.4 s (a longer one is an error)


def event_window_frames(times_ms: np.ndarray) -> np.ndarray:
  """(N,) frame index of each event under the paper's event-anchored 10 ms windows; ``times_ms`` sorted, in the
  file's dtype (the window test t - a <= 10 is done in that dtype)."""
  frame_of_event = np.empty(len(times_ms), np.int64)
  exact_times = times_ms.astype(np.float64)
  start, frame = 0, 0
  while start < len(times_ms):
    opening = times_ms[start]
    # Events after a + 11 ms are outside whatever the rounding of t - a; decide the others in the file's dtype.
    candidates = times_ms[start:np.searchsorted(exact_times, exact_times[start] + DURATION_MS + 1, side="right")]
    stop = start + int(np.searchsorted(candidates - opening, DURATION_MS, side="right"))
    frame_of_event[start:stop] = frame
    start, frame = stop, frame + 1
  return frame_of_event


def fixed_grid_frames(times_ms: np.ndarray) -> np.ndarray:
  """(N,) frame index of each event on the fixed 10 ms grid from the first spike; ``times_ms`` sorted, in the
  file's dtype (t - t[0], the division and the floor are done in that dtype)."""
  since_first = times_ms - times_ms[0]
  num_frames = max(int(math.ceil(since_first[-1] / DURATION_MS)), 1)
  return np.minimum((since_first // DURATION_MS).astype(np.int64), num_frames - 1)


FRAME_INDEXERS = {"event_windows": event_window_frames, "fixed_grid": fixed_grid_frames}
BINNINGS = tuple(FRAME_INDEXERS)


def bin_spikes(times_s: np.ndarray, units: np.ndarray, binning: str) -> np.ndarray:
  """(T, 140) int64 spike counts of one sample: ``times_s`` (N,) sorted spike times in seconds (any float dtype, kept
  for the arithmetic), ``units`` (N,) channels 0..699; ``binning`` one of BINNINGS (module docstring)."""
  frame_of_event = FRAME_INDEXERS[binning](times_s * 1000)
  counts = np.zeros((frame_of_event[-1] + 1, NUM_CHANNELS), np.int64)
  np.add.at(counts, (frame_of_event, units.astype(np.int64) // UNITS_PER_CHANNEL), 1)
  return counts


class SampleFile:
  """One original HDF5 file, opened for reading; ``len`` samples, ``sample(i) -> (times_s, units, label)``.

  FileNotFoundError for a missing file, ValueError naming the path for anything but the published layout.
  """

  def __init__(self, path: epath.Path, num_classes: int):
    self.path, self._num_classes = path, num_classes
    if not path.exists():
      raise FileNotFoundError(f"{path}: missing; expected the original HDF5 file (spikes/times, spikes/units, labels)")
    try:
      self._file = h5py.File(os.fspath(path), "r")
    except OSError as error:
      raise ValueError(f"{path}: not a readable HDF5 file ({error})") from error
    missing = [key for key in ("spikes/times", "spikes/units", "labels") if key not in self._file]
    if missing:
      raise ValueError(f"{path}: missing datasets {missing}; expected spikes/times, spikes/units and labels")
    self._times, self._units, self._labels = (self._file[key] for key in ("spikes/times", "spikes/units", "labels"))
    if not len(self._times) == len(self._units) == len(self._labels):
      raise ValueError(f"{path}: spikes/times, spikes/units and labels must have one entry per sample, got "
                       f"{len(self._times)}, {len(self._units)} and {len(self._labels)}")

  def __len__(self) -> int:
    return len(self._labels)

  def sample(self, index: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Sample ``index``: times (N,) in seconds, units (N,), label; ValueError naming the path and sample if bad."""
    times, units, label = np.asarray(self._times[index]), np.asarray(self._units[index]), int(self._labels[index])
    where = f"{self.path}, sample {index}"
    if times.ndim != 1 or times.shape != units.shape or len(times) == 0:
      raise ValueError(f"{where}: expected equally long, non-empty spike times and units, got shapes {times.shape} "
                       f"and {units.shape}")
    if not np.issubdtype(times.dtype, np.floating) or np.any(np.diff(times) < 0):
      raise ValueError(f"{where}: spike times must be floats sorted in time, got {times.dtype}")
    if units.min() < 0 or units.max() >= NUM_UNITS:
      raise ValueError(f"{where}: units must lie in 0..{NUM_UNITS - 1}, got {units.min()}..{units.max()}")
    if not 0 <= label < self._num_classes:
      raise ValueError(f"{where}: label must lie in 0..{self._num_classes - 1}, got {label}")
    return times, units, label

  def close(self) -> None:
    self._file.close()


class _SpikingAudio(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """SHD / SSC binned into (MAX_STEPS, 140) counts; subclasses set the files, classes and binning."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "SNN-delays' binning: 10 ms frames, 700 channels summed in groups of 5."}
  FILE_PREFIX: str  # 'shd' or 'ssc'
  SPLIT_FILES: dict[str, str]  # tfds split -> file suffix
  NUM_CLASSES: int
  BINNING = "event_windows"

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"{__doc__}\nThis builder: binning {self.BINNING!r}.",
        features=tfds.features.FeaturesDict({
            "spikes": tfds.features.Tensor(shape=(MAX_STEPS, NUM_CHANNELS), dtype=np.uint8,
                                           encoding=tfds.features.Encoding.ZLIB),
            "length": tfds.features.Scalar(dtype=np.int32),
            "label": tfds.features.ClassLabel(num_classes=self.NUM_CLASSES),
        }),
        supervised_keys=("spikes", "label"),
        homepage="https://zenkelab.org/resources/spiking-heidelberg-datasets-shd/",
        disable_shuffling=True,  # records in source order
    )

  def _split_generators(self, dl_manager):
    paths = {split: dl_manager.manual_dir / f"{self.FILE_PREFIX}_{suffix}.h5"
             for split, suffix in self.SPLIT_FILES.items()}
    for path in paths.values():  # every file checked before the long generation starts
      SampleFile(path, self.NUM_CLASSES).close()
    return {split: self._generate_examples(path) for split, path in paths.items()}

  def _generate_examples(self, path):
    samples = SampleFile(path, self.NUM_CLASSES)
    try:
      for index in range(len(samples)):
        times, units, label = samples.sample(index)
        counts = bin_spikes(times, units, self.BINNING)
        if len(counts) > MAX_STEPS or counts.max() > np.iinfo(np.uint8).max:
          raise ValueError(f"{path}, sample {index}: {len(counts)} steps (at most {MAX_STEPS}) with up to "
                           f"{counts.max()} spikes a bin (at most 255): raise MAX_STEPS or the storage dtype")
        spikes = np.zeros((MAX_STEPS, NUM_CHANNELS), np.uint8)
        spikes[:len(counts)] = counts
        yield index, {"spikes": spikes, "length": len(counts), "label": label}
    finally:
      samples.close()


class Shd(_SpikingAudio):
  """Spiking Heidelberg Digits, the paper's event-anchored binning: 'train' and 'test', 20 classes."""
  FILE_PREFIX = "shd"
  SPLIT_FILES = {"train": "train", "test": "test"}
  NUM_CLASSES = 20
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Put shd_train.h5 and shd_test.h5 (https://zenkelab.org/datasets) in the manual "
                                  "directory.")


class Ssc(_SpikingAudio):
  """Spiking Speech Commands, the paper's event-anchored binning: 'train', 'validation', 'test', 35 classes."""
  FILE_PREFIX = "ssc"
  SPLIT_FILES = {"train": "train", "validation": "valid", "test": "test"}
  NUM_CLASSES = 35
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Put ssc_train.h5, ssc_valid.h5 and ssc_test.h5 (https://zenkelab.org/datasets) in "
                                  "the manual directory.")


class ShdFixedGrid(Shd):
  """SHD on SpikingJelly's current fixed 10 ms grid."""
  BINNING = "fixed_grid"


class SscFixedGrid(Ssc):
  """SSC on SpikingJelly's current fixed 10 ms grid."""
  BINNING = "fixed_grid"


def make_transform(dataset_config: ConfigDict, *, train: bool):
  """The batch transform of spike-count datasets: ``spikes`` float32 (B, T, C), ``label`` int32 (B,).

  T is the stored length, or ``dataset_config.num_steps`` when set: the first ``num_steps`` steps, ValueError when
  that would cut a real step of an example (its ``length``). No augmentation: ``train`` changes nothing (the
  reference's augmentations are off in its best configurations).
  """
  del train
  num_steps = dataset_config.get("num_steps")
  if num_steps is not None and (isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1):
    raise ValueError(f"config.dataset.num_steps must be a positive int (time steps) or None, got {num_steps!r}")

  def transform(batch: dict, random: pipeline.ExampleRandom) -> dict:
    del random
    spikes = batch["spikes"]
    if num_steps is not None:
      if num_steps > spikes.shape[1]:
        raise ValueError(f"config.dataset.num_steps={num_steps} exceeds the {spikes.shape[1]} stored time steps")
      if "length" in batch and batch["length"].max() > num_steps:
        raise ValueError(f"config.dataset.num_steps={num_steps} would cut an example of {batch['length'].max()} "
                         "steps")
      spikes = spikes[:, :num_steps]
    return {"spikes": spikes.astype(np.float32), "label": batch["label"].astype(np.int32)}

  return transform


def write_sample_file(path, samples) -> None:
  """Writes ``samples`` [(times in s, units, label), ...] in the published SHD/SSC layout (vlen float16
  spikes/times, vlen uint16 spikes/units, uint8 labels): for tests and benchmarks."""
  with h5py.File(path, "w") as f:
    times = f.create_dataset("spikes/times", (len(samples),), dtype=h5py.vlen_dtype(np.float16))
    units = f.create_dataset("spikes/units", (len(samples),), dtype=h5py.vlen_dtype(np.uint16))
    for index, (sample_times, sample_units, _) in enumerate(samples):
      times[index] = np.asarray(sample_times, np.float16)
      units[index] = np.asarray(sample_units, np.uint16)
    f.create_dataset("labels", data=np.array([label for _, _, label in samples], np.uint8))
