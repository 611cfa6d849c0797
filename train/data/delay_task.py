"""A generated spiking task that only synaptic delays solve well: classes differ in the fine spike timing alone.

Patterns. The NUM_CHANNELS = 24 channels form NUM_BLOCKS = 6 blocks of BLOCK = 4 (channels 4b .. 4b + 3). In the
pattern of every class, block b fires within the 4 steps 4b .. 4b + 3, one spike per channel, one channel per step;
a class is the ORDER of the 4 channels inside each block (one of the 4! = 24 orders per block, distinct between
classes in every block, drawn from SEED). Every class thus has the same spikes per channel, the same spikes per
step, and the same channels active in every window of 4 aligned steps.

Examples (T = 50 steps, NUM_CLASSES = 5): the pattern of the class, shifted as a whole by a uniform 1 .. 25 steps,
each spike jittered by a uniform -1, 0 or +1 step, plus one noise spike per channel at a uniform step of 0 .. 49.
Every channel spikes exactly twice in every example.

Why the ordering "learned delays > fixed random delays > no delays" should hold (with the SNN-delays network:
delay synapses, LIF neurons, a readout summed over time):

* spike counts per channel and per step are the same for all classes, and the global shift hides absolute times:
  a rate code, or any feature of when the population is active, is at chance;
* without delays a neuron sees a block's 4 spikes on 4 consecutive steps in every class; only their order differs,
  which a leaky membrane (tau ~ 10 steps) barely tells apart;
* delays of 0..3 steps chosen for one class's order make its 4 spikes coincide (+-1 step of jitter), a coincidence
  other orders do not produce: one learned-delay neuron per block and class detects the class, with any kernel
  length K >= BLOCK;
* fixed random delays give random coincidence detectors: some happen to favour an order, so trained weights find
  more class evidence than without delays, but less than with delays tuned to the orders.

Splits: 'train' 2,000 and 'test' 500 examples, labels cycling 0..4 (balanced), each split from its own seeded
stream: the dataset is a pure function of SEED, and record i of a split is example i of ``generate(split)``.
Features: ``spikes`` (50, 24) uint8 counts (a noise spike may land on a pattern spike: 2), ``label``
``ClassLabel(5)``; the shared spike transform (``shd.make_transform``) feeds the model.
"""
from __future__ import annotations

import itertools

import numpy as np
import tensorflow_datasets as tfds

SEED = 0
NUM_CLASSES = 5
NUM_BLOCKS = 6
BLOCK = 4  # channels per block = steps per block
NUM_CHANNELS = NUM_BLOCKS * BLOCK  # 24
NUM_STEPS = 50
PATTERN_STEPS = NUM_BLOCKS * BLOCK  # 24
MAX_JITTER = 1  # steps
SHIFTS = (MAX_JITTER, NUM_STEPS - PATTERN_STEPS - MAX_JITTER)  # 1 .. 25: jittered spikes stay in 0..49
NOISE_SPIKES = 1  # per channel and example
SPLIT_SIZES = {"train": 2000, "test": 500}


def class_patterns(seed: int = SEED) -> np.ndarray:
  """(NUM_CLASSES, NUM_CHANNELS) int64 spike step of each channel in each class's pattern: channel 4b + i fires at
  4b + order[i], ``order`` a permutation of 0..3 per (class, block), distinct between classes in each block."""
  rng = np.random.default_rng(seed)
  orders = np.array(list(itertools.permutations(range(BLOCK))))  # (24, BLOCK)
  per_block = np.stack([orders[rng.choice(len(orders), NUM_CLASSES, replace=False)] for _ in range(NUM_BLOCKS)],
                       axis=1)  # (NUM_CLASSES, NUM_BLOCKS, BLOCK)
  return (per_block + BLOCK * np.arange(NUM_BLOCKS)[:, None]).reshape(NUM_CLASSES, NUM_CHANNELS)


def generate(split: str, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
  """The examples of ``split``: spikes (N, NUM_STEPS, NUM_CHANNELS) uint8 counts and labels (N,) int64."""
  if split not in SPLIT_SIZES:
    raise ValueError(f"split must be one of {sorted(SPLIT_SIZES)}, got {split!r}")
  size = SPLIT_SIZES[split]
  rng = np.random.default_rng([seed, list(SPLIT_SIZES).index(split) + 1])
  labels = np.arange(size) % NUM_CLASSES
  shifts = rng.integers(SHIFTS[0], SHIFTS[1] + 1, size)
  jitter = rng.integers(-MAX_JITTER, MAX_JITTER + 1, (size, NUM_CHANNELS))
  pattern_steps = class_patterns(seed)[labels] + shifts[:, None] + jitter  # (N, C)
  noise_steps = rng.integers(0, NUM_STEPS, (size, NUM_CHANNELS, NOISE_SPIKES))
  steps = np.concatenate([pattern_steps[..., None], noise_steps], axis=-1)  # (N, C, spikes per channel)
  spikes = np.zeros((size, NUM_STEPS, NUM_CHANNELS), np.uint8)
  examples, channels = np.indices(steps.shape[:2])
  np.add.at(spikes, (examples[..., None], steps, channels[..., None]), 1)
  return spikes, labels


class DelayTask(tfds.core.GeneratorBasedBuilder):
  """The generated fine-timing task (module docstring): 'train' 2,000 and 'test' 500 examples, 5 classes."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "6 blocks of 4 channels, class = spike order within each block."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "spikes": tfds.features.Tensor(shape=(NUM_STEPS, NUM_CHANNELS), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }),
        supervised_keys=("spikes", "label"),
        disable_shuffling=True,  # records in source order
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # generated: no source files
    return {split: self._generate_examples(split) for split in SPLIT_SIZES}

  def _generate_examples(self, split):
    spikes, labels = generate(split)
    for index, (example_spikes, label) in enumerate(zip(spikes, labels)):
      yield index, {"spikes": example_spikes, "label": int(label)}
