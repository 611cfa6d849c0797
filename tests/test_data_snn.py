"""train.data shd / gsc / delay_task: the spiking datasets' builders, from tiny files in the original formats."""
import h5py
import numpy as np
import pytest
import scipy.io.wavfile
from ml_collections import ConfigDict

from train import data
from train.data import delay_task, gsc, shd
from train.data.pipeline import ExampleRandom


write_h5 = shd.write_sample_file


# Events at 0, 3, 9.5, 10.2, 25, 41 ms on units 0, 4, 5, 699, 12, 3 (channels 0, 0, 1, 139, 2, 0): the spec's example.
SPEC_SAMPLE = ([0, 0.003, 0.0095, 0.0102, 0.025, 0.041], [0, 4, 5, 699, 12, 3], 7)
# 100, 110, 200 ms in float16: 110 - 100 = 10 ms is inside the inclusive window.
EDGE_SAMPLE = ([0.1, 0.11, 0.2], [10, 11, 20], 19)


def counts(steps, *entries):
  """(steps, 140) counts with count c at (step, channel) for each (step, channel, c) entry."""
  table = np.zeros((steps, shd.NUM_CHANNELS), np.uint8)
  for step, channel, count in entries:
    table[step, channel] = count
  return table


EXPECTED = {  # binning -> sample -> (T, 140) counts
    "event_windows": {"spec": counts(4, (0, 0, 2), (0, 1, 1), (1, 139, 1), (2, 2, 1), (3, 0, 1)),
                      "edge": counts(2, (0, 2, 2), (1, 4, 1))},
    "fixed_grid": {"spec": counts(5, (0, 0, 2), (0, 1, 1), (1, 139, 1), (2, 2, 1), (4, 0, 1)),
                   "edge": counts(10, (0, 2, 1), (1, 2, 1), (9, 4, 1))},
}


@pytest.fixture(scope="module")
def shd_dir(tmp_path_factory):
  manual_dir = tmp_path_factory.mktemp("shd")
  write_h5(manual_dir / "shd_train.h5", [SPEC_SAMPLE, EDGE_SAMPLE])
  write_h5(manual_dir / "shd_test.h5", [EDGE_SAMPLE])
  return manual_dir


def spiking_config(name, manual_dir, tmp_path, **fields):
  return ConfigDict({"name": name, "data_dir": str(tmp_path / "tfds"), "manual_dir": str(manual_dir), **fields})


def test_edge_sample_is_100_110_200_ms_in_float16():
  np.testing.assert_array_equal(np.asarray(EDGE_SAMPLE[0], np.float16) * 1000, [100, 110, 200])


# ---- SHD / SSC ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, binning", [("shd", "event_windows"), ("shd_fixed_grid", "fixed_grid")])
def test_shd_builder_bins_10ms_frames_and_groups_5_channels(shd_dir, tmp_path, name, binning):
  config = spiking_config(name, shd_dir, tmp_path)
  train, test = data.get_source(config, "train"), data.get_source(config, "test")
  assert (len(train), len(test)) == (2, 1)
  assert train.dataset_info.features["label"].num_classes == 20
  for example, sample in [(train[0], "spec"), (train[1], "edge"), (test[0], "edge")]:
    expected = EXPECTED[binning][sample]
    assert example["spikes"].shape == (shd.MAX_STEPS, 140) and example["spikes"].dtype == np.uint8
    assert example["length"] == len(expected)
    np.testing.assert_array_equal(example["spikes"][:len(expected)], expected)
    assert not example["spikes"][len(expected):].any()  # zero padding at the end
    assert example["label"] == {"spec": 7, "edge": 19}[sample]


def test_window_edges_are_decided_on_float16_milliseconds():
  # 0.502 s and 0.512 s are 501.95 and 512.21 ms exactly, but 502 and 512 ms in float16: one window, as SpikingJelly.
  times = np.array([0.502, 0.512], np.float16)
  assert (float(times[1]) - float(times[0])) * 1000 > 10
  np.testing.assert_array_equal(shd.bin_spikes(times, np.array([0, 5]), "event_windows"),
                                counts(1, (0, 0, 1), (0, 1, 1)))
  np.testing.assert_array_equal(shd.bin_spikes(times.astype(np.float64), np.array([0, 5]), "event_windows"),
                                counts(2, (0, 0, 1), (1, 1, 1)))


def test_ssc_builder_reads_train_valid_and_test_files(tmp_path):
  manual_dir = tmp_path / "ssc"
  manual_dir.mkdir()
  for suffix, label in [("train", 0), ("valid", 34), ("test", 12)]:
    write_h5(manual_dir / f"ssc_{suffix}.h5", [(SPEC_SAMPLE[0], SPEC_SAMPLE[1], label)])
  config = spiking_config("ssc", manual_dir, tmp_path)
  for split, label in [("train", 0), ("validation", 34), ("test", 12)]:
    (example,) = list(data.get_source(config, split))
    assert example["label"] == label
    np.testing.assert_array_equal(example["spikes"][:4], EXPECTED["event_windows"]["spec"])
  assert data.get_source(config, "train").dataset_info.features["label"].num_classes == 35


def test_missing_shd_file_names_the_path(tmp_path):
  manual_dir = tmp_path / "shd"
  manual_dir.mkdir()
  write_h5(manual_dir / "shd_train.h5", [SPEC_SAMPLE])
  with pytest.raises(FileNotFoundError, match="shd_test.h5: missing"):
    data.get_source(spiking_config("shd", manual_dir, tmp_path), "train")


def test_non_hdf5_file_is_a_clear_error_from_the_builder(tmp_path):
  manual_dir = tmp_path / "shd"
  manual_dir.mkdir()
  write_h5(manual_dir / "shd_train.h5", [SPEC_SAMPLE])
  (manual_dir / "shd_test.h5").write_text("not hdf5")
  with pytest.raises(ValueError, match="shd_test.h5: not a readable HDF5 file"):
    data.get_source(spiking_config("shd", manual_dir, tmp_path), "train")


def drop_labels(path):
  with h5py.File(path, "a") as f:
    del f["labels"]


@pytest.mark.parametrize("samples, damage, message", [
    ([SPEC_SAMPLE], drop_labels, r"missing datasets \['labels'\]"),
    ([([0.0, 0.001], [3, 700], 0)], None, "sample 0: units must lie in 0..699, got 3..700"),
    ([SPEC_SAMPLE, ([0.002, 0.001], [3, 4], 0)], None, "sample 1: spike times must be floats sorted in time"),
    ([([0.0], [3, 4], 0)], None, "sample 0: expected equally long, non-empty spike times and units"),
    ([([0.0], [3], 20)], None, "sample 0: label must lie in 0..19, got 20"),
])
def test_malformed_samples_are_errors_naming_file_and_sample(tmp_path, samples, damage, message):
  path = tmp_path / "shd_train.h5"
  write_h5(path, samples)
  if damage:
    damage(path)
  with pytest.raises(ValueError, match=message):
    sample_file = shd.SampleFile(path, num_classes=20)
    [sample_file.sample(index) for index in range(len(sample_file))]


def test_spike_transform_gives_float_spikes_and_cuts_padding_on_request():
  batch = {"spikes": np.stack([counts(6, (1, 3, 2)), counts(6, (3, 0, 1))]), "length": np.array([2, 4], np.int32),
           "label": np.array([5, 19])}
  random = ExampleRandom(0, 0, np.arange(2))
  full = shd.make_transform(ConfigDict({}), train=True)(batch, random)
  assert full["spikes"].dtype == np.float32 and full["spikes"].shape == (2, 6, 140)
  assert full["label"].dtype == np.int32 and list(full["label"]) == [5, 19]
  np.testing.assert_array_equal(full["spikes"], batch["spikes"])
  cut = shd.make_transform(ConfigDict({"num_steps": 4}), train=False)(batch, random)
  np.testing.assert_array_equal(cut["spikes"], batch["spikes"][:, :4])
  with pytest.raises(ValueError, match="num_steps=3 would cut an example of 4 steps"):
    shd.make_transform(ConfigDict({"num_steps": 3}), train=False)(batch, random)
  with pytest.raises(ValueError, match="config.dataset.num_steps must be a positive int"):
    shd.make_transform(ConfigDict({"num_steps": 0}), train=False)


# ---- GSC ---------------------------------------------------------------------------------------------

def tone(frequency_hz, num_samples, amplitude=8000):
  return (amplitude * np.sin(2 * np.pi * frequency_hz * np.arange(num_samples) / gsc.WAV_RATE)).astype(np.int16)


GSC_FILES = {"yes/a.wav": tone(440, 16000), "yes/b.wav": tone(1000, 12000), "no/c.wav": tone(300, 17000),
             "zero/d.wav": tone(2000, 16000)}


@pytest.fixture(scope="module")
def gsc_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("speech_commands_v0.02")
  for word in gsc.WORDS + ("_background_noise_",):
    (root / word).mkdir()
  scipy.io.wavfile.write(root / "_background_noise_" / "noise.wav", gsc.WAV_RATE, tone(50, 48000))
  for name, samples in GSC_FILES.items():
    scipy.io.wavfile.write(root / name, gsc.WAV_RATE, samples)
  (root / "validation_list.txt").write_text("no/c.wav\n")
  (root / "testing_list.txt").write_text("zero/d.wav\n")
  return root


def test_gsc_builder_splits_by_the_lists_and_stores_log_mel(gsc_dir, tmp_path):
  config = spiking_config("gsc", gsc_dir, tmp_path)
  splits = {split: list(data.get_source(config, split)) for split in ("train", "validation", "test")}
  names = {"train": ["yes/a.wav", "yes/b.wav"], "validation": ["no/c.wav"], "test": ["zero/d.wav"]}
  for split, examples in splits.items():
    assert [example["label"] for example in examples] == [gsc.WORDS.index(name.split("/")[0])
                                                          for name in names[split]]
    for example, name in zip(examples, names[split]):
      assert example["log_mel"].shape == (101, 140) and example["log_mel"].dtype == np.float32
      np.testing.assert_array_equal(example["log_mel"], gsc.log_mel(GSC_FILES[name]))
  assert [gsc.WORDS.index(word) for word in ("yes", "no", "zero")] == [33, 18, 34]


def test_clips_are_zero_padded_or_cut_at_the_end_to_one_second():
  long_clip = tone(300, 17000)
  np.testing.assert_array_equal(gsc.log_mel(long_clip), gsc.log_mel(long_clip[:16000]))
  short_clip = tone(1000, 12000)
  np.testing.assert_array_equal(gsc.log_mel(short_clip), gsc.log_mel(np.pad(short_clip, (0, 4000))))


def test_a_tone_peaks_in_its_mel_band_and_bands_above_nyquist_are_minus_100_db():
  filterbank = gsc.mel_filterbank()
  assert filterbank.shape == (129, 140)
  np.testing.assert_array_equal(np.flatnonzero(filterbank.sum(0) == 0), np.arange(87, 140))  # f_max > 4 kHz
  features = gsc.log_mel(tone(1000, 16000))
  assert np.all(features[:, 87:] == -100.0)
  centres_hz = np.linspace(0, 4000, 129)[np.argmax(filterbank[:, :87], axis=0)]
  assert abs(centres_hz[np.argmax(features[50, :87])] - 1000) < 2 * 4000 / 128  # two STFT bins


def test_resampling_to_8k_keeps_a_tone_below_nyquist():
  time_16k = np.arange(16000) / 16000
  resampled = gsc.resample_to_8k(np.sin(2 * np.pi * 500 * time_16k))
  assert resampled.shape == (8000,)
  np.testing.assert_allclose(resampled[100:-100], np.sin(2 * np.pi * 500 * time_16k[::2])[100:-100], atol=2e-3)
  taps, width = gsc.resample_kernel()
  assert (len(taps), width) == (28, 13)  # torchaudio's for 16 -> 8 kHz, lowpass_filter_width 6, rolloff 0.99


def test_power_spectrogram_matches_torch_stft():
  torch = pytest.importorskip("torch")
  signal = np.random.default_rng(0).standard_normal(8000)
  expected = torch.stft(torch.tensor(signal), 256, 80, window=torch.hann_window(256, dtype=torch.float64),
                        center=True, pad_mode="reflect", return_complex=True).abs() ** 2
  np.testing.assert_allclose(gsc.power_spectrogram(signal), expected.numpy().T, rtol=1e-9, atol=1e-9)


def test_missing_list_and_bad_wav_are_errors_naming_the_path(tmp_path):
  (tmp_path / "validation_list.txt").write_text("no/c.wav\n")
  with pytest.raises(FileNotFoundError, match="testing_list.txt: missing"):
    gsc.split_files(tmp_path)
  bad = tmp_path / "bad.wav"
  scipy.io.wavfile.write(bad, 8000, tone(300, 800))
  with pytest.raises(ValueError, match="bad.wav: expected 16000 Hz mono 16-bit PCM, got 8000 Hz"):
    gsc.read_wav(bad)
  bad.write_text("not a wav")
  with pytest.raises(ValueError, match="bad.wav: not a readable wav file"):
    gsc.read_wav(bad)


# ---- the generated delay task -------------------------------------------------------------------------

def test_delay_task_builder_is_deterministic_and_balanced(tmp_path):
  config = ConfigDict({"name": "delay_task", "data_dir": str(tmp_path), "manual_dir": None})
  for split, size in [("train", 2000), ("test", 500)]:
    spikes, labels = delay_task.generate(split)
    source = data.get_source(config, split)
    assert len(source) == size
    for index in (0, 7, size - 1):
      np.testing.assert_array_equal(source[index]["spikes"], spikes[index])
      assert source[index]["label"] == labels[index]
    np.testing.assert_array_equal(np.bincount(labels), [size // 5] * 5)
  np.testing.assert_array_equal(delay_task.generate("test")[0], spikes)
  assert not np.array_equal(delay_task.generate("train")[0][:500], spikes)


def test_delay_task_spike_counts_do_not_reveal_the_class():
  spikes, labels = delay_task.generate("train")
  assert spikes.shape == (2000, 50, 24)
  assert np.all(spikes.sum(axis=1) == 2)  # every channel: one pattern spike and one noise spike, in every example
  patterns = delay_task.class_patterns()
  for pattern in patterns:  # every class: one spike per step over the 24 pattern steps, each block in its 4 steps
    np.testing.assert_array_equal(np.sort(pattern), np.arange(24))
    np.testing.assert_array_equal(pattern // 4, np.arange(24) // 4)
  for block in range(6):  # the order inside each block differs between every two classes
    orders = {tuple(pattern[4 * block:4 * block + 4]) for pattern in patterns}
    assert len(orders) == 5


def test_delay_task_timing_separates_the_classes():
  # Coincidence detectors with one class's delays: each block's 4 channels delayed to the block's last step.
  spikes, labels = delay_task.generate("test")
  blocks = spikes.reshape(len(spikes), 50, 6, 4)  # (N, T, block, channel in block)
  evidence = np.zeros((len(spikes), 5))
  for label, pattern in enumerate(delay_task.class_patterns()):
    delays = 3 - pattern.reshape(6, 4) % 4  # (block, channel in block), in 0..3 steps
    aligned = np.zeros((len(spikes), 50 + 3, 6))
    for block, channel in np.ndindex(6, 4):
      aligned[:, delays[block, channel]:delays[block, channel] + 50, block] += blocks[:, :, block, channel]
    coincidences = aligned[:, :-2] + aligned[:, 1:-1] + aligned[:, 2:]  # spikes within 3 steps (jitter +-1)
    evidence[:, label] = coincidences.max(axis=1).sum(axis=-1)
  assert np.mean(np.argmax(evidence, axis=-1) == labels) > 0.8
