"""CIFAR-10 and CIFAR-100 from the official python-pickle archives as tfds builders, and the kernel-sharing
recipes' transforms (spec kernel_sharing.md section 4).

Source files, in the manual directory as www.cs.toronto.edu/~kriz/cifar.html distributes them (nothing is
downloaded), read straight from the gzipped tar (nothing is unpacked to disk):

* ``cifar-10-python.tar.gz``: ``cifar-10-batches-py/data_batch_1`` .. ``data_batch_5`` (train, in this order) and
  ``test_batch``, each a pickled dict with b'data' (N, 3072) uint8 and b'labels' (N ints in 0..9);
* ``cifar-100-python.tar.gz``: ``cifar-100-python/train`` and ``test``, dicts with b'data', b'fine_labels'
  (0..99) and b'coarse_labels' (0..19).

A row of b'data' holds the red, then green, then blue 32x32 plane, each row-major. The pickles come from Python 2
and hold numpy arrays: they are read with ``encoding='bytes'`` by an unpickler that can build nothing but numpy
arrays, lists, dicts, strings and numbers, so a tampered file cannot run code. The ``batches.meta`` / ``meta``
files (class names) are not read: labels are the files' integers.

Splits: 'train' (50,000 images) and 'test' (10,000). Features: ``image`` (32, 32, 3) uint8 RGB (a ``Tensor``: tfds
``Image`` decoding needs TensorFlow), ``label`` ``ClassLabel(10)`` / ``ClassLabel(100)`` (the fine label), for
CIFAR-100 ``coarse_label`` ``ClassLabel(20)``, and ``id`` ``Text``, '<split>_<index>' in the archive's order (tfds'
own cifar builders' ids). The builders are named 'cifar10_pickle' and 'cifar100_pickle' so that their folders in
``data_dir`` never collide with tfds' 'cifar10' and 'cifar100'.

Transforms (``make_transform``): ``config.dataset`` fields read (defaults in brackets):

* ``augment`` ('none'), the training augmentation:
  - 'resnet' (the SE-ResNet recipe): random crop 32 of the image zero-padded by 4 pixels, horizontal flip;
  - 'convmixer' (the ConvMixer recipe, timm's): the same crop and flip, RandAugment (``randaugment_ops`` 2,
    ``randaugment_magnitude`` 9, ``randaugment_magnitude_std`` 0.5: 'rand-m9-mstd0.5-inc1', filled with the ImageNet
    mean), normalisation, random erasing (``random_erasing`` 0.25, 'pixel' mode);
  - 'none': normalisation only;
* ``normalization`` ('cifar'): the mean / std of the pixels / 255, 'cifar' (the SE-ResNet recipe's) or 'imagenet'
  (the ConvMixer recipe's), for training and evaluation;
* ``mixup`` (None): a ConfigDict of ``augment.MIXUP_FIELDS`` (ConvMixer: mixup_alpha 0.5, cutmix_alpha 0.5, prob 1,
  switch_prob 0.5, label_smoothing 0.1), applied last to training batches (even batch sizes); 'label' then holds
  soft targets (B, num_classes) float32.

Evaluation batches are only normalised.
"""
from __future__ import annotations

import dataclasses
import io
import pickle
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from ml_collections import ConfigDict
from PIL import Image

from train.data import augment, digits, imagenet, pipeline

IMAGE_SHAPE = (32, 32, 3)
CROP_PADDING = 4  # pixels of zeros around the image before the random 32 x 32 crop
NORMALIZATIONS = {  # name -> (mean, std) of the RGB pixels / 255
    "cifar": (np.array([0.4914, 0.4822, 0.4465], np.float32), np.array([0.2023, 0.1994, 0.2010], np.float32)),
    "imagenet": (imagenet.MEAN, imagenet.STD),
}
AUGMENTATIONS = ("none", "resnet", "convmixer")
# ExampleRandom draws of the train transform; each stage has its own, so that changing one leaves the others alone.
SHIFT_DOWN_DRAW, SHIFT_RIGHT_DRAW, FLIP_DRAW, RAND_AUGMENT_DRAW, ERASING_DRAW, MIXUP_DRAW = range(6)


@dataclasses.dataclass(frozen=True)
class ArchiveFormat:
  """Where an official archive keeps its data.

  Attributes:
    archive: the file name in the manual directory.
    folder: the folder inside the tar holding the pickles.
    splits: split -> its pickles in ``folder``, in order.
    labels: feature -> (key of the pickled dict, number of classes); 'label' first.
  """
  archive: str
  folder: str
  splits: dict[str, tuple[str, ...]]
  labels: dict[str, tuple[bytes, int]]


CIFAR10 = ArchiveFormat(
    archive="cifar-10-python.tar.gz", folder="cifar-10-batches-py",
    splits={"train": tuple(f"data_batch_{n}" for n in range(1, 6)), "test": ("test_batch",)},
    labels={"label": (b"labels", 10)})
CIFAR100 = ArchiveFormat(
    archive="cifar-100-python.tar.gz", folder="cifar-100-python",
    splits={"train": ("train",), "test": ("test",)},
    labels={"label": (b"fine_labels", 100), "coarse_label": (b"coarse_labels", 20)})

# ---- reading the archives ----------------------------------------------------------------------------------------

_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # numpy's array-unpickling function (multiarray._reconstruct)
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # the name in pickles written by numpy 1
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # and by numpy 2
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArrayUnpickler(pickle.Unpickler):
  """An unpickler that builds numpy arrays and Python's plain containers and scalars, nothing else."""

  def find_class(self, module: str, name: str):
    if (module, name) not in _ALLOWED_GLOBALS:
      raise pickle.UnpicklingError(f"{module}.{name} is not allowed: a CIFAR pickle holds only numpy arrays, "
                                   "lists, dicts, strings and numbers")
    return _ALLOWED_GLOBALS[(module, name)]


def load_pickle(content: bytes):
  """A CIFAR pickle (Python 2 strings read as bytes) unpickled by ``_ArrayUnpickler``."""
  return _ArrayUnpickler(io.BytesIO(content), encoding="bytes").load()


def read_archive(path: epath.Path, archive_format: ArchiveFormat) -> dict[str, dict]:
  """The unpickled dicts of every split's pickles, by file name, in one pass over the gzipped tar at ``path``.

  FileNotFoundError when ``path`` is missing; ValueError naming it for an unreadable tar, a missing pickle, or a
  pickle that is not a dict or holds anything but numpy arrays and plain Python values.
  """
  wanted = {f"{archive_format.folder}/{name}" for names in archive_format.splits.values() for name in names}
  pickles = {}
  with imagenet.read_tar(path, "r|gz", f"the official {archive_format.archive}") as tar:
    for member in tar:
      if member.isfile() and member.name in wanted:
        try:
          pickles[member.name.rsplit("/", 1)[-1]] = load_pickle(tar.extractfile(member).read())
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
          raise ValueError(f"{path}: {member.name} is no CIFAR pickle ({error})") from error
  missing = sorted(wanted - {f"{archive_format.folder}/{name}" for name in pickles})
  if missing:
    raise ValueError(f"{path}: no member {', '.join(missing)}; expected the official {archive_format.archive}")
  not_dicts = [name for name, content in pickles.items() if not isinstance(content, dict)]
  if not_dicts:
    raise ValueError(f"{path}: {not_dicts} must each hold a pickled dict")
  return pickles


def images_and_labels(batch: dict, archive_format: ArchiveFormat, where: str) -> dict[str, np.ndarray]:
  """One unpickled batch as 'image' (N, 32, 32, 3) uint8 RGB and each label feature (N,) int64; ValueError naming
  ``where`` (the file) and the field for anything else."""
  data = batch.get(b"data")
  if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
    raise ValueError(f"{where}: b'data' must be a uint8 array (N, 3072), got "
                     f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}")
  height, width, channels = IMAGE_SHAPE
  arrays = {"image": data.reshape(-1, channels, height, width).transpose(0, 2, 3, 1)}
  for feature, (key, num_classes) in archive_format.labels.items():
    try:
      labels = np.asarray(batch.get(key), np.int64)
    except (TypeError, ValueError) as error:
      raise ValueError(f"{where}: {key!r} must be a list of ints ({error})") from error
    if labels.shape != (len(data),) or labels.min(initial=0) < 0 or labels.max(initial=0) >= num_classes:
      raise ValueError(f"{where}: {key!r} must hold {len(data)} ints in 0..{num_classes - 1}")
    arrays[feature] = labels
  return arrays


class _CifarPickle(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A CIFAR archive of ``FORMAT`` from the manual directory: 'train' and 'test' (module docstring)."""

  FORMAT: ArchiveFormat
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "The official python-pickle archive; ids in the archive's order."}

  def _info(self) -> tfds.core.DatasetInfo:
    labels = {feature: tfds.features.ClassLabel(num_classes=num_classes)
              for feature, (_, num_classes) in self.FORMAT.labels.items()}
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "image": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8),
            **labels,
        }),
        supervised_keys=("image", "label"),
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
    )

  def _split_generators(self, dl_manager):
    path = dl_manager.manual_dir / self.FORMAT.archive
    pickles = read_archive(path, self.FORMAT)
    return {split: self._generate_examples(split, [images_and_labels(pickles[name], self.FORMAT, f"{path}: {name}")
                                                   for name in names])
            for split, names in self.FORMAT.splits.items()}

  def _generate_examples(self, split: str, batches: list[dict[str, np.ndarray]]) -> Iterator[tuple[str, dict]]:
    arrays = {feature: np.concatenate([batch[feature] for batch in batches]) for feature in batches[0]}
    for index in range(len(arrays["image"])):
      example_id = f"{split}_{index:05d}"
      yield example_id, {"id": example_id, **{feature: values[index] for feature, values in arrays.items()}}


class Cifar10(_CifarPickle):
  """CIFAR-10 from ``cifar-10-python.tar.gz``: 10 classes."""

  name = "cifar10_pickle"
  FORMAT = CIFAR10
  MANUAL_DOWNLOAD_INSTRUCTIONS = (f"Put {CIFAR10.archive} (www.cs.toronto.edu/~kriz/cifar.html) in the manual "
                                  "directory.")


class Cifar100(_CifarPickle):
  """CIFAR-100 from ``cifar-100-python.tar.gz``: 100 fine classes ('label'), 20 coarse ones ('coarse_label')."""

  name = "cifar100_pickle"
  FORMAT = CIFAR100
  MANUAL_DOWNLOAD_INSTRUCTIONS = (f"Put {CIFAR100.archive} (www.cs.toronto.edu/~kriz/cifar.html) in the manual "
                                  "directory.")


# ---- transforms --------------------------------------------------------------------------------------------------

def crop_and_flip(images: np.ndarray, random: pipeline.ExampleRandom) -> np.ndarray:
  """torchvision's RandomCrop(32, padding=4) then RandomHorizontalFlip() on a uint8 batch (B, 32, 32, 3): each image
  moved by a uniform whole-pixel shift in -4..4 along each axis (zeros come in), then mirrored with probability
  0.5."""
  span = (-CROP_PADDING, CROP_PADDING + 1)
  shifted = digits.translate(images, random.integers(SHIFT_DOWN_DRAW, *span),
                             random.integers(SHIFT_RIGHT_DRAW, *span))
  flip = random.uniform(FLIP_DRAW) < 0.5
  return np.where(flip[:, None, None, None], shifted[:, :, ::-1], shifted)


def _choice(dataset_config: ConfigDict, field: str, default: str, options) -> str:
  value = dataset_config.get(field, default)
  if value not in options:
    raise ValueError(f"config.dataset.{field} must be one of {tuple(options)}, got {value!r}")
  return value


def make_transform(dataset_config: ConfigDict, *, train: bool, num_classes: int) -> pipeline.Transform:
  """The batch transform: ``image`` uint8 (B, 32, 32, 3) and ``label`` (B,) in; ``image`` float32 (B, 32, 32, 3)
  NHWC normalised and ``label`` int32 (B,) (float32 (B, num_classes) soft targets with ``mixup``) out; other
  features are dropped. Fields of ``dataset_config``: see the module docstring."""
  augmentation = _choice(dataset_config, "augment", "none", AUGMENTATIONS)
  mean, std = NORMALIZATIONS[_choice(dataset_config, "normalization", "cifar", NORMALIZATIONS)]
  recipe = augment.RecipeAugmentation.from_config(dataset_config, num_classes=num_classes, mixup_draw=MIXUP_DRAW)

  def normalize(images: np.ndarray) -> np.ndarray:
    return (images.astype(np.float32) / 255.0 - mean) / std

  def rand_augmented(images: np.ndarray, random: pipeline.ExampleRandom) -> np.ndarray:
    rngs = augment.example_generators(random, RAND_AUGMENT_DRAW)
    return np.stack([np.asarray(recipe.rand_augment(Image.fromarray(image), rng, fill=imagenet.FILL))
                     for image, rng in zip(images, rngs)])

  def train_transform(batch: dict, random: pipeline.ExampleRandom) -> dict:
    images = batch["image"]
    if augmentation != "none":
      images = crop_and_flip(images, random)
    if augmentation == "convmixer" and recipe.num_ops:
      images = rand_augmented(images, random)
    images = normalize(images)
    if augmentation == "convmixer":
      images = recipe.erase(images, random, ERASING_DRAW)
    return recipe.mixed({"image": images, "label": batch["label"].astype(np.int32)}, random)

  def eval_transform(batch: dict, random: pipeline.ExampleRandom) -> dict:
    del random
    return {"image": normalize(batch["image"]), "label": batch["label"].astype(np.int32)}

  return train_transform if train else eval_transform


def make_cifar10_transform(dataset_config: ConfigDict, *, train: bool) -> pipeline.Transform:
  """``make_transform`` for CIFAR-10's 10 classes."""
  return make_transform(dataset_config, train=train, num_classes=CIFAR10.labels["label"][1])


def make_cifar100_transform(dataset_config: ConfigDict, *, train: bool) -> pipeline.Transform:
  """``make_transform`` for CIFAR-100's 100 fine classes."""
  return make_transform(dataset_config, train=train, num_classes=CIFAR100.labels["label"][1])
