"""A synthetic audio tagging dataset, made locally and deterministically: the offline stand-in for AudioSet.

Each clip is 1 s at 16 kHz: 1 to 3 events of distinct classes at random times and levels over faint white noise;
its multi-hot label marks the classes of its events. The 8 classes (``CLASSES``), each event 0.15..0.5 s long with
5 ms raised-cosine fades:

  low_tone      sine, 150..400 Hz              high_tone    sine, 2..5 kHz
  chirp_up      exponential sweep up 4..8 times from 300..600 Hz
  chirp_down    the same sweep, downwards      noise_burst  white noise
  click_train   1.5 ms decaying noise clicks, 8..25 per second
  am_tone       700..1400 Hz sine, amplitude modulated at 4..12 Hz
  harmonic      8 harmonics of 100..250 Hz with 1 / k amplitudes (a buzz)

An event's peak amplitude is 0.25 * 10^(level / 20), level uniform in -20..0 dB; the noise's standard deviation
10^(level / 20), level uniform in -55..-40 dB. Clip i of a split is a function of (the split, i) alone
(``synthesize``), so every machine builds the same dataset. Splits: 'train' (2,000 clips) and 'test' (500).

Features: those of AudioSet (``audioset``): ``waveform`` (16000,) int16 = round(32768 x), ``labels`` (8,) uint8.
The transform is AudioSet's (``audioset.make_audio_transform``: the same fields, front ends, augmentations) with a
log-mel front end for 16 kHz (``LOG_MEL``): the DCLS-Audio recipe's 32 ms windows every 10 ms, 64 HTK mels from
50 Hz to 8 kHz, standardised by this dataset's train-split mean and standard deviation of the dB values.
'dcls_audio' inputs are thus (B, 64, 101, 1).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import tensorflow_datasets as tfds
from ml_collections import ConfigDict

from models import audio_frontend
from train.data import audioset, pipeline

SAMPLE_RATE = 16_000  # Hz
CLIP_SAMPLES = SAMPLE_RATE  # 1 s
SPLIT_SIZES = {"train": 2000, "test": 500}
SEED = 20_230_926
EVENT_SECONDS = (0.15, 0.5)
FADE_SECONDS = 0.005
EVENT_LEVEL_DB = (-20.0, 0.0)  # relative to a peak amplitude of EVENT_PEAK
EVENT_PEAK = 0.25
NOISE_LEVEL_DB = (-55.0, -40.0)  # noise standard deviation, dB relative to 1
MAX_EVENTS = 3
CLICK_SECONDS = 0.0015  # a click decays to exp(-3) in this time
# Train-split dB mean and standard deviation of the unstandardised log-mels (``log_mel_statistics``).
LOG_MEL = audio_frontend.LogMelConfig(sample_rate=SAMPLE_RATE, n_fft=512, hop_length=160, n_mels=64, f_min=50.0,
                                      f_max=8000.0, mel_scale="htk", norm_mean=-17.31, norm_std=10.14)


def _sweep(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
  """Phase (radians) of an exponential sweep from f0 to f0 * ratio over the event, t in seconds from its start."""
  f0, ratio, duration = rng.uniform(300.0, 600.0), rng.uniform(4.0, 8.0), t[-1] + 1.0 / SAMPLE_RATE
  return 2 * np.pi * f0 * duration / np.log(ratio) * (ratio ** (t / duration) - 1.0)


def _clicks(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
  rate = rng.uniform(8.0, 25.0)
  since_click = np.mod(t - rng.uniform(0.0, 1.0 / rate), 1.0 / rate)
  return rng.uniform(-1.0, 1.0, len(t)) * np.exp(-3.0 * since_click / CLICK_SECONDS)


def _am_tone(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
  carrier, modulation = rng.uniform(700.0, 1400.0), rng.uniform(4.0, 12.0)
  return np.sin(2 * np.pi * carrier * t) * 0.5 * (1.0 + np.sin(2 * np.pi * modulation * t))


def _harmonic(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
  f0, k = rng.uniform(100.0, 250.0), np.arange(1, 9)[:, None]
  buzz = np.sum(np.sin(2 * np.pi * f0 * k * t) / k, axis=0)
  return buzz / np.max(np.abs(buzz))


# class -> event(rng, t) with peak amplitude ~1, t (n,) seconds from the event's start.
EVENTS: dict[str, Callable[[np.random.Generator, np.ndarray], np.ndarray]] = {
    "low_tone": lambda rng, t: np.sin(2 * np.pi * rng.uniform(150.0, 400.0) * t),
    "high_tone": lambda rng, t: np.sin(2 * np.pi * rng.uniform(2000.0, 5000.0) * t),
    "chirp_up": lambda rng, t: np.sin(_sweep(rng, t)),
    "chirp_down": lambda rng, t: np.sin(_sweep(rng, t))[::-1],
    "noise_burst": lambda rng, t: rng.uniform(-1.0, 1.0, len(t)),
    "click_train": _clicks,
    "am_tone": _am_tone,
    "harmonic": _harmonic,
}
CLASSES = tuple(EVENTS)


def _fades(length: int) -> np.ndarray:
  """(length,) envelope: raised-cosine fade in and out of FADE_SECONDS (or half the event when shorter)."""
  fade = min(int(FADE_SECONDS * SAMPLE_RATE), length // 2)
  ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
  envelope = np.ones(length)
  envelope[:fade], envelope[length - fade:] = ramp, ramp[::-1]
  return envelope


def synthesize(split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
  """Clip ``index`` of ``split``: (CLIP_SAMPLES,) int16 waveform and (len(CLASSES),) uint8 multi-hot labels."""
  rng = np.random.default_rng((SEED, list(SPLIT_SIZES).index(split), index))
  clip = rng.standard_normal(CLIP_SAMPLES) * 10 ** (rng.uniform(*NOISE_LEVEL_DB) / 20)
  labels = np.zeros(len(CLASSES), np.uint8)
  for label in rng.choice(len(CLASSES), rng.integers(1, MAX_EVENTS + 1), replace=False):
    length = int(rng.uniform(*EVENT_SECONDS) * SAMPLE_RATE)
    start = int(rng.integers(0, CLIP_SAMPLES - length + 1))
    event = EVENTS[CLASSES[label]](rng, np.arange(length) / SAMPLE_RATE) * _fades(length)
    clip[start:start + length] += EVENT_PEAK * 10 ** (rng.uniform(*EVENT_LEVEL_DB) / 20) * event
    labels[label] = 1
  scale = audioset.INT16_SCALE
  return np.clip(np.round(clip * scale), -scale, scale - 1).astype(np.int16), labels


def log_mel_statistics(num_clips: int) -> tuple[float, float]:
  """Mean and standard deviation (dB) of the unstandardised LOG_MEL features of the first ``num_clips`` train
  clips: what LOG_MEL's norm_mean / norm_std hold (for the whole split, rounded)."""
  waveforms = np.stack([synthesize("train", index)[0] for index in range(num_clips)]) / audioset.INT16_SCALE
  unnormalised = dataclasses.replace(LOG_MEL, norm_mean=None, norm_std=None)
  db = np.asarray(audio_frontend.log_mel(waveforms.astype(np.float32), unnormalised))
  return float(db.mean()), float(db.std())


class SynthTags(tfds.core.GeneratorBasedBuilder):
  """Synthetic tagging clips, 8 classes, 1 s at 16 kHz: 'train' and 'test' (module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "8 event classes, 1-3 events per clip over faint noise."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "waveform": tfds.features.Tensor(shape=(CLIP_SAMPLES,), dtype=np.int16),
            "labels": tfds.features.Tensor(shape=(len(CLASSES),), dtype=np.uint8),
        }),
        supervised_keys=("waveform", "labels"),
        disable_shuffling=True,  # records in index order
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download or read
    return {split: self._generate_examples(split, size) for split, size in SPLIT_SIZES.items()}

  def _generate_examples(self, split: str, size: int):
    for index in range(size):
      waveform, labels = synthesize(split, index)
      yield index, {"waveform": waveform, "labels": labels}


def make_transform(dataset_config: ConfigDict, *, train: bool) -> pipeline.Transform:
  """``audioset.make_audio_transform`` with this dataset's 16 kHz front end (``LOG_MEL``): the same fields."""
  return audioset.make_audio_transform(dataset_config, train=train, log_mel_config=LOG_MEL)
