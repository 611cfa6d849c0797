"""train.data.audio_augment: the recipes' waveform and spectrogram augmentations and multi-label mixup."""
import numpy as np
import pytest
import scipy.stats
from ml_collections import ConfigDict

from train.data import audio_augment
from train.data.pipeline import ExampleRandom


def generators(count, seed=0):
  return [np.random.default_rng((seed, index)) for index in range(count)]


def ramps(batch, length):
  """(batch, length) float rows of distinct values: row b is b * length + 0..length-1."""
  return np.arange(batch * length, dtype=np.float64).reshape(batch, length)


def test_roll_shifts_each_waveform_circularly_by_its_own_amount():
  waveforms = ramps(64, 10)
  rolled = audio_augment.roll(waveforms, generators(64))
  shifts = [next(s for s in range(-10, 10) if np.array_equal(np.roll(w, s), r)) for w, r in zip(waveforms, rolled)]
  assert len(set(shifts)) > 5  # per example, not per batch
  np.testing.assert_array_equal(np.sort(rolled, axis=1), waveforms)  # the same samples
  np.testing.assert_array_equal(audio_augment.roll(waveforms, generators(64)), rolled)  # a function of the seeds
  assert not np.array_equal(audio_augment.roll(waveforms, generators(64, seed=1)), rolled)


def test_roll_draws_shifts_uniformly_in_minus_max_to_max():
  def shift(rng, **kwargs):  # rolled[0] = waveform[-shift mod L]
    return -int(audio_augment.roll(np.arange(100.0)[None], [rng], **kwargs)[0, 0]) % 100

  assert {(shift(rng, max_shift=3) + 50) % 100 - 50 for rng in generators(200)} == {-3, -2, -1, 0, 1, 2}
  shifts = [shift(rng) for rng in generators(2000)]  # default max_shift = L: uniform over the L rotations
  assert scipy.stats.chisquare(np.bincount(shifts, minlength=100)).pvalue > 0.01


def test_stretch_is_nearest_neighbour_resampling():
  waveform = np.arange(10.0)
  np.testing.assert_array_equal(audio_augment.stretch(waveform, 0.5), waveform[::2])
  np.testing.assert_array_equal(audio_augment.stretch(waveform, 1.0), waveform)
  # rate 2: indices round(0, .5, 1, 1.5, ...) half to even, clipped to 9
  np.testing.assert_array_equal(audio_augment.stretch(waveform, 2.0)[:8], [0, 0, 1, 2, 2, 2, 3, 4])
  assert len(audio_augment.stretch(waveform, 1.25)) == 13 and audio_augment.stretch(waveform, 1.9).max() == 9


def test_speed_perturb_pads_a_compressed_waveform_at_a_random_offset():
  waveforms = ramps(32, 20) + 1  # no zero sample
  out = audio_augment.speed_perturb(waveforms, generators(32), probability=1.0, rates=(0.5, 0.5))
  offsets = set()
  for waveform, perturbed in zip(waveforms, out):
    (nonzero,) = np.nonzero(perturbed)
    np.testing.assert_array_equal(perturbed[nonzero], waveform[::2])
    assert nonzero[-1] - nonzero[0] == 9
    offsets.add(nonzero[0])
  assert offsets == set(range(11))  # every alignment 0..L - n occurs


def test_speed_perturb_crops_a_stretched_waveform_and_never_takes_the_last_start():
  waveforms = ramps(64, 10)
  out = audio_augment.speed_perturb(waveforms, generators(64), probability=1.0, rates=(2.0, 2.0))
  starts = set()
  for waveform, perturbed in zip(waveforms, out):
    stretched = audio_augment.stretch(waveform, 2.0)
    (start,) = [s for s in range(11) if np.array_equal(stretched[s:s + 10], perturbed)]
    starts.add(start)
  assert starts == set(range(10))


def test_speed_perturb_applies_with_its_probability():
  waveforms = ramps(400, 16)
  out = audio_augment.speed_perturb(waveforms, generators(400), probability=0.5)
  changed = np.any(out != waveforms, axis=1).mean()
  assert 0.4 < changed < 0.6
  np.testing.assert_array_equal(audio_augment.speed_perturb(waveforms, generators(400), probability=0.0), waveforms)


def test_erasing_zeros_one_rectangle_of_2_to_33_percent_of_the_spectrogram():
  spectrograms = np.ones((50, 40, 30))  # (B, T, F)
  erased = audio_augment.erase_spectrogram(spectrograms, generators(50), probability=1.0)
  assert spectrograms.min() == 1  # the input is left alone
  for example in erased:
    frames, bins = np.nonzero(example == 0)
    assert len(frames), "every example is erased with probability 1"
    box = example[frames.min():frames.max() + 1, bins.min():bins.max() + 1]
    assert not box.any() and np.sum(example == 0) == box.size  # one rectangle, the rest untouched
    assert 0.015 < box.size / example.size < 0.36  # the rounded sides of a 2%..1/3 area


def test_erasing_applies_to_a_quarter_of_the_examples_by_default():
  erased = audio_augment.erase_spectrogram(np.ones((400, 20, 20)), generators(400))
  assert 0.18 < np.mean(np.any(erased == 0, axis=(1, 2))) < 0.32


@pytest.mark.parametrize("axis", [1, 2])
def test_drop_stripes_zeroes_whole_stripes_narrower_than_drop_width(axis):
  features = np.ones((200, 30, 20))
  dropped = audio_augment.drop_stripes(features, generators(200), axis=axis, drop_width=6, stripes_num=2)
  other = 3 - axis
  zero_lines = np.all(dropped == 0, axis=other)  # (B, size of axis): whole lines of the other axis are zero
  np.testing.assert_array_equal(zero_lines, np.any(dropped == 0, axis=other))  # nothing else is
  widths = zero_lines.sum(axis=1)
  assert widths.max() <= 2 * 5 and widths.min() == 0
  assert len(set(np.nonzero(zero_lines)[1])) > features.shape[axis] // 2  # stripes start anywhere


def test_spec_augment_drops_time_then_frequency_stripes_reproducibly():
  features = np.ones((8, 100, 40))
  out = audio_augment.spec_augment(features, generators(8), time_axis=1, freq_axis=2, time_drop_width=10,
                                   freq_drop_width=5)
  np.testing.assert_array_equal(out, audio_augment.spec_augment(features, generators(8), time_axis=1, freq_axis=2,
                                                                time_drop_width=10, freq_drop_width=5))
  time_zero, freq_zero = np.all(out == 0, axis=2), np.all(out == 0, axis=1)
  np.testing.assert_array_equal(out == 0, time_zero[:, :, None] | freq_zero[:, None, :])
  assert time_zero.sum(axis=1).max() <= 18 and freq_zero.sum(axis=1).max() <= 8


def test_drop_stripes_rejects_a_stripe_wider_than_the_axis():
  with pytest.raises(ValueError, match="drop_width"):
    audio_augment.drop_stripes(np.ones((1, 10, 5)), generators(1), axis=2, drop_width=6, stripes_num=1)


def mixed(batch_size=6, classes=5, seed=0, epoch=0, **fields):
  inputs = np.eye(batch_size, dtype=np.float32)  # example i is the indicator of i: its mix shows lam and partner
  labels = np.zeros((batch_size, classes), np.float32)
  labels[np.arange(batch_size), np.arange(batch_size) % classes] = 1
  mix = audio_augment.make_mixup(ConfigDict(fields), draw=7)
  random = ExampleRandom(seed, epoch, np.arange(batch_size))
  return inputs, labels, mix({"input": inputs, "label": labels}, random)


def test_mixup_blends_each_example_with_a_permuted_partner_by_one_lambda():
  inputs, labels, out = mixed(label_smoothing=0.1)
  lam = out["input"].diagonal().min()  # 1 on examples that are their own partner
  permutation = (out["input"] - lam * inputs) / (1 - lam)
  np.testing.assert_allclose(np.sort(permutation, axis=1)[:, :-1], 0, atol=1e-5)
  np.testing.assert_allclose(permutation.max(axis=1), 1, rtol=1e-5)
  partners = permutation.argmax(axis=1)
  assert sorted(partners) == list(range(6)) and not np.array_equal(partners, np.arange(6))
  targets = 0.9 * labels + 0.1 / 5  # smoothing folded in before mixing
  np.testing.assert_allclose(out["label"], lam * targets + (1 - lam) * targets[partners], rtol=1e-5)


def test_mixup_draws_lambda_from_beta_and_is_a_function_of_the_batch_seed():
  lams = [mixed(epoch=epoch, alpha=0.3)[2]["input"].diagonal().min() for epoch in range(300)]
  assert scipy.stats.kstest(lams, scipy.stats.beta(0.3, 0.3).cdf).pvalue > 0.01
  assert scipy.stats.kstest(lams, scipy.stats.uniform().cdf).pvalue < 0.01
  np.testing.assert_array_equal(mixed(epoch=3)[2]["input"], mixed(epoch=3)[2]["input"])


@pytest.mark.parametrize("fields, message", [({"alpha": 0}, "alpha"), ({"label_smoothing": 1.0}, "label_smoothing"),
                                             ({"cutmix_alpha": 1.0}, "unknown fields")])
def test_bad_mixup_fields_are_named(fields, message):
  with pytest.raises(ValueError, match=message):
    audio_augment.make_mixup(ConfigDict(fields), draw=0)
