"""train.data: the digits tfds builder, the dataset registry and the loader (order, resume, shards, padding)."""
import gzip
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from absl import flags
from ml_collections import ConfigDict

from train import data
from train.data import digits
from train.data.pipeline import ExampleRandom, Pipeline

REPO = pathlib.Path(__file__).resolve().parents[1]

# 50 tiny digits: row r has label r % 10 and a unique image (pixels 0 and 1 spell r in base 17).
TINY_LABELS = np.arange(50) % 10
TINY_IMAGES = np.stack([np.roll(np.arange(64), r) % 17 for r in range(50)]).astype(np.int64)
TINY_IMAGES[:, :2] = np.stack([np.arange(50) // 17, np.arange(50) % 17], axis=1)


def write_digits_csv(path, images, labels):
  """The original format: one row per image, 64 pixels then the label, comma-separated, gzip-compressed."""
  rows = np.concatenate([images.reshape(len(images), 64), labels[:, None]], axis=1)
  with gzip.open(path, "wt") as f:
    np.savetxt(f, rows, fmt="%d", delimiter=",")


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
  manual_dir = tmp_path_factory.mktemp("manual")
  write_digits_csv(manual_dir / digits.FILE_NAME, TINY_IMAGES, TINY_LABELS)
  return ConfigDict({"name": "digits", "data_dir": str(tmp_path_factory.mktemp("tfds")),
                     "manual_dir": str(manual_dir), "max_translation": 1})


def row_of(image):
  return int(image[0, 0, 0]) * 17 + int(image[0, 1, 0])


# ---- the digits builder ----------------------------------------------------------------------------

def test_builder_prepares_the_original_csv_into_a_stratified_split(tiny_config):
  splits = {split: list(data.get_source(tiny_config, split)) for split in ("train", "test")}
  assert {split: len(examples) for split, examples in splits.items()} == {"train": 40, "test": 10}
  # each class has rows c, c + 10, ..., c + 40: its 5th one (i % 5 == 4) is the test example
  assert sorted(row_of(example["image"]) for example in splits["test"]) == list(range(40, 50))
  for example in splits["train"] + splits["test"]:
    row = row_of(example["image"])
    assert example["image"].dtype == np.uint8 and example["image"].shape == (8, 8, 1)
    np.testing.assert_array_equal(example["image"].reshape(64), TINY_IMAGES[row])
    assert example["label"] == TINY_LABELS[row]


def test_data_source_gives_random_access(tiny_config):
  source = data.get_source(tiny_config, "train")
  in_order = list(source)
  for index in (39, 0, 17):
    assert row_of(source[index]["image"]) == row_of(in_order[index]["image"])
  assert [row_of(example["image"]) for example in source.__getitems__([5, 2])] == [
      row_of(in_order[5]["image"]), row_of(in_order[2]["image"])]
  assert source.dataset_info.features["label"].num_classes == 10


def test_bundled_digits_are_1797_images_split_80_20_per_class(tmp_path):
  config = ConfigDict({"name": "digits", "data_dir": str(tmp_path), "manual_dir": None})
  labels = {split: np.array([example["label"] for example in data.get_source(config, split)])
            for split in ("train", "test")}
  assert (len(labels["train"]), len(labels["test"])) == (1442, 355)
  per_class = np.bincount(np.concatenate([labels["train"], labels["test"]]), minlength=10)
  np.testing.assert_array_equal(np.bincount(labels["test"], minlength=10), per_class // 5)


def test_test_split_is_every_fifth_example_of_each_class_in_file_order():
  labels = np.array([0, 1] * 5 + [0] * 5)
  # class 0 sits at rows 0, 2, 4, 6, 8, 10, ..., 14: its 5th (row 8) and 10th (row 14); class 1's 5th is row 9
  np.testing.assert_array_equal(np.flatnonzero(digits.in_test_split(labels)), [8, 9, 14])


def test_bad_csv_raises(tmp_path):
  write_digits_csv(tmp_path / digits.FILE_NAME, TINY_IMAGES[:2] + 16, TINY_LABELS[:2])
  with pytest.raises(ValueError, match="pixels must lie in 0..16"):
    digits.read_csv(pathlib.Path(tmp_path / digits.FILE_NAME))


# ---- the digits transform --------------------------------------------------------------------------

def test_translate_moves_pixels_and_fills_with_zeros():
  images = np.zeros((3, 8, 8, 1), np.float32)
  images[:, 2, 3] = 1.0
  moved = digits.translate(images, np.array([1, -3, 0]), np.array([-2, 0, 0]))
  assert moved.shape == (3, 8, 8, 1) and moved[0, 3, 1, 0] == 1.0 and moved[0].sum() == 1.0
  assert moved[1].sum() == 0.0  # pushed off the top
  np.testing.assert_array_equal(moved[2], images[2])


def test_transform_scales_pixels_and_translates_only_for_training():
  batch = {"image": np.full((20, 8, 8, 1), 16, np.uint8), "label": np.full((20,), 7, np.int64)}
  random = ExampleRandom(seed=0, epoch=0, records=np.arange(20))
  config = ConfigDict({"name": "digits", "max_translation": 1})
  evaluated = data.get_transform(config, train=False)(batch, random)
  np.testing.assert_array_equal(evaluated["image"], np.ones((20, 8, 8, 1), np.float32))
  assert evaluated["image"].dtype == np.float32 and evaluated["label"].dtype == np.int32
  sums = set(data.get_transform(config, train=True)(batch, random)["image"].sum(axis=(1, 2, 3)).tolist())
  assert sums - {64.0} and sums <= {64.0, 56.0, 49.0}  # some shifted by one row and/or column


def test_example_randomness_depends_on_the_example_not_its_batch():
  random = ExampleRandom(seed=3, epoch=1, records=np.array([5, 9, 2]))
  alone = ExampleRandom(seed=3, epoch=1, records=np.array([9]))
  assert random.uniform(0)[1] == alone.uniform(0)[0]
  assert random.uniform(0)[1] != random.uniform(1)[1]  # draws are independent quantities
  assert ExampleRandom(seed=4, epoch=1, records=np.array([9])).uniform(0)[0] != alone.uniform(0)[0]
  assert ExampleRandom(seed=3, epoch=2, records=np.array([9])).uniform(0)[0] != alone.uniform(0)[0]
  values = ExampleRandom(seed=0, epoch=0, records=np.arange(20000)).integers(0, -1, 2)
  assert set(values.tolist()) == {-1, 0, 1}
  np.testing.assert_allclose(np.bincount(values + 1) / 20000, 1 / 3, atol=0.02)


def test_bad_max_translation_raises():
  with pytest.raises(ValueError, match="max_translation"):
    data.get_transform(ConfigDict({"name": "digits", "max_translation": 8}), train=True)


def test_unknown_dataset_name_lists_the_known_names():
  with pytest.raises(ValueError, match=r"unknown config.dataset.name 'mnist'.*'digits'"):
    data.get_source(ConfigDict({"name": "mnist", "data_dir": None}), "train")


def test_digits_batches_have_fixed_shapes_and_dtypes(tiny_config):
  pipeline = Pipeline(data.get_source(tiny_config, "train"), batch_size=8, seed=0, shuffle=True,
                      drop_remainder=True, transform=data.get_transform(tiny_config, train=True))
  batches = list(pipeline.epoch(0))
  assert pipeline.steps_per_epoch == len(batches) == 5
  for batch in batches:
    assert {key: (value.shape, value.dtype) for key, value in batch.items()} == {
        "image": ((8, 8, 8, 1), np.float32), "label": ((8,), np.int32), "mask": ((8,), np.bool_)}
    assert batch["mask"].all() and 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0


def test_no_tensorflow_is_imported(tiny_config):
  script = textwrap.dedent(f"""
      import sys
      from ml_collections import ConfigDict
      from train import data
      config = ConfigDict({tiny_config.to_dict()!r})
      config.data_dir = sys.argv[1]  # a fresh folder: prepares too
      pipeline = data.Pipeline(data.get_source(config, "test"), batch_size=5, seed=0, shuffle=True,
                               drop_remainder=True, transform=data.get_transform(config, train=True))
      assert len(list(pipeline.epoch(0))) == 2
      assert "tensorflow" not in sys.modules
  """)
  result = subprocess.run([sys.executable, "-c", script, tiny_config.data_dir + "_fresh"], cwd=REPO,
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stderr


# ---- the loader ------------------------------------------------------------------------------------

RECORDS = [{"id": np.int64(i)} for i in range(23)]


def tag(batch, random):
  """Keeps the record ids and draws one number per example: its augmentation randomness."""
  return {"id": batch["id"], "noise": random.uniform(0)}


def make(**overrides):
  kwargs = dict(batch_size=4, seed=0, shuffle=True, drop_remainder=True, transform=tag)
  return Pipeline(RECORDS, **{**kwargs, **overrides})


def real_ids(batches):
  return [int(i) for batch in batches for i in batch["id"][batch["mask"]]]


def assert_same_batches(batches, expected):
  assert len(batches) == len(expected)
  for batch, expected_batch in zip(batches, expected):
    assert batch.keys() == expected_batch.keys()
    for key in batch:
      np.testing.assert_array_equal(batch[key], expected_batch[key])


def test_epoch_order_is_fixed_by_seed_and_epoch():
  epoch_1 = list(make().epoch(1))
  assert_same_batches(list(make().epoch(1)), epoch_1)  # a new loader (a restarted run) agrees
  assert len(set(real_ids(epoch_1))) == 20  # 5 steps of 4 distinct records
  assert real_ids(make().epoch(2)) != real_ids(epoch_1)
  assert real_ids(make(seed=1).epoch(1)) != real_ids(epoch_1)


def test_resume_mid_epoch_sees_the_rest_of_the_epoch():
  full = list(make().epoch(3))
  assert_same_batches(list(make().epoch(3, start_step=2)), full[2:])
  assert list(make().epoch(3, start_step=make().steps_per_epoch)) == []


def test_process_shards_are_disjoint_cover_the_epoch_and_assemble_the_global_batch():
  single = list(make(batch_size=6, drop_remainder=False).epoch(0))
  shards = [make(batch_size=2, drop_remainder=False, process_index=p, process_count=3) for p in range(3)]
  per_process = [list(shard.epoch(0)) for shard in shards]
  assert {shard.steps_per_epoch for shard in shards} == {len(single)} == {4}
  ids = [set(real_ids(batches)) for batches in per_process]
  assert sum(map(len, ids)) == len(set.union(*ids)) == 23
  for step, global_batch in enumerate(single):
    assembled = {key: np.concatenate([batches[step][key] for batches in per_process]) for key in global_batch}
    assert_same_batches([assembled], [global_batch])


def test_without_drop_remainder_the_last_step_is_padded_and_masked():
  batches = list(make(batch_size=4, process_count=2, process_index=1, drop_remainder=False).epoch(0))
  assert len(batches) == 3 and all(batch["id"].shape == (4,) for batch in batches)
  # 23 records, 8 per step: process 1 holds positions 20..23 of the last step, 20..22 real
  np.testing.assert_array_equal(batches[-1]["mask"], [True, True, True, False])
  assert all(batch["mask"].all() for batch in batches[:-1])


def test_drop_remainder_drops_the_last_partial_global_batch():
  pipeline = make(batch_size=4, process_count=2)
  assert pipeline.steps_per_epoch == 2
  assert all(batch["mask"].all() for batch in pipeline.epoch(0))


def test_without_shuffle_records_come_in_source_order():
  assert real_ids(make(shuffle=False, drop_remainder=False).epoch(5)) == list(range(23))


def test_prefetch_and_worker_processes_do_not_change_the_batches():
  expected = list(make().epoch(4))
  assert_same_batches(list(make(prefetch=0).epoch(4)), expected)
  flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags; absl.app.run parses them in a run
  assert_same_batches([dict(batch) for batch in make(worker_count=1).epoch(4)], expected)


@pytest.mark.parametrize("overrides, message", [
    (dict(batch_size=0), "batch_size must be an integer >= 1"),
    (dict(seed=-1), "seed must be an integer >= 0"),
    (dict(process_index=2, process_count=2), "process_index must be < process_count=2"),
    (dict(batch_size=12, process_count=2), "exceeds the 23 records"),
])
def test_bad_pipeline_arguments_raise(overrides, message):
  with pytest.raises(ValueError, match=message):
    make(**overrides)


def test_start_step_past_the_epoch_raises():
  with pytest.raises(ValueError, match="start_step must be <= steps_per_epoch=5"):
    make().epoch(0, start_step=6)


def test_a_cached_pipeline_gives_the_same_batches():
  assert_same_batches(list(make(cache=True).epoch(4)), list(make().epoch(4)))
  assert_same_batches(list(make(cache=True, drop_remainder=False).epoch(0)),
                      list(make(drop_remainder=False).epoch(0)))
