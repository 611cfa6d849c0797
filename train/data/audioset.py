"""AudioSet from local audio files and the official label CSVs, as a tfds builder, and the tagging transforms.

Manual directory (nothing is downloaded: AudioSet is distributed as YouTube ids):

* ``class_labels_indices.csv``: header ``index,mid,display_name``, then one row per class (index 0..C-1 in order);
* one segment CSV per split, ``balanced_train_segments.csv``, ``unbalanced_train_segments.csv``,
  ``eval_segments.csv``: 3 comment lines starting with '#', then ``YTID, start_seconds, end_seconds, "mid1,mid2"``;
* one audio folder per split, named after the split (``balanced_train/``) or its CSV (``balanced_train_segments/``,
  as PANNs' downloader names them), searched recursively (``unbalanced_train_segments/part00/...`` is fine). A clip
  is the file ``<YTID>.wav`` or ``Y<YTID>.wav`` (PANNs' and most downloaders' name), or the same in ``.flac``; any
  sample rate, any number of channels.

Splits: 'balanced_train', 'unbalanced_train', 'eval': each one whose audio folder exists (its CSV is then
required). Clips listed in a CSV but missing on disk are skipped, and their count logged, as every real AudioSet
copy misses some (PANNs got 22,160 of the 22,176 balanced clips). Records are in CSV order.

Reading a clip: soundfile reads it as float64; channels are averaged; a rate other than 32 kHz is resampled with
soxr (libsoxr, quality 'HQ', librosa's default resampler); the clip is zero-padded or cut at its end to
``clip_seconds`` (10 s); samples are stored as round(32768 x) clipped to int16, so a 16-bit 32 kHz mono file is
stored exactly.

Features: ``waveform`` (clip_seconds * 32000,) int16, ``labels`` (C,) uint8 multi-hot, ``ytid`` text. Written as
array_record and read with ``as_data_source()``: no TensorFlow at read time. ``AudiosetConfig`` sets the clip
length and class count (defaults 10 s, 527 classes; tests use shorter clips and fewer classes).

Transforms (``make_transform``, ``make_audio_transform``), the recipes of spec/audio.md, selected by
``config.dataset.front_end``:

* 'dcls_audio' (default; DCLS-Audio, spec 2.2): int16 / 32768 -> [train: random roll, speed perturbation] ->
  power spectrogram -> [train: random erasing] -> HTK mel -> dB -> standardised -> ``input`` (B, n_mels, T, 1),
  mel-major as the DCLS-Audio models take it;
* 'waveform' (ConvNeXt-audio, spec 2.3): int16 / 32767 -> ``input`` (B, L) float32; the model owns its front end
  and its augmentations.

``config.dataset`` fields read by the transforms (defaults: the front end's recipe, ``RECIPES``):

* ``front_end`` ('dcls_audio' | 'waveform'), ``int16_divisor`` (32768 | 32767);
* train only: ``random_roll`` (bool: a circular shift uniform in [-L, L)), ``speed_perturb`` (probability; rates
  uniform in 0.5..1.5), ``random_erasing`` (probability; 'dcls_audio' only), ``spec_augment`` (None, or a ConfigDict
  of ``audio_augment.spec_augment``'s stripe arguments; 'dcls_audio' only, on the standardised log-mel), ``mixup``
  (None, or a ConfigDict of ``audio_augment.MIXUP_FIELDS``: alpha 0.8, label_smoothing 0.1; then ``label`` holds
  smoothed, mixed targets).

Batches out: ``input`` float32 and ``label`` (B, C) float32 (multi-hot, or soft with mixup).
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import os
from typing import Callable, Optional

import jax
import numpy as np
import soundfile
import soxr
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from ml_collections import ConfigDict

from models import audio_frontend
from train.data import audio_augment, augment, pipeline

SAMPLE_RATE = 32_000  # Hz
CLIP_SECONDS = 10
NUM_CLASSES = 527
CLASS_CSV = "class_labels_indices.csv"
SEGMENT_CSVS = {"balanced_train": "balanced_train_segments.csv",
                "unbalanced_train": "unbalanced_train_segments.csv",
                "eval": "eval_segments.csv"}
AUDIO_SUFFIXES = (".wav", ".flac")
INT16_SCALE = 32768  # stored sample = round(INT16_SCALE * float sample)


# ---- the source files --------------------------------------------------------------------------------------------

def read_classes(path: epath.Path) -> list[str]:
  """The mids of ``class_labels_indices.csv`` in index order; ValueError naming ``path`` for another layout."""
  with path.open() as f:
    rows = list(csv.reader(f))
  if not rows or [name.strip() for name in rows[0]] != ["index", "mid", "display_name"]:
    raise ValueError(f"{path}: expected the header 'index,mid,display_name', got {rows[:1]}")
  mids = []
  for row in rows[1:]:
    if len(row) != 3 or row[0].strip() != str(len(mids)):
      raise ValueError(f"{path}: expected row {len(mids) + 1} to read '{len(mids)},<mid>,<name>', got {row}")
    mids.append(row[1].strip())
  return mids


def read_segments(path: epath.Path, class_index: dict[str, int]) -> list[tuple[str, list[int]]]:
  """(YTID, class indices) of each row of a segment CSV, in file order; '#' lines are comments. ValueError naming
  ``path`` and the row for a malformed row or a mid not in ``class_index``."""
  segments = []
  with path.open() as f:
    for row in csv.reader((line for line in f if line.strip() and not line.startswith("#")),
                          skipinitialspace=True):
      if len(row) != 4:
        raise ValueError(f"{path}: expected rows 'YTID, start_seconds, end_seconds, \"mid1,mid2\"', got {row}")
      mids = [mid.strip() for mid in row[3].split(",")]
      unknown = [mid for mid in mids if mid not in class_index]
      if unknown:
        raise ValueError(f"{path}: row {row[0]} names mids {unknown} absent from {CLASS_CSV}")
      segments.append((row[0].strip(), sorted({class_index[mid] for mid in mids})))
  return segments


def split_folder(root: epath.Path, split: str) -> epath.Path | None:
  """The audio folder of ``split``: ``root/<split>`` or ``root/<segment CSV stem>``; None if neither exists."""
  for name in (split, SEGMENT_CSVS[split].removesuffix(".csv")):
    if (root / name).is_dir():
      return root / name
  return None


def audio_files(folder: epath.Path) -> dict[str, epath.Path]:
  """File stem -> path of every audio file (``AUDIO_SUFFIXES``) under the local ``folder``, recursively."""
  files = {}
  for directory, _, names in sorted(os.walk(os.fspath(folder))):
    for name in sorted(names):
      stem, suffix = os.path.splitext(name)
      if suffix.lower() in AUDIO_SUFFIXES:
        files[stem] = epath.Path(directory) / name
  return files


def find_clip(files: dict[str, epath.Path], ytid: str) -> epath.Path | None:
  """The file of ``ytid`` among ``files`` (``audio_files``): named ``<YTID>`` or ``Y<YTID>``; None if absent."""
  return files.get(ytid, files.get("Y" + ytid))


def read_clip(path: epath.Path, num_samples: int) -> np.ndarray:
  """(num_samples,) int16 of an audio file: mono mean of its channels, resampled to SAMPLE_RATE (soxr 'HQ'),
  zero-padded or cut at the end, round(32768 x) clipped to int16. ValueError naming ``path`` if unreadable."""
  try:
    samples, rate = soundfile.read(os.fspath(path), dtype="float64", always_2d=True)
  except soundfile.LibsndfileError as error:
    raise ValueError(f"{path}: not a readable audio file ({error})") from error
  mono = samples.mean(axis=1)
  if rate != SAMPLE_RATE:
    mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
  clip = np.zeros(num_samples)
  clip[:min(len(mono), num_samples)] = mono[:num_samples]
  return np.clip(np.round(clip * INT16_SCALE), -INT16_SCALE, INT16_SCALE - 1).astype(np.int16)


@dataclasses.dataclass
class AudiosetConfig(tfds.core.BuilderConfig):
  """clip_seconds: stored clip length (clip_seconds * SAMPLE_RATE must be a whole number of samples);
  num_classes: the rows ``class_labels_indices.csv`` must have."""
  clip_seconds: float = CLIP_SECONDS
  num_classes: int = NUM_CLASSES

  @property
  def clip_samples(self) -> int:
    samples = self.clip_seconds * SAMPLE_RATE
    if not (samples > 0 and float(samples).is_integer()):
      raise ValueError(f"clip_seconds must be > 0 and a whole number of samples at {SAMPLE_RATE} Hz, got "
                       f"{self.clip_seconds!r}")
    return int(samples)


class Audioset(tfds.core.GeneratorBasedBuilder):
  """AudioSet clips from the manual directory: 'balanced_train', 'unbalanced_train', 'eval' (module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "32 kHz mono int16 clips padded / cut at the end, multi-hot labels of the CSVs."}
  BUILDER_CONFIGS = [AudiosetConfig(name="10s", description="10 s clips, the 527 classes of the ontology.")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Put {CLASS_CSV} and the segment CSVs ({', '.join(SEGMENT_CSVS.values())}) from "
      "https://research.google.com/audioset/download.html in the manual directory, and the clips of each split as "
      "<split>/<YTID>.wav or <split>/Y<YTID>.wav (.flac also), <split> one of "
      f"{', '.join(SEGMENT_CSVS)} (or the CSV's name without .csv).")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "waveform": tfds.features.Tensor(shape=(self.builder_config.clip_samples,), dtype=np.int16),
            "labels": tfds.features.Tensor(shape=(self.builder_config.num_classes,), dtype=np.uint8),
            "ytid": tfds.features.Text(),
        }),
        supervised_keys=("waveform", "labels"),
        homepage="https://research.google.com/audioset/",
        disable_shuffling=True,  # records in CSV order
    )

  def _split_generators(self, dl_manager):
    root = dl_manager.manual_dir
    folders = {split: split_folder(root, split) for split in SEGMENT_CSVS}
    folders = {split: folder for split, folder in folders.items() if folder is not None}
    if not folders:
      raise FileNotFoundError(f"{root}: no audio folder of any split; {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    mids = read_classes(root / CLASS_CSV)
    if len(mids) != self.builder_config.num_classes:
      raise ValueError(f"{root / CLASS_CSV}: {len(mids)} classes, but the builder config "
                       f"{self.builder_config.name!r} expects num_classes={self.builder_config.num_classes}")
    class_index = {mid: index for index, mid in enumerate(mids)}
    generators = {}
    for split, folder in folders.items():
      csv_path = root / SEGMENT_CSVS[split]
      if not csv_path.exists():
        raise FileNotFoundError(f"{csv_path}: missing; the audio folder {folder} needs its segment CSV")
      generators[split] = self._generate_examples(split, folder, read_segments(csv_path, class_index))
    return generators

  def _generate_examples(self, split: str, folder: epath.Path, segments: list[tuple[str, list[int]]]):
    files = audio_files(folder)
    missing = 0
    for ytid, classes in segments:
      path = find_clip(files, ytid)
      if path is None:
        missing += 1
        continue
      labels = np.zeros(self.builder_config.num_classes, np.uint8)
      labels[classes] = 1
      yield ytid, {"waveform": read_clip(path, self.builder_config.clip_samples), "labels": labels, "ytid": ytid}
    if missing:
      logging.warning("audioset %s: %d of the %d clips of %s are not in %s; skipped", split, missing,
                      len(segments), SEGMENT_CSVS[split], folder)


# ---- transforms --------------------------------------------------------------------------------------------------

# config.dataset defaults of each front end: its recipe's (spec/audio.md 2.2, 2.3).
RECIPES = {
    "dcls_audio": dict(int16_divisor=32768, random_roll=True, speed_perturb=0.5, random_erasing=0.25),
    "waveform": dict(int16_divisor=32767, random_roll=False, speed_perturb=0.0, random_erasing=0.0),
}
# ExampleRandom draws of the train transform, one per stage.
ROLL_DRAW, SPEED_DRAW, ERASING_DRAW, SPEC_AUGMENT_DRAW, MIXUP_DRAW = range(5)
SPEC_AUGMENT_FIELDS = ("time_drop_width", "time_stripes_num", "freq_drop_width", "freq_stripes_num")
Features = Callable[[np.ndarray, pipeline.ExampleRandom], np.ndarray]


log_mel_of_power = jax.jit(audio_frontend.log_mel_of_power, static_argnames="config")


def make_dcls_audio_features(log_mel_config: audio_frontend.LogMelConfig, *, erasing_probability: float,
                             spec_augment: Optional[ConfigDict]) -> Features:
  """``features(waveforms (B, L) float32, random) -> (B, n_mels, T, 1)`` float32 standardised log-mels, with random
  erasing of the power spectrogram (``erasing_probability`` > 0) and SpecAugment stripes of the log-mels
  (``spec_augment``: None, or ``audio_augment.spec_augment``'s stripe arguments)."""
  unknown = set(spec_augment or {}) - set(SPEC_AUGMENT_FIELDS)
  if unknown:
    raise ValueError(f"config.dataset.spec_augment: unknown fields {sorted(unknown)}; expected some of "
                     f"{SPEC_AUGMENT_FIELDS}")
  spectrogram = jax.jit(functools.partial(audio_frontend.power_spectrogram, n_fft=log_mel_config.n_fft,
                                          hop_length=log_mel_config.hop_length))
  mel_matrix = log_mel_config.mel_matrix().astype(np.float32)

  def features(waveforms: np.ndarray, random: pipeline.ExampleRandom) -> np.ndarray:
    power = np.asarray(spectrogram(waveforms))  # (B, T, n_fft // 2 + 1)
    if erasing_probability:
      power = audio_augment.erase_spectrogram(power, augment.example_generators(random, ERASING_DRAW),
                                              probability=erasing_probability)
    log_mel = np.asarray(log_mel_of_power(power, log_mel_config, mel_matrix))  # (B, T, n_mels)
    if spec_augment is not None:
      log_mel = audio_augment.spec_augment(log_mel, augment.example_generators(random, SPEC_AUGMENT_DRAW),
                                           time_axis=1, freq_axis=2, **spec_augment)
    return np.swapaxes(log_mel, 1, 2)[..., None]

  return features


def make_audio_transform(dataset_config: ConfigDict, *, train: bool,
                         log_mel_config: audio_frontend.LogMelConfig) -> pipeline.Transform:
  """The batch transform of a tagging dataset of int16 ``waveform`` (B, L) and multi-hot ``labels`` (B, C) at
  ``log_mel_config.sample_rate``: ``input`` and ``label`` out (module docstring: fields, front ends, layouts).
  Evaluation transforms read the same fields but never augment."""
  front_end = dataset_config.get("front_end", "dcls_audio")
  if front_end not in RECIPES:
    raise ValueError(f"config.dataset.front_end must be one of {sorted(RECIPES)}, got {front_end!r}")
  recipe = RECIPES[front_end]
  divisor = pipeline.config_number(dataset_config, "int16_divisor", recipe["int16_divisor"], 32767, 32768,
                                   integer=True)
  random_roll = dataset_config.get("random_roll", recipe["random_roll"])
  if not isinstance(random_roll, bool):
    raise ValueError(f"config.dataset.random_roll must be a bool, got {random_roll!r}")
  speed_probability = pipeline.config_number(dataset_config, "speed_perturb", recipe["speed_perturb"], 0, 1)
  erasing_probability = pipeline.config_number(dataset_config, "random_erasing", recipe["random_erasing"], 0, 1)
  spec_augment = dataset_config.get("spec_augment")
  mixup_config = dataset_config.get("mixup")
  mix = audio_augment.make_mixup(mixup_config, draw=MIXUP_DRAW) if mixup_config is not None else None
  if front_end == "waveform":
    if erasing_probability or spec_augment is not None:
      raise ValueError("config.dataset.random_erasing and spec_augment act on spectrograms: set them to 0 and None "
                       "with front_end='waveform' (the model computes its own spectrogram)")
    features = lambda waveforms, random: waveforms
  else:
    features = make_dcls_audio_features(log_mel_config, erasing_probability=erasing_probability if train else 0.0,
                                        spec_augment=spec_augment if train else None)

  def transform(batch: dict, random: pipeline.ExampleRandom) -> dict:
    waveforms = batch["waveform"].astype(np.float32) / np.float32(divisor)
    if train and random_roll:
      waveforms = audio_augment.roll(waveforms, augment.example_generators(random, ROLL_DRAW))
    if train and speed_probability:
      waveforms = audio_augment.speed_perturb(waveforms, augment.example_generators(random, SPEED_DRAW),
                                              probability=speed_probability)
    out = {"input": features(waveforms, random).astype(np.float32), "label": batch["labels"].astype(np.float32)}
    return mix(out, random) if train and mix is not None else out

  return transform


def make_transform(dataset_config: ConfigDict, *, train: bool) -> pipeline.Transform:
  """``make_audio_transform`` with DCLS-Audio's log-mel constants (32 kHz, 128 HTK mels, 50 Hz..14 kHz)."""
  return make_audio_transform(dataset_config, train=train, log_mel_config=audio_frontend.DCLS_AUDIO)
