"""The loader: batches of a random-access source, a pure function of (seed, epoch, step), sharded over processes.

Order. Epoch e visits the N records of the source in a permutation fixed by (seed, e) alone (the identity when
not shuffling). With B the per-process batch size and P the process count, step s of the epoch covers the
positions [s * B * P, (s + 1) * B * P) of the permutation, and process p takes the p-th run of B of them. The P
per-process batches of a step, concatenated in process order, are thus the batch one process with batch size
B * P sees: the data of a run does not depend on how many processes feed it, and the shards of an epoch are
disjoint and cover it.

Randomness. Transforms work on a whole batch (vectorised numpy: per-example Python costs more than a small
training step) and draw every example's random numbers from ``ExampleRandom``, a counter-based hash of (seed,
epoch, record index, draw): the augmentation, like the order, is fixed by the position in the run, whatever the
batch or process an example lands in, so ``epoch(e, s)`` resumes a killed run at step s of epoch e with exactly
the batches the uninterrupted run saw.

Batches. Dicts of numpy arrays with a leading batch axis of size B: the transform's outputs stacked, and ``mask``
(B,) bool, True for real examples. With ``drop_remainder`` an epoch has floor(N / (B * P)) steps and every mask is
True. Without it, ceil(N / (B * P)) steps and the last one is padded to full batches with repeated records marked
False in ``mask``: shapes stay constant (no recompilation) and every process runs the same number of steps.
Weigh metrics by ``mask``.

The permutation is a numpy table of N indices drawn once per epoch (8 bytes a record: 10 MB for ImageNet; grain's
lazy index shuffle needs no table but cost 24 us a record, a quarter of the digits pipeline). grain does the batch
reading in a background thread with a buffer of ``prefetch`` batches and, with ``worker_count`` > 0, worker
processes.
"""
from __future__ import annotations

import functools
from typing import Callable, Iterator, Optional, Sequence

import grain
import numpy as np

Example = dict[str, np.ndarray]
MASK = "mask"


def _splitmix64(z: np.ndarray) -> np.ndarray:
  """The splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic): a well-mixed 64-bit hash."""
  z = z + np.uint64(0x9E3779B97F4A7C15)
  z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return z ^ (z >> np.uint64(31))


class ExampleRandom:
  """Random numbers for a batch, one stream per example, a pure function of (seed, epoch, record, draw).

  ``draw`` numbers the independent quantities a transform needs (0: vertical shift, 1: horizontal, ...).
  """

  def __init__(self, seed: int, epoch: int, records: np.ndarray):
    key = _splitmix64(np.full(len(records), seed, np.uint64)) ^ np.uint64(epoch)
    self._keys = _splitmix64(_splitmix64(key) ^ np.asarray(records, np.uint64))

  def uniform(self, draw: int) -> np.ndarray:
    """(B,) float64 in [0, 1)."""
    bits = _splitmix64(self._keys ^ _splitmix64(np.full(len(self._keys), draw + 1, np.uint64)))
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53

  def integers(self, draw: int, low: int, high: int) -> np.ndarray:
    """(B,) int64 uniform in [low, high)."""
    return low + np.floor(self.uniform(draw) * (high - low)).astype(np.int64)


# transform(batch, random) -> batch: stacked examples in, a flat dict of numpy arrays with a leading batch axis
# out, randomness from ``random`` only.
Transform = Callable[[Example, ExampleRandom], Example]


def _check_int(name: str, value, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def config_number(dataset_config, field: str, default, low: float, high: float, integer: bool = False):
  """``dataset_config.field`` (``default`` when absent): a number (an int if ``integer``) in [low, high]; ValueError
  naming the field otherwise."""
  value = dataset_config.get(field, default)
  allowed = int if integer else (int, float)
  if isinstance(value, bool) or not isinstance(value, allowed) or not low <= value <= high:
    raise ValueError(f"config.dataset.{field} must be {'an int' if integer else 'a number'} in [{low}, {high}], "
                     f"got {value!r}")
  return value


def _read(source: Sequence[Example], records: list[int]) -> list[Example]:
  """The examples at ``records``, in one batched read where the source supports it (tfds data sources do)."""
  read_many = getattr(source, "__getitems__", None)
  return list(read_many(records)) if read_many is not None else [source[record] for record in records]


def _stack(examples: list[Example]) -> Example:
  """Examples -> a batch; byte strings (encoded images) go in an object array, as they are (no padding to the
  longest, no stripped trailing NULs)."""
  def stack(values):
    if isinstance(values[0], bytes):
      batch = np.empty(len(values), dtype=object)
      batch[:] = values
      return batch
    return np.stack(values)
  return {key: stack([example[key] for example in examples]) for key in examples[0]}


class Pipeline:
  """Batches of ``source`` for one process; see the module docstring for the order, randomness and padding.

  Args:
    source: random-access records: ``len(source)`` and ``source[i]`` (a tfds data source, or a list of dicts).
    batch_size: the per-PROCESS batch size B (the global batch size divided by ``process_count``).
    seed: non-negative; fixes the order and the augmentation of every epoch.
    shuffle: permute the records in each epoch (training); False: source order (evaluation).
    drop_remainder: drop the records after the last full global batch (training); False: pad (evaluation).
    transform: ``transform(batch, random: ExampleRandom) -> batch``, in the loader's thread or workers.
    process_index, process_count: this process and the number of processes sharing the epoch.
    prefetch: batches read ahead in a background thread (0: read on demand, in the caller's thread).
    worker_count: worker processes producing batches (0: none); ``source`` and ``transform`` must pickle.
    cache: decode the whole source once into memory, then batch by indexing (small datasets: decoding a tfds
      record costs ~50 us, more than a small training step's share of it).
    sampler: ``sampler(rng) -> (N,) record indices``, the epoch's order drawn from the epoch's generator instead of
      a permutation (repeats allowed: ``sampling.balanced_order``); only with ``shuffle``. Repeats of a record in
      one epoch share its augmentation draws (``ExampleRandom`` is keyed by the record).
  """

  def __init__(self, source: Sequence[Example], *, batch_size: int, seed: int, shuffle: bool,
               drop_remainder: bool, transform: Transform, process_index: int = 0, process_count: int = 1,
               prefetch: int = 2, worker_count: int = 0, cache: bool = False,
               sampler: Optional[Callable[[np.random.Generator], np.ndarray]] = None):
    _check_int("batch_size", batch_size, 1)
    _check_int("seed", seed, 0)
    _check_int("process_count", process_count, 1)
    _check_int("process_index", process_index, 0)
    _check_int("prefetch", prefetch, 0)
    _check_int("worker_count", worker_count, 0)
    if process_index >= process_count:
      raise ValueError(f"process_index must be < process_count={process_count}, got {process_index}")
    if not callable(transform):
      raise ValueError(f"transform must be callable(batch, random) -> batch, got {transform!r}")
    if sampler is not None and not shuffle:
      raise ValueError("sampler replaces the shuffled order: it needs shuffle=True")
    num_records, global_batch_size = len(source), batch_size * process_count
    if num_records == 0 or (drop_remainder and num_records < global_batch_size):
      raise ValueError(f"batch_size * process_count = {global_batch_size} exceeds the {num_records} records of "
                       "the source: an epoch would have no full batch")

    self._source, self._transform, self._sampler = source, transform, sampler
    self._cached = _stack(_read(source, list(range(num_records)))) if cache else None
    self._batch_size, self._seed, self._shuffle = batch_size, seed, shuffle
    self._process_index, self._process_count = process_index, process_count
    self._prefetch, self._worker_count = prefetch, worker_count
    self._num_records = num_records
    self.steps_per_epoch: int = (num_records // global_batch_size if drop_remainder
                                 else -(-num_records // global_batch_size))

  def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Example]:
    """The batches of ``epoch`` from step ``start_step`` on: ``steps_per_epoch - start_step`` of them."""
    _check_int("epoch", epoch, 0)
    _check_int("start_step", start_step, 0)
    if start_step > self.steps_per_epoch:
      raise ValueError(f"start_step must be <= steps_per_epoch={self.steps_per_epoch}, got {start_step}")
    rng = np.random.default_rng((self._seed, epoch))
    if self._sampler is not None:
      order = np.asarray(self._sampler(rng))
      if order.shape != (self._num_records,):
        raise ValueError(f"sampler must return ({self._num_records},) record indices, got shape {order.shape}")
    else:
      order = rng.permutation(self._num_records) if self._shuffle else np.arange(self._num_records)
    batches = grain.MapDataset.range(start_step, self.steps_per_epoch).map(
        functools.partial(self._load_batch, epoch, order))
    loader = batches.to_iter_dataset(
        grain.ReadOptions(num_threads=min(self._prefetch, 1), prefetch_buffer_size=self._prefetch))
    if self._worker_count:
      loader = loader.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._worker_count))
    return iter(loader)

  def _load_batch(self, epoch: int, order: np.ndarray, step: int) -> Example:
    """This process's batch of ``step``: positions wrap around the epoch to pad, masked off."""
    first = (step * self._process_count + self._process_index) * self._batch_size
    positions = range(first, first + self._batch_size)
    records = order[np.arange(first, first + self._batch_size) % self._num_records]
    if self._cached is not None:
      examples = {key: values[records] for key, values in self._cached.items()}
    else:
      examples = _stack(_read(self._source, records.tolist()))
    batch = self._transform(examples, ExampleRandom(self._seed, epoch, records))
    batch[MASK] = np.array([position < self._num_records for position in positions])
    return batch
