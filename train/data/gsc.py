"""Google Speech Commands v0.02 (35 words) as SNN-delays' 140-band log-mel features, as a tfds builder.

Source: the extracted ``speech_commands_v0.02`` archive in the manual directory: one folder per word holding 16 kHz
mono 16-bit PCM wav files, and ``validation_list.txt`` / ``testing_list.txt`` naming files as ``word/file.wav``.
Other folders (``_background_noise_``) are not read.

Splits, those of torchaudio's ``SPEECHCOMMANDS`` (the reference's loader): 'validation' and 'test' are the files of
the two lists, 'train' every other wav of the 35 word folders (84,843 / 9,981 / 11,005). Label: the index of the
word in the alphabetical WORDS. Records are in ``word/file.wav`` name order.

Features, the reference's transform for every split (its training augmentations are never enabled):

1. samples / 32768 (torchaudio's float32 loading), cut or zero-padded AT THE END to 16,000 samples (1 s);
2. torchaudio ``Resample(16000, 8000)``: a Hann-windowed sinc filter, 6 zero crossings, rolloff 0.99 (28 taps,
   stride 2) -> 8,000 samples;
3. torchaudio ``Spectrogram(n_fft=256, hop_length=80, power=2)``: periodic Hann window of 256, centred frames with
   reflect padding of 128 -> 101 frames of 129 power bins;
4. torchaudio ``MelScale(n_mels=140, sample_rate=8000, f_min=50, f_max=14000, n_stft=129)``: HTK mel scale
   (mel = 2595 log10(1 + f / 700)), triangular filters, no normalisation. f_max lies above the 4 kHz Nyquist
   frequency, so filters 87..139 are all zero;
5. torchaudio ``AmplitudeToDB()``: 10 log10(max(x, 1e-10)) (the zero filters give -100 dB), transposed to
   (101, 140).

Every formula is torchaudio's, written in numpy (``resample_kernel``, ``mel_filterbank``); the arithmetic is float64
where torchaudio's is float32, so features agree to float32 rounding, not bitwise.

Storage: ``log_mel`` (101, 140) float32 dB (real-valued features, not counts), ``label`` ``ClassLabel(35)``.
"""
from __future__ import annotations

import math
import os

import numpy as np
import scipy.io.wavfile
import tensorflow_datasets as tfds
from etils import epath
from ml_collections import ConfigDict

from train.data import pipeline

WORDS = ("backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward", "four", "go",
         "happy", "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one", "right", "seven", "sheila",
         "six", "stop", "three", "tree", "two", "up", "visual", "wow", "yes", "zero")
LIST_FILES = {"validation": "validation_list.txt", "test": "testing_list.txt"}
WAV_RATE = 16_000  # Hz, the files' and the reference's sample rate
WAV_SAMPLES = WAV_RATE  # 1 s
FEATURE_RATE = WAV_RATE // 2  # Hz, after resampling
N_FFT, HOP = 256, 80  # samples at 8 kHz: 32 ms windows every 10 ms
N_MELS, F_MIN, F_MAX = 140, 50.0, 14_000.0  # Hz
AMPLITUDE_MIN = 1e-10
NUM_FRAMES = 1 + FEATURE_RATE // HOP  # 101


def resample_kernel(lowpass_zero_crossings: int = 6, rolloff: float = 0.99) -> tuple[np.ndarray, int]:
  """torchaudio's ``_get_sinc_resample_kernel`` for 16 kHz -> 8 kHz (2 -> 1 after the gcd): the (2 * width + 2,)
  float64 taps and ``width``, the zero padding on the left (``width + 2`` on the right)."""
  orig, new = 2, 1
  base_freq = min(orig, new) * rolloff
  width = math.ceil(lowpass_zero_crossings * orig / base_freq)
  t = np.clip(np.arange(-width, width + orig) / orig * base_freq, -lowpass_zero_crossings, lowpass_zero_crossings)
  window = np.cos(t * math.pi / lowpass_zero_crossings / 2) ** 2
  return np.sinc(t) * window * base_freq / orig, width  # np.sinc(t) = sin(pi t) / (pi t), 1 at 0


def resample_to_8k(waveform: np.ndarray) -> np.ndarray:
  """(..., L) at 16 kHz -> (..., ceil(L / 2)) at 8 kHz, as torchaudio's ``Resample(16000, 8000)``."""
  taps, width = resample_kernel()
  length = waveform.shape[-1]
  padded = np.pad(waveform, [(0, 0)] * (waveform.ndim - 1) + [(width, width + 2)])
  windows = np.lib.stride_tricks.sliding_window_view(padded, len(taps), axis=-1)[..., ::2, :]
  return (windows @ taps)[..., :-(-length // 2)]


def power_spectrogram(waveform: np.ndarray) -> np.ndarray:
  """(..., L) -> (..., 1 + L // HOP, N_FFT // 2 + 1) |STFT|^2, as torchaudio's ``Spectrogram(256, hop_length=80)``:
  periodic Hann window, frames centred by reflect padding of N_FFT // 2."""
  window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
  padded = np.pad(waveform, [(0, 0)] * (waveform.ndim - 1) + [(N_FFT // 2, N_FFT // 2)], mode="reflect")
  frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT, axis=-1)[..., ::HOP, :]
  return np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2


def mel_filterbank() -> np.ndarray:
  """(N_FFT // 2 + 1, N_MELS) torchaudio ``melscale_fbanks`` (HTK scale, no norm) for FEATURE_RATE, F_MIN..F_MAX:
  N_MELS + 2 points equally spaced in mel, triangular filters min(rising, falling) slope clipped at 0."""
  hz_to_mel = lambda hz: 2595.0 * np.log10(1.0 + hz / 700.0)
  bin_hz = np.linspace(0, FEATURE_RATE // 2, N_FFT // 2 + 1)
  edges_hz = 700.0 * (10 ** (np.linspace(hz_to_mel(F_MIN), hz_to_mel(F_MAX), N_MELS + 2) / 2595.0) - 1.0)
  widths = np.diff(edges_hz)
  offsets = edges_hz[None, :] - bin_hz[:, None]  # (bins, N_MELS + 2)
  rising, falling = -offsets[:, :-2] / widths[:-1], offsets[:, 2:] / widths[1:]
  return np.maximum(0.0, np.minimum(rising, falling))


def log_mel(samples: np.ndarray) -> np.ndarray:
  """(101, 140) float32 dB features of one int16 16 kHz clip (module docstring, steps 1-5)."""
  waveform = np.zeros(WAV_SAMPLES)
  clip = samples[:WAV_SAMPLES] / 32768.0
  waveform[:len(clip)] = clip
  power = power_spectrogram(resample_to_8k(waveform)) @ mel_filterbank()
  return (10.0 * np.log10(np.maximum(power, AMPLITUDE_MIN))).astype(np.float32)


def read_wav(path: epath.Path) -> np.ndarray:
  """(L,) int16 samples of a 16 kHz mono 16-bit wav; ValueError naming ``path`` for any other file."""
  try:
    rate, samples = scipy.io.wavfile.read(os.fspath(path))
  except ValueError as error:
    raise ValueError(f"{path}: not a readable wav file ({error})") from error
  if rate != WAV_RATE or samples.dtype != np.int16 or samples.ndim != 1:
    raise ValueError(f"{path}: expected {WAV_RATE} Hz mono 16-bit PCM, got {rate} Hz, {samples.dtype}, shape "
                     f"{samples.shape}")
  return samples


def split_files(root: epath.Path) -> dict[str, list[str]]:
  """'train' / 'validation' / 'test' -> sorted ``word/file.wav`` names under ``root``; FileNotFoundError naming
  a missing list file or word folder, ValueError for a list entry that is not a wav of a word folder."""
  listed = {}
  for split, list_name in LIST_FILES.items():
    list_path = root / list_name
    if not list_path.exists():
      raise FileNotFoundError(f"{list_path}: missing; expected the Speech Commands v0.02 list of {split} files")
    listed[split] = sorted(line.strip() for line in list_path.read_text().splitlines() if line.strip())
    bad = [name for name in listed[split] if name.split("/")[0] not in WORDS or not name.endswith(".wav")]
    if bad:
      raise ValueError(f"{list_path}: entries must read word/file.wav with a word of the 35, got {bad[:3]}")
  missing = [word for word in WORDS if not (root / word).is_dir()]
  if missing:
    raise FileNotFoundError(f"{root}: missing word folders {missing}; expected the extracted speech_commands_v0.02")
  held_out = set(listed["validation"]) | set(listed["test"])
  every_wav = sorted(f"{word}/{path.name}" for word in WORDS for path in (root / word).glob("*.wav"))
  return {"train": [name for name in every_wav if name not in held_out], **listed}


class Gsc(tfds.core.GeneratorBasedBuilder):
  """Speech Commands v0.02, 35 words, 140-band log-mel: 'train', 'validation', 'test' (module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "SNN-delays' features: 8 kHz, 256-point STFT every 10 ms, 140 HTK mel bands, dB."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Extract speech_commands_v0.02.tar.gz (word folders, validation_list.txt, "
                                  "testing_list.txt) into the manual directory.")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "log_mel": tfds.features.Tensor(shape=(NUM_FRAMES, N_MELS), dtype=np.float32),
            "label": tfds.features.ClassLabel(names=WORDS),
        }),
        supervised_keys=("log_mel", "label"),
        homepage="https://arxiv.org/abs/1804.03209",
        disable_shuffling=True,  # records in source order
    )

  def _split_generators(self, dl_manager):
    root = dl_manager.manual_dir
    return {split: self._generate_examples(root, names) for split, names in split_files(root).items()}

  def _generate_examples(self, root, names):
    for name in names:
      path = root / name
      if not path.exists():
        raise FileNotFoundError(f"{path}: listed in a split list but missing")
      yield name, {"log_mel": log_mel(read_wav(path)), "label": WORDS.index(name.split("/")[0])}


def make_transform(dataset_config: ConfigDict, *, train: bool):
  """The batch transform: ``spikes`` float32 (B, 101, 140), the dB features under the key the spiking models read,
  ``label`` int32 (B,). No augmentation (the reference never enables its GSC augmentations)."""
  del dataset_config, train

  def transform(batch: dict, random: pipeline.ExampleRandom) -> dict:
    del random
    return {"spikes": batch["log_mel"].astype(np.float32), "label": batch["label"].astype(np.int32)}

  return transform
