"""Datasets by name: tfds builders written as array_record, read as random-access data sources (no TensorFlow).

``config.dataset`` fields read here:

* ``name``: a key of ``DATASETS``;
* ``data_dir``: where tfds keeps the prepared dataset (None: tfds' default, ``~/tensorflow_datasets``);
* ``manual_dir``: the folder holding the source files (None: the dataset's default, e.g. scikit-learn's data folder
  for 'digits'; tfds' ``<data_dir>/downloads/manual`` where the dataset has none);
* dataset-specific augmentation fields, read by its ``make_transform`` (digits: ``max_translation``).

Usage, as the trainer does it::

  source = data.get_source(config.dataset, config.dataset.train_split)
  loader = data.Pipeline(source, batch_size=config.batch_size // process_count, seed=config.seed, shuffle=True,
                         drop_remainder=True, transform=data.get_transform(config.dataset, train=True), ...)

Adding a dataset: one module with a ``tfds.core.GeneratorBasedBuilder`` and a ``make_transform(dataset_config, *,
train)``, and one line in ``DATASETS``.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional

import tensorflow_datasets as tfds
from ml_collections import ConfigDict

from train.data import audioset, cifar, delay_task, digits, gsc, imagenet, shd, synth_tags
from train.data.pipeline import Pipeline, Transform

__all__ = ["DATASETS", "DatasetEntry", "Pipeline", "Transform", "get_entry", "get_source", "get_transform"]


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
  """What the framework knows of one dataset.

  builder: the tfds builder class (prepared with ``file_format='array_record'``).
  make_transform: ``(dataset_config, *, train) -> Transform``, the batch preprocessing (and augmentation when
    ``train``).
  default_manual_dir: returns the source folder used when ``config.dataset.manual_dir`` is None; None: tfds'.
  """
  builder: type[tfds.core.GeneratorBasedBuilder]
  make_transform: Callable[..., Transform]
  default_manual_dir: Optional[Callable[[], str]] = None


DATASETS: dict[str, DatasetEntry] = {
    "digits": DatasetEntry(digits.Digits, digits.make_transform, digits.default_manual_dir),
    "shd": DatasetEntry(shd.Shd, shd.make_transform),
    "ssc": DatasetEntry(shd.Ssc, shd.make_transform),
    "shd_fixed_grid": DatasetEntry(shd.ShdFixedGrid, shd.make_transform),
    "ssc_fixed_grid": DatasetEntry(shd.SscFixedGrid, shd.make_transform),
    "gsc": DatasetEntry(gsc.Gsc, gsc.make_transform),
    "delay_task": DatasetEntry(delay_task.DelayTask, shd.make_transform),
    "imagenet2012": DatasetEntry(imagenet.Imagenet2012, imagenet.make_transform),
    "cifar10": DatasetEntry(cifar.Cifar10, cifar.make_cifar10_transform),
    "cifar100": DatasetEntry(cifar.Cifar100, cifar.make_cifar100_transform),
    "audioset": DatasetEntry(audioset.Audioset, audioset.make_transform),
    "synth_tags": DatasetEntry(synth_tags.SynthTags, synth_tags.make_transform),
}


def get_entry(name: str) -> DatasetEntry:
  """The registry entry of ``name``; ValueError listing the known names for an unknown one."""
  if name not in DATASETS:
    raise ValueError(f"unknown config.dataset.name {name!r}; known datasets: {sorted(DATASETS)}")
  return DATASETS[name]


def get_source(dataset_config: ConfigDict, split: str):
  """The data source of ``split`` (tfds split syntax: 'train', 'train[:90%]'): ``len``, random access, examples
  as dicts of numpy arrays; ``source.dataset_info`` holds the features (e.g. the number of classes).

  Prepares the dataset in ``dataset_config.data_dir`` from the manual directory the first time (later calls find
  it prepared). Prepare on one process before the others read where several processes share ``data_dir``.
  """
  entry = get_entry(dataset_config.name)
  data_dir = dataset_config.get("data_dir")
  builder = entry.builder(data_dir=data_dir and os.path.expanduser(data_dir), file_format="array_record")
  if not builder.is_prepared():
    manual_dir = dataset_config.get("manual_dir")
    if manual_dir is None and entry.default_manual_dir is not None:
      manual_dir = entry.default_manual_dir()
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder.as_data_source(split=split)


def get_transform(dataset_config: ConfigDict, *, train: bool) -> Transform:
  """The per-example transform of ``dataset_config.name``: with augmentation when ``train``."""
  return get_entry(dataset_config.name).make_transform(dataset_config, train=train)
