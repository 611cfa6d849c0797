"""train.data.cifar: the CIFAR-10 / CIFAR-100 builders on tiny archives written in the official format (Python 2
pickles in a gzipped tar), the safe unpickler, and the two recipes' transforms."""
import io
import pickle
import struct
import tarfile

import numpy as np
import pytest
from ml_collections import ConfigDict

from train import data
from train.data import cifar
from train.data.pipeline import ExampleRandom

PER_BATCH = 4  # images per CIFAR-10 train batch file (5 files) and per test file


class Python2Pickler(pickle._Pickler):  # the pure-Python pickler: its dispatch table can be extended
  """Pickles as the official files were written (Python 2 cPickle, protocol 2, numpy 1): every string as a byte
  string, numpy's array constructor under its numpy 1 module name."""
  dispatch = dict(pickle._Pickler.dispatch)

  def save_bytes(self, obj):
    self.write((pickle.SHORT_BINSTRING + bytes([len(obj)]) if len(obj) < 256
                else pickle.BINSTRING + struct.pack("<i", len(obj))) + obj)
    self.memoize(obj)

  def save_str(self, obj):
    self.save_bytes(obj.encode("latin-1"))

  def save_global(self, obj, name=None):
    module = "numpy.core.multiarray" if obj is cifar._RECONSTRUCT else obj.__module__
    self.write(pickle.GLOBAL + f"{module}\n{name or obj.__name__}\n".encode())
    self.memoize(obj)

  dispatch[bytes], dispatch[str], dispatch[type] = save_bytes, save_str, save_global


def python2_pickle(obj) -> bytes:
  buffer = io.BytesIO()
  Python2Pickler(buffer, protocol=2).dump(obj)
  return buffer.getvalue()


def random_images(count: int, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


def batch_dict(images: np.ndarray, **labels) -> dict:
  """An official batch: b'data' rows = the red, green, blue planes, each row-major."""
  return {b"batch_label": b"tiny batch", b"data": images.transpose(0, 3, 1, 2).reshape(len(images), 3072),
          b"filenames": [f"image_{n}.png".encode() for n in range(len(images))],
          **{key.encode(): [int(label) for label in values] for key, values in labels.items()}}


def write_tar_gz(path, files: dict[str, bytes]) -> None:
  with tarfile.open(path, "w:gz") as tar:
    for name, content in files.items():
      info = tarfile.TarInfo(name)
      info.size = len(content)
      tar.addfile(info, io.BytesIO(content))


def write_cifar10(manual_dir, train_files=cifar.CIFAR10.splits["train"]) -> dict[str, dict[str, np.ndarray]]:
  """cifar-10-python.tar.gz with ``train_files`` and test_batch; returns each split's images and labels."""
  arrays = {"train": {"image": random_images(PER_BATCH * len(train_files), 0)},
            "test": {"image": random_images(PER_BATCH, 1)}}
  for split_arrays in arrays.values():
    split_arrays["label"] = np.arange(len(split_arrays["image"])) * 7 % 10
  folder, train = cifar.CIFAR10.folder, arrays["train"]
  files = {f"{folder}/batches.meta": python2_pickle({b"label_names": [b"airplane"] * 10, b"num_vis": 3072}),
           f"{folder}/test_batch": python2_pickle(batch_dict(arrays["test"]["image"], labels=arrays["test"]["label"]))}
  for n, name in enumerate(train_files):
    part = slice(n * PER_BATCH, (n + 1) * PER_BATCH)
    files[f"{folder}/{name}"] = python2_pickle(batch_dict(train["image"][part], labels=train["label"][part]))
  write_tar_gz(manual_dir / cifar.CIFAR10.archive, files)
  return arrays


def write_cifar100(manual_dir) -> dict[str, dict[str, np.ndarray]]:
  arrays = {}
  for split, count in (("train", 6), ("test", 3)):
    fine = np.arange(count) * 37 % 100
    arrays[split] = {"image": random_images(count, count), "label": fine, "coarse_label": fine // 5}
  folder = cifar.CIFAR100.folder
  write_tar_gz(manual_dir / cifar.CIFAR100.archive, {
      f"{folder}/{split}": python2_pickle(batch_dict(images["image"], fine_labels=images["label"],
                                                     coarse_labels=images["coarse_label"]))
      for split, images in arrays.items()})
  return arrays


def dataset_config(tmp_path, name: str) -> ConfigDict:
  return ConfigDict({"name": name, "data_dir": str(tmp_path / "tfds"), "manual_dir": str(tmp_path)})


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory):
  manual_dir = tmp_path_factory.mktemp("manual")
  return dataset_config(manual_dir, "cifar10"), write_cifar10(manual_dir)


# ---- the builders ------------------------------------------------------------------------------------------------

def test_cifar10_splits_hold_the_archive_images_in_order_with_their_labels(cifar10):
  config, arrays = cifar10
  for split, expected in arrays.items():
    source = data.get_source(config, split)
    examples = sorted(source, key=lambda example: example["id"])
    assert [example["id"].decode() for example in examples] == [f"{split}_{n:05d}" for n in range(len(examples))]
    np.testing.assert_array_equal(np.stack([example["image"] for example in examples]), expected["image"])
    np.testing.assert_array_equal([example["label"] for example in examples], expected["label"])
  assert source.dataset_info.features["label"].num_classes == 10
  assert source.dataset_info.features["image"].shape == (32, 32, 3)


def test_cifar100_has_fine_and_coarse_labels(tmp_path):
  arrays = write_cifar100(tmp_path)
  source = data.get_source(dataset_config(tmp_path, "cifar100"), "train")
  examples = sorted(source, key=lambda example: example["id"])
  np.testing.assert_array_equal(np.stack([example["image"] for example in examples]), arrays["train"]["image"])
  for feature, num_classes in (("label", 100), ("coarse_label", 20)):
    np.testing.assert_array_equal([example[feature] for example in examples], arrays["train"][feature])
    assert source.dataset_info.features[feature].num_classes == num_classes
  assert len(data.get_source(dataset_config(tmp_path, "cifar100"), "test")) == 3


def test_builders_do_not_take_tfds_own_names():
  assert (cifar.Cifar10.name, cifar.Cifar100.name) == ("cifar10_pickle", "cifar100_pickle")


def test_pickles_written_by_numpy_2_load_too():
  batch = {b"data": np.arange(6, dtype=np.uint8).reshape(2, 3), b"labels": [0, 1]}
  loaded = cifar.load_pickle(pickle.dumps(batch))
  np.testing.assert_array_equal(loaded[b"data"], batch[b"data"])


class _RunsCode:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (open, (self.marker, "w"))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
  marker = tmp_path / "created_by_the_pickle"
  with pytest.raises(pickle.UnpicklingError, match="open is not allowed"):
    cifar.load_pickle(pickle.dumps({b"data": _RunsCode(str(marker))}))
  assert not marker.exists()
  write_tar_gz(tmp_path / cifar.CIFAR10.archive, {f"{cifar.CIFAR10.folder}/test_batch": pickle.dumps(
      _RunsCode(str(marker)))})
  with pytest.raises(ValueError, match="test_batch is no CIFAR pickle"):
    cifar.read_archive(tmp_path / cifar.CIFAR10.archive, cifar.CIFAR10)
  assert not marker.exists()


def test_missing_archive_and_missing_member_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match=cifar.CIFAR10.archive):
    data.get_source(dataset_config(tmp_path, "cifar10"), "train")
  write_cifar10(tmp_path, train_files=("data_batch_1", "data_batch_2", "data_batch_4", "data_batch_5"))
  with pytest.raises(ValueError, match="no member cifar-10-batches-py/data_batch_3"):
    cifar.read_archive(tmp_path / cifar.CIFAR10.archive, cifar.CIFAR10)


def test_truncated_archive_is_named(tmp_path):
  write_cifar10(tmp_path)
  path = tmp_path / cifar.CIFAR10.archive
  path.write_bytes(path.read_bytes()[:2000])
  with pytest.raises(ValueError, match=f"{cifar.CIFAR10.archive}: not a readable tar"):
    cifar.read_archive(path, cifar.CIFAR10)


@pytest.mark.parametrize("batch, message", [
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, r"b'data' must be a uint8 array \(N, 3072\)"),
    ({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, r"b'data' must be a uint8 array"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, r"b'labels' must hold 2 ints in 0..9"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, r"b'labels' must hold 2 ints"),
    ({b"data": np.zeros((2, 3072), np.uint8)}, r"b'labels' must be a list of ints"),
])
def test_malformed_batches_are_named(batch, message):
  with pytest.raises(ValueError, match=f"data_batch_1: {message}"):
    cifar.images_and_labels(batch, cifar.CIFAR10, "data_batch_1")


# ---- transforms --------------------------------------------------------------------------------------------------

def image_batch(count: int = 8) -> dict:
  return {"image": random_images(count, 2), "label": np.arange(count) % 10, "id": np.array([b"x"] * count)}


@pytest.mark.parametrize("normalization, mean, std", [("cifar", (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
                                                      ("imagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
def test_evaluation_only_normalises_whatever_the_augmentation(normalization, mean, std):
  batch = image_batch()
  config = ConfigDict({"name": "cifar10", "augment": "convmixer", "normalization": normalization,
                       "mixup": {"mixup_alpha": 0.5, "cutmix_alpha": 0.5, "prob": 1.0, "switch_prob": 0.5,
                                 "label_smoothing": 0.1}})
  out = cifar.make_cifar10_transform(config, train=False)(batch, ExampleRandom(0, 0, np.arange(8)))
  assert set(out) == {"image", "label"}
  np.testing.assert_allclose(out["image"], (batch["image"] / 255 - np.array(mean)) / np.array(std),
                             atol=1e-6)  # float32 rounding
  assert out["label"].dtype == np.int32


def shifted(image: np.ndarray, down: int, right: int) -> np.ndarray:
  """``image`` moved down and right by whole pixels, zeros coming in: a crop of the image padded by 4."""
  padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
  return padded[4 - down:36 - down, 4 - right:36 - right]


def test_crop_and_flip_shifts_by_at_most_4_pixels_with_zeros_then_maybe_mirrors():
  images = random_images(64, 3) | 1  # no zero pixel: zeros in the output are padding
  out = cifar.crop_and_flip(images, ExampleRandom(0, 0, np.arange(64)))
  flips = []
  for image, moved in zip(images, out):
    matches = [(down, right, flip) for down in range(-4, 5) for right in range(-4, 5) for flip in (False, True)
               if np.array_equal(moved, shifted(image, down, right)[:, ::-1] if flip else shifted(image, down, right))]
    assert len(matches) == 1
    flips.append(matches[0][2])
  assert 16 < sum(flips) < 48


def test_resnet_augmentation_is_a_function_of_the_example_not_its_batch():
  config = ConfigDict({"name": "cifar10", "augment": "resnet"})
  transform, batch = cifar.make_cifar10_transform(config, train=True), image_batch()
  whole = transform(batch, ExampleRandom(0, 3, np.arange(8)))
  half = transform({key: value[4:] for key, value in batch.items()}, ExampleRandom(0, 3, np.arange(4, 8)))
  np.testing.assert_array_equal(whole["image"][4:], half["image"])
  other_epoch = transform(batch, ExampleRandom(0, 4, np.arange(8)))
  assert not np.array_equal(whole["image"], other_epoch["image"])


def test_convmixer_recipe_gives_normalised_images_and_soft_targets():
  config = ConfigDict({"name": "cifar100", "augment": "convmixer", "normalization": "imagenet",
                       "mixup": {"mixup_alpha": 0.5, "cutmix_alpha": 0.5, "prob": 1.0, "switch_prob": 0.5,
                                 "label_smoothing": 0.1}})
  batch = image_batch()
  out = cifar.make_cifar100_transform(config, train=True)(batch, ExampleRandom(0, 0, np.arange(8)))
  assert out["image"].shape == (8, 32, 32, 3) and out["image"].dtype == np.float32
  assert out["label"].shape == (8, 100) and out["label"].dtype == np.float32
  np.testing.assert_allclose(out["label"].sum(axis=1), 1.0, rtol=1e-6)
  assert out["label"].min() >= 0.1 / 100 * (1 - 1e-6)  # smoothing 0.1 spread over the 100 classes


def test_without_augmentation_training_batches_are_only_normalised():
  batch, random = image_batch(), ExampleRandom(0, 0, np.arange(8))
  config = ConfigDict({"name": "cifar10"})
  train, evaluation = (cifar.make_cifar10_transform(config, train=train)(batch, random) for train in (True, False))
  np.testing.assert_array_equal(train["image"], evaluation["image"])


@pytest.mark.parametrize("field, value", [("augment", "autoaugment"), ("normalization", "mnist"),
                                          ("random_erasing", 1.5), ("randaugment_ops", 2.0)])
def test_bad_transform_fields_are_named(field, value):
  with pytest.raises(ValueError, match=f"config.dataset.{field}"):
    cifar.make_cifar10_transform(ConfigDict({"name": "cifar10", field: value}), train=True)
