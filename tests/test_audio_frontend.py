"""Log-mel front ends: the STFT's definition, the -100 dB floor, the two recipes against the reference fixtures
(``../shared/fixtures/{audio_convnext,dcls_audio_*}``, skipped when absent), and the errors on bad input."""
from __future__ import annotations

import dataclasses
import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import audio_frontend as af

SHARED_FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                               "fixtures")


def eval_fixtures(arch_pattern):
  """The eval-mode fixtures of the matching arch folders, or one skipped case when there are none."""
  paths = sorted(glob.glob(os.path.join(SHARED_FIXTURES, arch_pattern, "eval*.npz")))
  return ([pytest.param(path, id=os.path.relpath(path, SHARED_FIXTURES)) for path in paths]
          or [pytest.param(None, marks=pytest.mark.skip(reason=f"no {arch_pattern} fixtures"))])


def load(path):
  arrays = dict(np.load(path))
  return json.loads(str(arrays.pop("meta"))), arrays


def assert_within_tolerance(ours, meta, arrays, key):
  """The fixtures' rule: |ours - ref| <= atol + rtol |ref| elementwise."""
  ref, tolerance = arrays[key], meta["tolerance"][key]
  ours = np.asarray(ours)
  assert ours.shape == ref.shape, key
  excess = np.abs(ours - ref) - (tolerance["atol"] + tolerance["rtol"] * np.abs(ref))
  assert excess.max() <= 0, f"{key}: worst excess {excess.max():.3g} over the tolerance {tolerance}"


def stft_by_definition(x, n_fft, hop):
  """float64 sum_n w[n] x_pad[t hop + n] e^{-2 pi i k n / n_fft}, x_pad = x mirrored by n_fft // 2 (no edge repeat)."""
  padded = np.pad(x, n_fft // 2, mode="reflect")
  n = np.arange(n_fft)
  window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)
  basis = np.exp(-2j * np.pi * np.outer(n, np.arange(n_fft // 2 + 1)) / n_fft)
  frames = np.stack([padded[t * hop:t * hop + n_fft] for t in range(1 + len(x) // hop)])
  return np.abs((frames * window) @ basis) ** 2


@pytest.mark.parametrize("length", [9, 40, 41, 47])
def test_power_spectrogram_is_the_centred_hann_stft_with_one_frame_per_hop(length):
  x = np.random.RandomState(length).uniform(-1, 1, length)
  ours = af.power_spectrogram(jnp.asarray(x, jnp.float32), n_fft=16, hop_length=5)
  assert ours.shape == (1 + length // 5, 9) and ours.dtype == jnp.float32
  np.testing.assert_allclose(ours, stft_by_definition(x, 16, 5), rtol=1e-5, atol=1e-5)


def test_power_spectrogram_batches_over_leading_axes_and_jits():
  x = jnp.asarray(np.random.RandomState(0).normal(size=(2, 3, 50)), jnp.float32)
  batched = jax.jit(lambda w: af.power_spectrogram(w, n_fft=16, hop_length=4))(x)
  assert batched.shape == (2, 3, 13, 9)
  np.testing.assert_allclose(batched[1, 2], af.power_spectrogram(x[1, 2], n_fft=16, hop_length=4), rtol=1e-6)


def test_num_frames_follows_one_plus_length_floor_hop():
  assert [af.num_frames(n, 320) for n in (319, 320, 32001, 320000)] == [1, 2, 101, 1001]


def test_silence_is_the_minus_100_db_floor_before_and_after_standardisation():
  silence = jnp.zeros((2, 3201), jnp.float32)
  db = af.log_mel(silence, af.CONVNEXT_AUDIO)
  assert db.shape == (2, 11, 224)
  np.testing.assert_array_equal(db, -100.0)
  standardised = af.log_mel(silence, af.DCLS_AUDIO)
  assert standardised.shape == (2, 11, 128)
  np.testing.assert_allclose(standardised, (-100.0 + 18.2696) / 30.5735, rtol=1e-6)


def test_power_to_db_is_ten_log10_clamped_at_amin():
  np.testing.assert_allclose(af.power_to_db(jnp.array([0.0, 1e-12, 1.0, 100.0])), [-100.0, -100.0, 0.0, 20.0])
  np.testing.assert_allclose(af.power_to_db(jnp.array([0.0]), amin=1e-5), [-50.0])


def test_log_mel_uses_a_given_mel_matrix():
  config = dataclasses.replace(af.CONVNEXT_AUDIO, n_mels=2)
  x = jnp.asarray(np.random.RandomState(1).normal(size=2000), jnp.float32)
  power = af.power_spectrogram(x, n_fft=1024, hop_length=320)
  bins_0_and_1 = np.zeros((513, 2)); bins_0_and_1[0, 0] = bins_0_and_1[1, 1] = 1.0
  np.testing.assert_allclose(af.log_mel(x, config, mel_matrix=bins_0_and_1), 10 * np.log10(power[:, :2]),
                             rtol=1e-5)


@pytest.mark.parametrize("path", eval_fixtures("audio_convnext"))
def test_convnext_audio_front_end_matches_the_reference(path):
  meta, arrays = load(path)
  config = af.LogMelConfig.from_reference(meta["config"])
  assert config == af.CONVNEXT_AUDIO
  # The model's frozen matrix is librosa's Slaney filterbank (stored float32: a few float32 ulps).
  np.testing.assert_allclose(config.mel_matrix(), arrays["state/logmel_extractor.melW"], rtol=1e-6, atol=0)
  waveform = arrays["input/waveform"]
  with jax.default_matmul_precision("highest"):
    power = af.power_spectrogram(waveform, n_fft=config.n_fft, hop_length=config.hop_length)
    logmel = af.log_mel(waveform, config, mel_matrix=arrays["state/logmel_extractor.melW"])
  assert_within_tolerance(power[:, None], meta, arrays, "output/power_spectrogram")
  assert_within_tolerance(logmel[:, None], meta, arrays, "output/logmel")


@pytest.mark.parametrize("path", eval_fixtures("dcls_audio_*"))
def test_dcls_audio_front_end_matches_the_reference(path):
  meta, arrays = load(path)
  config = af.LogMelConfig.from_reference(meta["config"])
  assert config == af.DCLS_AUDIO
  assert_within_tolerance(config.mel_matrix(), meta, arrays, "output/mel_fb")
  with jax.default_matmul_precision("highest"):
    spectrogram = af.log_mel(arrays["input/waveform"], config)
  assert_within_tolerance(jnp.swapaxes(spectrogram, -1, -2)[:, None], meta, arrays, "output/spectrogram")


def test_from_reference_reads_either_reference_naming():
  torchlibrosa = {"sample_rate": 16000, "window_size": 512, "hop_size": 160, "mel_bins": 64, "fmin": 0,
                  "fmax": 8000}
  assert af.LogMelConfig.from_reference(torchlibrosa) == af.LogMelConfig(16000, 512, 160, 64, 0, 8000, "slaney")
  torchaudio = {"sample_rate": 16000, "n_fft": 400, "hop_length": 100, "n_mels": 40, "f_min": 20, "f_max": 7000,
                "norm_mean": -5.0, "norm_std": 2.0}
  assert af.LogMelConfig.from_reference(torchaudio) == af.LogMelConfig(16000, 400, 100, 40, 20, 7000, "htk",
                                                                       -5.0, 2.0)


@pytest.mark.parametrize("config, match", [
    ({"sample_rate": 32000, "hop_size": 320}, "neither 'window_size'"),
    ({"sample_rate": 32000, "n_fft": 1024, "hop_length": 320, "n_mels": 128, "f_min": 50, "f_max": 14000},
     r"lacks \['norm_mean', 'norm_std'\]"),
    ({"window_size": 1024, "hop_size": 320, "mel_bins": 224, "fmin": 50, "fmax": 14000}, r"lacks \['sample_rate'\]"),
])
def test_from_reference_names_what_is_missing(config, match):
  with pytest.raises(ValueError, match=match):
    af.LogMelConfig.from_reference(config)


@pytest.mark.parametrize("waveform, match", [
    (np.zeros(512, np.float32), "L >= n_fft // 2 \\+ 1 = 513"),
    (np.float32(0.0), "shape \\(..., L\\)"),
    (np.zeros(2000, np.int16), "waveform must be floating point"),
])
def test_power_spectrogram_rejects_bad_waveforms(waveform, match):
  with pytest.raises(ValueError, match=match):
    af.power_spectrogram(waveform)


@pytest.mark.parametrize("changes, match", [
    ({"mel_scale": "kaldi"}, "mel_scale must be one of"),
    ({"f_max": 16001.0}, "f_max <= sample_rate / 2 = 16000.0"),
    ({"f_min": 14000.0}, "f_min < f_max"),
    ({"n_mels": 0}, "n_mels must be a positive integer"),
    ({"hop_length": 0}, "hop_length must be a positive integer"),
    ({"norm_std": None}, "norm_mean and norm_std must be set together"),
    ({"norm_std": 0.0}, "norm_std must be > 0"),
])
def test_config_rejects_bad_fields(changes, match):
  with pytest.raises(ValueError, match=match):
    dataclasses.replace(af.DCLS_AUDIO, **changes)


def test_log_mel_rejects_a_mel_matrix_of_the_wrong_shape():
  with pytest.raises(ValueError, match=r"mel_matrix must have shape .* \(513, 128\)"):
    af.log_mel(np.zeros(2000, np.float32), af.DCLS_AUDIO, mel_matrix=np.zeros((513, 224)))
