"""ImageNet-1k (ILSVRC2012) from the official archives as a tfds builder, and the ConvNeXt recipe's transforms.

Source files, in the manual directory as image-net.org distributes them (nothing is downloaded):

* ``ILSVRC2012_img_train.tar``: a tar of 1,000 tars, one per class, ``<wnid>.tar``, each holding JPEGs;
* ``ILSVRC2012_img_val.tar``: the 50,000 JPEGs ``ILSVRC2012_val_00000001.JPEG`` .. ``_00050000.JPEG``, flat;
* ``ILSVRC2012_devkit_t12.tar.gz``: ``data/meta.mat`` (the synsets: ``ILSVRC2012_ID``, ``WNID``, ``num_children``;
  the classes are the leaves, ``num_children == 0``) and ``data/ILSVRC2012_validation_ground_truth.txt`` (line n:
  the ILSVRC2012_ID of validation image n).

Classes: the sorted WNIDs of the devkit's leaf synsets (n01440764 = 0 .. n15075141 = 999), the order of tfds',
timm's and torchvision's ImageNet. Splits: 'train' (1,281,167 images) and 'validation' (50,000).

Features: ``image``, the file's bytes as stored (a scalar object ``Tensor``: tfds' ``Image`` feature decodes to
arrays of varying shapes, which cannot be batched before the crop), ``label`` ``ClassLabel(1000)``, ``file_name``
``Text``. The transform decodes with Pillow and converts to RGB, which also reads the few training files that are
CMYK JPEGs or PNGs by another name (tfds' own builder re-encodes them with TensorFlow). The builder is named
'imagenet2012_jpeg' so that its folder in ``data_dir`` never collides with tfds' 'imagenet2012'.

Transforms (``make_transform``), timm's ImageNet pipeline with the ConvNeXt recipe's settings:

* train: RandomResizedCrop(image_size, scale (0.08, 1), ratio (3/4, 4/3), bicubic), horizontal flip (p 0.5),
  RandAugment ``rand-m9-mstd0.5-inc1``, normalisation by the ImageNet mean / std, random erasing (p 0.25, 'pixel'),
  then mixup / cutmix with label smoothing when ``mixup`` is set (``augment``);
* eval: bicubic resize of the shorter side to int(image_size / crop_pct), centre crop image_size, normalisation.

``config.dataset`` fields read by ``make_transform`` (defaults: the recipe's):

* ``image_size`` (224), ``crop_pct`` (0.875);
* ``randaugment_ops`` (2; 0: no RandAugment), ``randaugment_magnitude`` (9), ``randaugment_magnitude_std`` (0.5);
* ``random_erasing`` (0.25; 0: none);
* ``mixup``: None / absent, or a ConfigDict of ``augment.MIXUP_FIELDS`` (recipe: mixup_alpha 0.8, cutmix_alpha 1.0,
  prob 1.0, switch_prob 0.5, label_smoothing 0.1); then 'label' holds soft targets (B, 1000) float32.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import tarfile
import zlib
from typing import Iterator

import numpy as np
import scipy.io
import tensorflow_datasets as tfds
from etils import epath
from ml_collections import ConfigDict
from PIL import Image

from train.data import augment, pipeline

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
DEVKIT_META = "data/meta.mat"
DEVKIT_VAL_LABELS = "data/ILSVRC2012_validation_ground_truth.txt"
VAL_FILE_PATTERN = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG")
NUM_CLASSES = 1000

MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # RGB, of pixels / 255
STD = np.array([0.229, 0.224, 0.225], np.float32)
FILL = tuple(int(round(255 * value)) for value in MEAN)  # RandAugment's fill colour: (124, 116, 104)
# ExampleRandom draws of the train transform; each stage has its own, so that changing one leaves the others alone.
CROP_DRAW, RAND_AUGMENT_DRAW, ERASING_DRAW, MIXUP_DRAW = 0, 1, 2, 3


@contextlib.contextmanager
def read_tar(path: epath.Path, mode: str, expected: str) -> Iterator[tarfile.TarFile]:
  """``path`` opened as a tar for the with-block; FileNotFoundError naming it when missing, ValueError naming it and
  what was ``expected`` when it is no readable tar (at opening or, truncated or corrupt, while read)."""
  if not path.exists():
    raise FileNotFoundError(f"{path}: missing; expected {expected}")
  try:
    with tarfile.open(os.fspath(path), mode) as tar:
      yield tar
  except (tarfile.TarError, EOFError, zlib.error) as error:
    raise ValueError(f"{path}: not a readable tar archive ({error}); expected {expected}") from error


def _member_bytes(tar: tarfile.TarFile, path: epath.Path, suffix: str) -> bytes:
  """The content of the member of ``tar`` (read from ``path``) whose name ends in ``suffix``."""
  for member in tar.getmembers():
    if member.isfile() and member.name.endswith(suffix):
      return tar.extractfile(member).read()
  raise ValueError(f"{path}: no member {suffix}; expected the ILSVRC2012 devkit")


def read_devkit(path: epath.Path) -> tuple[list[str], list[str]]:
  """The classes (sorted leaf WNIDs) and the WNID of each validation image (index n - 1 for image n)."""
  with read_tar(path, "r:gz", "the ILSVRC2012 devkit (ILSVRC2012_devkit_t12.tar.gz)") as tar:
    meta, ground_truth = _member_bytes(tar, path, DEVKIT_META), _member_bytes(tar, path, DEVKIT_VAL_LABELS)
  try:
    synsets = scipy.io.loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"]
    leaves = np.atleast_1d(synsets)[np.atleast_1d(synsets["num_children"]).astype(int) == 0]
    wnid_of_id = {int(synset_id): str(wnid) for synset_id, wnid in zip(leaves["ILSVRC2012_ID"], leaves["WNID"])}
  except (scipy.io.matlab.MatReadError, ValueError, KeyError, TypeError) as error:
    raise ValueError(f"{path}: {DEVKIT_META} is not the devkit's synsets table ({error!r})") from error
  if not 0 < len(wnid_of_id) <= NUM_CLASSES:
    raise ValueError(f"{path}: expected 1..{NUM_CLASSES} leaf synsets in {DEVKIT_META}, got {len(wnid_of_id)}")
  ids = ground_truth.decode().split()
  unknown = [synset_id for synset_id in ids if not synset_id.isdigit() or int(synset_id) not in wnid_of_id]
  if unknown:
    raise ValueError(f"{path}: {DEVKIT_VAL_LABELS} must hold one leaf ILSVRC2012_ID a line, got {unknown[:3]}")
  return sorted(wnid_of_id.values()), [wnid_of_id[int(synset_id)] for synset_id in ids]


def _files(tar: tarfile.TarFile) -> Iterator[tuple[str, bytes]]:
  """(file name, bytes) of the files of a tar read as a stream."""
  for member in tar:
    if member.isfile():
      yield member.name.rsplit("/", 1)[-1], tar.extractfile(member).read()


def train_examples(path: epath.Path, classes: list[str]) -> Iterator[tuple[str, dict]]:
  """(key, example) of the train tar of per-class tars; ValueError for a member that is no ``<class wnid>.tar``."""
  label_of = {wnid: label for label, wnid in enumerate(classes)}
  with read_tar(path, "r|", "the ILSVRC2012 train tar of per-class tars") as outer:
    for member in outer:
      wnid = member.name.rsplit("/", 1)[-1].removesuffix(".tar")
      if not member.isfile() or wnid not in label_of:
        raise ValueError(f"{path}: member {member.name!r} is not <wnid>.tar of a devkit class")
      with tarfile.open(fileobj=outer.extractfile(member), mode="r|") as class_tar:
        for file_name, encoded in _files(class_tar):
          yield file_name, {"image": encoded, "label": label_of[wnid], "file_name": file_name}


def validation_examples(path: epath.Path, classes: list[str], wnids: list[str]) -> Iterator[tuple[str, dict]]:
  """(key, example) of the flat validation tar; image n gets the class of ``wnids[n - 1]``."""
  label_of = {wnid: label for label, wnid in enumerate(classes)}
  with read_tar(path, "r|", "the ILSVRC2012 validation tar of JPEGs") as tar:
    for file_name, encoded in _files(tar):
      match = VAL_FILE_PATTERN.fullmatch(file_name)
      if match is None or not 0 < int(match[1]) <= len(wnids):
        raise ValueError(f"{path}: member {file_name!r} is not ILSVRC2012_val_<n>.JPEG with n in 1..{len(wnids)} "
                         "(the devkit's ground truth)")
      yield file_name, {"image": encoded, "label": label_of[wnids[int(match[1]) - 1]], "file_name": file_name}


class Imagenet2012(tfds.core.GeneratorBasedBuilder):
  """ILSVRC2012 from the official archives: 'train' and 'validation', encoded images (module docstring)."""

  name = "imagenet2012_jpeg"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Encoded files as stored, labels by sorted WNID, validation labels from the devkit."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (f"Put {TRAIN_TAR}, {VAL_TAR} and {DEVKIT} from https://image-net.org (ILSVRC2012) "
                                  "in the manual directory.")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(), dtype=np.object_),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage="https://image-net.org/challenges/LSVRC/2012/",
    )

  def _split_generators(self, dl_manager):
    root = dl_manager.manual_dir
    missing = [str(root / name) for name in (TRAIN_TAR, VAL_TAR, DEVKIT) if not (root / name).exists()]
    if missing:
      raise FileNotFoundError(f"missing ILSVRC2012 files {missing}; {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    classes, validation_wnids = read_devkit(root / DEVKIT)
    return {"train": self._generate_examples(train_examples(root / TRAIN_TAR, classes)),
            "validation": self._generate_examples(validation_examples(root / VAL_TAR, classes, validation_wnids))}

  def _generate_examples(self, examples):
    yield from examples


# ---- transforms --------------------------------------------------------------------------------------------------

def decode(encoded: bytes) -> Image.Image:
  """An encoded image file (JPEG, or any format Pillow reads) as an RGB image."""
  with Image.open(io.BytesIO(encoded)) as image:
    return image.convert("RGB")


def resize_center_crop(image: Image.Image, size: int, crop_pct: float) -> Image.Image:
  """torchvision's Resize(int(size / crop_pct), bicubic) of the shorter side (the longer one truncated to an int)
  then CenterCrop(size) (offsets rounded)."""
  width, height = image.size
  short = int(size / crop_pct)
  scaled = ((short, int(short * height / width)) if width <= height else (int(short * width / height), short))
  left, top = int(round((scaled[0] - size) / 2)), int(round((scaled[1] - size) / 2))
  return image.resize(scaled, augment.RESAMPLE).crop((left, top, left + size, top + size))


def normalize(images: np.ndarray) -> np.ndarray:
  """uint8 (B, H, W, 3) RGB -> float32 (pixels / 255 - MEAN) / STD."""
  return (images.astype(np.float32) / 255.0 - MEAN) / STD


def make_transform(dataset_config: ConfigDict, *, train: bool) -> pipeline.Transform:
  """The batch transform: encoded ``image`` (B,) and ``label`` (B,) in; ``image`` float32 (B, S, S, 3) NHWC
  normalised and ``label`` int32 (B,) (or float32 (B, 1000) soft targets with ``mixup``) out, S = image_size.
  Fields of ``dataset_config``: see the module docstring."""
  image_size = pipeline.config_number(dataset_config, "image_size", 224, 1, 4096, integer=True)
  crop_pct = pipeline.config_number(dataset_config, "crop_pct", 0.875, 0.01, 1.0)
  recipe = augment.RecipeAugmentation.from_config(dataset_config, num_classes=NUM_CLASSES, mixup_draw=MIXUP_DRAW)

  def augmented(encoded: bytes, crop_rng: np.random.Generator, rand_augment_rng: np.random.Generator) -> np.ndarray:
    image = augment.random_resized_crop(decode(encoded), crop_rng, image_size)
    if crop_rng.random() < 0.5:
      image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(recipe.rand_augment(image, rand_augment_rng, fill=FILL))

  def train_transform(batch: dict, random: pipeline.ExampleRandom) -> dict:
    crop_rngs = augment.example_generators(random, CROP_DRAW)
    rand_augment_rngs = augment.example_generators(random, RAND_AUGMENT_DRAW)
    images = normalize(np.stack([augmented(*args) for args in zip(batch["image"], crop_rngs, rand_augment_rngs)]))
    images = recipe.erase(images, random, ERASING_DRAW)
    return recipe.mixed({"image": images, "label": batch["label"].astype(np.int32)}, random)

  def eval_transform(batch: dict, random: pipeline.ExampleRandom) -> dict:
    del random
    images = np.stack([np.asarray(resize_center_crop(decode(encoded), image_size, crop_pct))
                       for encoded in batch["image"]])
    return {"image": normalize(images), "label": batch["label"].astype(np.int32)}

  return train_transform if train else eval_transform
