"""train.data.audioset and synth_tags: the AudioSet builder on a few short audio files, the tagging transforms,
and the synthetic tagging dataset."""
import numpy as np
import pytest
import soundfile
import tensorflow_datasets as tfds
from ml_collections import ConfigDict

from models import audio_frontend
from train.data import audioset, synth_tags
from train.data.pipeline import ExampleRandom

CLASSES_CSV = 'index,mid,display_name\n0,/m/a,"Speech"\n1,/m/b,"Dog, bark"\n2,/m/c,Music\n'
CSV_HEADER = ("# Segments csv created Sun Mar  5 10:54:31 2017\n# num_ytids=3, num_segs=3, num_unique_labels=3\n"
              "# YTID, start_seconds, end_seconds, positive_labels\n")
CLIP_SECONDS = 0.5
CLIP = 16_000  # samples of a 0.5 s clip at 32 kHz
TONE = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(4000) / 16_000)  # 0.25 s of 1 kHz at 16 kHz
PCM = ((np.arange(20_000) * 37) % 2000 - 1000).astype(np.int16)  # 0.625 s of 16-bit samples at 32 kHz


def write_manual_dir(root):
  """3 classes; balanced_train: a 16 kHz wav, a 32 kHz stereo flac and a missing clip; eval (in a folder named
  after its CSV): a 32 kHz 16-bit wav longer than the clip; no unbalanced_train folder."""
  (root / audioset.CLASS_CSV).write_text(CLASSES_CSV)
  (root / "balanced_train_segments.csv").write_text(
      CSV_HEADER + '-tone, 0.000, 10.000, "/m/a,/m/c"\nstereo, 30.000, 40.000, "/m/b"\n'
      'missing, 0.000, 10.000, "/m/a"\n')
  (root / "eval_segments.csv").write_text(CSV_HEADER + 'pcm, 0.000, 10.000, "/m/c,/m/b,/m/a"\n')
  (root / "unbalanced_train_segments.csv").write_text(CSV_HEADER + 'other, 0.000, 10.000, "/m/a"\n')
  (root / "balanced_train").mkdir()
  (root / "eval_segments").mkdir()
  soundfile.write(root / "balanced_train" / "Y-tone.wav", TONE, 16_000, subtype="FLOAT")
  soundfile.write(root / "balanced_train" / "stereo.flac", np.stack([np.full(24_000, 0.25), np.full(24_000, 0.5)], 1),
                  32_000)
  soundfile.write(root / "eval_segments" / "pcm.wav", PCM, 32_000)


def tiny_builder(data_dir, **config):
  config = audioset.AudiosetConfig(name="tiny", **{"clip_seconds": CLIP_SECONDS, "num_classes": 3, **config})
  return audioset.Audioset(config=config, data_dir=str(data_dir), file_format="array_record")


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("audioset")
  write_manual_dir(root)
  return root


@pytest.fixture(scope="module")
def sources(manual_dir, tmp_path_factory):
  builder = tiny_builder(tmp_path_factory.mktemp("tfds"))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return {split: builder.as_data_source(split=split) for split in builder.info.splits}


def test_splits_are_those_with_an_audio_folder_and_missing_clips_are_skipped(sources):
  assert sorted(sources) == ["balanced_train", "eval"]
  assert [example["ytid"] for example in sources["balanced_train"]] == [b"-tone", b"stereo"]
  assert len(sources["eval"]) == 1


def test_labels_are_multi_hot_in_class_csv_order(sources):
  assert [example["labels"].tolist() for example in sources["balanced_train"]] == [[1, 0, 1], [0, 1, 0]]
  assert sources["eval"][0]["labels"].dtype == np.uint8 and sources["eval"][0]["labels"].tolist() == [1, 1, 1]


def test_a_32khz_16bit_clip_is_stored_exactly_and_cut_at_its_end(sources):
  waveform = sources["eval"][0]["waveform"]
  assert waveform.shape == (CLIP,) and waveform.dtype == np.int16
  np.testing.assert_array_equal(waveform, PCM[:CLIP])


def test_a_16khz_clip_is_resampled_to_32khz_and_zero_padded(sources):
  waveform = sources["balanced_train"][0]["waveform"] / 32768
  expected = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(8000) / 32_000)
  np.testing.assert_allclose(waveform[200:7800], expected[200:7800], atol=2e-3)  # away from the filter's edges
  assert not waveform[8100:].any()


def test_channels_are_averaged(sources):
  np.testing.assert_array_equal(sources["balanced_train"][1]["waveform"], np.full(CLIP, round(0.375 * 32768)))


def test_a_missing_clip_is_counted_in_the_log(manual_dir, tmp_path):
  builder = tiny_builder(tmp_path)
  with pytest.MonkeyPatch.context() as patch:
    warnings = []
    patch.setattr(audioset.logging, "warning", lambda message, *args: warnings.append(message % args))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  assert len(warnings) == 1 and "1 of the 3 clips of balanced_train_segments.csv" in warnings[0]


def test_a_class_count_other_than_the_config_is_named(manual_dir, tmp_path):
  with pytest.raises(ValueError, match="3 classes.*num_classes=527"):
    tiny_builder(tmp_path, num_classes=527).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))


def test_a_mid_outside_the_ontology_is_named(tmp_path):
  (tmp_path / "eval_segments.csv").write_text(CSV_HEADER + 'x, 0.000, 10.000, "/m/a,/m/zzz"\n')
  with pytest.raises(ValueError, match=r"row x names mids \['/m/zzz'\]"):
    audioset.read_segments(tmp_path / "eval_segments.csv", {"/m/a": 0})


def test_clip_seconds_must_be_a_whole_number_of_samples():
  with pytest.raises(ValueError, match="clip_seconds"):
    _ = audioset.AudiosetConfig(name="odd", clip_seconds=1e-5).clip_samples


# ---- transforms --------------------------------------------------------------------------------------------------

def clips(batch_size=3):
  """A batch as the builder stores it: int16 noise of growing level, multi-hot labels."""
  rng = np.random.default_rng(0)
  levels = np.geomspace(100, 10_000, batch_size)[:, None]
  waveforms = np.clip(rng.standard_normal((batch_size, CLIP)) * levels, -32768, 32767).astype(np.int16)
  labels = (rng.random((batch_size, 3)) < 0.5).astype(np.uint8)
  return {"waveform": waveforms, "labels": labels}


def transformed(fields=None, *, train, seed=0, epoch=0, batch=None):
  batch = clips() if batch is None else batch
  transform = audioset.make_transform(ConfigDict(fields or {}), train=train)
  return transform(batch, ExampleRandom(seed, epoch, np.arange(len(batch["labels"]))))


def test_eval_transform_gives_dcls_audio_log_mels_mel_major():
  batch = clips()
  out = transformed(train=False, batch=batch)
  expected = audio_frontend.log_mel(batch["waveform"].astype(np.float32) / 32768, audio_frontend.DCLS_AUDIO)
  assert out["input"].shape == (3, 128, 1 + CLIP // 320, 1) and out["input"].dtype == np.float32
  np.testing.assert_allclose(out["input"][..., 0], np.swapaxes(expected, 1, 2), atol=1e-4)
  np.testing.assert_array_equal(out["label"], batch["labels"].astype(np.float32))


def test_waveform_front_end_passes_samples_over_32767():
  batch = clips()
  out = transformed({"front_end": "waveform"}, train=True, batch=batch)
  np.testing.assert_array_equal(out["input"], batch["waveform"] / np.float32(32767))


def test_train_augmentation_is_a_function_of_seed_epoch_and_record():
  first = transformed(train=True)["input"]
  np.testing.assert_array_equal(transformed(train=True)["input"], first)
  assert not np.array_equal(transformed(train=True, epoch=1)["input"], first)
  assert not np.array_equal(transformed(train=False)["input"], first)


def test_erasing_sends_a_rectangle_of_the_power_spectrogram_to_the_db_floor():
  out = transformed({"random_roll": False, "speed_perturb": 0.0, "random_erasing": 1.0}, train=True)
  floor = (-100 - audio_frontend.DCLS_AUDIO.norm_mean) / audio_frontend.DCLS_AUDIO.norm_std
  np.testing.assert_allclose(out["input"].min(axis=(1, 2, 3)), floor, rtol=1e-6)
  assert transformed(train=False)["input"].min() > floor + 1


def test_mixup_gives_smoothed_soft_targets():
  out = transformed({"mixup": {"alpha": 0.8, "label_smoothing": 0.1}}, train=True)
  assert np.all((out["label"] > 0) & (out["label"] < 1))
  assert transformed({"mixup": {}}, train=False)["label"].max() == 1  # never at evaluation


def test_spec_augment_zeroes_stripes_of_the_log_mels():
  out = transformed({"random_roll": False, "speed_perturb": 0.0, "random_erasing": 0.0,
                     "spec_augment": {"time_drop_width": 10, "freq_drop_width": 20}}, train=True)
  assert np.any(np.all(out["input"] == 0, axis=(1, 3)))  # whole frames (time stripes)


@pytest.mark.parametrize("fields, message", [
    ({"front_end": "mfcc"}, "front_end"),
    ({"int16_divisor": 1000}, "int16_divisor"),
    ({"random_roll": 1}, "random_roll"),
    ({"speed_perturb": 2.0}, "speed_perturb"),
    ({"front_end": "waveform", "random_erasing": 0.25}, "random_erasing"),
    ({"spec_augment": {"time_width": 3}}, "spec_augment"),
])
def test_bad_transform_fields_are_named(fields, message):
  with pytest.raises(ValueError, match=message):
    audioset.make_transform(ConfigDict(fields), train=True)


# ---- synthetic tagging clips -------------------------------------------------------------------------------------

def test_synthetic_clips_are_deterministic_and_carry_one_to_three_labels():
  synthesized = [synth_tags.synthesize("train", index) for index in range(40)]
  waveform, _ = synth_tags.synthesize("train", 7)
  np.testing.assert_array_equal(waveform, synthesized[7][0])
  assert waveform.shape == (synth_tags.CLIP_SAMPLES,) and waveform.dtype == np.int16
  labels = np.stack([labels for _, labels in synthesized])
  assert set(labels.sum(axis=1)) == {1, 2, 3}
  assert np.all(labels.sum(axis=0) > 0)  # every class occurs
  assert not np.array_equal(synth_tags.synthesize("test", 7)[0], waveform)


def test_synthetic_front_end_is_standardised_by_the_train_statistics():
  mean, std = synth_tags.log_mel_statistics(100)  # LOG_MEL holds those of all 2,000
  assert abs(mean - synth_tags.LOG_MEL.norm_mean) / synth_tags.LOG_MEL.norm_std < 0.15  # standardised mean ~ 0
  assert abs(std / synth_tags.LOG_MEL.norm_std - 1) < 0.1  # standardised std ~ 1


def test_synthetic_builder_reads_through_the_data_source(tmp_path, monkeypatch):
  monkeypatch.setattr(synth_tags, "SPLIT_SIZES", {"train": 5, "test": 2})
  builder = synth_tags.SynthTags(data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare()
  train = builder.as_data_source(split="train")
  assert len(train) == 5 and len(builder.as_data_source(split="test")) == 2
  np.testing.assert_array_equal(train[3]["waveform"], synth_tags.synthesize("train", 3)[0])
  batch = {key: np.stack([train[i][key] for i in range(5)]) for key in ("waveform", "labels")}
  out = synth_tags.make_transform(ConfigDict(), train=True)(batch, ExampleRandom(0, 0, np.arange(5)))
  assert out["input"].shape == (5, 64, 101, 1) and out["label"].shape == (5, len(synth_tags.CLASSES))
