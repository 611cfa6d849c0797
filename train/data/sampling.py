"""Epoch orders other than a permutation: class-balanced sampling for multi-label data (PANN's sampler).

``Pipeline(..., sampler=functools.partial(balanced_order, labels))`` draws each epoch's order from the epoch's
generator, so a balanced run is as reproducible and resumable as a shuffled one.
"""
from __future__ import annotations

import numpy as np


def balanced_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """An epoch of N draws in which every class is equally frequent (PANN ``BalancedTrainSampler``).

  Each draw pops the next class from a queue of class ids (refilled with a shuffled copy of all classes when
  empty) and takes that class's next example from its shuffled list of examples (reshuffled when used up). Classes
  without any example are left out of the queue. An example can appear several times in an epoch (rare classes)
  or not at all.

  Args:
    labels: (N, C) multi-hot (nonzero = the example has the class).
    rng: the epoch's generator.

  Returns:
    (N,) int64 record indices.
  """
  labels = np.asarray(labels)
  if labels.ndim != 2 or labels.shape[0] == 0:
    raise ValueError(f"labels must be a non-empty (N, C) multi-hot array, got shape {labels.shape}")
  members = [np.flatnonzero(column) for column in labels.T]
  classes = np.array([c for c, m in enumerate(members) if m.size])
  if classes.size == 0:
    raise ValueError("labels has no positive entry: no class to balance")
  lists = {c: rng.permutation(members[c]) for c in classes}
  pointers = dict.fromkeys(classes.tolist(), 0)
  order, queue = np.empty(labels.shape[0], np.int64), []
  for i in range(labels.shape[0]):
    if not queue:
      queue = rng.permutation(classes).tolist()
    c = queue.pop()
    if pointers[c] == lists[c].size:
      lists[c], pointers[c] = rng.permutation(lists[c]), 0
    order[i] = lists[c][pointers[c]]
    pointers[c] += 1
  return order


def labels_of(source, key: str = "labels") -> np.ndarray:
  """(N, C) labels of every record of a random-access source (reads each record once)."""
  if len(source) == 0:
    raise ValueError("source is empty")
  if key not in source[0]:
    raise ValueError(f"the source's records have no {key!r} feature (they have {sorted(source[0])})")
  return np.stack([np.asarray(source[i][key]) for i in range(len(source))])
