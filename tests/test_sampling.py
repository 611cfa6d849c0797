"""Class-balanced epoch orders (PANN's sampler) and their use by the loader."""
from __future__ import annotations

import functools

import numpy as np
import pytest

from train.data import pipeline, sampling


def skewed_labels() -> np.ndarray:
  """100 examples: class 0 on 90 of them, class 1 on 9, class 2 on 1, class 3 on none."""
  labels = np.zeros((100, 4), np.uint8)
  labels[:90, 0] = 1
  labels[90:99, 1] = 1
  labels[99, 2] = 1
  return labels


def test_every_class_with_examples_is_drawn_equally_often():
  labels = skewed_labels()
  order = sampling.balanced_order(labels, np.random.default_rng(0))
  assert order.shape == (100,)
  counts = labels[order].sum(0)
  assert counts[3] == 0 and max(counts[:3]) - min(counts[:3]) <= 1  # 34/33/33: balanced up to the last queue
  assert np.sum(order == 99) == counts[2]  # the only class-2 example is repeated


def test_a_class_cycles_through_all_its_examples_before_repeating_one():
  labels = skewed_labels()
  order = sampling.balanced_order(labels, np.random.default_rng(1))
  class1 = [i for i in order if labels[i, 1]]
  assert sorted(class1[:9]) == list(range(90, 99))


def test_the_order_is_a_function_of_the_generator():
  labels = skewed_labels()
  first = sampling.balanced_order(labels, np.random.default_rng(5))
  np.testing.assert_array_equal(first, sampling.balanced_order(labels, np.random.default_rng(5)))
  assert not np.array_equal(first, sampling.balanced_order(labels, np.random.default_rng(6)))


@pytest.mark.parametrize("labels", [np.zeros((0, 3)), np.zeros((4,)), np.zeros((4, 3))])
def test_bad_labels_are_rejected(labels):
  with pytest.raises(ValueError, match="labels"):
    sampling.balanced_order(labels, np.random.default_rng(0))


def test_the_loader_draws_each_epoch_from_the_sampler():
  labels = skewed_labels()
  source = [{"x": np.int64(i), "labels": labels[i]} for i in range(100)]
  loader = pipeline.Pipeline(source, batch_size=10, seed=3, shuffle=True, drop_remainder=True,
                             transform=lambda batch, random: batch, prefetch=0,
                             sampler=functools.partial(sampling.balanced_order, sampling.labels_of(source)))
  seen = np.concatenate([batch["x"] for batch in loader.epoch(0)])
  np.testing.assert_array_equal(seen, sampling.balanced_order(labels, np.random.default_rng((3, 0))))
  resumed = np.concatenate([batch["x"] for batch in loader.epoch(0, start_step=4)])
  np.testing.assert_array_equal(resumed, seen[40:])


def test_a_sampler_needs_a_shuffled_loader_and_a_full_epoch():
  source = [{"x": np.int64(i)} for i in range(8)]
  with pytest.raises(ValueError, match="shuffle"):
    pipeline.Pipeline(source, batch_size=2, seed=0, shuffle=False, drop_remainder=True,
                      transform=lambda b, r: b, sampler=lambda rng: np.arange(8))
  loader = pipeline.Pipeline(source, batch_size=2, seed=0, shuffle=True, drop_remainder=True,
                             transform=lambda b, r: b, prefetch=0, sampler=lambda rng: np.arange(4))
  with pytest.raises(ValueError, match="sampler must return"):
    next(loader.epoch(0))


def test_labels_of_names_a_missing_feature():
  with pytest.raises(ValueError, match="'labels'"):
    sampling.labels_of([{"x": 1}])
